"""Rules admin endpoints against a real uvicorn server running the real gateway (create_app), under traffic.

The acceptance scenario: while classify requests keep coming, a broken rule file is uploaded: it is refused
with every reason, no request fails, the old version keeps serving; then a good file swaps in.
"""

import concurrent.futures as cf
import threading
import time

import httpx
import pytest

from tests.conftest import running_server
from tests.gateway.conftest import LOTTERY
from tests.gateway.conftest import RULES as RULES_V1
from tests.rules.conftest import rules_yaml
from tiergate.config import Thresholds, TierConfig, TiergateConfig, save_config
from tiergate.gateway.app import create_app

TOKEN = "s3cret-token"
RULES_V2 = RULES_V1.replace("0.97", "0.93") + rules_yaml("""
- id: meeting-notes
  description: internal notes
  when: {keywords: [meeting notes]}
  then: {label: ham, confidence: 0.95}
  examples: {match: ["the meeting notes"], no_match: ["meeting"]}
""", header="").replace("rules:\n", "")
BROKEN = RULES_V1 + """  - id: lottery-win
    descripton: duplicate id and a misspelt key
    when: {regex: "(unclosed"}
    then: {label: spam}
"""


@pytest.fixture(scope="module")
def gateway(tiny_workdir, tmp_path_factory):
    d = tmp_path_factory.mktemp("rules-gateway")
    (d / "rules.yaml").write_text(RULES_V1)
    cfg = TiergateConfig(dataset="spamassassin", labels=["ham", "spam"], tiers=[
        TierConfig(name="rules", kind="rules", path="rules.yaml", threshold=Thresholds(default=0.0)),
        TierConfig(name="small", kind="onnx", path=str(tiny_workdir / "small"), threshold=Thresholds(default=0.9)),
        TierConfig(name="final", kind="onnx", path=str(tiny_workdir / "final")),
    ], model_dirs=[str(tiny_workdir)])
    save_config(cfg, d / "tiergate.yaml")
    with running_server(create_app(d / "tiergate.yaml")) as base:
        yield base, d


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def rules_version(base):
    return httpx.get(base + "/readyz").json()["rules_version"]


def test_admin_refuses_without_a_configured_token(gateway, monkeypatch):
    base, _ = gateway
    monkeypatch.delenv("TIERGATE_ADMIN_TOKEN", raising=False)
    r = httpx.post(base + "/admin/rules/reload", headers=auth())
    assert r.status_code == 403 and "TIERGATE_ADMIN_TOKEN" in r.json()["detail"]
    assert httpx.put(base + "/admin/rules", content=RULES_V1, headers=auth()).status_code == 403


def test_admin_needs_the_right_token(gateway, monkeypatch):
    base, _ = gateway
    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)
    assert httpx.post(base + "/admin/rules/reload").status_code == 401
    assert httpx.post(base + "/admin/rules/reload", headers=auth("wrong")).status_code == 401
    r = httpx.put(base + "/admin/rules", content=RULES_V1, headers={"Authorization": TOKEN})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_broken_upload_under_traffic_then_good_upload(gateway, monkeypatch):
    base, path = gateway
    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)
    v1 = rules_version(base)
    assert v1
    failures: list[str] = []
    answers: list[tuple[float, float, str, float]] = []  # (sent, answered, reason, confidence)
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=base, timeout=10) as c:
            while not stop.is_set():
                sent = time.time()
                try:
                    r = c.post("/v1/classify", json={"texts": [LOTTERY, "Subject: hi\n\nthe meeting notes"]})
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                first = r.json()["results"][0]
                answers.append((sent, time.time(), first["reason"], first["confidence"]))

    pool = cf.ThreadPoolExecutor(4)
    futures = [pool.submit(traffic) for _ in range(4)]
    try:
        time.sleep(0.5)
        r = httpx.put(base + "/admin/rules", content=BROKEN, headers=auth(), timeout=30)
        assert r.status_code == 422, r.text
        body = r.json()
        problems = " ".join(body["problems"])
        assert "unclosed" in problems and "duplicate id 'lottery-win'" in problems and "descripton" in problems
        assert body["rules_version"] == v1 and rules_version(base) == v1
        assert path.joinpath("rules.yaml").read_text() == RULES_V1  # a refused upload never touches the file
        time.sleep(0.5)
        t_swap = time.time()
        r = httpx.put(base + "/admin/rules", content=RULES_V2, headers=auth(), timeout=30)
        t_swapped = time.time()
        assert r.status_code == 200, r.text
        v2 = r.json()["rules_version"]
        assert v2 != v1 and r.json()["previous_version"] == v1 and rules_version(base) == v2
        time.sleep(0.5)
    finally:  # the traffic threads must end even when an assertion fails
        stop.set()
        for f in futures:
            f.result(timeout=30)
        pool.shutdown()
    assert failures == []
    # answered before the good upload was sent: the old set; sent after it was acknowledged: the new one
    before = [a for a in answers if a[1] < t_swap]
    after = [a for a in answers if a[0] > t_swapped]
    assert before and after
    assert all(reason == "rule:lottery-win" and conf == 0.97 for _, _, reason, conf in before)
    assert all(reason == "rule:lottery-win" and conf == 0.93 for _, _, reason, conf in after)
    assert path.joinpath("rules.yaml").read_text() == RULES_V2  # persisted, so a restart keeps it
    d = httpx.post(base + "/v1/classify", json={"text": "Subject: x\n\nthe meeting notes"}).json()
    assert d["tier"] == "rules" and d["reason"] == "rule:meeting-notes"


def test_reload_endpoint_and_metrics(gateway, monkeypatch):
    base, path = gateway
    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)
    (path / "rules.yaml").write_text(RULES_V1)
    r = httpx.post(base + "/admin/rules/reload", headers=auth(), timeout=30)
    assert r.status_code == 200 and r.json()["rules_version"] == rules_version(base)
    (path / "rules.yaml").write_text(BROKEN)
    r = httpx.post(base + "/admin/rules/reload", headers=auth(), timeout=30)
    assert r.status_code == 422 and len(r.json()["problems"]) >= 3
    text = httpx.get(base + "/metrics").text
    assert 'tiergate_rules_reload_failures_total{source="api"}' in text
    assert 'tiergate_rules_hits_total{rule="lottery-win"}' in text
    assert f'tiergate_rules_version_info{{version="{rules_version(base)}"}} 1.0' in text
    (path / "rules.yaml").write_text(RULES_V1)


# ------------------------------------------------------------------ edge cases on the router alone
def _router_client(tier):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tiergate.gateway.errors import install_error_handlers
    from tiergate.gateway.rules_admin import make_rules_admin_router

    app = FastAPI()
    install_error_handlers(app)  # the one place errors become HTTP
    app.include_router(make_rules_admin_router(lambda: tier))
    return TestClient(app)


def test_router_edge_cases(monkeypatch):
    from tiergate.rules.tier import RulesTier

    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)
    none = _router_client(None)
    assert none.post("/admin/rules/reload", headers=auth()).status_code == 404
    tier = RulesTier.from_text(RULES_V1)
    c = _router_client(tier)
    assert c.put("/admin/rules", content=b"\xff\xfe not utf-8", headers=auth()).status_code == 422
    assert c.put("/admin/rules", content=b"#" * 2_000_001, headers=auth()).status_code == 413
    r = c.post("/admin/rules/reload", headers=auth())  # built from text: nothing to re-read
    assert r.status_code == 422 and "replace_text" in r.json()["detail"]
    r = c.put("/admin/rules", content=RULES_V2, headers=auth())
    assert r.status_code == 200 and tier.version() == r.json()["rules_version"]
