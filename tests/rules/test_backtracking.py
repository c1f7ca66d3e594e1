import pytest

from tiergate.rules.backtracking import risky_patterns


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a*)*b", r"(\w+\s?)*$", r"(?:x|y+)+z", r"((ab)*c)+",
                                     r"(a|a)*b", r"(a|ab)+c", r"(\w|\d)+!", r"(.|x)*y", r"(a{1,}){2,}"])
def test_risky(pattern):
    assert risky_patterns(pattern)


@pytest.mark.parametrize("pattern", [r"\bviagra\b", r"(ab)+c", r"(?>a+)+$", r"(a++)+$", r"[(a+)+]", r"\(a+\)+",
                                     r"(?i)(free|cash)\s+money", r"(foo|bar)*", r"a{2}(b|c)?", r"(?:viagra){e<=1}",
                                     r"(?P<x>a+)b", r"\S\s{6,}[A-Za-z0-9]{2,}\s*$"])
def test_safe(pattern):
    assert risky_patterns(pattern) == []
