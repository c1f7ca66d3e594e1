"""The rule language as pydantic models: the single source of truth for what a rule file may say.

Every model forbids unknown keys (STYLE.md convention 6), so a misspelt key is an error with a location rather
than a silently ignored setting. ``tiergate rules schema`` prints :func:`json_schema`.

A file is a :class:`RuleFile`; each entry of ``rules`` is a :class:`Rule` whose ``when`` is one
:data:`Condition` and whose ``then`` is one :class:`Action`::

    version: 1
    mode: first-match
    rules:
      - id: wire-transfer-urgent
        description: Advance-fee wording
        when: {all: [{regex: '\\bwire transfer\\b', field: body}, {keywords: [urgent, "act now"]}]}
        then: {label: spam, confidence: 0.99}
        examples: {match: ["Subject: hi\\n\\nwire transfer now, urgent"], no_match: ["hello"]}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

KEBAB = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# Fields a condition may read; see tiergate.data.items.Item.get.
FIELD = r"^(text|subject|from|to|body|headers|header:[A-Za-z0-9_-]+|meta:[A-Za-z0-9_.-]+)$"
FLAGS = ("ignorecase", "multiline", "dotall", "verbose", "ascii", "bestmatch", "enhancematch")
FEATURES = ("length", "word_count", "line_count", "url_count", "uppercase_ratio", "nonascii_ratio",
            "match_count")
OPS = (">", ">=", "<", "<=", "==", "!=")

FieldName = Annotated[str, Field(pattern=FIELD, description="text (default) | subject | from | to | body | "
                                                           "headers | header:NAME | meta:KEY")]
Flag = Literal["ignorecase", "multiline", "dotall", "verbose", "ascii", "bestmatch", "enhancematch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexCond(_Strict):
    """A regular expression (the ``regex`` package, so fuzzy matching such as ``(?:viagra){e<=1}`` works),
    searched anywhere in the field under the engine's time limit."""

    regex: str = Field(min_length=1)
    field: FieldName = "text"
    flags: list[Flag] = Field(default_factory=list)


class KeywordsCond(_Strict):
    """Any of ``keywords`` (case-insensitive, on word boundaries; at least ``min_count`` distinct ones).

    Every keyword and phrase list on a field compiles into one Aho-Corasick automaton, so long lists cost
    one scan of the field.
    """

    keywords: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    field: FieldName = "text"
    min_count: int = Field(default=1, ge=1, description="how many distinct keywords must occur")


class PhrasesCond(_Strict):
    """Like ``keywords``, but any run of white space in the text matches the single spaces of a phrase."""

    phrases: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    field: FieldName = "text"
    min_count: int = Field(default=1, ge=1, description="how many distinct phrases must occur")


class Feature(_Strict):
    """A number computed from the field, compared with ``value``. ``match_count`` needs ``pattern``."""

    name: Literal["length", "word_count", "line_count", "url_count", "uppercase_ratio", "nonascii_ratio",
                  "match_count"]
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float
    pattern: str | None = Field(default=None, description="the regex whose matches match_count counts")

    @model_validator(mode="after")
    def _pattern_iff_match_count(self) -> Feature:
        if self.name == "match_count" and not self.pattern:
            raise ValueError("feature match_count needs a 'pattern' (the regex whose matches are counted)")
        if self.name != "match_count" and self.pattern is not None:
            raise ValueError(f"feature {self.name} takes no 'pattern' (only match_count does)")
        return self


class FeatureCond(_Strict):
    feature: Feature
    field: FieldName = "text"
    flags: list[Flag] = Field(default_factory=list, description="flags for a match_count pattern")


class AllCond(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyCond(_Strict):
    any: list[Condition] = Field(min_length=1)


class NotCond(_Strict):
    not_: Condition = Field(alias="not")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_COND_KEYS = ("regex", "keywords", "phrases", "feature", "all", "any", "not")


def _condition_kind(value: Any) -> str | None:
    """Pick the condition type from the one key that names it, so errors speak about that type only."""
    if isinstance(value, BaseModel):
        for key, cls in _KINDS.items():
            if isinstance(value, cls):
                return key
        return None
    if isinstance(value, dict):
        present = [k for k in _COND_KEYS if k in value]
        if len(present) == 1:
            return present[0]
    return None


Condition = Annotated[
    Union[  # noqa: UP007 - a tagged union reads better spelt out
        Annotated[RegexCond, Tag("regex")],
        Annotated[KeywordsCond, Tag("keywords")],
        Annotated[PhrasesCond, Tag("phrases")],
        Annotated[FeatureCond, Tag("feature")],
        Annotated[AllCond, Tag("all")],
        Annotated[AnyCond, Tag("any")],
        Annotated[NotCond, Tag("not")],
    ],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs exactly one of the keys regex, keywords, phrases, feature, "
                             "all, any, not",
    ),
]
_KINDS = {"regex": RegexCond, "keywords": KeywordsCond, "phrases": PhrasesCond, "feature": FeatureCond,
          "all": AllCond, "any": AnyCond, "not": NotCond}

AllCond.model_rebuild()
AnyCond.model_rebuild()
NotCond.model_rebuild()


class Action(_Strict):
    """Exactly one of: ``label`` (with ``confidence``), ``escalate`` (a tier name or ``next``),
    ``score`` (with the ``label`` it adds to; scoring mode), ``abstain: true`` (stop; no rule decides)."""

    label: str | None = Field(default=None, min_length=1)
    confidence: float | None = Field(default=None, gt=0.0, le=1.0)
    escalate: str | None = Field(default=None, min_length=1)
    score: float | None = None
    abstain: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        kinds = [k for k, on in (("escalate", self.escalate is not None), ("score", self.score is not None),
                                 ("abstain", bool(self.abstain))) if on]
        if not kinds and self.label is None:
            raise ValueError("'then' needs one of label (+ confidence), escalate, score (+ label) or abstain: true")
        if len(kinds) > 1 or (kinds and kinds[0] in ("escalate", "abstain") and self.label is not None):
            raise ValueError("'then' takes exactly one of label, escalate, score, abstain")
        if self.score is not None and self.label is None:
            raise ValueError("'score' needs the 'label' whose score it adds to")
        if self.confidence is not None and (self.label is None or self.score is not None):
            raise ValueError("'confidence' goes with a deciding 'label' only")
        return self

    @property
    def kind(self) -> str:
        if self.escalate is not None:
            return "escalate"
        if self.abstain:
            return "abstain"
        if self.score is not None:
            return "score"
        return "label"


class Examples(_Strict):
    match: list[str] = Field(default_factory=list, description="texts the rule must match")
    no_match: list[str] = Field(default_factory=list, description="texts the rule must not match")


DEFAULT_CONFIDENCE = 0.99


class Rule(_Strict):
    id: str = Field(pattern=KEBAB, description="stable, unique, kebab-case")
    description: str = Field(min_length=1)
    enabled: bool = True
    priority: int = Field(default=0, description="first-match: the highest priority acts first")
    shadow: bool = Field(default=False, description="evaluate and count hits, never act")
    tags: list[str] = Field(default_factory=list)
    when: Condition
    then: Action
    examples: Examples = Field(default_factory=Examples)

    @property
    def confidence(self) -> float:
        return self.then.confidence if self.then.confidence is not None else DEFAULT_CONFIDENCE


class RuleFile(_Strict):
    """One YAML file. In a directory every file must agree on ``mode`` and ``threshold``."""

    version: Literal[1] = 1
    mode: Literal["first-match", "scoring"] = "first-match"
    threshold: dict[str, float] = Field(default_factory=dict,
                                        description="scoring mode: decide a label once its score reaches this")
    rules: list[Rule] = Field(default_factory=list)


class FileHeader(_Strict):
    """The file's keys other than the rules, validated apart so that one bad rule hides nothing else."""

    version: Literal[1] = 1
    mode: Literal["first-match", "scoring"] = "first-match"
    threshold: dict[str, float] = Field(default_factory=dict)
    rules: list[Any] = Field(default_factory=list)


def json_schema() -> dict:
    """The JSON Schema of a rule file (``tiergate rules schema``)."""
    schema = RuleFile.model_json_schema(by_alias=True)
    schema["$id"] = "https://tiergate.dev/schemas/rules-v1.json"
    schema["title"] = "tiergate rule file"
    return schema
