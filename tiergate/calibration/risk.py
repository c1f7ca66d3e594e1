"""What calibration controls: the risk, a mean of per-item {0, 1} losses over the items it counts.

* ``disagreement``: the cascade's label differs from the final tier's.
* ``error``: the cascade is wrong where the final tier is right. Its mean bounds the cascade's error rate *in
  excess of* the final tier's from above (an item the cascade fixes is not credited), so it stays a {0, 1}
  loss and the exact binomial test applies.
* ``disagreement@LABEL`` / ``error@LABEL``: the same, counted only on items the final tier calls LABEL, so the
  risk is conditional on that class: for mail, "of the messages the final tier calls ham, at most epsilon are
  answered otherwise" (losing a real message is what users mind most).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiergate.calibration.replay import Scored
from tiergate.errors import CalibrationError

KINDS = ("disagreement", "error")


@dataclass(frozen=True)
class Risk:
    kind: str                    # disagreement | error
    given: str | None = None     # count only items the final tier labels ``given``

    @classmethod
    def parse(cls, text: str) -> Risk:
        kind, _, given = text.partition("@")
        if kind not in KINDS:
            raise CalibrationError(f"risk {text!r}: use one of {', '.join(KINDS)}, optionally '@LABEL' for the "
                                   "risk on items the final tier gives that label (e.g. disagreement@ham)")
        return cls(kind, given or None)

    def __str__(self) -> str:
        return self.kind + (f"@{self.given}" if self.given else "")

    def mask(self, s: Scored) -> np.ndarray:
        """Items the risk counts."""
        if self.given is None:
            return np.ones(s.n, dtype=bool)
        if self.given not in s.labels:
            raise CalibrationError(f"risk {self}: label {self.given!r} never appears (labels: {s.labels[:10]})")
        return s.final_N == s.labels.index(self.given)

    def loss(self, s: Scored, pred_N: np.ndarray) -> np.ndarray:
        """Per-item loss in {0, 1} (0 on items not counted)."""
        if self.kind == "disagreement":
            bad = pred_N != s.final_N
        else:
            if (s.y_N < 0).any():
                raise CalibrationError("risk 'error' needs a label for every calibration item")
            bad = (pred_N != s.y_N) & (s.final_N == s.y_N)
        return bad & self.mask(s)
