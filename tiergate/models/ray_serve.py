"""One tier of a config as a Ray Serve deployment (extra ``tiergate[ray]``), speaking the KServe v2 protocol,
so that gateways reach it as ``kind: remote`` like any other remote tier:

    tiergate serve --config C --tier large --protocol kserve-v2 --engine ray --host 0.0.0.0 --port 8000

Ray Serve brings what a GPU fleet needs and tiergate does not build itself: replicas placed on GPUs
(``ray.num_gpus``), autoscaling on ongoing requests (``ray.autoscaling``), and ``@serve.batch``, which gathers
the items of concurrent infer requests into one model batch on each replica. Each replica builds the tier from
its config entry, with the same registry and the same path confinement as the gateway.
"""

# No `from __future__ import annotations` here: Ray Serve rebuilds the ingress methods, and FastAPI must see
# their annotations (Request) as objects, not strings it cannot resolve from there.

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tiergate.config import RayConfig, TierConfig
from tiergate.data.items import make_item
from tiergate.models import kserve


def build_app(tc: TierConfig, base: Path, model_dirs: list[str], ray_cfg: RayConfig, max_chars: int = 200_000):
    """The Ray Serve application (a bound deployment) serving ``tc``."""
    from ray import serve

    app = FastAPI(title=f"tiergate tier {tc.name} on Ray Serve (KServe v2)")
    options: dict = {"ray_actor_options": {"num_cpus": ray_cfg.num_cpus, "num_gpus": ray_cfg.num_gpus},
                     "max_ongoing_requests": ray_cfg.max_ongoing_requests}
    if ray_cfg.autoscaling is not None:
        options["autoscaling_config"] = ray_cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = ray_cfg.num_replicas
    tc_json, base_s = tc.model_dump(mode="json"), str(base)

    @serve.deployment(name=f"tiergate-{tc.name}", **options)
    @serve.ingress(app)
    class TierDeployment:
        def __init__(self):
            from tiergate.registry import build_tier

            self.tier = build_tier(TierConfig.model_validate(tc_json), Path(base_s), model_dirs=model_dirs)

        @serve.batch(max_batch_size=ray_cfg.max_batch_size, batch_wait_timeout_s=ray_cfg.batch_wait_timeout_s)
        async def _predict(self, texts: list[str]) -> list:
            # one call per item; Ray gathers concurrent ones into this list, one model batch
            return self.tier.predict([make_item(t, max_chars=max_chars) for t in texts])

        @app.get("/v2/health/live")
        async def live(self):
            return {"live": True}

        @app.get("/v2/health/ready")
        async def ready(self):
            return {"ready": True}

        @app.get("/v2/models/{name}")
        async def metadata(self, name: str):
            if name != tc.name:
                return JSONResponse({"error": "NotFoundError", "detail": f"no model {name!r}"}, status_code=404)
            return kserve.metadata_body(tc.name, self.tier.version(), self.tier.labels, platform="tiergate-ray")

        @app.post("/v2/models/{name}/infer")
        async def infer(self, name: str, request: Request):
            if name != tc.name:
                return JSONResponse({"error": "NotFoundError", "detail": f"no model {name!r}"}, status_code=404)
            try:
                body = json.loads(await request.body())
                texts = kserve.texts_of(body)
            except (ValueError, Exception) as e:  # noqa: BLE001 - a bad request is a 422 whatever the parser said
                return JSONResponse({"error": "InputError", "detail": str(e)}, status_code=422)
            outs = await asyncio.gather(*(self._predict(t) for t in texts))
            return kserve.response_body(tc.name, self.tier.version(), self.tier.labels, outs, str(body.get("id", "")))

    return TierDeployment.bind()


def run(config_path: str | Path, tier: str, *, host: str, port: int, block: bool = True) -> None:
    """Start Ray (or join the cluster RAY_ADDRESS names), deploy the tier, and serve until interrupted."""
    import ray
    from ray import serve

    from tiergate.config import load_config

    cfg, base = load_config(config_path)
    tc = next(t for t in cfg.tiers if t.name == tier)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(tc, base, list(cfg.model_dirs), cfg.ray, cfg.server.max_text_chars), name=f"tiergate-{tier}",
              route_prefix="/", blocking=block)
