"""The decision log through the real gateway (uvicorn on loopback, real ONNX tiers, a real SQLite file):
every decision logged with its versions and text hash, the privacy defaults, feedback by request id, deletes,
shadow audits and the live guarantee."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_server
from tests.gateway.conftest import HAM, LOTTERY, write_config
from tests.gateway.test_app import scrape
from tests.rules.test_reload import wait_for
from tiergate.decisionlog.privacy import text_sha256
from tiergate.gateway.app import create_app

TOKEN = "log-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TIERGATE = Path(sys.executable).with_name("tiergate")
# small decides these (confident), or escalates them to the final tier (not): the tiny small tier is unsure
# of short plain notes
MIXED = [HAM, "Subject: re: lunch\n\nok, see you at noon, write to jo.doe@example.org or 0171 555 0199",
         "cheap meds online now", "hello", LOTTERY]


@pytest.fixture(autouse=True)
def admin_token(monkeypatch):
    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)


def classify(base, texts):
    r = httpx.post(base + "/v1/classify", json={"texts": texts}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def rows(db: Path, sql: str, *args):
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def test_every_decision_is_logged_with_versions_and_a_hash_and_no_text_by_default(serving_dir, tiny_workdir, tmp_path):
    cfg = write_config(serving_dir, tiny_workdir, "log-default", log={"path": str(tmp_path / "d.db")})
    with running_server(create_app(cfg)) as base:
        out = classify(base, MIXED)
        ready = httpx.get(base + "/readyz").json()
        # group commit: the rows land within a few commit intervals
        assert wait_for(lambda: (tmp_path / "d.db").exists()
                      and rows(tmp_path / "d.db", "SELECT COUNT(*) FROM decisions")[0][0] == len(MIXED))
    got = {r[0]: r for r in rows(tmp_path / "d.db", "SELECT request_id, tier, label, path, text_sha256, text, v.versions "
                                 "FROM decisions JOIN versions v ON v.id = versions_id")}
    assert ready["decision_log"]["store_text"] == "none"
    for d, text in zip(out, MIXED, strict=True):
        rid, tier, label, path, digest, stored, versions = got[d["request_id"]]
        assert (tier, label, path.split(",")) == (d["tier"], d["label"], d["path"])
        assert digest == text_sha256(text)
        assert stored is None, "the default keeps no text (log.store_text: none)"
        assert json.loads(versions) == {t["name"]: t["version"] for t in ready["tiers"]}


def test_store_text_escalated_keeps_only_escalated_texts_redacted(serving_dir, tiny_workdir, tmp_path):
    db = tmp_path / "d.db"
    cfg = write_config(serving_dir, tiny_workdir, "log-escalated", log={"path": str(db), "store_text": "escalated"})
    with running_server(create_app(cfg)) as base:
        out = classify(base, MIXED)
        assert wait_for(lambda: db.exists() and rows(db, "SELECT COUNT(*) FROM decisions")[0][0] == len(MIXED))
    stored = dict(rows(db, "SELECT request_id, text FROM decisions"))
    for d in out:
        if len(d["path"]) > 1:
            assert stored[d["request_id"]] is not None
            assert "@example.org" not in stored[d["request_id"]] and "0171 555 0199" not in stored[d["request_id"]]
        else:
            assert stored[d["request_id"]] is None, f"{d['path']} was not escalated, so its text is not kept"
    assert any(len(d["path"]) > 1 for d in out) and any(len(d["path"]) == 1 for d in out)
    if len(out[1]["path"]) > 1:  # the note with an address and a phone number
        assert "<email>" in stored[out[1]["request_id"]] and "<number>" in stored[out[1]["request_id"]]


def test_feedback_is_acknowledged_after_commit_and_refused_for_unknown_ids_and_labels(serving_dir, tiny_workdir, tmp_path):
    db = tmp_path / "d.db"
    cfg = write_config(serving_dir, tiny_workdir, "log-feedback", log={"path": str(db)})
    with running_server(create_app(cfg)) as base:
        before = scrape(base)
        out = classify(base, [HAM, LOTTERY])
        fb = lambda body: httpx.post(base + "/v1/feedback", json=body, timeout=30)  # noqa: E731
        r = fb({"request_id": out[1]["request_id"], "label": "ham"})
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == ("agreed" if out[1]["label"] == "ham" else "corrected")
        # committed before the 200: another connection sees it at once
        assert rows(db, "SELECT label FROM feedback WHERE request_id = ?", out[1]["request_id"]) == [("ham",)]
        assert fb({"request_id": out[1]["request_id"], "label": "spam"}).status_code == 200  # replaces
        r404 = fb({"request_id": "0" * 32, "label": "ham"})
        assert r404.status_code == 404 and r404.json()["error"] == "NotFoundError"
        r422 = fb({"request_id": out[0]["request_id"], "label": "eggs"})
        assert r422.status_code == 422 and r422.json()["labels"] == ["ham", "spam"]
        assert fb({"request_id": out[0]["request_id"]}).status_code == 422
        assert fb({"request_id": out[0]["request_id"], "label": "ham", "x": 1}).status_code == 422
        after = scrape(base)
    assert rows(db, "SELECT label, updates FROM feedback WHERE request_id = ?", out[1]["request_id"]) == [("spam", 2)]
    delta = lambda o: after[f'tiergate_feedback_total{{outcome="{o}"}}'] - before.get(  # noqa: E731
        f'tiergate_feedback_total{{outcome="{o}"}}', 0)
    assert delta("agreed") + delta("corrected") == 2 and delta("unknown_id") == 1 and delta("bad_label") == 1
    exported = subprocess.run([str(TIERGATE), "feedback", "export", "--config", str(cfg), "--json"],
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert [(f["request_id"], f["label"], f["decided_label"]) for f in doc["feedback"]] == [
        (out[1]["request_id"], "spam", out[1]["label"])]
    # the refused label is kept beside its decision, for the operator to see the client's label mismatch
    assert [(f["request_id"], f["label"], f["reason"]) for f in doc["rejected"]] == [
        (out[0]["request_id"], "eggs", "bad_label")]
    assert r422.json()["kept_as_rejected"] is True


def test_a_deleted_decision_is_gone_with_its_feedback(serving_dir, tiny_workdir, tmp_path):
    db = tmp_path / "d.db"
    cfg = write_config(serving_dir, tiny_workdir, "log-delete", log={"path": str(db), "store_text": "all"})
    with running_server(create_app(cfg)) as base:
        a, b = classify(base, [HAM, "Subject: hi\n\nsecond"])
        assert httpx.post(base + "/v1/feedback", json={"request_id": a["request_id"], "label": "ham"}).status_code == 200
        assert httpx.delete(base + f"/admin/decisions/{a['request_id']}").status_code == 401  # admin only
        r = httpx.delete(base + f"/admin/decisions/{a['request_id']}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert rows(db, "SELECT COUNT(*) FROM decisions WHERE request_id = ?", a["request_id"]) == [(0,)]
        assert rows(db, "SELECT COUNT(*) FROM feedback") == [(0,)]
        assert httpx.delete(base + f"/admin/decisions/{a['request_id']}", headers=ADMIN).status_code == 404
        assert httpx.post(base + "/v1/feedback", json={"request_id": a["request_id"], "label": "ham"}).status_code == 404
        # the command line removes one too, while the gateway runs
        cli = subprocess.run([str(TIERGATE), "log", "delete", "--config", str(cfg), "--request-id", b["request_id"]],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert rows(db, "SELECT COUNT(*) FROM decisions") == [(0,)]
        again = subprocess.run([str(TIERGATE), "log", "delete", "--config", str(cfg), "--request-id", b["request_id"]],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "no decision" in again.stderr


def test_shadow_audits_count_agreement_charge_their_cost_and_bound_the_live_risk(serving_dir, tiny_workdir, tmp_path):
    db = tmp_path / "d.db"
    cfg = write_config(serving_dir, tiny_workdir, "log-shadow", log={"path": str(db)},
                       shadow_audit={"share": 1.0, "max_per_s": 1000, "max_queue": 1000})
    texts = [f"Subject: note {i}\n\nyou won the lottery {i}" for i in range(30)] + \
            [f"{HAM} {i}" for i in range(30)]
    with running_server(create_app(cfg)) as base:
        before = scrape(base)
        out = classify(base, texts)
        cheap = [d for d in out if d["tier"] != "final"]
        assert cheap, "some items must be decided below the final tier"

        def audited():
            m = scrape(base)
            return m.get("tiergate_shadow_audits_total", 0) - before.get("tiergate_shadow_audits_total", 0) == len(cheap)

        assert wait_for(audited), "every cheaply decided item is audited (share 1.0)"
        after = scrape(base)
        live = httpx.get(base + "/readyz").json()["live_guarantee"]
    final_cost = 0.02 * 0.09 / 3600
    assert after["tiergate_shadow_cost_usd_total"] - before.get("tiergate_shadow_cost_usd_total", 0) == pytest.approx(
        len(cheap) * final_cost)
    assert live["audits"] == len(cheap) and live["decisions"] == len(out)
    per = live["per_tier"]
    assert sum(t["audits"] for t in per.values()) == len(cheap)
    assert 0 <= live["lower_bound"] <= live["risk"] <= live["upper_bound"] <= 1
    assert live["verdict"] == "no certificate"
    # the final tier's answers sit beside the decisions, for retraining
    assert wait_for(lambda: rows(db, "SELECT COUNT(*) FROM decisions WHERE audit_label IS NOT NULL")[0][0] == len(cheap))
    for t in per:
        agreed = after[f'tiergate_shadow_audits_total{{agreed="true",tier="{t}"}}'] - before.get(
            f'tiergate_shadow_audits_total{{agreed="true",tier="{t}"}}', 0)
        assert agreed == per[t]["audits"] - per[t]["disagreed"]


def test_shadow_audits_never_wait_in_the_request_path_they_are_dropped(serving_dir, tiny_workdir, tmp_path):
    db = tmp_path / "d.db"
    cfg = write_config(serving_dir, tiny_workdir, "log-shadow-drop", log={"path": str(db)},
                       shadow_audit={"share": 1.0, "max_per_s": 1000, "max_queue": 2, "max_batch": 1})
    with running_server(create_app(cfg)) as base:
        r = httpx.post(base + "/admin/faults", json={"tier": "final", "delay_ms": 500}, headers=ADMIN)
        assert r.status_code == 200
        before = scrape(base)
        t0 = time.perf_counter()
        out = classify(base, [f"you won the lottery {i}" for i in range(20)])
        took = time.perf_counter() - t0
        after = scrape(base)
    assert all(d["tier"] == "rules" for d in out)
    assert took < 0.5, f"rules-decided answers waited for the audits ({took:.2f} s)"
    dropped = after['tiergate_shadow_dropped_total{reason="queue_full"}'] - before.get(
        'tiergate_shadow_dropped_total{reason="queue_full"}', 0)
    assert dropped >= 20 - 2 - 1


def test_the_log_must_open_or_the_gateway_is_not_ready(serving_dir, tiny_workdir, tmp_path):
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    cfg = write_config(serving_dir, tiny_workdir, "log-bad", log={"path": str(bad)})
    app = create_app(cfg)
    with pytest.raises(RuntimeError, match="not ready"):
        with running_server(app, timeout=8):
            pass
    assert "not a usable decision log" in (app.state.gateway.load_error or "")
