"""A remote tier over the KServe v2 protocol, with two tiergate processes on loopback: one serves the final
tier (``tiergate serve --tier final --protocol kserve-v2``), the other's cascade reaches it as ``kind: remote``.
Answers, evaluation and calibration match the local cascade's; a remote that goes away degrades answers and
trips the breaker; malformed answers are refused."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import yaml

from tests.conftest import running_server
from tests.gateway.conftest import HAM, LOTTERY, write_config
from tests.gateway.test_lifecycle import serve
from tests.rules.test_reload import wait_for
from tiergate.cascade import Cascade
from tiergate.config import RemoteConfig
from tiergate.data import make_item
from tiergate.errors import ConfigError, InputError, ModelError
from tiergate.gateway.app import create_app
from tiergate.models import kserve
from tiergate.models.remote import RemoteTier
from tiergate.pipeline import evaluate
from tiergate.tiers import TierOutput

TEXTS = [HAM, LOTTERY, "Subject: cheap meds\n\nbuy now", "hello", "Subject: re: lunch\n\nok, noon"]


def ready(base: str, proc, timeout: float = 90) -> None:
    def up() -> bool:
        assert proc.poll() is None, "the tier server exited"
        try:
            return httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_for(up, timeout), "the tier server did not get ready"


def remote_config(local, base: str, name: str, **server) -> object:
    raw = yaml.safe_load(local.read_text())
    raw["tiers"][-1] = {"name": "final", "kind": "remote", "threshold": raw["tiers"][-1].get("threshold", {}),
                        "cost": raw["tiers"][-1]["cost"],
                        "remote": {"url": base, "model": "final", "timeout_s": 5, "retries": 1}}
    raw["server"] = {**raw.get("server", {}), **server}
    path = local.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_remote_final_tier_answers_as_the_local_one_and_its_loss_degrades(serving_dir, tiny_workdir, labelled_data,
                                                                          tmp_path):
    local = write_config(serving_dir, tiny_workdir, "remote-local", final_threshold_small=0.99,
                         log={"path": str(tmp_path / "local.db")})
    with serve(local, tmp_path / "tier.log", "--tier", "final", "--protocol", "kserve-v2") as s:
        ready(s.base, s.proc)
        meta = httpx.get(s.base + "/v2/models/final").json()
        assert meta["parameters"]["labels"] == ["ham", "spam"] and meta["versions"][0]
        assert httpx.get(s.base + "/v2/models/nope").status_code == 404
        assert httpx.post(s.base + "/v2/models/final/infer", json={"inputs": []}).status_code == 422
        remote = remote_config(local, s.base, "remote-gw", breaker={"failures": 1, "cooldown_s": 60},
                               tiers={"final": {"timeout_ms": 3000}})
        here = Cascade.from_config(local)
        want = [d.to_dict() for d in here.classify([make_item(t) for t in TEXTS])]
        assert any(d["tier"] == "final" for d in want), "some items must reach the final tier"
        with running_server(create_app(remote)) as base:
            ready_info = httpx.get(base + "/readyz").json()
            final = ready_info["tiers"][-1]
            assert final["kind"] == "remote" and final["version"] == meta["versions"][0]
            got = httpx.post(base + "/v1/classify", json={"texts": TEXTS}, timeout=30).json()["results"]
            for g, w in zip(got, want, strict=True):
                assert (g["tier"], g["label"], g["path"]) == (w["tier"], w["label"], w["path"])
                assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-5)
            # evaluation over the remote tier is the local evaluation
            a, b = evaluate(local, str(labelled_data), "test", progress=False), evaluate(remote, str(labelled_data), "test",
                                                                                       progress=False)
            assert (a["accuracy"], [t["share"] for t in a["tiers"]]) == (b["accuracy"], [t["share"] for t in b["tiers"]])
            # the remote tier goes away: its items get the small tier's answer, degraded, and the breaker opens
            os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait(10)
            lost = httpx.post(base + "/v1/classify", json={"texts": TEXTS}, timeout=30).json()["results"]
            for g, w in zip(lost, want, strict=True):
                if w["tier"] == "final":
                    assert g["degraded"] and g["degraded_reason"] == "error" and g["tier"] == "small", g
            assert httpx.get(base + "/readyz").json()["tiers"][-1]["breaker"] == "open"
        here.close()


class _Reply(httpx.BaseTransport):
    """A KServe server that answers whatever it is told to (for the client's strictness)."""

    def __init__(self, meta, infer, status: int = 200):
        self.meta, self.infer, self.status, self.calls = meta, infer, status, 0

    def handle_request(self, request):
        self.calls += 1
        if request.method == "GET":
            return httpx.Response(200, json=self.meta)
        return httpx.Response(self.status, json=self.infer)


META = {"name": "final", "versions": ["v1"], "parameters": {"labels": ["ham", "spam"]}}
CFG = RemoteConfig(url="http://remote.test", model="final", retries=2, timeout_s=2)


def test_the_client_refuses_malformed_answers_and_retries_server_errors():
    items = [make_item("a"), make_item("b")]
    good = kserve.response_body("final", "v1", ["ham", "spam"], [
        TierOutput("ham", 0.9, {"ham": 0.9, "spam": 0.1}), TierOutput("spam", 0.8, {"ham": 0.2, "spam": 0.8})])
    tier = RemoteTier("final", CFG, client=httpx.Client(transport=_Reply(META, good)))
    outs = tier.predict(items)
    assert [o.label for o in outs] == ["ham", "spam"] and outs[1].probabilities == {"ham": 0.2, "spam": 0.8}
    assert tier.version() == "v1" and tier.labels == ["ham", "spam"]
    for broken in ({"outputs": []}, {**good, "outputs": good["outputs"][:1]},
                   {**good, "outputs": [{**o, "data": o["data"][:1]} if o["name"] == "label" else o for o in good["outputs"]]},
                   {**good, "outputs": [{**o, "data": ["eggs", "ham"]} if o["name"] == "label" else o for o in good["outputs"]]}):
        t = RemoteTier("final", CFG, client=httpx.Client(transport=_Reply(META, broken)))
        with pytest.raises(ModelError, match="not a usable KServe v2 answer"):
            t.predict(items)
    failing = _Reply(META, {"error": "busy"}, status=503)
    t = RemoteTier("final", CFG, client=httpx.Client(transport=failing))
    with pytest.raises(ModelError, match="after 3 attempt"):
        t.predict(items)
    assert failing.calls == 1 + 3  # the metadata, then the infer call and its two retries
    with pytest.raises(ModelError, match="names no label set"):
        RemoteTier("final", CFG, client=httpx.Client(transport=_Reply({"versions": ["v"]}, good)))


def test_infer_requests_are_read_strictly_and_configs_say_what_a_remote_tier_needs(tmp_path):
    assert kserve.texts_of(kserve.request_body(["x", "y"])) == ["x", "y"]
    for bad in ({}, {"inputs": [{"name": "text", "datatype": "FP32", "data": [1]}]},
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}, {"inputs": []}):
        with pytest.raises(InputError):
            kserve.texts_of(bad)
    from tiergate.config import TierConfig, load_config

    flat = TierConfig.model_validate({"name": "f", "kind": "remote", "protocol": "kserve-v2", "url": "http://h:1",
                                      "model": "large", "retries": 3})
    assert (flat.remote.url, flat.remote.model, flat.remote.retries) == ("http://h:1", "large", 3)
    for tier, why in [({"name": "f", "kind": "remote"}, "needs a `remote:` section"),
                      ({"name": "f", "kind": "onnx"}, "give its `path`"),
                      ({"name": "f", "kind": "remote", "remote": {"url": "ftp://x", "model": "m"}}, "url"),
                      ({"name": "f", "kind": "remote", "url": "http://h", "model": "m",
                        "remote": {"url": "http://h", "model": "m"}}, "not both")]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tiers": [tier]}))
        with pytest.raises(ConfigError, match=why):
            load_config(tmp_path / "c.yaml")
