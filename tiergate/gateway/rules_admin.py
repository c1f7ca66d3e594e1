"""Admin endpoints for the rules tier: ``POST /admin/rules/reload`` and ``PUT /admin/rules``.

Both need ``Authorization: Bearer <token>`` matching ``TIERGATE_ADMIN_TOKEN`` (read at each request, compared
in constant time). With no token configured they refuse (403) and say how to enable them; a missing or wrong
token is 401. A rejected rule set is 422 with every problem (the old set keeps serving); success is 200 with
the new version. Validation runs in a worker thread, so classification traffic is never blocked by it.

>>> app.include_router(make_rules_admin_router(lambda: rules_tier))   # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tiergate.errors import RuleError
from tiergate.rules.tier import RulesTier

TOKEN_ENV = "TIERGATE_ADMIN_TOKEN"
MAX_UPLOAD_BYTES = 2_000_000


def _authorize(request: Request) -> None:
    expected = os.environ.get(TOKEN_ENV, "")
    if not expected:
        raise HTTPException(403, detail=f"admin endpoints are disabled: set {TOKEN_ENV} in the gateway's "
                                        "environment and send it as 'Authorization: Bearer <token>'")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(401, detail="missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                            headers={"WWW-Authenticate": "Bearer"})


def _rejected(e: RuleError, old_version: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={
        "error": "RuleError", "detail": str(e), "problems": e.problems, "rules_version": old_version,
        "hint": "fix every problem listed (`tiergate rules lint` and `tiergate rules test` show the same); "
                "the previous rule set is still being served"})


def make_rules_admin_router(get_rules_tier: Callable[[], RulesTier | None]) -> APIRouter:
    """The admin router; ``get_rules_tier`` returns the served rules tier (None while loading or absent)."""
    router = APIRouter(prefix="/admin/rules", tags=["admin"])

    def tier_or_404() -> RulesTier:
        tier = get_rules_tier()
        if tier is None:
            raise HTTPException(404, detail="this gateway serves no rules tier (add a tier of kind 'rules' to the "
                                            "config), or it is still loading")
        return tier

    @router.post("/reload")
    async def reload_rules(request: Request):
        """Re-read the rules from their path; validate, run the examples, then swap."""
        _authorize(request)
        tier = tier_or_404()
        old = tier.version()
        try:
            version = await run_in_threadpool(tier.reload, source="api")
        except RuleError as e:
            return _rejected(e, old)
        return {"status": "reloaded", "rules_version": version, "previous_version": old,
                "rules": len(tier.engine.rules)}

    @router.put("")
    async def put_rules(request: Request):
        """Replace the rules with the YAML body; validate, run the examples, then swap (and save to the path
        when it is a single file, so a restart keeps them)."""
        _authorize(request)
        tier = tier_or_404()
        raw = await request.body()
        if len(raw) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, detail=f"rule file of {len(raw)} bytes; the limit is {MAX_UPLOAD_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, detail="the body must be UTF-8 YAML text") from None
        old = tier.version()
        try:
            version = await run_in_threadpool(tier.replace_text, text, source="api", persist=True)
        except RuleError as e:
            return _rejected(e, old)
        return {"status": "replaced", "rules_version": version, "previous_version": old,
                "rules": len(tier.engine.rules)}

    return router
