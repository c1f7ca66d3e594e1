"""tiergate.models."""

from tiergate.models.threads import set_wait_policy

# Before any tiergate.models module imports torch: libgomp reads OMP_WAIT_POLICY once, when it loads.
set_wait_policy()
