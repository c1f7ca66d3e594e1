"""``tiergate rules test``: run every rule's examples against the rule alone (priority and other rules play
no part: an example says what *this* rule's condition must and must not match).

>>> from tiergate.rules.loader import load_text
>>> from tiergate.rules.engine import Engine
>>> run_examples(Engine(load_text('''
... rules:
...   - id: prize
...     description: d
...     when: {keywords: [prize]}
...     then: {label: spam}
...     examples: {match: ["a prize!"], no_match: ["prizes"]}
... ''')))
[]
"""

from __future__ import annotations

from dataclasses import dataclass

from tiergate.data.items import make_item
from tiergate.rules.engine import Engine


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    file: str
    line: int
    column: int
    rule_id: str
    kind: str  # "match" or "no_match"
    index: int
    text: str

    def __str__(self) -> str:
        what = "does not match" if self.kind == "match" else "matches"
        return (f"{self.file}:{self.line}:{self.column}: {self.rule_id}: example {self.kind}[{self.index}] "
                f"{self.text[:80]!r} {what} (fix the rule's condition or the example)")


def run_examples(engine: Engine) -> list[ExampleFailure]:
    """Every failing example of every rule (disabled rules included); empty when all pass."""
    failures = []
    entries = {e.rule.id: e for e in engine.source.entries if e.rule is not None}
    for rid, entry in entries.items():
        rule = entry.rule
        assert rule is not None
        for kind, texts, want in (("match", rule.examples.match, True),
                                  ("no_match", rule.examples.no_match, False)):
            for i, text in enumerate(texts):
                if engine.rule_matches(rid, make_item(text)) != want:
                    line, col = entry.where("examples", kind, i)
                    failures.append(ExampleFailure(entry.file, line, col, rid, kind, i, text))
    return failures


def count_examples(engine: Engine) -> int:
    return sum(len(e.rule.examples.match) + len(e.rule.examples.no_match)
               for e in engine.source.entries if e.rule is not None)
