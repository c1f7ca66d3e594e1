"""What the log keeps of a text (docs/privacy.md): by default nothing but its SHA-256; with ``log.store_text``
the text of escalated items, of a random sample, or of all, always after the configured redaction.

>>> policy = TextPolicy(LogConfig(store_text="all"))
>>> policy.redact("write to bob@example.com or call 555 123 4567")
'write to <email> or call <number>'
"""

from __future__ import annotations

import hashlib
import logging
import random

import regex

from tiergate.config import LogConfig, SampleText

log = logging.getLogger("tiergate.decisionlog")
REDACT_TIMEOUT_S = 0.5  # per pattern and text: an operator's pattern that backtracks must not stall the writer
REDACT_FAILED = "<redaction failed: text not stored>"


def text_sha256(text: str) -> str:
    # surrogatepass: a JSON body may carry lone surrogates; the hash must still be defined and stable
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TextPolicy:
    def __init__(self, cfg: LogConfig, rng: random.Random | None = None):
        self.mode = cfg.store_text
        self.patterns = [(regex.compile(r.pattern), r.replacement) for r in cfg.redact]
        self.rng = rng or random.Random()

    @property
    def stores_any(self) -> bool:
        return self.mode != "none"

    def keeps(self, path: list[str], final_only: bool = False) -> bool:
        """Is the text of a decision with this ``path`` kept?"""
        mode = self.mode
        if mode == "none":
            return False
        if mode == "all":
            return True
        if mode == "escalated":
            return len(path) > 1
        assert isinstance(mode, SampleText)
        return self.rng.random() < mode.sample

    def redact(self, text: str) -> str | None:
        """The text with every redaction applied; None when a pattern ran out of time (nothing is kept
        rather than something unredacted)."""
        for pat, repl in self.patterns:
            try:
                text = pat.sub(repl, text, timeout=REDACT_TIMEOUT_S)
            except TimeoutError:
                log.warning("redaction pattern %r timed out; the text is not stored", pat.pattern)
                return None
        return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be stored as TEXT
