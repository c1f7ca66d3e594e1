"""tiergate.models."""
