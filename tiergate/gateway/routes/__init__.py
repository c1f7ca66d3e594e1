"""The gateway's routers, one module per concern: classify, probes and metrics, admin."""
