"""The bare FastAPI + uvicorn endpoint that bench/serving.py compares the gateway with.

Same framework, server, worker count and request body as ``tiergate serve``, and no work: the body is
validated by a pydantic model (``{"text": str}``) and a constant decision of about the size of a rules-tier
answer comes back. Whatever the gateway is slower by is its own cost (routing, parsing the item, the tiers).

    python bench/bare_endpoint.py --host 127.0.0.1 --port 8099
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


@app.post("/v1/classify")
async def classify(body: Body) -> dict:
    return ANSWER


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive"}


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
