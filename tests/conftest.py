"""Shared fixtures: real data, real artifacts (small ONNX tiers fitted on a few hundred real rows), real
servers on loopback. No mocks of tiergate's own components."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from tiergate.config import CostConfig, Thresholds, TierConfig, TiergateConfig, save_config
from tiergate.data import load_dataset, make_item
from tiergate.models.small import SmallConfig, train_small


def spam_sample(n: int, seed: int, split: str = "train") -> list:
    """``n`` rows drawn without replacement from the cached spamassassin ``split`` (skips the test when the
    corpus is not cached: `tiergate data fetch spamassassin`)."""
    import numpy as np

    try:
        ds = load_dataset("spamassassin", fetch=False)
    except Exception as e:  # noqa: BLE001 - whatever the loader says, the test cannot run without the corpus
        pytest.skip(f"spamassassin is not cached: {e}")
    rows = ds.split(split)
    return [rows[i] for i in np.random.default_rng(seed).choice(len(rows), n, replace=False)]


@pytest.fixture(scope="session")
def spam_ds():
    return load_dataset("spamassassin")


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, spam_ds) -> Path:
    """A two-tier cascade (word TF-IDF tier, then a char n-gram tier as the final one) trained on 600 real
    messages, with hand-set costs (the final tier 20x the first) and a threshold of 0.9."""
    d = tmp_path_factory.mktemp("cascade")
    train = spam_ds.split("train")[::7]  # every 7th: both labels, ~640 messages
    texts = [make_item(e.text).model_text for e in train]
    labels = [e.label for e in train]
    train_small(texts, labels, d / "small", SmallConfig(max_features=5000))
    train_small(texts, labels, d / "final", SmallConfig(analyzer="char_wb", ngram_min=3, ngram_max=4, max_features=8000))
    cfg = TiergateConfig(dataset="spamassassin", labels=["ham", "spam"], tiers=[
        TierConfig(name="small", kind="onnx", path="small", threshold=Thresholds(default=0.9),
                   cost=CostConfig(seconds_per_item=0.001, usd_per_hour=0.09)),
        TierConfig(name="final", kind="onnx", path="final",
                   cost=CostConfig(seconds_per_item=0.02, usd_per_hour=0.09)),
    ])
    save_config(cfg, d / "tiergate.yaml")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, timeout: float = 60.0, ready_path: str = "/readyz"):
    """Serve ``app`` with a real uvicorn server on 127.0.0.1 in a thread, once ``ready_path`` answers 200;
    yields the base URL."""
    import httpx
    import uvicorn

    port = free_port()
    from tiergate.config import ServerConfig
    from tiergate.gateway.protocol import http_protocol

    # The HTTP protocol and event loop `tiergate serve` runs (it stamps when each request was read, for admission).
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http=http_protocol(), loop=ServerConfig().event_loop))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(base + ready_path, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not thread.is_alive():
            raise RuntimeError("server thread died during start-up")
        time.sleep(0.1)
    else:
        server.should_exit = True
        raise RuntimeError("server not ready in time")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


from tests.postgres_server import fresh_postgres, postgres_url  # noqa: E402,F401 - a real PostgreSQL, for any test
