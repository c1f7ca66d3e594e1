"""The item deadline: shared by all of an item's regexes, turned into the CPU-time timeout the regex package
takes, and still held when the process gets only part of a core."""

import os
import time

import pytest

from tiergate.data import make_item
from tiergate.rules import conditions
from tiergate.rules.budget import CpuRate
from tiergate.rules.conditions import Context, KeywordIndex


class SharedCorePattern:
    """Stands in for a compiled regex the way the ``regex`` package times it: a search that needs ``cost_s``
    of wall time finishes (no match) if its CPU-time ``timeout`` covers it, given that the process runs at
    ``share`` of a core; otherwise it raises TimeoutError once the timeout's worth of CPU is used."""

    def __init__(self, cost_s: float, share: float = 1.0):
        self.cost_s, self.share = cost_s, share
        self.timeouts: list[float] = []

    def search(self, text, timeout):
        self.timeouts.append(timeout)
        allowed = timeout / self.share
        time.sleep(min(self.cost_s, allowed))
        if self.cost_s > allowed:
            raise TimeoutError("regex timed out")
        return None


@pytest.fixture
def rate(monkeypatch):
    fresh = CpuRate(initial=1.0)  # the process-wide estimate stays as the other tests left it
    monkeypatch.setattr(conditions, "CPU_RATE", fresh)
    return fresh


def context(budget_s: float) -> Context:
    return Context(make_item("x"), KeywordIndex(), max_chars=100, deadline=time.perf_counter() + budget_s)


def test_the_budget_is_shared_by_all_regexes_of_an_item(rate):
    ctx = context(0.06)
    patterns = [SharedCorePattern(0.025) for _ in range(4)]
    start = time.perf_counter()
    for i, p in enumerate(patterns):
        ctx.rule_id = f"r{i}"
        assert ctx.search(p, "x") is None
    elapsed = time.perf_counter() - start
    # two searches finish, the third gets the 10 ms left and is cut off, the fourth never starts
    assert [len(p.timeouts) for p in patterns] == [1, 1, 1, 0]
    assert patterns[0].timeouts[0] > patterns[1].timeouts[0] > patterns[2].timeouts[0] > 0
    assert ctx.timeouts == ["r2", "r3"]
    assert elapsed < 0.06 + 0.015, elapsed  # a limit per search would have taken 4 x 25 ms


def test_the_wall_clock_budget_holds_on_half_a_core(rate):
    walls = []
    for _ in range(5):
        ctx = context(0.04)
        start = time.perf_counter()
        assert ctx.search(SharedCorePattern(1.0, share=0.5), "x") is None
        walls.append(time.perf_counter() - start)
    assert walls[0] > 0.07                      # before any time-out, 40 ms of CPU is 80 ms of wall time
    assert max(walls[1:]) < 0.04 * 1.1, walls   # the first time-out measured the rate: the budget holds
    assert rate.value == pytest.approx(0.5, abs=0.05)


def test_count_shares_the_deadline_and_a_spent_budget_runs_nothing(rate):
    ctx = context(-1.0)
    p = SharedCorePattern(0.0)
    ctx.rule_id = "late"
    assert ctx.search(p, "x") is None and p.timeouts == []
    assert ctx.count(conditions.compile_regex("x"), "xxx") == 0
    assert ctx.timeouts == ["late", "late"]
    assert context(1.0).count(conditions.compile_regex("x"), "xxx") == 3


def test_cpu_rate_follows_a_slower_machine_faster_than_a_faster_one():
    r = CpuRate(initial=1.0)
    r.observe(cpu_s=0.05, wall_s=0.05)
    assert r.value == 1.0
    r.observe(cpu_s=0.05, wall_s=0.1)
    slower = r.value
    r.observe(cpu_s=0.05, wall_s=0.05)
    assert 1.0 - slower > r.value - slower > 0


def test_cpu_rate_starts_from_the_load_average(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 1.0, 1.0))
    assert CpuRate().value == pytest.approx(min(1.0, (os.cpu_count() or 1) / 8.0))
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert CpuRate().value == 1.0


def test_cpu_rate_ignores_short_samples_and_is_clamped():
    r = CpuRate(initial=1.0)
    r.observe(cpu_s=0.0001, wall_s=0.001)       # too short to say anything
    assert r.value == 1.0
    for _ in range(20):
        r.observe(cpu_s=0.0, wall_s=1.0)
    assert r.value == pytest.approx(CpuRate.MIN_RATE, abs=1e-3)
    for _ in range(20):
        r.observe(cpu_s=1000.0, wall_s=1.0)
    assert r.value == pytest.approx(r.max_rate, abs=0.01)
    assert r.timeout_for(0.01) == pytest.approx(0.01 * r.value)
