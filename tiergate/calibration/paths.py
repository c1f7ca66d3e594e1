"""Ordered grids of candidate settings, from the most conservative to the least, for fixed-sequence testing.

Fixed-sequence testing is valid for any order fixed *before* the items it tests are seen. Two orders:

* :func:`shared_path`: every model tier uses one threshold for every class, lowered step by step down a fixed
  grid. It looks at no data at all, so every calibration item can be spent on testing.
* :func:`greedy_path`: thresholds per (tier, class), lowered one at a time, each step taking the move that saves
  the most cost per unit of added risk *on a separate selection part* of the calibration data. Per-class
  thresholds matter where some classes are easy and others are not (58 Debian sections), but the order is
  learnt, so the items it was learnt on cannot also test it.

Both start from :func:`start_setting` (rules as configured, model tiers off) and return a list of (T, C)
threshold matrices; item 0 is that start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tiergate.calibration.replay import NEVER, Scored

# Descending: 1.01 (off), then ever finer steps towards 1 (confident tiers live there), then a plain
# 0.01-step grid, since a multiclass tier's top probability can be low and still usually right.
GRID = np.unique(np.concatenate([
    [NEVER],
    1 - 10.0 ** -np.arange(6.0, 1.0, -0.125),
    np.round(np.arange(0.9, 0.0, -0.01), 2),
]))[::-1]

LossFn = Callable[[np.ndarray], np.ndarray]  # predicted label indices (N,) -> loss per item (N,) in {0, 1}


def start_setting(base_TC: np.ndarray, movable: Sequence[int]) -> np.ndarray:
    thr = base_TC.copy()
    thr[list(movable)] = NEVER
    return thr


def shared_path(base_TC: np.ndarray, movable: Sequence[int], grid: np.ndarray = GRID) -> list[np.ndarray]:
    """One threshold for every movable tier and class, down ``grid``."""
    path = []
    for t in grid:
        thr = base_TC.copy()
        thr[list(movable)] = t
        path.append(thr)
    return path


def greedy_path(sel: Scored, base_TC: np.ndarray, movable: Sequence[int], loss_of: LossFn, n_counted: int, *,
                grid: np.ndarray = GRID, stop_risk: float = 1.0, prior: float = 1.0,
                max_steps: int = 20_000) -> list[np.ndarray]:
    """Lower (tier, class) thresholds one grid step at a time, best saving per added loss first, on ``sel``.

    ``loss_of`` gives each item's loss for a vector of predicted labels (zero on items the risk does not
    count; ``n_counted`` items count). A move's score is saved cost / (added losses + ``prior``): the prior keeps a move with no loss
    but a tiny saving from outranking a large saving with one loss. Stops when the selection part's risk
    passes ``stop_risk`` or no move changes anything."""
    C = len(sel.labels)
    thr = start_setting(base_TC, movable)
    level = {(i, c): 0 for i in movable for c in range(C)}
    r = sel.route(thr)
    # Per-item state: the cost paid, the loss, and which tiers the item reaches.
    cost_N = r.cost_N.copy()
    loss_N = loss_of(r.pred_N).astype(np.float64)
    n_counted = max(1, n_counted)
    reach_TN = _reach(sel, thr)
    # Cost an item has paid once tier i has looked at it (valid while it still reaches tier i: moves only
    # ever cut the tiers after the one that now decides).
    upto_TN = np.cumsum(reach_TN * sel.cost_T[:, None], axis=0)
    own_loss = {i: loss_of(sel.label_TN[i]).astype(np.float64) for i in movable}
    path = [thr.copy()]
    cache: dict[tuple[int, int], tuple[float, int, np.ndarray] | None] = {}

    def candidate(i: int, c: int):
        # Look down every lower level of this (tier, class) and take the one with the best ratio over the
        # whole step: one grid step at a time is myopic (near 1 the grid is fine, and a step then moves a
        # handful of items, so a coarse step lower down with a loss in it would always look better).
        cur = grid[level[(i, c)]]
        pool = reach_TN[i] & (sel.label_TN[i] == c) & (sel.jump_TN[i] < 0) & (sel.conf_TN[i] < cur)
        if not pool.any():
            return None
        idx = np.flatnonzero(pool)
        lvl = np.searchsorted(-grid, -sel.conf_TN[i][idx], side="left")  # first level whose value <= conf
        keep = lvl < len(grid)
        idx, lvl = idx[keep], lvl[keep]
        if not len(idx):
            return None
        saved_L = np.bincount(lvl, weights=cost_N[idx] - upto_TN[i][idx], minlength=len(grid)).cumsum()
        added_L = np.bincount(lvl, weights=own_loss[i][idx] - loss_N[idx], minlength=len(grid)).cumsum()
        score_L = saved_L / (np.maximum(added_L, 0.0) + prior)
        score_L[: level[(i, c)] + 1] = -np.inf
        nxt = int(np.argmax(score_L))
        if not np.isfinite(score_L[nxt]):
            return None
        moved = pool & (sel.conf_TN[i] >= grid[nxt])
        return float(score_L[nxt]), nxt, moved

    for _ in range(max_steps):
        best = None
        for key in level:
            if key not in cache:
                cache[key] = candidate(*key)
            cand = cache[key]
            if cand is not None and (best is None or cand[0] > best[1][0]):
                best = (key, cand)
        if best is None:
            break
        (i, c), (_, nxt, moved) = best
        level[(i, c)] = nxt
        thr[i, c] = grid[nxt]
        cost_N[moved] = upto_TN[i][moved]
        loss_N[moved] = own_loss[i][moved]
        reach_TN[i + 1 :, moved] = False
        path.append(thr.copy())
        # A move at tier i changes who reaches later tiers: their candidates are stale, as is this one.
        for key in list(cache):
            if key[0] > i or key == (i, c):
                del cache[key]
        if loss_N.sum() / n_counted > stop_risk:
            break
    return path


def _reach(sel: Scored, thr_TC: np.ndarray) -> np.ndarray:
    """Which tiers each item reaches under a setting (T, N)."""
    T, N = sel.label_TN.shape
    reach = np.zeros((T, N), dtype=bool)
    r = sel.route(thr_TC)
    # Replay the path: an item reaches tier j if it was at j at some point; recompute tier by tier.
    at_N = np.zeros(N, dtype=np.int64)
    open_N = np.ones(N, dtype=bool)
    for i in range(T):
        here = open_N & (at_N == i)
        reach[i] = here
        if i == T - 1:
            break
        jumps = here & (sel.jump_TN[i] >= 0)
        at_N[jumps] = sel.jump_TN[i][jumps]
        done = here & ~jumps & (r.tier_N == i)
        open_N[done] = False
        at_N[here & ~jumps & ~done] = i + 1
    return reach


def modelled_path(sel: Scored, base_TC: np.ndarray, movable: Sequence[int], loss_of: LossFn, *,
                  grid: np.ndarray = GRID, n_steps: int = 200, strength: float = 1.0) -> list[np.ndarray]:
    """Per-class thresholds that follow one shared knob, learnt with shrinkage on ``sel``.

    For each model tier, a logistic model of the loss given logit(confidence) and the predicted class (class
    offsets L2-shrunk towards zero, so a class seen a few times behaves like the rest) predicts each item's
    chance of a loss. Setting ``tau`` decides wherever that chance is at most ``tau``, which for each class is a
    confidence threshold; ``tau`` rises from 1e-5 to 0.5 geometrically. With no class effect in the data this is
    the shared path again; where some classes are reliably easier it lowers their thresholds only."""
    from sklearn.linear_model import LogisticRegression

    C = len(sel.labels)
    taus = np.geomspace(1e-5, 0.5, n_steps)
    z_G = _logit(grid)
    per_tier: dict[int, np.ndarray] = {}  # i -> (n_steps, C) thresholds
    for i in movable:
        has = (sel.label_TN[i] >= 0) & (sel.jump_TN[i] < 0)
        loss = loss_of(sel.label_TN[i])[has].astype(int)
        if has.sum() < 20 or loss.min() == loss.max():
            per_tier[i] = np.array([[_grid_at(grid, 1 - t)] * C for t in taus])
            continue
        X = _design(_logit(sel.conf_TN[i][has]), sel.label_TN[i][has], C)
        model = LogisticRegression(C=strength, max_iter=1000).fit(X, loss)
        # Chance of a loss for each class at each grid value: (C, G)
        q_CG = np.stack([model.predict_proba(_design(z_G, np.full(len(grid), c), C))[:, 1] for c in range(C)])
        rows = []
        for t in taus:
            ok_CG = (q_CG <= t) & (grid[None, :] <= 1.0)
            # The lowest grid value from which the chance stays <= tau all the way up (the model may not be
            # monotone in confidence for odd classes: never decide below a point where it rose above tau).
            th = np.full(C, NEVER)
            for c in range(C):
                bad = np.flatnonzero(~ok_CG[c] & (grid <= 1.0))
                first_bad = bad.min() if len(bad) else len(grid)
                good = np.flatnonzero(ok_CG[c][:first_bad])
                if len(good):
                    th[c] = grid[good.max()]
            rows.append(th)
        per_tier[i] = np.array(rows)
    path = [start_setting(base_TC, movable)]
    for s in range(n_steps):
        thr = path[0].copy()
        for i in movable:
            thr[i] = per_tier[i][s]
        if not np.array_equal(thr, path[-1]):
            path.append(thr)
    return path


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _design(z: np.ndarray, cls: np.ndarray, C: int) -> np.ndarray:
    X = np.zeros((len(z), 1 + C))
    X[:, 0] = z * 10.0  # scaled up so the shared slope is barely shrunk; the class offsets are
    X[np.arange(len(z)), 1 + cls] = 1.0
    return X


def _grid_at(grid: np.ndarray, value: float) -> float:
    """The smallest grid value at or above ``value`` (never below it: conservative)."""
    above = grid[grid >= value]
    return float(above.min()) if len(above) else NEVER
