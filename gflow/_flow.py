"""Continuous-time gradient flow θ̇ = −∇L(θ) integrated with diffrax (SPEC.md §1).

Observables are computed inside the solve with ``SaveAt(fn=...)`` on the user's time grid,
so full weights are kept only at the requested snapshot times.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ._network import Params, loss
from ._observables import TrainingData, observe
from ._trajectory import (
    MAX_STEPS_REACHED,
    NON_FINITE,
    OK,
    SOLVER_FAILED,
    Trajectory,
    raise_if_failed,
)

_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
    "midpoint": diffrax.Midpoint,
    "euler": diffrax.Euler,
}
_FIXED_STEP_ONLY = {"euler"}


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Static options of the ODE solve (one compilation per distinct config).

    Attributes:
        solver: one of ``tsit5`` (default), ``dopri5``, ``dopri8``, ``bosh3``, ``heun``,
            ``ralston``, ``midpoint``, ``euler`` (fixed step only).
        rtol, atol: tolerances of the PID step-size controller. ``atol=None`` (default) sets
            it to ``rtol`` times the RMS entry of the initial parameters, so that a neuron
            that stays at the init scale σ is still integrated to relative accuracy ~rtol
            (a fixed atol far above σ² would let tiny neurons drift; far below, it forces
            the solver to resolve zero crossings of single weights).
        dt0: initial step (``None`` lets diffrax choose); the step for fixed-step solves.
        adaptive: PID-controlled steps (default) or constant ``dt0`` steps.
        max_steps: solver steps allowed before the solve stops with `MAX_STEPS_REACHED`.
    """

    solver: str = "tsit5"
    rtol: float = 1e-6
    atol: float | None = None
    dt0: float | None = None
    adaptive: bool = True
    max_steps: int = 100_000

    def __post_init__(self):
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {sorted(_SOLVERS)}; got {self.solver!r}.")
        if not (self.rtol > 0 and (self.atol is None or self.atol > 0)):
            raise ValueError(f"rtol and atol must be > 0; got rtol={self.rtol!r}, atol={self.atol!r}.")
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer; got {self.max_steps!r}.")
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(f"dt0 must be > 0 or None; got {self.dt0!r}.")
        if (not self.adaptive or self.solver in _FIXED_STEP_ONLY) and self.dt0 is None:
            raise ValueError(f"a fixed-step solve (solver={self.solver!r}, adaptive={self.adaptive}) needs dt0 > 0.")


def vector_field(t, params: Params, data: TrainingData) -> Params:
    """f(t, θ) = −∇L(θ), the gradient-flow vector field, handed to ``diffrax.ODETerm``."""
    del t
    grad = jax.grad(loss)(params, data.x, data.y)
    return jax.tree.map(jnp.negative, grad)


def check_time_grid(ts, name: str = "ts") -> np.ndarray:
    """Validate a save grid: 1-d, finite, >= 0, strictly increasing, at least two points."""
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name} must be a 1-d grid of at least 2 times; got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite.")
    if arr[0] < 0:
        raise ValueError(f"{name} must start at t >= 0; got {arr[0]}.")
    if np.any(np.diff(arr) <= 0):
        i = int(np.argmax(np.diff(arr) <= 0))
        raise ValueError(f"{name} must be strictly increasing; {name}[{i}]={arr[i]} >= {name}[{i + 1}]={arr[i + 1]}.")
    return arr


def _snapshot_grid(ts: np.ndarray, snapshot_times) -> np.ndarray:
    extra = np.asarray(snapshot_times if snapshot_times is not None else (), dtype=np.float64).ravel()
    if extra.size and (np.any(extra < ts[0]) or np.any(extra > ts[-1])):
        raise ValueError(f"snapshot_times must lie within [{ts[0]}, {ts[-1]}]; got {extra.tolist()}.")
    return np.unique(np.concatenate([[ts[0], ts[-1]], extra]))


def _diffeqsolve(params0, data, ts, solver, controller, saveat, config):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=config.dt0,
        y0=params0,
        args=data,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=config.max_steps,
        throw=False,
    )


def _absolute_tolerance(params0: Params, config: FlowConfig):
    if config.atol is not None:
        return config.atol
    leaves = jax.tree.leaves(params0)
    mean_square = sum(jnp.sum(a * a) for a in leaves) / sum(a.size for a in leaves)
    return config.rtol * jnp.sqrt(mean_square)


@functools.partial(jax.jit, static_argnames=("config",))
def _solve(params0: Params, data: TrainingData, ts: jax.Array, snap_ts: jax.Array, config: FlowConfig) -> Trajectory:
    solver = _SOLVERS[config.solver]()
    if config.adaptive and config.solver not in _FIXED_STEP_ONLY:
        controller = diffrax.PIDController(rtol=config.rtol, atol=_absolute_tolerance(params0, config))
    else:
        controller = diffrax.ConstantStepSize()
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=lambda t, y, args: observe(y, args)),
            diffrax.SubSaveAt(ts=snap_ts),
        ]
    )
    with warnings.catch_warnings():
        # diffrax pre-fills save buffers with inf, which NumPy warns about when casting to the
        # integer observables (kappa, active, cell_hash); the filled entries are overwritten.
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        sol = _diffeqsolve(params0, data, ts, solver, controller, saveat, config)
    obs, snaps = sol.ys
    result = sol.result
    status = jnp.where(
        result == diffrax.RESULTS.successful,
        OK,
        jnp.where(result == diffrax.RESULTS.max_steps_reached, MAX_STEPS_REACHED, SOLVER_FAILED),
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(snaps)]))
    status = jnp.where((status == OK) & ~finite, NON_FINITE, status).astype(jnp.int32)
    return Trajectory(
        t=ts,
        observables=obs,
        snapshot_t=snap_ts,
        snapshots=snaps,
        status=status,
        num_steps=jnp.asarray(sol.stats["num_steps"], jnp.int32),
    )


def gradient_flow(
    params0: Params,
    data: TrainingData,
    ts,
    *,
    snapshot_times=None,
    config: FlowConfig = FlowConfig(),
    throw: bool = True,
) -> Trajectory:
    """Integrate θ̇ = −∇L(θ) from ``params0``, recording `Observables` at each time in ``ts``.

    Args:
        params0: initial `Params` (their dtype, float32 or float64, sets the solve's dtype).
        data: `TrainingData` (see `training_data`).
        ts: strictly increasing save times; the solve runs from ``ts[0]`` to ``ts[-1]``.
        snapshot_times: extra times at which full parameters are kept (init and end always).
        config: `FlowConfig` (solver, tolerances, max_steps).
        throw: raise `TrajectoryError` if the solve did not reach ``ts[-1]`` cleanly. Under
            ``jax.vmap`` nothing is raised: read ``status`` per seed instead.

    Returns:
        A `Trajectory`. A solve that stops early (``max_steps``) keeps its status; the records
        after the stopping time are not valid and are never reported as such.

    Example:
        >>> traj = gradient_flow(params0, data, jnp.linspace(0.0, 50.0, 101))  # doctest: +SKIP
    """
    if isinstance(ts, jax.core.Tracer):
        ts_arr = ts
        snap = jnp.asarray(snapshot_times if snapshot_times is not None else [], ts.dtype)
        snap = jnp.concatenate([ts[:1], snap, ts[-1:]])
    else:
        grid = check_time_grid(ts)
        dtype = params0.W.dtype
        ts_arr = jnp.asarray(grid, dtype)
        snap = jnp.asarray(_snapshot_grid(grid, snapshot_times), dtype)
    traj = _solve(params0, data, ts_arr, snap, config)
    return raise_if_failed(traj) if throw else traj
