"""One runner per tier: a bounded queue, a batcher that gathers items across requests, an executor, a circuit
breaker, and the operator's injected faults.

A runner never decides where an item goes next; it hands every finished batch back to its owner
(:class:`~tiergate.gateway.scheduler.Scheduler`), which routes with the cascade's own :func:`~tiergate.cascade.step`.

Batching policy: when the tier is idle, whatever is queued runs at once (so a lone request pays no wait); while a
batch runs, new items gather, and the next batch takes up to ``max_batch`` of them. ``max_wait_ms > 0`` also
holds a short batch until it fills or its oldest item has waited that long.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tiergate.config import BreakerConfig, TierConfig, TierServing
from tiergate.data.items import Item, make_item
from tiergate.gateway import metrics as m
from tiergate.tiers import Capabilities, Tier, TierOutput

log = logging.getLogger("tiergate.gateway.runner")
_NEVER = float("inf")
INLINE_SLICE = 8  # items of a light tier run between two yields to the event loop (about 5 ms of mail parsing)


class InjectedFault(RuntimeError):
    """Raised inside a tier's batch by ``POST /admin/faults`` (a rehearsal, not a bug)."""


@dataclass(slots=True)
class Fault:
    """An operator's fault on one tier: each batch fails with probability ``error_rate`` after ``delay_ms``."""

    error_rate: float = 0.0
    delay_ms: float = 0.0

    def apply(self) -> None:
        """In an executor thread: sleep, then maybe fail."""
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000)
        self.apply_error()

    def apply_error(self) -> None:
        if self.error_rate > 0 and random.random() < self.error_rate:
            raise InjectedFault(f"injected fault (error_rate={self.error_rate})")


_NO_FAULT = Fault()


class Breaker:
    """Closed → (``failures`` consecutive failed batches) → open → (``cooldown_s``) → half-open: one trial
    batch; its success closes the breaker, its failure opens it again for another cool-down."""

    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.failures = 0
        self.opened_at = 0.0
        self.state = self.CLOSED
        self._trial = False

    def allow(self) -> bool:
        """May a batch run now? In half-open state only one trial batch at a time."""
        if self.state == self.OPEN and self.clock() - self.opened_at >= self.cfg.cooldown_s:
            self.state, self._trial = self.HALF_OPEN, False
        if self.state == self.CLOSED:
            return True
        if self.state == self.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def refusing(self) -> bool:
        """Open and still cooling down (a check that takes no trial slot)."""
        return self.state == self.OPEN and self.clock() - self.opened_at < self.cfg.cooldown_s

    def success(self) -> None:
        self.failures, self.state, self._trial = 0, self.CLOSED, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN or self.failures >= self.cfg.failures:
            self.state, self.opened_at, self._trial = self.OPEN, self.clock(), False


@dataclass(slots=True, eq=False)
class Pending:
    """One item on its way through the cascade (owned by the scheduler; runners only queue and batch it)."""

    request: object                       # the scheduler's request state
    k: int                                # index of the item in its request
    text: str
    item: Item | None = None              # parsed in the entry tier's executor, never on the event loop
    tier: int = 0                         # the tier it waits for
    path: list[str] = field(default_factory=list)
    cost: float = 0.0
    compute_s: float = 0.0
    best: tuple[int, TierOutput] | None = None   # the latest model answer, for degraded answers
    cheap_only: bool = False              # the final tier failed: cheaper tiers answer, flagged degraded
    degraded_reason: str = ""
    enqueued: float = 0.0
    started: bool = False                 # its batch on ``tier`` is computing (a deadline still pays for it)
    started_at: float = 0.0               # when that batch began (time.perf_counter())
    background: bool = False              # a shadow audit: off any request's path, so admission does not count it


@dataclass(slots=True)
class BatchResult:
    """A finished batch: outputs in item order, or the reason it failed (``error``, ``timeout``,
    ``breaker_open``)."""

    items: list[Pending]
    outputs: list[TierOutput] | None
    seconds: float
    failure: str = ""
    error: BaseException | None = None


class TierRunner:
    """Queue, batcher and executor of one tier. ``on_batch(runner, result)`` is called on the event loop."""

    def __init__(self, index: int, tier: Tier, tc: TierConfig, serving: TierServing, breaker: BreakerConfig,
                 capabilities: Capabilities, on_batch: Callable[[TierRunner, BatchResult], None],
                 max_text_chars: int):
        self.index = index
        self.tier = tier
        self.tc = tc
        self.name = tc.name
        self.serving = serving
        self.caps = capabilities
        self.max_batch = min(serving.max_batch, capabilities.max_batch or serving.max_batch)
        self.breaker = Breaker(breaker)
        self.fault = Fault()
        self.inline = serving.executor == "inline" or (serving.executor == "auto" and capabilities.light)
        # A model tier in a process of its own (tiergate.gateway.worker.ProcessTier) takes texts: the child
        # parses them, so this process does not.
        self.process = tier.capabilities.takes_text  # how it is hosted, which its kind does not say
        self.on_batch = on_batch
        self.max_text_chars = max_text_chars
        self.queue: collections.deque[Pending] = collections.deque()
        self.running = 0                              # items in batches being computed
        self._bg_queued = self._bg_running = 0        # ... of them background items (shadow audits)
        # Seconds per item, smoothed over batches: admission and deadline routing read it. Starts from the
        # calibrated cost measurement when there is one.
        self.seconds_per_item = tc.cost.seconds_per_item or 0.001
        self._shed = m.SHED.labels(tc.name)
        self.items_done = 0
        self._pool = ThreadPoolExecutor(max_workers=serving.threads, thread_name_prefix=f"tier-{tc.name}")
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(serving.threads)
        self._task: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self._closed = False
        self._lock = threading.Lock()  # guards the fault, which the admin endpoint swaps from the loop thread

    # -------------------------------------------------------------------------------------------- queueing
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"runner-{self.name}")

    def put(self, items: Sequence[Pending]) -> None:
        now = time.perf_counter()
        for p in items:
            p.tier = self.index
            p.enqueued = now
            p.started = False
        self.queue.extend(items)
        self._bg_queued += sum(p.background for p in items)
        self._wake.set()

    @property
    def load(self) -> int:
        """Items queued or being computed."""
        return len(self.queue) + self.running

    @property
    def request_load(self) -> int:
        """Items of requests queued or being computed: what admission weighs. Shadow audits are left out:
        they run only when the tier is idle, a few at a time, and a batch of them on a slow final tier must not
        make the door refuse traffic that would never reach it (measured: 8 audits at ~150 ms each under load
        made every rules-decided request a 429)."""
        return self.load - self._bg_queued - self._bg_running

    @property
    def requests_running(self) -> int:
        """Items of requests in batches being computed (shadow audits left out, as in :attr:`request_load`)."""
        return self.running - self._bg_running

    def expected_wait_s(self, extra: int = 0) -> float:
        """How long an item put now would wait until its batch is done, from the measured speed."""
        return (self.load + extra + 1) * self.seconds_per_item

    # ------------------------------------------------------------------------------------------- batching
    async def _loop(self) -> None:
        while not self._closed:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._slots.acquire()
            if self.serving.max_wait_ms > 0:
                await self._fill()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _fill(self) -> None:
        until = self.queue[0].enqueued + self.serving.max_wait_ms / 1000
        while len(self.queue) < self.max_batch and not self._closed:
            left = until - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[Pending]:
        """The next batch. An item whose request is answered already (its deadline passed) is dropped, and so
        is one that waited in the queue longer than a batch takes and whose deadline now comes before this
        batch could be done (from the measured speed): work that the load made late is not started, so its
        request is answered as shed (429 with Retry-After), not as a tier too slow (504), and the tier's time
        goes to items that can still make it. (A deadline too short for an idle tier is still tried: 504.)"""
        batch: list[Pending] = []
        now = time.perf_counter()
        need = self.seconds_per_item * min(len(self.queue), self.max_batch)
        while self.queue and len(batch) < self.max_batch:
            p = self.queue.popleft()
            self._bg_queued -= p.background
            if p.request.done:  # type: ignore[attr-defined]
                continue
            if getattr(p.request, "deadline", _NEVER) - now < need and now - p.enqueued > need:
                self._shed.inc()  # it waited behind other work: shed, not tried
                continue
            p.started, p.started_at = True, now
            batch.append(p)
        return batch

    async def _run(self, batch: list[Pending]) -> None:
        self.running += len(batch)
        bg = sum(p.background for p in batch)
        self._bg_running += bg
        t0 = time.perf_counter()
        m.child(m.BATCH_SIZE, self.name).observe(len(batch))
        m.child(m.TIER_BATCHES, self.name).inc()
        wait = m.child(m.QUEUE_WAIT, self.name)
        for p in batch:
            wait.observe(t0 - p.enqueued)
        try:
            if not self.breaker.allow():
                result = BatchResult(batch, None, 0.0, "breaker_open")
            else:
                result = await self._attempt(batch, t0)
        finally:
            self.running -= len(batch)
            self._bg_running -= bg
            self._slots.release()
            m.child(m.BREAKER, self.name).set(self.breaker.state)
        try:
            self.on_batch(self, result)
        except Exception:  # routing bugs must not kill the runner; the requests hit their deadline
            log.exception("routing a batch of tier %s failed", self.name)

    async def _attempt(self, batch: list[Pending], t0: float) -> BatchResult:
        """Run the batch where the tier runs; the breaker and the speed estimate hear of the outcome."""
        try:
            if self.inline:
                outs, seconds = await self._predict_inline(batch)
            else:
                fut = asyncio.get_running_loop().run_in_executor(self._pool, self._predict, batch)
                outs, seconds = await asyncio.wait_for(asyncio.shield(fut), self.serving.timeout_ms / 1000)
        except TimeoutError:
            # The thread cannot be interrupted; its result is dropped and the breaker hears of it.
            self.breaker.failure()
            return BatchResult(batch, None, time.perf_counter() - t0, "timeout")
        except Exception as e:  # a failing tier degrades its items; it never fails the loop
            self.breaker.failure()
            if not isinstance(e, InjectedFault):
                log.error("tier %s failed on a batch of %d: %s: %s", self.name, len(batch), type(e).__name__, e)
            return BatchResult(batch, None, time.perf_counter() - t0, "error", e)
        m.observe_batch(self.name, len(batch), seconds)
        self.breaker.success()
        self._learn_speed(len(batch), seconds)
        return BatchResult(batch, outs, seconds)

    def run_now(self, items: list[Pending]) -> bool:
        """Run a few items of a light tier at once, on the caller's stack, and hand the result to ``on_batch``;
        False (nothing done) when they must queue instead: too many for one slice, a fault to rehearse, or a
        breaker that is not closed.

        Why: a light tier's batch of one costs less than the queue, the batcher task and the wake-ups around
        it, and batching gains nothing on a batch-invariant, pure-Python tier; at 32 connections the queued
        path made every rules-decided request wait for the slices of the others (docs/benchmarks.md)."""
        if (not self.inline or len(items) > INLINE_SLICE or self.breaker.state != Breaker.CLOSED
                or self._current_fault() != _NO_FAULT):
            return False
        t0 = time.perf_counter()
        m.child(m.BATCH_SIZE, self.name).observe(len(items))
        m.child(m.TIER_BATCHES, self.name).inc()
        m.child(m.QUEUE_WAIT, self.name).observe(0.0)
        for p in items:
            p.tier, p.enqueued, p.started, p.started_at = self.index, t0, True, t0
        try:
            outs = self._counted(self.tier.predict(self._parsed(items)), items)
        except Exception as e:
            self.breaker.failure()
            log.error("tier %s failed on a batch of %d: %s: %s", self.name, len(items), type(e).__name__, e)
            result = BatchResult(items, None, time.perf_counter() - t0, "error", e)
        else:
            seconds = time.perf_counter() - t0
            m.observe_batch(self.name, len(items), seconds)
            self._learn_speed(len(items), seconds)
            result = BatchResult(items, outs, seconds)
        self.on_batch(self, result)
        return True

    def _current_fault(self) -> Fault:
        with self._lock:
            return self.fault

    def _parsed(self, part: list[Pending]) -> list[Item]:
        for p in part:
            if p.item is None:
                p.item = make_item(p.text, max_chars=self.max_text_chars)
        return [p.item for p in part]  # type: ignore[misc]

    def _counted(self, outs: list[TierOutput], batch: list[Pending]) -> list[TierOutput]:
        if len(outs) != len(batch):
            raise RuntimeError(f"tier {self.name} returned {len(outs)} outputs for {len(batch)} items")
        return outs

    async def _predict_inline(self, batch: list[Pending]) -> tuple[list[TierOutput], float]:
        """On the event loop, ``INLINE_SLICE`` items at a time with a yield between slices, so probes and
        other requests are served while a big batch runs (a light tier's cost per item is bounded)."""
        fault = self._current_fault()
        t0 = time.perf_counter()
        if fault.delay_ms > 0:
            await asyncio.sleep(fault.delay_ms / 1000)
        fault.apply_error()
        outs: list[TierOutput] = []
        for s in range(0, len(batch), INLINE_SLICE):
            if s:
                await asyncio.sleep(0)
            outs.extend(self.tier.predict(self._parsed(batch[s:s + INLINE_SLICE])))
        return self._counted(outs, batch), time.perf_counter() - t0

    def _predict(self, batch: list[Pending]) -> tuple[list[TierOutput], float]:
        """In the executor thread: apply faults, run the tier here or wait for its own process."""
        fault = self._current_fault()
        t0 = time.perf_counter()
        fault.apply()
        if self.process:  # the thread waits (without the GIL) for the tier's process, which parses
            outs = self.tier.predict_texts([p.text for p in batch])  # type: ignore[attr-defined]
        else:
            outs = self.tier.predict(self._parsed(batch))
        return self._counted(outs, batch), time.perf_counter() - t0

    def _learn_speed(self, n: int, seconds: float) -> None:
        per_item = seconds / max(n, 1)
        self.items_done += n
        # Fast at first (the calibrated figure may be from another machine), then smooth.
        alpha = 0.5 if self.items_done < 256 else 0.1
        self.seconds_per_item += alpha * (per_item - self.seconds_per_item)

    def set_fault(self, fault: Fault) -> None:
        with self._lock:
            self.fault = fault
        m.FAULTS.labels(self.name).set(1 if fault.error_rate or fault.delay_ms else 0)

    # ------------------------------------------------------------------------------------------ stopping
    async def stop(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
