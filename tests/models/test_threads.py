"""The thread policy of the model tiers (tiergate.models.threads): what it sets, what it leaves alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiergate.errors import ConfigError
from tiergate.models import threads
from tiergate.models.small import session_options


def test_auto_is_one_thread_and_a_count_is_capped_at_the_usable_cpus(monkeypatch):
    monkeypatch.delenv("TIERGATE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))
    assert threads.torch_threads() == 1
    monkeypatch.setenv("TIERGATE_THREADS", "64")
    assert threads.torch_threads() == min(64, threads.usable_cpus())
    monkeypatch.setenv("TIERGATE_THREADS", "library")
    assert threads.torch_threads() is None
    monkeypatch.setenv("TIERGATE_THREADS", "many")
    with pytest.raises(ConfigError, match="TIERGATE_THREADS"):
        threads.torch_threads()


def test_an_operators_choice_wins(monkeypatch):
    monkeypatch.delenv("TIERGATE_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.torch_threads() is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_onnxruntime_pools_do_not_spin_unless_library(monkeypatch):
    monkeypatch.delenv("TIERGATE_THREADS", raising=False)
    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("TIERGATE_THREADS", "library")
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own type for a missing entry
        session_options(2).get_session_config_entry("session.intra_op.allow_spinning")


@pytest.mark.parametrize("setting", [None, "library"])
def test_a_fresh_process_sets_the_wait_policy_before_torch_loads(setting):
    # libgomp reads OMP_WAIT_POLICY once, when torch loads: importing the encoder must have set it by then
    code = ("import json, os, sys; import tiergate.models.encoder as e; assert 'torch' in sys.modules; "
            "import torch; e.configure_torch(); "
            "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads()]))")
    drop = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TIERGATE_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop} | ({"TIERGATE_THREADS": setting} if setting else {})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    policy, n = json.loads(out.stdout)
    if setting == "library":
        assert policy is None  # torch keeps its own thread count too
    else:
        assert (policy, n) == ("PASSIVE", 1)
