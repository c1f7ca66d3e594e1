"""Encoders: the hand-written MiniLM forward gives sentence embeddings that behave like MiniLM's, and the
hashed n-gram bag is a deterministic, normalised TF-IDF vector."""

from __future__ import annotations

import numpy as np
import pytest

from tiergate.errors import ModelError
from tiergate.models.encoder import HashedNgramConfig, HashedNgrams, MiniLMEncoder


@pytest.fixture(scope="module")
def enc():
    try:
        return MiniLMEncoder.from_package(max_tokens=32, max_chunks=3, dtype="float32")
    except ModelError as e:
        pytest.skip(str(e))


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_embeddings_are_semantic(enc):
    e = enc.encode(["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                    "The stock market fell sharply today."])
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert _cos(e[0], e[1]) > 0.6 > _cos(e[0], e[2]) + 0.3


def test_order_and_batching_do_not_change_embeddings(enc):
    texts = ["short", "a somewhat longer sentence about packages and libraries", "mid length text here"]
    a = enc.encode(texts)
    b = enc.encode(texts[::-1])[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts[1:2]), a[1:2], atol=1e-5)


def test_long_text_is_read_in_chunks(enc):
    head = "free money offer click now " * 8  # 40 tokens: fills the first 32-token chunk
    long = head + "the quarterly report of the kernel maintainers " * 20
    one = MiniLMEncoder(enc.model, enc.tokenizer, max_tokens=32, max_chunks=1)
    assert _cos(one.encode([long])[0], one.encode([head])[0]) > 0.95  # only the first chunk is read
    assert _cos(enc.encode([long])[0], one.encode([long])[0]) < 0.95   # later chunks change the embedding
    assert enc.encode([]).shape == (0, 384)


def test_bfloat16_matches_float32(enc):
    bf = MiniLMEncoder.from_package(max_tokens=32, max_chunks=3, dtype="bfloat16")
    texts = ["Subject: meeting tomorrow\n\nLet us meet at ten.", "libc6\nGNU C Library: Shared libraries"]
    for a, b in zip(enc.encode(texts), bf.encode(texts), strict=True):
        assert _cos(a, b) > 0.999


def test_bfloat16_embedding_does_not_depend_on_batch_mates():
    """The default encoder answers an item the same, bit for bit, alone or among others (the cascade sends the
    large tier only the escalated items, so "alone" and "in the cascade" must agree)."""
    try:
        bf = MiniLMEncoder.from_package(max_tokens=32, max_chunks=2, dtype="bfloat16")
    except ModelError as e:
        pytest.skip(str(e))
    texts = ["Subject: cheap meds\n\nbuy now " * 3, "libc6\nGNU C Library", "a b c d e f g h i j k l " * 6,
             "one", "Subject: lunch?\n\nare you free at noon on Friday, or later?"]
    together = bf.encode(texts)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(bf.encode([t])[0], together[i])
    np.testing.assert_array_equal(bf.encode(texts[::-1])[::-1], together)


def test_hashed_bag_is_normalised_and_deterministic():
    texts = ["the cat sat on the mat", "dogs and cats", "x"]
    h = HashedNgrams(HashedNgramConfig(n_buckets=1024, max_per_text=64)).fit(texts)
    ids, offsets, w = h.transform(texts)
    ids2, offsets2, w2 = HashedNgrams(HashedNgramConfig(n_buckets=1024, max_per_text=64)).fit(texts).transform(texts)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(w, w2)
    assert ids.max() < 1024 and offsets[0] == 0
    bounds = list(offsets) + [len(ids)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:  # words and characters each hold half of a unit norm
            assert abs(np.linalg.norm(w[a:b]) - 1.0) < 1e-5
    assert len(ids[bounds[0]:bounds[1]]) <= 64


def test_transform_before_fit_raises():
    with pytest.raises(ModelError):
        HashedNgrams().transform(["a b"])


def test_hashed_bag_word_cache_changes_nothing_and_stays_bounded():
    texts = ["the cat sat on the mat", "the dog sat on the log", "cats and dogs and mats"] * 3
    fresh = HashedNgrams(HashedNgramConfig(n_buckets=4096)).counts(texts)
    small = HashedNgrams(HashedNgramConfig(n_buckets=4096))
    small._CACHE_MAX = 4  # forces clears while featurising
    assert small.counts(texts) == fresh
    assert len(small._char_cache) <= 4
    other = HashedNgrams(HashedNgramConfig(n_buckets=1024))  # the cache is per instance: bucket count matters
    assert max(k for _, cc in other.counts(texts) for k in cc) < 1024


def test_hashed_bag_does_not_depend_on_the_process_hash_salt():
    """The bag's ids, their order and the top-k cut are the same in processes with different string-hash salts
    (a set iterated in salt order once made the large tier's training differ from run to run)."""
    import subprocess
    import sys

    prog = ("import hashlib\n"
            "from tiergate.models.encoder import HashedNgramConfig, HashedNgrams\n"
            "t = ['zeta alpha beta gamma delta epsilon eta theta iota kappa lambda mu nu xi omicron pi rho'] * 2\n"
            "h = HashedNgrams(HashedNgramConfig(n_buckets=4096, max_per_text=16)).fit(t)\n"
            "ids, off, w = h.transform(t)\n"
            "print(hashlib.sha256(ids.tobytes() + w.tobytes()).hexdigest())\n")
    outs = set()
    for salt in ("1", "2", "3"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": salt}
        outs.add(subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert len(outs) == 1
