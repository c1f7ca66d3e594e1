"""tiergate.training."""
