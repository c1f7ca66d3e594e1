"""tiergate.gateway."""
