"""HTTP calls of the remote tiers (:mod:`~tiergate.models.remote`, :mod:`~tiergate.models.chat`): one JSON call
with a retry budget. A connection error, 429 or 5xx is tried again, with a short back-off, inside the call's
timeout. Any other status, or a body that is not JSON, is a ModelError at once."""

from __future__ import annotations

import os
import time

import httpx

from tiergate.errors import ModelError

RETRY_STATUS = {429, 500, 502, 503, 504}
BACKOFF_S = 0.05


def call_json(client: httpx.Client, method: str, url: str, *, retries: int, timeout_s: float, who: str, **kw) -> object:
    deadline = time.monotonic() + timeout_s
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), max(deadline - time.monotonic(), 0)))
        try:
            r = client.request(method, url, timeout=max(deadline - time.monotonic(), 0.05), **kw)
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
            continue
        if r.status_code in RETRY_STATUS:
            last = f"HTTP {r.status_code}: {r.text[:200]}"
            continue
        if r.status_code != 200:
            raise ModelError(f"{who}: {method} {url} answered {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError as e:
            raise ModelError(f"{who}: {url} did not answer JSON") from e
    raise ModelError(f"{who}: {method} {url} failed after {retries + 1} attempt(s): {last}")


def client_for(cfg, who: str) -> httpx.Client:
    """A client with the remote tier's timeout, and its bearer token when ``cfg.token_env`` names one."""
    headers = {}
    if cfg.token_env:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise ModelError(f"{who}: remote.token_env names {cfg.token_env}, which is not set")
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(timeout=cfg.timeout_s, headers=headers)
