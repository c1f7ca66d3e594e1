"""Wall-clock time budgets for regex evaluation, turned into the ``timeout=`` the ``regex`` package takes.

The rules tier gives each item a budget for all of its regex evaluations, and each ``predict`` call a budget
for its whole batch; both are wall-clock deadlines (``time.perf_counter`` values). The ``regex`` package,
though, counts its ``timeout`` in *process CPU time* (C ``clock()``): on cores shared with other processes a
search given 50 ms ran 80 to 150 ms of wall time, and while other threads of the process burn CPU it stops
early. :class:`CpuRate` learns how fast the process's CPU clock runs against the wall clock from the searches
that time out (they ran for exactly the CPU time they were given), and :meth:`CpuRate.timeout_for` converts
what is left of a deadline into the CPU seconds to pass, so the wall-clock budget holds under load.

>>> rate = CpuRate(initial=1.0)
>>> rate.observe(cpu_s=0.05, wall_s=0.1)     # a search given 50 ms of CPU took 100 ms: half a core
>>> round(rate.timeout_for(0.02), 4)         # 20 ms of wall time left: ask for 10 ms of CPU
0.01
"""

from __future__ import annotations

import os


class CpuRate:
    """Process CPU seconds per wall second during regex evaluation, as an exponential moving average.

    It starts from the machine's load average (on ``c`` cores with ``L > c`` runnable tasks a process gets
    about ``c / L`` of a core; 1 when the machine is idle or the load is unknown); the first time-out replaces
    that guess, later ones move the average, faster when the machine gets slower (an overshoot is what the
    budget is there to prevent) than when it gets faster (a search cut a little early is harmless). It is
    clamped to ``[MIN_RATE, os.cpu_count()]`` so one odd sample cannot disable the limit or stretch it without
    bound.
    """

    MIN_RATE = 0.05
    MIN_SAMPLE_S = 0.002  # shorter searches say more about clock granularity than about contention
    ALPHA_DOWN = 0.8      # weight of a sample below the average (less CPU per wall second than assumed)
    ALPHA_UP = 0.3        # weight of a sample above it

    def __init__(self, initial: float | None = None) -> None:
        self.max_rate = float(os.cpu_count() or 1)
        self.value = load_share(self.max_rate) if initial is None else initial
        self.samples = 0

    def observe(self, cpu_s: float, wall_s: float) -> None:
        """Record a search that ran out of its ``cpu_s`` after ``wall_s`` seconds of wall time."""
        if wall_s < self.MIN_SAMPLE_S:
            return
        sample = min(max(cpu_s / wall_s, self.MIN_RATE), self.max_rate)
        # A lost update between threads only delays adaptation by one sample: no lock on the hot path.
        if self.samples == 0:
            self.value = sample
        else:
            self.value += (self.ALPHA_DOWN if sample < self.value else self.ALPHA_UP) * (sample - self.value)
        self.samples += 1

    def timeout_for(self, wall_left_s: float) -> float:
        """The CPU-time ``timeout`` that should end a search after ``wall_left_s`` seconds of wall time."""
        return wall_left_s * self.value


def load_share(cores: float) -> float:
    """The share of a core a busy process can expect from the 1-minute load average (at most 1)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return 1.0
    return min(1.0, max(CpuRate.MIN_RATE, cores / load)) if load > 0 else 1.0


# One per process: the clock the regex package reads is the whole process's CPU time.
CPU_RATE = CpuRate()
