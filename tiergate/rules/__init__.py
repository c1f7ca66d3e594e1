"""tiergate.rules."""
