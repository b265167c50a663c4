"""Per-neuron observables recorded along a trajectory (docs/theory.md §2–§4).

Everything here is a pure function of ``(Params, TrainingData)``; trainers call `observe` at
each point of their time grid so that full weights never need to be stored along the way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._network import Params, accuracy, gating_pattern, loss, preactivations, residuals

# Knuth's multiplicative constant: sample s contributes h_s = (s + 1)·2654435761 mod 2³² to the
# hash of every gating pattern that contains it. Equal patterns give equal hashes; different
# patterns collide with probability ~2⁻³² per pair.
_HASH_MULTIPLIER = np.uint32(2654435761)


class TrainingData(NamedTuple):
    """Device arrays a trainer needs: inputs, labels, signed labels and the test split.

    Build it with `training_data`. ``x_test``/``y_test`` are empty ``[0, D]``/``[0]`` arrays
    when the dataset has no held-out split (test observables are then NaN).
    """

    x: jax.Array
    y: jax.Array
    signed_labels: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def training_data(dataset, dtype=jnp.float32) -> TrainingData:
    """Move a `gflow.Dataset` to device arrays of the requested float dtype."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "dtype float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "before creating arrays (the CLI does this for --dtype float64)."
        )
    x = jnp.asarray(dataset.x, dtype)
    if dataset.has_test:
        xt = jnp.asarray(dataset.x_test, dtype)
        yt = jnp.asarray(dataset.y_test, jnp.int32)
    else:
        xt = jnp.zeros((0, dataset.dim), dtype)
        yt = jnp.zeros((0,), jnp.int32)
    return TrainingData(
        x=x,
        y=jnp.asarray(dataset.y, jnp.int32),
        signed_labels=jnp.asarray(dataset.signed_labels, dtype),
        x_test=xt,
        y_test=yt,
    )


class Observables(NamedTuple):
    """What is recorded at one time point (a leading time axis is added by the trainers).

    Per neuron (last axis ``d``):
        w_norm, b, v_norm: ‖w_i‖, b_i, ‖v_i‖.
        phi: angle of v_i, atan2(v_i2, v_i1) (limits −π/4 for κ=+1, 3π/4 for κ=−1; §3).
        P: ‖w_i‖‖v_i‖ (§4).  Q: balance ‖w_i‖² + b_i² − ‖v_i‖² (§2, conserved by the flow).
        kappa: +1 if v_i points to predict class 1 (v_i1 > v_i2), else −1 (§3).
        active: |E_i|, the number of samples passing the gate.
        cell_hash: a 32-bit hash of the gating pattern g_i (cell identity; equal patterns →
            equal hash).
        e_norm: ‖e_i‖ with e_i = −(1/N) Σ_s g_i(s)(v̂_i·r_s) x_s (§2; ẇ_i = ‖v_i‖ e_i).
        cos_delta: cos ∠(w_i, e_i) (§2).
        target_strength: ‖Σ_{s∈E_i} ỹ_s x_s‖ / N.
        cos_target: cos ∠(w_i, T_κ(g_i)), the target of the current cell (§3, §4).
    Scalars: loss, accuracy (train), test_loss, test_accuracy (NaN without a test split).

    The small-init unlocking rate of docs/theory.md §4 is ``√2 · target_strength · cos_target``.
    """

    w_norm: jax.Array
    b: jax.Array
    v_norm: jax.Array
    phi: jax.Array
    P: jax.Array
    Q: jax.Array
    kappa: jax.Array
    active: jax.Array
    cell_hash: jax.Array
    e_norm: jax.Array
    cos_delta: jax.Array
    target_strength: jax.Array
    cos_target: jax.Array
    loss: jax.Array
    accuracy: jax.Array
    test_loss: jax.Array
    test_accuracy: jax.Array


def safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm whose gradient is finite (zero) at the origin."""
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def safe_cosine(a: jax.Array, b: jax.Array, axis: int = -1) -> jax.Array:
    """cos ∠(a, b) along ``axis``; 0 when either vector is zero (no NaN)."""
    denom = safe_norm(a, axis) * safe_norm(b, axis)
    ok = denom > 0
    return jnp.where(ok, jnp.sum(a * b, axis=axis) / jnp.where(ok, denom, 1.0), 0.0)


def outgoing_alignment(V: jax.Array) -> jax.Array:
    """κ_i = +1 when v_i predicts class 1 (v_i1 > v_i2, limit φ = −π/4), else −1 (§3)."""
    return jnp.where(V[:, 0] > V[:, 1], 1, -1).astype(jnp.int8)


def error_vectors(params: Params, data: TrainingData) -> jax.Array:
    """e_i = −(1/N) Σ_s g_i(s) (v̂_i·r_s) x_s for every neuron, ``[d, D]`` (docs/theory.md §2)."""
    n = data.x.shape[0]
    g = gating_pattern(params, data.x).astype(data.x.dtype)
    v_hat = params.V / jnp.maximum(safe_norm(params.V)[:, None], jnp.finfo(data.x.dtype).tiny)
    r = residuals(params, data.x, data.y)
    weights = g * (r @ v_hat.T)  # [N, d]
    return -(weights.T @ data.x) / n


def cell_signed_sums(gates: jax.Array, data: TrainingData) -> jax.Array:
    """Σ_{s: g_i(s)=1} ỹ_s x_s for each column of ``gates`` ``[N, d]`` → ``[d, D]``."""
    return (gates.astype(data.x.dtype) * data.signed_labels[:, None]).T @ data.x


def target_directions(gates: jax.Array, kappa: jax.Array, data: TrainingData) -> jax.Array:
    """T_κ(g) = κ Σ_{g(s)=1} ỹ_s x_s / ‖Σ_{g(s)=1} ỹ_s x_s‖ (docs/theory.md §3), ``[d, D]``.

    Rows whose effective dataset sums to zero get the zero vector.
    """
    u = cell_signed_sums(gates, data)
    n = safe_norm(u)
    return kappa[:, None].astype(u.dtype) * u / jnp.where(n > 0, n, 1.0)[:, None]


def cell_hash(gates: jax.Array) -> jax.Array:
    """32-bit identity of each neuron's gating pattern; ``gates`` is ``[N, d]``."""
    n = gates.shape[0]
    h = (jnp.arange(1, n + 1, dtype=jnp.uint32) * _HASH_MULTIPLIER) ^ jnp.uint32(0x9E3779B9)
    return jnp.sum(jnp.where(gates, h[:, None], jnp.uint32(0)), axis=0, dtype=jnp.uint32)


def _test_metrics(params: Params, data: TrainingData):
    if data.x_test.shape[0] == 0:
        nan = jnp.array(jnp.nan, data.x.dtype)
        return nan, nan
    return loss(params, data.x_test, data.y_test), accuracy(params, data.x_test, data.y_test)


def observe(params: Params, data: TrainingData) -> Observables:
    """All observables of `Observables` at the current parameters."""
    n = data.x.shape[0]
    gates = preactivations(params, data.x) > 0
    w_norm = safe_norm(params.W)
    v_norm = safe_norm(params.V)
    kappa = outgoing_alignment(params.V)
    e = error_vectors(params, data)
    signed = cell_signed_sums(gates, data)
    target = kappa[:, None].astype(signed.dtype) * signed
    test_loss, test_acc = _test_metrics(params, data)
    return Observables(
        w_norm=w_norm,
        b=params.b,
        v_norm=v_norm,
        phi=jnp.arctan2(params.V[:, 1], params.V[:, 0]),
        P=w_norm * v_norm,
        Q=w_norm**2 + params.b**2 - v_norm**2,
        kappa=kappa,
        active=jnp.sum(gates, axis=0, dtype=jnp.int32),
        cell_hash=cell_hash(gates),
        e_norm=safe_norm(e),
        cos_delta=safe_cosine(params.W, e),
        target_strength=safe_norm(signed) / n,
        cos_target=safe_cosine(params.W, target),
        loss=loss(params, data.x, data.y),
        accuracy=accuracy(params, data.x, data.y),
        test_loss=test_loss,
        test_accuracy=test_acc,
    )


def balance_drift(obs: Observables) -> jax.Array:
    """Relative drift of the balance per neuron (docs/theory.md §2), over the leading time axis.

        drift_i = max_t |Q_i(t) − Q_i(0)| / max_t (‖w_i‖² + b_i² + ‖v_i‖²)

    Returns ``[..., d]``; report its max over neurons.
    """
    scale = obs.w_norm**2 + obs.b**2 + obs.v_norm**2
    dq = jnp.abs(obs.Q - obs.Q[..., :1, :])
    return jnp.max(dq, axis=-2) / jnp.max(scale, axis=-2)


def small_init_unlocking_rate(obs: Observables) -> jax.Array:
    """γ_i = (√2/N) ‖Σ_{s∈E_i} ỹ_s x_s‖ cos δ_i (docs/theory.md §4), δ_i against the current
    cell's target."""
    return jnp.sqrt(2.0) * obs.target_strength * obs.cos_target
