"""Hot reload on file change: a watchfiles watcher thread that calls :meth:`RulesTier.reload`.

The watcher watches the *directory* holding the rules (editors save by writing a new file and renaming it over
the old one, which a watch on the file itself would lose) and reacts to changes of the rule file, or of any
.yaml/.yml file when the rules are a directory. A rejected file is logged and counted by the tier (the old set
keeps serving); the next save is tried again.

>>> w = RulesWatcher(tier)          # doctest: +SKIP
>>> w.start(); ...; w.stop()        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import watchfiles

from tiergate.errors import RuleError
from tiergate.rules.loader import RULE_SUFFIXES
from tiergate.rules.tier import RulesTier

log = logging.getLogger(__name__)


class RulesWatcher:
    """Watch a rules tier's path and reload it on change. ``start`` and ``stop`` are idempotent."""

    def __init__(self, tier: RulesTier, path: str | Path | None = None, *, debounce_ms: int = 300):
        target = Path(path) if path is not None else tier.path
        if target is None:
            raise RuleError("this rules tier has no path to watch (it was built from text)")
        self.tier = tier
        self.target = target.resolve()
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0  # successful reloads, for tests and logs
        self.failures = 0
        self.last_error: RuleError | None = None

    @property
    def watch_dir(self) -> Path:
        return self.target if self.target.is_dir() else self.target.parent

    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        if self.target.is_dir():
            p = Path(path)
            return p.suffix in RULE_SUFFIXES and not p.name.startswith(".")
        return Path(path).name == self.target.name

    def start(self) -> RulesWatcher:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="tiergate-rules-watcher", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5.0)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        log.info("watching %s for rule changes", self.target)
        try:
            watcher = watchfiles.watch(self.watch_dir, watch_filter=self._relevant, stop_event=self._stop,
                                       debounce=self.debounce_ms, step=50, yield_on_timeout=True,
                                       rust_timeout=200, raise_interrupt=False,
                                       recursive=self.target.is_dir())
            for changes in watcher:
                # The first yield (a timeout yields an empty set) means the OS watch is in place: from here
                # on no change is missed, so start() may return.
                self._ready.set()
                if self._stop.is_set():
                    break
                if changes:
                    self._reload()
        except Exception:  # the watcher is a convenience: log, and let the admin endpoint remain the way in
            log.exception("the rules watcher stopped")
        finally:
            self._ready.set()

    def _reload(self) -> None:
        try:
            version = self.tier.reload(source="file")
        except RuleError as e:
            self.failures += 1
            self.last_error = e
            log.warning("rules file change rejected (%d problem(s)); still serving %s:\n  %s",
                        len(e.problems), self.tier.version(), "\n  ".join(e.problems) or str(e))
            return
        self.reloads += 1
        self.last_error = None
        log.info("rules reloaded from %s: version %s", self.target, version)
