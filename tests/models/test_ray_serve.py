"""A tier on Ray Serve, against a local Ray instance: the deployment speaks KServe v2, a gateway's remote tier
reaches it and gets the local tier's answers, and concurrent requests share model batches (@serve.batch)."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from tests.conftest import free_port
from tests.rules.test_reload import wait_for
from tiergate.config import RayConfig, RemoteConfig, load_config
from tiergate.data import make_item
from tiergate.models.remote import RemoteTier
from tiergate.registry import build_tier

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_serve():
    ray = pytest.importorskip("ray", reason="Ray Serve is the extra tiergate[ray]")
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.mark.timeout(300)
def test_a_tier_on_ray_serve_answers_as_the_local_tier(ray_serve, tiny_workdir, spam_ds):
    from ray import serve

    from tiergate.models.ray_serve import build_app

    cfg, base = load_config(tiny_workdir / "tiergate.yaml")
    tc = cfg.tiers[-1]
    serve.run(build_app(tc, base, [], RayConfig(max_batch_size=16, batch_wait_timeout_s=0.05)), name="t",
              route_prefix="/", blocking=False)

    def up():
        try:
            return httpx.get(ray_serve + f"/v2/models/{tc.name}", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_for(up, 120), "the deployment did not come up"
    remote = RemoteTier(tc.name, RemoteConfig(url=ray_serve, model=tc.name, timeout_s=60))
    local = build_tier(tc, base)
    items = [make_item(e.text) for e in spam_ds.split("test")[:24]]
    got, want = remote.predict(items), local.predict(items)
    assert remote.version() == local.version() and remote.labels == local.labels
    assert [o.label for o in got] == [o.label for o in want]
    assert [o.confidence for o in got] == pytest.approx([o.confidence for o in want], abs=1e-5)
    # concurrent single-item requests are answered, each its own answer (batched on the replica)
    with cf.ThreadPoolExecutor(8) as ex:
        singles = list(ex.map(lambda it: remote.predict([it])[0].label, items[:16]))
    assert singles == [o.label for o in want[:16]]
    assert httpx.post(ray_serve + f"/v2/models/{tc.name}/infer", json={"inputs": []}).status_code == 422
    remote.close()
    local.close()
