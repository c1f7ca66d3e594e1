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
     +-- InputError             a request or input item is malformed (HTTP 422)
     |    +-- PayloadTooLargeError  a request body over the configured limit (HTTP 413)
     |    +-- BodyTimeoutError      a request body that did not arrive in time (HTTP 408)
     +-- AuthError              no credentials, or wrong ones (HTTP 401)
     +-- ForbiddenError         credentials fine, but not for this (HTTP 403)
     +-- NotFoundError          the thing asked for does not exist (HTTP 404)
     +-- OverloadedError        the gateway is saturated and refuses work (HTTP 429, ``retry_after_s``)
     +-- UnavailableError       a tier or the gateway cannot serve right now (HTTP 503)
          +-- DeadlineError         the request's deadline passed before any tier could answer (HTTP 504)

Every error may carry ``context``: extra fields for the HTTP body (for example the rule set still served).
"""

from __future__ import annotations


class TiergateError(Exception):
    """Base class of every error tiergate raises on purpose. ``context`` holds extra, JSON-safe fields that the
    HTTP edge adds to the error body."""

    def __init__(self, message: str = "", **context):
        super().__init__(message)
        self.context = context


class ConfigError(TiergateError):
    """A configuration file or value is invalid; the message names the key and the fix."""


class DataError(TiergateError):
    """A data set cannot be found, fetched or read; the message says how to provide it."""


class RuleError(TiergateError):
    """A rule set is invalid. ``problems`` holds every problem found, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None, **context):
        super().__init__(message, **context)
        self.problems = list(problems or [])


class ModelError(TiergateError):
    """A model artifact is missing, corrupt or does not match its manifest."""


class CalibrationError(TiergateError):
    """Thresholds cannot be chosen (for example, too few calibration items)."""


class InputError(TiergateError):
    """A request or an input item is malformed."""


class PayloadTooLargeError(InputError):
    """A request body is larger than ``server.max_body_bytes`` (HTTP 413)."""


class BodyTimeoutError(InputError):
    """A request body did not arrive within ``server.body_timeout_s`` (HTTP 408)."""


class AuthError(TiergateError):
    """Credentials are missing or wrong (HTTP 401)."""


class ForbiddenError(TiergateError):
    """The caller is known but may not do this (HTTP 403): admin endpoints disabled, a privilege not granted."""


class NotFoundError(TiergateError):
    """The object asked for does not exist (HTTP 404)."""


class OverloadedError(TiergateError):
    """The gateway is saturated; the caller should retry after ``retry_after_s`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float = 1.0, **context):
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class UnavailableError(TiergateError):
    """A tier or the gateway cannot serve right now (HTTP 503)."""


class DeadlineError(UnavailableError):
    """The request's deadline passed before any tier had an answer for an item (HTTP 504)."""
