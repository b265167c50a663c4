"""Mini-batch momentum SGD, K steps at a time: an exact reformulation for seed sweeps.

The steps of `gflow._sgd.train_sgd` (optax.sgd, docs/theory.md §1), with ``W`` and its momentum
``M`` read and written once per chunk of K steps: step k's pre-activations are
``X_k W_0ᵀ − η a_k X_k M_0ᵀ − η Σ_{j<k} c_{kj} (X_k X_jᵀ) δ_j``. Derivation, the sample basis
(``basis="samples"``), seeds and records: docs/numerics.md §2.

Example:
    >>> from gflow import gaussian_clusters, init_params, training_data
    >>> data = training_data(gaussian_clusters(n_samples=40, dim=5, test_samples=0))
    >>> params0 = init_params(jax.random.key(0), 8, 5, 1e-3)
    >>> cfg = SGDConfig(steps=200, record_every=50, batch_size=4)
    >>> traj = train_sgd_chunked(params0, jax.random.key(1), data, learning_rate=0.01,
    ...                          momentum=0.9, config=cfg, chunk=25, observables="norms")
    >>> traj.observables.w_norm.shape  # [records, d]: k = 0, 50, ..., 200
    (5, 8)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._network import Params
from ._observables import TrainingData, observe, safe_norm
from ._sgd import SGDConfig, _batch_indices, check_hyperparameters, flow_time
from ._trajectory import NON_FINITE, OK, Trajectory, raise_if_failed

OBSERVATION_MODES = ("full", "norms")


class NeuronNorms(NamedTuple):
    """The light record of a sweep: ‖w_i‖, ‖v_i‖ and b_i per neuron (last axis ``d``).

    Enough for P_i = ‖w_i‖‖v_i‖ (docs/theory.md §4), the balance Q_i = ‖w_i‖² + b_i² − ‖v_i‖² (§2)
    and the race between neurons (§5).
    """

    w_norm: jax.Array
    v_norm: jax.Array
    b: jax.Array


class _State(NamedTuple):
    """Optimiser state of S stacked seeds: parameters and optax momentum traces.

    ``WM`` holds ``W`` and its momentum ``M`` together, ``[2, S, d, D]``, so that the opening
    GEMM reads them as one ``[2·S·d, D]`` operand without a copy.
    """

    WM: jax.Array  # [2, S, d, D]
    b: jax.Array  # [S, d]
    V: jax.Array  # [S, d, 2]
    mb: jax.Array
    mV: jax.Array


class _ChunkCoefficients(NamedTuple):
    """Unrolled momentum coefficients of one chunk of K steps (docs/numerics.md §2.1)."""

    a: jax.Array  # [K]      a_k = Σ_{i=1}^{k} β^i
    c: jax.Array  # [K, K]   c_{kj} = Σ_{l=0}^{k−1−j} β^l for j < k, else 0
    close_w: jax.Array  # [K]  c_{Kj}
    close_m: jax.Array  # [K]  β^{K−1−j}
    a_end: jax.Array  # a_K
    decay_end: jax.Array  # β^K


def chunk_coefficients(momentum, chunk: int, dtype=jnp.float32) -> _ChunkCoefficients:
    """Coefficients of ``W_k = W_0 − η (a_k M_0 + Σ_{j<k} c_{kj} G_j)`` and of ``M_K`` for a chunk.

    ``a_k = Σ_{i=1}^{k} β^i``, ``c_{kj} = Σ_{l=0}^{k−1−j} β^l`` (j < k), and the closing
    coefficients ``c_{Kj}``, ``β^{K−1−j}``, ``a_K``, ``β^K``. With β = 0 this is plain SGD:
    ``a = 0``, ``c_{kj} = 1`` for j < k.
    """
    beta = jnp.asarray(momentum, dtype)
    powers = jnp.cumprod(
        jnp.concatenate([jnp.ones((1,), dtype), jnp.full((chunk,), beta)])
    )  # β^l, l=0..K
    geometric = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(powers[:chunk])])  # Σ_{i<l} β^i
    steps = jnp.arange(chunk)
    lag = steps[:, None] - steps[None, :]
    c = jnp.where(lag > 0, geometric[jnp.clip(lag, 0, chunk)], jnp.zeros((), dtype))
    return _ChunkCoefficients(
        a=beta * geometric[:chunk],
        c=c,
        close_w=geometric[chunk - steps],
        close_m=powers[chunk - 1 - steps],
        a_end=beta * geometric[chunk],
        decay_end=powers[chunk],
    )


_PERMUTATION_BLOCK = 8  # epochs drawn per call: one compilation per N, whatever the run length


def _epochs_needed(steps: int, n: int, batch_size: int) -> int:
    """Epochs touched by steps ``0 .. steps−1`` (``N // B`` steps per epoch)."""
    return (steps - 1) // (n // batch_size) + 1


def _draw_block(key: jax.Array, first_epoch, n: int) -> jax.Array:
    # _batch_indices with B = N: one step per epoch, whose batch is the epoch's whole permutation.
    return jax.vmap(lambda e: _batch_indices(key, e, n, n))(
        first_epoch + jnp.arange(_PERMUTATION_BLOCK)
    )


_permutation_block = jax.jit(_draw_block, static_argnames=("n",))
_permutation_block_seeds = jax.jit(
    jax.vmap(_draw_block, in_axes=(0, None, None)), static_argnums=(2,)
)


def epoch_permutations(key: jax.Array, num_epochs: int, n: int) -> jax.Array:
    """The permutations ``[E, N]`` that `gflow._sgd.train_sgd` slices its mini-batches from.

    ``_batch_indices(key, e, N, N)`` is the whole permutation of epoch e (with B = N an epoch is
    one step), so this reuses the one owner of the data order. Drawing a permutation costs far
    more than a step of B = 4 samples, so each is drawn once, outside the training kernel (which
    also keeps the sort out of the kernel's compilation). A ``[S]`` array of keys gives
    ``[S, E, N]``.
    """
    per_seed = np.ndim(key) == 1
    if isinstance(key, jax.core.Tracer):  # inside a caller's jit: one vmapped draw
        draw = lambda k: jax.vmap(lambda e: _batch_indices(k, e, n, n))(jnp.arange(num_epochs))  # noqa: E731
        return jax.vmap(draw)(key) if per_seed else draw(key)
    if per_seed:
        blocks = [
            _permutation_block_seeds(key, first, n)
            for first in range(0, num_epochs, _PERMUTATION_BLOCK)
        ]
        return jnp.concatenate(blocks, axis=1)[:, :num_epochs]
    blocks = [
        _permutation_block(key, first, n=n) for first in range(0, num_epochs, _PERMUTATION_BLOCK)
    ]
    return jnp.concatenate(blocks)[:num_epochs]


def chunk_batch_indices(perms: jax.Array, first_step, chunk: int, batch_size: int) -> jax.Array:
    """Mini-batch indices ``[K, B]`` of steps ``first_step .. first_step+K−1`` from
    `epoch_permutations`.

    Step k uses positions ``(k mod per_epoch)·B ..`` of epoch ``k // per_epoch``'s permutation,
    exactly as ``_batch_indices`` (the last N mod B samples of an epoch are skipped).
    """
    per_epoch = perms.shape[1] // batch_size
    steps = first_step + jnp.arange(chunk)
    cols = (steps % per_epoch)[:, None] * batch_size + jnp.arange(batch_size)[None, :]
    return perms[(steps // per_epoch)[:, None], cols]


def _initial_state(params0: Params) -> _State:
    """optax.sgd's momentum traces start at zero."""
    return _State(
        WM=jnp.stack([params0.W, jnp.zeros_like(params0.W)]),
        b=params0.b,
        V=params0.V,
        mb=jnp.zeros_like(params0.b),
        mV=jnp.zeros_like(params0.V),
    )


def _block_size(chunk: int) -> int:
    """Steps per block of the two-level sum: the largest divisor of K not above √K (at least 1)."""
    return max(L for L in range(1, int(math.isqrt(chunk)) + 1) if chunk % L == 0)


def _chunk_errors(
    start, gram, y, b, V, mb, mV, coeffs: _ChunkCoefficients, lr, beta, seeds: int, width: int
):
    """The K steps of a chunk on ``B × S·d`` arrays: back-propagated errors and b, V updates.

    ``start [K·B, S·d]`` holds ``x_s·w_i(0) − η a_k x_s·m_i(0)`` for every sample of the chunk
    (row block k = step k) and ``gram [K·B, K·B]`` the inner products of the chunk's inputs;
    both are all a step needs to form its pre-activations ``X_k W_kᵀ`` (docs/numerics.md §2.1).
    Returns the errors ``δ [K·B, S·d]`` of every step and the updated ``b, V, mb, mV``.
    """
    k_steps, batch = y.shape
    neurons = seeds * width
    dtype = start.dtype
    coupling = (gram.reshape(k_steps, batch, k_steps, batch) * coeffs.c[:, None, :, None]).reshape(
        k_steps * batch, k_steps * batch
    )
    first_class = y == 0  # [K, B]: label 0 is the paper's class 1

    # Σ_{j<k} c_kj (X_k X_jᵀ) δ_j in two levels, so that no step reads all K·B rows of δ: the
    # chunk is cut into blocks of L steps; at the start of a block one product adds the
    # contributions of all earlier blocks to the block's L·B rows, and each step then only adds
    # those of earlier steps of its own block.
    block = _block_size(k_steps)
    n_blocks, rows = k_steps // block, block * batch
    start = start.reshape(n_blocks, rows, neurons)
    cross = coupling.reshape(n_blocks, rows, k_steps * batch)
    local = jnp.stack(
        [coupling[m * rows : (m + 1) * rows, m * rows : (m + 1) * rows] for m in range(n_blocks)]
    )
    local = local.reshape(n_blocks, block, batch, rows)

    def step(carry, inputs):
        deltas, b, V, mb, mV = carry
        j, base_j, local_j, first_j = inputs
        # z = X_k W_kᵀ + b_k, with W_k never formed.
        z = (base_j - lr * (local_j @ deltas)).reshape(batch, seeds, width) + b[None]
        hidden = jax.nn.relu(z)
        # Two classes: r_s = p(x_s) − y_s = ρ_s (1, −1) with ρ_s = p_1 − y_1 (docs/theory.md §1), so
        # v_i·r_s = ρ_s (v_i1 − v_i2) and only the logit gap o_1 − o_2 is needed.
        dv = V[..., 0] - V[..., 1]  # [S, d]
        gap = jnp.sum(hidden * dv[None], axis=-1)  # [B, S]
        rho = jnp.where(first_j[:, None], -jax.nn.sigmoid(-gap), jax.nn.sigmoid(gap))
        delta = jnp.where(z > 0, rho[..., None] * dv[None], jnp.zeros((), dtype)) / batch
        grad_b = jnp.sum(delta, axis=0)
        grad_v1 = jnp.sum(hidden * rho[..., None], axis=0) / batch
        grad_V = jnp.stack([grad_v1, -grad_v1], axis=-1)
        mb = grad_b + beta * mb
        mV = grad_V + beta * mV
        deltas = jax.lax.dynamic_update_slice_in_dim(
            deltas, delta.reshape(batch, neurons), j * batch, axis=0
        )
        return (deltas, b - lr * mb, V - lr * mV, mb, mV), None

    def block_body(carry, inputs):
        all_deltas, b, V, mb, mV = carry
        m, start_m, cross_m, local_m, first_m = inputs
        base = (start_m - lr * (cross_m @ all_deltas.reshape(k_steps * batch, neurons))).reshape(
            block, batch, neurons
        )
        inner = (jnp.arange(block), base, local_m, first_m)
        (deltas, b, V, mb, mV), _ = jax.lax.scan(
            step, (jnp.zeros((rows, neurons), dtype), b, V, mb, mV), inner, unroll=True
        )  # L ≤ √K steps: fused across steps
        all_deltas = jax.lax.dynamic_update_index_in_dim(all_deltas, deltas, m, axis=0)
        return (all_deltas, b, V, mb, mV), None

    deltas0 = jnp.zeros((n_blocks, rows, neurons), dtype)
    inputs = (
        jnp.arange(n_blocks),
        start,
        cross,
        local,
        first_class.reshape(n_blocks, block, batch),
    )
    (deltas, b, V, mb, mV), _ = jax.lax.scan(block_body, (deltas0, b, V, mb, mV), inputs)
    return deltas.reshape(k_steps * batch, neurons), b, V, mb, mV


def _closing_weights(deltas, coeffs: _ChunkCoefficients, lr, batch: int):
    """Per-sample weights of the chunk's update, ``[K·B, 2·S·d]``: ``−η c_{Kj} δ_j`` (for ``W_K``)
    next to ``β^{K−1−j} δ_j`` (for ``M_K``)."""
    close_w = -lr * jnp.repeat(coeffs.close_w, batch)[:, None]
    close_m = jnp.repeat(coeffs.close_m, batch)[:, None]
    return jnp.concatenate([deltas * close_w, deltas * close_m], axis=1)


def _run_chunk(
    state: _State, x: jax.Array, y: jax.Array, coeffs: _ChunkCoefficients, lr, beta
) -> _State:
    """K momentum-SGD steps of S stacked seeds on the batches ``x [K, B, D]``, ``y [K, B]``.

    ``W`` and ``M`` are read once (opening GEMM) and written once (closing GEMM); see
    docs/numerics.md §2.1 for the algebra.
    """
    k_steps, batch, dim = x.shape
    _, seeds, width, _ = state.WM.shape
    neurons = seeds * width
    flat = x.reshape(k_steps * batch, dim)  # [KB, D]

    # Opening GEMM: x_s·w_i and x_s·m_i for every sample of the chunk and every neuron.
    proj = flat @ state.WM.reshape(2 * neurons, dim).T  # [KB, 2·S·d]
    a_rows = jnp.repeat(coeffs.a, batch)[:, None]
    start = proj[:, :neurons] - lr * a_rows * proj[:, neurons:]  # [KB, S·d]
    deltas, b, V, mb, mV = _chunk_errors(
        start,
        flat @ flat.T,
        y,
        state.b,
        state.V,
        state.mb,
        state.mV,
        coeffs,
        lr,
        beta,
        seeds,
        width,
    )

    # Closing GEMM: −η Σ_j c_{Kj} δ_jᵀ X_j and Σ_j β^{K−1−j} δ_jᵀ X_j in one product, then
    # W_K = W_0 − η a_K M_0 + (first), M_K = β^K M_0 + (second).
    sums = (_closing_weights(deltas, coeffs, lr, batch).T @ flat).reshape(2, seeds, width, dim)
    W0, M0 = state.WM[0], state.WM[1]
    WM = jnp.stack([W0 - (lr * coeffs.a_end) * M0 + sums[0], coeffs.decay_end * M0 + sums[1]])
    return _State(WM=WM, b=b, V=V, mb=mb, mV=mV)


class _SampleState(NamedTuple):
    """Optimiser state of S stacked seeds in the sample basis (``basis="samples"``).

    Every update of ``W`` is a combination of training inputs, so ``W(t) = W(0) + C_W(t)ᵀ X``
    and ``M(t) = C_M(t)ᵀ X`` (momentum starts at zero) with coefficients ``C [N, S·d]``; then
    ``X W(t)ᵀ = X W(0)ᵀ + G C_W`` (``G = X Xᵀ``) is a row lookup and no ``[d, D]`` array is
    touched during training. Per chunk the coefficients move by ``C ← A C + Δ`` with
    ``A = [[1, −η a_K], [0, β^K]]`` (docs/numerics.md §2.1) and ``Δ`` nonzero on the chunk's rows
    only.
    In the eigenbasis of A, ``U = C_W + γ C_M`` with ``γ = −η a_K / (1 − β^K)`` only accumulates
    (``U ← U + Δ_W + γ Δ_M``) and ``C_M ← β^K C_M + Δ_M`` only decays, which is kept as a
    scalar: ``C_M = s Ĉ_M``. So a chunk writes the chunk's rows of ``Ĉ`` and adds one GEMM's
    output to ``G Ĉ``; nothing else of the ``[N, S·d]`` arrays is read or written. When ``s``
    falls below `_RESCALE_BELOW` (about every five chunks at β^K = 0.9⁵⁰) it is folded into
    ``Ĉ_M`` in one pass.
    """

    CC: jax.Array  # [N, 2, S·d]: U, Ĉ_M
    RR: jax.Array  # [N, 2, S·d]: G U, G Ĉ_M
    scale: jax.Array  # s
    b: jax.Array
    V: jax.Array
    mb: jax.Array
    mV: jax.Array


_RESCALE_BELOW = 1e-12


def _initial_sample_state(params0: Params, n: int) -> _SampleState:
    seeds, width, _ = params0.W.shape
    zeros = jnp.zeros((n, 2, seeds * width), params0.W.dtype)
    return _SampleState(
        CC=zeros,
        RR=zeros,
        scale=jnp.ones((), params0.W.dtype),
        b=params0.b,
        V=params0.V,
        mb=jnp.zeros_like(params0.b),
        mV=jnp.zeros_like(params0.V),
    )


def _sample_basis_shift(coeffs: _ChunkCoefficients, lr):
    """γ = −η a_K / (1 − β^K): ``U = C_W + γ C_M`` is invariant under the chunk's carry-over A."""
    return -lr * coeffs.a_end / (1 - coeffs.decay_end)


def _run_chunk_samples(
    state: _SampleState,
    idx: jax.Array,
    y: jax.Array,
    proj0: jax.Array,
    gram_all: jax.Array,
    coeffs: _ChunkCoefficients,
    lr,
    beta,
) -> _SampleState:
    """`_run_chunk` in the sample basis (`_SampleState`): the chunk's samples ``idx [K, B]``.

    Opening: ``X_k W_0ᵀ = P_0[idx] + (G U − γ G C_M)[idx]`` and ``X_k M_0ᵀ = (G C_M)[idx]``,
    row lookups. Closing: with ``Δ_W = −η c_{Kj} δ_j`` and ``Δ_M = β^{K−1−j} δ_j`` the chunk's
    per-sample weights, ``U += Δ_W + γ Δ_M`` and ``Ĉ_M += Δ_M / s'`` on the chunk's rows and
    ``G Ĉ += G[:, idx] [·]``: one GEMM ``[N, K·B] × [K·B, 2·S·d]`` per chunk, against the
    weight basis' two ``[K·B, D] × [D, 2·S·d]``.
    """
    k_steps, batch = y.shape
    _, _, neurons = state.CC.shape
    seeds, width = state.b.shape
    gamma = _sample_basis_shift(coeffs, lr)
    rows = idx.reshape(k_steps * batch)
    opened = state.RR[rows]  # [KB, 2, S·d]
    g_m = state.scale * opened[:, 1]  # X_k M_0ᵀ
    a_rows = jnp.repeat(coeffs.a, batch)[:, None]
    start = proj0[rows] + opened[:, 0] - (gamma + lr * a_rows) * g_m
    deltas, b, V, mb, mV = _chunk_errors(
        start,
        gram_all[rows][:, rows],
        y,
        state.b,
        state.V,
        state.mb,
        state.mV,
        coeffs,
        lr,
        beta,
        seeds,
        width,
    )
    weights = _closing_weights(deltas, coeffs, lr, batch)
    delta_w, delta_m = weights[:, :neurons], weights[:, neurons:]
    decayed = state.scale * coeffs.decay_end

    def accumulate(CC, RR):  # s' = s β^K: Ĉ_M += Δ_M / s'
        added = jnp.stack([delta_w + gamma * delta_m, delta_m / decayed], axis=1)  # [KB, 2, S·d]
        update = (gram_all[:, rows] @ added.reshape(-1, 2 * neurons)).reshape(-1, 2, neurons)
        return CC.at[rows].add(added), RR + update, decayed

    def fold(CC, RR):  # s' = 1: Ĉ_M ← s β^K Ĉ_M + Δ_M (also for β = 0, where β^K = 0)
        added = jnp.stack([delta_w + gamma * delta_m, delta_m], axis=1)
        update = (gram_all[:, rows] @ added.reshape(-1, 2 * neurons)).reshape(-1, 2, neurons)
        keep = jnp.stack([jnp.ones((), CC.dtype), decayed])[None, :, None]
        return (CC * keep).at[rows].add(added), RR * keep + update, jnp.ones_like(decayed)

    CC, RR, scale = jax.lax.cond(decayed < _RESCALE_BELOW, fold, accumulate, state.CC, state.RR)
    return _SampleState(CC=CC, RR=RR, scale=scale, b=b, V=V, mb=mb, mV=mV)


def _sample_coefficients_of_w(state: _SampleState, coeffs: _ChunkCoefficients, lr):
    """``C_W = U − γ s Ĉ_M`` and ``G C_W``, each ``[N, S·d]``."""
    shift = _sample_basis_shift(coeffs, lr) * state.scale
    return state.CC[:, 0] - shift * state.CC[:, 1], state.RR[:, 0] - shift * state.RR[:, 1]


class _Basis(NamedTuple):
    """How a training state is stored: the chunk update and what records read from it."""

    state0: Any
    run_chunk: Callable[[Any, jax.Array], Any]  # (state, idx [K, B]) -> state
    params: Callable[[Any], Params]  # state -> Params (W formed)
    norms: Callable[[Any], Any]  # state -> NeuronNorms


def _weight_basis(
    params0: Params, data: TrainingData, coeffs: _ChunkCoefficients, lr, beta
) -> _Basis:
    def run_chunk(state, idx):
        return _run_chunk(state, data.x[idx], data.y[idx], coeffs, lr, beta)

    def params(state):
        return Params(W=state.WM[0], b=state.b, V=state.V)

    def norms(state):
        return NeuronNorms(w_norm=safe_norm(state.WM[0]), v_norm=safe_norm(state.V), b=state.b)

    return _Basis(_initial_state(params0), run_chunk, params, norms)


def _sample_basis(
    params0: Params, data: TrainingData, coeffs: _ChunkCoefficients, lr, beta
) -> _Basis:
    seeds, width, dim = params0.W.shape
    W0 = params0.W.reshape(seeds * width, dim)
    gram_all = data.x @ data.x.T  # G = X Xᵀ [N, N], once per run
    proj0 = data.x @ W0.T  # P_0 = X W(0)ᵀ [N, S·d], once per run
    w0_sq = jnp.sum(W0 * W0, axis=1)

    def run_chunk(state, idx):
        return _run_chunk_samples(state, idx, data.y[idx], proj0, gram_all, coeffs, lr, beta)

    def params(state):
        C_W, _ = _sample_coefficients_of_w(state, coeffs, lr)
        W = W0 + C_W.T @ data.x  # W = W(0) + C_Wᵀ X
        return Params(W=W.reshape(seeds, width, dim), b=state.b, V=state.V)

    def norms(state):
        # ‖w_i‖² = ‖w_i(0)‖² + 2 c_i·(X w_i(0)) + c_i·(G c_i), c_i the column of C_W.
        C_W, R_W = _sample_coefficients_of_w(state, coeffs, lr)
        sq = w0_sq + jnp.sum(C_W * (2 * proj0 + R_W), axis=0)
        w_norm = jnp.sqrt(jnp.maximum(sq, 0)).reshape(seeds, width)
        return NeuronNorms(w_norm=w_norm, v_norm=safe_norm(state.V), b=state.b)

    return _Basis(_initial_sample_state(params0, data.x.shape[0]), run_chunk, params, norms)


BASES = ("auto", "weights", "samples")


def resolve_basis(basis: str, n_samples: int, dim: int, batch_size: int, steps: int) -> str:
    """``"weights"`` or ``"samples"`` for ``basis="auto"``: the one with fewer GEMM FLOPs per run.

    Per seed and neuron, the weight basis does ``8·B·D`` FLOPs a step (two GEMMs, W and M);
    the sample basis ``4·B·N`` a step (one GEMM) plus ``4·N·D`` once (``X W(0)ᵀ`` and the final
    ``W``). ``N`` above ``D`` (or a short run) favours the weights; the sample basis also
    needs the ``N × N`` Gram matrix, so it is not chosen above N = 16 384.
    """
    if basis != "auto":
        return basis
    weights = 8.0 * batch_size * dim * steps
    samples = 4.0 * batch_size * n_samples * steps + 4.0 * n_samples * dim
    return "samples" if samples < weights and n_samples <= 16_384 else "weights"


def _train_stacked_impl(
    params0: Params,
    perms,
    data: TrainingData,
    learning_rate,
    momentum,
    config: SGDConfig,
    chunk: int,
    observables: str,
    basis: str = "weights",
) -> Trajectory:
    """S seeds stacked on a leading axis, one data order (``perms`` from `epoch_permutations`);
    every output field ``[S, ...]``."""
    dtype = params0.W.dtype
    lr = jnp.asarray(learning_rate, dtype)
    beta = jnp.asarray(momentum, dtype)
    coeffs = chunk_coefficients(beta, chunk, dtype)
    batch = config.batch_size
    assert batch is not None  # check_chunked_config rejects None
    chunks_per_record = config.record_every // chunk
    seeds = params0.W.shape[0]
    make = _sample_basis if basis == "samples" else _weight_basis
    kernel = make(params0, data, coeffs, lr, beta)

    def observe_stacked(state):
        if observables == "norms":
            return kernel.norms(state)
        return jax.vmap(observe, in_axes=(0, None))(kernel.params(state), data)

    def chunk_body(state, c):
        return kernel.run_chunk(state, chunk_batch_indices(perms, c * chunk, chunk, batch)), None

    keep_snapshots = config.snapshot_every is not None
    snap_records = jnp.asarray(config.snapshot_records())
    n_snap = snap_records.shape[0]

    def record_body(carry, j):
        state, snaps = carry
        obs = observe_stacked(state)
        if keep_snapshots:
            slot = jnp.minimum(jnp.searchsorted(snap_records, j), n_snap - 1)
            take = snap_records[slot] == j
            snaps = jax.tree.map(
                lambda buf, p: buf.at[slot].set(jnp.where(take, p, buf[slot])),
                snaps,
                kernel.params(state),
            )
        chunks = j * chunks_per_record + jnp.arange(chunks_per_record)
        state, _ = jax.lax.scan(chunk_body, state, chunks)
        return (state, snaps), obs

    if keep_snapshots:
        snaps0 = jax.tree.map(lambda p: jnp.zeros((n_snap,) + p.shape, p.dtype), params0)
    else:
        snaps0 = None
    (state, snaps), obs = jax.lax.scan(
        record_body, (kernel.state0, snaps0), jnp.arange(config.num_records - 1)
    )
    last = observe_stacked(state)
    obs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), obs, last)
    final = kernel.params(state)
    if keep_snapshots:
        snaps = jax.tree.map(lambda buf, p: buf.at[-1].set(p), snaps, final)
    else:
        snaps = jax.tree.map(lambda p0, p: jnp.stack([p0, p]), params0, final)

    # Records and snapshots were stacked time-major; every output is seed-major, as under vmap.
    seed_major = functools.partial(jnp.moveaxis, source=0, destination=1)
    steps = (jnp.arange(config.num_records) * config.record_every).astype(dtype)
    snap_steps = (snap_records * config.record_every).astype(dtype)
    finite = jnp.stack(
        [jnp.all(jnp.isfinite(p.reshape(seeds, -1)), axis=1) for p in final], axis=1
    ).all(axis=1)
    return Trajectory(
        t=jnp.broadcast_to(flow_time(steps, lr, beta), (seeds, config.num_records)),
        observables=jax.tree.map(seed_major, obs),
        snapshot_t=jnp.broadcast_to(flow_time(snap_steps, lr, beta), (seeds, n_snap)),
        snapshots=jax.tree.map(seed_major, snaps),
        status=jnp.where(finite, OK, NON_FINITE).astype(jnp.int32),
        num_steps=jnp.full((seeds,), config.steps, jnp.int32),
    )


def _train_one_impl(
    params0: Params,
    perms,
    data,
    learning_rate,
    momentum,
    config,
    chunk,
    observables,
    basis="weights",
) -> Trajectory:
    """One seed: the stacked kernel with S = 1, seed axis removed."""
    stacked = jax.tree.map(lambda p: p[None], params0)
    traj = _train_stacked_impl(
        stacked, perms, data, learning_rate, momentum, config, chunk, observables, basis
    )
    return jax.tree.map(lambda a: a[0], traj)


_STATIC = ("config", "chunk", "observables", "basis")
_train_stacked = jax.jit(_train_stacked_impl, static_argnames=_STATIC)
_train_one = jax.jit(_train_one_impl, static_argnames=_STATIC)


def _train_per_seed_impl(
    params0: Params,
    perms,
    data,
    learning_rate,
    momentum,
    config,
    chunk,
    observables,
    basis="weights",
) -> Trajectory:
    """S seeds, each with its own data order and hyper-parameters: `_train_one_impl` vmapped."""
    one = functools.partial(
        _train_one_impl, config=config, chunk=chunk, observables=observables, basis=basis
    )
    return jax.vmap(one, in_axes=(0, 0, None, 0, 0))(params0, perms, data, learning_rate, momentum)


_train_per_seed = jax.jit(_train_per_seed_impl, static_argnames=_STATIC)


def check_chunked_config(
    config: SGDConfig, chunk: int, observables: str, n_samples: int, basis: str = "auto"
) -> int:
    """Reject configurations the chunked kernel cannot run, naming the field and what is allowed.

    Returns the mini-batch size B (never None here).
    """
    if not isinstance(config, SGDConfig):
        raise ValueError(f"config must be a gflow.SGDConfig; got {type(config).__name__}.")
    if config.batch_size is None:
        raise ValueError(
            "config.batch_size must be a positive integer for chunked SGD; got None (full-batch "
            "GD: use train_gd)."
        )
    if config.batch_size > n_samples:
        raise ValueError(
            f"batch_size ({config.batch_size}) must not exceed the number of samples N "
            f"({n_samples})."
        )
    if not (isinstance(chunk, (int, np.integer)) and chunk > 0):
        raise ValueError(f"chunk must be a positive integer (steps per chunk); got {chunk!r}.")
    if config.record_every % chunk:
        raise ValueError(
            f"chunk ({chunk}) must divide config.record_every ({config.record_every}): records are "
            "taken at "
            "chunk boundaries."
        )
    if observables not in OBSERVATION_MODES:
        raise ValueError(f"observables must be one of {OBSERVATION_MODES}; got {observables!r}.")
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}; got {basis!r}.")
    return config.batch_size


def _check_params(params0: Params, seed_axis: bool) -> int:
    """Number of seeds (1 without a seed axis); checks the leaf ranks."""
    expected = 3 if seed_axis else 2
    if np.ndim(params0.W) != expected:
        what = "[S, d, D] (seeds stacked on a leading axis)" if seed_axis else "[d, D]"
        raise ValueError(f"params0.W must have shape {what}; got shape {np.shape(params0.W)}.")
    return int(np.shape(params0.W)[0]) if seed_axis else 1


def train_sgd_chunked(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    *,
    learning_rate,
    momentum=0.0,
    config: SGDConfig,
    chunk: int,
    observables: str = "full",
    basis: str = "auto",
    throw: bool = True,
) -> Trajectory:
    """Mini-batch momentum SGD taken ``chunk`` steps at a time; the trajectory of `train_sgd`.

    Same steps, batches and records as ``train_sgd(params0, key, data, learning_rate=η,
    momentum=β, config=config)`` (optax.sgd: m ← g + β m, θ ← θ − η m; flow time
    ``t = k·η/(1−β)``, docs/theory.md §1), equal up to float rounding, with ``W`` read and written
    once per chunk instead of once per step (docs/numerics.md §2).

    Args:
        params0: initial `Params` ``W [d, D]``, ``b [d]``, ``V [d, 2]``.
        key: PRNG key of the mini-batch order (the one `train_sgd` would get).
        data: `TrainingData`.
        learning_rate, momentum: η > 0, β in [0, 1) (traced: new values do not recompile).
        config: `SGDConfig` with a ``batch_size``; ``chunk`` must divide ``record_every``.
        chunk: K, steps per chunk (static). K·B of the order of a few hundred suits a CPU.
        observables: ``"full"`` records `Observables` (`observe`); ``"norms"`` records only
            `NeuronNorms` (‖w_i‖, ‖v_i‖, b_i), much cheaper for long sweeps.
        throw: raise `TrajectoryError` if the run diverged (not under vmap).
        basis: how ``W`` is carried (static). ``"weights"``: ``W`` and its momentum, two GEMMs
            ``[K·B, D]`` per chunk. ``"samples"``: ``W = W(0) + C_Wᵀ X`` with coefficients per
            training sample, one GEMM ``[N, K·B] × [K·B, ·]`` per chunk and the ``N × N`` Gram
            matrix (exact too; fewer FLOPs when N < 2D over a few epochs). ``"auto"`` (default)
            picks the one with fewer FLOPs (`resolve_basis`).

    Returns:
        A `Trajectory` (observables `Observables` or `NeuronNorms` with a leading time axis).
    """
    check_hyperparameters(learning_rate, momentum)
    batch = check_chunked_config(config, chunk, observables, data.x.shape[0], basis)
    basis = resolve_basis(basis, data.x.shape[0], data.x.shape[1], batch, config.steps)
    _check_params(params0, seed_axis=False)
    perms = epoch_permutations(
        key, _epochs_needed(config.steps, data.x.shape[0], batch), data.x.shape[0]
    )
    traj = _train_one(
        params0,
        perms,
        data,
        learning_rate,
        momentum,
        config=config,
        chunk=chunk,
        observables=observables,
        basis=basis,
    )
    return raise_if_failed(traj) if throw else traj


def _per_seed_values(name: str, value, seeds: int, dtype) -> jax.Array:
    arr = jnp.asarray(value, dtype)
    if arr.ndim == 0:
        return jnp.broadcast_to(arr, (seeds,))
    if arr.shape != (seeds,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({seeds},) (one per seed); got shape "
            f"{arr.shape}."
        )
    return arr


def train_sgd_chunked_seeds(
    params0: Params,
    keys: jax.Array,
    data: TrainingData,
    *,
    learning_rate,
    momentum=0.0,
    config: SGDConfig,
    chunk: int,
    observables: str = "norms",
    basis: str = "auto",
) -> Trajectory:
    """S seeds, each with its own data order: `train_sgd_chunked` vmapped over seeds.

    Args:
        params0: `Params` stacked on a leading seed axis (``W [S, d, D]``, ...).
        keys: ``[S]`` PRNG keys, one mini-batch order per seed.
        learning_rate, momentum: scalars or ``[S]`` arrays (a sweep over values is one
            compilation).
        config, chunk, observables: as in `train_sgd_chunked` (default ``"norms"``).
        basis: as in `train_sgd_chunked` (``"auto"``, ``"weights"`` or ``"samples"``).

    Returns:
        A `Trajectory` whose every field has a leading ``[S]`` axis; a diverged seed has status
        `NON_FINITE` and does not stop the others.
    """
    check_hyperparameters(learning_rate, momentum)
    batch = check_chunked_config(config, chunk, observables, data.x.shape[0], basis)
    basis = resolve_basis(basis, data.x.shape[0], data.x.shape[1], batch, config.steps)
    seeds = _check_params(params0, seed_axis=True)
    if np.shape(keys)[:1] != (seeds,):
        raise ValueError(
            f"keys must hold one key per seed, shape ({seeds},); got shape {np.shape(keys)}."
        )
    dtype = params0.W.dtype
    lr = _per_seed_values("learning_rate", learning_rate, seeds, dtype)
    beta = _per_seed_values("momentum", momentum, seeds, dtype)
    n = data.x.shape[0]
    epochs = _epochs_needed(config.steps, n, batch)
    perms = epoch_permutations(keys, epochs, n)
    return _train_per_seed(params0, perms, data, lr, beta, config, chunk, observables, basis)


def train_sgd_seeds_shared_order(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    *,
    learning_rate,
    momentum=0.0,
    config: SGDConfig,
    chunk: int,
    observables: str = "norms",
    basis: str = "auto",
) -> Trajectory:
    """S seeds that share one mini-batch order, trained as one stacked network.

    Seed s follows exactly the trajectory ``train_sgd_chunked(params0[s], key, ...)`` (up to
    float rounding). The seeds are stacked along the neuron axis, so the chunk's GEMMs are
    ``[K·B, D] × [D, 2·S·d]`` and back and the Gram matrix of the chunk is shared: on a CPU
    this is much faster than S separate lanes. Useful when seeds differ in initialisation only
    (the paper's seeds vary the init; the data order is a separate source of noise).

    Args:
        params0: `Params` stacked on a leading seed axis (``W [S, d, D]``, ...).
        key: one PRNG key, the mini-batch order of every seed.
        learning_rate, momentum: scalars shared by all seeds (for per-seed values use
            `train_sgd_chunked_seeds`).
        config, chunk, observables: as in `train_sgd_chunked` (default ``"norms"``).
        basis: as in `train_sgd_chunked` (``"auto"``, ``"weights"`` or ``"samples"``).

    Returns:
        A `Trajectory` whose every field has a leading ``[S]`` axis.
    """
    check_hyperparameters(learning_rate, momentum)
    batch = check_chunked_config(config, chunk, observables, data.x.shape[0], basis)
    basis = resolve_basis(basis, data.x.shape[0], data.x.shape[1], batch, config.steps)
    _check_params(params0, seed_axis=True)
    for name, value in (("learning_rate", learning_rate), ("momentum", momentum)):
        if np.ndim(value) != 0:
            raise ValueError(
                f"{name} must be a scalar shared by all seeds here; got shape {np.shape(value)} "
                "(per-seed values: train_sgd_chunked_seeds)."
            )
    n = data.x.shape[0]
    perms = epoch_permutations(key, _epochs_needed(config.steps, n, batch), n)
    return _train_stacked(
        params0,
        perms,
        data,
        learning_rate,
        momentum,
        config=config,
        chunk=chunk,
        observables=observables,
        basis=basis,
    )
