"""The static backtracking check, against what the ``regex`` package really does on crafted inputs.

Every pattern of ``DANGEROUS`` is flagged and, on its input, needs more than the 0.05 s an item gets (the
searches run under ``timeout=``, which the package counts in CPU time, so a loaded machine does not change the
outcome): measured when the table was written, each needs 0.5 s or more, ten times the limit. Every pattern of
``SAFE`` is not flagged and finishes its adversarial input of about 200 characters in a few milliseconds.
``CAUTIOUS`` patterns are flagged though the package copes with them: its repeat guards make the overlap or the
nesting cost no more than an ordinary repeat (``(ab)*$`` is as slow); the check does not try to prove that.
"""

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tiergate.rules.backtracking import risky_patterns

LIMIT_S = 0.05

DANGEROUS = [  # (pattern, crafted input, the reason the check gives)
    (r"(a+)+$", "a" * 1000 + "!", "nested quantifiers"),
    (r"(a*)*b", "a" * 1000 + "!b", "nested quantifiers"),
    (r"(\w+\s?)*$", "a" * 1000 + "!", "nested quantifiers"),
    (r"(?:x|y+)+z", "y" * 1000 + "!z", "nested quantifiers"),
    (r"(a{1,}){2,}$", "a" * 1000 + "!", "nested quantifiers"),
    (r"(x+x+)+y", "x" * 1000 + "!y", "nested quantifiers"),
    (r"(\w+\w)+$", "a" * 1000 + "!", "nested quantifiers"),
    (r"(?:a|a?)+$", "a" * 400 + "!", "overlapping alternatives"),
    (r"((a|a?)b)*$", "ab" * 200 + "!", "overlapping alternatives"),
    (r"(a|a)*b", "a" * 100 + "!b", "overlapping alternatives"),
    (r"(a|aa)+c", "a" * 100 + "!c", "overlapping alternatives"),
    (r"(.|x)*y", "x" * 100 + "\ny", "overlapping alternatives"),
    (r"(.*a){12}$", "a" * 300 + "!", "counted repetition"),
    (r"(.*,){12}x", "," * 300, "counted repetition"),
    (r"(.*a){2}$", "a" * 1500 + "!", "counted repetition"),
]

CAUTIOUS = [r"(\w|\d)+!", r"(a|ab)+c", r"((ab)*c)+", r"(a?)+$", r"(\d{1,3}\.?)+$", r"(\S+\s*)+$"]

SAFE = [  # (pattern, adversarial input)
    (r"\bviagra\b", "viagr" * 40),
    (r"(ab)+c", "ab" * 100),
    (r"(?>a+)+$", "a" * 200 + "!"),                # atomic: the inner repeat never gives back
    (r"(a++)+$", "a" * 200 + "!"),                 # possessive
    (r"[(a+)+]", "b" * 200),                       # a class, not groups
    (r"\(a+\)+", "(" + "a" * 200),
    (r"(?i)(free|cash)\s+money", "free " * 40),
    (r"(foo|bar)*$", "foo" * 66 + "!"),
    (r"(ab|ac)*$", "ab" * 100 + "!"),              # branches share a first character, never a whole match
    (r"a{2}(b|c)?", "a" * 200),
    (r"(?:viagra){e<=1}", "viaxxa" * 33),          # a fuzzy constraint, not a repeat
    (r"(?P<x>a+)b", "a" * 200),
    (r"\S\s{6,}[A-Za-z0-9]{2,}\s*$", "x" + " " * 200 + "ab !"),
    (r"(\d+\.){3}\d+$", "1." * 100),               # each iteration ends at its dot
    (r"(\w+\s+){3}$", "ab " * 66 + "!"),
    (r"(?>.*a){12}$", "a" * 200 + "!"),
    (r"(?:a|a?)++$", "a" * 200 + "!"),
    (r"(-[a-z]{2,4})?\n", "-ab" * 66),             # at most one iteration
    (r"(\p{L}|\d)+$", "a1" * 100 + "!"),           # letters and digits do not overlap
    (r"(?x) (?: foo | bar ) + \n", "foo" * 66),   # verbose: the spaces are not part of the pattern
]


@pytest.mark.parametrize("pattern,text,reason", DANGEROUS, ids=[p for p, _, _ in DANGEROUS])
def test_dangerous_patterns_are_flagged_and_slow(pattern, text, reason):
    assert any(r.startswith(reason) for r in risky_patterns(pattern)), risky_patterns(pattern)
    with pytest.raises(TimeoutError):
        regex.search(pattern, text, timeout=LIMIT_S)


@pytest.mark.parametrize("pattern", CAUTIOUS)
def test_cautious_patterns_are_flagged(pattern):
    assert risky_patterns(pattern)


@pytest.mark.parametrize("pattern,text", SAFE, ids=[p for p, _ in SAFE])
def test_safe_patterns_pass_and_are_fast(pattern, text):
    assert risky_patterns(pattern) == []
    regex.search(pattern, text, timeout=LIMIT_S)  # raises TimeoutError if not


@pytest.mark.parametrize("pattern,flags,risky", [
    (r"([a-z]|K)+$", [], False),
    (r"([a-z]|K)+$", ["ignorecase"], True),        # k and K overlap once case is ignored
    (r"(?i)([a-z]|K)+$", [], True),
    (r"( a + ) +", ["verbose"], True),             # verbose: `a +` is `a+`
    (r"( a b ) +", ["verbose"], False),
])
def test_flags_change_what_overlaps(pattern, flags, risky):
    assert bool(risky_patterns(pattern, flags)) is risky


def test_count_of_one_and_possessive_counts_are_not_repeats():
    assert risky_patterns(r"(.*a){1}$") == []
    assert risky_patterns(r"(.*a){12}+$") == []
    assert risky_patterns(r"(.*a)?$") == []


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="a.()[]{}|*+?^$\\,:<=>!#-1w dPxEe", max_size=30))
def test_any_text_is_analysed_without_raising(pattern):
    assert isinstance(risky_patterns(pattern), list)
    assert isinstance(risky_patterns(pattern, ["verbose", "ignorecase"]), list)
