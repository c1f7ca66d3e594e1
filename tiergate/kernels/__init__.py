"""tiergate.kernels."""
