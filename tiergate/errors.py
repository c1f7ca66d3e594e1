"""One exception tree for tiergate.

Library code raises these; only ``tiergate.gateway`` turns them into HTTP responses, and only the CLI turns
them into exit codes. Every message names the object at fault and what to do about it.

::

    TiergateError
     +-- ConfigError            a configuration file or value is invalid
     +-- DataError              a data set cannot be found, fetched or read
     +-- RuleError              a rule file is invalid (carries every problem found)
     +-- ModelError             a model artifact is missing, corrupt or incompatible
     +-- CalibrationError       thresholds cannot be chosen (too little data, nothing certifiable)
     +-- InputError             a request or input item is malformed
     +-- OverloadedError        the gateway is saturated and refuses work (HTTP 429)
     +-- UnavailableError       a tier or the gateway cannot serve right now (HTTP 503)
"""

from __future__ import annotations


class TiergateError(Exception):
    """Base class of every error tiergate raises on purpose."""


class ConfigError(TiergateError):
    """A configuration file or value is invalid; the message names the key and the fix."""


class DataError(TiergateError):
    """A data set cannot be found, fetched or read; the message says how to provide it."""


class RuleError(TiergateError):
    """A rule set is invalid. ``problems`` holds every problem found, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class ModelError(TiergateError):
    """A model artifact is missing, corrupt or does not match its manifest."""


class CalibrationError(TiergateError):
    """Thresholds cannot be chosen (for example, too few calibration items)."""


class InputError(TiergateError):
    """A request or an input item is malformed."""


class OverloadedError(TiergateError):
    """The gateway is saturated; the caller should retry later (HTTP 429)."""


class UnavailableError(TiergateError):
    """A tier or the gateway cannot serve right now (HTTP 503)."""
