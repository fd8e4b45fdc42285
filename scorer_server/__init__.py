"""STAR scorer: token-level safety scores from generative guardrail models, served over gRPC."""

__version__ = "0.1.0"
