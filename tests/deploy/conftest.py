"""Real services for the deploy/ tests: Prometheus (Debian's package) on loopback. CI installs it
(.ci/run) and sets TIERGATE_REQUIRE_SERVICES=1, so there a missing binary fails the test instead of
skipping it."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.gateway.conftest import calibrated_config, labelled_data, serving_dir  # noqa: F401 - shared fixtures


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("TIERGATE_REQUIRE_SERVICES"):
            pytest.fail(f"{binary} is not installed, and TIERGATE_REQUIRE_SERVICES says it must be (.ci/run installs it)")
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")
    return path
