"""Learning from the final tier: retrain the small tier(s) on the train split plus what the log taught.

The log's lessons are its items with text and a label from above the small tiers: human feedback first, else
the final tier's own (not degraded) decision of an escalated or ``final_only`` item, else its answer in a
shadow audit (:meth:`~tiergate.decisionlog.store.DecisionStore.training_rows`). These are the items the small
tiers were not sure of, labelled by the model the cascade defers to (Nie et al., ICML 2024: online cascade
learning). Each retrained tier is written beside the old one and swapped in by renaming; the old folder stays
as ``<name>.prev-<version>``. Its version changes, so the certificate reads stale until ``tiergate calibrate``
runs again on labelled data neither training saw.

>>> retrain_small_from_log(Path("runs/spam/tiergate.yaml"))       # doctest: +SKIP
{'tiers': {'small': {'previous_version': '1a2b..', 'version': '9f8e..', ...}}, 'log_rows': {...}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

from tiergate.config import load_config
from tiergate.data import load_dataset, make_item
from tiergate.decisionlog.store import DecisionStore, log_path
from tiergate.errors import ConfigError, ModelError
from tiergate.registry import capabilities_of, tier_path

log = logging.getLogger("tiergate.decisionlog")


def small_tiers(cfg, base: Path) -> list[tuple[str, Path, dict]]:
    """The tiers tiergate trained as small tiers (their manifest says ``tiergate-small``): (name, folder,
    manifest). A classifier someone brought is left alone: tiergate does not know how it was made."""
    found = []
    for tc in cfg.tiers[:-1]:
        if not capabilities_of(tc).distribution:
            continue
        folder = tier_path(tc, base, cfg.model_dirs)
        man_path = folder / "manifest.json"
        if not man_path.is_file():
            continue
        man = json.loads(man_path.read_text())
        if man.get("format") == "tiergate-small":
            found.append((tc.name, folder, man))
    return found


# Each logged lesson weighs up to this many train rows. The lessons are few (the items the small tier was unsure
# of, a few % of traffic) and they are where the small tier must learn to answer as the final tier does: the
# certificate bounds disagreement with it. Measured on spamassassin (bench/replay.py, the final tier's share on
# test after one retrain): weight 1: -10%, 3: -23%, 10: -39%, 30: -39%. The lessons together never weigh more
# than the train split (on debian-packages, 4,588 lessons against 24,023 train rows at weight 10 raised the final
# tier's share by 46%): the weight is min(LOG_WEIGHT, train rows / lessons).
LOG_WEIGHT = 10.0


def retrain_small_from_log(config_path: Path, *, data: str | None = None, tiers: list[str] | None = None,
                           progress: bool = True, log_weight: float = LOG_WEIGHT) -> dict:
    """Retrain the small tiers of ``config_path`` on the train split of ``data`` (default: the config's data
    set) plus the log's labelled items, each weighing ``log_weight`` train rows (at most as much, together, as
    the train split). Raises ConfigError when the log holds nothing to learn from."""
    from tiergate.models.small import SmallConfig, train_small

    cfg, base = load_config(config_path)
    path = log_path(cfg, base)
    store = DecisionStore.open(path, readonly=True)
    try:
        rows = list(store.training_rows(cfg.tiers[-1].name))
        with_text = store.count_text()
    finally:
        store.close()
    if not rows:
        if not with_text:
            raise ConfigError(f"{path}: the decision log holds no text, so there is nothing to retrain on. Set "
                              "log.store_text to escalated (or all, or {sample: 0.1}) in the config, serve "
                              "traffic, and run this again")
        raise ConfigError(f"{path}: {with_text} logged texts, but none has a label from the final tier or from "
                          "feedback yet (escalated items, shadow audits, POST /v1/feedback)")
    labels = cfg.labels
    kept = [r for r in rows if not labels or r.label in labels]
    if len(kept) < len(rows):
        log.warning("%d logged labels are outside the label set and were left out", len(rows) - len(kept))
    targets = small_tiers(cfg, base)
    if tiers:
        unknown = set(tiers) - {name for name, _, _ in targets}
        if unknown:
            raise ConfigError(f"--tier {sorted(unknown)}: not small tiers tiergate trained (these are: "
                              f"{[name for name, _, _ in targets]})")
        targets = [t for t in targets if t[0] in tiers]
    if not targets:
        raise ConfigError(f"{config_path}: no small tier trained by tiergate to retrain (a tier whose "
                          "manifest.json says format tiergate-small)")
    name = data or cfg.dataset
    if not name:
        raise ConfigError(f"{config_path}: no `dataset` in the config; say which train split to start from "
                          "with --data")
    ds = load_dataset(name)
    train = ds.split("train")
    texts = [make_item(e.text).model_text for e in tqdm(train, desc="parsing train", unit="item",
                                                         disable=not progress, leave=False)]
    y = [e.label for e in train]
    log_weight = min(float(log_weight), len(texts) / max(len(kept), 1))
    weights = [1.0] * len(texts) + [log_weight] * len(kept)
    texts += [make_item(r.text).model_text for r in kept]
    y += [r.label for r in kept]
    sources = dict(Counter(r.source for r in kept))
    digest = hashlib.sha256("\n".join(r.request_id for r in kept).encode()).hexdigest()[:16]
    out: dict = {"log": str(path), "train_split": len(train), "log_rows": sources, "log_weight": log_weight,
                 "tiers": {}}
    allowed = {f.name for f in fields(SmallConfig)}
    for tier_name, folder, man in targets:
        scfg = SmallConfig(**{k: v for k, v in (man.get("config") or {}).items() if k in allowed})
        fresh = folder.with_name(folder.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        new = train_small(texts, y, fresh, scfg, data_fingerprint=f"{ds.fingerprint()}+log:{digest}", name=tier_name,
                          sample_weight=weights)
        new["trained_from"] = {"data": name, "train_split": len(train), "log": sources, "log_rows_sha256": digest,
                               "log_weight": log_weight, "previous_version": man.get("version")}
        (fresh / "manifest.json").write_text(json.dumps(new, indent=2))
        _swap(folder, fresh, str(man.get("version", "old")))
        out["tiers"][tier_name] = {"previous_version": man.get("version"), "version": new["version"],
                                   "train_items": new["train_items"], "train_seconds": new["train_seconds"],
                                   "folder": str(folder)}
        log.info("retrained %s on %d train + %d logged items: version %s -> %s", tier_name, len(train), len(kept),
                 man.get("version"), new["version"])
    out["next"] = ("the certificate is now stale: run `tiergate calibrate` on labelled data neither training saw, "
                   "then POST /admin/models/reload (or restart the gateway)")
    return out


def _swap(folder: Path, fresh: Path, old_version: str) -> None:
    """Put ``fresh`` where ``folder`` is; the old folder is kept as ``<name>.prev-<version>``."""
    prev = folder.with_name(f"{folder.name}.prev-{old_version}")
    if prev.exists():
        shutil.rmtree(prev)
    try:
        os.replace(folder, prev)
        os.replace(fresh, folder)
    except OSError as e:
        if prev.exists() and not folder.exists():
            os.replace(prev, folder)  # put the old model back rather than leave no model
        raise ModelError(f"could not swap {fresh} into {folder}: {e}") from e
