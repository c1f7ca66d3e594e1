"""Who may call what.

* ``/admin/*`` needs ``Authorization: Bearer $TIERGATE_ADMIN_TOKEN`` (compared in constant time, read at each
  request so a rotated token applies at once). With no token set the admin endpoints are disabled (403), and
  the gateway says so once at start.
* ``/v1/*`` is open unless ``server.api_keys`` lists keys; then every call needs one (``Authorization: Bearer
  <key>`` or ``X-API-Key: <key>``). Keys are stored as SHA-256 only, so a leaked config leaks no key.
* ``final_only`` and a per-request ``epsilon`` are privileges: they move cost, so a caller has them only when
  its key grants them or ``server.anonymous_privileges`` does. Every use and refusal is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from tiergate.config import ServerConfig
from tiergate.errors import AuthError, ForbiddenError
from tiergate.gateway import metrics as m

TOKEN_ENV = "TIERGATE_ADMIN_TOKEN"


def require_admin(request: Request) -> None:
    """Raise unless the request carries the admin token (ForbiddenError when admin is disabled)."""
    expected = os.environ.get(TOKEN_ENV, "")
    if not expected:
        raise ForbiddenError(f"admin endpoints are disabled: set {TOKEN_ENV} in the gateway's environment and "
                             "send it as 'Authorization: Bearer <token>'")
    given = _bearer(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthError("missing or wrong bearer token (send 'Authorization: Bearer <token>')")


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    privileges: frozenset[str]


def authenticate(request: Request, server: ServerConfig) -> Client:
    """The caller of a ``/v1/*`` endpoint (AuthError when keys are configured and none matches)."""
    if not server.api_keys:
        return Client("anonymous", frozenset(server.anonymous_privileges))
    key = _bearer(request) or request.headers.get("x-api-key")
    if key:
        digest = hashlib.sha256(key.encode()).hexdigest()
        for k in server.api_keys:  # every key is compared, so timing tells nothing about which one matched
            match = hmac.compare_digest(digest, k.sha256)
            if match:
                return Client(k.name, frozenset(k.privileges) | frozenset(server.anonymous_privileges))
    raise AuthError("this gateway needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


def require_privilege(client: Client, privilege: str) -> None:
    if privilege in client.privileges:
        m.PRIVILEGED.labels(privilege, "allowed").inc()
        return
    m.PRIVILEGED.labels(privilege, "denied").inc()
    raise ForbiddenError(f"'{privilege}' is a privilege this caller ({client.name}) does not have: grant it to "
                         "its key in server.api_keys[].privileges, or to every caller in "
                         "server.anonymous_privileges")


def new_key() -> tuple[str, str]:
    """A fresh API key and its SHA-256 (what goes in the config)."""
    key = "tg_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
