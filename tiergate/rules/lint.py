"""``tiergate rules lint``: every problem of a rule set at once, one small class per check.

Each check reads a :class:`~tiergate.rules.loader.RuleSource` and yields
:class:`~tiergate.rules.loader.Problem`\\ s printed as ``file:line:column: rule-id: message (what to do)``.
Errors fail lint and block a reload; warnings are printed only.

>>> from tiergate.rules.loader import load_text
>>> [p.check for p in lint(load_text("rules:\\n  - {id: a, description: d, when: {regex: '('}, then: {label: x}}\\n"))
...  if p.severity == "error"]
['regex']
"""

from __future__ import annotations

from collections.abc import Iterator

import regex

from tiergate.rules import schema as s
from tiergate.rules.backtracking import risky_patterns
from tiergate.rules.conditions import FLAG_BITS, compile_regex, iter_regexes
from tiergate.rules.loader import Problem, RuleEntry, RuleSource


class Check:
    """One lint check. ``name`` tags its problems; ``run`` yields every problem it finds."""

    name = "check"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        raise NotImplementedError

    def problem(self, entry: RuleEntry, path: tuple, message: str, hint: str, severity: str = "error") -> Problem:
        line, col = entry.where(*path)
        return Problem(entry.file, line, col, entry.id, message, hint, check=self.name, severity=severity)


class SchemaCheck(Check):
    """YAML syntax, unknown keys, missing keys, wrong types: found by the loader, reported here."""

    name = "schema"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        yield from src.problems


def raw_regexes(node: object, path: tuple = ()) -> Iterator[tuple[tuple, str, list[str]]]:
    """Every regex in a rule's raw ``when`` that failed the schema elsewhere, so its patterns still get checked."""
    if isinstance(node, dict):
        flags = [f for f in node.get("flags", []) if f in FLAG_BITS] if isinstance(node.get("flags"), list) else []
        if isinstance(node.get("regex"), str):
            yield (*path, "regex"), node["regex"], flags
        feat = node.get("feature")
        if isinstance(feat, dict) and isinstance(feat.get("pattern"), str):
            yield (*path, "feature", "pattern"), feat["pattern"], flags
        for key in ("all", "any"):
            if isinstance(node.get(key), list):
                for i, child in enumerate(node[key]):
                    yield from raw_regexes(child, (*path, key, i))
        if "not" in node:
            yield from raw_regexes(node["not"], (*path, "not"))


class RegexCompiles(Check):
    name = "regex"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        for e in src.entries:
            if e.rule is not None:
                found = iter_regexes(e.rule.when, ("when",))
            elif isinstance(e.raw, dict):
                found = raw_regexes(e.raw.get("when"), ("when",))
            else:
                continue
            for path, pattern, flags in found:
                try:
                    compile_regex(pattern, flags)
                except regex.error as err:
                    yield self.problem(e, path, f"invalid regex {pattern!r}: {err}",
                                       "fix the pattern (regex package syntax); escape literal ( [ { with \\")


class DuplicateIds(Check):
    name = "duplicate-id"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        first: dict[str, RuleEntry] = {}
        for e in src.entries:
            rid = e.id
            if rid.startswith("rules["):
                continue
            if rid in first:
                f = first[rid]
                yield self.problem(e, ("id",), f"duplicate id '{rid}' (first used at {f.file}:{f.where('id')[0]})",
                                   "ids must be unique across the whole set: rename one of them")
            else:
                first[rid] = e


class ModeConsistency(Check):
    """``score`` belongs to scoring mode, and every scored label needs a threshold."""

    name = "mode"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        scored: set[str] = set()
        for e in src.entries:
            if e.rule is None or e.rule.then.kind != "score":
                continue
            label = e.rule.then.label or ""
            scored.add(label)
            if src.mode != "scoring":
                yield self.problem(e, ("then", "score"), "'score' has no effect in first-match mode",
                                   "set `mode: scoring` at the top of the file, or use label + confidence")
            elif label not in src.threshold:
                yield self.problem(e, ("then", "label"), f"no threshold for scored label '{label}'",
                                   f"add `threshold: {{{label}: N}}` at the top of the file")
        if src.mode == "scoring":
            for label in sorted(set(src.threshold) - scored):
                yield Problem(src.origin, 1, 1, "-", f"threshold for '{label}' but no rule scores it",
                              "remove the threshold or add rules with `then: {label: ..., score: N}`",
                              check=self.name, severity="warning")


def implies(b: object, a: object) -> bool:
    """True when condition ``b`` matching guarantees ``a`` matches (sound, far from complete)."""
    if b == a:
        return True
    if isinstance(a, s.AnyCond):
        if any(implies(b, x) for x in a.any):
            return True
    if isinstance(b, s.AllCond):
        if any(implies(x, a) for x in b.all):
            return True
    if isinstance(a, s.AllCond):
        return all(implies(b, x) for x in a.all)
    if isinstance(b, s.AnyCond):
        return all(implies(x, a) for x in b.any)
    for cls, attr in ((s.KeywordsCond, "keywords"), (s.PhrasesCond, "phrases")):
        if isinstance(a, cls) and isinstance(b, cls) and a.field == b.field and a.min_count == 1:
            words_a = {w.lower() for w in getattr(a, attr)}
            if b.min_count == 1 and {w.lower() for w in getattr(b, attr)} <= words_a:
                return True
    return False


class Unreachable(Check):
    """A rule that can never act because a rule tried before it matches everything it matches."""

    name = "unreachable"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        acting = [e for e in src.entries if e.rule is not None and e.rule.enabled and not e.rule.shadow]
        order = sorted(range(len(acting)), key=lambda i: (-acting[i].rule.priority, i))  # type: ignore[union-attr]
        tried: list[RuleEntry] = []
        for i in order:
            e = acting[i]
            assert e.rule is not None
            for prev in tried:
                assert prev.rule is not None
                if prev.rule.then.kind == "score":
                    continue  # score rules never stop evaluation
                if implies(e.rule.when, prev.rule.when):
                    yield self.problem(e, ("when",),
                                       f"never acts: '{prev.id}' ({prev.file}:{prev.where()[0]}, priority "
                                       f"{prev.rule.priority}) is tried first and matches everything this matches",
                                       f"give it a priority above {prev.rule.priority}, narrow '{prev.id}', "
                                       "or delete it")
                    break
            tried.append(e)


class CatastrophicBacktracking(Check):
    name = "backtracking"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        for e in src.entries:
            if e.rule is None:
                continue
            for path, pattern, flags in iter_regexes(e.rule.when, ("when",)):
                for reason in risky_patterns(pattern, flags):
                    yield self.problem(e, path, f"regex {pattern!r} risks catastrophic backtracking: {reason}",
                                       "remove the nesting or make the branches exclusive, or make the repeat "
                                       "possessive (a++, (?:...)++) or atomic ((?>...))")


class HasExamples(Check):
    """Every rule should carry examples that must and must not match (they are its tests)."""

    name = "examples"

    def run(self, src: RuleSource) -> Iterator[Problem]:
        for e in src.entries:
            if e.rule is None:
                continue
            missing = [k for k in ("match", "no_match") if not getattr(e.rule.examples, k)]
            if missing:
                yield self.problem(e, ("id",), f"no examples.{' or examples.'.join(missing)}",
                                   "add texts the rule must and must not match; `tiergate rules test` runs them",
                                   severity="warning")


CHECKS: tuple[Check, ...] = (SchemaCheck(), RegexCompiles(), DuplicateIds(), ModeConsistency(), Unreachable(),
                             CatastrophicBacktracking(), HasExamples())


def lint(src: RuleSource, checks: tuple[Check, ...] = CHECKS) -> list[Problem]:
    """Run every check; problems sorted by file and line."""
    out: list[Problem] = []
    for check in checks:
        out.extend(check.run(src))
    return sorted(out, key=lambda p: (p.file, p.line, p.column, p.check))


def errors(src: RuleSource) -> list[Problem]:
    return [p for p in lint(src) if p.severity == "error"]
