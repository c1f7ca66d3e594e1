"""The serving path: items of concurrent requests flow between per-tier runners, routed by the cascade's
:func:`~tiergate.cascade.step`, so what is served is what calibration measured.

::

    request ─► admit (queues bounded in items and in seconds of work, per tier; else 429 + Retry-After)
            ─► runner[entry] ─ batch ─► step() ─┬─ decided ─────────────────► the request's future
                                               └─ escalated ─► runner[next] (skipped when it cannot finish
                                                  before the deadline: the best answer so far, degraded)

Degraded answers (``degraded: true`` with ``degraded_reason``): the final tier failed (``error``), timed out
(``timeout``), its breaker is open (``breaker_open``), or it could not finish in time (``deadline``). The
best cheaper answer is used, and an item that skipped the cheaper tiers (``final_only``) runs them first;
``server.on_final_tier_failure: fail`` answers 503 instead. A failing cheaper tier passes its items on.

>>> sched = Scheduler(cascade, cascade.config.server); await sched.start()          # doctest: +SKIP
>>> decisions, compute_s = await sched.classify(["Subject: hi"], deadline_s=1.0)   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from tiergate.cascade import Cascade, Decision, step
from tiergate.config import ServerConfig, TierConfig
from tiergate.errors import DeadlineError, OverloadedError, UnavailableError
from tiergate.gateway import metrics as m
from tiergate.gateway.audit import AuditJob, ShadowAuditor
from tiergate.gateway.runner import BatchResult, Fault, Pending, TierRunner
from tiergate.registry import capabilities_of
from tiergate.tiers import TierOutput

log = logging.getLogger("tiergate.gateway.scheduler")

# Prior for the share of entering items that reach each tier: "all of them", worth this many items, so the
# first requests are admitted conservatively and the estimate follows the traffic within a few hundred items.
_PRIOR_ITEMS = 20.0
_SHARE_WINDOW = 4000.0
# The event loop's admission limit (Scheduler._loop_limit): adjusted once per window, never below the floor.
_LOOP_WINDOW_S = 0.1
_LOOP_STEP_S = 0.005
_LOOP_FLOOR_S = 0.002


class _Request:
    __slots__ = ("decisions", "left", "future", "deadline", "budget_s", "cfgs", "compute_s", "done", "error",
                 "items")

    def __init__(self, n: int, cfgs: Sequence[TierConfig], deadline_s: float, future: asyncio.Future):
        self.decisions: list[Decision | None] = [None] * n
        self.left = n
        self.future = future
        self.budget_s = deadline_s         # the whole deadline, as asked
        self.deadline = time.perf_counter() + deadline_s  # time.perf_counter() by which the answer is due
        self.cfgs = cfgs                   # thresholds of this request (a stricter epsilon replaces them)
        self.compute_s = 0.0               # wall time of the batches this request took part in, each once
        self.done = False
        self.error: BaseException | None = None
        self.items: list[Pending] = []


class Scheduler:
    """Runners for one cascade generation (a model swap builds a new scheduler and drains the old one)."""

    def __init__(self, cascade: Cascade, server: ServerConfig):
        self.cascade = cascade
        self.server = server
        self.cfgs = cascade.config.tiers
        self.last = len(self.cfgs) - 1
        self.caps = [capabilities_of(tc) for tc in self.cfgs]
        self.runners = [TierRunner(i, tier, tc, server.serving_of(tc.name), server.breaker, self.caps[i],
                                   self._on_batch, server.max_text_chars)
                        for i, (tier, tc) in enumerate(zip(cascade.tiers, self.cfgs, strict=True))]
        self.cost = [tc.cost.usd_per_item for tc in self.cfgs]
        self.cost_by_name = {tc.name: c for tc, c in zip(self.cfgs, self.cost, strict=True)}  # for metrics
        self.baseline = cascade.baseline_cost_per_item()
        self.cheaper_models = [i for i in range(self.last) if self.caps[i].distribution]
        self.arrived = [_PRIOR_ITEMS] * len(self.cfgs)     # items that reached tier i (decayed counts)
        self.auditor = ShadowAuditor(cascade.config.shadow_audit, self.runners[-1], self.cost[-1],
                                     certificate=cascade.config.certificate,
                                     cheaper=[tc.name for tc in self.cfgs[:-1]])
        self.inflight = 0
        self._loop_wait_limit = server.max_loop_wait_ms / 1000
        self._loop_window = time.perf_counter()
        self._loop_over = False
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.runners))
        self.auditor.start()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, wait for those in flight (at most ``timeout_s``); True if all finished."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        await self.auditor.stop()
        for r in self.runners:
            await r.stop()

    def set_fault(self, tier: str, fault: Fault) -> None:
        self.runner(tier).set_fault(fault)

    def runner(self, name: str) -> TierRunner:
        for r in self.runners:
            if r.name == name:
                return r
        raise KeyError(name)

    # ------------------------------------------------------------------------------------------ admission
    def share(self, j: int, entry: int = 0) -> float:
        """The share of items entering at ``entry`` that reach tier ``j`` (from the traffic so far)."""
        return min(1.0, self.arrived[j] / max(self.arrived[entry], 1e-9))

    def door_check(self, waited_s: float = 0.0, deadline_s: float | None = None, open_n: int | None = None) -> None:
        """The check made before a body is read: refuse at once when a tier is already full (admit() would refuse
        the request whatever its size), or when the request already waited ``waited_s`` on the event loop past
        ``server.max_loop_wait_ms`` (adaptive), so a flood of requests costs 429s, not body parsing
        (raises OverloadedError). ``open_n``: the requests open on this worker when this one was read (the
        protocol's count); at most ``server.min_open_requests`` of them, the wait is never refused, so a
        closed-loop client waiting behind its own requests is not taken for a flood and the limit cannot
        lock itself low (each refusal of such a client brings its next request at once)."""
        self._require_open()
        # Not capped by the request's deadline: a short deadline on an idle server must not be refused here;
        # the wait is taken off the deadline instead (routes/classify.py).
        limit = self._loop_limit()
        if waited_s > limit and (open_n is None or open_n >= self.server.min_open_requests):
            self._loop_over = True
            m.REJECTED.labels("event_loop").inc()
            raise OverloadedError(f"the gateway's event loop is saturated: this request waited {waited_s * 1000:.0f} ms "
                                  f"before it could be read (limit {limit * 1000:.0f} ms, server.max_loop_wait_ms); "
                                  "retry in 1 s", retry_after_s=1)
        for j, r in enumerate(self.runners):  # a tier already past its limits refuses any request in admit():
            if r.request_load:                 # say so before the body is read and parsed, not after
                self._check(r, r.request_load, j)

    def _loop_limit(self) -> float:
        """How long a request may have waited on the event loop: ``server.max_loop_wait_ms``, halved every
        ``_LOOP_WINDOW_S`` in which some request waited longer, and raised by ``_LOOP_STEP_S`` in each window in
        which none did (additive increase, multiplicative decrease, floor ``_LOOP_FLOOR_S``).

        Why it adapts: with a fixed limit the loop accepts as many requests as fit in the limit in each of its
        turns, so under overload accepted work fills the whole core and nothing is left to read and refuse the
        rest: they wait unread in the sockets (measured at 3x capacity: a 50 ms limit kept goodput but answered
        in seconds; a 10 ms one answered in milliseconds; docs/benchmarks.md). A short limit while refusals go
        on leaves room for them; at capacity with no refusals the limit stays at its maximum."""
        now = time.perf_counter()
        if now - self._loop_window >= _LOOP_WINDOW_S:
            top = self.server.max_loop_wait_ms / 1000
            if self._loop_over:
                self._loop_wait_limit = max(self._loop_wait_limit / 2, min(_LOOP_FLOOR_S, top))
            else:
                self._loop_wait_limit = min(self._loop_wait_limit + _LOOP_STEP_S, top)
            self._loop_window, self._loop_over = now, False
        return self._loop_wait_limit

    def admit(self, n: int, entry: int, deadline_s: float = float("inf")) -> None:
        """Admit ``n`` items entering at tier ``entry``, or raise OverloadedError with a Retry-After.

        Every tier the items may reach is checked with what is already there, what is upstream of it and
        the share of traffic that reaches it; a tier that is idle always admits (a big request is never
        refused forever). A request whose items could not get a first model answer before ``deadline_s``
        is refused too: a 429 now is more use to the caller than a 504 later."""
        self._require_open()
        if self.inflight >= self.server.max_inflight:
            raise OverloadedError(f"{self.inflight} requests in progress (server.max_inflight="
                                  f"{self.server.max_inflight}); retry later", retry_after_s=1.0)
        upstream = 0
        to_first_answer = 0.0  # seconds until the first model tier has answered these items
        answered = False
        for j in range(entry, len(self.runners)):
            r = self.runners[j]
            load = r.request_load  # shadow audits left out (they yield to traffic)
            expected = load + (n if j == entry else self.share(j, entry) * (upstream + n))
            if load:
                self._check(r, expected, j)
            if not answered:
                to_first_answer += expected * r.seconds_per_item / r.serving.threads
                answered = self.caps[j].distribution
                if to_first_answer > deadline_s and load:
                    self._refuse(r, to_first_answer - deadline_s,
                                 f"its items could not be answered within the deadline ({deadline_s * 1000:.0f} ms; "
                                 f"about {to_first_answer * 1000:.0f} ms of work is ahead of them)")
            upstream += load

    def _require_open(self) -> None:
        if not self.accepting:
            raise UnavailableError("the gateway is shutting down or swapping models; retry on another instance")

    def _check(self, r: TierRunner, expected: float, j: int) -> None:
        s = r.serving
        over_items = expected - s.queue_limit - r.requests_running
        over_time = expected * r.seconds_per_item / s.threads - s.max_queue_ms / 1000
        if over_items > 0 or over_time > 0:
            self._refuse(r, max(over_items * r.seconds_per_item / s.threads, over_time),
                         f"tier {r.name} is saturated ({r.request_load} items waiting or running, about "
                         f"{r.request_load * r.seconds_per_item / s.threads:.2f} s of work; limits "
                         f"server.tiers.{r.name}.max_queue_items={s.queue_limit}, max_queue_ms={s.max_queue_ms:g})")

    def _refuse(self, r: TierRunner, excess_s: float, why: str) -> None:
        """429 with a Retry-After from the excess work and the tier's drain rate (at least 1 s)."""
        retry = min(60, max(1, math.ceil(excess_s)))
        m.REJECTED.labels(r.name).inc()
        raise OverloadedError(f"{why}; retry in {retry} s", retry_after_s=retry)

    # ----------------------------------------------------------------------------------------- classify
    async def classify(self, texts: Sequence[str], *, deadline_s: float, final_only: bool = False,
                       cfgs: Sequence[TierConfig] | None = None) -> tuple[list[Decision], float]:
        """Decide every text within ``deadline_s``; returns the decisions and the compute seconds spent on
        this request (for the overhead figure). Raises OverloadedError (admission), DeadlineError (an item
        with no answer at all by the deadline) or UnavailableError (the final tier failed and the policy is
        ``fail``, or no cheaper tier can answer)."""
        entry = self.last if final_only else 0
        self.admit(len(texts), entry, deadline_s)
        if final_only and self.last:
            m.ESCALATION_REASONS.labels(self.cfgs[0].name, "override").inc(len(texts))
        loop = asyncio.get_running_loop()
        req = _Request(len(texts), cfgs or self.cfgs, deadline_s, loop.create_future())
        self.inflight += 1
        self._idle.clear()
        m.INFLIGHT.inc()
        try:
            req.items = [Pending(req, k, t) for k, t in enumerate(texts)]
            self._forward(req.items, entry)
            if not req.future.done():  # else a light tier decided every item on the spot
                try:
                    await asyncio.wait_for(asyncio.shield(req.future), max(req.deadline - time.perf_counter(), 0))
                except TimeoutError:
                    self._expire(req)
            if req.error is not None:
                raise req.error
            return list(req.decisions), req.compute_s  # type: ignore[arg-type]
        finally:
            req.done = True
            self.inflight -= 1
            m.INFLIGHT.dec()
            if not self.inflight:
                self._idle.set()

    # ------------------------------------------------------------------------------------------ routing
    def _forward(self, items: list[Pending], j: int, reason: str = "") -> None:
        """Put items on tier ``j``'s queue, unless it cannot answer them in time or its breaker is open."""
        if not items:
            return
        r = self.runners[j]
        now = time.perf_counter()
        wait = r.expected_wait_s(len(items))
        go = []
        for p in items:
            if p.request.done:
                continue
            if j == self.last and r.breaker.refusing():
                self._count_escalation(p, reason)
                self._final_failed(p, "breaker_open")
            elif p.best is not None and now + wait > p.request.deadline:
                self._count_escalation(p, "deadline" if reason else "")
                self._decide(p, *p.best, degraded="deadline")
            else:
                self._count_escalation(p, reason)
                go.append(p)
        if go:
            self.arrived[j] += len(go)
            if self.arrived[0] > _SHARE_WINDOW:  # forget old traffic slowly
                self.arrived = [a / 2 for a in self.arrived]
            if not r.run_now(go):
                r.put(go)

    @staticmethod
    def _count_escalation(p: Pending, reason: str) -> None:
        if reason and p.path:
            m.child(m.ESCALATION_REASONS, p.path[-1], reason).inc()

    def _on_batch(self, r: TierRunner, res: BatchResult) -> None:
        i = r.index
        if i == self.last and any(type(p.request) is AuditJob for p in res.items):
            res = self._split_audits(res)
            if not res.items:
                return
        for req in {p.request for p in res.items}:
            req.compute_s += res.seconds
        if res.outputs is None:
            m.TIER_FAILURES.labels(r.name, res.failure).inc()
            for p in res.items:
                if p.request.done:
                    continue
                if res.failure != "breaker_open":  # an attempt was made, and is paid for
                    p.path.append(r.name)
                    p.cost += self.cost[i]
                if i == self.last:
                    self._final_failed(p, res.failure)
                else:
                    self._forward([p], i + 1, reason=res.failure)
            return
        onward: dict[int, list[Pending]] = {}
        for p, out in zip(res.items, res.outputs, strict=True):
            if p.request.done:
                continue
            p.path.append(r.name)
            p.cost += self.cost[i]
            p.compute_s += res.seconds
            if self.caps[i].distribution and out.label is not None:
                p.best = (i, out)
            nxt = step(i, out, p.request.cfgs)  # type: ignore[attr-defined]
            if nxt is None:
                self._decide(p, i, out, degraded=p.degraded_reason if p.cheap_only else "")
            elif p.cheap_only and nxt == self.last:
                if p.best is not None:
                    self._decide(p, *p.best, degraded=p.degraded_reason)
                else:
                    self._fail(p, UnavailableError(f"the final tier failed ({p.degraded_reason}) and no "
                                                   "cheaper tier had an answer"))
            else:
                onward.setdefault(nxt, []).append((p, "rule" if out.escalate_to else "low_confidence"))
        for j, pairs in onward.items():
            for why in ("low_confidence", "rule"):
                self._forward([p for p, w in pairs if w == why], j, reason=why)

    def _split_audits(self, res: BatchResult) -> BatchResult:
        """Hand the shadow audits of a final-tier batch to the auditor; the rest is routed as usual."""
        outs = res.outputs
        audit = [k for k, p in enumerate(res.items) if type(p.request) is AuditJob]
        self.auditor.finished([res.items[k] for k in audit], None if outs is None else [outs[k] for k in audit])
        audited = set(audit)
        keep = [k for k in range(len(res.items)) if k not in audited]
        return BatchResult([res.items[k] for k in keep], None if outs is None else [outs[k] for k in keep],
                           res.seconds, res.failure, res.error)

    def _final_failed(self, p: Pending, why: str) -> None:
        name = self.cfgs[self.last].name
        if self.server.on_final_tier_failure == "fail":
            self._fail(p, UnavailableError(f"the final tier {name} failed ({why}) and "
                                           "server.on_final_tier_failure is 'fail'"))
        elif p.best is not None:
            self._decide(p, *p.best, degraded=why)
        elif self.cheaper_models and not p.cheap_only:
            p.cheap_only, p.degraded_reason = True, why
            self._forward([p], 0)
        else:
            self._fail(p, UnavailableError(f"the final tier {name} failed ({why}) and no cheaper tier can answer"))

    def _decide(self, p: Pending, i: int, out: TierOutput, degraded: str = "") -> None:
        req = p.request
        d = self.cascade._decision(i, out, req.cfgs)  # type: ignore[attr-defined]
        if degraded:
            d.degraded = True
            d.degraded_reason = degraded
            d.reason = f"degraded ({degraded}): answer of {self.cfgs[i].name}; {d.reason}"
            m.DEGRADED.labels(degraded).inc()
        d.cost_usd = p.cost
        d.baseline_cost_usd = self.baseline
        d.path = p.path
        d.latency_ms = p.compute_s * 1000
        req.decisions[p.k] = d  # type: ignore[attr-defined]
        req.left -= 1  # type: ignore[attr-defined]
        if req.left == 0 and not req.future.done():  # type: ignore[attr-defined]
            req.future.set_result(None)  # type: ignore[attr-defined]

    def _fail(self, p: Pending, error: BaseException) -> None:
        req = p.request
        if req.error is None:  # type: ignore[attr-defined]
            req.error = error  # type: ignore[attr-defined]
        req.done = True  # type: ignore[attr-defined]
        if not req.future.done():  # type: ignore[attr-defined]
            req.future.set_result(None)  # type: ignore[attr-defined]

    def _expire(self, req: _Request) -> None:
        """The deadline passed: answer every undecided item with its best answer so far (degraded). An item
        with no answer at all makes the request a 504 when a tier is what was slow (it computed the item for
        more than half the deadline, or its measured time for one item exceeds the whole deadline) and a 429
        with Retry-After otherwise: the item spent its time waiting (in a queue, or for the busy event loop)."""
        missing, slow, waited_on = 0, False, None
        now = time.perf_counter()
        for p in req.items:
            if req.decisions[p.k] is not None:
                continue
            if p.started:  # its batch is computing: the attempt is paid for, answered or not
                p.path.append(self.cfgs[p.tier].name)
                p.cost += self.cost[p.tier]
            if p.best is not None:
                self._decide(p, *p.best, degraded="deadline")
                continue
            missing += 1
            r = self.runners[p.tier]
            if req.budget_s < r.seconds_per_item or (p.started and now - p.started_at > req.budget_s / 2):
                slow = True
            elif waited_on is None:
                waited_on = r
        if missing and not slow and waited_on is not None:
            r = waited_on
            m.REJECTED.labels(r.name).inc()
            retry = min(60, max(1, math.ceil(r.load * r.seconds_per_item / r.serving.threads)))
            req.error = OverloadedError(
                f"{missing} of {len(req.decisions)} item(s) were still waiting for tier {r.name} when the deadline "
                f"passed ({r.load} items ahead); nothing was computed for them in time: retry in {retry} s",
                retry_after_s=retry)
        elif missing:
            req.error = DeadlineError(f"the deadline passed before any model tier answered {missing} of "
                                      f"{len(req.decisions)} item(s); send a longer X-Tiergate-Deadline-Ms "
                                      "or retry when the gateway is less busy")
        req.done = True
