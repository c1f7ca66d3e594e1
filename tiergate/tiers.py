"""The one interface every tier implements (STYLE.md, convention 2).

A tier takes a batch of :class:`~tiergate.data.Item` and returns one :class:`TierOutput` per item: a
proposed label with its confidence and class probabilities, or an abstention, or a forced escalation. The
tier never decides whether its answer is *good enough*: the cascade compares the confidence with the tier's
threshold. Rules, ONNX models, torch models and remote tiers all implement :class:`Tier`; the cascade knows
nothing else about them but their declared :class:`Capabilities`. :class:`FunctionTier` is the test double.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tiergate.data.items import Item


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a tier promises about its answers; the cascade, evaluation and calibration branch on these, never
    on what kind of tier it is (a kind declares them once, in :mod:`tiergate.registry`).

    >>> Capabilities(distribution=False)
    Capabilities(distribution=False, batch_invariant=True, max_batch=None, light=False, remote=False, takes_text=False)
    """

    distribution: bool = True      # answers carry class probabilities whose confidence thresholds and
                                   # calibration act on (False for rules: their confidence is the rule's own)
    batch_invariant: bool = True   # an item's output does not depend on the other items in its batch
                                   # (safe to batch items of different requests together)
    max_batch: int | None = None   # largest batch predict() takes at once; None = any
    light: bool = False            # pure Python, a small and bounded cost per item (rules: the regex budget):
                                   # the gateway runs it on its event loop in slices instead of a thread,
                                   # which would only contend for the GIL
    remote: bool = False           # calls another server: its batches wait on the network, not the GIL, so a
                                   # thread of the gateway runs them (a process of their own would gain nothing)
    takes_text: bool = False       # has predict_texts(texts) and parses the texts itself (a tier in a process
                                   # of its own), so the gateway's process need not parse them for it


@dataclass(slots=True)
class TierOutput:
    """What one tier says about one item.

    ``label`` is None when the tier abstains. ``escalate_to`` forces escalation (to the named tier, or to the
    next one when it is ``"next"``) whatever the confidence. ``probabilities`` follow the tier's ``labels``
    (None for tiers without a distribution, such as rules). ``reason`` is a rule id or a short tag.
    """

    label: str | None
    confidence: float = 0.0
    probabilities: dict[str, float] | None = None
    reason: str = ""
    escalate_to: str | None = None
    extras: dict = field(default_factory=dict)


class Tier(ABC):
    """A batch of items in, one :class:`TierOutput` per item out, in order.

    Contract: ``predict`` never raises on any item that :func:`~tiergate.data.make_item` produced; it returns
    exactly ``len(items)`` outputs, and holds to what ``capabilities`` declares (at most
    ``capabilities.max_batch`` items are passed at once). ``labels`` is the tier's label set (empty for a rules
    tier that can name any label).
    """

    name: str
    labels: list[str]
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def predict(self, items: Sequence[Item]) -> list[TierOutput]: ...

    def version(self) -> str:
        """A content hash of what the tier serves (rules text, model weights); certificates bind to it."""
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, sessions)."""



def outputs_from_proba(proba_NC: np.ndarray, labels: Sequence[str], reason: str = "") -> list[TierOutput]:
    """Turn a probability matrix (rows = items, columns = ``labels``) into outputs: argmax label, max prob."""
    idx = proba_NC.argmax(axis=1)
    outs = []
    for row, j in zip(proba_NC, idx, strict=True):
        outs.append(TierOutput(label=labels[int(j)], confidence=float(row[j]),
                               probabilities={lab: float(p) for lab, p in zip(labels, row, strict=True)},
                               reason=reason))
    return outs


class FunctionTier(Tier):
    """A tier backed by a function ``texts -> probability matrix``: the test double of the interface.
    ``capabilities`` (default: the base class's) declares what the double stands in for.

    >>> t = FunctionTier("const", ["a", "b"], lambda texts: np.tile([0.9, 0.1], (len(texts), 1)))
    >>> t.predict([make_item("x")])[0].label
    'a'
    """

    def __init__(self, name: str, labels: Sequence[str], fn: Callable[[list[str]], np.ndarray],
                 capabilities: Capabilities | None = None):
        self.name = name
        self.labels = list(labels)
        self.fn = fn
        if capabilities is not None:
            self.capabilities = capabilities

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(np.asarray(self.fn([it.model_text for it in items])), self.labels)
