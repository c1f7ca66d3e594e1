"""The bare FastAPI + uvicorn endpoint that bench/serving.py compares the gateway with.

Same framework, server, worker count and request body as ``tiergate serve``, and no work: the body is
validated by a pydantic model (``{"text": str}``) and a constant decision of about the size of a rules-tier
answer comes back. Whatever the gateway is slower by is its own cost (routing, parsing the item, the tiers).

    python bench/bare_endpoint.py --host 127.0.0.1 --port 8099
    python bench/bare_endpoint.py --port 8099 --rules runs/qs/tiergate.yaml   # + the same rules, nothing else
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from pydantic import BaseModel

# The shape of a rules-decided answer (docs/gateway.md), so both servers serialise a similar amount.
ANSWER = {"label": "spam", "confidence": 0.99, "probabilities": None, "tier": "rules",
          "reason": "rule:bare-endpoint", "latency_ms": 0.0, "cost_usd": 0.0, "baseline_cost_usd": 0.0,
          "cost_saved_usd": 0.0, "path": ["rules"], "degraded": False,
          "request_id": "00000000000000000000000000000000", "final_only": False}


class Body(BaseModel):
    text: str


app = FastAPI(title="bare endpoint")
RULES = None  # with --rules CONFIG: the config's first rules tier, run on each item as the whole work


@app.post("/v1/classify")
async def classify(body: Body) -> dict:
    if RULES is None:
        return ANSWER
    from tiergate.data.items import make_item

    out = RULES.predict([make_item(body.text)])[0]
    return {**ANSWER, "label": out.label, "reason": out.reason}


def load_rules(config: str):
    """The first rules tier of a tiergate config, built as the gateway builds it."""
    from pathlib import Path

    from tiergate.config import load_config
    from tiergate.registry import build_tier, capabilities_of

    cfg, base = load_config(config)
    tc = next(t for t in cfg.tiers if not capabilities_of(t).distribution)
    return build_tier(tc, Path(base), model_dirs=cfg.model_dirs)


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive"}


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--rules", metavar="CONFIG", help="run the config's rules tier on each item (parse + rules): "
                    "the least a server must do to give a rules-decided answer, without the gateway around it")
    args = ap.parse_args()
    global RULES
    if args.rules:
        RULES = load_rules(args.rules)
    # No access log, as `tiergate serve` by default: both servers pay for the same HTTP stack.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
