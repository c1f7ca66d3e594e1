"""A tier in a process of its own (``executor: process``): :class:`ProcessTier` in the gateway, the child's side here.

Model tiers do much of their work in Python (TF-IDF tokenising, n-gram counting, torch's op dispatch) and so
hold the GIL; in a thread of the gateway's process they starve its event loop (measured: /healthz waited up to
0.5 s and 429s took 0.2 s at the median while the large tier computed). In a child process they compete only
for the cores. The child builds the tier from its config entry (the same registry, the same confinement) and
answers texts. The gateway's process never loads the model: :class:`ProcessTier` holds the child's name,
labels, version and capabilities, and its ``predict`` is the child's (the smoke batch of a start or a model
reload runs there too, on the model that will serve). So neither the weights nor the model's runtime (torch,
onnxruntime) are imported by the gateway's process (docs/gateway.md, "Where each tier runs", has the memory
this saves).
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tiergate import errors
from tiergate.config import ServerConfig, TierConfig
from tiergate.data.items import Item, make_item
from tiergate.registry import build_tier, capabilities_of, tier_path
from tiergate.tiers import Tier, TierOutput

NICE = 10
TRIM_EVERY_S = 1.0  # at most this often, a tier's process hands freed heap pages back (see trim_heap)
_TIER: Tier | None = None
_INIT_ERROR: tuple[str, str] | None = None  # (error class name, message) of a tier that failed to build
_MAX_CHARS = 200_000
_last_trim = 0.0


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back this way
        return None


_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc keeps them otherwise: a batch of long texts leaves
    its buffers' pages behind when it is done). Cheap; a no-op off glibc."""
    if _TRIM is not None:
        _TRIM(0)


# ------------------------------------------------------------------------------------------ the child's side
def init(tc_json: dict, base: str, model_dirs: list[str], max_chars: int) -> None:
    """Process initializer: build the tier once. A failure is kept for :func:`describe` to report (an
    initializer that raises only breaks the pool, and its message would be lost)."""
    global _TIER, _MAX_CHARS, _INIT_ERROR
    # Below the gateway's own priority: when the cores are short, the event loop (probes, 429s, routing) runs
    # first and the models take what is left, instead of the loop waiting behind a batch.
    os.nice(NICE)
    _watch_parent()
    _MAX_CHARS = max_chars
    try:
        _TIER = build_tier(TierConfig.model_validate(tc_json), Path(base), model_dirs=model_dirs)
    except Exception as e:
        _INIT_ERROR = (type(e).__name__, str(e))


def _watch_parent() -> None:
    """End this process when the gateway that started it is gone. A gateway killed with SIGKILL (or one that
    crashed) never shuts its pool down, and the pool's children would wait on their queue for ever, each
    holding a copy of the model (seen: two orphans of 190 MB each after a benchmark's server was killed).
    multiprocessing's parent sentinel (the pipe the parent spawned us through) becomes ready when the parent
    exits, however it exits; PR_SET_PDEATHSIG would follow the spawning *thread*, and the gateway builds its
    tiers in a worker thread that may end long before the gateway does."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)
    threading.Thread(target=watch, name="tiergate-parent-watch", daemon=True).start()


def describe() -> dict:
    """What the gateway's process keeps of the tier: labels, version, capabilities; or the build's error."""
    if _TIER is None:
        return {"error": _INIT_ERROR or ("ModelError", "the tier was not built")}
    return {"labels": list(getattr(_TIER, "labels", []) or []), "version": _TIER.version(),
            "capabilities": _TIER.capabilities}


def predict(texts: list[str]) -> list[TierOutput]:
    """Parse and answer ``texts`` (items are parsed here: an Item does not cross processes)."""
    global _last_trim
    assert _TIER is not None, "worker not initialised"
    outs = _TIER.predict([make_item(t, max_chars=_MAX_CHARS) for t in texts])
    now = time.monotonic()
    if now - _last_trim >= TRIM_EVERY_S:
        _last_trim = now
        trim_heap()
    return outs


# ---------------------------------------------------------------------------------------- the gateway's side
def runs_in_process(tc: TierConfig, server: ServerConfig) -> bool:
    """Whether the gateway serves ``tc`` from a process of its own: ``executor: process``, or ``auto`` for a
    tier that is neither light (rules: on the event loop) nor remote (its work is elsewhere already)."""
    executor = server.serving_of(tc.name).executor
    caps = capabilities_of(tc)
    return executor == "process" or (executor == "auto" and not caps.light and not caps.remote)


def build(tc: TierConfig, base: Path, *, model_dirs: Sequence[str] = (), server: ServerConfig) -> Tier:
    """The gateway's tier builder: a :class:`ProcessTier` where :func:`runs_in_process`, else the registry's
    tier, built here."""
    if runs_in_process(tc, server):
        return ProcessTier(tc, base, model_dirs=model_dirs, max_text_chars=server.max_text_chars,
                           processes=server.serving_of(tc.name).threads)
    return build_tier(tc, base, model_dirs=model_dirs)


class ProcessTier(Tier):
    """A tier built and served by child processes (``processes`` of them, each with its copy of the model).

    Construction starts them and waits until the model is loaded; a model that fails to load raises the
    child's error (its class from :mod:`tiergate.errors`, ModelError otherwise) and leaves no process behind.
    ``predict`` sends the items' texts (an Item does not cross processes; the child parses them again) and
    waits, without the GIL, for the answer."""

    def __init__(self, tc: TierConfig, base: Path, *, model_dirs: Sequence[str] = (), max_text_chars: int = 200_000,
                 processes: int = 1):
        tier_path(tc, base, model_dirs)  # a path outside the allowed folders fails here, before any process
        self.name = tc.name
        ctx = multiprocessing.get_context("spawn")  # fork after torch/onnxruntime threads start is unsafe
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=processes, mp_context=ctx, initializer=init,
            initargs=(tc.model_dump(mode="json"), str(base), list(model_dirs), max_text_chars))
        try:
            desc = self._pool.submit(describe).result()
        except BrokenProcessPool as e:
            self.close()
            raise errors.ModelError(f"tier {tc.name}: its process ended while loading the model ({e})") from e
        if "error" in desc:
            self.close()
            name, msg = desc["error"]
            cls = getattr(errors, name, None)
            cls = cls if isinstance(cls, type) and issubclass(cls, errors.TiergateError) else errors.ModelError
            raise cls(msg)
        self.labels = desc["labels"]
        self._version = desc["version"]
        self.capabilities = dataclasses.replace(desc["capabilities"], takes_text=True)

    def version(self) -> str:
        return self._version

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        return self.predict_texts([it.text for it in items])

    def predict_texts(self, texts: list[str]) -> list[TierOutput]:
        if self._pool is None:
            raise RuntimeError(f"tier {self.name} is closed")
        return self._pool.submit(predict, texts).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
