"""A static check for regexes prone to catastrophic (exponential) backtracking.

It parses just enough of the pattern syntax to find the two classic shapes:

* nested unbounded quantifiers (star height > 1), as in ``(a+)+`` or ``(\\w+\\s?)*``;
* an unbounded quantifier over alternatives that can match the same text, as in ``(a|ab)*`` or ``(\\w|\\d)+``.

Atomic groups ``(?>...)`` and possessive quantifiers (``*+``, ``++``) cannot backtrack into themselves and are
not reported. The check is conservative: a reported pattern may be harmless on real text, and the engine's
time limit still guards the ones it misses.

>>> risky_patterns(r"(a+)+$")[0].split(":")[0]
'nested quantifiers'
>>> risky_patterns(r"\\bviagra\\b")
[]
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNBOUNDED = None


@dataclass
class Node:
    kind: str  # "atom", "group", "alt"
    text: str = ""
    children: list[Node] = field(default_factory=list)  # group: one "alt" child; alt: one seq per branch
    branches: list[list[Node]] = field(default_factory=list)
    quant: tuple[int, int | None] | None = None
    possessive: bool = False
    atomic: bool = False


class _Parser:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def parse(self) -> Node:
        node = self._alt()
        return node

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
            atom = self._atom()
            if atom is not None:
                self._quantifier(atom)
                branches[-1].append(atom)
        return Node("alt", branches=branches)

    def _atom(self) -> Node | None:
        p, i = self.p, self.i
        c = p[i]
        if c == "\\":
            self.i = i + 2
            return Node("atom", text=p[i:i + 2])
        if c == "[":
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
        if c == "(":
            self.i = i + 1
            atomic = False
            if p.startswith("?", self.i):
                rest = p[self.i:]
                if rest.startswith("?>"):
                    atomic = True
                    self.i += 2
                elif rest.startswith(("?:", "?=", "?!", "?|")):
                    self.i += 2
                elif rest.startswith(("?<=", "?<!")):
                    self.i += 3
                elif rest.startswith(("?P<", "?<")):
                    self.i = p.find(">", self.i) + 1 or len(p)
                elif rest.startswith("?#"):
                    self.i = p.find(")", self.i) + 1 or len(p)
                    return None
                else:  # inline flags: (?i) or (?i:...)
                    j = self.i + 1
                    while j < len(p) and p[j] not in ":)":
                        j += 1
                    if j < len(p) and p[j] == ")":
                        self.i = j + 1
                        return None
                    self.i = j + 1
            inner = self._alt()
            if self.i < len(p) and p[self.i] == ")":
                self.i += 1
            return Node("group", children=[inner], atomic=atomic)
        self.i = i + 1
        return Node("atom", text=c)

    def _quantifier(self, node: Node) -> None:
        p = self.p
        while self.i < len(p):
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
                lo, comma, hi = body.partition(",")
                if end < 0 or not lo.strip().isdigit() or (hi.strip() and not hi.strip().isdigit()):
                    return  # a literal brace, or a fuzzy constraint such as {e<=1}
                q = (int(lo), (int(hi) if hi.strip() else UNBOUNDED) if comma else int(lo))
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


def _is_star(node: Node) -> bool:
    return node.quant is not None and (node.quant[1] is UNBOUNDED or node.quant[1] > 16) and not node.possessive


def _inner_stars(alt: Node) -> bool:
    for branch in alt.branches:
        for n in branch:
            if n.atomic or n.possessive:
                continue
            if _is_star(n):
                return True
            if n.kind == "group" and _inner_stars(n.children[0]):
                return True
    return False


_WIDE = {".", "\\w", "\\W", "\\s", "\\S", "\\d", "\\D", "\\X"}


def _branch_text(branch: list[Node]) -> str | None:
    """The branch as a literal string, or None when it holds groups or quantifiers."""
    out = []
    for n in branch:
        if n.kind != "atom" or n.quant is not None:
            return None
        out.append(n.text)
    return "".join(out)


def _overlap(a: str, b: str) -> bool:
    if a == b or (a and b and (a.startswith(b) or b.startswith(a))):
        return True
    first_a, first_b = a[:2] if a.startswith("\\") else a[:1], b[:2] if b.startswith("\\") else b[:1]
    if "." in (first_a, first_b):
        return True
    wordish = {"\\w", "\\d"}
    if first_a in wordish and (first_b in wordish or first_b.isalnum() or first_b == "_"):
        return True
    return first_b in wordish and (first_a.isalnum() or first_a == "_")


def risky_patterns(pattern: str) -> list[str]:
    """Reasons the pattern may backtrack catastrophically (empty when none is found)."""
    try:
        root = _Parser(pattern).parse()
    except (IndexError, ValueError):
        return []
    found: list[str] = []

    def visit(alt: Node) -> None:
        for branch in alt.branches:
            for n in branch:
                if n.kind != "group":
                    continue
                inner = n.children[0]
                if _is_star(n) and not n.atomic:
                    if _inner_stars(inner):
                        found.append("nested quantifiers: a repeated group holds a repeated part, so the "
                                     "engine can split the same text in exponentially many ways")
                    texts = [_branch_text(b) for b in inner.branches]
                    lits = [t for t in texts if t is not None]
                    if any(_overlap(a, b) for i, a in enumerate(lits) for b in lits[i + 1:]):
                        found.append("overlapping alternatives under a repeat: several branches can match "
                                     "the same text")
                visit(inner)

    visit(root)
    return found
