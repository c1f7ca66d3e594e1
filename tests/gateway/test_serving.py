"""The serving path against a real uvicorn server on loopback and real ONNX tiers: batching across requests,
admission by work, deadlines, degraded answers, the circuit breaker, faults, privileges, limits, hot swap."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import running_server
from tests.gateway.conftest import HAM, LOTTERY, write_config
from tests.gateway.test_app import scrape
from tiergate.gateway.app import create_app
from tiergate.gateway.auth import new_key

TOKEN = "serving-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
OPEN = {"anonymous_privileges": ["final_only", "epsilon"]}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch):
    monkeypatch.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)


def post(base, body, timeout=30, **kw):
    return httpx.post(base + "/v1/classify", json=body, timeout=timeout, **kw)


def fire(base, n, body):
    """``n`` requests at once from ``n`` connected clients: [(status, retry-after, seconds)]."""
    import threading

    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(n)]
    for c in clients:  # connect first: only the answer is timed
        c.get("/healthz")
    start = threading.Barrier(n)

    def one(c):
        start.wait()
        t = time.perf_counter()
        r = c.post("/v1/classify", json=body)
        return r, r.headers.get("retry-after"), time.perf_counter() - t

    with cf.ThreadPoolExecutor(n) as ex:
        res = list(ex.map(one, clients))
    for c in clients:
        c.close()
    return res


def fault(base, **body):
    r = httpx.post(base + "/admin/faults", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("max_batch", [64, 1])
def test_concurrent_requests_share_one_batch(serving_dir, tiny_workdir, max_batch):
    p = write_config(serving_dir, tiny_workdir, f"batch{max_batch}", {
        **OPEN, "tiers": {"final": {"max_batch": max_batch, "max_queue_items": 64, "max_queue_ms": 60_000}}})
    with running_server(create_app(p)) as base:
        fault(base, tier="final", delay_ms=300)  # a batch runs long enough for the others to queue behind it
        before = scrape(base)
        rs = [r for r, _, _ in fire(base, 12, {"text": HAM, "final_only": True})]
        assert all(r.status_code == 200 and r.json()["tier"] == "final" for r in rs)
        after = scrape(base)
        key = 'tiergate_batch_size_{}{{tier="final"}}'
        batches = after[key.format("count")] - before.get(key.format("count"), 0)
        items = after[key.format("sum")] - before.get(key.format("sum"), 0)
        assert items == 12
        if max_batch == 1:
            assert batches == 12
        else:  # the first batch takes what came first; the rest gather while it runs
            assert batches <= 4, batches


def test_saturated_tier_answers_429_with_retry_after(serving_dir, tiny_workdir):
    p = write_config(serving_dir, tiny_workdir, "tight", {
        **OPEN, "tiers": {"final": {"max_batch": 1, "max_queue_items": 2}}})
    with running_server(create_app(p)) as base:
        fault(base, tier="final", delay_ms=300)
        before = scrape(base)

        res = [(r.status_code, ra, dt) for r, ra, dt in fire(base, 12, {"text": HAM, "final_only": True})]
        codes = [c for c, _, _ in res]
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        rejected = [(ra, dt) for c, ra, dt in res if c == 429]
        assert all(ra is not None and int(ra) >= 1 for ra, _ in rejected)
        slowest_ok = max(dt for c, _, dt in res if c == 200)
        # refused at once, not after waiting in line (the admitted ones wait for 300 ms batches, one by one)
        assert max(dt for _, dt in rejected) < 0.6 * slowest_ok
        m = scrape(base)
        for key in ('tiergate_rejected_total{tier="final"}', 'tiergate_requests_total{outcome="overloaded"}'):
            assert m[key] - before.get(key, 0) == len(rejected)


def test_deadline_skips_a_slow_final_tier(serving_dir, tiny_workdir):
    # the small tier never decides, so everything not ruled on goes to the final tier
    p = write_config(serving_dir, tiny_workdir, "deadline", OPEN, final_threshold_small=1.01)
    with running_server(create_app(p)) as base:
        fault(base, tier="final", delay_ms=1200)
        t = time.perf_counter()
        r = post(base, {"text": HAM, "deadline_ms": 300})
        first = time.perf_counter() - t
        d = r.json()
        assert r.status_code == 200 and d["degraded"] and d["degraded_reason"] == "deadline" and d["tier"] == "small"
        assert first < 1.0  # answered at its deadline, not when the slow batch ended
        # the final tier's batch was computing when the deadline came: that attempt is on the bill
        assert d["path"] == ["rules", "small", "final"]
        assert d["cost_usd"] == pytest.approx((0.001 + 0.02) * 0.09 / 3600)
        time.sleep(1.3)  # the slow batch ends; the runner now knows how slow the final tier is
        t = time.perf_counter()
        r = post(base, {"text": HAM}, headers={"X-Tiergate-Deadline-Ms": "300"})
        d = r.json()
        assert d["degraded_reason"] == "deadline" and "final" not in d["path"]  # skipped at routing time
        assert d["cost_usd"] == pytest.approx(0.001 * 0.09 / 3600)  # never attempted, never charged
        assert time.perf_counter() - t < 1.0  # well before the slow batch would have ended
        assert post(base, {"text": HAM}, headers={"X-Tiergate-Deadline-Ms": "soon"}).status_code == 422
        assert scrape(base)['tiergate_degraded_total{reason="deadline"}'] >= 2


def test_an_item_still_queued_at_its_deadline_is_shed_with_429(serving_dir, tiny_workdir):
    """Nothing was computed for it: the answer is the overload one (429 + Retry-After), not a 504."""
    p = write_config(serving_dir, tiny_workdir, "shed", OPEN)
    with running_server(create_app(p)) as base:
        fault(base, tier="final", delay_ms=900)
        with cf.ThreadPoolExecutor(1) as ex:
            first = ex.submit(post, base, {"text": HAM, "final_only": True})  # holds the final tier's one slot
            time.sleep(0.2)
            t = time.perf_counter()
            r = post(base, {"text": LOTTERY, "final_only": True, "deadline_ms": 300})
            waited = time.perf_counter() - t
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1 and "still waiting for tier final" in r.json()["detail"]
            assert waited < 0.7  # answered at its deadline, not when the batch ahead of it ended
            assert first.result().status_code == 200


def test_a_deadline_shorter_than_a_tiers_time_for_one_item_is_a_504_not_a_429(serving_dir, tiny_workdir):
    """The tier is the slow part: a retry with the same deadline would fail again, so no Retry-After."""
    p = write_config(serving_dir, tiny_workdir, "tooshort", OPEN, final_threshold_small=1.01)
    with running_server(create_app(p)) as base:
        fault(base, tier="small", delay_ms=200)
        assert post(base, {"text": HAM}).status_code == 200  # the runner learns the small tier's 200 ms
        r = post(base, {"text": HAM, "deadline_ms": 1e-6})  # served with the 1 ms floor: under one item's time
        assert r.status_code == 504 and r.json()["error"] == "DeadlineError", r.text
        assert "retry-after" not in r.headers
        assert post(base, {"text": HAM}).status_code == 200  # the idle gateway still answers a sane deadline


def test_a_request_that_waited_too_long_on_the_event_loop_is_refused_at_the_door(serving_dir, tiny_workdir):
    p = write_config(serving_dir, tiny_workdir, "loopwait", {"max_loop_wait_ms": 0.001, "min_open_requests": 0})
    with running_server(create_app(p)) as base:
        r = post(base, {"text": LOTTERY})
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert "event loop" in r.json()["detail"]
        assert httpx.get(base + "/healthz").status_code == 200  # probes are never refused
        m = scrape(base)
        assert m['tiergate_rejected_total{tier="event_loop"}'] >= 1 and m["tiergate_loop_wait_seconds_count"] >= 2


def test_the_event_loop_limit_halves_while_requests_are_refused_and_recovers(serving_dir, tiny_workdir):
    from tiergate.cascade import Cascade
    from tiergate.errors import OverloadedError
    from tiergate.gateway.scheduler import Scheduler

    cascade = Cascade.from_config(write_config(serving_dir, tiny_workdir, "aimd", {"max_loop_wait_ms": 40}))
    sched = Scheduler(cascade, cascade.config.server)

    def next_window():
        sched._loop_window -= 1.0  # as if the adjustment window had passed

    sched.door_check(waited_s=0.030)  # within 40 ms: admitted
    with pytest.raises(OverloadedError):
        sched.door_check(waited_s=0.045)
    limits = []
    for _ in range(6):  # refusals in every window: 20, 10, 5, 2.5, then the 2 ms floor
        next_window()
        limits.append(round(sched._loop_limit() * 1000, 2))
        with pytest.raises(OverloadedError):
            sched.door_check(waited_s=0.050)
    assert limits == [20.0, 10.0, 5.0, 2.5, 2.0, 2.0]
    with pytest.raises(OverloadedError):
        sched.door_check(waited_s=0.003)  # over the lowered limit now
    for _ in range(10):  # quiet windows: back up 5 ms each, never past the configured 40 ms
        next_window()
        sched.door_check(waited_s=0.0)
    assert sched._loop_limit() == pytest.approx(0.040)
    sched.door_check(waited_s=0.030)
    cascade.close()


def test_a_wait_behind_few_open_requests_is_never_refused(serving_dir, tiny_workdir):
    """A closed-loop client with 32 connections waits behind its own requests: not a flood. Refusing it would
    lock the limit low (each refusal brings its next request at once: measured, 94% 429s at 32 connections
    after one stall), so the loop-wait check applies only beyond ``server.min_open_requests`` open."""
    from tiergate.cascade import Cascade
    from tiergate.errors import OverloadedError
    from tiergate.gateway.scheduler import Scheduler

    cascade = Cascade.from_config(write_config(serving_dir, tiny_workdir, "minopen", {"max_loop_wait_ms": 10}))
    sched = Scheduler(cascade, cascade.config.server)
    assert cascade.config.server.min_open_requests == 32
    for _ in range(20):
        sched.door_check(waited_s=0.5, open_n=31)  # admitted, however long it waited
    with pytest.raises(OverloadedError, match="event loop"):
        sched.door_check(waited_s=0.5, open_n=32)
    cascade.close()


def test_requests_over_the_open_cap_are_refused_by_the_protocol(serving_dir, tiny_workdir):
    """``server.max_open_requests``: a classify request read while that many are unanswered is refused at
    once (429, Retry-After, the usual error body) by the HTTP protocol; probes are not; the count returns to 0."""
    import socket

    from tiergate.gateway.protocol import StampedHttpToolsProtocol as proto

    def raw(body: dict) -> bytes:
        b = json.dumps(body).encode()
        return (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(b), b))

    def answer(sock) -> tuple[int, bytes]:
        """One response off a keep-alive socket: (status, body)."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        assert len(rest) == length, "bytes after the response: the connection is out of step"
        return int(head.split(b" ")[1]), rest

    p = write_config(serving_dir, tiny_workdir, "opencap", {**OPEN, "max_open_requests": 1})
    with running_server(create_app(p)) as base:
        port = int(base.rsplit(":", 1)[1])
        overloaded0 = scrape(base).get('tiergate_requests_total{outcome="overloaded"}', 0)
        assert proto.max_open == 1
        fault(base, tier="final", delay_ms=800)
        with cf.ThreadPoolExecutor(1) as ex, socket.create_connection(("127.0.0.1", port)) as keep:
            first = ex.submit(post, base, {"text": HAM, "final_only": True})  # stays open for 0.8 s
            time.sleep(0.3)
            r = post(base, {"text": HAM})
            assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
            assert "max_open_requests" in r.json()["detail"] and r.json()["error"] == "OverloadedError"
            # refused with its body still arriving: the body is skipped, and the connection stays usable
            big = raw({"text": HAM * 200})
            keep.sendall(big[:200])
            status, body = answer(keep)
            assert status == 429 and json.loads(body)["retry_after_s"] == 1
            keep.sendall(big[200:])
            assert httpx.get(base + "/healthz").status_code == 200
            assert first.result().status_code == 200
            keep.sendall(raw({"text": HAM}))  # the cap is free again: the same connection is answered
            status, body = answer(keep)
            assert status == 200 and json.loads(body)["label"], body

        with socket.create_connection(("127.0.0.1", port)) as sock:  # goes away mid-request
            sock.sendall(raw({"text": HAM, "final_only": True}))
            time.sleep(0.2)
        time.sleep(1.0)
        assert proto.open_now == 0
        assert post(base, {"text": HAM}).status_code == 200
        got = scrape(base)
        assert got['tiergate_rejected_total{tier="open_requests"}'] == 2
        assert got['tiergate_requests_total{outcome="overloaded"}'] - overloaded0 == 2


def test_a_flood_beyond_the_loop_budget_is_refused_by_the_protocol(serving_dir, tiny_workdir):
    """``server.loop_budget_ms``: once the loop's cost per request is measured, classify requests beyond the
    budget of one turn get their 429 from the protocol (Retry-After, the usual body); nothing else fails,
    and the loop's lag is in /metrics."""
    p = write_config(serving_dir, tiny_workdir, "budget", {**OPEN, "loop_budget_ms": 0.001,
                                                           "loop_budget_min_open": 0})
    with running_server(create_app(p)) as base:
        seen: Counter = Counter()
        by_budget = []
        for _ in range(6):
            for r, retry, _ in fire(base, 48, {"text": HAM}):
                seen[r.status_code] += 1
                if r.status_code == 429 and "loop_budget_ms" in r.json()["detail"]:
                    assert retry == "1" and r.json()["error"] == "OverloadedError"
                    by_budget.append(r)
        assert set(seen) <= {200, 429}, seen
        assert by_budget and seen[200], seen
        got = scrape(base)
        assert got["tiergate_loop_lag_seconds_count"] > 0
        assert got['tiergate_rejected_total{tier="loop_budget"}'] >= len(by_budget)
        assert post(base, {"text": HAM}).status_code == 200  # one request alone is admitted


def test_shadow_audits_on_a_slow_final_tier_never_turn_traffic_away(serving_dir, tiny_workdir, tmp_path):
    """Audit batches run on the final tier only when it is idle, and admission leaves them out: with every
    decision audited and each audit batch taking 1.5 s (far past the final tier's max_queue_ms of 0.3 s),
    traffic that the rules decide is still admitted."""
    p = write_config(serving_dir, tiny_workdir, "audits-slow", {**OPEN, "tiers": {"final": {"max_queue_ms": 300}}},
                     log={"path": str(tmp_path / "d.db")},
                     shadow_audit={"share": 1.0, "max_per_s": 1000, "max_queue": 1000, "max_batch": 8})
    with running_server(create_app(p)) as base:
        fault(base, tier="final", delay_ms=1500)
        statuses = []
        t_end = time.perf_counter() + 5
        while time.perf_counter() < t_end:  # each answer queues an audit; the final tier is busy with them
            statuses.append(post(base, {"text": LOTTERY}).status_code)
            time.sleep(0.02)
        got = scrape(base)
        assert sum(v for k, v in got.items() if k.startswith("tiergate_shadow_audits_total")) >= 8, "audits ran"
        assert statuses and set(statuses) == {200}, Counter(statuses)


def test_a_model_tier_lives_in_its_own_process_only(serving_dir, tiny_workdir):
    """A model tier is built in its own process and never in the gateway's: the gateway holds its name, labels,
    version and capabilities, and its answers come from the child (tests/gateway/test_lifecycle.py checks that
    the gateway's process never maps onnxruntime)."""
    from tiergate.gateway.worker import ProcessTier

    p = write_config(serving_dir, tiny_workdir, "unload", OPEN)
    app = create_app(p)
    with running_server(app) as base:
        sched = app.state.gateway.require_scheduler()
        procs = [r for r in sched.runners if r.process]
        assert procs and all(isinstance(r.tier, ProcessTier) and not hasattr(r.tier, "session") for r in procs)
        assert all(r.tier.labels == ["ham", "spam"] and r.tier.version() for r in procs)
        r = post(base, {"text": HAM, "final_only": True})
        assert r.status_code == 200 and r.json()["tier"] == "final" and not r.json()["degraded"]


def test_rules_answer_on_the_spot_and_still_rehearse_faults(serving_dir, tiny_workdir):
    """A light tier decides a small request without a queue (its batch is the request), and an injected fault
    on it still fails its batches: their items pass on to the next tier."""
    p = write_config(serving_dir, tiny_workdir, "spot", OPEN)
    with running_server(create_app(p)) as base:
        before = scrape(base)
        r = post(base, {"texts": [LOTTERY] * 3})
        assert r.status_code == 200 and [d["tier"] for d in r.json()["results"]] == ["rules"] * 3
        m = scrape(base)
        key = 'tiergate_batch_size_sum{tier="rules"}'
        assert m[key] - before.get(key, 0) == 3  # one batch of the request's three items
        fault(base, tier="rules", error_rate=1.0)
        d = post(base, {"text": LOTTERY}).json()
        assert d["tier"] != "rules" and d["path"][0] == "rules"  # attempted, failed, passed on
        assert httpx.delete(base + "/admin/faults", headers=ADMIN).status_code == 200
        assert post(base, {"text": LOTTERY}).json()["tier"] == "rules"


def test_failing_final_tier_degrades_and_the_breaker_recovers(serving_dir, tiny_workdir):
    p = write_config(serving_dir, tiny_workdir, "breaker", {**OPEN, "breaker": {"failures": 2, "cooldown_s": 0.5}})
    with running_server(create_app(p)) as base:
        fault(base, tier="final", error_rate=1.0)
        rs = [post(base, {"text": HAM, "final_only": True}) for _ in range(6)]
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        ds = [r.json() for r in rs]
        assert all(d["degraded"] and d["tier"] in ("rules", "small") for d in ds)
        # the item skipped the cheaper tiers; they ran once the final tier failed
        assert ds[0]["path"][0] == "final" and "small" in ds[0]["path"]
        assert {d["degraded_reason"] for d in ds} == {"error", "breaker_open"}  # open after two failures
        m = scrape(base)
        assert m['tiergate_breaker_state{tier="final"}'] == 1
        # a rule still decides what it knows, degraded or not
        assert post(base, {"text": LOTTERY, "final_only": True}).json()["tier"] == "rules"
        assert httpx.delete(base + "/admin/faults", headers=ADMIN).status_code == 200
        time.sleep(0.6)
        d = post(base, {"text": HAM, "final_only": True}).json()
        assert d["tier"] == "final" and not d["degraded"]  # half-open trial succeeded: closed again
        assert scrape(base)['tiergate_breaker_state{tier="final"}'] == 0


def test_fail_policy_answers_503(serving_dir, tiny_workdir):
    p = write_config(serving_dir, tiny_workdir, "failpolicy", {**OPEN, "on_final_tier_failure": "fail"})
    with running_server(create_app(p)) as base:
        fault(base, tier="final", error_rate=1.0)
        r = post(base, {"text": HAM, "final_only": True})
        assert r.status_code == 503 and r.json()["error"] == "UnavailableError"
        assert "on_final_tier_failure" in r.json()["detail"]


def test_faults_need_the_admin_token_and_a_real_tier(serving_dir, tiny_workdir, monkeypatch):
    p = write_config(serving_dir, tiny_workdir, "faults", OPEN)
    with running_server(create_app(p)) as base:
        assert httpx.post(base + "/admin/faults", json={"tier": "final", "error_rate": 1}).status_code == 401
        r = httpx.post(base + "/admin/faults", json={"tier": "nope", "error_rate": 1}, headers=ADMIN)
        assert r.status_code == 404 and "final" in r.json()["detail"]
        r = httpx.post(base + "/admin/faults", json={"tier": "final", "error_rate": 2}, headers=ADMIN)
        assert r.status_code == 422
        fault(base, tier="final", delay_ms=5)
        assert httpx.get(base + "/admin/faults", headers=ADMIN).json()["faults"] == {
            "final": {"error_rate": 0.0, "delay_ms": 5.0}}
        monkeypatch.delenv("TIERGATE_ADMIN_TOKEN")
        r = httpx.delete(base + "/admin/faults", headers=ADMIN)
        assert r.status_code == 403 and "TIERGATE_ADMIN_TOKEN" in r.json()["detail"]


def test_privileges_and_api_keys(serving_dir, tiny_workdir):
    key, digest = new_key()
    vip, vip_digest = new_key()
    p = write_config(serving_dir, tiny_workdir, "keys", {"api_keys": [
        {"name": "plain", "sha256": digest}, {"name": "vip", "sha256": vip_digest, "privileges": ["final_only"]}]})
    with running_server(create_app(p)) as base:
        before = scrape(base)
        assert post(base, {"text": HAM}).status_code == 401
        assert post(base, {"text": HAM}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(base, {"text": HAM}, headers={"X-API-Key": key}).status_code == 200
        r = post(base, {"text": HAM, "final_only": True}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403 and "final_only" in r.json()["detail"]
        assert post(base, {"text": HAM, "epsilon": 0.01}, headers={"X-API-Key": vip}).status_code == 403
        r = post(base, {"text": HAM, "final_only": True}, headers={"X-API-Key": vip})
        assert r.status_code == 200 and r.json()["tier"] == "final"
        m = scrape(base)
        for outcome in ("denied", "allowed"):
            key = f'tiergate_privileged_requests_total{{outcome="{outcome}",privilege="final_only"}}'
            assert m[key] - before.get(key, 0) == 1
        unauthorized = 'tiergate_requests_total{outcome="unauthorized"}'
        assert m[unauthorized] - before.get(unauthorized, 0) == 2  # each 401 counted once
        assert httpx.get(base + "/healthz").status_code == 200  # probes need no key


def test_classify_fast_path_maps_errors_like_the_router(plain_server, monkeypatch):
    """POST /v1/classify bypasses FastAPI's router (routes.classify.ClassifyFastPath): an unexpected failure is
    still a logged, generic 500 counted once, other methods still get the router's 405 in the same body shape,
    and the server goes on answering."""
    import tiergate.gateway.routes.classify as route

    base = plain_server
    before = scrape(base)

    def broken():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(route, "new_request_id", broken)
    r = post(base, {"text": HAM})
    assert r.status_code == 500
    assert r.json() == {"error": "InternalError",
                        "detail": "the gateway failed on this request; the log has the details"}
    monkeypatch.undo()
    error = 'tiergate_requests_total{outcome="error"}'
    assert scrape(base)[error] - before.get(error, 0) == 1
    r = httpx.get(base + "/v1/classify")
    assert r.status_code == 405 and r.json()["error"] == "MethodNotAllowed"
    r = post(base, {"text": HAM})
    assert r.status_code == 200 and r.headers["X-Tiergate-Overhead-Ms"]


BAD_BODIES = {
    "malformed JSON": b'{"text": "abc"',
    "wrong type": b'{"text": 12345}',
    "missing field": b'{"txt": "hello"}',
    "unknown key": b'{"text": "a", "colour": "red"}',
    "both text and texts": b'{"text": "a", "texts": ["b"]}',
    "empty texts": b'{"texts": []}',
    "non-string item": b'{"texts": ["a", 3]}',
    "invalid UTF-8": b'{"text": "\xff\xfe\xfa"}',
    "deep nesting": b'{"text": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    "null": b"null",
    "a list": b"[]",
    "string bool": b'{"text": "a", "final_only": "yes"}',
    "empty body": b"",
}


@pytest.fixture(scope="module")
def plain_server(serving_dir, tiny_workdir):
    p = write_config(serving_dir, tiny_workdir, "plain", {"max_body_bytes": 210_000, "max_batch_items": 8})
    with running_server(create_app(p)) as base:
        yield base


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_input_is_4xx_with_one_body_shape(plain_server, name):
    r = httpx.post(plain_server + "/v1/classify", content=BAD_BODIES[name], headers={"content-type": "application/json"})
    assert r.status_code == 422, (name, r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] == "InputError" and body["detail"].startswith("invalid request body")


def test_limits(plain_server):
    r = httpx.post(plain_server + "/v1/classify", json={"text": "x" * 300_000})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    r = httpx.post(plain_server + "/v1/classify", json={"texts": ["x"] * 9})
    assert r.status_code == 422 and "max_batch_items" in r.json()["detail"]
    # unknown routes and methods answer in the same shape
    r = httpx.get(plain_server + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "NotFoundError"
    assert httpx.get(plain_server + "/v1/classify").json()["error"] == "MethodNotAllowed"
    # privileges are off by default
    assert post(plain_server, {"text": HAM, "final_only": True}).status_code == 403


def test_any_json_string_is_classified(plain_server):
    texts = ["", " ", "\x00", "\u202e\u0301", "Subject: \U0001f600\n\n\x7f", "\ufeff<html>" * 50]
    body = json.dumps({"texts": texts})
    r = httpx.post(plain_server + "/v1/classify", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [d["label"] in ("ham", "spam") for d in r.json()["results"]] == [True] * len(texts)
    # JSON's grammar allows a lone surrogate escape, but it is no Unicode text: refused as input, never a 500
    r = httpx.post(plain_server + "/v1/classify", content=b'{"text": "\\ud800 x"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "escape" in r.json()["detail"]


def test_overhead_is_reported(plain_server):
    r = post(plain_server, {"text": LOTTERY})
    assert r.status_code == 200 and r.json()["tier"] == "rules"
    assert 0 <= float(r.headers["x-tiergate-overhead-ms"]) < 1000
    m = scrape(plain_server)
    assert m["tiergate_overhead_seconds_count"] >= 1
    for name in ("tiergate_queue_wait_seconds_count", "tiergate_batch_size_count", "tiergate_degraded_total"):
        assert name in m


def test_models_hot_swap_keeps_the_old_models_on_a_corrupt_file(serving_dir, tiny_workdir, tmp_path):
    d = tmp_path / "swap"
    d.mkdir()
    shutil.copy(serving_dir / "rules.yaml", d / "rules.yaml")
    for name in ("small", "final"):
        shutil.copytree(tiny_workdir / name, d / name)
    p = write_config(d, tiny_workdir, "swap", OPEN)
    text = p.read_text().replace(str(tiny_workdir / "small"), "small").replace(str(tiny_workdir / "final"), "final")
    p.write_text(text)
    with running_server(create_app(p)) as base:
        assert httpx.post(base + "/admin/models/reload").status_code == 401
        r = httpx.post(base + "/admin/models/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["status"] == "unchanged"
        v0 = httpx.get(base + "/readyz").json()["tiers"][1]["version"]
        onnx = d / "small" / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:1000])  # a truncated upload
        with cf.ThreadPoolExecutor(4) as ex:
            traffic = ex.submit(lambda: [post(base, {"text": HAM}).status_code for _ in range(30)])
            r = httpx.post(base + "/admin/models/reload", headers=ADMIN, timeout=60)
            codes = traffic.result()
        assert r.status_code == 422, r.text
        # the reason is the tier process's own error, naming the file (the model loads only there)
        assert any("small" in problem and "model.onnx" in problem for problem in r.json()["problems"]), r.text
        assert set(codes) == {200}
        assert httpx.get(base + "/readyz").json()["tiers"][1]["version"] == v0
        # a real new model (here: the final tier's files in the small tier's place) swaps in
        shutil.rmtree(d / "small")
        shutil.copytree(d / "final", d / "small")
        r = httpx.post(base + "/admin/models/reload", headers=ADMIN, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "reloaded", r.text
        assert httpx.get(base + "/readyz").json()["tiers"][1]["version"] != v0
        assert post(base, {"text": HAM}).status_code == 200
        assert scrape(base)['tiergate_model_reloads_total{outcome="rejected"}'] == 1


@pytest.mark.parametrize("freeze", [True, False])
def test_the_heap_is_frozen_once_loaded_and_collector_pauses_are_measured(serving_dir, tiny_workdir, freeze):
    import gc

    p = write_config(serving_dir, tiny_workdir, f"gc{freeze}", {"gc_freeze": freeze})
    gc.unfreeze()
    try:
        with running_server(create_app(p)) as base:
            assert (gc.get_freeze_count() > 0) is freeze
            for _ in range(5):
                assert post(base, {"text": HAM}).status_code == 200
            gc.collect(0)  # explicit collections are timed as well
            m = scrape(base)
            assert m['tiergate_gc_pause_seconds_count{generation="0"}'] >= 1
            assert m['tiergate_gc_pause_seconds_sum{generation="0"}'] > 0
    finally:
        gc.unfreeze()


def test_a_tier_process_ends_when_its_gateway_is_killed(tiny_workdir, tmp_path):
    """SIGKILL gives the gateway no chance to shut its pool down: the child notices its parent is gone."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "hold.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "from pathlib import Path\n"
        "from tiergate.config import TierConfig\n"
        "from tiergate.gateway.worker import ProcessTier\n"
        "if __name__ == '__main__':\n"
        "    tc = TierConfig(name='small', kind='onnx', path=sys.argv[1])\n"
        "    t = ProcessTier(tc, Path(sys.argv[1]).parent)\n"
        "    print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_workdir / "small")], stdout=subprocess.PIPE,
                            text=True)
    try:
        children = [int(x) for x in proc.stdout.readline().split()]
        assert children
        assert all(os.path.exists(f"/proc/{c}") for c in children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(c) for c in children):
            time.sleep(0.2)
        assert not any(_alive(c) for c in children), "a tier process outlived its gateway"
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
