"""Figures of recorded trajectories, as plain functions of NumPy arrays.

Every function draws one PNG with matplotlib's Agg canvas (no pyplot, no global backend
change, no display needed), writes it atomically (temporary file in the same folder, then
``os.replace``) and returns the path. Inputs are the arrays a `gflow.Trajectory` or a loaded run
folder holds: a time grid ``t [T]`` and per-neuron series ``[T, d]`` (time first).

Figures (docs/theory.md §2, §4, §5, §7):

* `plot_norms`: P_i = ‖w_i‖‖v_i‖ against t on a log scale — exponential unlocking (§4) shows as
  straight lines, the race (§5) as a few lines pulling away from the rest.
* `plot_cos_delta`: cos δ_i = cos ∠(w_i, e_i) against t — silent alignment (§2, §3).
* `plot_loss`: training loss (and test loss, accuracies) against t.
* `plot_overlay`: ODE against SGD/GD on the flow-time axis t = k·η/(1−β) (§1).
* `plot_final_vs_early`: final P_i against early cos δ_i (the paper's figure 4, §7).

Example:
    >>> import numpy as np
    >>> t = np.linspace(0, 10, 11); P = np.exp(np.outer(t, [0.1, 0.5]))
    >>> plot_norms(t, P, "/tmp/norms.png", title="two neurons")  # doctest: +SKIP
    PosixPath('/tmp/norms.png')
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._runs import write_bytes_atomic

_DPI = 110
_MAX_LINES = 60  # more neuron curves than this only hide each other: the largest are drawn


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    # Fixed margins rather than a layout engine: several times faster, and the labels fit.
    fig = Figure(figsize=(5.2 * ncols, 3.6), dpi=_DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.14 / ncols, right=1 - 0.03 / ncols, bottom=0.14, top=0.9, wspace=0.3)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file in the same folder + replace)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())


def _time_series(t, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check ``t [T]`` and ``values [T]`` or ``[T, d]``; return float64 copies (values 2-d)."""
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-d time grid [T]; got shape {t.shape}.")
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name} must have shape [T] or [T, d] with T = len(t) = {t.shape[0]}; got {v.shape}."
        )
    return t, v


def _largest(final: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite entries of ``final`` (NaN last)."""
    key = np.where(np.isfinite(final), final, -np.inf)
    return np.sort(np.argsort(key)[::-1][:k])


def _positive(v: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive and non-finite entries become NaN (gaps, no warnings)."""
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def plot_norms(t, P, path, *, title: str = "") -> Path:
    """P_i = ‖w_i‖‖v_i‖ against flow time, log scale (docs/theory.md §4–§5).

    Args:
        t: time grid ``[T]``.
        P: ``[T, d]`` (or ``[T]``); with more than 60 neurons the 60 largest at the end are drawn.
        path: PNG file to write.
        title: figure title.
    """
    t, P = _time_series(t, P, "P")
    keep = _largest(P[-1], _MAX_LINES) if P.shape[1] > _MAX_LINES else np.arange(P.shape[1])
    fig, (ax,) = _figure()
    ax.plot(t, _positive(P[:, keep]), lw=0.9, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("flow time t")
    ax.set_ylabel(r"$P_i = \|w_i\|\,\|v_i\|$")
    shown = "" if len(keep) == P.shape[1] else f" ({len(keep)} largest of {P.shape[1]})"
    ax.set_title((title or "neuron norms") + shown, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cos_delta(t, cos, path, *, title: str = "") -> Path:
    """cos δ_i = cos ∠(w_i, e_i) against flow time (docs/theory.md §2): alignment of each neuron.

    Args:
        t: time grid ``[T]``.
        cos: ``[T, d]`` (or ``[T]``), values in [−1, 1].
        path: PNG file to write.
        title: figure title.
    """
    t, cos = _time_series(t, cos, "cos")
    keep = np.arange(min(cos.shape[1], _MAX_LINES))
    fig, (ax,) = _figure()
    ax.plot(t, cos[:, keep], lw=0.8, alpha=0.7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("flow time t")
    ax.set_ylabel(r"$\cos\delta_i$")
    shown = "" if len(keep) == cos.shape[1] else f" (first {len(keep)} of {cos.shape[1]})"
    ax.set_title(
        (title or "alignment of incoming weights with their error vector") + shown, fontsize=10
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss(
    t,
    loss,
    path,
    *,
    test_loss=None,
    accuracy=None,
    test_accuracy=None,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Loss (log scale) against flow time; accuracies in a second panel when given.

    Args:
        t: time grid ``[T]``.
        loss: training loss ``[T]``, or ``[K, T]`` for K curves (seeds, configurations).
        path: PNG file to write.
        test_loss: same shape as ``loss`` (dashed), optional.
        accuracy, test_accuracy: same shape as ``loss``, optional: add an accuracy panel.
        labels: K legend entries when ``loss`` is ``[K, T]``.
        title: figure title.
    """
    t = np.asarray(t, dtype=np.float64)

    def curves(values, name):
        if values is None:
            return None
        v = np.asarray(values, dtype=np.float64)
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or v.shape[1] != t.shape[0]:
            raise ValueError(
                f"{name} must have shape [T] or [K, T] with T = len(t) = {t.shape[0]}; got {np.shape(values)}."
            )
        return v

    train = curves(loss, "loss")
    test = curves(test_loss, "test_loss")
    acc, test_acc = curves(accuracy, "accuracy"), curves(test_accuracy, "test_accuracy")
    if labels is not None and len(labels) != train.shape[0]:
        raise ValueError(f"labels must name the {train.shape[0]} loss curves; got {len(labels)}.")
    with_acc = acc is not None or test_acc is not None
    fig, axes = _figure(2 if with_acc else 1)
    colors = [f"C{k % 10}" for k in range(train.shape[0])]
    for k, c in enumerate(colors):
        name = labels[k] if labels is not None else None
        axes[0].plot(t, _positive(train[k]), color=c, lw=1.0, label=name)
        if test is not None and np.any(np.isfinite(test[k])):
            axes[0].plot(t, _positive(test[k]), color=c, lw=1.0, ls="--")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("flow time t")
    axes[0].set_ylabel("loss (solid: train, dashed: test)" if test is not None else "training loss")
    axes[0].set_title(title or "loss", fontsize=10)
    axes[0].grid(alpha=0.3)
    if labels is not None and len(labels) <= 12:
        axes[0].legend(fontsize=7)
    if with_acc:
        for k, c in enumerate(colors):
            if acc is not None:
                axes[1].plot(t, acc[k], color=c, lw=1.0)
            if test_acc is not None and np.any(np.isfinite(test_acc[k])):
                axes[1].plot(t, test_acc[k], color=c, lw=1.0, ls="--")
        axes[1].set_ylim(0.0, 1.02)
        axes[1].set_xlabel("flow time t")
        axes[1].set_ylabel("accuracy (solid: train, dashed: test)")
        axes[1].grid(alpha=0.3)
    return _save(fig, path)


def plot_overlay(t_ode, P_ode, loss_ode, t_sgd, P_sgd, loss_sgd, path, *, neurons=5) -> Path:
    """ODE (solid) against SGD/GD (dashed) on one flow-time axis t = k·η/(1−β) (docs/theory.md §1).

    Left: P_i of the selected neurons (log scale); right: the two losses.

    Args:
        t_ode, P_ode, loss_ode: ODE time grid ``[T]``, norms ``[T, d]``, loss ``[T]``.
        t_sgd, P_sgd, loss_sgd: the same for the discrete run (``[T']``, ``[T', d]``, ``[T']``),
            started from the same initial parameters.
        path: PNG file to write.
        neurons: an int k (the k neurons with the largest final ODE P_i) or a sequence of
            neuron indices.
    """
    t_ode, P_ode = _time_series(t_ode, P_ode, "P_ode")
    t_sgd, P_sgd = _time_series(t_sgd, P_sgd, "P_sgd")
    _, loss_ode = _time_series(t_ode, loss_ode, "loss_ode")
    _, loss_sgd = _time_series(t_sgd, loss_sgd, "loss_sgd")
    if P_ode.shape[1] != P_sgd.shape[1]:
        raise ValueError(
            f"P_ode and P_sgd must have the same number of neurons; got {P_ode.shape[1]} and {P_sgd.shape[1]}."
        )
    d = P_ode.shape[1]
    if isinstance(neurons, (int, np.integer)):
        if neurons <= 0:
            raise ValueError(
                f"neurons must be a positive count or a sequence of indices; got {neurons}."
            )
        chosen = _largest(P_ode[-1], min(int(neurons), d))
    else:
        chosen = np.asarray(neurons, dtype=int).ravel()
        if chosen.size == 0 or np.any((chosen < 0) | (chosen >= d)):
            raise ValueError(f"neurons must be indices in [0, {d}); got {chosen.tolist()}.")
    fig, (ax_p, ax_l) = _figure(2)
    for k, i in enumerate(chosen):
        c = f"C{k % 10}"
        ax_p.plot(t_ode, _positive(P_ode[:, i]), color=c, lw=1.2, label=f"neuron {i}")
        ax_p.plot(t_sgd, _positive(P_sgd[:, i]), color=c, lw=1.2, ls="--")
    ax_p.set_yscale("log")
    ax_p.set_xlabel(r"flow time t  (SGD: $k\eta/(1-\beta)$)")
    ax_p.set_ylabel(r"$P_i$ (solid: ODE, dashed: SGD)")
    ax_p.grid(alpha=0.3)
    if len(chosen) <= 10:
        ax_p.legend(fontsize=7)
    ax_l.plot(t_ode, _positive(loss_ode[:, 0]), color="k", lw=1.2, label="ODE")
    ax_l.plot(t_sgd, _positive(loss_sgd[:, 0]), color="C3", lw=1.2, ls="--", label="SGD")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("flow time t")
    ax_l.set_ylabel("training loss")
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    return _save(fig, path)


def plot_final_vs_early(cos_early, P_final, path, *, t_early) -> Path:
    """Final P_i against early cos δ_i, one dot per neuron (the paper's figure 4, docs/theory.md §7).

    Args:
        cos_early: cos δ_i at the early time ``[d]`` (or ``[K, d]``: several seeds pooled).
        P_final: P_i at the end of the run, same shape.
        path: PNG file to write.
        t_early: the early time (shown in the axis label).
    """
    cos = np.asarray(cos_early, dtype=np.float64).ravel()
    P = np.asarray(P_final, dtype=np.float64).ravel()
    if np.shape(cos_early) != np.shape(P_final):
        raise ValueError(
            f"cos_early and P_final must have the same shape; got {np.shape(cos_early)} and {np.shape(P_final)}."
        )
    fig, (ax,) = _figure()
    ax.scatter(cos, _positive(P), s=9, alpha=0.6, edgecolors="none")
    ax.set_yscale("log")
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(rf"$\cos\delta_i$ at early time t = {float(t_early):.3g}")
    ax.set_ylabel(r"final $P_i$")
    ax.set_title(r"final $P_i$ against early $\cos\delta_i$", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)
