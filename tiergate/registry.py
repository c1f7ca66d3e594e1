"""Tier kinds: how a config entry's ``kind`` becomes a :class:`~tiergate.tiers.Tier`, and what it promises.

Each kind is registered once with a builder and its :class:`~tiergate.tiers.Capabilities`. The cascade,
evaluation and calibration ask :func:`capabilities_of` (a look-up, nothing loaded: a config can be calibrated on
cached outputs with no model at hand); only :func:`build_tier` imports a kind's code, so a rules-only host
needs no torch. Built in: ``rules``, ``onnx``, ``torch``, ``remote`` (another server, over the KServe v2
protocol: :mod:`tiergate.models.remote`). Another kind plugs in with :func:`register_tier_kind` before its
config is loaded.

Every tier's ``path`` must resolve (symlinks followed) inside the config file's folder or one of the config's
``model_dirs``: a config cannot make the gateway read files it was not pointed at.

>>> register_tier_kind("remote", build_remote, Capabilities(batch_invariant=False, max_batch=16))  # doctest: +SKIP
>>> capabilities_of(TierConfig(name="rules", kind="rules", path="rules.yaml")).distribution
False
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tiergate.errors import ConfigError
from tiergate.tiers import Capabilities, Tier

if TYPE_CHECKING:  # tiergate.config validates kinds against this module: importing it here would be a cycle
    from tiergate.config import TierConfig

Builder = Callable[["TierConfig", Path], Tier]


@dataclass(frozen=True, slots=True)
class TierKind:
    """A registered kind: ``build(tier_config, artifact_path)`` and what every tier of the kind promises."""

    name: str
    build: Builder
    capabilities: Capabilities
    needs_path: bool = True        # it reads an artifact (``path``, confined); a remote tier reads none


_KINDS: dict[str, TierKind] = {}


def register_tier_kind(kind: str, build: Builder, capabilities: Capabilities, *, needs_path: bool = True) -> None:
    """Make ``kind`` usable in configs. ``build(tc, path)`` gets the tier's config entry and its artifact path,
    already resolved and confined (see the module docstring); it returns the tier, whose ``capabilities`` must
    agree with ``capabilities`` on ``distribution`` (calibration reads the registry, serving the tier).
    Registering a taken name again with another builder is a ConfigError.

    >>> register_tier_kind("const", lambda tc, path: ConstTier(), Capabilities())  # doctest: +SKIP
    """
    if not kind or not kind.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"tier kind {kind!r}: use letters, digits, '-' or '_'")
    old = _KINDS.get(kind)
    if old is not None and old.build is not build:
        raise ConfigError(f"tier kind {kind!r} is already registered (by {old.build.__module__}); "
                          "register yours under another name")
    _KINDS[kind] = TierKind(kind, build, capabilities, needs_path)


def needs_path(kind: str) -> bool:
    k = _KINDS.get(kind)
    return k is None or k.needs_path


def tier_kinds() -> list[str]:
    """The registered kind names, sorted."""
    return sorted(_KINDS)


def _kind_of(tc: TierConfig) -> TierKind:
    try:
        return _KINDS[tc.kind]
    except KeyError:
        raise ConfigError(f"tier {tc.name}: unknown kind {tc.kind!r}; known kinds: {', '.join(tier_kinds())} "
                          "(others are added with tiergate.registry.register_tier_kind)") from None


def capabilities_of(tc: TierConfig) -> Capabilities:
    """What tier ``tc`` promises, from its kind alone (nothing is loaded)."""
    return _kind_of(tc).capabilities


def tier_path(tc: TierConfig, base: Path, model_dirs: Sequence[str] = ()) -> Path:
    """``tc.path`` resolved against ``base`` (the config's folder), symlinks followed; ConfigError unless it
    lies inside ``base`` or one of ``model_dirs`` (relative to ``base``)."""
    base = Path(base).resolve()
    path = (base / tc.path).resolve()  # an absolute tc.path replaces base in the join
    roots = [base] + [(base / d).resolve() for d in model_dirs]
    if any(path.is_relative_to(root) for root in roots):
        return path
    allowed = ", ".join(str(r) for r in roots)
    raise ConfigError(f"tier {tc.name}: path {tc.path!r} resolves to {path}, outside the folders tiers may be "
                      f"read from ({allowed}); move the artifact into one of them, or add its folder to "
                      f"`model_dirs` in the config (relative to {base})")


def build_tier(tc: TierConfig, base: Path, *, model_dirs: Sequence[str] = ()) -> Tier:
    """Build the tier config entry ``tc`` describes, named ``tc.name``. ``base`` is the config file's folder;
    ``model_dirs`` the config's extra folders (see :func:`tier_path`). Unknown kind or a path outside them:
    ConfigError; a broken artifact: the builder's own error (ModelError, RuleError)."""
    kind = _kind_of(tc)
    tier = kind.build(tc, tier_path(tc, base, model_dirs) if kind.needs_path else Path())
    if tier.capabilities.distribution != kind.capabilities.distribution:
        raise ConfigError(f"tier {tc.name}: kind {kind.name!r} is registered with distribution="
                          f"{kind.capabilities.distribution} but its tier declares {tier.capabilities.distribution}; "
                          "register the kind with the tier's capabilities")
    tier.name = tc.name
    return tier


# ------------------------------------------------------------------------------------------ built-in kinds
# The capabilities repeat what each tier class declares, since reading them off the class would import it
# (torch for LargeTier); tests/test_registry.py checks that the two agree.
def _build_rules(tc: TierConfig, path: Path) -> Tier:
    from tiergate.rules.tier import RulesTier

    return RulesTier.from_path(path)


def _build_onnx(tc: TierConfig, path: Path) -> Tier:
    from tiergate.models.small import OnnxTier

    return OnnxTier(path, name=tc.name)


def _build_torch(tc: TierConfig, path: Path) -> Tier:
    from tiergate.models.ensemble import EnsembleTier, is_ensemble_artifact
    from tiergate.models.finetune_io import FinetuneTier, is_finetune_artifact
    from tiergate.models.large import LargeTier

    def load(d: Path) -> Tier:
        if is_finetune_artifact(d):  # config.json's kind says which torch model the folder holds
            return FinetuneTier.load(d, runtime=tc.runtime)
        return LargeTier.load(d)

    if is_ensemble_artifact(path):  # ensemble.json: members under members/, each loaded as above
        return EnsembleTier.load(path, load)
    return load(path)


register_tier_kind("rules", _build_rules, Capabilities(distribution=False, light=True))
register_tier_kind("onnx", _build_onnx, Capabilities())
register_tier_kind("torch", _build_torch, Capabilities())


def _build_remote(tc: TierConfig, path: Path) -> Tier:
    if tc.is_chat:
        from tiergate.models.chat import ChatTier

        return ChatTier(tc.name, tc.remote)  # type: ignore[arg-type] - TierConfig requires it for this kind
    from tiergate.models.remote import RemoteTier

    return RemoteTier(tc.name, tc.remote)  # type: ignore[arg-type]


register_tier_kind("remote", _build_remote, Capabilities(remote=True), needs_path=False)
