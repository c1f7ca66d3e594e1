import json

import pytest
from pydantic import ValidationError

from tiergate.rules.schema import Action, Rule, RuleFile, json_schema


def rule(**over):
    base = {"id": "a-rule", "description": "d", "when": {"keywords": ["x"]}, "then": {"label": "spam"}}
    base.update(over)
    return base


def test_every_condition_kind_parses():
    when = {"all": [{"regex": "a", "field": "subject", "flags": ["ignorecase"]},
                    {"any": [{"keywords": ["k"], "min_count": 1}, {"phrases": ["p q"], "field": "body"}]},
                    {"not": {"feature": {"name": "match_count", "op": ">=", "value": 2, "pattern": "x"}}},
                    {"feature": {"name": "url_count", "op": ">", "value": 0}, "field": "header:x-mailer"},
                    {"regex": "b", "field": "meta:source"}]}
    r = Rule.model_validate(rule(when=when))
    assert r.when.all[2].not_.feature.name == "match_count"


@pytest.mark.parametrize("then,ok", [
    ({"label": "spam", "confidence": 0.5}, True), ({"escalate": "next"}, True), ({"abstain": True}, True),
    ({"label": "spam", "score": 2.0}, True), ({"score": 2.0}, False), ({"label": "x", "escalate": "next"}, False),
    ({}, False), ({"escalate": "big", "confidence": 0.9}, False), ({"label": "x", "confidence": 1.5}, False),
])
def test_then_takes_exactly_one_action(then, ok):
    if ok:
        Action.model_validate(then)
    else:
        with pytest.raises(ValidationError):
            Action.model_validate(then)


@pytest.mark.parametrize("bad", [
    {"id": "Not_Kebab"}, {"descripton": "typo"}, {"when": {"regex": "a", "keywords": ["b"]}},
    {"when": {"regex": "a", "field": "bogus"}}, {"when": {"feature": {"name": "match_count", "op": ">", "value": 1}}},
    {"when": {"feature": {"name": "length", "op": "~", "value": 1}}}, {"when": {"keywords": []}},
])
def test_invalid_rules_are_refused(bad):
    with pytest.raises(ValidationError):
        Rule.model_validate(rule(**bad))


def test_json_schema_forbids_unknown_keys():
    s = json_schema()
    json.dumps(s)
    assert s["additionalProperties"] is False
    assert s["$defs"]["Rule"]["additionalProperties"] is False
    assert set(RuleFile.model_fields) == {"version", "mode", "threshold", "rules"}
