"""deploy/ against a real Prometheus: promtool accepts the config, the rules and their unit tests; a Prometheus
on loopback scrapes a real gateway (uvicorn, real ONNX tiers, a real certificate) under traffic, and every
recording rule, every alert rule and every Grafana panel's query evaluates and returns data."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, running_server
from tests.deploy.conftest import need
from tests.gateway.conftest import HAM, LOTTERY
from tests.gateway.test_app import scrape
from tiergate.gateway.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
TEXTS = [HAM, LOTTERY, "Subject: cheap meds\n\nbuy now, limited offer", "hello", "Subject: re: lunch\n\nok at noon"]


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run([need("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_config_the_rules_and_their_tests():
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "rules.yml"),
                 ("test", "rules", "rules_test.yml")):
        r = promtool(*args)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    runbook = (ROOT / "docs" / "operations.md").read_text()
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    tested = (PROM / "rules_test.yml").read_text()
    assert len(alerts) >= 10
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert {"summary", "description", "runbook_url"} <= set(a["annotations"]), a["alert"]
        anchor = a["annotations"]["runbook_url"].split("#")[1]
        assert f"### {a['alert']}" in runbook and anchor == a["alert"].lower(), a["alert"]
        assert tested.count(f"alertname: {a['alert']}") >= 2, f"{a['alert']}: test it firing and not firing"


@contextlib.contextmanager
def prometheus(target: str, work: Path):
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(PROM / "rules.yml")],
           "scrape_configs": [{"job_name": "tiergate", "static_configs": [{"targets": [target]}]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen([need("prometheus"), f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(base + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# Grafana's interval variables, as a 1 s scrape over a minute of traffic would see them.
MACROS = {"$__rate_interval": "30s", "$__range": "2m", "$__interval": "5s"}


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel.get("targets") or []:
                out.append((path.name, panel["title"], t["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    for k, v in MACROS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"a dashboard variable this test does not know: {expr}"
    return expr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_gateway_and_every_rule_and_panel_has_data(calibrated_config, tmp_path):
    with running_server(create_app(calibrated_config)) as base:
        target = base.removeprefix("http://")
        with prometheus(target, tmp_path) as prom:
            stop = threading.Event()

            def traffic():
                with httpx.Client(base_url=base, timeout=30) as c:
                    while not stop.is_set():
                        r = c.post("/v1/classify", json={"texts": TEXTS})
                        c.post("/v1/classify", json={"text": HAM, "final_only": True})
                        if r.status_code == 200:
                            c.post("/v1/feedback", json={"request_id": r.json()["results"][0]["request_id"],
                                                         "label": "ham"})
                        time.sleep(0.05)

            t = threading.Thread(target=traffic)
            t.start()
            try:
                def query(expr: str) -> list:
                    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=30).json()
                    assert r["status"] == "success", (expr, r)
                    return r["data"]["result"]

                # rules need a few evaluations, rate() a few scrapes
                deadline = time.time() + 90
                while time.time() < deadline:
                    groups = httpx.get(prom + "/api/v1/rules", timeout=30).json()["data"]["groups"]
                    rules = [r for g in groups for r in g["rules"]]
                    recording = [r["name"] for r in rules if r["type"] == "recording"]
                    if rules and all(r["health"] == "ok" for r in rules) and all(query(n) for n in recording) \
                            and time.time() > deadline - 60:
                        break
                    time.sleep(2)
                assert query('up{job="tiergate"}')[0]["value"][1] == "1"
                bad = [r["name"] for r in rules if r["health"] != "ok"]
                assert not bad, f"rules that do not evaluate: {bad}"
                empty = [n for n in recording if not query(n)]
                assert not empty, f"recording rules without data: {empty}"
                assert sum(r["type"] == "alerting" for r in rules) >= 10
                queries = panel_queries()
                assert len(queries) >= 25
                no_data = [(board, title, expr) for board, title, expr in queries if not query(grafana_to_promql(expr))]
                assert not no_data, f"panels whose query returns nothing: {no_data}"
                assert float(query("sum(tiergate_shadow_audits_total)")[0]["value"][1]) > 0
            finally:
                stop.set()
                t.join(30)
        # the money adds up: the gateway's running savings are the baseline less the cascade's and the audits' cost
        m = scrape(base)
        assert m["tiergate_cost_saved_usd"] == pytest.approx(
            m["tiergate_baseline_cost_usd_total"] - m["tiergate_cost_usd_total"] - m["tiergate_shadow_cost_usd_total"],
            rel=1e-9, abs=1e-15)


def test_the_checked_in_dashboards_are_what_the_code_makes():
    r = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "dashboards.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids) and d["uid"].startswith("tiergate-")
        for p in d["panels"]:
            for t in p.get("targets") or []:
                assert t["datasource"]["uid"] == "${datasource}"
                assert re.search(r"tiergate[_:]", t["expr"]), t["expr"]
