"""The main job: one network trained by the ODE and by SGD from the same tiny initialisation.

On the embedded MNIST digits (or any dataset) it shows the paper's three principles: silent
alignment (cos δ_i → 1 while norms stay ~σ), exponential unlocking (straight lines of log P_i)
and the race (a few neurons carry most of Σ P_i at the end).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset
from ._flow import FlowConfig, gradient_flow
from ._network import init_params
from ._observables import balance_drift, training_data
from ._progress import Activity
from ._race import loss_drop, race_winners
from ._sgd import SGDConfig, check_hyperparameters, train_sgd
from ._trajectory import Trajectory


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes and rates of the demo (defaults: the paper's SGD settings, a smaller width)."""

    width: int = 50
    sigma: float = 1e-5
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int = 4
    t_end: float | None = None  # None: 1.75 × the estimated loss-drop time
    rtol: float = FlowConfig.rtol  # ode_solver="tsit5" only (FlowConfig's default)
    save_points: int = 201
    seed: int = 0
    ode_solver: str = "sliding"  # or "tsit5" (adaptive, rtol)
    # ode_solver="sliding": the largest step h. 0.6 is two steps per save interval of the default
    # grid (about 1.16), inside the explicit step's stability bound after the drop; steps with
    # more candidates than the capacity are halved (FlowConfig.sliding_halvings).
    ode_step: float = 0.6

    def __post_init__(self):
        if not (isinstance(self.width, int) and self.width > 0):
            raise ValueError(f"width must be a positive integer; got {self.width!r}.")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0; got {self.sigma!r}.")
        check_hyperparameters(self.learning_rate, self.momentum)
        if not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        if self.t_end is not None and not self.t_end > 0:
            raise ValueError(f"t_end must be > 0; got {self.t_end!r}.")
        if self.ode_solver not in ("sliding", "tsit5"):
            raise ValueError(f"ode_solver must be 'sliding' or 'tsit5'; got {self.ode_solver!r}.")
        if not self.ode_step > 0:
            raise ValueError(f"ode_step must be > 0; got {self.ode_step!r}.")
        if not self.save_points >= 3:
            raise ValueError(f"save_points must be >= 3; got {self.save_points!r}.")


def estimated_drop_time(dataset: Dataset, sigma: float) -> float:
    """Flow time at which the fastest neuron's P reaches O(1) from P(0) ~ σ².

    Uses the largest small-init unlocking rate γ = (√2/N)‖Σ_s ỹ_s x_s‖ (docs/theory.md §4, all
    samples active) and P(t) ≈ σ² e^{γ t}: t_drop ≈ log(1/σ²)/γ.
    """
    gamma = np.sqrt(2.0) / dataset.n_samples * np.linalg.norm(dataset.signed_labels @ dataset.x)
    if not gamma > 0:
        raise ValueError(
            "the dataset's classes have equal sums (Σ ỹ_s x_s = 0): no unlocking rate to "
            "estimate t_end"
        )
    return float(np.log(1.0 / sigma**2) / gamma)


def run_demo(
    dataset: Dataset,
    config: DemoConfig,
    out: Path,
    *,
    dtype=jnp.float32,
    log=print,
    progress: bool = False,
) -> dict:
    """Train by the ODE and by SGD, write figures and ``summary.json`` to ``out``; return the
    summary. ``progress`` shows the elapsed time of each long step on stderr."""
    from . import _plots

    data = training_data(dataset, dtype)
    t_end = config.t_end or 1.75 * estimated_drop_time(dataset, config.sigma)
    if config.batch_size > dataset.n_samples:
        raise ValueError(
            f"batch_size ({config.batch_size}) must not exceed N ({dataset.n_samples})."
        )
    k_init, k_order = jax.random.split(jax.random.key(config.seed))
    params0 = init_params(k_init, config.width, dataset.dim, config.sigma, dtype=dtype)
    log(f"data     {dataset.describe()}")
    log(
        f"network  d={config.width} neurons, σ={config.sigma:g}, dtype={jnp.dtype(dtype).name}, "
        f"flow time 0..{t_end:.1f}"
    )

    ts = np.linspace(0.0, t_end, config.save_points)
    start = time.perf_counter()
    if config.ode_solver == "sliding":
        flow_config = FlowConfig(
            solver="sliding", adaptive=False, dt0=config.ode_step, max_steps=10_000_000
        )
        method = f"sliding-mode solver, h={config.ode_step:g}"
    else:
        flow_config = FlowConfig(rtol=config.rtol, max_steps=200_000)
        method = f"Tsit5, rtol={config.rtol:g}"
    with Activity(f"ODE      {method}, t = 0..{t_end:.0f}", enabled=progress):
        flow = gradient_flow(params0, data, ts, config=flow_config)
        assert isinstance(flow, Trajectory)  # return_stats=False: no FlowStats
        jax.block_until_ready(flow.observables.P)
    flow_seconds = time.perf_counter() - start
    log(f"ODE      {method}: {int(flow.num_steps)} solver steps in {flow_seconds:.1f} s")

    dt_step = config.learning_rate / (1.0 - config.momentum)
    record_every = max(1, int(round((t_end / (config.save_points - 1)) / dt_step)))
    steps = record_every * int(np.ceil(t_end / (dt_step * record_every)))
    sgd_config = SGDConfig(steps=steps, record_every=record_every, batch_size=config.batch_size)
    start = time.perf_counter()
    sgd_label = f"SGD      η={config.learning_rate:g}, β={config.momentum:g}, B={config.batch_size}"
    with Activity(f"{sgd_label}, {steps} steps", enabled=progress):
        sgd = train_sgd(
            params0,
            k_order,
            data,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            config=sgd_config,
        )
        jax.block_until_ready(sgd.observables.P)
    sgd_seconds = time.perf_counter() - start
    log(f"{sgd_label}: {steps} steps in {sgd_seconds:.1f} s")

    summary = _summarise(dataset, config, flow, sgd, t_end, flow_seconds, sgd_seconds)
    out.mkdir(parents=True, exist_ok=True)
    with Activity("figures", enabled=progress):
        figures = _draw(_plots, flow, sgd, summary, out)
    summary["figures"] = [str(p.name) for p in figures]
    _write_json(out / "summary.json", summary)
    return summary


def _summarise(dataset, config, flow, sgd, t_end, flow_seconds, sgd_seconds) -> dict:
    def one(traj, seconds):
        obs = jax.tree.map(np.asarray, traj.observables)
        t = np.asarray(traj.t, dtype=np.float64)
        winners = race_winners(obs.P[-1])
        drop = loss_drop(t, obs.loss)
        return {
            "loss_drop_time": drop.time,  # None (JSON null) when the loss did not drop
            "no_drop_reason": drop.reason,
            "final_loss": float(obs.loss[-1]),
            "final_train_accuracy": float(obs.accuracy[-1]),
            "final_test_accuracy": float(obs.test_accuracy[-1]),
            "balance_drift": float(np.max(balance_drift(obs))),
            "race_winners": int(winners.size),
            "winners_share": 0.9,
            "seconds": round(seconds, 3),
            "steps": int(traj.num_steps),
        }

    return {
        "dataset": dataset.name,
        "provenance": dataset.provenance,
        "n_samples": dataset.n_samples,
        "dim": dataset.dim,
        "config": dataclasses.asdict(config),
        "t_end": float(t_end),
        "ode": one(flow, flow_seconds),
        "sgd": one(sgd, sgd_seconds),
    }


def _early_index(t: np.ndarray, t_drop: float | None) -> int:
    """Index of the 'early' time of the paper's figure 4: a quarter of the loss-drop time (an
    eighth of the window when the loss did not drop)."""
    target = 0.25 * t_drop if t_drop is not None else t[len(t) // 8]
    return int(np.argmin(np.abs(t - target)))


def _draw(plots, flow, sgd, summary, out: Path) -> list[Path]:
    f = jax.tree.map(np.asarray, flow.observables)
    s = jax.tree.map(np.asarray, sgd.observables)
    t, ts = np.asarray(flow.t, np.float64), np.asarray(sgd.t, np.float64)
    early = _early_index(t, summary["ode"]["loss_drop_time"])
    return [
        plots.plot_norms(t, f.P, out / "norms_ode.png", title="ODE: P_i = ‖w_i‖‖v_i‖"),
        plots.plot_cos_delta(
            t,
            f.cos_target,
            out / "cos_delta_ode.png",
            title="ODE: alignment with the target of the neuron's cell",
            ylabel=plots.TARGET_COSINE,
        ),
        plots.plot_overlay(t, f.P, f.loss, ts, s.P, s.loss, out / "ode_vs_sgd.png"),
        plots.plot_final_vs_early(
            f.cos_target[early],
            f.P[-1],
            out / "final_P_vs_early_cos.png",
            t_early=float(t[early]),
            quantity=plots.TARGET_COSINE,
        ),
        plots.plot_loss(
            t,
            f.loss,
            out / "loss_ode.png",
            test_loss=f.test_loss,
            accuracy=f.accuracy,
            test_accuracy=f.test_accuracy,
            title="ODE: loss",
        ),
    ]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)


def format_summary(summary: dict) -> str:
    def drop(v):
        return "no drop" if v is None else f"{v:.1f}"

    rows = [("", "ODE", "SGD")]
    for key, label, fmt in [
        ("loss_drop_time", "loss-drop time t", drop),
        ("final_loss", "final loss", "{:.4f}".format),
        ("final_train_accuracy", "train accuracy", "{:.3f}".format),
        ("final_test_accuracy", "test accuracy", "{:.3f}".format),
        ("balance_drift", "balance drift max_i", "{:.2e}".format),
        ("race_winners", "neurons carrying 90% of ΣP", "{}".format),
        ("steps", "steps", "{}".format),
        ("seconds", "seconds", "{:.1f}".format),
    ]:
        rows.append((label, fmt(summary["ode"][key]), fmt(summary["sgd"][key])))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>10}" for r in rows]
    for name in ("ode", "sgd"):
        if summary[name]["loss_drop_time"] is None:
            lines.append(f"no loss drop ({name.upper()}): {summary[name]['no_drop_reason']}")
    d = summary["config"]["width"]
    lines.append(
        f"race: {summary['ode']['race_winners']} of {d} neurons (ODE) and "
        f"{summary['sgd']['race_winners']} of {d} (SGD) carry 90% of the total norm ΣP_i"
    )
    return "\n".join(lines)
