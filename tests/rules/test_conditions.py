"""Matchers on real items: word boundaries, case, phrases across white space, fields, features, fuzzy regex."""

import pytest

from tests.rules.conftest import engine_of
from tiergate.data import make_item

MAIL = ("From: Ann <ann@example.org>\nTo: bob@example.org\nSubject: Cheap VIAGRA now\nX-Mailer: Mutt 1.4\n\n"
        "Visit http://a.example and www.b.example or https://c.example today.\nACT   NOW\nthanks")


def matches(cond: str, text: str = MAIL) -> bool:
    eng = engine_of(f"- {{id: r, description: d, when: {cond}, then: {{label: x}}}}")
    return eng.rule_matches("r", make_item(text))


@pytest.mark.parametrize("cond,want", [
    ("{keywords: [viagra]}", True),                                 # case-insensitive
    ("{keywords: [viag]}", False),                                  # word boundaries
    ("{keywords: [cheap viagra], field: subject}", True),
    ("{keywords: [viagra], field: body}", False),                   # fields are separate
    ("{keywords: [mutt], field: 'header:x-mailer'}", True),
    ("{keywords: [mutt], field: 'header:X-Mailer'}", True),         # header names are case-insensitive
    ("{keywords: [ann], field: from}", True),
    ("{keywords: [bob], field: to}", True),
    ("{keywords: [act now]}", False),                               # keywords are literal: 3 spaces differ
    ("{phrases: [act now]}", True),                                 # phrases fold white space
    ("{phrases: [act now, thanks], min_count: 2}", True),
    ("{phrases: [act now, nothing], min_count: 2}", False),
    ("{regex: 'VIAGRA', field: subject}", True),
    ("{regex: 'viagra', field: subject}", False),
    ("{regex: 'viagra', field: subject, flags: [ignorecase]}", True),
    ("{regex: '(?:viagara){e<=1}', field: subject, flags: [ignorecase]}", True),   # fuzzy, one error
    ("{regex: '(?:vagra){e<=0}', field: subject, flags: [ignorecase]}", False),
    ("{feature: {name: url_count, op: '>=', value: 3}, field: body}", True),
    ("{feature: {name: url_count, op: '>=', value: 4}, field: body}", False),
    ("{feature: {name: uppercase_ratio, op: '>=', value: 0.5}, field: subject}", True),
    ("{feature: {name: length, op: '<', value: 20}, field: subject}", True),
    ("{feature: {name: word_count, op: '==', value: 3}, field: subject}", True),
    ("{feature: {name: line_count, op: '==', value: 3}, field: body}", True),
    ("{feature: {name: match_count, op: '>=', value: 2, pattern: 'example'}, field: body}", True),
    ("{feature: {name: nonascii_ratio, op: '>', value: 0}}", False),
    ("{all: [{keywords: [viagra]}, {not: {keywords: [lottery]}}]}", True),
    ("{any: [{keywords: [lottery]}, {regex: 'thanks$'}]}", True),
    ("{not: {any: [{keywords: [lottery]}, {regex: 'thanks$'}]}}", False),
    ("{regex: 'x', field: 'meta:source'}", False),
])
def test_condition(cond, want):
    assert matches(cond) is want


def test_meta_fields():
    eng = engine_of("- {id: r, description: d, when: {regex: '^crm$', field: 'meta:source'}, then: {label: x}}")
    assert eng.rule_matches("r", make_item("hi", meta={"source": "crm"}))
    assert not eng.rule_matches("r", make_item("hi"))


def test_keyword_boundaries_and_symbols():
    eng = engine_of("""
- {id: a, description: d, when: {keywords: ["$$$", "c++", "e-mail"]}, then: {label: x}}
""")
    for text, want in [("make $$$ fast", True), ("use c++ daily", True), ("send an E-Mail", True),
                       ("c++x", True),  # '+' is not a word character, so no boundary is needed after it
                       ("xe-mail", False), ("email", False)]:
        assert eng.rule_matches("a", make_item(text)) is want, text


def test_unicode_that_changes_length_when_lowered():
    eng = engine_of("- {id: a, description: d, when: {keywords: [prize]}, then: {label: x}}")
    item = make_item("İİİ you won a PRIZE")
    assert eng.rule_matches("a", item)
    ev = eng.explain(item)["matched"][0]["evidence"][0]
    assert item.text[ev["span"][0]:ev["span"][1]] == "PRIZE"


def test_fields_are_capped_before_matching():
    eng = engine_of("- {id: a, description: d, when: {regex: 'needle'}, then: {label: x}}", max_chars=100)
    assert not eng.rule_matches("a", make_item("x" * 200 + "needle"))
    assert eng.rule_matches("a", make_item("x" * 50 + "needle"))
