from tests.rules.conftest import engine_of
from tiergate.rules.examples import count_examples, run_examples


def test_failures_name_the_rule_the_example_and_its_line():
    eng = engine_of("""
- id: prize
  description: d
  priority: 5
  when: {keywords: [prize]}
  then: {label: spam}
  examples:
    match: ["a prize", "prizes galore"]
    no_match: ["no PRIZE here"]
- id: later
  description: examples run against the rule alone, so priority does not hide this one's match
  when: {keywords: [prize]}
  then: {label: ham}
  enabled: false
  examples: {match: ["a prize"]}
""")
    failures = run_examples(eng)
    assert [(f.rule_id, f.kind, f.index) for f in failures] == [("prize", "match", 1), ("prize", "no_match", 0)]
    assert str(failures[0]).startswith("t.yaml:9:") and "'prizes galore' does not match" in str(failures[0])
    assert "'no PRIZE here' matches" in str(failures[1])
    assert count_examples(eng) == 4
