"""STAR trainer side: the scorer client, data, losses, training loop, evaluation.

Importing this package loads no model and no torch; the subpackages that need torch import it
themselves.
"""

__version__ = "0.1.0"
