"""Compiled conditions: each schema condition becomes a small matcher object with ``match`` (the hot path) and
``explain`` (which sub-condition matched, and where).

Matchers read fields through a per-item :class:`Context` that caps every field at ``max_chars``, caches field
values, keyword scans and features, and holds the item's deadline: every regex evaluation gets what is left of
it (see :mod:`tiergate.rules.budget`), so the budget holds for all of the item's regexes together. A regex that
runs past the deadline, or starts after it, counts as *no match* and is recorded; nothing raises out of here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import ahocorasick
import regex

from tiergate.data.items import Item
from tiergate.rules import schema as s
from tiergate.rules.budget import CPU_RATE

FLAG_BITS = {"ignorecase": regex.IGNORECASE, "multiline": regex.MULTILINE, "dotall": regex.DOTALL,
             "verbose": regex.VERBOSE, "ascii": regex.ASCII, "bestmatch": regex.BESTMATCH,
             "enhancematch": regex.ENHANCEMATCH}
_URL = regex.compile(r"(?i)\b(?:https?://|www\.)")
_WS = regex.compile(r"\s+")


def compile_regex(pattern: str, flags: Iterable[str] = ()) -> regex.Pattern:
    """Compile with the ``regex`` package (fuzzy syntax allowed); raises ``regex.error`` when invalid."""
    bits = 0
    for f in flags:
        bits |= FLAG_BITS[f]
    return regex.compile(pattern, bits)


def _lower_same_length(text: str) -> str:
    """Lower-case without changing the length (a few characters such as 'İ' lengthen under str.lower, which
    would shift every span after them); those few keep their case."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


@dataclass(slots=True)
class Evidence:
    """Why a (sub-)condition matched: what, on which field, and the span in that field."""

    condition: str
    field: str
    span: tuple[int, int] | None = None
    matched: str = ""

    def as_dict(self) -> dict:
        return {"condition": self.condition, "field": self.field,
                "span": list(self.span) if self.span else None, "matched": self.matched}


class Context:
    """Per-item state shared by every matcher: capped fields, keyword scan results, features, the deadline of
    the item's regex evaluations (a ``time.perf_counter()`` value) and the rules whose regexes it cut off."""

    __slots__ = ("item", "max_chars", "deadline", "keyword_index", "rule_id", "timeouts",
                 "_fields", "_scans", "_features")

    def __init__(self, item: Item, keyword_index: KeywordIndex, *, max_chars: int, deadline: float):
        self.item = item
        self.max_chars = max_chars
        self.deadline = deadline
        self.keyword_index = keyword_index
        self.rule_id = ""
        self.timeouts: list[str] = []
        self._fields: dict[str, str] = {}
        self._scans: dict[tuple[str, str], dict[int, dict[int, tuple[int, int]]]] = {}
        self._features: dict[tuple[str, str], float] = {}

    def field(self, name: str) -> str:
        value = self._fields.get(name)
        if value is None:
            value = self.item.get(name)
            if len(value) > self.max_chars:
                value = value[: self.max_chars]
            self._fields[name] = value
        return value

    def scan(self, fld: str, kind: str) -> dict[int, dict[int, tuple[int, int]]]:
        key = (fld, kind)
        got = self._scans.get(key)
        if got is None:
            got = self.keyword_index.scan(self.field(fld), fld, kind)
            self._scans[key] = got
        return got

    def search(self, pattern: regex.Pattern, text: str) -> regex.Match | None:
        return self._timed(_search, pattern, text, None)

    def count(self, pattern: regex.Pattern, text: str) -> int:
        return self._timed(_count, pattern, text, 0)

    def _timed(self, run: Callable[[regex.Pattern, str, float], Any], pattern: regex.Pattern, text: str,
               default: Any) -> Any:
        """``run(pattern, text, timeout)`` with what is left of the deadline as its CPU-time timeout;
        ``default`` and a recorded time-out when the deadline passes, before or during the run. The hot path
        reads the clock once; the rest happens only on a time-out."""
        left = self.deadline - perf_counter()
        if left > 0:
            timeout = left * CPU_RATE.value
            try:
                return run(pattern, text, timeout)
            except TimeoutError:
                CPU_RATE.observe(timeout, perf_counter() - (self.deadline - left))
        self.timeouts.append(self.rule_id)
        return default


def _search(pattern: regex.Pattern, text: str, timeout: float) -> regex.Match | None:
    return pattern.search(text, timeout=timeout)


def _count(pattern: regex.Pattern, text: str, timeout: float) -> int:
    return sum(1 for _ in pattern.finditer(text, timeout=timeout))  # the timeout bounds the whole iteration


class KeywordIndex:
    """Every keyword/phrase list of the set, one Aho-Corasick automaton per (field, kind).

    A scan of a field returns, for each keyword condition on it, the indices of its words found on word
    boundaries with the first span of each. Phrases are matched on the text with white-space runs folded to
    one space, so their spans are only approximate; ``explain`` re-finds them with a regex.
    """

    def __init__(self) -> None:
        self._words: dict[tuple[str, str], dict[str, list[tuple[int, int]]]] = {}
        self._automata: dict[tuple[str, str], ahocorasick.Automaton] = {}
        self._n = 0

    def add(self, fld: str, kind: str, words: list[str]) -> int:
        cond_id = self._n
        self._n += 1
        table = self._words.setdefault((fld, kind), {})
        for i, w in enumerate(words):
            key = _lower_same_length(" ".join(w.split()) if kind == "phrases" else w)
            table.setdefault(key, []).append((cond_id, i))
        return cond_id

    def build(self) -> None:
        for key, table in self._words.items():
            a = ahocorasick.Automaton()
            for word, owners in table.items():
                a.add_word(word, (word, tuple(owners)))
            a.make_automaton()
            self._automata[key] = a

    def scan(self, text: str, fld: str, kind: str) -> dict[int, dict[int, tuple[int, int]]]:
        a = self._automata.get((fld, kind))
        found: dict[int, dict[int, tuple[int, int]]] = {}
        if a is None or not text:
            return found
        hay = _lower_same_length(text)
        if kind == "phrases":
            hay = " ".join(hay.split())  # 4x faster than a regex substitution on mail-sized text
        n = len(hay)
        for end, (word, owners) in a.iter(hay):
            start = end - len(word) + 1
            if _is_word(word[0]) and start > 0 and _is_word(hay[start - 1]):
                continue
            if _is_word(word[-1]) and end + 1 < n and _is_word(hay[end + 1]):
                continue
            for cond_id, idx in owners:
                found.setdefault(cond_id, {}).setdefault(idx, (start, end + 1))
        return found


class Matcher:
    """A compiled condition."""

    def match(self, ctx: Context) -> bool:
        raise NotImplementedError

    def explain(self, ctx: Context) -> list[Evidence]:
        """Evidence for a match (empty when the condition does not match)."""
        raise NotImplementedError


class RegexMatcher(Matcher):
    __slots__ = ("pattern", "field", "source")

    def __init__(self, cond: s.RegexCond):
        self.pattern = compile_regex(cond.regex, cond.flags)
        self.field = cond.field
        self.source = cond.regex

    def match(self, ctx: Context) -> bool:
        return ctx.search(self.pattern, ctx.field(self.field)) is not None

    def explain(self, ctx: Context) -> list[Evidence]:
        m = ctx.search(self.pattern, ctx.field(self.field))
        if m is None:
            return []
        return [Evidence(f"regex {self.source!r}", self.field, m.span(), m.group(0)[:200])]


class KeywordsMatcher(Matcher):
    __slots__ = ("field", "kind", "cond_id", "min_count", "words")

    def __init__(self, cond: s.KeywordsCond | s.PhrasesCond, index: KeywordIndex):
        self.kind = "keywords" if isinstance(cond, s.KeywordsCond) else "phrases"
        self.words = list(cond.keywords if isinstance(cond, s.KeywordsCond) else cond.phrases)
        self.field = cond.field
        self.min_count = cond.min_count
        self.cond_id = index.add(self.field, self.kind, self.words)

    def match(self, ctx: Context) -> bool:
        hits = ctx.scan(self.field, self.kind).get(self.cond_id)
        return hits is not None and len(hits) >= self.min_count

    def explain(self, ctx: Context) -> list[Evidence]:
        hits = ctx.scan(self.field, self.kind).get(self.cond_id) or {}
        if len(hits) < self.min_count:
            return []
        text = ctx.field(self.field)
        out = []
        for idx, span in sorted(hits.items()):
            word = self.words[idx]
            if self.kind == "phrases":  # spans were taken on folded white space: find the real one
                pat = r"\s+".join(regex.escape(w) for w in word.split())
                m = regex.search(pat, text, regex.IGNORECASE)
                span = m.span() if m else span
            out.append(Evidence(f"{self.kind[:-1]} {word!r}", self.field, span, text[span[0]:span[1]]))
        return out


def _feature_fn(feat: s.Feature, flags: list[str]) -> Callable[[Context, str], float]:
    name = feat.name
    if name == "length":
        return lambda ctx, t: float(len(t))
    if name == "word_count":
        return lambda ctx, t: float(len(t.split()))
    if name == "line_count":
        return lambda ctx, t: float(t.count("\n") + 1 if t else 0)
    if name == "url_count":
        return lambda ctx, t: float(ctx.count(_URL, t))
    if name == "uppercase_ratio":
        def upper(ctx: Context, t: str) -> float:
            letters = sum(1 for c in t if c.isalpha())
            return sum(1 for c in t if c.isupper()) / letters if letters else 0.0
        return upper
    if name == "nonascii_ratio":
        return lambda ctx, t: (sum(1 for c in t if ord(c) > 127) / len(t)) if t else 0.0
    pattern = compile_regex(feat.pattern or "", flags)
    return lambda ctx, t: float(ctx.count(pattern, t))


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


class FeatureMatcher(Matcher):
    __slots__ = ("field", "fn", "op", "value", "key", "label")

    def __init__(self, cond: s.FeatureCond):
        f = cond.feature
        self.field = cond.field
        self.fn = _feature_fn(f, cond.flags)
        self.op = _OPS[f.op]
        self.value = f.value
        # Features without a pattern are shared across rules through the context cache.
        self.key = f"{f.name}:{f.pattern or ''}:{','.join(cond.flags)}"
        self.label = f"feature {f.name} {f.op} {f.value:g}"

    def compute(self, ctx: Context) -> float:
        key = (self.field, self.key)
        v = ctx._features.get(key)
        if v is None:
            v = self.fn(ctx, ctx.field(self.field))
            ctx._features[key] = v
        return v

    def match(self, ctx: Context) -> bool:
        return self.op(self.compute(ctx), self.value)

    def explain(self, ctx: Context) -> list[Evidence]:
        v = self.compute(ctx)
        return [Evidence(f"{self.label} (is {v:g})", self.field)] if self.op(v, self.value) else []


class AllMatcher(Matcher):
    __slots__ = ("parts",)

    def __init__(self, parts: list[Matcher]):
        self.parts = parts

    def match(self, ctx: Context) -> bool:
        for p in self.parts:
            if not p.match(ctx):
                return False
        return True

    def explain(self, ctx: Context) -> list[Evidence]:
        out: list[Evidence] = []
        for p in self.parts:
            ev = p.explain(ctx)
            if not ev:
                return []
            out.extend(ev)
        return out


class AnyMatcher(Matcher):
    __slots__ = ("parts",)

    def __init__(self, parts: list[Matcher]):
        self.parts = parts

    def match(self, ctx: Context) -> bool:
        for p in self.parts:
            if p.match(ctx):
                return True
        return False

    def explain(self, ctx: Context) -> list[Evidence]:
        out: list[Evidence] = []
        for p in self.parts:
            out.extend(p.explain(ctx))
        return out


class NotMatcher(Matcher):
    __slots__ = ("part", "desc")

    def __init__(self, part: Matcher, desc: str):
        self.part = part
        self.desc = desc

    def match(self, ctx: Context) -> bool:
        return not self.part.match(ctx)

    def explain(self, ctx: Context) -> list[Evidence]:
        return [Evidence(f"not ({self.desc})", "-")] if not self.part.match(ctx) else []


def describe(cond: Any) -> str:
    """A one-line description of a condition, for explanations."""
    if isinstance(cond, s.RegexCond):
        return f"regex {cond.regex!r} on {cond.field}"
    if isinstance(cond, s.KeywordsCond):
        return f"keywords {cond.keywords[:3]}{'...' if len(cond.keywords) > 3 else ''} on {cond.field}"
    if isinstance(cond, s.PhrasesCond):
        return f"phrases {cond.phrases[:3]}{'...' if len(cond.phrases) > 3 else ''} on {cond.field}"
    if isinstance(cond, s.FeatureCond):
        return f"feature {cond.feature.name} {cond.feature.op} {cond.feature.value:g} on {cond.field}"
    if isinstance(cond, s.AllCond):
        return "all(" + ", ".join(describe(c) for c in cond.all) + ")"
    if isinstance(cond, s.AnyCond):
        return "any(" + ", ".join(describe(c) for c in cond.any) + ")"
    if isinstance(cond, s.NotCond):
        return "not " + describe(cond.not_)
    return type(cond).__name__


def compile_condition(cond: Any, index: KeywordIndex) -> Matcher:
    """Build the matcher of a validated condition; raises ``regex.error`` on an invalid pattern."""
    if isinstance(cond, s.RegexCond):
        return RegexMatcher(cond)
    if isinstance(cond, s.KeywordsCond | s.PhrasesCond):
        return KeywordsMatcher(cond, index)
    if isinstance(cond, s.FeatureCond):
        return FeatureMatcher(cond)
    if isinstance(cond, s.AllCond):
        return AllMatcher([compile_condition(c, index) for c in cond.all])
    if isinstance(cond, s.AnyCond):
        return AnyMatcher([compile_condition(c, index) for c in cond.any])
    if isinstance(cond, s.NotCond):
        return NotMatcher(compile_condition(cond.not_, index), describe(cond.not_))
    raise TypeError(f"not a condition: {cond!r}")


def iter_regexes(cond: Any, path: tuple = ()) -> Iterable[tuple[tuple, str, list[str]]]:
    """Every regex of a condition tree with its path inside ``when`` (for lint locations)."""
    if isinstance(cond, s.RegexCond):
        yield (*path, "regex"), cond.regex, list(cond.flags)
    elif isinstance(cond, s.FeatureCond):
        if cond.feature.pattern is not None:
            yield (*path, "feature", "pattern"), cond.feature.pattern, list(cond.flags)
    elif isinstance(cond, s.AllCond):
        for i, c in enumerate(cond.all):
            yield from iter_regexes(c, (*path, "all", i))
    elif isinstance(cond, s.AnyCond):
        for i, c in enumerate(cond.any):
            yield from iter_regexes(c, (*path, "any", i))
    elif isinstance(cond, s.NotCond):
        yield from iter_regexes(cond.not_, (*path, "not"))

