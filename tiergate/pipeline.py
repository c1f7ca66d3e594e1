"""The workflows behind the CLI: build a cascade from data, calibrate it, evaluate it.

Each function does one job and returns plain data; the CLI only parses arguments and prints.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from tiergate.calibration.ltt import certificate_status
from tiergate.cascade import Cascade
from tiergate.config import ServerConfig, Thresholds, TierConfig, TiergateConfig, load_config, save_config
from tiergate.cost import cost_from_timings
from tiergate.data import Dataset, load_dataset, make_item
from tiergate.data.items import Item
from tiergate.errors import CalibrationError, ConfigError, ModelError, RuleError
from tiergate.evaluate import score_tiers, summarize, tier_checks
from tiergate.rules.tier import pack_path

log = logging.getLogger("tiergate")

COST_BATCH = 32  # the batch size at which costs are measured (and stated in the config)
KEEP = "keep"    # calibrate's default budget: the one the config was last calibrated with


def items_of(ds: Dataset, split: str, progress: bool = False) -> tuple[list[Item], list[str]]:
    exs = ds.split(split)
    items = [make_item(e.text) for e in tqdm(exs, desc=f"parsing {split}", unit="item", disable=not progress, leave=False)]
    return items, [e.label for e in exs]


def set_costs(cascade: Cascade, timings: dict[str, list[float]], *, batch_size: int, what: str) -> None:
    """Write every tier's measured cost per item (median of ``timings``) into the cascade's config."""
    for tc in cascade.config.tiers:
        if tc.cost.pinned:
            log.info("cost of %s is pinned in the config: %.3f ms per item, kept", tc.name,
                     tc.cost.seconds_per_item * 1000)
            continue
        price = cascade.config.hardware.get(tc.hardware)
        if price is None:
            raise CalibrationError(f"tier {tc.name}: hardware {tc.hardware!r} has no price; add it under "
                                   f"`hardware:` (known: {sorted(cascade.config.hardware)})")
        tc.cost = cost_from_timings(timings.get(tc.name, []), usd_per_hour=price, batch_size=batch_size,
                                    fixed_usd_per_call=tc.cost.fixed_usd_per_call, what=what)
        log.info("cost of %s: %.3f ms per item (%s)", tc.name, tc.cost.seconds_per_item * 1000, tc.cost.measured)


def calibrate(config_path: Path, data: str, *, epsilon: float = 0.01, delta: float = 0.05,
              risk: str = "disagreement", method: str = "auto", measure: bool = True,
              progress: bool = True, budget: float | str | None = KEEP) -> dict:
    """Measure costs, choose thresholds on the calibration split, write them into the config. With ``budget``
    (a share of the all-to-final-tier cost), spend up to it on agreeing with the final tier (Learn-then-Test).
    ``KEEP`` keeps the budget of the config's last calibration (a recalibration after retraining keeps the
    cost policy it had); ``None`` or 0 saves the most the certificate allows."""
    cascade = Cascade.from_config(config_path)
    if budget == KEEP:
        budget = (cascade.config.calibration or {}).get("budget")
        if budget is not None:
            log.info("keeping the budget the config was calibrated with: %g of the all-to-final-tier cost "
                     "(--budget 0 saves the most instead)", budget)
    budget = budget or None
    if budget is not None and method not in ("auto", "ltt"):  # before scoring anything
        raise CalibrationError(f"a budget ({budget:g}: --budget, or the one the config was last calibrated with) needs "
                               "the Learn-then-Test method (--method ltt or auto); --budget 0 drops it")
    ds = load_dataset(data)
    items, y = items_of(ds, "calibration", progress)
    if not items:
        raise CalibrationError(f"{data}: the calibration split is empty; thresholds need held-out data")
    timings: dict[str, list[float]] = {}
    outputs = score_tiers(cascade, items, progress=progress, batch_size=COST_BATCH, timings=timings)
    if measure:
        set_costs(cascade, timings, batch_size=COST_BATCH, what=f"{data} calibration items")
        for tier, tc in zip(cascade.tiers, cascade.config.tiers, strict=True):
            priced = getattr(tier, "usd_per_item", None)  # a tier priced per call (tokens), not per second
            if priced is not None and not tc.cost.pinned:
                tc.cost.seconds_per_item, tc.cost.fixed_usd_per_call = 0.0, float(priced)
                tc.cost.measured = f"mean price of {len(items)} calls ({data} calibration items), from the tokens they used"
    result = _choose(cascade, outputs, y, epsilon=epsilon, delta=delta, risk=risk, method=method, ds=ds, items=items,
                     budget=budget)
    checks = tier_checks(cascade.config.tiers, outputs, y)
    if checks:  # beside calibrate's own warnings (a budget no certified setting fits, ...), not instead of them
        result["warnings"] = list(dict.fromkeys([*result.get("warnings", []), *checks]))
        for w in checks:  # likewise returned, and printed by the CLI
            log.info("warning: %s", w)
    save_config(cascade.config, config_path)
    cascade.close()
    return result


def _choose(cascade: Cascade, outputs, y, *, epsilon, delta, risk, method, ds: Dataset, items=None,
            budget: float | None = None) -> dict:
    from tiergate.calibration import ltt

    if method in ("auto", "ltt"):
        return ltt.calibrate_cascade(cascade, outputs, y, epsilon=epsilon, delta=delta, risk=risk,
                                     data_hash=ds.fingerprint(), items=items, budget=budget)
    from tiergate.calibration.plain import disagreement, plain_thresholds

    tiers = plain_thresholds(outputs, cascade.config.tiers, epsilon=epsilon)
    cascade.config.tiers = tiers
    cascade.config.calibration = {"method": "plain", "epsilon": epsilon, "n": len(y),
                                  "disagreement": disagreement(outputs, tiers), "data_hash": ds.fingerprint()}
    return cascade.config.calibration


def evaluate(config_path: Path, data: str, split: str = "test", *, progress: bool = True) -> dict:
    cascade = Cascade.from_config(config_path)
    ds = load_dataset(data)
    items, y = items_of(ds, split, progress)
    outputs = score_tiers(cascade, items, progress=progress)
    cert = cascade.config.certificate
    if cert is not None:
        cert = certificate_status(cascade, cert)
    report = summarize(outputs, y, cascade.config.tiers, dataset=ds.name if data in ("spamassassin", "debian-packages") else data,
                       split=split, certificate=cert)
    cascade.close()
    return report


# ------------------------------------------------------------------------------------------ quickstart
def rules_pack_for(data: str) -> Path | None:
    """The shipped rule pack for a reference data set, or None (a user's own data set has none)."""
    try:
        return pack_path(data)
    except RuleError:
        return None


def adopt_large(src: Path, labels: Sequence[str], dest: Path) -> str:
    """Check that ``src`` is a final-tier artifact (``tiergate train large``'s output: one fine-tuned model, an
    ensemble, or the quick preset's) that loads with its hash checks and knows exactly ``labels``, then copy it
    to ``dest`` (replacing what is there only once the copy is whole). Returns what it is, for the log.
    Anything else is a ModelError and ``dest`` is left as it was."""
    from tiergate.registry import build_tier

    src = Path(src).resolve()
    if not src.is_dir():
        raise ModelError(f"--large-model {src}: not a folder (give the --out folder of `tiergate train large`)")
    try:
        tier = build_tier(TierConfig(name="large", kind="torch", path=str(src)), src.parent)
    except (ModelError, ConfigError) as e:
        raise ModelError(f"--large-model {src}: {e}") from None
    try:
        if sorted(tier.labels) != sorted(labels):
            raise ModelError(f"--large-model {src}: trained for the labels {_few(tier.labels)}, but the data set "
                             f"has {_few(labels)}")
        what = f"{type(tier).__name__} {tier.version()}"
    finally:
        tier.close()
    dest = Path(dest)
    if dest.resolve() == src:
        return what
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return what


def _few(labels: Sequence[str], n: int = 8) -> str:
    """``labels`` sorted, the first ``n`` and how many more."""
    ls = sorted(labels)
    return ", ".join(ls[:n]) + (f" and {len(ls) - n} more" if len(ls) > n else "")


def build(data: str, workdir: Path, *, large_preset: str = "quick", progress: bool = True,
          say=print, rules_pack: Path | None = None, large_overrides=(), large_model: Path | None = None) -> Path:
    """Fetch data, train the small and large tiers, install the rule pack (the data set's own, or
    ``rules_pack``), write ``workdir/tiergate.yaml``. ``large_overrides`` (``KEY=VALUE``) change a finetune*
    preset's settings; they are checked before anything is fetched. ``large_model``: a large tier trained
    elsewhere (on a GPU, say) to use instead of training one, checked (see :func:`adopt_large`) before the
    small tier is trained."""
    if large_model is not None and (large_overrides or large_preset != "quick"):
        raise ConfigError("--large-model uses a trained large tier as it is: it takes no --large-preset or "
                          "--large-set (they were given when it was trained)")
    if large_overrides:
        from tiergate.training.run import check_overrides

        check_overrides(large_preset, large_overrides)
    from tiergate.models.large import train_large
    from tiergate.models.small import small_presets, train_small

    t0 = time.perf_counter()
    say(f"[1/5] data: {data}")
    ds = load_dataset(data)
    info = ds.info()
    say(f"      {info['n']} items, {info['n_labels']} labels; train {info['splits']['train']['n']}, "
        f"calibration {info['splits']['calibration']['n']}, test {info['splits']['test']['n']}")
    adopted = adopt_large(large_model, ds.labels, workdir / "large") if large_model is not None else None
    workdir.mkdir(parents=True, exist_ok=True)
    train, y_train = items_of(ds, "train", progress)
    say("[2/5] small tier(s): TF-IDF + logistic regression -> ONNX")
    texts = [it.model_text for it in train]
    smalls = small_presets(len(train), len(ds.labels))
    for name, scfg in smalls:
        m_small = train_small(texts, y_train, workdir / name, scfg, data_fingerprint=ds.fingerprint(), name=name)
        say(f"      {name}: {m_small['n_features']} features, trained in {m_small['train_seconds']} s")
    if adopted is not None:
        say(f"[3/5] large tier: {large_model} ({adopted}), checked and copied to {workdir / 'large'}")
    elif large_preset.startswith("finetune"):  # the encoder fine-tuned end to end (tiergate.models.finetune)
        from tiergate.training.finetune_run import train_finetune

        say(f"[3/5] large tier: MiniLM fine-tuned end to end, preset {large_preset} (tiergate.training)")
        train_finetune(ds, workdir / "large", cfg=large_preset, progress=progress, overrides=large_overrides)
    else:
        say("[3/5] large tier: sparse mixture-of-experts model (tiergate.training)")
        train_large(ds, workdir / "large", preset=large_preset, progress=progress)
    tiers = []
    pack = rules_pack or rules_pack_for(data)
    if pack is not None:
        shutil.copy(pack, workdir / "rules.yaml")
        tiers.append(TierConfig(name="rules", kind="rules", path="rules.yaml", threshold=Thresholds(default=0.0)))
        say(f"      rule pack installed: {pack.name}")
    tiers += [TierConfig(name=name, kind="onnx", path=name) for name, _ in smalls]
    tiers.append(TierConfig(name="large", kind="torch", path="large"))
    # A quickstart is for trying things: any caller may force the final tier or ask for a stricter epsilon.
    # A production config grants those per API key (server.api_keys) or not at all; see docs/gateway.md.
    server = ServerConfig(anonymous_privileges=["final_only", "epsilon"])
    cfg = TiergateConfig(dataset=data, labels=ds.labels, tiers=tiers, server=server)
    path = workdir / "tiergate.yaml"
    save_config(cfg, path)
    say(f"      built in {time.perf_counter() - t0:.0f} s")
    return path


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))


__all__ = ["build", "calibrate", "evaluate", "load_config"]
