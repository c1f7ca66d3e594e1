"""Compute-optimal sizing: fit L(N, D) = E + A / N^alpha + B / D^beta on our own runs, read N_opt(C) off it.

Units for our classifier: ``N`` is the number of parameters a row *activates* (the head's dense and active
expert weights plus the bag rows it reads: ``nnz * d_model``), ``D`` the number of training rows seen
(row-passes), and ``C = 6 N D`` training FLOPs (forward 2ND, backward 4ND, as in Chinchilla). Chinchilla's
coefficients do not transfer to another task; the method does (BRIEF §3). A default fit from the project's
own sweep ships as ``default_fit.json`` so ``tiergate plan --compute-flops C`` works on a clean checkout.

>>> fit = Fit(E=0.3, A=50.0, B=200.0, alpha=0.5, beta=0.5)
>>> n, d = fit.optimum(1e12); round(6 * n * d / 1e12, 6)
1.0
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from tiergate.errors import ConfigError


@dataclass
class Fit:
    E: float            # irreducible loss
    A: float            # model-size term coefficient
    B: float            # data term coefficient
    alpha: float        # model-size exponent
    beta: float         # data exponent
    source: str = ""    # where the fit came from (the sweep, its data set and date)
    meta: dict = field(default_factory=dict)

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimum(self, compute_flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L on the iso-FLOP line 6 N D = C.

        Closed form (Hoffmann et al. 2022, eq. 4): N_opt = G (C/6)^(beta/(alpha+beta)), with
        G = (alpha A / (beta B))^(1/(alpha+beta)); D_opt = C / (6 N_opt).
        """
        if compute_flops <= 0:
            raise ConfigError(f"compute budget {compute_flops}: give a positive number of FLOPs")
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        n = G * (compute_flops / 6.0) ** (b / (a + b))
        return float(n), float(compute_flops / (6.0 * n))


def default_fit() -> Fit:
    doc = json.loads(resources.files("tiergate.training").joinpath("default_fit.json").read_text())
    return Fit(**doc)


def load_fit(path) -> Fit:
    try:
        return Fit(**json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{path}: not a fit file ({e}); make one with `tiergate plan fit`") from e


def fit_runs(runs: list[dict], *, source: str = "") -> Fit:
    """Fit (E, A, B, alpha, beta) to runs ``{"n_params", "n_tokens", "loss"}`` by least squares on the
    log-loss with a Huber loss (as Chinchilla's approach 3), from a small grid of initialisations."""
    from scipy.optimize import least_squares

    if len(runs) < 5:
        raise ConfigError(f"a fit of 5 coefficients needs at least 5 runs (got {len(runs)})")
    N = np.array([r["n_params"] for r in runs], float)
    D = np.array([r["n_tokens"] for r in runs], float)
    L = np.array([r["loss"] for r in runs], float)

    def resid(p):
        e, log_a, log_b, al, be = p
        pred = np.exp(e) + np.exp(log_a - al * np.log(N)) + np.exp(log_b - be * np.log(D))
        return np.log(pred) - np.log(L)

    best = None
    for e0 in (np.log(max(L.min() * 0.5, 1e-3)), np.log(max(L.min() * 0.9, 1e-3))):
        for al0 in (0.2, 0.5):
            for be0 in (0.2, 0.5):
                p0 = [e0, np.log(L.max()) + al0 * np.log(N.min()), np.log(L.max()) + be0 * np.log(D.min()), al0, be0]
                r = least_squares(resid, p0, loss="huber", f_scale=1e-3,
                                  bounds=([-10, -20, -20, 0.01, 0.01], [5, 60, 60, 2.0, 2.0]))
                if best is None or r.cost < best.cost:
                    best = r
    e, log_a, log_b, al, be = best.x
    rmse = float(np.sqrt(np.mean(resid(best.x) ** 2)))
    return Fit(E=float(np.exp(e)), A=float(np.exp(log_a)), B=float(np.exp(log_b)), alpha=float(al), beta=float(be),
               source=source, meta={"n_runs": len(runs), "rmse_log_loss": rmse})


def plan(compute_flops: float, fit: Fit | None = None) -> dict:
    """What ``tiergate plan --compute-flops C --json`` prints."""
    fit = fit or default_fit()
    n, d = fit.optimum(compute_flops)
    return {"compute_flops": compute_flops, "n_params": int(round(n)), "n_tokens": int(round(d)),
            "tokens_per_param": d / n, "predicted_loss": float(fit.loss(n, d)), "fit": asdict(fit)}
