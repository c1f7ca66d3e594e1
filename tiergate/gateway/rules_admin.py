"""Admin endpoints for the rules tier: ``POST /admin/rules/reload`` and ``PUT /admin/rules``.

Both need the admin token (:func:`tiergate.gateway.auth.require_admin`). A rejected rule set is 422 with every
problem (the old set keeps serving); success is 200 with the new version. Validation runs in a worker thread,
so classification traffic is never blocked by it.

>>> app.include_router(make_rules_admin_router(lambda: rules_tier))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tiergate.errors import InputError, NotFoundError, PayloadTooLargeError, RuleError
from tiergate.gateway.auth import require_admin
from tiergate.gateway.limits import ADMIN_UPLOAD_BYTES
from tiergate.rules.tier import RulesTier

HINT = ("fix every problem listed (`tiergate rules lint` and `tiergate rules test` show the same); the previous "
        "rule set is still being served")


def make_rules_admin_router(get_rules_tier: Callable[[], RulesTier | None]) -> APIRouter:
    """The admin router; ``get_rules_tier`` returns the served rules tier (None while loading or absent)."""
    router = APIRouter(prefix="/admin/rules", tags=["admin"], dependencies=[Depends(require_admin)])

    def tier_or_404() -> RulesTier:
        tier = get_rules_tier()
        if tier is None:
            raise NotFoundError("this gateway serves no rules tier (add a tier of kind 'rules' to the config), "
                                "or it is still loading")
        return tier

    async def swap(tier: RulesTier, fn, *args, **kwargs) -> str:
        old = tier.version()
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except RuleError as e:
            e.context.update(rules_version=old, hint=HINT)
            raise

    @router.post("/reload")
    async def reload_rules():
        """Re-read the rules from their path; validate, run the examples, then swap."""
        tier = tier_or_404()
        old = tier.version()
        version = await swap(tier, tier.reload, source="api")
        return {"status": "reloaded", "rules_version": version, "previous_version": old,
                "rules": len(tier.engine.rules)}

    @router.put("")
    async def put_rules(request: Request):
        """Replace the rules with the YAML body; validate, run the examples, then swap (and save to the path
        when it is a single file, so a restart keeps them)."""
        tier = tier_or_404()
        raw = await request.body()
        if len(raw) > ADMIN_UPLOAD_BYTES:
            raise PayloadTooLargeError(f"rule file of {len(raw)} bytes; the limit is {ADMIN_UPLOAD_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the body must be UTF-8 YAML text") from None
        old = tier.version()
        version = await swap(tier, tier.replace_text, text, source="api", persist=True)
        return {"status": "replaced", "rules_version": version, "previous_version": old,
                "rules": len(tier.engine.rules)}

    return router
