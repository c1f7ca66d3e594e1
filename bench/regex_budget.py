"""How far the rules tier's regex time limits overshoot, on rule sets built to time out (issue 12).

Three scenarios, each through ``RulesTier.predict``:

* ``1 rule, 1 item``: one catastrophic pattern on one crafted item; the limit is the item budget;
* ``4 rules, 1 item``: four catastrophic patterns on the same item; the limit is still the item budget;
* ``4 rules, N items``: a batch of N items, every ``--bad-every``-th one crafted; the limit is the call budget.

The rule sets are built without lint (lint refuses these patterns, which is the point of it). The script also
runs against a checkout from before the budgets (a limit per regex call): put that checkout first on
``PYTHONPATH``, e.g. ``git archive <commit> tiergate | tar -x -C /tmp/old; PYTHONPATH=/tmp/old python
bench/regex_budget.py``. The figures depend on how loaded the machine is, so run both back to back.

    python bench/regex_budget.py [--repeats 5] [--batch 256] [--bad-every 8]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

from prometheus_client import REGISTRY

import tiergate
from tiergate.data import make_item
from tiergate.rules.engine import Engine
from tiergate.rules.loader import load_text
from tiergate.rules.tier import RulesTier

ITEM_BUDGET_S = 0.05
BATCH_BUDGET_S = 1.0
PATTERNS = [r"(a+)+$", r"(?:a|a?)+$", r"(\w+\s?)*$", r"(.*a){12}$"]
BAD_TEXT = "a" * 5000 + "!"  # every pattern above backtracks on it for far longer than a second


def rules_text(patterns: list[str]) -> str:
    lines = ["version: 1", "rules:"]
    for i, p in enumerate(patterns):
        lines.append(f"  - {{id: redos-{i}, description: d, when: {{regex: '{p}'}}, then: {{label: spam}}}}")
    return "\n".join(lines) + "\n"


def make_tier(patterns: list[str]) -> RulesTier:
    src = load_text(rules_text(patterns))
    if "item_budget_s" in inspect.signature(RulesTier.__init__).parameters:
        return RulesTier(Engine(src), item_budget_s=ITEM_BUDGET_S, batch_budget_s=BATCH_BUDGET_S)
    return RulesTier(Engine(src, regex_timeout_s=ITEM_BUDGET_S))  # before issue 12: a limit per regex call


def counter_total(name: str) -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == name)


def measure(tier: RulesTier, texts: list[str], repeats: int) -> dict:
    walls = []
    t0, s0 = counter_total("tiergate_rules_regex_timeouts_total"), counter_total("tiergate_rules_skipped_items_total")
    for _ in range(repeats):
        items = [make_item(t) for t in texts]  # fresh items: nothing parsed ahead of the clock
        start = time.perf_counter()
        outs = tier.predict(items)
        walls.append(time.perf_counter() - start)
        assert len(outs) == len(items)
    return {"walls": walls,
            "timeouts": (counter_total("tiergate_rules_regex_timeouts_total") - t0) / repeats,
            "skipped": (counter_total("tiergate_rules_skipped_items_total") - s0) / repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--bad-every", type=int, default=8)
    args = ap.parse_args()
    batch = [BAD_TEXT if i % args.bad_every == 0 else f"hello {i}, see you at noon" for i in range(args.batch)]
    scenarios = [("1 rule, 1 item", PATTERNS[:1], [BAD_TEXT], ITEM_BUDGET_S, args.repeats),
                 ("4 rules, 1 item", PATTERNS, [BAD_TEXT], ITEM_BUDGET_S, args.repeats),
                 (f"4 rules, {args.batch} items", PATTERNS, batch, BATCH_BUDGET_S, 1)]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"tiergate from {tiergate.__file__}; {os.cpu_count()} cores, load average {load}")
    print("| scenario | limit (ms) | runs | wall median (ms) | wall max (ms) | overshoot of max | regex timeouts/run "
          "| skipped items/run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, patterns, texts, limit, repeats in scenarios:
        r = measure(make_tier(patterns), texts, repeats)
        worst = max(r["walls"])
        print(f"| {name} | {limit * 1e3:.0f} | {repeats} | {statistics.median(r['walls']) * 1e3:.0f} | "
              f"{worst * 1e3:.0f} | {(worst / limit - 1) * 100:+.0f}% | {r['timeouts']:.0f} | {r['skipped']:.0f} |")


if __name__ == "__main__":
    main()
