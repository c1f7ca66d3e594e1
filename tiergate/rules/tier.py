"""The rules tier: a rule set served behind the :class:`~tiergate.tiers.Tier` interface, hot-swappable.

A new set (from its path, or a YAML upload) is loaded, linted, compiled and its examples run *before* it
replaces the served one; the swap is one attribute assignment, so a request sees either the old engine or the
new one, never a mix. A failed reload raises :class:`~tiergate.errors.RuleError` with every problem, keeps the
old set and counts a metric. Reloads, uploads and the file an upload writes are serialised by one lock.

Two wall-clock budgets bound ``predict``: ``item_budget_s`` for all the regex evaluations of one item, and
``batch_budget_s`` for the whole call. Once the call's budget is spent, the items not yet evaluated get "no
decision" (they escalate to the next tier) and ``tiergate_rules_skipped_items_total`` counts them.

>>> tier = RulesTier.from_path(pack_path("spamassassin"))      # doctest: +SKIP
>>> tier.predict([make_item("Subject: hi\\n\\nhello")])[0].label  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import Counter, Gauge

from tiergate.data.items import DEFAULT_MAX_CHARS, Item
from tiergate.errors import RuleError, UnavailableError
from tiergate.rules.engine import DEFAULT_ITEM_BUDGET_S, Decision, Engine, forget_rule_metrics
from tiergate.rules.examples import run_examples
from tiergate.rules.lint import lint
from tiergate.rules.loader import RuleSource, load_path, load_text
from tiergate.tiers import Capabilities, Tier, TierOutput

log = logging.getLogger(__name__)

RELOAD_SOURCES = ("startup", "file", "api", "manual")
RELOAD_ATTEMPTS = Counter("tiergate_rules_reload_attempts_total", "Attempts to load a new rule set", ["source"])
RELOAD_FAILURES = Counter("tiergate_rules_reload_failures_total", "Rule set loads rejected (the old set kept "
                          "serving)", ["source"])
# multiprocess_mode: how `tiergate serve --workers N` merges the workers' values (the default: a pid label each)
RULES_VERSION = Gauge("tiergate_rules_version_info", "The served rule set: 1 for its content hash", ["version"],
                      multiprocess_mode="max")
RULES_LOADED = Gauge("tiergate_rules_loaded", "Rules in the served set by state", ["state"], multiprocess_mode="max")
LAST_RELOAD = Gauge("tiergate_rules_last_reload_success_timestamp_seconds", "When the served set was loaded",
                    multiprocess_mode="max")
ITEMS = Counter("tiergate_rules_items_total", "Items given to the rules tier's predict")
SKIPPED_ITEMS = Counter("tiergate_rules_skipped_items_total", "Items answered 'no decision' without evaluation "
                        "because their predict call's time budget was spent")
for _src in RELOAD_SOURCES:
    RELOAD_ATTEMPTS.labels(source=_src)
    RELOAD_FAILURES.labels(source=_src)
for _state in ("active", "shadow", "disabled"):
    RULES_LOADED.labels(state=_state)

PACKS_DIR = Path(__file__).parent / "packs"
# A 256-item batch of mail takes about 0.2 s through parsing and the spamassassin pack on one free core, so
# 1 s leaves room for a loaded machine and still bounds a batch of pathological items.
DEFAULT_BATCH_BUDGET_S = 1.0


def pack_path(name: str) -> Path:
    """The path of a shipped pack (``spamassassin``, ``debian-packages``)."""
    path = PACKS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PACKS_DIR.glob("*.yaml"))
        raise RuleError(f"no shipped pack named {name!r}: use one of {', '.join(known)}")
    return path


def build_engine(src: RuleSource, *, item_budget_s: float, max_chars: int, shadow: Iterable[str] = (),
                 run_tests: bool = True) -> Engine:
    """Validate ``src`` fully (lint errors, compile, examples) and return its engine, or raise RuleError."""
    problems = [str(p) for p in lint(src) if p.severity == "error"]
    if problems:
        raise RuleError(f"{src.origin}: {len(problems)} problem(s); the rule set was not loaded", problems)
    engine = Engine(src, item_budget_s=item_budget_s, max_chars=max_chars, shadow=shadow)
    if run_tests:
        failures = [str(f) for f in run_examples(engine)]
        if failures:
            raise RuleError(f"{src.origin}: {len(failures)} example(s) fail; the rule set was not loaded",
                            failures)
    return engine


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a temporary file of its own in the same directory (a
    dot-name ending in .tmp, which the watcher and the loader ignore) is written, fsynced, given the old file's
    mode and renamed over it. On any error the temporary file is removed and ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)  # mkstemp creates 0600; keep what the operator set
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a crash only once the directory is on disk
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:  # the new file is in place and will be served: say so, but do not fail the upload
        log.warning("could not fsync %s after saving the rules: %s", path.parent, e)


def output_of(d: Decision) -> TierOutput:
    extras: dict = {}
    if d.contributors:
        extras["rules"] = d.contributors
    if d.shadow_hits:
        extras["shadow_hits"] = d.shadow_hits
    if d.kind == "label":
        return TierOutput(label=d.label, confidence=d.confidence, reason=d.rule_id, extras=extras)
    if d.kind == "escalate":
        return TierOutput(label=None, escalate_to=d.escalate_to, reason=d.rule_id, extras=extras)
    return TierOutput(label=None, reason=d.rule_id if d.kind == "abstain" else "", extras=extras)


class RulesTier(Tier):
    """A YAML rule set as a tier. Build with :meth:`from_path` (or :meth:`from_text`).

    ``item_budget_s`` (default 0.05 s): the wall-clock time all the regex evaluations of one item may take
    together; a regex cut off by it, or started after it, is *no match*. ``batch_budget_s`` (default 1 s): the
    time one :meth:`predict` call may take; items it has not started by then get "no decision". ``max_chars``:
    every field is cut to this length before matching.

    >>> tier = RulesTier.from_path(pack_path("spamassassin"), item_budget_s=0.02, batch_budget_s=0.5)  # doctest: +SKIP
    """

    name = "rules"
    # A rule's confidence is its own, not a probability thresholds are calibrated on; each item is decided
    # alone (one engine snapshot per batch, no state across items), so batches may mix requests. The one
    # exception is the batch budget: items a spent budget never reaches get "no decision", an escalation (a
    # costlier answer, never a different label from the rules).
    capabilities = Capabilities(distribution=False, light=True)

    def __init__(self, engine: Engine, path: Path | None = None, *, item_budget_s: float = DEFAULT_ITEM_BUDGET_S,
                 batch_budget_s: float = DEFAULT_BATCH_BUDGET_S, max_chars: int = DEFAULT_MAX_CHARS):
        self.labels: list[str] = []
        self.path = path
        self.item_budget_s = item_budget_s
        self.batch_budget_s = batch_budget_s
        self.max_chars = max_chars
        self._lock = threading.Lock()  # serialises reloads, uploads and the file they write; predict never takes it
        self._shadow: set[str] = set(engine.shadow_overrides)
        self._engine = engine
        self._publish(engine)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_path(cls, path: str | Path, *, item_budget_s: float = DEFAULT_ITEM_BUDGET_S,
                  batch_budget_s: float = DEFAULT_BATCH_BUDGET_S, max_chars: int = DEFAULT_MAX_CHARS) -> RulesTier:
        """Load, validate and test the rule file or directory at ``path``; RuleError lists every problem."""
        path = Path(path)
        RELOAD_ATTEMPTS.labels(source="startup").inc()
        try:
            engine = build_engine(load_path(path), item_budget_s=item_budget_s, max_chars=max_chars)
        except RuleError:
            RELOAD_FAILURES.labels(source="startup").inc()
            raise
        return cls(engine, path, item_budget_s=item_budget_s, batch_budget_s=batch_budget_s, max_chars=max_chars)

    @classmethod
    def from_text(cls, text: str, *, item_budget_s: float = DEFAULT_ITEM_BUDGET_S,
                  batch_budget_s: float = DEFAULT_BATCH_BUDGET_S, max_chars: int = DEFAULT_MAX_CHARS) -> RulesTier:
        engine = build_engine(load_text(text), item_budget_s=item_budget_s, max_chars=max_chars)
        return cls(engine, None, item_budget_s=item_budget_s, batch_budget_s=batch_budget_s, max_chars=max_chars)

    # ------------------------------------------------------------------------------------------- serving
    @property
    def engine(self) -> Engine:
        return self._engine

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        """One output per item, within the budgets: an item started after ``batch_budget_s`` gets "no decision"
        (``reason=""``, ``extras["skipped"] = "batch_budget"``), so the cascade escalates it."""
        engine = self._engine  # one read: the whole batch uses one set even if a swap happens meanwhile
        batch_deadline = time.perf_counter() + self.batch_budget_s
        ITEMS.inc(len(items))
        out = []
        for i, it in enumerate(items):
            now = time.perf_counter()
            if now >= batch_deadline:
                skipped = len(items) - i
                SKIPPED_ITEMS.inc(skipped)
                log.warning("rules: the batch budget of %.3f s is spent; %d of %d item(s) get no decision",
                            self.batch_budget_s, skipped, len(items))
                out.extend(TierOutput(label=None, reason="", extras={"skipped": "batch_budget"})
                           for _ in range(skipped))
                break
            try:
                out.append(output_of(engine.decide(it, deadline=min(now + self.item_budget_s, batch_deadline))))
            except Exception:  # the contract: never raise; an unexpected bug means "no rule decides"
                log.exception("rules engine failed on an item; answering 'no decision'")
                out.append(TierOutput(label=None, reason=""))
        return out

    def version(self) -> str:
        return self._engine.version

    def rules_hit(self, items: Sequence[Item]) -> list[str | None]:
        """For each item, the id of the rule that acted on it (decided, escalated or abstained), else None.
        Shadow rules never act, so they never appear; no metrics are touched. Each item has the item budget;
        the batch budget does not apply (this serves evaluation, not requests)."""
        engine = self._engine
        out: list[str | None] = []
        for it in items:
            d = engine.decide(it, record=False, deadline=time.perf_counter() + self.item_budget_s)
            out.append(d.rule_id if d.kind != "none" else None)
        return out

    def matching_rules(self, items: Sequence[Item]) -> list[list[str]]:
        """For each item, every enabled rule whose condition matches (shadow rules included)."""
        engine = self._engine
        return [engine.matching_rules(it) for it in items]

    # ------------------------------------------------------------------------------------------ changing
    def reload(self, *, source: str = "manual") -> str:
        """Re-read the tier's path, validate and test it, then swap; returns the new version.

        On failure raises RuleError with every problem and keeps serving the old set."""
        if self.path is None:
            raise RuleError("this rules tier was built from text and has no path to reload; use replace_text")
        return self._swap(lambda: load_path(self.path), source)  # type: ignore[arg-type]

    def replace_text(self, yaml_text: str, *, source: str = "api", name: str | None = None,
                     persist: bool = False) -> str:
        """Validate and test ``yaml_text``, then swap it in; returns the new version.

        ``persist=True`` also writes the text to the tier's path (a single file) once it passed, so a restart
        keeps it; a directory path is never overwritten. The write goes to a temporary file of its own in the
        same directory, is flushed to disk and renamed over the rule file, all under the reload lock: two
        uploads never interleave, and one that cannot be written raises UnavailableError leaving the old file
        and the old rules in place."""
        if name is None:  # problems point at the file the text will replace, when there is one
            name = str(self.path) if self.path is not None and self.path.is_file() else "<upload>.yaml"
        target = self.path if persist and self.path is not None and self.path.is_file() else None
        return self._swap(lambda: load_text(yaml_text, name=name), source,
                          before_swap=(lambda: write_atomically(target, yaml_text)) if target else None)

    def set_shadow(self, rule_ids: Iterable[str], shadow: bool = True) -> None:
        """Run the named rules in shadow mode (evaluated and counted, never acting), or back out of it.

        The override survives reloads for ids that remain in the set. Unknown ids raise RuleError."""
        ids = set(rule_ids)
        with self._lock:
            engine = self._engine
            unknown = ids - set(engine.all_by_id)
            if unknown:
                raise RuleError(f"unknown rule id(s) {sorted(unknown)}: the loaded set has {len(engine.all_by_id)} "
                                "rules; see `tiergate rules eval` for their ids")
            new_shadow = (self._shadow | ids) if shadow else (self._shadow - ids)
            new = Engine(engine.source, item_budget_s=self.item_budget_s, max_chars=self.max_chars,
                         shadow=new_shadow)
            self._shadow = new_shadow
            self._engine = new
            self._publish(new)

    def _swap(self, load, source: str, before_swap=None) -> str:
        """Load, validate and test under the lock, run ``before_swap`` (the upload's file write), then swap."""
        RELOAD_ATTEMPTS.labels(source=source).inc()
        with self._lock:
            try:
                src = load()
                keep_shadow = self._shadow & {e.rule.id for e in src.entries if e.rule is not None}
                engine = build_engine(src, item_budget_s=self.item_budget_s, max_chars=self.max_chars,
                                      shadow=keep_shadow)
            except RuleError as e:
                RELOAD_FAILURES.labels(source=source).inc()
                log.warning("rules reload (%s) rejected, still serving %s: %s", source, self._engine.version,
                            "; ".join(e.problems) or e)
                raise
            except Exception as e:  # anything unexpected is a failed reload too, never a half swap
                RELOAD_FAILURES.labels(source=source).inc()
                log.exception("rules reload (%s) failed", source)
                raise RuleError(f"reload failed: {e}", [str(e)]) from e
            if before_swap is not None:
                try:
                    before_swap()
                except OSError as e:
                    RELOAD_FAILURES.labels(source=source).inc()
                    log.error("rules upload (%s) not saved, still serving %s: %s", source, self._engine.version, e)
                    raise UnavailableError(f"the rule set passed but could not be saved: {e}; the rule file and "
                                           "the served rules are unchanged (check the disk and the permissions "
                                           "of its directory, then upload again)",
                                           rules_version=self._engine.version) from e
            old = self._engine
            self._shadow = keep_shadow
            self._engine = engine
            self._publish(engine, old)
        log.info("rules reloaded (%s): %s -> %s, %d rules", source, old.version, engine.version, len(engine.rules))
        return engine.version

    @staticmethod
    def _publish(engine: Engine, old: Engine | None = None) -> None:
        if old is not None and old.version != engine.version:
            RULES_VERSION.labels(version=old.version).set(0)  # remove() alone leaves it under --workers
            try:
                RULES_VERSION.remove(old.version)
            except KeyError:
                pass
        RULES_VERSION.labels(version=engine.version).set(1)
        RULES_LOADED.labels(state="active").set(len(engine.active))
        RULES_LOADED.labels(state="shadow").set(len(engine.shadows))
        RULES_LOADED.labels(state="disabled").set(len(engine.all_by_id) - len(engine.rules))
        LAST_RELOAD.set(time.time())
        if old is not None:
            forget_rule_metrics(engine.all_by_id)
