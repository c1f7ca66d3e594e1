"""Scenario f of bench/serving.py: faults injected while the gateway is under load.

On a copy of the workdir (the corrupt model and any rule upload must never reach the user's files), one server
takes a closed-loop mixed load through these phases, each ``phase_s`` long, the fault set at 10% of the phase
and cleared at 80%, so every phase holds the transition in both directions:

1. baseline;
2. the final tier failing (``POST /admin/faults {"tier": <large>, "error_rate": 1}``): answers should come back
   ``degraded`` (the small tier's answer), never a 5xx;
3. the final tier slow (``{"delay_ms": D}``);
4. after the faults are cleared: no degraded answers (the breaker, if any, recovers);
5. a broken rule file (``PUT /admin/rules`` with YAML that does not parse): refused, the old rules still decide;
6. a corrupt small model: the served ``model.onnx`` truncated to half, then ``POST /admin/models/reload``:
   refused, the old model still answers (same tier, same labels, same version in ``/readyz``).

A phase whose admin endpoint the server lacks (404/405 to a harmless preflight call) is n/a and is not run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.serving_load import call, closed_loop
from bench.serving_procs import ServerProcess, tier_dir

BROKEN_RULES = "version: 1\nmode: first-match\nrules:\n  - id: [unclosed\n    when: {regex: '(\n"


@dataclass
class Phase:
    name: str
    expect: str
    start: tuple[str, str, bytes] | None = None     # admin call at 10% of the phase
    end: tuple[str, str, bytes] | None = None       # admin call at 80%
    preflight: tuple[str, str, bytes] | None = None  # harmless call: 404/405 means the feature is missing
    before_start: Callable[[], None] | None = None  # local action just before the start call (corrupt a file)
    calls: list[str] = field(default_factory=list)     # what each admin call answered, for the report
    statuses: list[int] = field(default_factory=list)  # the start and end calls' status codes


def _short(status: int, data: bytes) -> str:
    try:
        detail = json.loads(data).get("detail") or json.loads(data).get("error") or ""
    except (ValueError, AttributeError):
        detail = data[:80].decode(errors="replace")
    return f"{status or 'no answer'}" + (f" ({str(detail)[:80]})" if detail and status >= 300 else "")


def _missing(status: int) -> bool:
    return status in (404, 405)


def run_fault_phases(b, config: Path) -> dict:
    s, large, small = b.s, b.roles["large"], b.roles["small"]
    model = None
    small_path = tier_dir(config, small) if small else None
    if small_path is not None:
        model = small_path / "model.onnx" if small_path.is_dir() else small_path
    fault = lambda **kw: ("POST", "/admin/faults", json.dumps({"tier": large, **kw}).encode())  # noqa: E731
    clear = ("DELETE", "/admin/faults", b"")
    phases = [
        Phase("baseline", "no failures, nothing degraded"),
        Phase("final tier failing", "degraded answers, no 5xx", fault(error_rate=1.0), clear, clear),
        Phase("final tier slow", f"+{s.fault_delay_ms:g} ms on {large}: no 5xx",
              fault(delay_ms=s.fault_delay_ms), clear, clear),
        Phase("faults cleared", "no failures, nothing degraded"),
        Phase("broken rule file", "refused (4xx); the old rules still decide",
              ("PUT", "/admin/rules", BROKEN_RULES.encode()), preflight=("POST", "/admin/rules/reload", b"")),
        Phase("corrupt small model", "refused; the old model still answers",
              ("POST", "/admin/models/reload", b""), preflight=("POST", "/admin/models/reload", b""),
              before_start=(lambda: _corrupt(model)) if model is not None and model.is_file() else None),
    ]
    rows = []
    with b.tiergate(config, "f-tiergate") as tg:
        texts = b.by_role(tg)
        bodies = b.blend(tg)
        for ph in phases:
            rows.append(_run_phase(b, tg, ph, bodies, texts))
    notes = [f"{s.fault_conns} connections, {s.phase_s:g} s per phase, traffic in equal parts decided by each tier "
             "(so the final tier gets a steady share); faults set at 10% of a phase and cleared at 80%; on a copy "
             "of the workdir. 'failed' = 5xx or no answer; 'final tier answers' = 200s whose tier is "
             f"{large} (falls while it fails)."]
    return {"rows": rows, "notes": notes}


def _corrupt(model: Path) -> None:
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])  # a half-copied file: the commonest real corruption


def _run_phase(b, tg: ServerProcess, ph: Phase, bodies: list[bytes], texts: dict[str, list[str]]) -> dict:
    s = b.s
    row = {"phase": ph.name, "expect": ph.expect}
    if ph.preflight is not None:
        st, _, data = _admin(b, tg, ph.preflight)
        if _missing(st) or st in (401, 403):
            return {**row, "admin": f"{ph.preflight[0]} {ph.preflight[1]} -> {_short(st, data)}",
                    "check": "n/a: the server lacks this endpoint" if _missing(st) else "n/a: admin auth refused"}
        ph.calls.append(f"preflight {ph.preflight[0]} {ph.preflight[1]} -> {_short(st, data)}")
    if ph.name == "corrupt small model" and ph.before_start is None:
        return {**row, "admin": "", "check": "n/a: no model.onnx found for the small tier"}
    reference = _answers(tg, texts)
    versions = _versions(tg)

    async def admin(call_spec, before=None):
        if before is not None:
            before()
        st, _, data = await call(tg.url + call_spec[1], call_spec[0], call_spec[2], headers=_headers(b, call_spec),
                                 timeout_s=120)
        ph.calls.append(f"{call_spec[0]} {call_spec[1]} -> {_short(st, data)}")
        ph.statuses.append(st)

    actions = []
    if ph.start is not None:
        actions.append((0.1 * s.phase_s, lambda: admin(ph.start, ph.before_start)))
    if ph.end is not None:
        actions.append((0.8 * s.phase_s, lambda: admin(ph.end)))
    rec = asyncio.run(closed_loop(tg.url + "/v1/classify", bodies, conns=s.fault_conns, seconds=s.phase_s,
                                  timeout_s=s.timeout_s, actions=actions))
    summ = rec.summary()
    failed = sum(n for code, n in summ["status"].items() if code.startswith("5")) + sum(summ["errors"].values())
    statuses = ph.statuses
    row.update({"admin": "; ".join(ph.calls), "requests": summ["requests"], "status": summ["status"],
                "errors": summ["errors"], "failed": failed, "degraded": summ["degraded"], "p99_ms": summ["p99_ms"],
                "tiers": summ["tiers"], "final_answers": summ["tiers"].get(b.roles["large"], 0)})
    row["check"] = _check(ph, statuses, summ, failed, reference, _answers(tg, texts), versions, _versions(tg), b.roles)
    if statuses and _missing(statuses[0]):
        row["check"] = "n/a: the server lacks this endpoint"
    return row


def _check(ph: Phase, statuses, summ, failed, ref, now, v_before, v_after, roles) -> str:
    """A line saying whether the phase behaved as expected."""
    if ph.name in ("baseline", "faults cleared"):
        ok = failed == 0 and summ["degraded"] == 0
        return ("ok" if ok else "NOT ok") + f": {failed} failed, {summ['degraded']} degraded"
    if ph.name == "final tier failing":
        ok = failed == 0 and summ["degraded"] > 0
        return ("ok" if ok else "NOT ok") + f": {summ['degraded']} degraded, {failed} failed"
    if ph.name == "final tier slow":
        return ("ok" if failed == 0 else "NOT ok") + f": {failed} failed, {summ['degraded']} degraded"
    role = "rules" if ph.name == "broken rule file" else "small"
    refused = bool(statuses) and statuses[0] >= 400
    same = _same_answers(ref.get(role), now.get(role), roles[role])
    key = roles[role]
    same_version = v_before.get(key) == v_after.get(key)
    ok = refused and same and same_version and failed == 0
    what = "the old rules still decide" if role == "rules" else "the old small model still answers"
    return (("ok" if ok else "NOT ok") + f": {'refused' if refused else 'ACCEPTED'}; "
            f"{what if same else what.replace('still', 'NOT')}; version "
            f"{'unchanged' if same_version else 'changed'} ({v_before.get(key)} -> {v_after.get(key)})")


def _same_answers(before: list | None, after: list | None, tier: str | None) -> bool:
    if not before or not after:
        return False
    return all(a is not None and a.get("tier") == tier and a.get("label") == r.get("label")
               for r, a in zip(before, after, strict=True))


def _answers(tg: ServerProcess, texts: dict[str, list[str]], n: int = 8) -> dict[str, list]:
    """The answers for up to ``n`` texts of each role, one request each (None where no 200 came)."""
    out = {}
    for role in ("rules", "small"):
        answers = []
        for t in (texts.get(role) or [])[:n]:
            st, _, data = asyncio.run(call(tg.url + "/v1/classify", "POST", json.dumps({"text": t}).encode()))
            answers.append(json.loads(data) if st == 200 else None)
        out[role] = answers
    return out


def _versions(tg: ServerProcess) -> dict[str, str]:
    """Tier versions (and the rules version) from /readyz; empty where the server says nothing."""
    st, _, data = asyncio.run(call(tg.url + "/readyz"))
    if st != 200:
        return {}
    body = json.loads(data)
    out = {t.get("name"): t.get("version") for t in body.get("tiers", [])}
    if body.get("rules_version"):
        for t in body.get("tiers", []):
            if t.get("kind") == "rules":
                out[t.get("name")] = body["rules_version"]
    return out


def _headers(b, spec: tuple[str, str, bytes]) -> dict[str, str]:
    if spec[1] == "/admin/rules" and spec[0] == "PUT":
        return {**b.admin, "Content-Type": "application/yaml"}
    return b.admin


def _admin(b, tg: ServerProcess, spec: tuple[str, str, bytes]) -> tuple[int, dict, bytes]:
    return asyncio.run(call(tg.url + spec[1], spec[0], spec[2], headers=_headers(b, spec), timeout_s=120))
