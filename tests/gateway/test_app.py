"""The gateway against a real uvicorn server on loopback, serving a real two-tier ONNX cascade."""

import concurrent.futures as cf
import re

import httpx
import pytest
import yaml

from tests.conftest import running_server
from tiergate.gateway.app import create_app

SPAM = ("Subject: FREE money!!! Click here now\n\nYou have been selected to receive $1,000,000. Act now, limited "
        "time offer, click http://example.com/win")
HAM = "Subject: meeting notes\n\nHi Bob, attached are the notes from Tuesday's design review."
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$')


def scrape(base: str) -> dict[str, float]:
    """Sum of every metric's samples by name, and each labelled sample by its full key."""
    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@pytest.fixture(scope="module")
def server(tiny_workdir):
    cfg = yaml.safe_load((tiny_workdir / "tiergate.yaml").read_text())
    cfg["server"] = {"anonymous_privileges": ["final_only", "epsilon"]}
    (tiny_workdir / "open.yaml").write_text(yaml.safe_dump(cfg))
    with running_server(create_app(tiny_workdir / "open.yaml")) as base:
        yield base


def test_health_and_readiness(server):
    assert httpx.get(server + "/healthz").json()["status"] == "alive"
    r = httpx.get(server + "/readyz").json()
    assert r["ready"] is True and [t["name"] for t in r["tiers"]] == ["small", "final"]
    assert all(t["version"] for t in r["tiers"])
    assert httpx.get(server + "/docs").status_code == 200
    assert "/v1/classify" in httpx.get(server + "/openapi.json").json()["paths"]


def test_single_and_batch_move_the_counters(server):
    before = scrape(server)
    one = httpx.post(server + "/v1/classify", json={"text": SPAM}).json()
    assert {"label", "confidence", "tier", "request_id", "reason", "latency_ms", "cost_usd", "probabilities"} <= set(one)
    assert one["label"] in ("ham", "spam") and one["tier"] in ("small", "final")
    many = httpx.post(server + "/v1/classify", json={"texts": [SPAM, HAM] * 5}).json()["results"]
    assert len(many) == 10 and len({d["request_id"] for d in many}) == 10
    after = scrape(server)
    assert after["tiergate_decisions_total"] - before.get("tiergate_decisions_total", 0) == 11
    n_final = sum(1 for d in [one, *many] if d["tier"] == "final")
    esc = 'tiergate_escalations_total{from_tier="small",to_tier="final"}'
    assert after[esc] - before.get(esc, 0) == n_final
    # every item pays the small tier (1 ms at 0.09 USD/h); escalated ones pay the final tier too
    small_cost = 0.001 * 0.09 / 3600
    key = 'tiergate_cost_usd_total{tier="small"}'
    assert after[key] - before.get(key, 0) == pytest.approx(11 * small_cost)
    base_delta = after["tiergate_baseline_cost_usd_total"] - before.get("tiergate_baseline_cost_usd_total", 0)
    assert base_delta == pytest.approx(11 * 0.02 * 0.09 / 3600)
    saved = after["tiergate_cost_saved_usd"] - before.get("tiergate_cost_saved_usd", 0)
    spent = sum(after[f'tiergate_cost_usd_total{{tier="{t}"}}'] - before.get(f'tiergate_cost_usd_total{{tier="{t}"}}', 0)
                for t in ("small", "final"))
    shadow = after["tiergate_shadow_cost_usd_total"] - before.get("tiergate_shadow_cost_usd_total", 0)
    assert saved == pytest.approx(base_delta - spent - shadow)  # net of any shadow audit the 2% sample made
    assert after['tiergate_tier_latency_seconds_count{tier="small"}'] > before.get('tiergate_tier_latency_seconds_count{tier="small"}', 0)


def test_final_only(server):
    d = httpx.post(server + "/v1/classify", json={"text": HAM, "final_only": True}).json()
    assert d["tier"] == "final" and d["path"] == ["final"] and d["final_only"] is True


@pytest.mark.parametrize("body", [{}, {"text": "a", "texts": ["b"]}, {"texts": []}, {"text": 5}, {"txt": "a"}])
def test_bad_requests_get_422(server, body):
    r = httpx.post(server + "/v1/classify", json=body)
    assert r.status_code == 422 and r.json()["error"] == "InputError"


def test_too_many_items_is_422(server):
    r = httpx.post(server + "/v1/classify", json={"texts": ["x"] * 257})
    assert r.status_code == 422 and "max_batch_items" in r.json()["detail"]


def test_overload_answers_429_not_timeouts(tiny_workdir, tmp_path):
    cfg = yaml.safe_load((tiny_workdir / "tiergate.yaml").read_text())
    cfg["server"] = {"max_inflight": 1}
    cfg["model_dirs"] = [str(tiny_workdir)]
    for t in cfg["tiers"]:
        t["path"] = str(tiny_workdir / t["path"])
    p = tmp_path / "tight.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with running_server(create_app(p)) as base:
        before = scrape(base)
        body = {"texts": [SPAM * 20, HAM * 20] * 100}
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(base + "/v1/classify", json=body, timeout=60).status_code, range(8)))
        assert set(codes) <= {200, 429}, codes
        assert 429 in codes and 200 in codes
        r = httpx.post(base + "/v1/classify", json={"text": HAM})
        assert r.status_code == 200
        m = scrape(base)
        key = 'tiergate_requests_total{outcome="overloaded"}'
        assert m[key] - before.get(key, 0) == codes.count(429)  # the registry is shared by every server here


def test_stricter_epsilon_without_certificate_goes_to_final_tier(server):
    d = httpx.post(server + "/v1/classify", json={"text": HAM, "epsilon": 0.001}).json()
    assert d["tier"] == "final" and d["applied"]["mode"] == "final_only"
    r = httpx.post(server + "/v1/classify", json={"text": HAM, "epsilon": 2})
    assert r.status_code == 422


def test_status_page_shows_tiers_and_counts(server):
    httpx.post(server + "/v1/classify", json={"text": SPAM})
    page = httpx.get(server + "/status")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<td>small</td>" in page.text and "<td>final</td>" in page.text
    assert "certificate: none" in page.text
