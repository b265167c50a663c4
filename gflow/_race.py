"""Trajectory summaries shared by the demo, reports and checks (pure NumPy on recorded arrays)."""

from __future__ import annotations

import numpy as np


def loss_drop_time(t, loss, *, fraction: float = 0.5) -> float:
    """First time the loss has fallen by ``fraction`` of its total decrease.

        t_drop = min{t : L(t) <= L(0) − fraction·(L(0) − min_t L)}

    Returns NaN when the loss never decreases.
    """
    t = np.asarray(t, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.isfinite(loss)
    if not np.any(finite):
        return float("nan")
    l0, lmin = loss[0], np.min(loss[finite])
    if not l0 > lmin:
        return float("nan")
    hit = np.nonzero(finite & (loss <= l0 - fraction * (l0 - lmin)))[0]
    return float(t[hit[0]]) if hit.size else float("nan")


def race_winners(P_final, *, share: float = 0.9) -> np.ndarray:
    """Indices of the fewest neurons whose P_i = ‖w_i‖‖v_i‖ add up to ``share`` of Σ_j P_j.

    The race of docs/theory.md §5 makes this set small: early winners grow exponentially and starve
    the
    rest, so a few neurons carry most of the norm.
    """
    P = np.asarray(P_final, dtype=np.float64)
    order = np.argsort(P)[::-1]
    cumulative = np.cumsum(P[order])
    if cumulative[-1] <= 0:
        return np.zeros(0, dtype=int)
    k = int(np.searchsorted(cumulative, share * cumulative[-1]) + 1)
    return np.sort(order[:k])
