"""Continuous-time gradient flow θ̇ = −∇L(θ) integrated with diffrax (docs/theory.md §1).

Observables are computed inside the solve with ``SaveAt(fn=...)`` on the user's time grid,
so full weights are kept only at the requested snapshot times.

Solvers: diffrax's explicit Runge–Kutta methods, and the implicit Gauss–Legendre collocation
methods ``gauss1`` (implicit midpoint, order 2) and ``gauss2`` (order 4) of `gflow._gauss`,
which conserve the balance Q_i of docs/theory.md §2 exactly for any step size (up to the tolerance
of
their stage equations) and are not slowed down by the jumps of the field at ReLU gate crossings.
With ``project_balance``, constant steps of Euler, Heun, Midpoint or Ralston end with a
rescaling of each neuron back to its balance (`gflow._projection`): two gradients per Heun step,
drift at rounding. Gauss and projected steps land on every save time, so saved states are never
interpolated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import NamedTuple

import diffrax
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._gauss import GatedField, GaussLegendre, SaveTimeStepSize, default_stage_rtol
from ._network import (
    PAPER,
    Model,
    Params,
    gate_slopes,
    gating_pattern,
    logit_loss,
    loss,
    preactivations,
    residuals,
)
from ._observables import TrainingData, check_labels, observe
from ._projection import BalanceProjection
from ._sliding import solve_sliding
from ._trajectory import (
    LOSS_RISE_TOLERANCE,
    LOSS_ROSE,
    MAX_STEPS_REACHED,
    NON_FINITE,
    OK,
    SLIDING_OVERFLOW,
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
# Explicit solvers that do not carry the end-of-step field to the next step (no FSAL): the ones
# `BalanceProjection` can wrap.
PROJECTABLE_SOLVERS = ("euler", "heun", "midpoint", "ralston")
# Implicit Gauss–Legendre collocation (gflow._gauss): name -> number of stages.
_GAUSS = {"gauss1": 1, "gauss2": 2}
_GAUSS_OPTIONS = ("stage_rtol", "stage_atol", "stage_max_iterations", "anderson_memory")
# The sliding-mode (Filippov) integrator of `gflow._sliding`, and its default capacity K.
SLIDING = "sliding"
DEFAULT_SLIDING_CAPACITY = 16
DEFAULT_SLIDING_HALVINGS = 3  # a step with too many candidates again at dt0/2, dt0/4, dt0/8
DEFAULT_SLIDING_STEP = 0.25  # h of the sliding solver where gflow chooses it (validate)


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Static options of the ODE solve (one compilation per distinct config).

    Attributes:
        solver: one of ``tsit5`` (default), ``dopri5``, ``dopri8``, ``bosh3``, ``heun``,
            ``ralston``, ``midpoint`` (explicit), ``euler`` (fixed step only), or the implicit
            ``gauss1`` (implicit midpoint, order 2) and ``gauss2`` (2-stage Gauss–Legendre,
            order 4), which conserve the balance exactly (docs/numerics.md §1.2), or ``sliding``:
            the sliding-mode integrator of the nonsmooth flow (`gflow._sliding`; constant steps
            ``dt0``, two gradients per step, exact sliding along gate boundaries, balance to
            rounding).
        rtol, atol: tolerances of the PID step-size controller. ``atol=None`` (default) sets
            it to ``rtol`` times the RMS entry of the initial parameters, so that a neuron
            that stays at the init scale σ is still integrated to relative accuracy ~rtol
            (a fixed atol far above σ² would let tiny neurons drift; far below, it forces
            the solver to resolve zero crossings of single weights).
        dt0: initial step (``None`` lets diffrax choose); the step for fixed-step solves. For
            ``gauss*`` with ``adaptive=False`` the largest step: each interval between save
            times is cut into equal steps of at most ``dt0``.
        adaptive: PID-controlled steps (default) or constant ``dt0`` steps.
        max_steps: solver steps allowed before the solve stops with `MAX_STEPS_REACHED`.
        stage_rtol, stage_atol: ``gauss*`` only: tolerance of the stage equations, per
            component ``stage_atol + stage_rtol·m_i`` with m_i the RMS entry of the component's
            neuron (`neuron_magnitude`). Defaults: ``stage_rtol = 1e-10`` in
            float64, ``1.2e-5`` (100 ε) in float32; ``stage_atol = stage_rtol`` times the RMS
            entry of the initial parameters. The balance drift is of the order of the
            residual these allow times the step's relative change, whatever the step.
        stage_max_iterations: ``gauss*`` only: stage-solve sweeps per step (default 50; each
            costs one gradient per stage). A step whose stage equations are not solved is
            rejected: adaptive steps shrink by the PID rule, constant steps are retried at half
            length (up to 6 times, `SaveTimeStepSize`) before the solve stops with `SOLVER_FAILED`.
        anderson_memory: ``gauss*`` only: Anderson acceleration memory of the stage solve
            (default 8; 0 = plain fixed-point iteration, which needs ``h·λ_max(∇²L) < 2``).
        project_balance: constant steps of ``euler``, ``heun``, ``midpoint`` or ``ralston``
            only: after every step, rescale each neuron along its orbit
            ``(c w_i, c b_i, v_i / c)`` back to its balance Q_i at the start of the solve
            (`gflow._projection`): the network function is unchanged, the balance is conserved
            to rounding, the method keeps its order, and `FlowStats.balance_defect_max` reports
            the largest one-step defect removed. Steps land on every save time (as for ``gauss*``).
        sliding_capacity: ``sliding`` only: K, the most pairs of one neuron that may sit on or
            reach their gate boundaries in one step (default 16). A step with more is taken
            again at half length (see ``sliding_halvings``); at the shortest length it is the
            status `SLIDING_OVERFLOW`, never silent.
        sliding_halvings: ``sliding`` only: how many times a step with more than K candidates
            in a neuron is halved and taken again (default 3: down to dt0/8; 0: never, the
            overflow is the status at once). Retaken steps count in ``num_steps``, in the
            gradients and as `FlowStats.num_rejected_steps`; `SlidingRecord.halvings` has them
            per save interval.

    With constant steps (``adaptive=False``, any solver) a loss that rises between save times (a
    step too large for the flow there) is the status `LOSS_ROSE` (`loss_rose`).
    """

    solver: str = "tsit5"
    rtol: float = 1e-6
    atol: float | None = None
    dt0: float | None = None
    adaptive: bool = True
    max_steps: int = 100_000
    stage_rtol: float | None = None
    stage_atol: float | None = None
    stage_max_iterations: int | None = None
    anderson_memory: int | None = None
    project_balance: bool = False
    sliding_capacity: int | None = None
    sliding_halvings: int | None = None

    def __post_init__(self):
        if self.solver not in _SOLVERS and self.solver not in _GAUSS and self.solver != SLIDING:
            raise ValueError(
                f"solver must be one of {sorted([*_SOLVERS, *_GAUSS, SLIDING])}; got "
                f"{self.solver!r}."
            )
        if self.solver == SLIDING and self.adaptive:
            raise ValueError(
                "solver='sliding' takes constant steps: pass adaptive=False and dt0 > 0."
            )
        for name, least in (("sliding_capacity", 1), ("sliding_halvings", 0)):
            k = getattr(self, name)
            if k is None:
                continue
            if self.solver != SLIDING:
                raise ValueError(
                    f"{name} only applies to solver='sliding'; got solver={self.solver!r}."
                )
            if isinstance(k, bool) or not isinstance(k, int) or k < least:
                raise ValueError(f"{name} must be an integer >= {least}; got {k!r}.")
        if self.solver not in _GAUSS:
            given = [name for name in _GAUSS_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to the implicit solvers {sorted(_GAUSS)}; "
                    f"got solver={self.solver!r}."
                )
        for name in ("stage_rtol", "stage_atol"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"{name} must be a finite number > 0 or None; got {value!r}.")
        for name, low in (("stage_max_iterations", 1), ("anderson_memory", 0)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(f"{name} must be an integer >= {low} or None; got {value!r}.")
        if self.project_balance and (self.solver not in PROJECTABLE_SOLVERS or self.adaptive):
            raise ValueError(
                f"project_balance needs constant steps (adaptive=False) of one of "
                f"{list(PROJECTABLE_SOLVERS)}; got solver={self.solver!r}, "
                f"adaptive={self.adaptive}."
            )
        if not (self.rtol > 0 and (self.atol is None or self.atol > 0)):
            raise ValueError(
                f"rtol and atol must be > 0; got rtol={self.rtol!r}, atol={self.atol!r}."
            )
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer; got {self.max_steps!r}.")
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(f"dt0 must be > 0 or None; got {self.dt0!r}.")
        if (not self.adaptive or self.solver in _FIXED_STEP_ONLY) and self.dt0 is None:
            raise ValueError(
                f"a fixed-step solve (solver={self.solver!r}, adaptive={self.adaptive}) needs dt0 "
                "> 0."
            )


def vector_field(t, params: Params, data: TrainingData, model: Model = PAPER) -> Params:
    """f(t, θ) = −∇L(θ), the gradient-flow vector field, handed to ``diffrax.ODETerm``."""
    del t
    grad = jax.grad(loss)(params, data.x, data.y, model)
    return jax.tree.map(jnp.negative, grad)


def gated_loss(
    params: Params, gates: jax.Array, x: jax.Array, y: jax.Array, model: Model = PAPER
) -> jax.Array:
    """L of the network whose gates are held at ``gates`` ``[N, d]`` in [0, 1] (docs/theory.md §1, g
    fixed).

        a_i(s) = g_i(s) z_i(x_s),   o(x_s) = Σ_i v_i a_i(s),   L_g = (1/N) Σ_s −log
        softmax(o(x_s))_{c_s}

    (for the leaky ReLU a_i(s) = (α + (1 − α) g_i(s)) z_i(x_s); for the square loss
    ℓ = ½‖o − e_c‖²). Equal to `loss` when ``gates = gating_pattern(params, x)``. For any fixed g
    the output is unchanged by ``(w_i, b_i, v_i) → (c w_i, c b_i, v_i / c)``, so
    ``Q_i'·∇L_g = 0`` at every θ: a Gauss–Legendre step with the gates held conserves every
    balance Q_i exactly (docs/numerics.md §1.2).
    """
    a = gate_slopes(gates.astype(x.dtype), model) * preactivations(params, x)
    return jnp.mean(logit_loss(a @ params.V, y, model))


def gated_field(
    t, params: Params, data: TrainingData, gates: jax.Array, model: Model = PAPER
) -> Params:
    """``−∇L_g(θ)``: the flow's field with the gates held at ``gates`` (`gated_loss`)."""
    del t
    grad = jax.grad(gated_loss)(params, gates, data.x, data.y, model)
    return jax.tree.map(jnp.negative, grad)


def ramp_gates(params: Params, data: TrainingData, band: jax.Array) -> jax.Array:
    """``g_i(s) = clip(½ + z_i(s)/δ_i(s), 0, 1)``, the ReLU gate (`gating_pattern`) where δ = 0."""
    z = preactivations(params, data.x)
    hard = gating_pattern(params, data.x).astype(z.dtype)
    return jnp.where(band > 0, jnp.clip(0.5 + z / jnp.where(band > 0, band, 1.0), 0.0, 1.0), hard)


def banded_field(
    t, params: Params, data: TrainingData, band: jax.Array, model: Model = PAPER
) -> Params:
    """``−∇L_g(θ)`` with g = `ramp_gates` (θ, band), the gates held constant in the gradient."""
    gates = jax.lax.stop_gradient(ramp_gates(params, data, band))
    return gated_field(t, params, data, gates, model)


def gate_band(t, params: Params, data: TrainingData, velocity: Params, width, model: Model = PAPER):
    """Width δ ``[N, d]`` of the band around each gate hyperplane in which a Gauss stage at θ,
    standing for ``width`` of time, uses a fractional gate (`ramp_gates`); and how many of the
    stage's own pre-activations lie in it.

        δ_i(s) = width · max(|ż_i(s)|, κ_i(s)),   ż_i(s) = w_i'·x_s + b_i',   κ_i(s) =
        (1/N)|v_i·r_s| (‖x_s‖² + 1)

    with θ' = ``velocity`` (the predicted stage derivative): |z| < δ/2 is where the sample's
    gate can change within the sub-step; κ_i(s) is the rate at which the sample's own gate
    moves its own pre-activation. A transversal crossing inside the step then gets the fraction
    of the sub-step it spends active (to first order), and a sample the flow slides along
    (Filippov) a gate at which its pre-activation stays put, found by the stage solve together
    with every other gate of the neuron.
    """
    del t
    x = data.x
    z = preactivations(params, x)
    z_dot = x @ velocity.W.T + velocity.b[None, :]
    jump = 1.0 - model.slope  # the gate's share of the activation's slope
    self_rate = (
        jump
        * jnp.abs(residuals(params, x, data.y, model) @ params.V.T)
        * (jnp.sum(x * x, axis=1) + 1.0)[:, None]
    )
    band = width * jnp.maximum(jnp.abs(z_dot), self_rate / x.shape[0])
    return band, jnp.sum(jnp.abs(z) < 0.5 * band, dtype=jnp.int32)


def neuron_magnitude(params: Params) -> Params:
    """Each neuron's RMS entry ``sqrt((‖w_i‖² + b_i² + ‖v_i‖²)/(D + 3))`` on all its entries: the
    scale of the Gauss solvers' stage tolerance (a neuron is solved to accuracy relative to its
    own size, not to the size of its largest or smallest entry)."""
    sq = jnp.sum(params.W**2, axis=1) + params.b**2 + jnp.sum(params.V**2, axis=1)
    rms = jnp.sqrt(sq / (params.W.shape[1] + 1 + params.V.shape[1]))
    return Params(
        W=jnp.broadcast_to(rms[:, None], params.W.shape),
        b=rms,
        V=jnp.broadcast_to(rms[:, None], params.V.shape),
    )


GATES = GatedField(hold=gate_band, field=banded_field, magnitude=neuron_magnitude)


def gated_field_of(model: Model) -> GatedField:
    """`GATES` for the network ``model`` computes (a piecewise-linear activation)."""
    if model == PAPER:
        return GATES
    return GatedField(
        hold=functools.partial(gate_band, model=model),
        field=functools.partial(banded_field, model=model),
        magnitude=neuron_magnitude,
    )


def check_model(model: Model, config: FlowConfig) -> None:
    """``ValueError`` when ``config.solver`` cannot integrate the flow of ``model``: the Gauss,
    projected and sliding solvers are built on a piecewise-linear, positively homogeneous
    activation (ReLU or leaky ReLU) of the network itself, not its linearisation."""
    if not isinstance(model, Model):
        raise ValueError(f"model must be a gflow Model; got {type(model).__name__}.")
    special = (
        f"solver={config.solver!r}"
        if config.solver in _GAUSS or config.solver == SLIDING
        else ("project_balance" if config.project_balance else None)
    )
    if special is not None and not model.piecewise_linear:
        raise ValueError(
            f"{special} needs a ReLU or leaky-ReLU network (gates, balance); the model is "
            f"{model.describe()}: use an explicit solver (tsit5, dopri5, dopri8, ...)."
        )


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
        raise ValueError(
            f"{name} must be strictly increasing; {name}[{i}]={arr[i]} >= "
            f"{name}[{i + 1}]={arr[i + 1]}."
        )
    return arr


def _snapshot_grid(ts: np.ndarray, snapshot_times) -> np.ndarray:
    extra = np.asarray(
        snapshot_times if snapshot_times is not None else (), dtype=np.float64
    ).ravel()
    if extra.size and (np.any(extra < ts[0]) or np.any(extra > ts[-1])):
        raise ValueError(
            f"snapshot_times must lie within [{ts[0]}, {ts[-1]}]; got {extra.tolist()}."
        )
    return np.unique(np.concatenate([[ts[0], ts[-1]], extra]))


class FlowStats(NamedTuple):
    """Cost of a solve (``gradient_flow(..., return_stats=True)``).

    Attributes:
        num_steps, num_accepted_steps, num_rejected_steps: solver steps (diffrax's counts).
        evaluations: gradient evaluations ∇L. Implicit solvers count them (rejected steps
            excluded); explicit ones are counted from the tableau (stages per step, FSAL and
            the initial-step guess included).
        stage_iterations_max: most stage-solve sweeps in one step (implicit solvers; else 0).
        fractional_gates: gates caught inside their band, i.e. fractional (a ReLU gate crossing
            or sliding within the step; `gate_band`), summed over steps and stages.
        stage_residual_max: largest scaled residual of the stage equations (≤ 1 when solved).
        balance_defect_max: with ``project_balance``, the largest relative change of a Q_i in
            one step before the projection (`gflow._projection.balance_defect`); else 0.
    """

    num_steps: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array
    evaluations: jax.Array
    stage_iterations_max: jax.Array
    fractional_gates: jax.Array
    stage_residual_max: jax.Array
    balance_defect_max: jax.Array


class _Tolerances(NamedTuple):
    """The numeric options of a `FlowConfig`, passed to the jitted solve as traced scalars so
    that a new rtol, atol or dt0 reuses the compiled solve (``NaN`` marks an option left None)."""

    rtol: jax.Array
    atol: jax.Array
    dt0: jax.Array


def _split_config(config: FlowConfig, dtype) -> tuple[FlowConfig, _Tolerances]:
    """``config`` with rtol/atol/dt0 replaced by placeholders (only whether each is None stays
    static), and their values as traced scalars."""
    nan = float("nan")
    tol = _Tolerances(
        rtol=jnp.asarray(config.rtol, dtype),
        atol=jnp.asarray(nan if config.atol is None else config.atol, dtype),
        dt0=jnp.asarray(nan if config.dt0 is None else config.dt0, dtype),
    )
    static = dataclasses.replace(
        config,
        rtol=1.0,
        atol=None if config.atol is None else 1.0,
        dt0=None if config.dt0 is None else 1.0,
    )
    return static, tol


def _absolute_tolerance(params0: Params, config: FlowConfig, tol: _Tolerances):
    if config.atol is not None:
        return tol.atol
    return tol.rtol * _rms(params0)


def _rms(params: Params):
    leaves = jax.tree.leaves(params)
    return jnp.sqrt(sum(jnp.sum(a * a) for a in leaves) / sum(a.size for a in leaves))


def _gauss_solver(params0: Params, config: FlowConfig, model: Model) -> GaussLegendre:
    dtype = params0.W.dtype
    rtol = config.stage_rtol if config.stage_rtol is not None else default_stage_rtol(dtype)
    atol = config.stage_atol if config.stage_atol is not None else rtol * _rms(params0)
    return GaussLegendre(
        stages=_GAUSS[config.solver],
        stage_rtol=rtol,
        stage_atol=atol,
        max_iterations=config.stage_max_iterations or 50,
        anderson_memory=8 if config.anderson_memory is None else config.anderson_memory,
        gated=gated_field_of(model),
    )


def _explicit_evaluations(solver, config: FlowConfig, num_steps):
    tableau = getattr(solver, "tableau", None)
    if tableau is None:  # Euler
        return num_steps
    stages = len(tableau.c) + 1
    fsal = bool(tableau.fsal)
    initial_guess = 2 if (config.adaptive and config.dt0 is None) else 0
    return num_steps * (stages - fsal) + fsal + initial_guess


@functools.partial(jax.jit, static_argnames=("config",))
def _solve(
    params0: Params,
    data: TrainingData,
    ts: jax.Array,
    snap_ts: jax.Array,
    tol: _Tolerances,
    config: FlowConfig,
    model: Model,
) -> tuple[Trajectory, FlowStats]:
    gauss = config.solver in _GAUSS
    dt0 = None if config.dt0 is None else tol.dt0
    # Gauss and projected steps land on every save time: saved states are step end points,
    # never interpolated (interpolation would not conserve the balance).
    step_ts = jnp.sort(jnp.concatenate([ts, snap_ts]))
    if gauss:
        solver = _gauss_solver(params0, config, model)
        if config.adaptive:
            pid = diffrax.PIDController(
                rtol=tol.rtol, atol=_absolute_tolerance(params0, config, tol)
            )
            controller = diffrax.ClipStepSizeController(pid, step_ts=step_ts)
        else:
            controller = SaveTimeStepSize(dt=tol.dt0.astype(ts.dtype), step_ts=step_ts)
            dt0 = None
    elif config.project_balance:
        solver = BalanceProjection(_SOLVERS[config.solver]())
        controller = SaveTimeStepSize(dt=tol.dt0.astype(ts.dtype), step_ts=step_ts)
        dt0 = None
    else:
        solver = _SOLVERS[config.solver]()
        if config.adaptive and config.solver not in _FIXED_STEP_ONLY:
            controller = diffrax.PIDController(
                rtol=tol.rtol, atol=_absolute_tolerance(params0, config, tol)
            )
        else:
            controller = diffrax.ConstantStepSize()
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=lambda t, y, args: observe(y, args, model)),
            diffrax.SubSaveAt(ts=snap_ts),
        ],
        solver_state=gauss or config.project_balance,
    )
    with warnings.catch_warnings():
        # diffrax pre-fills save buffers with inf, which NumPy warns about when casting to the
        # integer observables (kappa, active, cell_hash); the filled entries are overwritten.
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(
                vector_field if model == PAPER else functools.partial(vector_field, model=model)
            ),
            solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=dt0,
            y0=params0,
            args=data,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=config.max_steps,
            throw=False,
        )
    assert sol.ys is not None  # SaveAt(subs=...) always saves
    obs, snaps = sol.ys
    result = sol.result
    status = jnp.where(
        result == diffrax.RESULTS.successful,
        OK,
        jnp.where(result == diffrax.RESULTS.max_steps_reached, MAX_STEPS_REACHED, SOLVER_FAILED),
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(snaps)]))
    status = jnp.where((status == OK) & ~finite, NON_FINITE, status)
    if not config.adaptive or config.solver in _FIXED_STEP_ONLY:
        status = _loss_rose_status(status, obs.loss)
    status = status.astype(jnp.int32)
    num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    traj = Trajectory(
        t=ts,
        observables=obs,
        snapshot_t=snap_ts,
        snapshots=snaps,
        status=status,
        num_steps=num_steps,
    )
    zero = jnp.asarray(0, jnp.int32)
    no_defect = jnp.asarray(0.0, params0.W.dtype)
    state = sol.solver_state
    if gauss:
        assert state is not None  # SaveAt(solver_state=True)
        implicit = (
            state.evaluations,
            state.iterations_max,
            state.fractional_gates,
            state.residual_max,
            no_defect,
        )
    else:
        inner = solver.solver if isinstance(solver, BalanceProjection) else solver
        defect = state[1] if state is not None and config.project_balance else no_defect
        implicit = (
            jnp.asarray(_explicit_evaluations(inner, config, num_steps), jnp.int32),
            zero,
            zero,
            no_defect,
            defect,
        )
    stats = FlowStats(
        num_steps,
        jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
        jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32),
        *implicit,
    )
    return traj, stats


def loss_rose(loss: jax.Array) -> jax.Array:
    """Whether the loss ``[..., T]`` rose between consecutive save times by more than
    ``LOSS_RISE_TOLERANCE`` of itself: ``L(t_{k+1}) − L(t_k) > tol·|L(t_k)|`` for some k. The
    gradient flow never raises L (``dL/dt = −‖θ'‖²``), so a constant-step solve that does has
    stepped past what the flow allows there; rounding stays far below the tolerance (the stable
    solves of the demo and the drop problem never raise L at all).

    Example:
        >>> [bool(loss_rose(jnp.array(v))) for v in ([0.7, 0.5, 0.3], [0.7, 0.5, 0.6])]
        [False, True]
    """
    previous, later = loss[..., :-1], loss[..., 1:]
    return jnp.any(later - previous > LOSS_RISE_TOLERANCE * jnp.abs(previous), axis=-1)


def _loss_rose_status(status: jax.Array, loss: jax.Array) -> jax.Array:
    """``status`` with `LOSS_ROSE` where a constant-step solve otherwise ok raised the loss
    (`loss_rose`): its step was past what the flow allows there."""
    return jnp.where((status == OK) & loss_rose(loss), LOSS_ROSE, status)


def _solve_sliding(
    params0: Params, data: TrainingData, ts, snapshot_times, config: FlowConfig, model: Model
) -> tuple[Trajectory, FlowStats]:
    """The ``sliding`` solver (`gflow._sliding.solve_sliding`) on the save grid ``ts``, with the
    snapshot times merged into its step grid."""
    dtype = params0.W.dtype
    if isinstance(ts, jax.core.Tracer):
        if snapshot_times is not None:
            raise ValueError(
                "solver='sliding' with traced save times keeps snapshots at the ends only; "
                "pass snapshot_times=None."
            )
        grid = ts
        save_pos = jnp.arange(ts.shape[0])
        snap_pos = jnp.array([0, ts.shape[0] - 1])
        snap_t = grid[snap_pos]
    else:
        ts_np = check_time_grid(ts)
        snap_np = _snapshot_grid(ts_np, snapshot_times)
        grid_np = np.union1d(ts_np, snap_np)
        grid = jnp.asarray(grid_np, dtype)
        save_pos = jnp.asarray(np.searchsorted(grid_np, ts_np))
        snap_pos = jnp.asarray(np.searchsorted(grid_np, snap_np))
        snap_t = jnp.asarray(snap_np, dtype)
    capacity = config.sliding_capacity or DEFAULT_SLIDING_CAPACITY
    sol = solve_sliding(
        params0,
        data,
        grid,
        save_pos,
        snap_pos,
        config.dt0,
        capacity=capacity,
        max_steps=config.max_steps,
        model=model,
        halvings=(
            DEFAULT_SLIDING_HALVINGS if config.sliding_halvings is None else config.sliding_halvings
        ),
    )
    status = jnp.where(
        sol.steps_needed > config.max_steps,
        MAX_STEPS_REACHED,
        jnp.where(
            ~sol.final_finite,
            NON_FINITE,
            jnp.where(jnp.any(sol.record.overflow, axis=-1), SLIDING_OVERFLOW, OK),
        ),
    )
    status = _loss_rose_status(status, sol.observables.loss)
    traj = Trajectory(
        t=grid[save_pos],
        observables=sol.observables,
        snapshot_t=snap_t,
        snapshots=sol.snapshots,
        status=status.astype(jnp.int32),
        num_steps=sol.num_steps,
        sliding=sol.record,
    )
    zero = jnp.zeros_like(sol.num_steps)
    stats = FlowStats(
        num_steps=sol.num_steps,
        num_accepted_steps=sol.num_steps - sol.rejected_steps,
        num_rejected_steps=sol.rejected_steps,
        evaluations=2 * sol.num_steps,
        stage_iterations_max=zero,
        fractional_gates=jnp.sum(sol.record.crossings, axis=-1),
        stage_residual_max=jnp.max(sol.record.qp_violation, axis=-1),
        balance_defect_max=sol.balance_defect_max,
    )
    return traj, stats


def gradient_flow(
    params0: Params,
    data: TrainingData,
    ts,
    *,
    snapshot_times=None,
    config: FlowConfig = FlowConfig(),
    throw: bool = True,
    return_stats: bool = False,
    model: Model = PAPER,
) -> Trajectory | tuple[Trajectory, FlowStats]:
    """Integrate θ̇ = −∇L(θ) from ``params0``, recording `Observables` at each time in ``ts``.

    Args:
        params0: initial `Params` (their dtype, float32 or float64, sets the solve's dtype).
        data: `TrainingData` (see `training_data`).
        ts: strictly increasing save times; the solve runs from ``ts[0]`` to ``ts[-1]``.
        snapshot_times: extra times at which full parameters are kept (init and end always).
        config: `FlowConfig` (solver, tolerances, max_steps).
        throw: raise `TrajectoryError` if the solve did not reach ``ts[-1]`` cleanly. Under
            ``jax.vmap`` nothing is raised: read ``status`` per seed instead.
        return_stats: also return the solve's `FlowStats` (steps, gradient evaluations).
        model: the `Model` whose loss L is (activation, loss, K from ``V``'s width, or a
            linearised twin); default the paper's ReLU network with cross-entropy.

    Returns:
        A `Trajectory` (and `FlowStats` with ``return_stats``). A solve that stops early
        (``max_steps``) keeps its status; the records after the stopping time are not valid and
        are never reported as such.

    Example:
        >>> from gflow import gaussian_clusters, init_params, training_data
        >>> data = training_data(gaussian_clusters(n_samples=40, dim=5, test_samples=0))
        >>> params0 = init_params(jax.random.key(0), 8, 5, 0.1)
        >>> ts = jnp.linspace(0.0, 4.0, 5)
        >>> traj = gradient_flow(params0, data, ts)  # Tsit5, adaptive
        >>> traj.observables.P.shape  # [T, d]
        (5, 8)
        >>> cfg = FlowConfig(solver="gauss1", adaptive=False, dt0=0.5)  # implicit midpoint
        >>> traj, stats = gradient_flow(params0, data, ts, config=cfg, return_stats=True)
        >>> int(stats.num_steps)  # 8 constant steps of 0.5, landing on every save time
        8

        The sliding-mode solver of the nonsmooth flow (docs/theory.md §8.1) is selected the same
        way, ``FlowConfig(solver="sliding", adaptive=False, dt0=0.25)``: 2 gradients per step.
    """
    check_model(model, config)
    check_labels(data, params0)
    if config.solver == SLIDING:
        traj, stats = _solve_sliding(params0, data, ts, snapshot_times, config, model)
        if throw:
            raise_if_failed(traj)
        return (traj, stats) if return_stats else traj
    if isinstance(ts, jax.core.Tracer):
        ts_arr = ts
        snap = jnp.asarray(snapshot_times if snapshot_times is not None else [], ts.dtype)
        snap = jnp.concatenate([ts[:1], snap, ts[-1:]])
    else:
        grid = check_time_grid(ts)
        dtype = params0.W.dtype
        ts_arr = jnp.asarray(grid, dtype)
        snap = jnp.asarray(_snapshot_grid(grid, snapshot_times), dtype)
    static, tol = _split_config(config, params0.W.dtype)
    traj, stats = _solve(params0, data, ts_arr, snap, tol, static, model)
    if throw:
        raise_if_failed(traj)
    return (traj, stats) if return_stats else traj
