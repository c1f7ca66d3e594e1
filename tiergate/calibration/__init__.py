"""Choosing thresholds on the calibration split.

* :mod:`~tiergate.calibration.ltt`: Learn-then-Test over the whole cascade (the default): thresholds with a
  certificate, its staleness, a ladder of stricter settings for per-request epsilons.
* :mod:`~tiergate.calibration.bounds` (p-values, bounds, sample sizes), :mod:`~tiergate.calibration.risk`
  (what is controlled), :mod:`~tiergate.calibration.replay` (the cascade replayed on arrays),
  :mod:`~tiergate.calibration.paths` (orders of candidate settings), :mod:`~tiergate.calibration.shadow`
  (rules in shadow mode), :mod:`~tiergate.calibration.report` (the frontier), :mod:`~tiergate.calibration.metrics`
  (certificate gauges), :mod:`~tiergate.calibration.study` (the figures in docs/calibration.md).
* :mod:`~tiergate.calibration.plain`: a direct search with no guarantee, kept as the fallback
  (``tiergate calibrate --method plain``).
"""
