"""Helpers for the rules tests: write real rule files, build real engines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tiergate.rules.engine import Engine
from tiergate.rules.loader import load_text


def rules_yaml(body: str, header: str = "version: 1\n") -> str:
    """A rule file from an indented ``rules:`` body (dedented, so tests can write it inline)."""
    return header + "rules:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n"


def engine_of(body: str, header: str = "version: 1\n", **kw) -> Engine:
    return Engine(load_text(rules_yaml(body, header), name="t.yaml"), **kw)


@pytest.fixture
def write(tmp_path):
    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p
    return _write


GOOD = rules_yaml("""
- id: lottery
  description: lottery wins
  priority: 10
  when: {keywords: [lottery, jackpot]}
  then: {label: spam, confidence: 0.97}
  examples: {match: ["You won the LOTTERY"], no_match: ["lotteryticket"]}
- id: meeting
  description: meeting notes
  when: {regex: '\\bmeeting notes\\b', field: subject, flags: [ignorecase]}
  then: {label: ham, confidence: 0.9}
  examples: {match: ["Subject: Meeting notes\\n\\nhi"], no_match: ["Subject: hi\\n\\nmeeting notes"]}
""")
