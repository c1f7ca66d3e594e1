"""A static check for regexes prone to catastrophic backtracking.

It parses just enough of the pattern syntax to find the shapes that make a backtracking engine try the same
text in very many ways. For every repeated group ``(B)*``, ``(B)+``, ``(B){n,}``, ``(B){n}``:

* **nested quantifiers**: an unbounded repeat (``*``, ``+``, ``{n,}``, or a count above 16) over a body that
  holds a repeat itself, as in ``(a+)+`` or ``(\\w+\\s?)*``; or over a body whose iterations can split the same
  text in more than one way (a variable repeat inside it can stop where the next part, or the next iteration,
  could start), as in ``(a?)+`` or ``(\\d{1,3}\\.?)+``;
* **counted repetition**: a count of 2 to 16 over a body whose iterations can split the same text through an
  unbounded repeat, as in ``(.*a){12}``: each iteration can end at almost any place, so the work grows with
  the text length to the power of the count (``(.*a){2}$`` already needs 0.1 s on 400 characters). The same
  shape written out without a group (``.*a.*a$``) is not found;
* **overlapping alternatives**: an unbounded repeat over an alternation (anywhere in its body) two of whose
  branches can start the same text, as in ``(a|ab)*``, ``(?:a|a?)+`` or ``(\\w|\\d)+``.

Which characters a part can match is decided by compiling it alone with the ``regex`` package, with the rule's
flags, and trying it on a sample alphabet (ASCII, a few non-ASCII letters, digits and spaces, and every
character of the pattern), so ``\\w`` and ``\\d`` overlap and ``[a-z]`` and ``\\.`` do not. Atomic groups
``(?>...)`` and possessive repeats (``*+``, ``++``, ``{n}+``) cannot backtrack into themselves and are not
reported. The check is conservative: a reported pattern may be harmless on real text (the ``regex`` package's
repeat guards turn some exponential cases polynomial), and the engine's time budget still guards the ones it
misses.

>>> risky_patterns(r"(a+)+$")[0].split(":")[0]
'nested quantifiers'
>>> risky_patterns(r"(.*a){12}$")[0].split(":")[0]
'counted repetition'
>>> risky_patterns(r"\\bviagra\\b")
[]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import regex

UNBOUNDED = None
STAR_COUNT = 16          # a repeat allowed more iterations than this counts as unbounded
MIN_COUNTED_REPEATS = 2  # an ambiguous counted repeat multiplies the work by the text length per iteration

NESTED = ("nested quantifiers: a repeated group holds a repeated part, so the engine can split the same text in "
          "exponentially many ways")
COUNTED = ("counted repetition: each of the {n} iterations of a group holds a repeat that can stop where the next "
           "part starts, so the work grows with the text length to the power {n}")
OVERLAP = "overlapping alternatives under a repeat: several branches can match the same text"

_FLAG_BITS = {"ignorecase": regex.IGNORECASE, "dotall": regex.DOTALL, "ascii": regex.ASCII}
_INLINE_BITS = {"i": regex.IGNORECASE, "s": regex.DOTALL, "a": regex.ASCII, "f": regex.FULLCASE}
_ZERO_WIDTH = {"^", "$", "\\b", "\\B", "\\A", "\\Z", "\\z", "\\G", "\\m", "\\M", "\\K"}
# Escapes with a braced or fixed-length argument: \p{L}, \N{...}, \x{263a}, \xff, \u263a, \U0001f600
_ESCAPE_ARG = {"p": "{", "P": "{", "N": "{", "x": 2, "u": 4, "U": 8}
_SAMPLE = "".join(map(chr, range(128))) + "\u00a0\u00e9\u00df\u0130\u017f\u212a\u0663\u2028\u4e2d\U0001f600"


@dataclass(eq=False)
class Node:
    kind: str  # "atom", "group", "alt"
    text: str = ""
    children: list[Node] = field(default_factory=list)  # group: one "alt" child
    branches: list[list[Node]] = field(default_factory=list)  # alt: one sequence per branch
    quant: tuple[int, int | None] | None = None
    possessive: bool = False
    atomic: bool = False      # (?>...); lookarounds too: the engine does not backtrack into them
    zero_width: bool = False  # anchors, \b, lookarounds
    wide: bool = False        # backreferences, \X, named lists: any text

    @property
    def body(self) -> Node:
        return self.children[0]

    @property
    def repeats(self) -> bool:
        """Allowed two iterations or more, and free to give them back."""
        return (self.quant is not None and (self.quant[1] is UNBOUNDED or self.quant[1] >= 2)
                and not self.possessive and not self.atomic)

    @property
    def star(self) -> bool:
        return self.repeats and (self.quant[1] is UNBOUNDED or self.quant[1] > STAR_COUNT)  # type: ignore[index]

    @property
    def variable(self) -> bool:
        """A repeat that can stop after a varying number of iterations, and backtrack to do so."""
        return self.quant is not None and self.quant[0] != self.quant[1] and not self.possessive

    @property
    def fixed(self) -> bool:
        """Exactly one character."""
        return (self.kind == "atom" and not self.zero_width and not self.wide
                and self.quant in (None, (1, 1)))


class _Parser:
    def __init__(self, pattern: str, verbose: bool):
        self.p = pattern
        self.i = 0
        self.verbose = verbose
        self.inline_flags = ""

    def parse(self) -> Node:
        return self._alt()

    def _alt(self) -> Node:
        branches: list[list[Node]] = [[]]
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == ")":
                break
            if c == "|":
                self.i += 1
                branches.append([])
                continue
            if self.verbose and self._skip_space():
                continue
            atom = self._atom()
            if atom is not None:
                self._quantifier(atom)
                branches[-1].append(atom)
        return Node("alt", branches=branches)

    def _skip_space(self) -> bool:
        """Verbose mode: white space and # comments outside classes are not part of the pattern."""
        p, i = self.p, self.i
        if p[i].isspace():
            self.i = i + 1
            return True
        if p[i] == "#":
            end = p.find("\n", i)
            self.i = len(p) if end < 0 else end + 1
            return True
        return False

    def _escape(self) -> Node:
        p, i = self.p, self.i
        c = p[i + 1] if i + 1 < len(p) else ""
        end = i + 2
        arg = _ESCAPE_ARG.get(c)
        if arg == "{" or (c == "x" and p.startswith("{", end)):
            close = p.find("}", end)
            end = len(p) if close < 0 else close + 1
        elif isinstance(arg, int):
            end += arg
        elif c in "gL" and p.startswith("<", end):  # \g<name> backreference, \L<name> named list
            close = p.find(">", end)
            end = len(p) if close < 0 else close + 1
            self.i = end
            return Node("atom", text=p[i:end], wide=True)
        elif c == "0":
            while end < len(p) and end < i + 4 and p[end] in "01234567":
                end += 1
        elif c.isdigit() or c == "X":  # \1 backreference, \X grapheme
            self.i = end
            return Node("atom", text=p[i:end], wide=True)
        self.i = end
        text = p[i:end]
        return Node("atom", text=text, zero_width=text in _ZERO_WIDTH)

    def _class(self) -> Node:
        p, i = self.p, self.i
        j = i + 1
        if j < len(p) and p[j] == "^":
            j += 1
        if j < len(p) and p[j] == "]":
            j += 1
        depth = 1
        while j < len(p) and depth:
            if p[j] == "\\":
                j += 2
                continue
            if p[j] == "[":
                depth += 1
            elif p[j] == "]":
                depth -= 1
            j += 1
        self.i = j
        return Node("atom", text=p[i:j])

    def _atom(self) -> Node | None:
        p, i = self.p, self.i
        c = p[i]
        if c == "\\":
            return self._escape()
        if c == "[":
            return self._class()
        if c == "(":
            return self._group()
        self.i = i + 1
        return Node("atom", text=c, zero_width=c in _ZERO_WIDTH)

    def _group(self) -> Node | None:
        p = self.p
        self.i += 1
        atomic = lookaround = False
        if p.startswith("?", self.i):
            rest = p[self.i:]
            if rest.startswith("?>"):
                atomic = True
                self.i += 2
            elif rest.startswith(("?=", "?!")):
                lookaround = True
                self.i += 2
            elif rest.startswith(("?<=", "?<!")):
                lookaround = True
                self.i += 3
            elif rest.startswith(("?:", "?|")):
                self.i += 2
            elif rest.startswith("?(") and p.find(")", self.i) > 0:  # a conditional: (?(1)yes|no)
                self.i = p.find(")", self.i) + 1
            elif rest.startswith(("?P=", "?P>", "?&", "?R")) or rest[1:2].isdigit() or rest[1:3] in {"+1", "-1"}:
                end = p.find(")", self.i)  # a backreference or a recursion: any text
                self.i = len(p) if end < 0 else end + 1
                return Node("atom", text=p[self.i - 1:self.i], wide=True)
            elif rest.startswith(("?P<", "?<", "?'")):
                close = ">" if rest[1] != "'" else "'"
                self.i = p.find(close, self.i + 2) + 1 or len(p)
            elif rest.startswith("?#"):
                self.i = p.find(")", self.i) + 1 or len(p)
                return None
            else:  # inline flags: (?i) or (?i:...), taken as applying to the whole pattern
                j = self.i + 1
                while j < len(p) and p[j] not in ":)":
                    j += 1
                self.inline_flags += p[self.i + 1:j]
                if j < len(p) and p[j] == ")":
                    self.i = j + 1
                    return None
                self.i = j + 1
        inner = self._alt()
        if self.i < len(p) and p[self.i] == ")":
            self.i += 1
        return Node("group", children=[inner], atomic=atomic or lookaround, zero_width=lookaround)

    def _quantifier(self, node: Node) -> None:
        p = self.p
        while self.i < len(p):
            if self.verbose and self._skip_space():  # verbose mode allows `a +`
                continue
            c = p[self.i]
            q: tuple[int, int | None] | None = None
            if c == "*":
                q, self.i = (0, UNBOUNDED), self.i + 1
            elif c == "+":
                q, self.i = (1, UNBOUNDED), self.i + 1
            elif c == "?":
                q, self.i = (0, 1), self.i + 1
            elif c == "{":
                end = p.find("}", self.i)
                body = p[self.i + 1:end] if end > 0 else ""
                lo, comma, hi = (part.strip() for part in body.partition(","))
                if end > 0 and any(op in body for op in "<=>") and not body[:1].isdigit():
                    self.i = end + 1  # a fuzzy constraint such as {e<=1}: not a repeat
                    continue
                if end < 0 or not (lo.isdigit() or (comma and not lo)) or (hi and not hi.isdigit()):
                    return  # a literal brace
                low = int(lo) if lo else 0
                q = (low, (int(hi) if hi else UNBOUNDED) if comma else low)
                self.i = end + 1
            if q is None:
                return
            if self.i < len(p) and p[self.i] in "?+":
                node.possessive = p[self.i] == "+"
                self.i += 1
            if node.quant is None:
                node.quant = q
            else:  # a quantified quantifier, e.g. a{2}*: treat as unbounded if either is
                node.quant = (0, UNBOUNDED) if UNBOUNDED in (q[1], node.quant[1]) else q


@lru_cache(maxsize=4096)
def _chars_of(atom: str, bits: int, alphabet: str) -> frozenset[str]:
    """The characters of ``alphabet`` that the one-character pattern ``atom`` matches under ``bits``."""
    try:
        rx = regex.compile(atom, bits)
    except regex.error:
        return frozenset(alphabet)  # an atom we split wrongly: assume it matches anything
    return frozenset(c for c in alphabet if rx.fullmatch(c))


class _Analysis:
    """First characters and nullability of parts of one parsed pattern, under its flags."""

    def __init__(self, pattern: str, bits: int):
        self.bits = bits
        self.alphabet = "".join(sorted(set(_SAMPLE) | set(pattern)))
        self.any = frozenset(self.alphabet)
        self._first: dict[Node, frozenset[str]] = {}
        self._nullable: dict[Node, bool] = {}

    def chars(self, n: Node) -> frozenset[str]:
        if n.zero_width:
            return frozenset()
        if n.wide:
            return self.any
        return _chars_of(n.text, self.bits, self.alphabet)

    def nullable(self, n: Node) -> bool:
        got = self._nullable.get(n)
        if got is None:
            got = n.zero_width or (n.quant is not None and n.quant[0] == 0) or (
                n.kind == "group" and any(self.nullable_seq(b) for b in n.body.branches))
            self._nullable[n] = got
        return got

    def nullable_seq(self, seq: list[Node]) -> bool:
        return all(self.nullable(n) for n in seq)

    def first(self, n: Node) -> frozenset[str]:
        """Characters a match of ``n`` can start with (its quantifier aside)."""
        got = self._first.get(n)
        if got is None:
            if n.kind == "group" and not n.zero_width:
                got = frozenset().union(*(self.first_seq(b) for b in n.body.branches))
            else:
                got = self.chars(n)
            self._first[n] = got
        return got

    def first_seq(self, seq: list[Node]) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for n in seq:
            out |= self.first(n)
            if not self.nullable(n):
                break
        return out

    # ------------------------------------------------------------------------------------- ambiguity
    def ambiguous_stops(self, seq: list[Node], follow: frozenset[str], out: list[Node]) -> None:
        """Collect the variable repeats of ``seq`` that can stop where what follows them could start: the
        same text then splits between the repeat and its follower in more than one way."""
        for n in reversed(seq):
            self._stops_in(n, follow, out)
            follow = (self.first(n) | follow) if self.nullable(n) else self.first(n)

    def _stops_in(self, n: Node, follow: frozenset[str], out: list[Node]) -> None:
        if n.atomic or n.possessive or n.zero_width:
            return  # the engine never backtracks into it
        if n.variable and self.first(n) & follow:
            out.append(n)
        if n.kind == "group":
            inner = (follow | self.first(n)) if n.repeats else follow  # an iteration may follow an iteration
            for b in n.body.branches:
                self.ambiguous_stops(b, inner, out)

    def has_inner_star(self, alt: Node) -> bool:
        for branch in alt.branches:
            for n in branch:
                if n.atomic or n.possessive:
                    continue
                if n.star or (n.kind == "group" and self.has_inner_star(n.body)):
                    return True
        return False

    def overlapping_alternatives(self, alt: Node) -> bool:
        """Two branches of ``alt``, or of an alternation nested in it, can match the same non-empty text."""
        branches = [[n for n in b if not n.zero_width] for b in alt.branches]
        if len(branches) > 1 and self._some_pair_overlaps(branches):
            return True
        return any(self.overlapping_alternatives(n.body) for b in alt.branches for n in b
                   if n.kind == "group" and not n.atomic and not n.possessive)

    def _some_pair_overlaps(self, branches: list[list[Node]]) -> bool:
        words = [self._literal(b) for b in branches]
        if all(w is not None for w in words):
            # Plain words (a list of a thousand is common): sorted, a word that is a prefix of another sits
            # right before it or before a word it is also a prefix of, so neighbours are enough.
            ordered = sorted(w for w in words if w)  # type: ignore[misc]
            return any(b.startswith(a) for a, b in zip(ordered, ordered[1:], strict=False))
        by_char: dict[str, list[int]] = {}  # only branches sharing a first character can overlap
        for i, b in enumerate(branches):
            for c in self.first_seq(b):
                by_char.setdefault(c, []).append(i)
        pairs = {(i, j) for ids in by_char.values() for k, i in enumerate(ids) for j in ids[k + 1:]}
        return any(self._branches_overlap(branches[i], branches[j]) for i, j in pairs)

    def _literal(self, branch: list[Node]) -> str | None:
        """The branch as the one string it matches (case-folded under ignorecase), or None."""
        out = []
        for n in branch:
            if not n.fixed or not (len(n.text) == 1 and n.text not in ".[" or
                                   len(n.text) == 2 and n.text[0] == "\\" and not n.text[1].isalnum()):
                return None
            out.append(n.text[-1])
        word = "".join(out)
        return word.casefold() if self.bits & (regex.IGNORECASE | regex.FULLCASE) else word

    def _branches_overlap(self, x: list[Node], y: list[Node]) -> bool:
        i = 0
        while i < len(x) and i < len(y) and x[i].fixed and y[i].fixed:
            if not self.chars(x[i]) & self.chars(y[i]):
                return False
            i += 1
        if i == len(x) or i == len(y):
            return i > 0  # one branch is a prefix of the other; an empty branch matches nothing to repeat
        return bool(self.first_seq(x[i:]) & self.first_seq(y[i:]))


def _groups(alt: Node) -> Iterable[Node]:
    for branch in alt.branches:
        for n in branch:
            if n.kind == "group":
                yield n
                yield from _groups(n.body)


def _verbose(pattern: str, flags: Iterable[str]) -> bool:
    m = regex.match(r"\(\?([a-zA-Z]+)\)", pattern)
    return "verbose" in flags or bool(m and "x" in m.group(1))


def risky_patterns(pattern: str, flags: Iterable[str] = ()) -> list[str]:
    """Reasons the pattern may backtrack catastrophically (empty when none is found).

    ``flags`` are the rule's flag names (``ignorecase``, ``dotall``, ``verbose``...): they change which
    characters a part matches, and so what overlaps."""
    flags = list(flags)
    try:
        parser = _Parser(pattern, _verbose(pattern, flags))
        root = parser.parse()
        bits = 0
        for f in flags:
            bits |= _FLAG_BITS.get(f, 0)
        for letter in parser.inline_flags:
            bits |= _INLINE_BITS.get(letter, 0)
        return _reasons(root, _Analysis(pattern, bits))
    except (IndexError, ValueError, RecursionError):  # a pattern this parser cannot follow: the budget guards it
        return []


def _reasons(root: Node, an: _Analysis) -> list[str]:
    found: list[str] = []
    for g in _groups(root):
        if not g.repeats:
            continue
        stops: list[Node] = []
        an.ambiguous_stops([g], frozenset(), stops)
        stops = [s for s in stops if s is not g]
        count = g.quant[1]  # type: ignore[index]
        if g.star and (stops or an.has_inner_star(g.body)):
            found.append(NESTED)
        elif count is not UNBOUNDED and count >= MIN_COUNTED_REPEATS and any(
                s.quant[1] is UNBOUNDED or s.quant[1] > STAR_COUNT for s in stops):  # type: ignore[index]
            found.append(COUNTED.format(n=count))
        if g.star and an.overlapping_alternatives(g.body):
            found.append(OVERLAP)
    return list(dict.fromkeys(found))
