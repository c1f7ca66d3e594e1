"""Artifacts and serving of the ``finetune`` large tier: sharded safetensors, hash-checked loading, the Tier.

An artifact folder holds::

    model-00001-of-0000N.safetensors ...   weights in shards of at most 16 MiB (SHARD_BYTES), float16 on disk
                                           except the routers (float32: routing flips on near-ties otherwise) and
                                           the wide path (``wide.*``: the LR's weights and intercept and the
                                           n-gram bag's idf, float32 so serving computes the fitted LR exactly)
    model.safetensors.index.json           which shard holds which tensor piece, and each tensor's full shape
    config.json                            {"kind": "tiergate-finetune", labels, model config, runtime}
    tokenizer.json                         the WordPiece tokenizer the model was trained with
    manifest.json                          sha256 of every file above, metrics, parameter counts

A tensor larger than a shard (MiniLM's 30522 x 384 word embeddings) is cut along its first dimension into
pieces ``name::part0``, ``name::part1``, ...; loading concatenates them. Loading reads only JSON and
safetensors, checks every file's hash against the manifest and every tensor's name and shape against the
model the config describes, and raises :class:`~tiergate.errors.ModelError` naming the file otherwise.

>>> tier = FinetuneTier.load("runs/large")                  # doctest: +SKIP
>>> tier.predict_proba([make_item("hello")]).shape           # doctest: +SKIP
(1, 2)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tiergate.data.items import Item
from tiergate.errors import ModelError
from tiergate.models.artifacts import sha256_file
from tiergate.models.finetune import (
    FORMAT_KIND,
    FORMAT_VERSION,
    FinetuneClassifier,
    FinetuneConfig,
    config_from_dict,
    config_to_dict,
    item_text,
)
from tiergate.tiers import Capabilities, Tier, TierOutput, outputs_from_proba

SHARD_BYTES = 16 * 2 ** 20 - 2 ** 16   # 16 MiB less room for each shard's JSON header
INDEX = "model.safetensors.index.json"
_PART = "::part"


class WordPiece:
    """``tokenizer.json`` -> id lists of at most ``max_tokens`` ([CLS] ... [SEP]); never raises on a str."""

    def __init__(self, path: Path, max_tokens: int):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception types
            raise ModelError(f"{path}: cannot be read as a tokenizers tokenizer.json ({e})") from e
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self._specials = self.tok.encode("").ids  # what the post-processor puts around a text: [CLS], [SEP]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._ids(texts, self.max_tokens, specials=True)

    def _ids(self, texts: Sequence[str], limit: int, specials: bool) -> list[list[int]]:
        # a WordPiece token covers at least one character: 8 per token keeps every token that survives the cut,
        # and a 100 kB mail is not tokenised whole to keep its first 256 tokens
        cut = [t[: limit * 8] for t in texts]
        return [e.ids[:limit] for e in self.tok.encode_batch(cut, add_special_tokens=specials)] if cut else []

    def encode_items(self, items: Sequence[Item], cfg: FinetuneConfig) -> list[list[int]]:
        """What the encoder reads of each item, as ``cfg`` says (:func:`item_text`; with ``cfg.header_tokens``,
        the header block without its trace fields in at most that many tokens, unless subject and body leave
        more room, then subject and body: ``[CLS] headers subject body [SEP]``, at most ``max_tokens``)."""
        if not (cfg.read_headers and cfg.header_tokens > 0):
            return self.encode([item_text(it, cfg.read_headers) for it in items])
        from tiergate.data.mail import without_trace_fields

        room = self.max_tokens - len(self._specials)
        heads = self._ids([without_trace_fields(it.fields.get("headers", "")) if it.is_mail else ""
                           for it in items], room, specials=False)
        bodies = self._ids([item_text(it) for it in items], room, specials=False)
        first, last = self._specials[:1], self._specials[1:]
        out = []
        for h, b in zip(heads, bodies, strict=True):
            h = h[: max(cfg.header_tokens, room - len(b))]
            out.append(first + h + b[: room - len(h)] + last)
        return out


# ---------------------------------------------------------------------------------------------- saving
def bag_featurizer(cfg: FinetuneConfig, idf_F: np.ndarray | None = None):
    """The large tier's hashed n-gram featurizer (tiergate.models.large.Featurizer, no encoder) over
    ``cfg.bag``: ``.table(items, y, fit_rows=...)`` learns the idf and returns the bag as a CSR matrix. One
    featurizer for training and serving, so both read the same n-grams of the same text (the model text)."""
    from tiergate.models.large import Featurizer, LargeConfig

    # named in full: the featurizer computes the hashed bag only for a config whose model reads it
    feat = Featurizer(LargeConfig(encoder="hashed", bag=cfg.bag, wide=True, wide_features="hashed"))
    if idf_F is not None:
        feat.bag.idf_ = np.asarray(idf_F, np.float32)
    return feat


def disk_tensors(model: FinetuneClassifier, save_dtype: str) -> dict[str, torch.Tensor]:
    """The state dict as stored: floats in ``save_dtype``, routers float32, all on CPU and contiguous."""
    dt = getattr(torch, save_dtype)
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and ".router." not in k and not k.startswith("wide."):
            v = v.to(dt)
        out[k] = v.contiguous()
    return out


def plan_shards(tensors: dict[str, torch.Tensor], limit: int = SHARD_BYTES) -> list[dict[str, torch.Tensor]]:
    """Pack tensors (in name order) into shards of at most ``limit`` bytes, filling each shard: a tensor that
    does not fit in what is left of the current one is cut along dim 0 (pieces ``name::part0``, ...).

    So N bytes take ceil(N / limit) shards (whole-tensor packing would leave 9.4 MB experts one per shard),
    and the plan is a pure function of names, shapes and dtypes: one process and N write the same files."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if nbytes <= limit - used or t.dim() == 0:
            if nbytes > limit - used:
                shards.append({})
                used = 0
            shards[-1][name] = t
            used += nbytes
            continue
        row = t[0].numel() * t.element_size()
        if row > limit:
            raise ModelError(f"tensor {name}: one row of {row} bytes exceeds a shard of {limit} bytes")
        start, k = 0, 0
        while start < t.shape[0]:
            fit = (limit - used) // row
            if fit == 0:
                shards.append({})
                used = 0
                continue
            stop = min(start + fit, t.shape[0])
            shards[-1][f"{name}{_PART}{k}"] = t[start:stop].contiguous()
            used += (stop - start) * row
            start, k = stop, k + 1
    return [s for s in shards if s]


def save_finetune(out_dir, model: FinetuneClassifier, labels: list[str], tokenizer_json: Path, *,
                  metrics: dict, runtime: dict, data_fingerprint: str = "", history: list | None = None,
                  vocab_wide=None) -> dict:
    """Write the artifact (see the module docstring) and return its manifest. ``vocab_wide``: the fitted
    :class:`~tiergate.models.wide.VocabWide` of a ``wide_features="vocab"`` model (its weights go into the
    shards as ``vocab_wide.*``, float32; its vocabularies into ``wide.json``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    tensors = disk_tensors(model, cfg.save_dtype)
    extra = []
    if model.wide_input:
        if vocab_wide is None:
            raise ModelError("a wide_features='vocab' model is saved with its fitted VocabWide (vocab_wide=...)")
        tensors.update({f"vocab_{k}": torch.from_numpy(v) for k, v in vocab_wide.tensors().items()})
        (out / "wide.json").write_text(json.dumps(vocab_wide.to_json()))
        extra.append("wide.json")
    shards = plan_shards(tensors)
    n = len(shards)
    weight_map, meta = {}, {"format": FORMAT_KIND, "version": str(FORMAT_VERSION)}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"format": FORMAT_KIND, "save_dtype": cfg.save_dtype, "shard_bytes_max": SHARD_BYTES},
             "weight_map": weight_map,
             "shapes": {k: list(v.shape) for k, v in tensors.items()},
             "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}}
    (out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
    config = {"kind": FORMAT_KIND, "format_version": FORMAT_VERSION, "labels": list(labels),
              "model": config_to_dict(cfg), "runtime": runtime}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    files = sorted([*(f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)), INDEX, "config.json",
                    "tokenizer.json", *extra])
    manifest = {"kind": FORMAT_KIND, "version": FORMAT_VERSION, "labels": list(labels),
                "files": {f: sha256_file(out / f) for f in files},
                "weights_dtype": cfg.save_dtype, "n_params": sum(p.numel() for p in model.parameters()),
                "active_params_per_token": model.active_params_per_token(),
                "training_data_fingerprint": data_fingerprint, "metrics": metrics, "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if history is not None:
        with (out / "train_log.jsonl").open("w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in history)
    return manifest


# --------------------------------------------------------------------------------------------- loading
def is_finetune_artifact(path) -> bool:
    """True when ``path/config.json`` says ``kind: tiergate-finetune`` (the registry dispatches on it)."""
    p = Path(path) / "config.json"
    try:
        return p.is_file() and json.loads(p.read_text()).get("kind") == FORMAT_KIND
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: missing; train the tier with `tiergate train large --preset finetune`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e}); retrain the model") from e
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return doc


def _verify_files(d: Path, manifest: dict, index: dict) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelError(f"{d / 'manifest.json'}: no 'files' table of sha256 digests")
    needed = set(index.get("weight_map", {}).values()) | {INDEX, "config.json", "tokenizer.json"}
    unhashed = needed - set(files)
    if unhashed:
        raise ModelError(f"{d / sorted(unhashed)[0]}: not listed in manifest.json; the artifact was altered")
    for name, digest in sorted(files.items()):
        f = d / name
        if not f.is_file():
            raise ModelError(f"{f}: missing (manifest.json lists it); copy the whole artifact folder")
        have = sha256_file(f)
        if have != digest:
            raise ModelError(f"{f}: sha256 {have[:12]}… does not match the manifest's {str(digest)[:12]}…; "
                             "the file is corrupt or was replaced")


def _read_tensors(d: Path, index: dict) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    by_file: dict[str, set[str]] = {}
    for piece, fname in index["weight_map"].items():
        by_file.setdefault(fname, set()).add(piece)
    pieces: dict[str, torch.Tensor] = {}
    for fname, names in sorted(by_file.items()):
        try:
            got = load_file(str(d / fname))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{d / fname}: cannot be read as safetensors ({e})") from e
        if set(got) != names:
            raise ModelError(f"{d / fname}: holds {sorted(set(got) ^ names)[:3]} against the index; retrain or recopy")
        pieces.update(got)
    whole: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for piece, t in pieces.items():
        name, _, part = piece.partition(_PART)
        whole.setdefault(name, []).append((int(part) if part else 0, t))
    return {k: torch.cat([t for _, t in sorted(v, key=lambda p: p[0])]) if len(v) > 1 else v[0][1]
            for k, v in whole.items()}


# Expert tensors of artifacts written while the upcycled blocks used the kernels' own MoE module (the same
# tensors under the names of the kernel op's arguments); tiergate.models.moe.MoEFFN names them w1, b1, w2, b2.
_OLD_EXPERT_NAMES = {".moe.w1_EDH": ".moe.w1", ".moe.b1_EH": ".moe.b1", ".moe.w2_EHD": ".moe.w2", ".moe.b2_ED": ".moe.b2"}


def _current_name(key: str) -> str:
    for old, new in _OLD_EXPERT_NAMES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def load_finetune(path) -> tuple[FinetuneClassifier, list[str], dict, dict, object | None]:
    """(model in float32, eval mode, on CPU; labels; config.json; manifest.json; the VocabWide of a
    ``wide_features="vocab"`` model, else None) of an artifact folder."""
    d = Path(path)
    config, manifest, index = _read_json(d / "config.json"), _read_json(d / "manifest.json"), _read_json(d / INDEX)
    if config.get("kind") != FORMAT_KIND or manifest.get("kind") != FORMAT_KIND:
        raise ModelError(f"{d / 'config.json'}: not a {FORMAT_KIND} artifact (kind {config.get('kind')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{d / 'config.json'}: format version {config.get('format_version')}, expected "
                         f"{FORMAT_VERSION}; retrain with this tiergate")
    _verify_files(d, manifest, index)
    cfg: FinetuneConfig = config_from_dict(config["model"])
    labels = [str(x) for x in config["labels"]]
    with torch.device("cpu"):
        model = FinetuneClassifier(cfg, len(labels))
    expect = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {_current_name(k): v for k, v in _read_tensors(d, index).items()}
    vocab_wide = None
    if model.wide_input:
        from tiergate.models.wide import VocabWide

        if "wide.json" not in manifest["files"]:
            raise ModelError(f"{d / 'wide.json'}: missing from manifest.json (the config has a vocabulary wide path)")
        parts = {k[len("vocab_"):]: state.pop(k).float().numpy() for k in list(state) if k.startswith("vocab_wide.")}
        vocab_wide = VocabWide.from_parts(_read_json(d / "wide.json"), parts)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expect:
        bad = sorted(set(got) ^ set(expect)) or sorted(k for k in got if got[k] != expect[k])
        raise ModelError(f"{d / INDEX}: tensors do not match config.json (first: {bad[0]!r}, "
                         f"{got.get(bad[0])} vs {expect.get(bad[0])}); retrain the model")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval(), labels, config, manifest, vocab_wide


# --------------------------------------------------------------------------------------------- serving
RUNTIMES = ("auto", "torch", "onnx")


def resolve_runtime(runtime: str, model: FinetuneClassifier, device: torch.device) -> str:
    """``torch`` or ``onnx`` for ``runtime`` (one of :data:`RUNTIMES`). ``auto`` picks onnx on CPU for a model
    the graph covers (no hashed wide path): on the 2-core dev machine 0.62-0.69x torch's time per item one at a
    time and 0.91-1.00x in batches of 16, level on the H200 host's Xeon, at equal labels (docs/benchmarks.md,
    "Serving the fine-tuned tier on CPU"). An explicit ``onnx`` it cannot honour is a ModelError."""
    if runtime not in RUNTIMES:
        raise ModelError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    exportable = model.wide is None
    if runtime == "onnx":
        if device.type != "cpu":
            raise ModelError(f"runtime onnx serves on CPU; the tier was asked to run on {device}")
        if not exportable:
            raise ModelError("runtime onnx: this model reads the hashed wide path, which the graph does not "
                             "cover; serve it with runtime torch (or auto)")
        return "onnx"
    if runtime == "auto":
        return "onnx" if device.type == "cpu" and exportable else "torch"
    return "torch"


class FinetuneTier(Tier):
    """The fine-tuned large tier, served in-process on CPU (or on ``device``).

    Batch-invariant to float rounding: items are padded to the longest of their slice, and padded keys get
    an additive -1e4 mask (exp underflows to exactly 0 in float32), routing is per token and dropless, and
    dropout is off; what changes with the batch is only the shape of the matrix products, so an item's
    probabilities move in the last bits (tests/models/test_finetune.py checks one item alone against a batch).
    The wide path's n-gram bag is computed per text.
    """

    name = "large"
    capabilities = Capabilities()

    def __init__(self, model: FinetuneClassifier, labels: list[str], tokenizer: WordPiece, manifest: dict,
                 device: torch.device | str = "cpu", batch_size: int = 16, vocab_wide=None, runtime: str = "torch"):
        self.device = torch.device(device)
        self.cfg = model.cfg
        self.labels = list(labels)
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.batch_size = batch_size
        self.bag = None
        self.vocab_wide = vocab_wide
        if model.wide_input and vocab_wide is None:
            raise ModelError("a wide_features='vocab' model needs its VocabWide to serve")
        if model.wide is not None:
            self.bag = bag_featurizer(model.cfg, model.wide.idf.cpu().numpy())
        self.runtime = resolve_runtime(runtime, model, self.device)
        if self.runtime == "onnx":
            from tiergate.models.finetune_onnx import OnnxRunner

            self.model = None  # the session holds its own copy of the weights: the torch one is let go
            self._forward = OnnxRunner(model)
        else:
            self.model = model.to(self.device).eval()
            self._forward = self.model

    @classmethod
    def load(cls, path, *, device: torch.device | str = "cpu", batch_size: int = 16,
             runtime: str = "auto") -> FinetuneTier:
        """``runtime``: ``torch``, ``onnx`` (onnxruntime over the graph exported from the loaded weights; see
        tiergate.models.finetune_onnx) or ``auto`` (onnx on CPU where the model exports, else torch)."""
        from tiergate.models.threads import configure_torch

        configure_torch()  # serving threads: see tiergate.models.threads
        model, labels, _, manifest, vocab_wide = load_finetune(path)
        tok = WordPiece(Path(path) / "tokenizer.json", model.cfg.max_tokens)
        return cls(model, labels, tok, manifest, device=device, batch_size=batch_size, vocab_wide=vocab_wide,
                   runtime=runtime)

    def version(self) -> str:
        return str(self.manifest.get("files", {}).get("model.safetensors.index.json", ""))[:16]

    def encode(self, items: Sequence[Item]) -> list[list[int]]:
        return self.tokenizer.encode_items(items, self.cfg)

    @torch.inference_mode()
    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        from tiergate.training.tokens import TokenTable

        if not items:
            return np.zeros((0, len(self.labels)), np.float32)
        bag = self.bag.table(list(items)).bag if self.bag is not None else None
        wide = self.vocab_wide.logits([it.model_text for it in items]) if self.vocab_wide is not None else None
        table = TokenTable.from_lists(self.encode(items), np.zeros(len(items), np.int64), bag, wide)
        order = np.argsort(-table.lengths, kind="stable")  # similar lengths together: little padding
        proba_NC = np.zeros((len(items), len(self.labels)), np.float32)
        for s in range(0, len(order), self.batch_size):
            rows = order[s: s + self.batch_size]
            logits = self._forward(table.batch(rows, self.device)).float()
            proba_NC[rows] = torch.softmax(logits, -1).cpu().numpy()
        return proba_NC

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(self.predict_proba(items), self.labels, reason="large")
