"""Per-neuron observables recorded along a trajectory (docs/theory.md §2–§4).

Everything here is a pure function of ``(Params, TrainingData, Model)``; trainers call `observe`
at each point of their time grid so that full weights never need to be stored along the way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._network import (
    PAPER,
    Model,
    Params,
    accuracy,
    gate_slopes,
    loss,
    output_residuals,
    preactivations,
    residuals,
)

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
        phi: angle of v_i, atan2(v_i2, v_i1) (limits −π/4 for κ=+1, 3π/4 for κ=−1; §3); NaN
            for K > 2 classes.
        P: ‖w_i‖‖v_i‖ (§4).  Q: balance ‖w_i‖² + b_i² − ‖v_i‖² (§2, conserved by the flow).
        kappa: +1 if v_i points to predict class 1 (v_i1 > v_i2), else −1 (§3); for K > 2
            classes the class index argmax_k v_ik (`class_alignment`).
        active: |E_i|, the number of samples passing the gate.
        cell_hash: a 32-bit hash of the gating pattern g_i (cell identity; equal patterns →
            equal hash).
        e_norm: ‖e_i‖ with e_i = −(1/N) Σ_s g_i(s)(v̂_i·r_s) x_s (§2; ẇ_i = ‖v_i‖ e_i).
        cos_delta: cos ∠(w_i, e_i) (§2).
        target_strength: ‖Σ_{s∈E_i} ỹ_s x_s‖ / N; for another model (§10) √2‖u_i‖ with u_i the
            phase-1 drive `phase1_drive`.
        cos_target: cos ∠(w_i, T_κ(g_i)), the target of the current cell (§3, §4); for another
            model cos ∠(w_i, u_i).
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


def _slopes(params: Params, data: TrainingData, model: Model) -> jax.Array:
    """σ'(z_i(x_s)) ``[N, d]``: the gate g (ReLU), α + (1 − α) g (leaky ReLU), sigmoid(βz)."""
    z = preactivations(params, data.x)
    if model.activation == "softplus":
        return jax.nn.sigmoid(model.beta * z)
    return gate_slopes((z > 0).astype(data.x.dtype), model)


def _unit_rows(V: jax.Array) -> jax.Array:
    return V / jnp.maximum(safe_norm(V)[:, None], jnp.finfo(V.dtype).tiny)


def error_vectors(params: Params, data: TrainingData, model: Model = PAPER) -> jax.Array:
    """e_i = −(1/N) Σ_s g_i(s) (v̂_i·r_s) x_s for every neuron, ``[d, D]`` (docs/theory.md §2;
    g_i(s) becomes σ'(z_i(s)) for another activation, §10)."""
    n = data.x.shape[0]
    r = residuals(params, data.x, data.y, model)
    weights = _slopes(params, data, model) * (r @ _unit_rows(params.V).T)  # [N, d]
    return -(weights.T @ data.x) / n


def initial_residuals(data: TrainingData, classes: int, model: Model = PAPER) -> jax.Array:
    """r_s(0) = ∂ℓ_s/∂o at o = 0, ``[N, K]``: 1/K − e_{c_s} (cross-entropy) or −e_{c_s} (square
    loss); the residual of phase 1, while the network's output is negligible (docs/theory.md
    §10)."""
    zero = jnp.zeros((data.x.shape[0], classes), data.x.dtype)
    return output_residuals(zero, data.y, model)


def phase1_drive(params: Params, data: TrainingData, model: Model = PAPER) -> jax.Array:
    """u_i = M_{g_i} v̂_i = −(1/N) Σ_s σ'(z_i(s)) (r_s(0)·v̂_i) x_s, ``[d, D]``: the direction in
    which phase 1 pulls w_i in its current cell (docs/theory.md §10.1). For the paper's binary
    model and an aligned v̂_i it is (1/(√2N)) κ_i Σ_{s∈E_i} ỹ_s x_s."""
    n = data.x.shape[0]
    r0 = initial_residuals(data, params.V.shape[-1], model)
    weights = _slopes(params, data, model) * (r0 @ _unit_rows(params.V).T)
    return -(weights.T @ data.x) / n


def phase1_targets(
    gates: jax.Array, data: TrainingData, classes: int, model: Model = PAPER
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The attracting phase-1 fixed direction of each cell: the top singular triple of
    M_g = −(1/N) Σ_s σ'_s x_s r_s(0)ᵀ ``[D, K]`` (docs/theory.md §10.1).

    In a cell of pattern g ``[N, d]`` (σ'_s = α + (1 − α) g_s for the leaky ReLU) and with b = 0,
    phase 1 is the linear system ẇ = M_g v, v̇ = M_gᵀ w, so (w, v) turns towards
    ±(u₁, v₁) and P = ‖w‖‖v‖ grows at the rate 2 s₁. Returns ``(u₁ [d, D], v₁ [d, K], s₁ [d])``
    with the sign of each pair fixed by ``v₁`` having a positive largest entry. For the
    paper's binary task u₁ = ±T_κ(g), v₁ = ±(1, −1)/√2 and 2 s₁ = (√2/N)‖Σ_{E} ỹ_s x_s‖.
    """
    n = data.x.shape[0]
    r0 = initial_residuals(data, classes, model)
    g = gates.astype(data.x.dtype)
    slopes = gate_slopes(g, model) if model.activation != "softplus" else 0.5 + 0.0 * g
    M = -jnp.einsum("sd,sj,sk->djk", slopes, data.x, r0) / n  # [d, D, K]
    gram = jnp.einsum("djk,djl->dkl", M, M)  # M_gᵀ M_g, [d, K, K]
    evals, evecs = jnp.linalg.eigh(gram)
    v1 = evecs[..., -1]  # [d, K]
    s1 = jnp.sqrt(jnp.maximum(evals[..., -1], 0.0))
    top = jnp.take_along_axis(v1, jnp.argmax(jnp.abs(v1), axis=-1)[:, None], axis=-1)
    v1 = v1 * jnp.where(top < 0, -1.0, 1.0)
    u1 = jnp.einsum("djk,dk->dj", M, v1) / jnp.where(s1 > 0, s1, 1.0)[:, None]
    return u1, v1, s1


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


def _test_metrics(params: Params, data: TrainingData, model: Model):
    if data.x_test.shape[0] == 0:
        nan = jnp.array(jnp.nan, data.x.dtype)
        return nan, nan
    return (
        loss(params, data.x_test, data.y_test, model),
        accuracy(params, data.x_test, data.y_test, model),
    )


def _targets(params: Params, data: TrainingData, gates: jax.Array, model: Model):
    """(target vector, target_strength) of `observe`: the paper's κ_i Σ_{E_i} ỹ_s x_s and
    ‖Σ_{E_i} ỹ_s x_s‖/N for its binary model; otherwise u_i = `phase1_drive` and √2‖u_i‖, which
    agree with them for an aligned v̂_i (docs/theory.md §10.1)."""
    if model.is_paper and params.V.shape[-1] == 2:
        signed = cell_signed_sums(gates, data)
        kappa = outgoing_alignment(params.V)
        return kappa[:, None].astype(signed.dtype) * signed, safe_norm(signed) / data.x.shape[0]
    u = phase1_drive(params, data, model)
    return u, jnp.sqrt(2.0) * safe_norm(u)


def class_alignment(V: jax.Array) -> jax.Array:
    """κ_i: ±1 for two classes (`outgoing_alignment`); for K > 2 classes, the class whose logit
    v_i raises most, argmax_k v_ik (0 … K − 1)."""
    if V.shape[-1] == 2:
        return outgoing_alignment(V)
    return jnp.argmax(V, axis=-1).astype(jnp.int8)


def observe(params: Params, data: TrainingData, model: Model = PAPER) -> Observables:
    """All observables of `Observables` at the current parameters, for the network ``model``
    computes (default: the paper's)."""
    gates = preactivations(params, data.x) > 0
    w_norm = safe_norm(params.W)
    v_norm = safe_norm(params.V)
    e = error_vectors(params, data, model)
    target, strength = _targets(params, data, gates, model)
    test_loss, test_acc = _test_metrics(params, data, model)
    binary = params.V.shape[-1] == 2
    phi = jnp.arctan2(params.V[:, 1], params.V[:, 0]) if binary else jnp.full_like(w_norm, jnp.nan)
    return Observables(
        w_norm=w_norm,
        b=params.b,
        v_norm=v_norm,
        phi=phi,
        P=w_norm * v_norm,
        Q=w_norm**2 + params.b**2 - v_norm**2,
        kappa=class_alignment(params.V),
        active=jnp.sum(gates, axis=0, dtype=jnp.int32),
        cell_hash=cell_hash(gates),
        e_norm=safe_norm(e),
        cos_delta=safe_cosine(params.W, e),
        target_strength=strength,
        cos_target=safe_cosine(params.W, target),
        loss=loss(params, data.x, data.y, model),
        accuracy=accuracy(params, data.x, data.y, model),
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


def check_labels(data: TrainingData, params: Params) -> None:
    """``ValueError`` when a label is not below K, the width of ``params.V`` (labels of a
    traced `TrainingData` are not checked)."""
    classes = params.V.shape[-1]
    for which, y in (("training", data.y), ("test", data.y_test)):
        if isinstance(y, jax.core.Tracer) or y.size == 0:
            continue
        # NumPy, not jnp: inside a caller's jit a jnp reduction of these (concrete) labels
        # would be traced.
        top = int(np.max(np.asarray(y)))
        if top >= classes:
            raise ValueError(
                f"{which} labels reach {top} but the network has K = {classes} outputs (V is "
                f"[d, {classes}]): initialise it with classes={top + 1} or more."
            )
