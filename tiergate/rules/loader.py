"""Read rule files (one file, a directory of them, or a YAML string) keeping the line and column of every
node, and validate them against the schema, collecting every problem instead of stopping at the first.

The result is a :class:`RuleSource`: the parsed rules (``None`` for a rule that failed the schema), where
each came from, and the problems so far. :mod:`tiergate.rules.lint` adds the checks that need the whole set.

>>> src = load_text("version: 1\\nrules: []\\n", name="inline.yaml")
>>> src.problems
[]
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tiergate.errors import RuleError
from tiergate.rules.schema import FileHeader, Rule

Path_ = tuple[Any, ...]
RULE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rule set, printed as ``file:line:column: rule-id: message (what to do)``."""

    file: str
    line: int
    column: int
    rule_id: str
    message: str
    hint: str
    check: str = "schema"
    severity: str = "error"  # or "warning": printed, but does not fail lint or block a reload

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}:{self.column}: {self.rule_id}: {tag}{self.message} ({self.hint})"


@dataclass
class RuleEntry:
    """One rule as written: its parsed form (None when it failed the schema) and where it lives."""

    raw: Any
    rule: Rule | None
    file: str
    index: int  # position in its file
    marks: dict[Path_, tuple[int, int]]  # path inside the rule -> (line, column), 1-based

    @property
    def id(self) -> str:
        if self.rule is not None:
            return self.rule.id
        if isinstance(self.raw, dict) and isinstance(self.raw.get("id"), str):
            return self.raw["id"]
        return f"rules[{self.index}]"

    def where(self, *path: Any) -> tuple[int, int]:
        """The location of ``path`` inside the rule, or of its deepest existing prefix."""
        return locate(self.marks, path)


@dataclass
class RuleSource:
    """Everything read from a path or a string: rules in file order, the set-wide settings, problems."""

    origin: str
    entries: list[RuleEntry] = field(default_factory=list)
    mode: str = "first-match"
    threshold: dict[str, float] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # file name -> content, for the version hash

    @property
    def rules(self) -> list[Rule]:
        return [e.rule for e in self.entries if e.rule is not None]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def version(self) -> str:
        """Content hash of the set. One file: its text alone, so an upload and the same text read back from
        the rules file are one version. Several: each file's name and text, in name order."""
        h = hashlib.sha256()
        if len(self.texts) == 1:
            h.update(next(iter(self.texts.values())).encode())
        else:
            for name in sorted(self.texts):
                h.update(Path(name).name.encode() + b"\0" + self.texts[name].encode() + b"\0")
        return h.hexdigest()[:16]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise RuleError(f"{self.origin}: {len(self.errors)} problem(s) in the rule set",
                            [str(p) for p in self.errors])


def locate(marks: dict[Path_, tuple[int, int]], path: Path_) -> tuple[int, int]:
    """Walk ``path`` as deep as ``marks`` knows it; components that are not in the YAML (pydantic adds the
    tag of a tagged union to its error locations) are skipped."""
    best = marks.get((), (1, 1))
    cur: Path_ = ()
    for part in path:
        nxt = (*cur, part)
        if nxt in marks:
            cur = nxt
            best = marks[nxt]
    return best


# ------------------------------------------------------------------------------------------- YAML + marks
def _compose(text: str, name: str) -> tuple[Any, dict[Path_, tuple[int, int]], list[Problem]]:
    """Parse YAML into plain data plus a map from each node's path to its (line, column)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): (1, 1)}, []
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, {}, [Problem(name, line, col, "-", f"not valid YAML: {e.problem or e}",
                                  "fix the YAML syntax at this position", check="yaml")]
    except yaml.YAMLError as e:
        return None, {}, [Problem(name, 1, 1, "-", f"not valid YAML: {e}", "fix the YAML syntax", check="yaml")]
    finally:
        loader.dispose()
    marks: dict[Path_, tuple[int, int]] = {}
    problems: list[Problem] = []

    def walk(n: yaml.Node, path: Path_) -> None:
        marks[path] = (n.start_mark.line + 1, n.start_mark.column + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                if key in seen:
                    problems.append(Problem(name, k.start_mark.line + 1, k.start_mark.column + 1, "-",
                                            f"key '{key}' appears twice in one mapping",
                                            "keep one; YAML would silently use the last", check="yaml"))
                seen.add(key)
                walk(v, (*path, key))
                # The key's own position is the better place to point at for "unknown key" errors.
                marks[(*path, key)] = (k.start_mark.line + 1, k.start_mark.column + 1)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    walk(node, ())
    return data, marks, problems


# ----------------------------------------------------------------------------------- schema -> problems
def _hint(err: dict, valid_keys: list[str]) -> tuple[str, str]:
    kind = err["type"]
    loc = [p for p in err["loc"] if isinstance(p, str)]
    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, valid_keys, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "remove it; `tiergate rules schema` lists the keys"
        return f"unknown key '{key}'", hint
    if kind == "missing":
        return f"missing required key '{key}'", "add it"
    if kind == "string_pattern_mismatch" and key == "id":
        return f"id {err.get('input')!r} is not kebab-case", "use lower-case letters, digits and single dashes"
    if kind == "string_pattern_mismatch" and key == "field":
        return (f"unknown field {err.get('input')!r}",
                "use text, subject, from, to, body, headers, header:NAME or meta:KEY")
    if kind == "literal_error":
        return f"'{key}': {err['msg']}", "use one of the listed values"
    if kind in ("string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type"):
        return (f"'{key}': {err['msg'].lower()} (got {err.get('input')!r})",
                "quote strings: YAML reads yes/no/on/off as booleans and bare digits as numbers")
    if kind == "condition_kind":
        return err["msg"], "write one condition per list entry; combine with all/any/not"
    msg = err["msg"].removeprefix("Value error, ")
    return (f"'{key}': {msg}" if key else msg), "see `tiergate rules schema` or docs/rules.md"


def _known_keys() -> list[str]:
    """Every key the language knows, for "did you mean" suggestions."""
    from tiergate.rules import schema as s
    pool = {"all", "any", "not"}
    for cls in (s.RuleFile, s.Rule, s.Action, s.Examples, s.RegexCond, s.KeywordsCond, s.PhrasesCond,
                s.FeatureCond, s.Feature):
        pool |= set(cls.model_fields)
    return sorted(pool - {"not_"})


def _schema_problems(exc: ValidationError, name: str, rule_id: str, marks: dict, prefix: Path_) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        msg, hint = _hint(err, _known_keys())
        line, col = locate(marks, (*prefix, *err["loc"]))
        out.append(Problem(name, line, col, rule_id, msg, hint, check="schema"))
    return out


# --------------------------------------------------------------------------------------------- entry points
def _add_document(src: RuleSource, text: str, name: str, first: bool) -> None:
    src.texts[name] = text
    data, marks, problems = _compose(text, name)
    src.problems.extend(problems)
    if data is None:
        if not problems:
            src.problems.append(Problem(name, 1, 1, "-", "the file is empty",
                                        "write `version: 1` and a `rules:` list", check="schema"))
        return
    if not isinstance(data, dict):
        src.problems.append(Problem(name, 1, 1, "-", "a rule file must be a mapping",
                                    "start with `version: 1` and a `rules:` list", check="schema"))
        return
    try:
        header = FileHeader.model_validate(data)
    except ValidationError as e:
        src.problems.extend(_schema_problems(e, name, "-", marks, ()))
        raw_rules = data.get("rules") if isinstance(data.get("rules"), list) else []
        header = None
    else:
        raw_rules = header.rules
        if first:
            src.mode, src.threshold = header.mode, dict(header.threshold)
        elif header.mode != src.mode or dict(header.threshold) != src.threshold:
            line, col = locate(marks, ("mode",))
            src.problems.append(Problem(name, line, col, "-",
                                        f"mode/threshold ({header.mode}, {header.threshold}) differ from the "
                                        f"first file's ({src.mode}, {src.threshold})",
                                        "every file of a rules directory must use the same mode and threshold",
                                        check="schema"))
    for i, raw in enumerate(raw_rules):
        rule_marks = {p[2:]: m for p, m in marks.items() if len(p) >= 2 and p[0] == "rules" and p[1] == i}
        rule_id = raw["id"] if isinstance(raw, dict) and isinstance(raw.get("id"), str) else f"rules[{i}]"
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as e:
            src.problems.extend(_schema_problems(e, name, rule_id, rule_marks, ()))
            rule = None
        src.entries.append(RuleEntry(raw=raw, rule=rule, file=name, index=i, marks=rule_marks))


def load_text(text: str, name: str = "<upload>.yaml") -> RuleSource:
    """Parse one YAML document given as a string."""
    src = RuleSource(origin=name)
    _add_document(src, text, name, first=True)
    return src


def rule_files(path: Path) -> list[Path]:
    """The rule files of ``path``: the file itself, or every .yaml/.yml file of a directory (sorted), hidden
    files and folders excepted (editors keep their temporary copies there)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [path]


def load_path(path: str | Path) -> RuleSource:
    """Parse a rule file or every rule file of a directory. Unreadable paths become problems too."""
    path = Path(path)
    src = RuleSource(origin=str(path))
    if not path.exists():
        src.problems.append(Problem(str(path), 1, 1, "-", "no such file or directory",
                                    "give the path of a .yaml rule file or a directory of them", check="io"))
        return src
    files = rule_files(path)
    if not files:
        src.problems.append(Problem(str(path), 1, 1, "-", "the directory holds no .yaml/.yml files",
                                    "add a rule file", check="io"))
    for i, f in enumerate(files):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            src.problems.append(Problem(str(f), 1, 1, "-", f"cannot read: {e}", "check the file", check="io"))
            continue
        _add_document(src, text, str(f), first=(i == 0))
    return src
