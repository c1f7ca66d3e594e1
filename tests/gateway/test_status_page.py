"""``GET /status`` under traffic: inline SVG plots from the gateway's own recent metrics, rendered by a real
headless Chromium into a PNG that is not blank. With TIERGATE_SCREENSHOT_OUT set, the screenshot is also kept
there (docs/img/status.png is made this way)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import running_server
from tests.deploy.conftest import need
from tests.gateway.conftest import HAM, LOTTERY
from tiergate.gateway.app import create_app
from tiergate.gateway.history import quantile
from tiergate.gateway.status import svg_chart


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    return need("chromium")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_status_page_has_plots_and_renders_in_a_real_browser(calibrated_config, tmp_path):
    import yaml

    cfg = yaml.safe_load(calibrated_config.read_text())
    cfg["metrics"] = {"status_sample_s": 0.3}
    cfg["shadow_audit"] = {"share": 0.05}  # as in production: a few audits, not every item
    config = calibrated_config.with_name("status-page.yaml")
    config.write_text(yaml.safe_dump(cfg))
    with running_server(create_app(config)) as base:
        stop = threading.Event()

        def traffic():
            with httpx.Client(base_url=base, timeout=30) as c:
                while not stop.is_set():
                    c.post("/v1/classify", json={"texts": [HAM, LOTTERY, "hello", "Subject: re: lunch\n\nok"]})
                    time.sleep(0.02)

        t = threading.Thread(target=traffic)
        t.start()
        try:  # the traffic stops before the server does, whatever happens here
            time.sleep(4)  # a dozen points per plot
            page = httpx.get(base + "/status", timeout=30)
            shot = tmp_path / "status.png"
            r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--screenshot={shot}", "--window-size=1280,1400", base + "/status"],
                               capture_output=True, text=True, timeout=120)
        finally:
            stop.set()
            t.join(30)
    assert page.status_code == 200
    html = page.text
    assert html.count("<svg") == 3 and html.count("<polyline") >= 4, "money, tier mix (live and calibrated), latency"
    assert "waiting for traffic" not in html
    assert re.search(r"saved since start \(-?\d+\.\d% of the all-to-final-tier cost\)", html)
    assert "src=" not in html and "<script" not in html, "no external assets, no script"
    assert "rules version" in html and "Recent escalations" in html and "&rarr;" not in html
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert not_white > 0.02 and pixels.std() > 0.05, f"a blank screenshot ({not_white:.3%} of pixels drawn)"
    colours = {tuple(c) for c in (pixels[::7, ::7] * 255).round().astype(int).reshape(-1, 3)}
    assert len(colours) > 20, "the plots' colours are on the page"
    if os.environ.get("TIERGATE_SCREENSHOT_OUT"):
        shutil.copy(shot, os.environ["TIERGATE_SCREENSHOT_OUT"])


def test_a_chart_with_too_few_points_says_it_waits_and_one_with_points_draws_them():
    assert "waiting for traffic" in svg_chart("x", [("a", [(0.0, 1.0)], "#000", False)])
    svg = svg_chart("x", [("a", [(0.0, 1.0), (60.0, 2.0)], "#000", False), ("b", [(0.0, 0.5), (60.0, 0.5)], "#111", True)],
                    "%")
    assert svg.count("<polyline") == 2 and 'stroke-dasharray' in svg and "-1 min" in svg and "200.0%" in svg


def test_quantiles_from_cumulative_buckets_interpolate_like_histogram_quantile():
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert quantile(buckets, 0.99) == pytest.approx(0.5 + 0.5 * 0.9)
    assert quantile({1.0: 0.0, float("inf"): 0.0}, 0.5) is None
    assert np.isfinite(quantile({0.1: 0.0, float("inf"): 10.0}, 0.5))
