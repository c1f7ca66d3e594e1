"""Fuzzing the HTTP edge on a real uvicorn server serving a real three-tier cascade (rules, small ONNX, final
ONNX): schemathesis drives every operation of the served ``/openapi.json`` (the admin ones with the token) and
no answer may be a 5xx; hypothesis adds what schemathesis does not produce: texts built to trip the rules'
regexes and any Unicode text (always 200, one decision per text), deadline headers, and raw rule uploads."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import running_server
from tests.gateway.conftest import write_config
from tests.rules.conftest import rules_yaml
from tiergate.gateway.app import create_app
from tiergate.gateway.routes.classify import ClassifyRequest

TOKEN = "fuzz-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LABELS = {"ham", "spam"}
TIERS = {"rules", "small", "final"}
# The slow part is the server, not data generation, which is all Hypothesis' health checks measure.
RELAXED = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)

# Regexes that a backtracking engine has to work at (alternations under quantifiers, fuzzy matching, counted
# matches), all passing the rules lint, so the texts below meet them on every item.
FUZZ_RULES = rules_yaml(r"""
- id: lottery-win
  description: lottery wins
  when: {keywords: [lottery]}
  then: {label: spam, confidence: 0.97}
  examples: {match: ["You won the lottery"], no_match: ["lotto"]}
- id: fuzzy-pills
  description: misspelt pill names
  when: {regex: '(?:viagra|cialis){e<=1}', flags: [ignorecase]}
  then: {label: spam, confidence: 0.95}
  examples: {match: ["cheap v1agra"], no_match: ["vitamins"]}
- id: money-words
  description: money offers in the subject
  when: {regex: '\b(?:free|win|cash)\w*\s+(?:money|prizes?|\$\d+(?:,\d{3})*)', field: subject, flags: [ignorecase]}
  then: {label: spam, confidence: 0.9}
  examples: {match: ["Subject: FREE money\n\nhi"], no_match: ["Subject: free time\n\nhi"]}
- id: shouting
  description: many exclamation runs and links in the body
  when: {all: [{feature: {name: match_count, pattern: '!{2,}', op: '>=', value: 3}, field: body},
               {regex: 'https?://[\w.-]+/\S*', field: body}]}
  then: {label: spam, confidence: 0.9}
  examples: {match: ["Subject: x\n\nwin!! now!! go!! http://a.example/x"], no_match: ["Subject: x\n\nhello!!"]}
""")


@pytest.fixture(scope="module")
def fuzz_base(tiny_workdir, tmp_path_factory):
    # A folder of its own: PUT /admin/rules writes what it accepts over the rule file.
    d = tmp_path_factory.mktemp("fuzz")
    (d / "rules.yaml").write_text(FUZZ_RULES)
    p = write_config(d, tiny_workdir, "fuzz", {"anonymous_privileges": ["final_only", "epsilon"]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERGATE_ADMIN_TOKEN", TOKEN)  # the admin routes read it at every request
        with running_server(create_app(p)) as base:
            yield base


@pytest.fixture(scope="module")
def api_schema(fuzz_base):
    return schemathesis.openapi.from_url(fuzz_base + "/openapi.json")


# ------------------------------------------------------------------------------------ schemathesis
# schemathesis' pytest loader (``schemathesis.pytest.from_fixture(...).parametrize()``) fails on pytest 9.2: it
# renames items through ``Function._nodeid``, which pytest 9.2 no longer has. So hypothesis drives each
# operation's schemathesis strategy (``APIOperation.as_strategy``) here, for every operation the app declares
# (read from an app object at collection, which touches no disk; a test checks the server serves these).
_PATHS = create_app("never-read.yaml").openapi()["paths"]
OPERATIONS = sorted((method.upper(), path) for path, ops in _PATHS.items() for method in ops)
# Invalid requests only for the operations that take input: one without any has no invalid request.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or {"requestBody", "parameters"} & set(_PATHS[p][m.lower()])]


def _accepted(body) -> bool:
    try:
        ClassifyRequest.model_validate_json(json.dumps(body))
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _strategy(operation, mode: GenerationMode):
    cases = operation.as_strategy(generation_mode=mode)
    if operation.path == "/v1/classify" and mode is GenerationMode.POSITIVE:
        # The schema cannot say "exactly one of text and texts" (a model validator does), so four in five
        # "valid" bodies would be 422; keep those the model accepts, so that valid requests reach the tiers.
        cases = cases.filter(lambda case: _accepted(case.body))
    return cases


def _short_deadline_504(case, response) -> bool:
    """The one 5xx the gateway owes a valid request: 504 when the body's ``deadline_ms`` ran out before any model
    tier answered (:mod:`tiergate.gateway.scheduler`), which a fuzzer's 1e-5 ms asks for."""
    if response.status_code != 504 or not isinstance(case.body, dict):
        return False
    deadline = case.body.get("deadline_ms")
    return (response.json().get("error") == "DeadlineError" and isinstance(deadline, (int, float))
            and not isinstance(deadline, bool) and deadline < 1000)


def test_every_served_operation_is_fuzzed(api_schema):
    served = sorted((op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations()))
    assert served == OPERATIONS


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_no_operation_answers_5xx(api_schema, fuzz_base, method, path, mode):
    """Valid and invalid requests of every operation (the admin ones with the token): never a 5xx."""

    @given(case=_strategy(api_schema[path][method], mode))
    @settings(max_examples=30, **RELAXED)
    def one(case):
        response = case.call(base_url=fuzz_base, headers=ADMIN, timeout=30)
        if not _short_deadline_504(case, response):
            case.validate_response(response, checks=[not_a_server_error])

    one()


# ------------------------------------------------------------------------------------ classify texts
_RUN_CHARS = st.sampled_from("a !<>[](){}-_.@=*+?\\/|:$,\n\t\r\x00\u00e9\u4e2d\U0001f600")
runs = st.builds(lambda c, n: c * n, _RUN_CHARS, st.integers(1, 20_000))
nested = st.builds(lambda o, c, n: o * n + c * n, st.sampled_from(["(", "[", "{", "<", "<a>", "(?:", "\"", "'"]),
                   st.sampled_from([")", "]", "}", ">", "</a>", ")*", "\"", "'"]), st.integers(1, 5000))
# a long near-match and then the character that makes it fail: the classic catastrophic-backtracking input
near_misses = st.builds(lambda unit, n, tail: unit * n + tail,
                        st.sampled_from(["a", "ab", "a ", "x-", "1.", "aa@", "!!", "$1,000", "viagr", "free "]),
                        st.integers(100, 10_000), st.sampled_from(["!", "", "@", "\x00", "a!", "\n"]))
repeated = st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=8), st.integers(1, 2000))
mails = st.builds(lambda subject, body: f"Subject: {subject}\n\n{body}", st.one_of(st.text(max_size=200), runs),
                  st.one_of(st.text(max_size=2000), near_misses))
TRAPS = st.one_of(st.just("a" * 10_000 + "!"), runs, nested, near_misses, repeated, mails)
ANY_TEXT = st.text(max_size=3000)  # every code point but surrogates, which are no Unicode text (422, test_serving)


@given(texts=st.lists(st.one_of(TRAPS, ANY_TEXT), min_size=1, max_size=8))
@settings(max_examples=80, **RELAXED)
@pytest.mark.timeout(300)
def test_any_text_gets_one_decision(fuzz_base, texts):
    r = httpx.post(fuzz_base + "/v1/classify", content=json.dumps({"texts": texts}).encode(),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    results = r.json()["results"]
    assert len(results) == len(texts)
    assert all(d["label"] in LABELS and d["tier"] in TIERS for d in results), results


@given(text=st.one_of(ANY_TEXT, TRAPS), final_only=st.booleans())
@settings(max_examples=40, **RELAXED)
@pytest.mark.timeout(300)
def test_any_single_text_gets_one_decision(fuzz_base, text, final_only):
    r = httpx.post(fuzz_base + "/v1/classify", json={"text": text, "final_only": final_only}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    d = r.json()
    assert d["label"] in LABELS and d["tier"] in TIERS
    assert not final_only or d["path"][0] == "final"


@given(value=st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30),
                       st.floats().map(repr), st.integers().map(str)))
@settings(max_examples=30, **RELAXED)
@pytest.mark.timeout(300)
def test_any_deadline_header_is_not_a_server_error(fuzz_base, value):
    """``X-Tiergate-Deadline-Ms`` is read by hand, so the schema does not describe it."""
    r = httpx.post(fuzz_base + "/v1/classify", json={"text": "Subject: hi\n\nhello"},
                   headers={"X-Tiergate-Deadline-Ms": value.strip() or "x"}, timeout=60)
    try:
        ms = float(value)
    except ValueError:
        ms = float("nan")
    if r.status_code == 504:  # documented for a deadline too short for any model tier
        assert r.json()["error"] == "DeadlineError" and 0 < ms < 1000, (value, r.text)
    elif r.status_code == 429:  # a short deadline passed while the item still waited in a batch: shed
        assert r.json()["error"] == "OverloadedError" and "retry-after" in r.headers and 0 < ms < 1000, (value, r.text)
    else:
        assert r.status_code == (200 if ms > 0 else 422), (value, r.status_code, r.text[:300])


# ------------------------------------------------------------------------------------ rule uploads
_yaml_rule = st.builds(
    lambda rid, regex, conf: f"rules:\n- id: {rid}\n  description: x\n  when: {{regex: {json.dumps(regex)}}}\n"
                             f"  then: {{label: spam, confidence: {conf}}}\n",
    st.one_of(st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,4})?", fullmatch=True), st.text(max_size=12)),
    st.one_of(st.sampled_from(["(a+)+$", "(?:x|x?)+y", "(.*a){12}", "\\bfree\\b", "[", "(?i)caf\u00e9"]),
              st.text(max_size=30)),
    st.one_of(st.floats(0, 1), st.floats(allow_nan=True), st.text(max_size=5)))


@given(body=st.one_of(st.text(max_size=2000), _yaml_rule, st.binary(max_size=500)))
@settings(max_examples=40, **RELAXED)
@pytest.mark.timeout(300)
def test_rule_uploads_are_never_a_server_error(fuzz_base, body):
    """``PUT /admin/rules`` reads its YAML from the raw body, which the schema does not describe, so schemathesis
    only ever sends it nothing."""
    r = httpx.put(fuzz_base + "/admin/rules", content=body.encode() if isinstance(body, str) else body,
                  headers=ADMIN, timeout=60)
    assert r.status_code in (200, 422), (r.status_code, r.text[:500])
    if r.status_code == 422:
        assert r.json()["error"] in ("RuleError", "InputError")
    else:  # accepted: served from now on
        assert httpx.get(fuzz_base + "/readyz").json()["rules_version"] == r.json()["rules_version"]
