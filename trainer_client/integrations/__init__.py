"""STAR-DSS inside other training frameworks (optional extras)."""
