"""The ``finetune`` large tier: pretrained MiniLM fine-tuned end to end, its top blocks sparse-upcycled.

Architecture (single-device, plain torch; DDP, autocast and the Triton kernels are applied from outside)::

    WordPiece ids (<= max_tokens) ─► MiniLM embeddings ─► blocks 0 .. L-n-1 (dense, as pretrained)
        ─► blocks L-n .. L-1: attention, then a mixture of E experts per *token* (top-k, float32 router)
        ─► mean over non-pad tokens ─► dropout ─► Linear (zero at init when wide) ─┐
    hashed word + char n-gram TF-IDF bag of the model text ─► wide: frozen LR ──────┴─► + ─► logits   (wide=True)

Sparse upcycling (Komatsuzaki et al., ICLR 2023): each expert of an upcycled block starts as an exact copy of
that block's pretrained feed-forward layer, and the router starts small (``router_init_std``). With the k
gates of a token normalised to sum to 1, sum_j g_j * FFN(x) = FFN(x): at initialisation the upcycled model
computes what the dense one does (tests/models/test_finetune.py checks it), and training moves the copies
apart. The auxiliary loss is Switch's load balance E * sum_e f_e * P_e plus ST-MoE's router z-loss
mean(logsumexp(logits)^2), weighted by ``balance_coef`` and ``z_coef``. ``n_upcycled=0`` is the dense fine-tune.

The wide path (``wide=True``) is the large tier's hashed one (tiergate.models.large): a logistic regression over the
hashed word + character n-gram bag of the item's model text (headers included), fit first on the fit rows with
C chosen on the held-out slice's log loss, then frozen. The final Linear starts at zero, so training starts
exactly at the LR's probabilities and the fine-tuned encoder learns a correction on top of it; early stopping
keeps the LR when no correction beats it on the held-out slice. The LR's intercept lives in the wide path
(float32), not in the head, so bf16 autocast does not round it.

Only real tokens are routed: pad positions are dropped before the experts, so they neither cost expert FLOPs
nor count in the balance statistics. The experts run through :func:`tiergate.kernels.moe.moe_ffn` (Triton on a
GPU, its PyTorch reference on CPU).

>>> cfg = FinetuneConfig(bert=BertConfig(vocab_size=50, hidden=16, n_layers=2, n_heads=2, intermediate=32))
>>> model = FinetuneClassifier(cfg, n_classes=3)
>>> model({"ids": torch.tensor([[1, 5, 2]]), "attn": torch.ones(1, 3, dtype=torch.long)}).shape
torch.Size([1, 3])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass

import numpy as np
import torch
from torch import nn

from tiergate.data.items import Item
from tiergate.errors import ConfigError, ModelError
from tiergate.models.encoder import BertBlock, BertConfig, BertModel, HashedNgramConfig
from tiergate.models.moe import MoEConfig, MoEFFN
from tiergate.models.wide import VocabWideConfig
from tiergate.training.loop import TrainConfig

FORMAT_KIND = "tiergate-finetune"
FORMAT_VERSION = 1


def _default_train() -> TrainConfig:
    # BERT fine-tuning practice: AdamW at 5e-5, linear warm-up over ~6% of steps then linear decay, clip 1.0
    return TrainConfig(optimizer="adamw", lr=5e-5, weight_decay=0.01, batch_size=32, epochs=4.0,
                       warmup_frac=0.06, schedule="poly", clip_norm=1.0, eval_batch_size=64)


@dataclass
class FinetuneConfig:
    max_tokens: int = 256            # WordPiece tokens per item, [CLS] and [SEP] included (MiniLM: <= 512)
    read_headers: bool = False       # mail: read the header block before subject and body
    # with read_headers, how many tokens the header block may take: 0, the whole block first (so a long Received
    # chain leaves the body no room: artifacts before this setting); N > 0, the block without its trace fields
    # (tiergate.data.mail.without_trace_fields) cut to N tokens, more only where subject and body leave room
    header_tokens: int = 0
    n_upcycled: int = 2              # top blocks whose FFN becomes a mixture of experts (0: dense fine-tune)
    n_experts: int = 8               # E experts per upcycled block, each a copy of the dense FFN at init
    top_k: int = 2                   # experts per token; gates renormalised over the k (so init == dense)
    router_init_std: float = 1e-3    # small router: near-uniform routing at the start, no early collapse
    balance_coef: float = 0.01       # Switch load-balance loss weight
    z_coef: float = 1e-3             # ST-MoE router z-loss weight
    dropout: float = 0.1             # on the pooled vector, before the classifier
    head_lr_scale: float = 20.0      # classifier and routers learn at this multiple of train.lr (fresh weights)
    holdout_frac: float = 0.1        # stratified slice of train for early stopping (never calibration or test)
    # Cascade focus: each train row's loss (and the held-out loss that picks the best step) weighted 1 +
    # focus_weight x how unsure a word + char n-gram LR that did not see the row is of it (full weight at a top
    # probability of focus_below or less), so the model learns most where the cheaper tiers will send it items
    # (tiergate.models.wide.focus_weights). 0: every row weighs the same.
    focus_weight: float = 0.0
    focus_below: float = 0.99
    save_dtype: str = "float16"      # weights on disk (routers stay float32); serving upcasts to float32
    pretrained: bool = True          # start from MiniLM's weights (False: random init, for tests)
    wide: bool = False               # add a frozen LR over n-grams to the logits (head starts at 0; the presets
                                     # turn it on)
    wide_features: str = "hashed"    # hashed: over the hashed bag (WidePath) | vocab: word + char n-grams of a
    vocab: VocabWideConfig = field(default_factory=VocabWideConfig)  # fitted vocabulary (tiergate.models.wide)
    wide_C: list[float] = field(default_factory=lambda: [16.0])  # inverse L2 strengths tried (held-out loss picks)
    # the large tier's hashed bag: 2^17 hashed word 1-2-gram + char 3-5-gram buckets, each text's 2,048 heaviest
    bag: HashedNgramConfig = field(default_factory=lambda: HashedNgramConfig(n_buckets=2 ** 17, max_per_text=2048))
    bert: BertConfig = field(default_factory=BertConfig)
    train: TrainConfig = field(default_factory=_default_train)


def finetune_preset(name: str = "finetune") -> FinetuneConfig:
    """Named presets: ``finetune`` (top 2 blocks upcycled) and ``finetune-dense`` (n_upcycled=0), both with the
    wide path over word + char n-grams of a fitted vocabulary (the quick preset's ``VocabWide``, C = 32); a
    ``-nowide`` suffix drops it (``finetune-nowide``, ``finetune-dense-nowide``: the ablation), a ``-hashed``
    suffix puts the LR over the hashed n-gram bag in its place. ``finetune-ensemble`` (see
    :data:`ENSEMBLE_MEMBERS` and tiergate.models.ensemble) is trained by ``train_finetune`` as two of these.

    Measured on the H200 (test split, errors of the final tier alone; docs/benchmarks.md, "The fine-tuned large
    tier"): without a wide path -> the hashed LR -> the fitted vocabulary: debian-packages 1025 -> 899 -> 884
    (small tier 1054), five groups at 512 tokens with headers and 8 epochs 21 -> 17 -> mean 14.3 over six runs
    (small tier 17; finetune-dense: mean 12.3 over three). On spamassassin the hashed path made 10 errors and the
    vocabulary path 12 (two runs) against the small tier's 11."""
    if name.endswith("-nowide"):
        base, extra = name[: -len("-nowide")], {"wide": False}
    elif name.endswith("-hashed"):  # the hashed n-gram bag's LR (C = 16), the ensemble's second member
        base, extra = name[: -len("-hashed")], {"wide": True, "wide_features": "hashed"}
    else:
        base, extra = name, {"wide": True, "wide_features": "vocab", "wide_C": [32.0]}
    if base == "finetune":
        return FinetuneConfig(**extra)
    if base == "finetune-dense":
        return FinetuneConfig(n_upcycled=0, **extra)
    raise ConfigError(f"unknown finetune preset {name!r}: use finetune, finetune-dense (each optionally with "
                      "-nowide or -hashed) or finetune-ensemble")


# finetune-ensemble: (member preset, seed offset, its KEY=VALUE overrides) per member, averaged with equal weights.
# Different recipes on purpose: their errors overlap least (docs/benchmarks.md, "The spread across seeds"). Member
# 0 weighs the train rows an unseen n-gram LR doubts (the cascade focus): on spamassassin, five ensembles trained
# end to end on an H100 made 9.6 test errors and 79.4% on the 35 mails the small tier escalates, against 10.4 and
# 77.1% over seven runs with member 0 unweighted (docs/benchmarks.md, "The cascade focus").
ENSEMBLE_MEMBERS = (("finetune", 0, ("focus_weight=8",)), ("finetune-dense-hashed", 1, ()))


def config_to_dict(cfg: FinetuneConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> FinetuneConfig:
    """Rebuild a FinetuneConfig from JSON; an unknown key is a ModelError (a foreign or newer file)."""
    subs = {"bert": BertConfig, "train": TrainConfig, "bag": HashedNgramConfig, "vocab": VocabWideConfig}

    def build(cls, data: dict):
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ModelError(f"config.json has unknown keys {sorted(unknown)} for {cls.__name__}")
        return cls(**{k: build(subs[k], v) if cls is FinetuneConfig and k in subs else v for k, v in data.items()})
    return build(FinetuneConfig, d)


# The recipe docs/benchmarks.md measured the fine-tuned tier with on mail (the header block read, up to 512
# tokens, 8 epochs at lr 1e-4), as ``--set`` overrides of a preset: ``tiergate train large --preset finetune-ensemble
# --set read_headers=true --set max_tokens=512 --set train.epochs=8 --set train.lr=1e-4``.
MAIL_RECIPE = ("read_headers=true", "max_tokens=512", "train.epochs=8", "train.lr=1e-4")


def with_overrides(cfg: FinetuneConfig, overrides) -> FinetuneConfig:
    """``cfg`` with each ``KEY=VALUE`` of ``overrides`` applied (a copy; ``cfg`` is not changed). KEY names a
    field, dotted into a nested config (``max_tokens``, ``train.lr``, ``vocab.word_features``); VALUE is read as
    JSON (``true``, ``512``, ``1e-4``, ``[16.0]``; anything else as a string) and must have the field's type (an
    int is taken where a float is expected). A malformed pair, an unknown key or a value of the wrong type is a
    ConfigError naming the keys that exist; so is a setting out of its range (the cascade focus's)."""
    import json

    out = config_from_dict(config_to_dict(cfg))
    for pair in overrides:
        key, eq, raw = str(pair).partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, for example max_tokens=512 or train.lr=1e-4")
        *path, leaf = key.split(".")
        target = out
        for part in path:
            sub = getattr(target, part, None)
            if not is_dataclass(sub):
                raise ConfigError(f"override {key}: {part!r} is not a nested config of the fine-tuned model "
                                  f"(nested: {', '.join(_nested(target))})")
            target = sub
        settings = [f.name for f in fields(target) if not is_dataclass(getattr(target, f.name))]
        if leaf not in settings:
            raise ConfigError(f"override {key}: no such setting; {'.'.join(path) or 'the model'} has "
                              f"{', '.join(settings)}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        current = getattr(target, leaf)
        if isinstance(current, bool) or isinstance(value, bool):
            ok = isinstance(current, bool) and isinstance(value, bool)
        elif isinstance(current, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        elif current is None:
            ok = True
        else:
            ok = isinstance(value, type(current))
        if not ok:
            raise ConfigError(f"override {key}={raw}: expected {type(current).__name__} (now {current!r})")
        setattr(target, leaf, value)
    if out.header_tokens < 0:
        raise ConfigError(f"header_tokens must be >= 0 (got {out.header_tokens}; 0 reads the whole header block)")
    if out.focus_weight < 0 or not 0.0 < out.focus_below < 1.0:
        raise ConfigError(f"focus_weight must be >= 0 (got {out.focus_weight}) and focus_below strictly between "
                          f"0 and 1 (got {out.focus_below})")
    return out


def _nested(cfg) -> list[str]:
    return [f.name for f in fields(cfg) if is_dataclass(getattr(cfg, f.name))]


def item_text(item: Item, read_headers: bool = False) -> str:
    """What the encoder reads: for mail the subject and the decoded body (headers first if asked); else the text."""
    if not item.is_mail:
        return item.model_text
    parts = [item.fields.get("headers", "")] if read_headers else []
    parts += [item.fields.get("subject", ""), item.fields.get("body", "")]
    return "\n".join(p for p in parts if p).strip() or item.model_text


# ---------------------------------------------------------------------------------------------- model
class UpcycledBlock(BertBlock):
    """A BERT block whose feed-forward layer is a top-k mixture of experts over the block's real tokens."""

    def __init__(self, bert: BertConfig, cfg: FinetuneConfig):
        super().__init__(bert)
        del self.ff_in, self.ff_out
        # The balance and z weights are applied in FinetuneClassifier.aux_loss (from the unweighted self.aux).
        self.moe = MoEFFN(MoEConfig(d_model=bert.hidden, d_hidden=bert.intermediate, n_experts=cfg.n_experts,
                                    top_k=cfg.top_k, activation="gelu", bias=True))
        nn.init.normal_(self.moe.router.weight, std=cfg.router_init_std)
        self.aux = None  # the last forward's MoEAux (balance loss, z-loss, counts)

    @torch.no_grad()
    def copy_dense_(self, dense: BertBlock) -> None:
        """Take attention and norms from ``dense`` and make every expert a copy of its FFN."""
        own = self.state_dict()
        for k, v in dense.state_dict().items():
            if k in own:
                own[k].copy_(v)
        self.moe.w1.copy_(dense.ff_in.weight.t().expand_as(self.moe.w1))  # (E, D, H)
        self.moe.b1.copy_(dense.ff_in.bias.expand_as(self.moe.b1))
        self.moe.w2.copy_(dense.ff_out.weight.t().expand_as(self.moe.w2))  # (E, H, D)
        self.moe.b2.copy_(dense.ff_out.bias.expand_as(self.moe.b2))

    def forward(self, x_BTD: torch.Tensor, mask_B11T: torch.Tensor) -> torch.Tensor:
        x_BTD = self.attend(x_BTD, mask_B11T)
        keep_BT = mask_B11T[:, 0, 0, :] == 0  # BertModel's additive mask: 0 on real tokens
        y_ND = self.moe(x_BTD[keep_BT])  # (N real tokens, D)
        self.aux = self.moe.aux
        ffn_BTD = torch.zeros_like(x_BTD).index_put_((keep_BT,), y_ND.to(x_BTD.dtype))
        return self.ln2(x_BTD + ffn_BTD)


class WidePath(nn.Module):
    """A linear model over the hashed n-gram bag: ``forward(batch) -> logits (B, C)``, float32.

    Holds the bag's idf too (a buffer), so the artifact's hash covers the featurizer that serving rebuilds.
    Frozen once :meth:`set_` has copied a fitted logistic regression in."""

    def __init__(self, n_buckets: int, n_classes: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(n_buckets, n_classes, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("idf", torch.ones(n_buckets))

    @torch.no_grad()
    def set_(self, w_FC: np.ndarray, b_C: np.ndarray, idf_F: np.ndarray) -> None:
        self.bag.weight.copy_(torch.from_numpy(np.ascontiguousarray(w_FC, np.float32)))
        self.bias.copy_(torch.from_numpy(np.asarray(b_C, np.float32)))
        self.idf.copy_(torch.from_numpy(np.asarray(idf_F, np.float32)))
        self.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.bag(batch["bag_ids"], batch["bag_offsets"], per_sample_weights=batch["bag_weights"].float())
        return w.float() + self.bias  # (B, C)


class FinetuneClassifier(nn.Module):
    """MiniLM (optionally upcycled) -> mean pool -> dropout -> linear [+ wide LR]. ``forward(batch) -> logits (B, C)``.

    With ``cfg.wide`` the batch also carries the n-gram bag (``bag_ids``, ``bag_offsets``, ``bag_weights``) and
    the final Linear starts at zero: call :meth:`set_wide` with the fitted LR before training."""

    def __init__(self, cfg: FinetuneConfig, n_classes: int, init: dict[str, torch.Tensor] | None = None):
        super().__init__()
        if not 0 <= cfg.n_upcycled <= cfg.bert.n_layers:
            raise ConfigError(f"n_upcycled={cfg.n_upcycled}: use 0 .. {cfg.bert.n_layers} (the encoder's blocks)")
        if not 1 <= cfg.top_k <= cfg.n_experts:
            raise ConfigError(f"top_k={cfg.top_k}: use 1 .. n_experts ({cfg.n_experts})")
        self.cfg = cfg
        self.encoder = BertModel(cfg.bert)
        if init is not None:  # pretrained weights (Hugging Face names) go into the dense model first
            self.encoder.load_hf_state(init)
        first = cfg.bert.n_layers - cfg.n_upcycled
        for i in range(first, cfg.bert.n_layers):
            up = UpcycledBlock(cfg.bert, cfg)
            up.copy_dense_(self.encoder.blocks[i])
            self.encoder.blocks[i] = up
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.bert.hidden, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.wide = None
        # vocab: the LR runs outside torch (tiergate.models.wide.VocabWide) and its logits come in the batch
        self.wide_input = cfg.wide and cfg.wide_features == "vocab"
        if cfg.wide and cfg.wide_features not in ("hashed", "vocab"):
            raise ConfigError(f"wide_features {cfg.wide_features!r}: use hashed or vocab")
        if cfg.wide and not self.wide_input:
            self.wide = WidePath(cfg.bag.n_buckets, n_classes)
        if cfg.wide:
            nn.init.zeros_(self.head.weight)  # zero output at init: the model starts as the wide LR

    def set_wide(self, w_FC: np.ndarray, b_C: np.ndarray, idf_F: np.ndarray) -> None:
        """Copy in a fitted LR (weights (F, C), intercept (C,)) and the bag's idf (F,), and freeze them."""
        if self.wide is None:
            raise ConfigError("set_wide needs a model built with wide=True")
        self.wide.set_(w_FC, b_C, idf_F)

    def upcycled(self) -> list[UpcycledBlock]:
        return [b for b in self.encoder.blocks if isinstance(b, UpcycledBlock)]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled_BD = self.encoder(batch["ids"], batch["attn"])
        logits_BC = self.head(self.drop(pooled_BD))
        if self.wide is not None:
            logits_BC = logits_BC.float() + self.wide(batch)
        if self.wide_input:
            logits_BC = logits_BC.float() + batch["wide_logits"].float()
        return logits_BC  # (B, C)

    def aux_loss(self) -> torch.Tensor:
        """Balance and z losses of the last forward, weighted; the training loop adds it to the cross-entropy."""
        terms = [self.cfg.balance_coef * b.aux.balance_loss + self.cfg.z_coef * b.aux.z_loss
                 for b in self.upcycled() if b.aux is not None]
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    def lr_scale(self, name: str) -> float:
        """Fresh weights (classifier, routers) learn faster than pretrained ones (read by optim.param_groups)."""
        return self.cfg.head_lr_scale if name.startswith("head.") or ".router." in name else 1.0

    def active_params_per_token(self) -> int:
        """Parameters one token passes through (experts counted top_k times, routers once; the wide path, which
        reads n-grams rather than tokens, not counted)."""
        n = 0
        for name, p in self.named_parameters():
            if name.startswith("wide."):
                continue
            if name.startswith("encoder.tok.") or name.startswith("encoder.pos.") or name.startswith("encoder.typ."):
                n += p.shape[-1]  # one row of each embedding table
            elif ".moe." in name and "router" not in name:
                n += p.numel() // self.cfg.n_experts * self.cfg.top_k
            else:
                n += p.numel()
        return n


def expert_counts(model: FinetuneClassifier) -> list[list[float]]:
    """Share of the last batch's assignments per expert, per upcycled block (balance diagnostics)."""
    out = []
    for b in model.upcycled():
        if b.aux is not None:
            c = b.aux.counts_E.float().cpu()
            out.append((c / c.sum().clamp_min(1)).tolist())
    return out

