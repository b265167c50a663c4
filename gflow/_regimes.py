"""The lazy and the rich regime, measured with the linearised twin (docs/regimes.md).

The twin of the network at θ₀ is its first-order Taylor model (`gflow.linearised`)

    f_lin(θ; x) = f(θ₀; x) + J(θ₀; x)(θ − θ₀),        J(θ; x) = ∂f(θ; x)/∂θ  ``[K, |θ|]``,

trained by the same trainer from the same start. Where the twin follows the network, training
is *lazy*: the network moves in the tangent space of θ₀, with the fixed tangent kernel

    Θ(x, x') = J(θ; x) J(θ; x')ᵀ  ``[K, K]``.

Where it does not, training is *rich*: neurons align, unlock and race (docs/theory.md §3–§5).
The measures below (all against θ₀ and the twin):

    relative change      ‖θ − θ₀‖ / ‖θ₀‖                       (global Euclidean norms)
    kernel change        ‖Θ_θ − Θ_θ₀‖_F / ‖Θ_θ₀‖_F              (on a probe set)
    function distance    RMS_s ‖f(θ; x_s) − f_lin(θ'; x_s)‖ / RMS_s ‖f(θ; x_s) − f(θ₀; x_s)‖

**Lazy limit** (docs/regimes.md). In this parametrisation (no 1/√d) every block of J is of
order σ per neuron, so Θ ~ dσ²: an O(1) change of the outputs takes flow time t ~ 1/(dσ²) and
moves each neuron by Δθ_i ~ 1/(dσ), i.e. ‖Δθ‖ ~ 1/(√d σ) and ‖Δθ‖/‖θ₀‖ ~ 1/(dσ²). The Taylor
remainder f − f_lin = ½ Σ_i Δθ_iᵀ H_i Δθ_i (H_i = O(‖x‖), the w–v cross block and the gate
flips) is of order d (1/(dσ))² = 1/(dσ²): over a horizon t = c/(dσ²) the normalised function
distance falls as 1/(dσ²), quadratic in ‖Δθ‖ and linear in the relative change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._capacity import neuron_clusters
from ._flow import FlowConfig, gradient_flow
from ._network import PAPER, Model, Params, linearised, logits
from ._observables import TrainingData
from ._sgd import SGDConfig, train_sgd
from ._trajectory import Trajectory

# Largest number of parameter-sized cotangents the kernel holds at once (entries, all chunks).
KERNEL_CHUNK_ENTRIES = 1 << 22
TOP_FRACTION = 0.1
THRESHOLD = 0.95
DEFAULT_PROBE = 32
FLOW = FlowConfig()  # the default trainer: Tsit5, adaptive, rtol 1e-6

# --------------------------------------------------------------------------- checks


def check_params(params: Params, name: str = "params") -> tuple[int, int, int]:
    """(d, D, K) of ``params``; ``ValueError`` when the shapes of W ``[d, D]``, b ``[d]`` and V
    ``[d, K]`` disagree or a size is not positive."""
    W, b, V = (jnp.shape(a) for a in params)
    if len(W) != 2 or len(b) != 1 or len(V) != 2:
        raise ValueError(
            f"{name} must hold W [d, D], b [d], V [d, K] (no leading seed axis); got shapes "
            f"W {W}, b {b}, V {V}."
        )
    d, dim = W
    if b[0] != d or V[0] != d:
        raise ValueError(f"{name}: W {W}, b {b} and V {V} disagree on the width d.")
    if d <= 0 or dim <= 0 or V[1] <= 0:
        raise ValueError(f"{name}: sizes must be positive; got d = {d}, D = {dim}, K = {V[1]}.")
    return d, dim, V[1]


def _check_same_shape(a: Params, b: Params, names: str) -> None:
    if any(jnp.shape(x) != jnp.shape(y) for x, y in zip(a, b)):
        raise ValueError(
            f"{names} must have the same shapes; got "
            f"{[jnp.shape(x) for x in a]} and {[jnp.shape(y) for y in b]}."
        )


def _check_inputs(x, dim: int, name: str = "x_probe") -> None:
    shape = jnp.shape(x)
    if len(shape) != 2 or shape[0] <= 0:
        raise ValueError(f"{name} must be a non-empty [P, D] array; got shape {shape}.")
    if shape[1] != dim:
        raise ValueError(f"{name} has D = {shape[1]} columns but the network takes D = {dim}.")


def _network_of(model: Model) -> Model:
    """The network a model computes, without a linearisation point."""
    return dataclasses.replace(model, anchor=None) if model.anchor is not None else model


# --------------------------------------------------------------------------- tangent kernel


def _kernel_chunk(num_params: int, outputs: int) -> int:
    return max(1, min(outputs, KERNEL_CHUNK_ENTRIES // max(num_params, 1)))


def kernel(params: Params, x_probe, model: Model = PAPER) -> jax.Array:
    """The empirical tangent kernel on a probe set, ``[P·K, P·K]``:

        Θ = J Jᵀ,   J = ∂ vec f(θ; x_probe) / ∂θ  ``[P·K, |θ|]``,   row s·K + k = output k of x_s.

    Column j is ``J (Jᵀ e_j)``: one reverse-mode product (``jax.vjp``) and one forward-mode
    product (``jax.linearize``), mapped over the P·K outputs in chunks that hold at most
    `KERNEL_CHUNK_ENTRIES` parameter entries, so J itself is never formed. For a linearised
    ``model`` (a twin) this is Θ at its anchor θ₀, whatever ``params``.
    """
    _, dim, _ = check_params(params)
    _check_inputs(x_probe, dim)
    return _kernel(params, jnp.asarray(x_probe, params.W.dtype), model)


@jax.jit
def _kernel(params: Params, x: jax.Array, model: Model) -> jax.Array:
    def outputs(p: Params) -> jax.Array:
        return logits(p, x, model).reshape(-1)

    _, push = jax.linearize(outputs, params)
    _, pull = jax.vjp(outputs, params)
    size = x.shape[0] * params.V.shape[1]
    num_params = sum(int(np.prod(jnp.shape(a))) for a in params)

    def column(e: jax.Array) -> jax.Array:
        (cotangent,) = pull(e)
        return push(cotangent)

    basis = jnp.eye(size, dtype=params.W.dtype)
    return jax.lax.map(column, basis, batch_size=_kernel_chunk(num_params, size))


def kernel_distance(k_t: jax.Array, k_0: jax.Array) -> jax.Array:
    """‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F of two kernels of one probe set (NaN when Θ_0 = 0)."""
    if jnp.shape(k_t) != jnp.shape(k_0):
        raise ValueError(f"kernels differ in shape: {jnp.shape(k_t)} and {jnp.shape(k_0)}.")
    den = jnp.linalg.norm(k_0)
    return jnp.where(den > 0, jnp.linalg.norm(k_t - k_0) / jnp.where(den > 0, den, 1.0), jnp.nan)


def kernel_change(params_t: Params, params_0: Params, x_probe, model: Model = PAPER) -> jax.Array:
    """‖Θ(θ_t) − Θ(θ₀)‖_F / ‖Θ(θ₀)‖_F, the relative change of the tangent kernel (`kernel`) on
    ``x_probe``: ~0 in the lazy regime, O(1) and more in the rich one."""
    _check_same_shape(params_t, params_0, "params_t and params_0")
    network = _network_of(model)
    return kernel_distance(kernel(params_t, x_probe, network), kernel(params_0, x_probe, network))


# --------------------------------------------------------------------------- distances


def _global_norm(params: Params) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in params))


def relative_change(params_t: Params, params_0: Params) -> jax.Array:
    """‖θ_t − θ₀‖ / ‖θ₀‖ over all of (W, b, V) (NaN when θ₀ = 0).

    Example:
        >>> p0 = Params(W=jnp.ones((2, 3)), b=jnp.zeros(2), V=jnp.ones((2, 2)))
        >>> round(float(relative_change(p0._replace(V=2 * p0.V), p0)), 4)  # ‖V‖ / ‖θ₀‖ = 2/√10
        0.6325
    """
    _check_same_shape(params_t, params_0, "params_t and params_0")
    den = _global_norm(params_0)
    num = _global_norm(Params(*(a - b for a, b in zip(params_t, params_0))))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def function_distance(params: Params, twin_params: Params, x, twin: Model) -> jax.Array:
    """How far the network has left its twin, relative to how far it has moved:

        D = √((1/N) Σ_s ‖f(θ; x_s) − f_lin(θ'; x_s)‖²) / √((1/N) Σ_s ‖f(θ; x_s) − f(θ₀; x_s)‖²)

    with θ the network's parameters, θ' the twin's (at the same time), ``twin`` the linearised
    model ``linearised(θ₀, model)`` (it carries θ₀ and the network), f_lin its output and
    ‖·‖ the Euclidean norm over the K outputs. The numerator is the RMS over samples of the
    network–twin gap; it is normalised by the RMS over the same samples of the network's own
    output change since θ₀. D ≪ 1: lazy; D ~ 1: the twin has not captured the network's
    move. NaN while the network has not moved (θ = θ₀).
    """
    if twin.anchor is None:
        raise ValueError("twin must be a linearised model: pass linearised(params0, model).")
    _, dim, _ = check_params(params)
    _check_same_shape(params, twin_params, "params and twin_params")
    _check_same_shape(params, twin.anchor, "params and the twin's anchor θ₀")
    _check_inputs(x, dim, "x")
    network = _network_of(twin)
    f = logits(params, x, network)
    gap = jnp.sqrt(jnp.mean(jnp.sum((f - logits(twin_params, x, twin)) ** 2, axis=-1)))
    moved = jnp.sqrt(jnp.mean(jnp.sum((f - logits(twin.anchor, x, network)) ** 2, axis=-1)))
    return jnp.where(moved > 0, gap / jnp.where(moved > 0, moved, 1.0), jnp.nan)


# --------------------------------------------------------------------------- the race's summaries


def top_share(params: Params, fraction: float = TOP_FRACTION) -> float:
    """Share of Σ_i P_i held by the top ⌈fraction·d⌉ neurons, P_i = ‖w_i‖‖v_i‖:

        S = Σ_{i ∈ top} P_i / Σ_i P_i

    (S = fraction for equal P_i; S → 1 when few neurons win the race.)

    Example:
        >>> W = jnp.array([[3.0, 0.0]] + [[1.0, 0.0]] * 9)
        >>> top_share(Params(W=W, b=jnp.zeros(10), V=jnp.ones((10, 2))))
        0.25
    """
    d, _, _ = check_params(params)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1]; got {fraction!r}.")
    P = np.linalg.norm(np.asarray(params.W), axis=1) * np.linalg.norm(np.asarray(params.V), axis=1)
    total = float(np.sum(P))
    if not total > 0:
        return float("nan")
    k = max(1, math.ceil(fraction * d))
    return float(np.sum(np.sort(P)[::-1][:k]) / total)


# --------------------------------------------------------------------------- twin runs


class TwinRun(NamedTuple):
    """A network and its linearised twin trained by the same trainer from the same θ₀.

    Attributes:
        network, twin: the two `Trajectory` records (observables on the time grid, snapshots).
        t: snapshot times ``[S]`` (init and end included).
        relative_change, twin_relative_change: ‖θ − θ₀‖/‖θ₀‖ at each snapshot ``[S]``.
        function_distance: network–twin distance of `function_distance` on the training inputs
            ``[S]`` (NaN at t = 0).
        kernel_change: the network's ‖Θ_t − Θ₀‖_F/‖Θ₀‖_F on the probe set ``[S]`` (the twin's
            is 0 by construction).
        top_share, twin_top_share: share of Σ P_i of the top 10% of neurons at the end.
        clusters, twin_clusters: clusters at cosine τ = 0.95 at the end
            (`gflow.capacity.neuron_clusters`).
    """

    network: Trajectory
    twin: Trajectory
    t: np.ndarray
    relative_change: np.ndarray
    twin_relative_change: np.ndarray
    function_distance: np.ndarray
    kernel_change: np.ndarray
    top_share: float
    twin_top_share: float
    clusters: int
    twin_clusters: int


def train_twins(
    params0: Params,
    data: TrainingData,
    ts=None,
    *,
    config: FlowConfig | SGDConfig = FLOW,
    model: Model = PAPER,
    snapshot_times=None,
    key: jax.Array | None = None,
    learning_rate=None,
    momentum=0.0,
    throw: bool = True,
) -> tuple[Trajectory, Trajectory]:
    """The network and its twin ``linearised(params0, model)`` trained alike from ``params0``.

    ``config`` picks the trainer: a `FlowConfig` integrates θ̇ = −∇L(θ) on the save grid ``ts``
    (`gradient_flow`, full parameters at ``snapshot_times``); an `SGDConfig` takes its steps
    with ``learning_rate``, ``momentum`` and the mini-batch order of ``key``, the same for both
    (`train_sgd`). Pure JAX: may be vmapped over ``params0`` (and ``ts``, ``key``) with
    ``throw=False``.
    """
    if model.anchor is not None:
        raise ValueError("model must be the network, not a linearised model.")
    twin = linearised(params0, model)
    if isinstance(config, FlowConfig):
        if ts is None:
            raise ValueError("the flow needs its save times ts.")
        if key is not None or learning_rate is not None:
            raise ValueError("key and learning_rate apply to SGD (an SGDConfig), not the flow.")
        return tuple(  # type: ignore[return-value]
            gradient_flow(
                params0,
                data,
                ts,
                snapshot_times=snapshot_times,
                config=config,
                throw=throw,
                model=m,
            )
            for m in (model, twin)
        )
    if isinstance(config, SGDConfig):
        if ts is not None or snapshot_times is not None:
            raise ValueError(
                "SGD records by its SGDConfig; ts and snapshot_times are for the flow."
            )
        if learning_rate is None:
            raise ValueError("SGD needs a learning_rate.")
        key = jax.random.key(0) if key is None else key
        return tuple(  # type: ignore[return-value]
            train_sgd(
                params0,
                key,
                data,
                learning_rate=learning_rate,
                momentum=momentum,
                config=config,
                throw=throw,
                model=m,
            )
            for m in (model, twin)
        )
    raise ValueError(f"config must be a FlowConfig or an SGDConfig; got {type(config).__name__}.")


def _snapshot(params: Params, i: int) -> Params:
    return Params(*(a[i] for a in params))


def compare_twins(
    network: Trajectory,
    twin_traj: Trajectory,
    params0: Params,
    data: TrainingData,
    *,
    model: Model = PAPER,
    x_probe=None,
    threshold: float = THRESHOLD,
    fraction: float = TOP_FRACTION,
) -> TwinRun:
    """The measures of a `TwinRun` from the two trajectories of one run (no seed axis).

    The function distance is taken on the training inputs, the kernel on ``x_probe`` (default:
    the first `DEFAULT_PROBE` training inputs); both at every snapshot.
    """
    check_params(params0, "params0")
    if np.ndim(network.t) != 1:
        raise ValueError("compare_twins takes one run: index the seed axis first.")
    x_probe = data.x[:DEFAULT_PROBE] if x_probe is None else x_probe
    _check_inputs(x_probe, params0.W.shape[1])
    twin = linearised(params0, model)
    k0 = kernel(params0, x_probe, model)
    rel, twin_rel, dist, kch = [], [], [], []
    for i in range(int(np.shape(network.snapshot_t)[0])):
        p, q = _snapshot(network.snapshots, i), _snapshot(twin_traj.snapshots, i)
        rel.append(float(relative_change(p, params0)))
        twin_rel.append(float(relative_change(q, params0)))
        dist.append(float(function_distance(p, q, data.x, twin)))
        kch.append(float(kernel_distance(kernel(p, x_probe, model), k0)))
    end, twin_end = _snapshot(network.snapshots, -1), _snapshot(twin_traj.snapshots, -1)
    return TwinRun(
        network=network,
        twin=twin_traj,
        t=np.asarray(network.snapshot_t),
        relative_change=np.asarray(rel),
        twin_relative_change=np.asarray(twin_rel),
        function_distance=np.asarray(dist),
        kernel_change=np.asarray(kch),
        top_share=top_share(end, fraction),
        twin_top_share=top_share(twin_end, fraction),
        clusters=neuron_clusters(end, threshold=threshold).count,
        twin_clusters=neuron_clusters(twin_end, threshold=threshold).count,
    )


def twin_run(
    params0: Params,
    data: TrainingData,
    ts=None,
    *,
    config: FlowConfig | SGDConfig = FLOW,
    model: Model = PAPER,
    snapshot_times=None,
    key: jax.Array | None = None,
    learning_rate=None,
    momentum=0.0,
    x_probe=None,
    threshold: float = THRESHOLD,
    fraction: float = TOP_FRACTION,
) -> TwinRun:
    """Train the network and its twin f_lin(θ) = f(θ₀) + J(θ₀)(θ − θ₀) with the same trainer
    from θ₀ = ``params0`` (`train_twins`), then measure at every snapshot the relative change
    ‖θ − θ₀‖/‖θ₀‖ of both, the function distance and the kernel change, and at the end the top-10%
    share of Σ P_i and the clusters at τ = 0.95 (`compare_twins`).
    """
    check_params(params0, "params0")
    network, twin_traj = train_twins(
        params0,
        data,
        ts,
        config=config,
        model=model,
        snapshot_times=snapshot_times,
        key=key,
        learning_rate=learning_rate,
        momentum=momentum,
    )
    return compare_twins(
        network,
        twin_traj,
        params0,
        data,
        model=model,
        x_probe=x_probe,
        threshold=threshold,
        fraction=fraction,
    )
