"""Each lint check finds its problem and points at the right file, line and column."""

import pytest

from tiergate.rules.lint import lint
from tiergate.rules.loader import load_path

LINE_FORMAT = r"^.+\.yaml:\d+:\d+: [a-z0-9\[\]-]+: .+ \(.+\)$"


def problems_of(write, text: str, name: str = "r.yaml"):
    path = write(name, text)
    return path, [p for p in lint(load_path(path)) if p.severity == "error"]


BROKEN = """\
version: 1
rules:
  - id: unclosed
    description: an invalid regex
    when: {regex: "(unclosed", field: body}
    then: {label: spam, confidence: 0.99}
  - id: dupe
    description: first
    when: {keywords: [lottery]}
    then: {label: spam}
  - id: dupe
    description: second
    when: {keywords: [winner]}
    then: {label: spam}
  - id: typo-key
    descripton: a misspelt key
    when: {keywords: [prize]}
    then: {label: spam}
  - id: redos
    description: nested quantifier
    when:
      all:
        - {keywords: [x]}
        - {regex: '(a+)+$'}
    then: {label: spam}
  - id: broad
    description: catches all lottery mail
    priority: 10
    when: {keywords: [lottery, jackpot]}
    then: {label: spam}
  - id: narrow
    description: never reached
    priority: 5
    when:
      all:
        - {keywords: [jackpot]}
        - {regex: 'win'}
    then: {label: spam}
  - id: scored
    description: score in first-match mode
    when: {keywords: [x]}
    then: {label: spam, score: 2}
"""


def test_every_problem_at_once_with_locations(write):
    path, probs = problems_of(write, BROKEN)
    got = {(p.check, p.rule_id, p.line, p.column) for p in probs}
    # keys are located at the key itself (the column of `regex:` inside the flow mapping)
    assert ("regex", "unclosed", 5, 12) in got
    assert ("duplicate-id", "dupe", 11, 5) in got
    assert ("schema", "typo-key", 16, 5) in got  # the unknown key itself
    assert ("schema", "typo-key", 15, 5) in got  # and the missing description, at the rule
    assert ("backtracking", "redos", 24, 12) in got
    assert ("unreachable", "narrow", 34, 5) in got
    assert ("mode", "scored", 42, 25) in got
    for p in probs:
        assert str(p).startswith(f"{path}:{p.line}:{p.column}: {p.rule_id}: ")
        assert str(p).endswith(")")
    assert any("did you mean 'description'" in str(p) for p in probs)
    assert any("'broad'" in p.message for p in probs if p.check == "unreachable")


def test_yaml_syntax_error(write):
    _, probs = problems_of(write, "rules:\n  - id: a\n    when: {regex: 'x'\n")
    assert [p.check for p in probs] == ["yaml"] and probs[0].line >= 3


@pytest.mark.parametrize("first,second", [
    ("{keywords: [a, b]}", "{keywords: [a]}"),                       # subset of keywords
    ("{regex: x}", "{regex: x}"),                                    # same condition
    ("{any: [{regex: x}, {regex: y}]}", "{regex: y}"),               # one branch of an any
    ("{regex: x}", "{all: [{regex: x}, {keywords: [k]}]}"),          # a conjunction containing it
])
def test_unreachable_shapes(write, first, second):
    text = (f"rules:\n  - {{id: a, description: d, priority: 2, when: {first}, then: {{label: s}}}}\n"
            f"  - {{id: b, description: d, priority: 1, when: {second}, then: {{label: s}}}}\n")
    _, probs = problems_of(write, text)
    assert [(p.check, p.rule_id, p.line) for p in probs] == [("unreachable", "b", 3)]


@pytest.mark.parametrize("first,second", [
    ("{keywords: [a]}", "{keywords: [a, b]}"),
    ("{regex: x}", "{any: [{regex: x}, {regex: y}]}"),
    ("{regex: x, field: subject}", "{regex: x, field: body}"),
])
def test_reachable_shapes_are_not_reported(write, first, second):
    text = (f"rules:\n  - {{id: a, description: d, priority: 2, when: {first}, then: {{label: s}}}}\n"
            f"  - {{id: b, description: d, priority: 1, when: {second}, then: {{label: s}}}}\n")
    assert problems_of(write, text)[1] == []


def test_shadow_and_disabled_rules_shadow_nothing(write):
    text = ("rules:\n  - {id: a, description: d, priority: 2, shadow: true, when: {regex: x}, then: {label: s}}\n"
            "  - {id: c, description: d, priority: 2, enabled: false, when: {regex: x}, then: {label: s}}\n"
            "  - {id: b, description: d, priority: 1, when: {regex: x}, then: {label: s}}\n")
    assert problems_of(write, text)[1] == []


def test_scoring_needs_thresholds(write):
    text = ("mode: scoring\nthreshold: {ham: 1}\nrules:\n"
            "  - {id: a, description: d, when: {regex: x}, then: {label: spam, score: 1}}\n")
    path = write("s.yaml", text)
    all_probs = lint(load_path(path))
    errs = [p for p in all_probs if p.severity == "error"]
    assert [(p.check, p.line) for p in errs] == [("mode", 4)]
    assert any(p.severity == "warning" and "'ham'" in p.message for p in all_probs)


def test_missing_examples_is_a_warning_only(write):
    path = write("w.yaml", "rules:\n  - {id: a, description: d, when: {regex: x}, then: {label: s}}\n")
    probs = lint(load_path(path))
    assert [(p.check, p.severity) for p in probs] == [("examples", "warning")]
    assert "warning: no examples.match" in str(probs[0])


def test_directory_reports_the_file_of_each_problem(write, tmp_path):
    write("d/a.yaml", "rules:\n  - {id: same, description: d, when: {regex: x}, then: {label: s}}\n")
    write("d/b.yaml", "rules:\n  - {id: other, description: d, when: {regex: y}, then: {label: s}}\n"
                      "  - {id: same, description: d, when: {regex: z}, then: {label: s}}\n")
    errs = [p for p in lint(load_path(tmp_path / "d")) if p.severity == "error"]
    assert [(p.file.endswith("b.yaml"), p.line, p.check) for p in errs] == [(True, 3, "duplicate-id")]
    assert "a.yaml:2" in errs[0].message


def test_regex_of_a_rule_that_fails_the_schema_is_still_checked(write):
    _, probs = problems_of(write, "rules:\n  - id: a\n    when: {all: [{regex: '(('}]}\n    then: {label: s}\n")
    assert {(p.check, p.line) for p in probs} == {("schema", 2), ("regex", 3)}


@pytest.mark.parametrize("when,flagged", [
    ("{regex: '(.*a){12}$'}", True),
    ("{regex: '(?:a|a?)+$'}", True),
    ("{feature: {name: match_count, op: '>=', value: 1, pattern: '(\\w|\\d)+!'}}", True),
    ("{regex: '([a-z]|K)+$', flags: [ignorecase]}", True),  # the rule's flags decide what overlaps
    ("{regex: '([a-z]|K)+$'}", False),
    ("{regex: '(\\d+\\.){3}\\d+'}", False),
])
def test_backtracking_check_reads_every_regex_with_its_flags(write, when, flagged):
    _, probs = problems_of(write, f"rules:\n  - {{id: a, description: d, when: {when}, then: {{label: s}}}}\n")
    assert {p.check for p in probs} == ({"backtracking"} if flagged else set())
    assert all("possessive" in p.hint for p in probs)
