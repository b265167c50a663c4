"""Figures of recorded trajectories and of run folders, as plain functions of NumPy arrays.

Every function draws one PNG with matplotlib's Agg canvas (no pyplot, no display needed), writes
it atomically and returns the path; inputs are a time grid ``t [T]`` and per-neuron series
``[T, d]``. `plot_norms`, `plot_cos_delta`, `plot_loss`, `plot_overlay`, `plot_final_vs_early`
and `plot_settings`, with the theory each shows: docs/numerics.md §8. `draw_run_figures` and
`write_outputs` draw all of them for a run folder.

Example:
    >>> import numpy as np
    >>> t = np.linspace(0, 10, 11); P = np.exp(np.outer(t, [0.1, 0.5]))
    >>> plot_norms(t, P, "/tmp/norms.png", title="two neurons")  # doctest: +SKIP
    PosixPath('/tmp/norms.png')
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from matplotlib.typing import LegendLocType

from ._runs import (
    Run,
    loss_drop,
    point_label,
    report_markdown,
    summarize,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

_DPI = 110
_MAX_LINES = 60  # more neuron curves than this only hide each other: the largest are drawn
_MAX_SEED_PANELS = 12  # norms: one panel per seed, at most this many
_MAX_LEGEND = 12  # seed colours get a legend up to this many seeds
_EARLY_FRACTION = 0.5  # "early" time of the final-vs-early scatter: this fraction of the drop time


def _figure(
    ncols: int = 1,
    nrows: int = 1,
    *,
    width: float = 5.2,
    height: float = 3.6,
    suptitle: bool = False,
):
    """A figure of ``nrows × ncols`` panels with fixed margins in inches (several times faster
    than a layout engine; room for tick labels, axis labels, titles and a ``suptitle``)."""
    fig_w, fig_h = width * ncols, height * nrows + (0.3 if suptitle else 0.0)
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=0.85 / fig_w,
        right=1 - 0.15 / fig_w,
        bottom=0.5 / fig_h,
        top=1 - (0.35 + (0.3 if suptitle else 0.0)) / fig_h,
        wspace=0.4,
        hspace=0.55,
    )
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
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


def _nice_log_ticks(lo: float, hi: float) -> np.ndarray:
    """Ticks 1, 2, 5 × 10^k from the largest one ≤ ``lo`` to the smallest one ≥ ``hi`` (all
    of 1..9 × 10^k when the range is under a factor 3, so a few are always labelled)."""
    subs = (1.0, 2.0, 5.0) if hi / lo >= 3 else tuple(float(k) for k in range(1, 10))
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in subs
    ]
    ticks = np.asarray(ticks)
    below = ticks[ticks <= lo * (1 + 1e-12)]
    above = ticks[ticks >= hi * (1 - 1e-12)]
    first, last = below.max(), above.min()
    return ticks[(ticks >= first) & (ticks <= last)]


def _log_axis(ax: Axes, *values) -> None:
    """A log y-axis whose limits are labelled ticks enclosing every positive value given (so the
    last value of a curve is never below the lowest label); decade axes get 1-2-5 ticks."""
    ax.set_yscale("log")
    v = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in values])
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return
    lo, hi = float(v.min()), float(v.max())
    if hi / lo > 1e4:  # many decades: matplotlib's own decade ticks read best
        ax.set_ylim(lo / 1.5, hi * 1.5)
        return
    ticks = _nice_log_ticks(lo, hi if hi > lo else lo * 1.01)
    ax.set_ylim(ticks[0], ticks[-1])
    ax.yaxis.set_major_locator(FixedLocator(ticks.tolist()))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _cos_limits(ax: Axes, cos: np.ndarray) -> None:
    """y-limits of a cosine: [0, 1] when the data are non-negative, else down to their minimum."""
    v = np.asarray(cos, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo = float(v.min()) if v.size else 0.0
    bottom = 0.0 if lo >= 0 else max(-1.0, math.floor(lo * 10) / 10)
    ax.set_ylim(bottom - 0.02, 1.02)


def _seed_label(seeds: Sequence[int] | None, k: int) -> str:
    return f"seed {seeds[k]}" if seeds is not None else f"run {k}"


def plot_norms(t, P, path, *, title: str = "", seeds: Sequence[int] | None = None) -> Path:
    """P_i = ‖w_i‖‖v_i‖ against flow time, log scale (docs/theory.md §4–§5).

    Args:
        t: time grid ``[T]``.
        P: ``[T, d]`` (one run) or ``[K, T, d]`` (K runs, one panel each; at most 12 are drawn).
            With more than 60 neurons the 60 largest at the end are drawn.
        path: PNG file to write.
        title: figure title.
        seeds: the K seeds (panel titles).
    """
    P = np.asarray(P, dtype=np.float64)
    runs = P[None] if P.ndim <= 2 else P
    if runs.ndim != 3:
        raise ValueError(f"P must have shape [T], [T, d] or [K, T, d]; got {P.shape}.")
    if seeds is not None and len(seeds) != runs.shape[0]:
        raise ValueError(f"seeds must name the {runs.shape[0]} runs of P; got {len(seeds)}.")
    shown_runs = min(runs.shape[0], _MAX_SEED_PANELS)
    ncols = min(shown_runs, 4)
    nrows = math.ceil(shown_runs / ncols)
    small = shown_runs > 1
    fig, axes = _figure(
        ncols,
        nrows,
        width=3.6 if small else 5.2,
        height=2.9 if small else 3.6,
        suptitle=small,
    )
    for k in range(shown_runs):
        tk, Pk = _time_series(t, runs[k], "P")
        d = Pk.shape[1]
        keep = _largest(Pk[-1], _MAX_LINES) if d > _MAX_LINES else np.arange(d)
        ax = axes[k]
        ax.plot(tk, _positive(Pk[:, keep]), lw=0.9, alpha=0.8)
        _log_axis(ax, Pk[:, keep])
        ax.set_xlabel("flow time t", fontsize=8 if small else 10)
        ax.set_ylabel(r"$P_i = \|w_i\|\,\|v_i\|$", fontsize=8 if small else 10)
        more = "" if len(keep) == d else f", {len(keep)} largest of {d}"
        if small:
            ax.set_title(f"{_seed_label(seeds, k)} ({d} neurons{more})", fontsize=8)
            ax.tick_params(labelsize=7)
        else:
            ax.set_title(
                (title or "neuron norms") + (f" ({more[2:]})" if more else ""), fontsize=10
            )
        ax.grid(alpha=0.3)
    for ax in axes[shown_runs:]:
        ax.set_visible(False)
    if small:
        extra = (
            f" (first {shown_runs} of {runs.shape[0]} runs)" if runs.shape[0] > shown_runs else ""
        )
        fig.suptitle((title or "neuron norms") + extra, fontsize=10)
    return _save(fig, path)


def plot_cos_delta(t, cos, path, *, title: str = "", ylabel: str = r"$\cos\delta_i$") -> Path:
    """cos δ_i = cos ∠(w_i, e_i) against flow time (docs/theory.md §2): alignment of each neuron.

    The y-axis spans [0, 1] when every value is non-negative, else it reaches down to the data.

    Args:
        t: time grid ``[T]``.
        cos: ``[T, d]`` (or ``[T]``), values in [−1, 1].
        path: PNG file to write.
        title: figure title.
        ylabel: axis label (another cosine, e.g. to the cell's target, can be drawn alike).
    """
    t, cos = _time_series(t, cos, "cos")
    keep = np.arange(min(cos.shape[1], _MAX_LINES))
    fig, (ax,) = _figure()
    ax.plot(t, cos[:, keep], lw=0.8, alpha=0.7)
    _cos_limits(ax, cos[:, keep])
    ax.set_xlabel("flow time t")
    ax.set_ylabel(ylabel)
    shown = "" if len(keep) == cos.shape[1] else f" (first {len(keep)} of {cos.shape[1]})"
    ax.set_title(
        (title or "alignment of incoming weights with their error vector") + shown, fontsize=10
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _style_legend(ax: Axes, solid: str, dashed: str, *, loc: LegendLocType = "best") -> None:
    """A legend of the two line styles (black proxies), added next to any existing legend."""
    existing = ax.get_legend()
    handles = [Line2D([], [], color="k", lw=1.2), Line2D([], [], color="k", lw=1.2, ls="--")]
    legend = ax.legend(handles, [solid, dashed], fontsize=7, loc=loc)
    if existing is not None:
        ax.add_artist(existing)
    legend.set_zorder(5)


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

    The log axis is bounded by labelled ticks that enclose every value, the final one included.

    Args:
        t: time grid ``[T]``.
        loss: training loss ``[T]``, or ``[K, T]`` for K curves (seeds, configurations).
        path: PNG file to write.
        test_loss: same shape as ``loss`` (dashed), optional.
        accuracy, test_accuracy: same shape as ``loss``, optional: add an accuracy panel.
        labels: K legend entries (one colour each; shown up to 12).
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
                f"{name} must have shape [T] or [K, T] with T = len(t) = {t.shape[0]}; "
                f"got {np.shape(values)}."
            )
        return v

    train = curves(loss, "loss")
    assert train is not None
    test = curves(test_loss, "test_loss")
    if test is not None and not np.any(np.isfinite(test)):
        test = None
    acc, test_acc = curves(accuracy, "accuracy"), curves(test_accuracy, "test_accuracy")
    if test_acc is not None and not np.any(np.isfinite(test_acc)):
        test_acc = None
    if labels is not None and len(labels) != train.shape[0]:
        raise ValueError(f"labels must name the {train.shape[0]} loss curves; got {len(labels)}.")
    with_acc = acc is not None or test_acc is not None
    fig, axes = _figure(2 if with_acc else 1)
    colors = [f"C{k % 10}" for k in range(train.shape[0])]
    for k, c in enumerate(colors):
        name = labels[k] if labels is not None and k < _MAX_LEGEND else None
        axes[0].plot(t, _positive(train[k]), color=c, lw=1.0, label=name)
        if test is not None:
            axes[0].plot(t, _positive(test[k]), color=c, lw=1.0, ls="--")
    _log_axis(axes[0], train, *(() if test is None else (test,)))
    axes[0].set_xlabel("flow time t")
    axes[0].set_ylabel("loss")
    axes[0].set_title(title or "loss", fontsize=10)
    axes[0].grid(alpha=0.3)
    if labels is not None:
        more = len(labels) - _MAX_LEGEND
        axes[0].legend(
            fontsize=7,
            loc="lower left",
            title=f"{more} more not named" if more > 0 else None,
            title_fontsize=6,
        )
    if test is not None:
        _style_legend(axes[0], "train", "test", loc="upper right")
    if with_acc:
        for k, c in enumerate(colors):
            if acc is not None:
                axes[1].plot(t, acc[k], color=c, lw=1.0)
            if test_acc is not None:
                axes[1].plot(t, test_acc[k], color=c, lw=1.0, ls="--")
        axes[1].set_ylim(0.0, 1.02)
        axes[1].set_xlabel("flow time t")
        axes[1].set_ylabel("accuracy")
        axes[1].set_title("accuracy", fontsize=10)
        axes[1].grid(alpha=0.3)
        if acc is not None and test_acc is not None:
            _style_legend(axes[1], "train", "test", loc="lower right")
    return _save(fig, path)


def plot_overlay(
    t_ode, P_ode, loss_ode, t_sgd, P_sgd, loss_sgd, path, *, neurons=5, discrete: str = "SGD"
) -> Path:
    """ODE (solid) against SGD/GD (dashed) on one flow-time axis t = k·η/(1−β) (docs/theory.md §1).

    Left: P_i of the selected neurons (log scale); right: the two losses.

    Args:
        t_ode, P_ode, loss_ode: ODE time grid ``[T]``, norms ``[T, d]``, loss ``[T]``.
        t_sgd, P_sgd, loss_sgd: the same for the discrete run (``[T']``, ``[T', d]``, ``[T']``),
            started from the same initial parameters.
        path: PNG file to write.
        neurons: an int k (the k neurons with the largest final ODE P_i) or a sequence of
            neuron indices.
        discrete: name of the discrete trainer in the legends.
    """
    t_ode, P_ode = _time_series(t_ode, P_ode, "P_ode")
    t_sgd, P_sgd = _time_series(t_sgd, P_sgd, "P_sgd")
    _, loss_ode = _time_series(t_ode, loss_ode, "loss_ode")
    _, loss_sgd = _time_series(t_sgd, loss_sgd, "loss_sgd")
    if P_ode.shape[1] != P_sgd.shape[1]:
        raise ValueError(
            "P_ode and P_sgd must have the same number of neurons; "
            f"got {P_ode.shape[1]} and {P_sgd.shape[1]}."
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
    _log_axis(ax_p, P_ode[:, chosen], P_sgd[:, chosen])
    ax_p.set_xlabel(r"flow time t  (discrete: $k\eta/(1-\beta)$)")
    ax_p.set_ylabel(r"$P_i = \|w_i\|\,\|v_i\|$")
    ax_p.set_title(f"norms of the {len(chosen)} largest neurons", fontsize=10)
    ax_p.grid(alpha=0.3)
    if len(chosen) <= 10:
        ax_p.legend(fontsize=7, loc="upper left")
    _style_legend(ax_p, "ODE", discrete, loc="lower right")
    ax_l.plot(t_ode, _positive(loss_ode[:, 0]), color="k", lw=1.2, label="ODE")
    ax_l.plot(t_sgd, _positive(loss_sgd[:, 0]), color="C3", lw=1.2, ls="--", label=discrete)
    _log_axis(ax_l, loss_ode, loss_sgd)
    ax_l.set_xlabel("flow time t")
    ax_l.set_ylabel("training loss")
    ax_l.set_title(f"training loss, ODE and {discrete}", fontsize=10)
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    return _save(fig, path)


TARGET_COSINE = r"$\cos\angle(w_i, T_\kappa(g_i))$"  # cosine to the target of the neuron's cell


def plot_final_vs_early(
    cos_early, P_final, path, *, t_early, quantity: str = r"$\cos\delta_i$"
) -> Path:
    """Final P_i against early cos δ_i, one dot per neuron (paper's figure 4, docs/theory.md §7).

    Args:
        cos_early: cos δ_i at the early time ``[d]`` (or ``[K, d]``: several seeds pooled).
        P_final: P_i at the end of the run, same shape.
        path: PNG file to write.
        t_early: the early time (shown in the axis label).
        quantity: what the cosine measures (axis label), e.g. `TARGET_COSINE`.
    """
    cos = np.asarray(cos_early, dtype=np.float64).ravel()
    P = np.asarray(P_final, dtype=np.float64).ravel()
    if np.shape(cos_early) != np.shape(P_final):
        raise ValueError(
            "cos_early and P_final must have the same shape; "
            f"got {np.shape(cos_early)} and {np.shape(P_final)}."
        )
    fig, (ax,) = _figure()
    ax.scatter(cos, _positive(P), s=9, alpha=0.6, edgecolors="none")
    _log_axis(ax, P)
    finite = cos[np.isfinite(cos)]
    low = float(finite.min()) if finite.size else 0.0
    ax.set_xlim(min(0.0, math.floor(low * 10) / 10) - 0.02, 1.02)  # fits the data, 1 included
    ax.set_xlabel(f"{quantity} at early time t = {float(t_early):.3g}")
    ax.set_ylabel(r"final $P_i$")
    ax.set_title(f"final $P_i$ against early {quantity}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _mean_spread(values: np.ndarray) -> tuple[float, float, int]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std()), int(v.size)


def plot_settings(
    x,
    drop_time,
    final_loss,
    path,
    *,
    x_label: str,
    log_x: bool = False,
    flow_time=None,
    tick_labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Loss-drop time and final loss against a swept hyper-parameter: mean ± standard deviation
    over seeds (error bars), each seed a dot. Seeds whose loss did not drop (NaN drop time) are
    left out of the left panel and counted above their setting.

    Args:
        x: ``[S]`` value of the swept parameter for each setting (or 0..S−1 with
            ``tick_labels`` when several parameters change together).
        drop_time: ``[S, K]`` loss-drop time per setting and seed (NaN: no drop or failed run).
        final_loss: ``[S, K]`` final loss per setting and seed (NaN: failed run).
        path: PNG file to write.
        x_label: axis label (the parameter's name).
        log_x: log scale for x (σ and η span decades).
        flow_time: ``[S]`` flow time of each setting's last record; noted when they differ.
        tick_labels: ``[S]`` names of the settings, one x tick each (instead of a numeric axis).
        title: figure title.
    """
    x = np.asarray(x, dtype=np.float64)
    drop = np.asarray(drop_time, dtype=np.float64)
    final = np.asarray(final_loss, dtype=np.float64)
    if x.ndim != 1 or drop.shape != final.shape or drop.ndim != 2 or drop.shape[0] != x.size:
        raise ValueError(
            "x must be [S] and drop_time, final_loss [S, K] with S = len(x); got "
            f"{x.shape}, {drop.shape}, {final.shape}."
        )
    if tick_labels is not None and len(tick_labels) != x.size:
        raise ValueError(f"tick_labels must name the {x.size} settings; got {len(tick_labels)}.")
    order = np.argsort(x)
    fig, (ax_d, ax_l) = _figure(2, height=4.2 if tick_labels is not None else 3.6, suptitle=True)
    for ax, values, name in ((ax_d, drop, "loss-drop time"), (ax_l, final, "final loss")):
        stats = [_mean_spread(values[i]) for i in order]
        mean = np.asarray([m for m, _, _ in stats])
        spread = np.asarray([s for _, s, _ in stats])
        for i in order:
            v = values[i][np.isfinite(values[i])]
            ax.scatter(np.full(v.size, x[i]), v, s=10, color="0.55", alpha=0.6, zorder=2)
        ax.errorbar(
            x[order], mean, yerr=spread, color="C0", marker="o", capsize=4, lw=1.4, zorder=3
        )
        ax.set_xlabel(x_label)
        ax.set_ylabel(name if name != "loss-drop time" else "loss-drop time t")
        ax.set_title(f"{name}: mean ± std over seeds (dots: seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        if tick_labels is not None:
            ax.set_xticks(x)
            ax.set_xticklabels(tick_labels, rotation=30, ha="right", fontsize=7)
    if tick_labels is not None:
        fig.subplots_adjust(bottom=1.3 / fig.get_figheight())
    _log_axis(ax_l, final)
    ax_d.set_xlim(ax_l.get_xlim())
    for i in order:
        missing = int(np.sum(~np.isfinite(drop[i])))
        if missing:  # x in data, y in axes coordinates: shown even when no seed dropped
            ax_d.text(
                float(x[i]),
                0.93,
                f"{missing}/{drop.shape[1]} no drop",
                transform=ax_d.get_xaxis_transform(),
                ha="center",
                fontsize=7,
                color="C3",
            )
    suptitle = title or "settings of the sweep"
    if flow_time is not None:
        ends = np.unique(np.round(np.asarray(flow_time, dtype=np.float64), 9))
        if ends.size > 1:
            suptitle += " — settings end at different flow times"
        else:
            suptitle += f", each to flow time {float(ends[0]):g}"
    fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- run folders


def _early_index(t: np.ndarray, drop_median) -> tuple[int, float]:
    """Record nearest to the early time: half the median loss-drop time (a tenth of the grid
    when the loss never drops)."""
    if drop_median is None:
        i = len(t) // 10
    else:
        i = int(np.clip(np.searchsorted(t, _EARLY_FRACTION * drop_median), 0, len(t) - 1))
    return i, float(t[i])


def _swept_axis(points: Sequence[Mapping]) -> tuple[np.ndarray, str, bool, list[str] | None]:
    """x values, label and log scale of the settings figure; tick labels when several change."""
    names = {"sigma": "init scale σ", "lr": "learning rate η", "momentum": "momentum β"}
    varying = [k for k in names if len({p.get(k) for p in points}) > 1]
    if len(varying) == 1:
        key = varying[0]
        x = np.asarray([float(p[key]) for p in points])
        log = key != "momentum" and x.min() > 0 and x.max() / x.min() >= 10
        return x, names[key], bool(log), None
    return (
        np.arange(len(points), dtype=np.float64),
        "setting",
        False,
        [point_label(p) for p in points],
    )


def draw_run_figures(
    run: Run, folder, summary: list[dict] | None = None
) -> dict[str, dict[str, Path]]:
    """All figures of a run: per point, norms (one panel per seed), cos δ, loss of every seed,
    final P vs early cos δ; for a sweep of several points, the settings figure.

    The cos δ_i curves measure the angle between w_i and its error vector e_i (docs/theory.md
    §2) for the first successful seed; the final-vs-early scatter pools every seed and measures
    δ_i against the target of the neuron's current cell (``cos_target``, docs/theory.md §4) at
    half the median loss-drop time.

    Returns:
        ``{section title: {figure name: path}}`` (a point's label, or ``"all settings"``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(run)
    obs = run.observables
    multi = len(run.points) > 1
    out: dict[str, dict[str, Path]] = {}
    drops = np.full(run.status.shape, np.nan)
    finals = np.full(run.status.shape, np.nan)
    for p, point in enumerate(run.points):
        ok = np.flatnonzero(run.ok[p])
        t = run.t[p]
        for s in ok:
            drop = loss_drop(t, obs["loss"][p, s])
            drops[p, s] = math.nan if drop.time is None else drop.time
            finals[p, s] = obs["loss"][p, s, -1]
        if ok.size == 0:
            continue
        suffix = f"_p{p}" if multi else ""
        label = point_label(point)
        s0 = ok[0]
        seeds = [int(run.seeds[s]) for s in ok]
        figs = {
            "norms": plot_norms(
                t,
                obs["P"][p, ok[:_MAX_SEED_PANELS]],
                folder / f"norms{suffix}.png",
                title=f"P_i per seed, {label}",
                seeds=seeds[:_MAX_SEED_PANELS],
            ),
            "cos_delta": plot_cos_delta(
                t,
                obs["cos_delta"][p, s0],
                folder / f"cos_delta{suffix}.png",
                title=f"cos δ_i, seed {seeds[0]}, {label}",
            ),
            "loss": plot_loss(
                t,
                obs["loss"][p, ok],
                folder / f"loss{suffix}.png",
                test_loss=obs["test_loss"][p, ok],
                accuracy=obs["accuracy"][p, ok],
                test_accuracy=obs["test_accuracy"][p, ok],
                labels=[f"seed {s}" for s in seeds],
                title=f"{label} ({ok.size} seed{'s' if ok.size > 1 else ''})",
            ),
        }
        i_early, t_early = _early_index(t, summary[p]["loss_drop_time"]["median"])
        # δ_i against the target of the neuron's current cell, as in the paper (docs/theory.md §4).
        figs["final_vs_early"] = plot_final_vs_early(
            obs["cos_target"][p, ok, i_early],
            obs["P"][p, ok, -1],
            folder / f"final_vs_early{suffix}.png",
            t_early=t_early,
            quantity=TARGET_COSINE,
        )
        out[label] = figs
    if multi and run.ok.any():
        x, x_label, log_x, ticks = _swept_axis(run.points)
        path = plot_settings(
            x,
            drops,
            finals,
            folder / "settings.png",
            x_label=x_label,
            log_x=log_x,
            flow_time=run.t[:, -1],
            tick_labels=ticks,
            title=f"{len(run.points)} settings × {len(run.seeds)} seeds",
        )
        out = {"all settings": {"settings": path}, **out}
    return out


def write_outputs(run: Run) -> dict:
    """Write ``summary.json``, the figures and ``report.md`` of a run folder; returns the paths."""
    if run.path is None:
        raise ValueError("write_outputs needs a run with a folder (run.path is None).")
    summary = summarize(run)
    write_json_atomic(run.path / "summary.json", {"points": summary, "complete": run.complete})
    figures = draw_run_figures(run, run.path / "figures", summary)
    report = write_text_atomic(run.path / "report.md", report_markdown(run, summary, figures))
    return {"summary": run.path / "summary.json", "report": report, "figures": figures}
