"""Choosing thresholds on the calibration split.

``plain``: a direct search (the smallest threshold per tier whose empirical disagreement with the final tier
stays within a budget). The guaranteed Learn-then-Test procedure lives beside it.
"""
