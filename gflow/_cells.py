"""Cells of the input space and the stable cells of the target map (docs/theory.md §3, Appendix D).

With ``b = 0`` the directions ``w`` that share a gating pattern ``g(s) = 1[w·x_s > 0]`` form a
cone, a *cell*; the cell is **stable** for κ iff ``gate(T_κ(g)) = g``, with the target

    T_κ(g) = κ Σ_{s: g(s)=1} ỹ_s x_s / ‖Σ_{s: g(s)=1} ỹ_s x_s‖.

`stable_cells` is Algorithm 1 of the paper: probes pushed through ``u ← T_κ(gate(u))`` until
the number K_t of distinct patterns stops decreasing; `stable_faces` is Algorithm 1 on the faces
(g, S) of the sliding flow (`gflow._faces`, docs/theory.md §3.1) and reports fixed points,
2-cycles and the plateau K_t apart. Patterns are stored bit-packed, 32 samples per ``uint32``
word, and each distinct pattern is mapped once per iteration: docs/numerics.md §3.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._network import Params, gating_pattern, preactivations
from ._observables import TrainingData, target_directions

WORD_BITS = 32
_BIT_VALUES = np.left_shift(np.uint32(1), np.arange(WORD_BITS, dtype=np.uint32))
# Seeds of the two independent 32-bit fingerprints of a packed pattern (any two distinct odd
# constants do; these are the fractional parts of the golden ratio and of √3).
_FINGERPRINT_SEEDS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))


# --------------------------------------------------------------------------- bit packing


def num_words(n_samples: int) -> int:
    """Words of a packed pattern over ``n_samples`` samples: ``ceil(N / 32)``."""
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
    return -(-int(n_samples) // WORD_BITS)


def pack_patterns(patterns: jax.Array) -> jax.Array:
    """Bit-pack boolean patterns ``[..., N]`` into ``uint32`` words ``[..., ceil(N/32)]``.

    Sample ``s`` is bit ``s % 32`` of word ``s // 32``; padding bits are 0. Jittable.

    Example:
        >>> pack_patterns(jnp.array([True, False, True])).tolist()
        [5]
    """
    patterns = jnp.asarray(patterns, bool)
    n = patterns.shape[-1]
    words = num_words(n)
    pad = words * WORD_BITS - n
    if pad:
        patterns = jnp.concatenate(
            [patterns, jnp.zeros(patterns.shape[:-1] + (pad,), bool)], axis=-1
        )
    bits = patterns.reshape(patterns.shape[:-1] + (words, WORD_BITS))
    values = jnp.asarray(_BIT_VALUES).reshape((1,) * (bits.ndim - 1) + (WORD_BITS,))
    return jnp.sum(jnp.where(bits, values, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)


def unpack_patterns(words: jax.Array, n_samples: int) -> jax.Array:
    """Inverse of `pack_patterns`: ``uint32 [..., W]`` → ``bool [..., n_samples]``. Jittable."""
    words = jnp.asarray(words, jnp.uint32)
    if words.shape[-1] != num_words(n_samples):
        raise ValueError(
            f"packed patterns have {words.shape[-1]} words per row, but n_samples={n_samples} "
            f"needs {num_words(n_samples)}."
        )
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32).reshape((1,) * words.ndim + (WORD_BITS,))
    bits = (words[..., None] >> shifts) & jnp.uint32(1)
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * WORD_BITS,))[..., :n_samples].astype(
        bool
    )


def same_cell(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cell identity: True where packed patterns ``a`` and ``b`` (``[..., W]``) are equal."""
    return jnp.all(jnp.asarray(a) == jnp.asarray(b), axis=-1)


# --------------------------------------------------------------------------- gates


def _samples_as_layer(x: jax.Array) -> Params:
    """A layer whose neurons are the samples (incoming weights x_s, zero bias): its
    pre-activations at inputs ``u [M, D]`` are ``z[m, s] = u_m·x_s``, ``[M, N]``, no transpose."""
    n = x.shape[0]
    return Params(W=x, b=jnp.zeros((n,), x.dtype), V=jnp.zeros((n, 2), x.dtype))


def direction_gates(u: jax.Array, x: jax.Array) -> jax.Array:
    """gate(u)_s = 1[u·x_s > 0] for each row of ``u [M, D]`` → ``bool [M, N]`` (docs/theory.md §3).

    The directions are the inputs of `_samples_as_layer` and the gate is `gating_pattern`'s,
    so it has a single owner.
    """
    return gating_pattern(_samples_as_layer(x), u)


def neuron_patterns(params: Params, x: jax.Array) -> jax.Array:
    """Packed gating pattern of every neuron, ``uint32 [d, W]`` (row i is g_i over the samples)."""
    return pack_patterns(gating_pattern(params, x).T)


def map_patterns(patterns: jax.Array, kappa: jax.Array, data: TrainingData) -> jax.Array:
    """One step of the target map on patterns: ``g ↦ gate(T_κ(g))`` (docs/theory.md §3).

    Args:
        patterns: ``bool [M, N]``, one gating pattern per row.
        kappa: ``[M]`` alignments (+1 / −1), or a scalar for all rows.
        data: `TrainingData` (inputs and signed labels).

    Returns:
        ``bool [M, N]``. A pattern whose signed sum vanishes (e.g. the empty pattern) maps to
        the empty pattern, because its target is the zero vector.
    """
    kappa = jnp.broadcast_to(jnp.asarray(kappa), patterns.shape[:1])
    targets = target_directions(patterns.T, kappa, data)
    return direction_gates(targets, data.x)


def map_patterns_both_signs(patterns: jax.Array, data: TrainingData) -> tuple[jax.Array, jax.Array]:
    """``(gate(T_+(g)), gate(T_−(g)))`` for ``bool [M, N]`` patterns, from one target and one gate
    matmul instead of two each.

    ``T_−(g) = −T_+(g)``, and ``x·(−u)`` is bitwise ``−(x·u)`` (IEEE rounding is symmetric), so
    ``gate(T_−(g))_s = 1[−z_s > 0]`` with ``z_s = x_s·T_+(g)`` is exactly `map_patterns` for
    κ = −1; ``z`` comes from `gflow._network.preactivations` and both gates apply its closed-kink
    rule ``> 0``.
    """
    m = patterns.shape[0]
    targets = target_directions(patterns.T, jnp.ones((m,), jnp.int32), data)
    z = preactivations(_samples_as_layer(data.x), targets)
    return z > 0, -z > 0


def is_stable(patterns: jax.Array, kappa: jax.Array, data: TrainingData) -> jax.Array:
    """Stability test ``gate(T_κ(g)) == g`` for each row of ``bool [M, N]`` patterns: ``[M]``."""
    return jnp.all(map_patterns(patterns, kappa, data) == patterns, axis=-1)


# --------------------------------------------------------------------------- cell transitions


class CellTransitions(NamedTuple):
    """When each neuron changed cell along a recorded trajectory.

    Attributes:
        changed: ``bool [T−1, d]``, True where the cell differs between records k and k+1.
        count: ``int [d]``, number of recorded cell changes per neuron.
        first_time, last_time: ``[d]`` record time just after the first / last change
            (NaN for a neuron that never changed).
    """

    changed: np.ndarray
    count: np.ndarray
    first_time: np.ndarray
    last_time: np.ndarray

    def times(self, neuron: int, t) -> np.ndarray:
        """Record times (after the change) of every cell change of one neuron."""
        return np.asarray(t)[1:][self.changed[:, neuron]]


def cell_transitions(t, cell_hash) -> CellTransitions:
    """Cell changes from the per-record cell identity ``cell_hash [T, d]`` (`Observables`).

    A change is seen only between consecutive records: a neuron that leaves a cell and comes
    back between two records is not counted, so use a fine time grid.
    """
    t = np.asarray(t, dtype=np.float64)
    h = np.asarray(cell_hash)
    if h.ndim != 2 or h.shape[0] != t.shape[0] or t.shape[0] < 2:
        raise ValueError(
            f"cell_hash must be [T, d] with T = len(t) >= 2; got shape {h.shape} for "
            f"{t.shape[0]} times."
        )
    changed = h[1:] != h[:-1]
    count = changed.sum(axis=0)
    after = t[1:]
    any_change = count > 0
    first = np.where(any_change, after[np.argmax(changed, axis=0)], np.nan)
    last_index = changed.shape[0] - 1 - np.argmax(changed[::-1], axis=0)
    last = np.where(any_change, after[last_index], np.nan)
    return CellTransitions(changed=changed, count=count, first_time=first, last_time=last)


# --------------------------------------------------------------------------- Cover bound


def cover_bound(n_samples: int, dim: int) -> int:
    """C(N, D) = 2 Σ_{k=0}^{D−1} binom(N−1, k), exact (integers; docs/theory.md §3, Lemma 3.1).

    The number of cells cut by N hyperplanes through the origin of R^D in general position
    (Cover 1965); for ``D >= N`` it is ``2^N``.

    Example:
        >>> cover_bound(6, 2)
        12
    """
    for name, value in (("n_samples", n_samples), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    n, d = int(n_samples), int(dim)
    return 2 * sum(math.comb(n - 1, k) for k in range(min(d, n)))


def log10_cover_bound(n_samples: int, dim: int) -> float:
    """log10 C(N, D), for bounds far beyond float range (e.g. N = 4000, D = 1024)."""
    return math.log10(cover_bound(n_samples, dim))


# --------------------------------------------------------------------------- distinct patterns


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def pattern_fingerprints(words: jax.Array) -> jax.Array:
    """Two independent 32-bit hashes of each packed pattern, ``uint32 [..., 2]``.

    ``h = fmix(Σ_j fmix(word_j ⊕ k_j))`` with position keys ``k_j = fmix(j ⊕ seed)``; equal
    patterns always agree, two different ones agree on both hashes with probability ≈ 2⁻⁶⁴.
    """
    words = jnp.asarray(words, jnp.uint32)
    position = jnp.arange(words.shape[-1], dtype=jnp.uint32).reshape(
        (1,) * (words.ndim - 1) + (-1,)
    )
    hashes = []
    for seed in _FINGERPRINT_SEEDS:
        keys = _fmix32(position ^ seed)
        hashes.append(_fmix32(jnp.sum(_fmix32(words ^ keys), axis=-1, dtype=jnp.uint32)))
    return jnp.stack(hashes, axis=-1)


class PatternGroups(NamedTuple):
    """Probes grouped by identical pattern (fixed shapes: valid entries first).

    Attributes:
        count: number of distinct patterns K.
        group: ``[M]`` index in ``0..K−1`` of each probe's pattern.
        representative: ``[M]``; entries ``0..K−1`` are one probe of each distinct pattern.
        size: ``[M]``; entries ``0..K−1`` are how many probes share that pattern.
    """

    count: jax.Array
    group: jax.Array
    representative: jax.Array
    size: jax.Array


def group_patterns(words: jax.Array) -> PatternGroups:
    """Group packed patterns ``[M, W]`` by identity via their fingerprints; jittable."""
    m = words.shape[0]
    fp = pattern_fingerprints(words)
    order = jnp.lexsort((fp[:, 1], fp[:, 0]))
    sorted_fp = fp[order]
    new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(sorted_fp[1:] != sorted_fp[:-1], axis=-1)])
    sorted_group = jnp.cumsum(new.astype(jnp.int32)) - 1
    group = jnp.zeros((m,), jnp.int32).at[order].set(sorted_group)
    representative = jnp.full((m,), m, jnp.int32).at[sorted_group].min(order.astype(jnp.int32))
    representative = jnp.where(jnp.arange(m) <= sorted_group[-1], representative, 0)
    size = jnp.zeros((m,), jnp.int32).at[sorted_group].add(1)
    return PatternGroups(
        count=sorted_group[-1] + 1, group=group, representative=representative, size=size
    )


def count_distinct(words: jax.Array) -> jax.Array:
    """Number of distinct packed patterns among the rows of ``words [M, W]``; jittable."""
    return group_patterns(words).count


# ----------------------------------------------------------------------- exact gates of signed sums
#
# Every step of Algorithm 1 needs, for many patterns g, the signs of the pre-activations of the
# target: z_s(g) = x_s · S(g) with the signed sum S(g) = Σ_{j: g(j)=1} ỹ_j x_j (T_κ(g) is κ S / ‖S‖,
# and a positive scale does not change a sign). Computing z densely costs 2ND flops per pattern
# for S and 2ND more for z. The engine below returns the *exact* signs (those of the real number
# x_s · S(g) for the stored data), at a fraction of that:
#
# * S is exact. The data are split X = X_hi + X_lo with X_hi on a power-of-two grid per feature,
#   so coarse that every signed subset sum of a column is representable (`_grid_split`): then
#   S_hi = X_hi^T (g∘ỹ) is computed without any rounding, in any summation order, by one GEMM or
#   by adding the rows of the flipped samples to the S of another pattern (incremental updates
#   cost ∝ the flips). The rest, x_s · X_lo^T (g∘ỹ), is bounded by ‖x_s‖ ‖X_lo‖₂ √|g|. Where the
#   backend multiplies int8 matrices faster (AMX, VNNI), the GEMM runs on the base-256 digits of
#   the grid integers X_hi / h with int32 sums instead (`_grid_digits`): exact as well.
# * The gate is filtered in a rank-r basis V_r of the data's top right singular vectors:
#   z_s = (V_rᵀx_s)·(V_rᵀS) + x_s^⊥·S^⊥, the last term bounded by ‖x_s^⊥‖ ‖S^⊥‖ (Cauchy–Schwarz,
#   ‖S^⊥‖² = ‖S‖² − ‖V_rᵀS‖²). That costs 2(N+D)r per pattern and settles all but a few per cent
#   of the signs; the samples left undecided concentrate on a few hundred samples, the same for
#   all patterns of a call, which are evaluated densely (x_s · S_hi, one GEMM; `_dense_samples`).
# * Targets that lie close together are gated from a reference target instead: with S(g) = c S(r)
#   + R, |z_s(g) − c z_s(r)| ≤ ‖x_s‖ ‖R‖, so every sample where c|z_s(r)| exceeds that has the
#   reference's sign, and only the few others are evaluated densely (`_gate_by_reference`).
# * Every floating-point step carries a rigorous error bound (γ_n = nu/(1−nu), u the unit
#   roundoff). A sign is taken only when |estimate| exceeds its bound; the rare entries left
#   (near-ties, typically < 1 per pattern) are settled on the host: in float64, then from a
#   float64 row of G = X Xᵀ, and for a true tie (z = 0, e.g. the empty pattern) exactly with
#   `math.fsum`. A tie gives neither sign: the closed kink of `gflow._network.gating_pattern`.
#
# So the result does not depend on summation order, chunking or threads, and equals the gate of
# exact arithmetic; the former float32 evaluation (``X @ T`` in float32) could disagree with it
# on ~1 entry in 4·10⁶ (|z| within float32 rounding of 0).

# Rank of the filter for random patterns (the first map) and for the structured patterns after it.
_FIRST_RANK, _RANK = 128, 64
# The dense check: the samples the filter leaves undecided concentrate on a few hundred samples,
# the same for every chunk of a call (measured on CIFAR-10, N = 4000: a call's own top 1024 cover
# 99 % of its undecided entries, as well as each chunk's own top 1024 would). So each call runs
# the filter alone on up to `_PILOT_ROWS` rows spread over it, and checks densely, in every chunk,
# the samples most often undecided there: of the sizes below (and all N samples), the one that
# minimises rows·size + (undecided entries outside it)·_SETTLE_COST, the host settling an entry
# at about the cost of that many dense-check samples of one pattern (measured at N = 4000,
# D = 1024).
_DENSE_SIZES = (0, 128, 256, 512, 1024, 2048)
_SETTLE_COST = 400
_PILOT_ROWS = 1024
_GATE_ROWS = 512  # patterns per gate call ([rows, N] arrays stay in cache)
_IN_FLIGHT = 4  # device calls queued ahead of the host
_SETTLE_BATCH = 1024  # undecided entries per host batch (the gathered rows stay in cache)
_REFERENCES = 64  # reference patterns of `_references` and `_gate_by_reference`
_ROWS_PER_REFERENCE = (
    64  # fewer references below this many rows each; none below two references' worth
)
# Relative slack for the (orthonormal-to-rounding) float64 eigenbasis in the filter identity.
_BASIS_SLACK = 1e-10


class _DeviceGeometry(NamedTuple):
    """Arrays the jitted gate and sum kernels read (data dtype; ``N`` samples, ``D`` features)."""

    x: jax.Array  # [N, D] the data
    x_hi: jax.Array  # [N+1, D] grid part of the data, last row 0 (padding index N)
    labels: jax.Array  # [N+1] signed labels ỹ, last entry 0
    basis: jax.Array  # [D, R] top right singular vectors of X (R = max rank used)
    coords: jax.Array  # [N, R] X V_R
    tail_norms: dict  # {rank: [N] ‖x_s − V_r V_rᵀ x_s‖, rounded up}
    x_norms: jax.Array  # [N] ‖x_s‖, rounded up
    lo_gains: jax.Array  # [N] ≥ ‖X_lo x_s‖₂ (grid remainder), rounded up
    digits: (
        jax.Array
    )  # int8 [N+1, L·D] `_grid_digits` (last row 0), or [N+1, 0]: sums by float GEMM
    steps: jax.Array  # [D] the grid steps h_k


class _Geometry(NamedTuple):
    """`_DeviceGeometry` plus the float64 host copies used to settle undecided signs."""

    device: _DeviceGeometry
    x64: np.ndarray  # [N, D]
    labels64: np.ndarray  # [N]
    x_norms64: np.ndarray  # [N]
    norm_sum64: float  # Σ_j ‖x_j‖
    lo_gains64: np.ndarray  # [N] ≥ ‖X_lo x_s‖₂, so |x_s·X_loᵀa| ≤ lo_gains64[s] ‖a‖₂
    ranks: tuple[int, ...]
    x_unit: np.ndarray  # [N, D] x_s / ‖x_s‖ in the data dtype (0 for x_s = 0)
    gram_rows: np.ndarray  # [N, N] float64 rows of G = X Xᵀ, filled on first use (this call only)
    gram_ready: np.ndarray  # [N] bool, which rows of gram_rows are filled
    sum_speedup: (
        float  # how many times faster a sum GEMM runs by digits than in float (1: no digits)
    )


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` in true float32 (or float64) arithmetic. The bounds of this engine assume it;
    by default JAX may round float32 matmul inputs to TF32 on recent GPUs and to bfloat16 on TPUs,
    which would break the exact grid sums and every error bound (no effect on the CPU)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _gamma(k: int, u: float) -> float:
    """γ_k = k u / (1 − k u): bound on the relative error of a length-k dot product (Higham)."""
    return k * u / (1.0 - k * u)


_DOT_BLOCK = 128  # features per block of the host dense check (`_gate_by_reference`)


def _feature_blocks(dim: int) -> list[slice]:
    """Feature blocks of the blocked dense check: `_DOT_BLOCK` features each (the last fewer)."""
    return [slice(start, start + _DOT_BLOCK) for start in range(0, dim, _DOT_BLOCK)]


def _blocked_gamma(dim: int, u: float) -> float:
    """Error factor of a length-``dim`` dot product whose products are summed per feature block
    in any order and the block results added in any order: |error| ≤ (γ_b + γ_nb (1 + γ_b))
    Σ_k |a_k b_k|, about γ_D / 7 at D = 1024 (so several times fewer entries are left undecided)."""
    block, count = min(dim, _DOT_BLOCK), len(_feature_blocks(dim))
    return _gamma(block, u) + _gamma(count, u) * (1 + _gamma(block, u))


def _round_up(values: np.ndarray, dtype) -> np.ndarray:
    """Cast float64 ``values`` to ``dtype``, rounding up (so that bounds stay bounds)."""
    cast = np.asarray(values, np.float64).astype(dtype)
    return np.where(
        cast.astype(np.float64) < values, np.nextafter(cast, np.asarray(np.inf, dtype)), cast
    )


def _grid_split(x64: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X = X_hi + X_lo with column k of X_hi on the grid h_k ℤ, h_k = 2^⌈log₂(Σ_j |x_jk| / 2^p)⌉
    (doubled where the rounded column would still sum to more than 2^p h_k in absolute value).

    ``p`` is the significand precision of ``dtype`` (24 for float32). Every partial sum of
    ``±x_hi,jk`` over a subset of samples is then an integer multiple of h_k of size at most
    2^p h_k, hence exactly representable: ``X_hiᵀ a`` for ``a ∈ {−1, 0, 1}^N`` is computed exactly
    by any float GEMM. Returns ``(x_hi in dtype, x_lo float64, h float64 [D])``;
    |x_lo,jk| ≤ h_k / 2.
    """
    precision = np.finfo(dtype).nmant + 1
    col_l1 = np.abs(x64).sum(axis=0)
    used = col_l1 > 0
    step = np.ones_like(col_l1)  # a column of zeros lies on every grid
    step[used] = np.exp2(np.ceil(np.log2(col_l1[used]) - precision))
    while (
        True
    ):  # log2 may round below a power of two, and rounding the entries adds up to N/2 steps
        grid = np.round(x64 / step)
        over = np.abs(grid).sum(axis=0) > 2.0**precision
        if not over.any():
            break
        step[over] *= 2
    x_hi64 = grid * step
    x_hi = x_hi64.astype(dtype)
    if not np.array_equal(x_hi.astype(np.float64), x_hi64):
        raise ValueError(
            "the data's grid split is not exact in its dtype (values too small to represent)."
        )
    return x_hi, x64 - x_hi64, step


_DIGIT_BASE = 256


def _grid_digits(x_hi64: np.ndarray, step: np.ndarray, labels64: np.ndarray) -> np.ndarray | None:
    """Balanced base-256 digits of the grid integers q_sk = ỹ_s x_hi,sk / h_k, ``int8 [N, L·D]``
    (digit l of feature k in column l·D + k), or None unless the labels are ±1 and
    ``max_k Σ_s |q_sk| + 129 N < 2^31`` (float32 data: Σ_s |q_sk| ≤ 2^24, `_grid_split`).

    With them ``S_hi(g) = h ∘ Σ_l 256^l gᵀDigit_l`` (`_digit_sums`): each digit GEMM sums at most
    N numbers of size ≤ 128 in int32, and every partial result of the Horner recombination is a
    signed subset sum of the q_sk plus at most 129 N, so int32 holds all of them exactly.
    """
    n, dim = x_hi64.shape
    if not np.all(np.abs(labels64) == 1):
        return None
    rest = np.round(x_hi64 / step).astype(np.int64) * labels64.astype(np.int64)[:, None]
    if np.abs(rest).sum(axis=0).max() + 129 * n >= 2**31:
        return None
    digits = []
    while not digits or np.any(rest):
        digit = (rest + _DIGIT_BASE // 2) % _DIGIT_BASE - _DIGIT_BASE // 2
        digits.append(digit.astype(np.int8))
        rest = (rest - digit) // _DIGIT_BASE
    return np.concatenate(digits, axis=1)


def _orthonormal_columns(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``a`` (Gram–Schmidt twice: orthonormal to rounding).

    Matrix–vector products only, on purpose: NumPy's LAPACK (QR, eigh of a 1024² matrix) takes
    seconds instead of milliseconds when its threads compete with other processes. A column that
    vanishes (rank deficiency) is replaced by a fixed random direction.
    """
    q = np.array(a, np.float64, order="F")
    spare = np.random.default_rng(1)
    for j in range(q.shape[1]):
        v, norm = q[:, j], 1.0
        for _ in range(3):
            v = q[:, j]
            for _ in range(2):
                if j:
                    v = v - q[:, :j] @ (q[:, :j].T @ v)
            norm = np.sqrt(v @ v)
            if norm > 1e-8 * (np.sqrt(q[:, j] @ q[:, j]) + 1e-300):
                break
            q[:, j] = spare.standard_normal(q.shape[0])
        q[:, j] = v / norm
    return q


def _top_subspace(gram: np.ndarray, rank: int, iterations: int = 6) -> np.ndarray:
    """Orthonormal ``[D, rank]`` basis close to the top-``rank`` eigenvectors of the PSD ``gram``:
    block power iteration from a fixed start, then Rayleigh–Ritz (columns largest first, so the
    first r columns serve the rank-r filter). Any orthonormal basis keeps the gate exact; a
    better one only leaves fewer signs undecided."""
    q = _orthonormal_columns(np.random.default_rng(0).standard_normal((gram.shape[0], rank)))
    for _ in range(iterations):
        q = _orthonormal_columns(gram @ q)
    _, rotation = np.linalg.eigh(q.T @ gram @ q)  # rank × rank: small enough for LAPACK
    return _orthonormal_columns(q @ rotation[:, ::-1])


def _geometry(data: TrainingData, ranks: tuple[int, ...]) -> _Geometry:
    """Filter bases, norms and the grid split of ``data.x`` (float64 on the host, once per call)."""
    dtype = np.dtype(data.x.dtype)
    x64 = np.asarray(data.x, np.float64)
    labels64 = np.asarray(data.signed_labels, np.float64)
    n, dim = x64.shape
    x_hi, x_lo, step = _grid_split(x64, dtype)
    digits = _grid_digits(x_hi.astype(np.float64), step, labels64)
    sum_speedup = 1.0 if digits is None else _integer_gemm_speedup() * dim / digits.shape[1]
    # L int8 GEMMs must beat one float GEMM, with a margin for the recombination.
    if digits is None or sum_speedup < 1.25:
        digits, sum_speedup = np.zeros((n, 0), np.int8), 1.0
    # |x_s·X_loᵀa| ≤ ‖X_lo x_s‖ ‖a‖: ‖X_lo x_s‖² = x_sᵀ(X_loᵀX_lo)x_s, padded for its float64
    # rounding.
    gram_lo = x_lo.T @ x_lo
    lo_gains = np.sqrt(
        np.maximum(np.einsum("ij,ij->i", x64 @ gram_lo, x64), 0)
        + 1e-12 * np.trace(gram_lo) * np.einsum("ij,ij->i", x64, x64)
        + 1e-300
    ) * (1 + 1e-6)
    top = max(min(max(ranks), n, dim), 1)
    basis = _top_subspace(x64.T @ x64, top)
    coords = x64 @ basis
    x_norms64 = np.linalg.norm(x64, axis=1)
    slack = 1e-12 * x_norms64
    tails = {}
    for r in ranks:
        r = min(r, top)
        residual = x64 - coords[:, :r] @ basis[:, :r].T
        tails[r] = jnp.asarray(_round_up(np.linalg.norm(residual, axis=1) + slack, dtype))
    pad = np.zeros((1, dim), dtype)
    device = _DeviceGeometry(
        x=jnp.asarray(np.asarray(data.x)),
        x_hi=jnp.asarray(np.concatenate([x_hi, pad])),
        labels=jnp.asarray(np.concatenate([labels64, [0.0]]).astype(dtype)),
        basis=jnp.asarray(basis.astype(dtype)),
        coords=jnp.asarray(coords.astype(dtype)),
        tail_norms=tails,
        x_norms=jnp.asarray(_round_up(x_norms64 * (1 + 1e-12), dtype)),
        lo_gains=jnp.asarray(_round_up(lo_gains, dtype)),
        digits=jnp.asarray(np.concatenate([digits, np.zeros((1, digits.shape[1]), np.int8)])),
        steps=jnp.asarray(step.astype(dtype)),
    )
    return _Geometry(
        device=device,
        x64=x64,
        labels64=labels64,
        x_norms64=x_norms64,
        norm_sum64=float(x_norms64.sum()),
        lo_gains64=lo_gains,
        ranks=tuple(sorted({min(r, top) for r in ranks})),
        x_unit=(x64 / np.where(x_norms64 > 0, x_norms64, 1)[:, None]).astype(dtype),
        gram_rows=np.empty((n, n)),
        gram_ready=np.zeros(n, bool),
        sum_speedup=sum_speedup,
    )


def _pattern_bits(words: jax.Array, samples: jax.Array) -> jax.Array:
    """Bits ``g(s)`` of packed patterns ``[K, W]`` at the sample indices ``samples [L]``: bool
    ``[K, L]``."""
    word = jnp.take(words, samples >> 5, axis=1, mode="clip")
    return ((word >> (samples & 31).astype(jnp.uint32)[None, :]) & jnp.uint32(1)).astype(bool)


@functools.cache
def _integer_gemm_speedup() -> float:
    """How many times faster the default backend multiplies int8 matrices (int32 sums) than
    float32 ones, timed once per process on a [512, 4096] × [4096, 1024] product (best of 3).
    On CPUs with AMX or VNNI it is 4–10, elsewhere it can be below 1; `_geometry` sums by digits
    (`_digit_sums`) only where that pays. Both ways give the same, exact, sums."""

    def best(a, b, **kw):
        f = jax.jit(functools.partial(jnp.matmul, **kw))
        f(a, b).block_until_ready()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - start)
        return min(times)

    ints = best(
        jnp.ones((512, 4096), jnp.int8),
        jnp.ones((4096, 1024), jnp.int8),
        preferred_element_type=jnp.int32,
    )
    floats = best(
        jnp.ones((512, 4096), jnp.float32),
        jnp.ones((4096, 1024), jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return floats / ints


def _digit_sums(coefficients: jax.Array, digits: jax.Array, steps: jax.Array) -> jax.Array:
    """``Σ_s c_ks ỹ_s x_hi,s`` for ``coefficients`` c ∈ {−1, 0, 1} (int8 ``[K, L_s]``) and the
    digit rows of those samples ``digits [L_s, L·D]`` (`_grid_digits`): h ∘ Σ_l 256^l cᵀDigit_l,
    exact integer arithmetic (int8 GEMMs with int32 sums, Horner recombination) then one exact
    conversion and scaling by a power of two. The operands are materialised first: XLA would
    otherwise fuse their producers (bit extraction, gathers) into the int8 GEMM and leave the
    backend's fast int8 kernel for a loop ~20× slower (measured on the CPU)."""
    k, dim = coefficients.shape[0], steps.shape[0]
    coefficients, digits = jax.lax.optimization_barrier((coefficients, digits))
    per_digit = jnp.matmul(coefficients, digits, preferred_element_type=jnp.int32).reshape(
        k, -1, dim
    )
    total = per_digit[:, -1]
    for l in range(per_digit.shape[1] - 2, -1, -1):
        total = total * _DIGIT_BASE + per_digit[:, l]
    return total.astype(steps.dtype) * steps[None, :]


@jax.jit
def _signed_sums_kernel(words: jax.Array, geo: _DeviceGeometry) -> jax.Array:
    """S_hi(g) = X_hiᵀ (g∘ỹ) for packed patterns ``[K, W]`` → ``[K, D]``, exact (`_grid_split`)."""
    n = geo.x.shape[0]
    if geo.digits.shape[1]:
        return _digit_sums(unpack_patterns(words, n).astype(jnp.int8), geo.digits[:n], geo.steps)
    signed = jnp.where(unpack_patterns(words, n), geo.labels[None, :n], 0)
    return _dot(signed, geo.x_hi[:n])


# Below this many samples the dense update goes by one float GEMM: the digit path's int32
# products and recombination cost a fixed ~3 float32 GEMM-samples' worth of memory passes per row
# (measured at D = 1024: 13 against 6 ms for 4096 rows × 128 samples, 15 against 19 at 512).
_DIGIT_MIN_SAMPLES = 512


def _updates_by_digits(size: int, speedup: float) -> bool:
    """Whether a dense update over ``size`` samples goes by `_digit_sums` (digits available:
    ``speedup`` = `_Geometry.sum_speedup` > 1, and at least `_DIGIT_MIN_SAMPLES` samples)."""
    return speedup > 1 and size >= _DIGIT_MIN_SAMPLES


@functools.partial(jax.jit, static_argnames=("by_digits",))
def _sum_changes_kernel(
    ref_words: jax.Array,
    new_words: jax.Array,
    samples: jax.Array,
    geo: _DeviceGeometry,
    *,
    by_digits: bool,
) -> jax.Array:
    """X_hi[L]ᵀ((g'−g)∘ỹ)[L] for ``samples`` L (padded with N): S_hi(g') − S_hi(g) when L holds
    every sample where g and g' differ, exact (a difference of grid subset sums, `_grid_split`).
    ``by_digits``: the product by `_digit_sums` (needs ``geo.digits``), else a float GEMM."""
    if by_digits:
        delta = _pattern_bits(new_words, samples).astype(jnp.int8) - _pattern_bits(
            ref_words, samples
        ).astype(jnp.int8)
        return _digit_sums(delta, geo.digits[samples], geo.steps)
    dtype = geo.x_hi.dtype
    delta = _pattern_bits(new_words, samples).astype(dtype) - _pattern_bits(
        ref_words, samples
    ).astype(dtype)
    return _dot(delta * geo.labels[samples][None, :], geo.x_hi[samples])


def _row_norms(sums: jax.Array, sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Upper bounds on ‖S_hi(g)‖ and √|g| for the rows of ``sums [K, D]`` (|g| = ``sizes``)."""
    dt = sums.dtype
    u = float(jnp.finfo(dt).eps) / 2
    s_norm = jnp.sqrt(jnp.sum(sums * sums, axis=1) * (1 + 2 * _gamma(sums.shape[1], u)))
    return s_norm, jnp.sqrt(sizes.astype(dt)) * (1 + 2 * u)


def _filter(
    sums: jax.Array, s_norm: jax.Array, root_size: jax.Array, geo: _DeviceGeometry, rank: int
):
    """Rank-r estimate of z_s = x_s·S and its bound, ``[K, N]`` each (see `_gate_kernel`)."""
    dt = sums.dtype
    dim = geo.x.shape[1]
    u = float(jnp.finfo(dt).eps) / 2
    basis, coords = geo.basis[:, :rank], geo.coords[:, :rank]
    q = _dot(sums, basis)
    estimate = _dot(q, coords.T)
    e_q = (_gamma(dim, u) * (1 + u) + u) * s_norm
    q_norm = jnp.sqrt(jnp.sum(q * q, axis=1))
    q_low = jnp.maximum(q_norm * (1 - 2 * _gamma(rank, u)) - np.sqrt(rank) * e_q, 0)
    tau = jnp.sqrt(jnp.maximum(s_norm**2 - q_low**2, 0))
    eta = (_gamma(rank, u) * (1 + u) + u) * q_norm * (1 + 2 * _gamma(rank, u)) + np.sqrt(rank) * e_q
    bound = (
        geo.tail_norms[rank][None, :] * tau[:, None]
        + geo.x_norms[None, :] * (eta + _BASIS_SLACK * s_norm)[:, None]
        + geo.lo_gains[None, :] * root_size[:, None]
    ) * (1 + 64 * u)
    return estimate, bound


@functools.partial(jax.jit, static_argnames=("rank",))
def _undecided_counts(
    sums: jax.Array, sizes: jax.Array, geo: _DeviceGeometry, *, rank: int
) -> jax.Array:
    """How many of the non-empty rows the rank-r filter leaves undecided at each sample, ``[N]``."""
    estimate, bound = _filter(sums, *_row_norms(sums, sizes), geo, rank)
    return jnp.sum(~(jnp.abs(estimate) > bound) & (sizes > 0)[:, None], axis=0, dtype=jnp.int32)


def _dense_placement(dense: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the dense-check samples ``dense`` sit in packed words: ``(merge [L, 2W] float32,
    mask [W])``.

    Row l of ``merge`` holds 2^(s mod 16) in column ``s // 32`` (bits 0–15 of the word) or
    ``W + s // 32`` (bits 16–31) for sample s = dense[l], so for 0/1 rows ``b [K, L]`` the product
    ``b @ merge`` holds each word's bits as two sums of distinct powers of two below 2^16, exact in
    float32 sums of bfloat16 operands (0/1 and powers of two are bfloat16 numbers, their products
    exact); ``mask`` has the bits of ``dense`` set. A GEMM places the dense results into the packed
    words: an XLA scatter of [K, L] int8 entries is several times slower on the CPU, and the
    bfloat16 GEMM 4× faster than the float32 one where the CPU has bfloat16 units.
    """
    words = num_words(n)
    merge = np.zeros((dense.size, 2 * words), np.float32)
    merge[np.arange(dense.size), dense // WORD_BITS + words * (dense % WORD_BITS >= 16)] = np.exp2(
        dense % 16
    )
    mask = np.zeros((1, words), np.uint32)
    _set_bits(mask, np.zeros_like(dense), dense)
    return merge, mask[0]


@functools.partial(jax.jit, static_argnames=("rank",))
def _gate_kernel(
    sums: jax.Array,
    sizes: jax.Array,
    geo: _DeviceGeometry,
    dense: jax.Array,
    x_dense: jax.Array,
    merge: jax.Array,
    dense_mask: jax.Array,
    *,
    rank: int,
):
    """Signs of z_s = x_s·S(g) for each row ``S_hi(g)`` of ``sums [K, D]`` (|g| = ``sizes``).

    Returns packed ``(positive, negative, undecided)``, ``uint32 [K, W]``; a sign is set only
    where it is proven (see the section comment): ``|estimate| > bound`` with

        rank-r filter:  bound_s = ‖x_s^⊥‖ τ + ‖x_s‖ (η + slack ‖S‖) + β_s
        dense (samples ``dense``, rows ``x_dense``):  bound_s = ‖x_s‖ γ_D ‖S‖ + β_s,
        β_s = ‖X_lo x_s‖ √|g|,

    τ ≥ ‖S^⊥‖ and η the rounding of the filter's two GEMMs. The dense check replaces the filter
    at its samples (placed by ``merge`` and ``dense_mask``, `_dense_placement`); when ``dense``
    holds all N samples the filter is skipped. Empty patterns (S = 0, z = 0) have neither sign
    and nothing undecided.
    """
    n, dim = geo.x.shape
    u = float(jnp.finfo(sums.dtype).eps) / 2
    s_norm, root_size = _row_norms(sums, sizes)
    empty = sizes == 0
    exact = _dot(sums, x_dense.T)
    margin = (
        geo.x_norms[dense][None, :] * (_gamma(dim, u) * s_norm)[:, None]
        + geo.lo_gains[dense][None, :] * root_size[:, None]
    ) * (1 + 64 * u)
    if dense.shape[0] == n:  # `dense` is then 0..N−1 in order
        positive, negative = pack_patterns(exact > margin), pack_patterns(exact < -margin)
    else:
        estimate, bound = _filter(sums, s_norm, root_size, geo, rank)
        positive, negative = pack_patterns(estimate > bound), pack_patterns(estimate < -bound)
        if dense.shape[0]:
            k, words = sums.shape[0], dense_mask.shape[0]
            signs = jnp.concatenate([exact > margin, exact < -margin]).astype(jnp.bfloat16)
            signs, merge = jax.lax.optimization_barrier(
                (signs, merge.astype(jnp.bfloat16))
            )  # see `_digit_sums`
            placed = jnp.matmul(signs, merge, preferred_element_type=jnp.float32).astype(jnp.uint32)
            placed = placed[:, :words] | (placed[:, words:] << 16)
            positive = (positive & ~dense_mask[None, :]) | placed[:k]
            negative = (negative & ~dense_mask[None, :]) | placed[k:]
    everything = pack_patterns(jnp.ones((1, n), bool))
    return (
        positive,
        negative,
        jnp.where(empty[:, None], jnp.uint32(0), everything & ~(positive | negative)),
    )


def _exact_dot_sign(a: np.ndarray, b: np.ndarray) -> int:
    """Sign of Σ_i a_i b_i in exact arithmetic (float64 inputs): Veltkamp-split products,
    `math.fsum`."""

    def split(v):
        c = v * 134217729.0  # 2^27 + 1
        hi = c - (c - v)
        return hi, v - hi

    a_hi, a_lo = split(a)
    b_hi, b_lo = split(b)
    total = math.fsum(np.concatenate([a_hi * b_hi, a_hi * b_lo, a_lo * b_hi, a_lo * b_lo]).tolist())
    return int(np.sign(total))


def _settle_signs(
    sums: np.ndarray,
    sizes: np.ndarray,
    words: np.ndarray,
    rows: np.ndarray,
    samples: np.ndarray,
    geo: _Geometry,
) -> np.ndarray:
    """Exact signs (+1, −1, 0) of z_s(g) for the undecided pairs (``rows``, ``samples``), on the
    host
    (``sizes``: |g| of each row of ``words``).

    1. float64 ``x_s · S_hi`` (error ≤ γ_D ‖x_s‖‖S‖) plus the grid remainder bound ‖X_lo x_s‖√|g|;
    2. else ``Σ_j G_sj a_j`` from float64 rows of G = X Xᵀ (error ≤ γ_N Σ|G_sj| + γ_D ‖x_s‖ Σ‖x_j‖);
    3. else exactly (`_exact_dot_sign`), where 0 is a true tie.
    """
    n, dim = geo.x64.shape
    u = np.finfo(np.float64).eps / 2
    signs = np.zeros(rows.shape[0], np.int8)
    todo = []
    for start in range(0, rows.size, _SETTLE_BATCH):
        r, s = rows[start : start + _SETTLE_BATCH], samples[start : start + _SETTLE_BATCH]
        s64 = sums[r].astype(np.float64)
        level1 = np.einsum("ij,ij->i", geo.x64[s], s64)
        err1 = (
            geo.x_norms64[s] * _gamma(dim, u) * np.sqrt(np.einsum("ij,ij->i", s64, s64))
            + geo.lo_gains64[s] * np.sqrt(sizes[r])
        ) * (1 + 1e-9)
        done = np.abs(level1) > err1
        signs[start : start + _SETTLE_BATCH][done] = np.sign(level1[done])
        todo.append(start + np.nonzero(~done)[0])
    todo = np.concatenate(todo) if todo else np.zeros(0, np.int64)
    missing = np.unique(samples[todo][~geo.gram_ready[samples[todo]]])
    if missing.size:
        geo.gram_rows[missing] = geo.x64[missing] @ geo.x64.T
        geo.gram_ready[missing] = True
    # Level 2, grouped by sample: one float64 row of G against the patterns that need it.
    todo = todo[np.argsort(samples[todo], kind="stable")]
    bounds = np.flatnonzero(np.diff(samples[todo]) | (np.arange(1, todo.size) % 4096 == 0)) + 1
    for group in np.split(todo, bounds) if todo.size else []:
        s = samples[group[0]]
        weights = geo.gram_rows[s] * geo.labels64
        level2 = _unpack_host(words[rows[group]], n).astype(np.float64) @ weights
        err2 = (
            _gamma(n, u) * np.abs(weights).sum()
            + _gamma(dim, u) * (1 + _gamma(n, u)) * geo.x_norms64[s] * geo.norm_sum64
        ) * (1 + 1e-9)
        sure = np.abs(level2) > err2
        signs[group[sure]] = np.sign(level2[sure])
        for i in group[~sure]:
            members = np.nonzero(_unpack_host(words[rows[i]][None, :], n)[0])[0]
            # z_s = Σ_{j∈g} ỹ_j Σ_k x_sk x_jk, as one exact sum of products.
            left = np.repeat(geo.x64[s][None, :], members.size, axis=0).ravel()
            right = (geo.x64[members] * geo.labels64[members, None]).ravel()
            signs[i] = _exact_dot_sign(left, right)
    return signs


def _set_bits(words: np.ndarray, rows: np.ndarray, samples: np.ndarray) -> None:
    """Set bit ``samples[i]`` of packed row ``rows[i]`` in place."""
    np.bitwise_or.at(
        words, (rows, samples >> 5), np.left_shift(np.uint32(1), (samples & 31).astype(np.uint32))
    )


def _in_order(calls):
    """Yield the ``(tag, result)`` pairs of ``calls``, a lazy iterable of jitted device calls, in
    order, keeping up to `_IN_FLIGHT` of them dispatched ahead: the host prepares the next
    chunk's inputs while the device runs (JAX dispatches asynchronously)."""
    pending = collections.deque()
    for call in calls:
        pending.append(call)
        if len(pending) > _IN_FLIGHT:
            yield pending.popleft()
    yield from pending


def _ladder(count: int, limit: int, base: int = 64, factor: int = 4) -> int:
    """Smallest of base·factor^k that holds ``count`` (few compiled shapes), capped at ``limit``."""
    size = base
    while size < count and size < limit:
        size *= factor
    return min(size, limit)


def _device_rows(array: np.ndarray, size: int) -> jax.Array:
    """``array`` with zero rows appended up to ``size`` rows, as a device array (one compiled
    shape per size for the kernels that take it)."""
    if array.shape[0] < size:
        array = np.concatenate(
            [array, np.zeros((size - array.shape[0],) + array.shape[1:], array.dtype)]
        )
    return jnp.asarray(array)


def _signed_sums(words: np.ndarray, geo: _Geometry, *, chunk: int) -> np.ndarray:
    """S_hi of every packed pattern, ``[K, D]`` (exact), in chunks of at most ``chunk`` rows."""
    k = words.shape[0]
    out = np.empty((k, geo.x64.shape[1]), np.dtype(geo.device.x.dtype))
    rows = _ladder(k, chunk)
    calls = (
        (start, _signed_sums_kernel(_device_rows(words[start : start + rows], rows), geo.device))
        for start in range(0, k, rows)
    )
    for start, sums in _in_order(calls):
        out[start : start + rows] = np.asarray(sums)[: k - start]
    return out


# A flip handled on the host (sparse row addition) costs about as much as 15 samples of the
# dense update's float32 GEMM for one pattern (2·D flops each at GEMM speed), measured at
# D = 1024; by int8 digits a sample costs `_Geometry.sum_speedup` times less
# (`_dense_update_columns`).
_SPARSE_FLIP_COST = 15
_COUNT_ROWS = 4096  # rows sampled to choose the dense columns of an update


def _sparse_flip_sums(
    ref_words: np.ndarray, new_words: np.ndarray, samples: np.ndarray, geo: _Geometry
) -> np.ndarray:
    """X_hiᵀ((g'−g)∘ỹ) restricted to ``samples``, for each row, as a sparse product on the host.

    Used for the few flips outside the dense update's columns: scipy.sparse (CSR × dense) adds
    one data row per flip, which the device (XLA gathers) does several times slower. Exact: the
    partial sums are grid subset sums (`_grid_split`).
    """
    import scipy.sparse  # noqa: PLC0415 (host-only dependency of this path)

    n = geo.x64.shape[0]
    mask = np.zeros(ref_words.shape[1] * WORD_BITS, bool)
    mask[samples] = True
    rows, cols = _set_bit_positions(
        (ref_words ^ new_words) & np.packbits(mask, bitorder="little").view("<u4")
    )
    gained = (new_words[rows, cols >> 5] >> (cols & 31).astype(np.uint32)) & np.uint32(1)
    coef = np.where(gained == 1, 1.0, -1.0) * geo.labels64[cols]
    x_hi = np.asarray(geo.device.x_hi)[:n]
    delta = scipy.sparse.csr_matrix(
        (coef.astype(x_hi.dtype), (rows, cols)), shape=(ref_words.shape[0], n)
    )
    return np.asarray(delta @ x_hi)


def _dense_update_columns(
    ref_words: np.ndarray, new_words: np.ndarray, n: int, speedup: float
) -> np.ndarray:
    """Samples whose flips go to the dense update GEMM: the L most often flipped, L from
    {0, 128, 256, …} minimising ``rows·L/c + (flips outside) · _SPARSE_FLIP_COST`` with c =
    ``speedup`` (`_Geometry.sum_speedup`) where the update goes by digits
    (L ≥ `_DIGIT_MIN_SAMPLES`),
    else 1 (estimated on at most `_COUNT_ROWS` rows; the choice only affects speed)."""
    k = ref_words.shape[0]
    pick = np.linspace(0, k - 1, min(k, _COUNT_ROWS)).astype(np.int64)
    counts = _unpack_host(ref_words[pick] ^ new_words[pick], n).sum(axis=0, dtype=np.int64) * (
        k / pick.size
    )
    order = np.argsort(-counts, kind="stable")
    outside = counts.sum() - np.concatenate([[0.0], np.cumsum(counts[order])])
    sizes = [0] + [w for w in (128 * 2**i for i in range(20)) if w <= n // 2]
    best = min(
        sizes,
        key=lambda w: (
            k * w / (speedup if _updates_by_digits(w, speedup) else 1.0)
            + outside[w] * _SPARSE_FLIP_COST
        ),
    )
    return np.sort(order[:best])


def _updated_sums(
    sums: np.ndarray,
    source: np.ndarray | None,
    ref_words: np.ndarray,
    new_words: np.ndarray,
    geo: _Geometry,
    *,
    chunk: int,
) -> np.ndarray:
    """S_hi of each row i of ``new_words`` from ``sums[source[i]]``, the S_hi of ``ref_words[i]``
    (``source`` None: from ``sums[i]``; ``sums`` may then be updated in place and returned).

    The incremental update S(g') = S(g) + X_hiᵀ((g'−g)∘ỹ), exact: the columns of the most often
    flipped samples go to a dense GEMM (2·L·D per row), the other flips to `_sparse_flip_sums`.
    """
    n = geo.x64.shape[0]
    k = new_words.shape[0]
    in_order = source is None
    if not np.any(ref_words != new_words):
        return sums if in_order else sums[source]
    dense = _dense_update_columns(ref_words, new_words, n, geo.sum_speedup)
    if dense.size:
        by_digits = _updates_by_digits(dense.size, geo.sum_speedup)
        samples = jnp.asarray(dense.astype(np.int32))
        out = sums if in_order else np.empty((k, sums.shape[1]), sums.dtype)
        rows = _ladder(k, chunk)
        calls = (
            (
                start,
                _sum_changes_kernel(
                    *(
                        _device_rows(a, rows)
                        for a in (ref_words[start : start + rows], new_words[start : start + rows])
                    ),
                    samples,
                    geo.device,
                    by_digits=by_digits,
                ),
            )
            for start in range(0, k, rows)
        )
        for start, change in _in_order(calls):
            stop = min(start + rows, k)
            # exact: the sum of two grid sums whose result is a grid subset sum
            np.add(
                sums[start:stop] if in_order else sums[source[start:stop]],
                np.asarray(change)[: stop - start],
                out=out[start:stop],
            )
    else:
        out = sums if in_order else sums[source]
    mask = np.ones(n, bool)
    mask[dense] = False
    rest = np.nonzero(mask)[0]
    for start in range(0, k, 4096):
        stop = min(start + 4096, k)
        out[start:stop] += _sparse_flip_sums(
            ref_words[start:stop], new_words[start:stop], rest, geo
        )
    return out


def _reference_rows(total: int, k: int) -> np.ndarray:
    """Indices of the references among ``total`` candidate rows of a set of ``k`` patterns:
    `_REFERENCES` (one per `_ROWS_PER_REFERENCE` rows if fewer), spread evenly, ascending."""
    count = min(max(1, min(_REFERENCES, k // _ROWS_PER_REFERENCE)), total)
    return np.unique(np.linspace(0, total - 1, count).astype(np.int64))


class _References(NamedTuple):
    """Reference rows spread over a set of packed patterns and the nearest one to every row."""

    rows: np.ndarray  # [R] row indices of the references
    nearest: np.ndarray  # [K] index into ``rows`` of the reference nearest to each row (Hamming)


def _pattern_bits_host(words: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """`_pattern_bits` on the host: bits ``g(s)`` of packed ``words [K, W]`` at ``samples``,
    uint8 ``[K, L]``."""
    return ((words[:, samples >> 5] >> (samples & 31).astype(np.uint32)) & np.uint32(1)).astype(
        np.uint8
    )


def _references(words: np.ndarray, n: int) -> _References:
    """`_REFERENCES` rows spread over ``words`` (one per 64 rows if fewer) and the nearest of them
    to
    each row in Hamming distance.

    Only the samples where the references disagree are compared: at any other sample all
    references hold the same bit, which adds the same amount to a row's distance to each of them,
    so the argmin (ties to the first reference) is that of the full distance. After one map of
    Algorithm 1 the references of CIFAR-10 (N = 4000) disagree on about 950 samples, after two on
    260 or fewer. The distance over them is |r| − 2 g·r + |g| (a 0/1 GEMM, exact in float32).
    """
    k = words.shape[0]
    rows = _reference_rows(k, k)
    ref_bits = _unpack_host(words[rows], n)
    varying = np.flatnonzero(ref_bits.any(axis=0) & ~ref_bits.all(axis=0))
    nearest = np.zeros(k, np.int64)
    if varying.size:
        refs = ref_bits[:, varying].astype(np.float32)
        ref_sizes = refs.sum(axis=1)
        for start in range(0, k, 4096):
            bits = _pattern_bits_host(words[start : start + 4096], varying).astype(np.float32)
            nearest[start : start + 4096] = np.argmin(
                ref_sizes[None, :] - 2 * (bits @ refs.T), axis=1
            )
    return _References(rows, nearest)


def _sums_by_reference(
    words: np.ndarray, references: _References, geo: _Geometry, *, chunk: int
) -> np.ndarray:
    """S_hi of every packed pattern, like `_signed_sums`, for patterns that lie close together.

    The patterns after the first map lie close together: on CIFAR-10 (N = 4000) the nearest of 64
    of them differs from a pattern in 70 samples at the median after one map and in 14 after two
    (the pattern that maps to it differs in 148). So the reference rows (`_references`) are summed
    by GEMM and every row is the update of its nearest reference (`_updated_sums`, cost ∝ the
    samples that differ) instead of an N-sample GEMM row. Exact like both.
    """
    refs = words[references.rows]
    return _updated_sums(
        _signed_sums(refs, geo, chunk=chunk),
        references.nearest,
        refs[references.nearest],
        words,
        geo,
        chunk=chunk,
    )


def _dense_samples(
    sums: np.ndarray, sizes: np.ndarray, geo: _Geometry, *, rank: int, rows: int, size: int | None
) -> np.ndarray:
    """The samples a gate call checks densely: all N, or the ``size`` most often left undecided
    by the filter on up to `_PILOT_ROWS` rows spread over the call (``size`` None: the size of
    `_DENSE_SIZES` that minimises the cost model, see there). Sorted; the choice only affects
    speed."""
    k = sums.shape[0]
    n = geo.x64.shape[0]
    sizes_ok = [c for c in _DENSE_SIZES if 2 * c < n]
    if size is not None and 2 * size >= n or size is None and not sizes_ok:
        return np.arange(n)
    pick = np.unique(np.linspace(0, k - 1, min(k, _PILOT_ROWS)).astype(np.int64))
    counts = np.zeros(n)
    for start in range(0, pick.size, rows):
        part = pick[start : start + rows]
        counts += np.asarray(
            _undecided_counts(
                _device_rows(sums[part], rows),
                _device_rows(sizes[part], rows),
                geo.device,
                rank=rank,
            )
        )
    order = np.argsort(-counts, kind="stable")
    if size is None:
        outside = (counts.sum() - np.concatenate([[0.0], np.cumsum(counts[order])])) * (
            k / pick.size
        )
        costs = {c: k * c + outside[c] * _SETTLE_COST for c in sizes_ok}
        costs[n] = k * n
        size = min(costs, key=lambda c: costs[c])
        if size == n:
            return np.arange(n)
    return np.sort(order[:size])


def _gate(
    sums: np.ndarray,
    words: np.ndarray,
    geo: _Geometry,
    *,
    rank: int,
    chunk: int,
    dense_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Packed exact signs ``(1[z > 0], 1[z < 0])`` of the targets of ``words`` (their ``sums``):
    row i of the first is gate(T_+(g_i)), of the second gate(T_−(g_i)) (docs/theory.md §3).
    ``dense_size`` forces the size of the dense check (`_dense_samples`)."""
    k = words.shape[0]
    rank = min(rank, geo.ranks[-1])
    positive = np.empty_like(words)
    negative = np.empty_like(words)
    undecided = np.empty_like(words)
    rows = _ladder(k, min(chunk, _GATE_ROWS))
    sizes = np.bitwise_count(words).sum(axis=1).astype(np.int32)
    samples = _dense_samples(sums, sizes, geo, rank=rank, rows=rows, size=dense_size)
    columns = jnp.asarray(samples.astype(np.int32))
    x_dense = jnp.take(geo.device.x, columns, axis=0)
    merge, dense_mask = (jnp.asarray(a) for a in _dense_placement(samples, geo.x64.shape[0]))
    calls = (
        (
            start,
            _gate_kernel(
                _device_rows(sums[start : start + rows], rows),
                _device_rows(sizes[start : start + rows], rows),
                geo.device,
                columns,
                x_dense,
                merge,
                dense_mask,
                rank=rank,
            ),
        )
        for start in range(0, k, rows)
    )
    for start, out in _in_order(calls):
        for target, value in zip((positive, negative, undecided), out):
            target[start : start + rows] = np.asarray(value)[: k - start]
    pairs, samples = _set_bit_positions(undecided)
    if pairs.size:
        signs = _settle_signs(sums, sizes, words, pairs, samples, geo)
        _set_bits(positive, pairs[signs > 0], samples[signs > 0])
        _set_bits(negative, pairs[signs < 0], samples[signs < 0])
    return positive, negative


def _place_bits(bits: np.ndarray, samples: np.ndarray, n_words: int) -> np.ndarray:
    """Packed words ``[K, n_words]`` with bit ``samples[l]`` of row i set where ``bits[i, l]``
    (``samples`` sorted ascending, distinct); every other bit 0."""
    out = np.zeros((bits.shape[0], n_words), np.uint32)
    if samples.size:
        values = bits.astype(np.uint32) << (samples & 31).astype(np.uint32)[None, :]
        word = samples >> 5
        starts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
        out[:, word[starts]] = np.bitwise_or.reduceat(values, starts, axis=1)
    return out


# What a row sent to the device gate (`_gate`, rank 64) costs, in samples of the host dense check
# of `_gate_by_reference` (2·D flops and a few elementwise passes each); measured at N = 4000,
# D = 1024.
_FALLBACK_COST = 1200
_TIE_SLACK = 1e-9  # relative slack of the float64 decisions of `_gate_by_reference`


def _nearest_direction(sums: np.ndarray, norms: np.ndarray) -> tuple[_References, np.ndarray]:
    """Reference rows spread over the non-zero rows of ``sums`` (``norms``: their norms;
    `_reference_rows`) and, for each row, the one of them at the least angle; with S·S_r/‖S_r‖²
    for that one (any choice is correct, a closer one is faster)."""
    nonzero = np.flatnonzero(norms > 0)
    rows = nonzero[_reference_rows(nonzero.size, sums.shape[0])]
    unit = sums[rows] / norms[rows, None].astype(sums.dtype)
    nearest = np.empty(sums.shape[0], np.int64)
    scale = np.empty(sums.shape[0])
    for start in range(0, sums.shape[0], 4096):
        dots = sums[start : start + 4096] @ unit.T
        nearest[start : start + 4096] = np.argmax(dots, axis=1)
        scale[start : start + 4096] = np.take_along_axis(
            dots, nearest[start : start + 4096, None], axis=1
        )[:, 0]
    return _References(rows, nearest), scale / norms[rows][nearest]


def _gate_by_reference(
    sums: np.ndarray,
    words: np.ndarray,
    geo: _Geometry,
    *,
    rank: int,
    chunk: int,
    fallback_cost: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`_gate` (the same exact signs) from the gates of a few reference patterns.

    The targets of Algorithm 1 cluster: on CIFAR-10 (N = 4000) the signed sum of a random pattern
    is at cosine 0.98 from the nearest of 64 others, and after one map the sums lie within a few
    per cent of each other. For a pattern g, its reference r (`_nearest_direction`) and any
    c > 0, z(g) = c z(r) + X (S_hi(g) − c S_hi(r)) + X X_loᵀ(g∘ỹ), so with δ ≥ ‖S_hi(g) − c S_hi(r)‖
    (c = S_hi(g)·S_hi(r)/‖S_hi(r)‖², the least δ)

        |z_s(g) − c ẑ_s(r)| ≤ c ε_s(r) + ‖x_s‖ δ + β_s,   β_s = ‖X_lo x_s‖ √|g|,

    with ẑ(r) = X S_hi(r) in float64 (ε_s = γ_D ‖x_s‖‖S_hi(r)‖). Every sample where c|ẑ_s(r)|
    exceeds that bound has the sign of ẑ_s(r). The rest, U (a few dozen to a few hundred samples
    after the first map; about 1400 for its random patterns, which keep the filter), are checked
    densely for all patterns of the reference
    at once: host GEMMs S_hi [K_r, D] × [D, |U|] against the unit rows x_s/‖x_s‖ (data dtype),
    one per block of `_DOT_BLOCK` features, added in order: bound γ'_D ‖S‖ (`_blocked_gamma`,
    7 times less than γ_D at D = 1024, and so are the entries left undecided), plus 2u‖S‖ for the
    rounding of the unit rows and β_s/‖x_s‖ ≤ λ √|g| with λ = max_U ‖X_lo x_s‖/‖x_s‖. Entries it
    leaves undecided are settled by `_settle_signs`.
    Per reference, the patterns of largest δ/c (largest U) go to `_gate` (rank ``rank``) where
    that costs less (``fallback_cost`` per row, in dense-check samples); so do patterns with
    c ≤ 0. Empty patterns get neither sign.
    """
    n, dim = geo.x64.shape
    k, n_words = words.shape
    if k < 2 * _ROWS_PER_REFERENCE:
        return _gate(sums, words, geo, rank=rank, chunk=chunk)
    dtype = sums.dtype
    u = float(np.finfo(dtype).eps) / 2
    gamma_sum = _gamma(dim, u)
    gamma64 = _gamma(dim, float(np.finfo(np.float64).eps) / 2)
    blocks = _feature_blocks(dim)  # the dense check sums per feature block (`_blocked_gamma`)
    gamma_dense = _blocked_gamma(dim, u)
    sizes = np.bitwise_count(words).sum(axis=1).astype(np.int32)
    root = np.sqrt(sizes.astype(np.float64))
    x_norms = geo.x_norms64 * (1 + _TIE_SLACK)
    # ‖S_hi‖ from its squares summed in the data dtype (relative error ≤ γ_D), rounded up.
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums).astype(np.float64) * (1 + 2 * gamma_sum)) * (
        1 + 4 * u
    )
    if not np.any(norms > 0):
        return _gate(sums, words, geo, rank=rank, chunk=chunk)
    references, scales = _nearest_direction(sums, norms)
    scales = scales.astype(dtype).astype(np.float64)  # c as used in the data dtype below, exactly
    ref_sums = sums[references.rows]
    z_ref = geo.x64 @ ref_sums.T.astype(np.float64)  # [N, R]
    positive = np.zeros_like(words)
    negative = np.zeros_like(words)
    open_rows, open_samples, fallback = [], [], [np.flatnonzero((sizes > 0) & (norms == 0))]
    order = np.argsort(references.nearest, kind="stable")
    bounds = np.searchsorted(references.nearest[order], np.arange(references.rows.size + 1))
    for r in range(references.rows.size):
        members = order[bounds[r] : bounds[r + 1]]
        # Empty patterns: z = 0, neither sign. S_hi = 0 or c ≤ 0: `_gate`.
        members = members[norms[members] > 0]
        fallback.append(members[~(scales[members] > 0)])
        members = members[scales[members] > 0]
        if not members.size:
            continue
        ref, ref_norm = ref_sums[r], norms[references.rows[r]]
        member_sums = sums[members]  # [K_r, D], contiguous for the passes below
        scale = scales[members]
        # δ_i ≥ ‖S_hi(g_i) − c_i S_hi(r)‖: the difference in the data dtype (error ≤ u c‖S_hi(r)‖
        # + u‖difference‖), its squared norm to within γ_D.
        delta = np.empty(members.size)
        for start in range(0, members.size, 256):  # [256, D] differences stay in cache
            part = slice(start, start + 256)
            diff = member_sums[part] - scale[part].astype(dtype)[:, None] * ref
            delta[part] = np.einsum("ij,ij->i", diff, diff)
        delta = (
            np.sqrt(delta * (1 + 2 * gamma_sum)) * (1 + 4 * u) + 1.01 * u * scale * ref_norm
        ) * (1 + 2 * u)
        reach = (
            delta / scale * (1 + _TIE_SLACK)
        )  # a sample is decided for pattern i when t_s > reach_i
        rho = np.max(root[members] / scale) * (1 + _TIE_SLACK)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (
                np.abs(z_ref[:, r]) / (1 + _TIE_SLACK)
                - gamma64 * x_norms * ref_norm
                - geo.lo_gains64 * rho
            ) / x_norms
        t = np.where(x_norms > 0, t, -np.inf)
        # Check the j patterns of least reach here (|U(reach_(j))| samples each), the rest on the
        # device.
        by_reach = np.argsort(reach, kind="stable")
        unsure = np.searchsorted(np.sort(t), reach[by_reach] * (1 + _TIE_SLACK), side="right")
        count = np.arange(1, members.size + 1)
        cost = np.concatenate(
            [
                [members.size * fallback_cost],
                count * unsure + (members.size - count) * fallback_cost,
            ]
        )
        j = int(np.argmin(cost))
        fallback.append(members[by_reach[j:]])
        if not j:
            continue
        handled = np.zeros(members.size, bool)
        handled[by_reach[:j]] = True
        checked = np.flatnonzero(~(t > reach[by_reach[j - 1]] * (1 + _TIE_SLACK)))  # U, ascending
        in_checked = np.zeros(n, bool)
        in_checked[checked] = True
        ref_positive = _pack_host((z_ref[:, r] > 0) & ~in_checked)
        ref_negative = _pack_host(
            (z_ref[:, r] < 0) | in_checked
        )  # U's bits cleared where z > 0 below
        x_checked = geo.x_unit[checked]
        lam = float(np.max(geo.lo_gains64[checked] / x_norms[checked], initial=0.0))
        # Most rows are handled: checking every row of a slice costs less than gathering the
        # handled ones.
        every = 2 * j > members.size
        targets = np.arange(members.size) if every else np.flatnonzero(handled)
        for start in range(0, targets.size, chunk):
            part = targets[start : start + chunk]
            rows_sums = member_sums[start : start + chunk] if every else member_sums[part]
            estimate = rows_sums[:, blocks[0]] @ x_checked[:, blocks[0]].T
            for block in blocks[1:]:
                estimate += rows_sums[:, block] @ x_checked[:, block].T
            if every and not handled[part].all():
                estimate, part = estimate[handled[part]], part[handled[part]]
            rows = members[part]
            margin = (((gamma_dense + 2 * u) * norms[rows] + root[rows] * lam) * (1 + 1e-5)).astype(
                dtype
            )[:, None]
            above = estimate > margin
            placed = _place_bits(above, checked, n_words)
            positive[rows] = ref_positive | placed
            negative[rows] = ref_negative & ~placed
            row_index, column = np.nonzero(~above & ~(estimate < -margin))
            open_rows.append(rows[row_index])
            open_samples.append(checked[column])
    if open_rows:
        rows, samples = np.concatenate(open_rows), np.concatenate(open_samples)
        bit = np.left_shift(np.uint32(1), (samples & 31).astype(np.uint32))
        np.bitwise_and.at(
            negative, (rows, samples >> 5), ~bit
        )  # undecided: neither sign until settled
        signs = _settle_signs(sums, sizes, words, rows, samples, geo)
        _set_bits(positive, rows[signs > 0], samples[signs > 0])
        _set_bits(negative, rows[signs < 0], samples[signs < 0])
    fallback = np.sort(np.concatenate(fallback))
    if fallback.size:
        positive[fallback], negative[fallback] = _gate(
            sums[fallback], words[fallback], geo, rank=rank, chunk=chunk
        )
    return positive, negative


_FINGERPRINT_ROWS = 8192


def _host_fingerprints(words: np.ndarray) -> np.ndarray:
    """`pattern_fingerprints` of host rows ``[K, W]`` → ``uint32 [K, 2]``: device calls of
    `_FINGERPRINT_ROWS` rows (the last one ends at K and may overlap the one before), so that no
    padded copy of all K rows is made and one compiled shape serves every K above it."""
    k, rows = words.shape[0], _FINGERPRINT_ROWS
    if k <= rows:
        return np.asarray(_fingerprints_jit(_device_rows(words, _ladder(k, rows, factor=2))))[:k]
    out = np.empty((k, 2), np.uint32)
    calls = (
        (start, _fingerprints_jit(jnp.asarray(words[start : start + rows])))
        for start in list(range(0, k - rows, rows)) + [k - rows]
    )
    for start, fingerprints in _in_order(calls):
        out[start : start + rows] = np.asarray(fingerprints)
    return out


def _distinct(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of packed patterns by their two 32-bit fingerprints (`pattern_fingerprints`):
    ``(distinct rows [K', W], inverse [K] into them, first row of each [K'], their 64-bit keys
    [K'], ascending)``."""
    fp = _host_fingerprints(words).astype(np.uint64)
    keys = (fp[:, 0] << np.uint64(32)) | fp[:, 1]
    distinct_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return words[first], inverse.ravel(), first, distinct_keys


def _unpack_host(words: np.ndarray, n: int) -> np.ndarray:
    """`unpack_patterns` on the host (NumPy, same layout): ``uint32 [K, W]`` → ``bool [K, n]``."""
    words = np.ascontiguousarray(words, dtype="<u4")
    return np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :n].view(bool)


def _pack_host(patterns: np.ndarray) -> np.ndarray:
    """`pack_patterns` on the host (NumPy, same layout): ``bool [..., N]`` → ``uint32 [..., W]``."""
    patterns = np.asarray(patterns, bool)
    n = patterns.shape[-1]
    padded = np.zeros(patterns.shape[:-1] + (num_words(n) * WORD_BITS,), bool)
    padded[..., :n] = patterns
    return np.packbits(padded, axis=-1, bitorder="little").view("<u4").astype(np.uint32)


def _set_bit_positions(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, samples)`` of every set bit of packed ``words [K, W]``; cheap when few are set."""
    rows, cols = np.nonzero(words)
    values = np.ascontiguousarray(words[rows, cols], dtype="<u4")
    which, bit = np.nonzero(
        np.unpackbits(values.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    )
    return rows[which], cols[which].astype(np.int64) * WORD_BITS + bit


_fingerprints_jit = jax.jit(pattern_fingerprints)


# --------------------------------------------------------------------------- Algorithm 1


def _chunk_starts(chunk: int, m: int):
    """Start of chunk i, clipped so that the last chunk ends at ``m`` (it may overlap the one
    before, which recomputes a few rows identically)."""
    return lambda i: jnp.minimum(i * chunk, m - chunk)


@jax.jit
def _probe_patterns(keys: jax.Array, x: jax.Array) -> jax.Array:
    """Packed gate(u) of the probes u ~ N(0, I_D) drawn from ``keys`` (one each): u/‖u‖ is
    uniform on S^{D−1} and the gate depends on the direction only, so u is not normalised."""
    u = jax.vmap(lambda key: jax.random.normal(key, (x.shape[1],), x.dtype))(keys)
    return pack_patterns(direction_gates(u, x))


def _initial_patterns(keys: jax.Array, data: TrainingData, *, chunk: int) -> np.ndarray:
    """gate(u) of M probes u uniform on S^{D−1}, packed ``[M, W]``; probe j is drawn from
    ``keys[j]`` alone (chunks of ``chunk`` probes; the last one ends at M and may overlap the one
    before)."""
    m = keys.shape[0]
    chunk = min(chunk, m)
    out = np.empty((m, num_words(data.x.shape[0])), np.uint32)
    calls = (
        (start, _probe_patterns(keys[start : start + chunk], data.x))
        for start in list(range(0, m - chunk, chunk)) + [m - chunk]
    )
    for start, words in _in_order(calls):
        out[start : start + chunk] = np.asarray(words)
    return out


@functools.partial(jax.jit, static_argnames=("chunk",))
def _pattern_targets(
    words: jax.Array, kappa: jax.Array, data: TrainingData, *, chunk: int
) -> jax.Array:
    """T_κ(g) for each packed pattern ``[K, W]`` → ``[K, D]``, in chunks."""
    k = words.shape[0]
    n, dim = data.x.shape
    start_of = _chunk_starts(chunk, k)

    def body(i, out):
        start = start_of(i)
        gates = unpack_patterns(jax.lax.dynamic_slice_in_dim(words, start, chunk), n)
        kap = jnp.broadcast_to(kappa, (chunk,))
        return jax.lax.dynamic_update_slice_in_dim(
            out, target_directions(gates.T, kap, data), start, 0
        )

    return jax.lax.fori_loop(0, -(-k // chunk), body, jnp.zeros((k, dim), data.x.dtype))


@dataclasses.dataclass(frozen=True)
class StableCellEstimate:
    """Result of Algorithm 1 for one alignment κ (docs/theory.md §3, Appendix D).

    Attributes:
        kappa: +1 or −1.
        estimate: the paper's estimate, K_t at the plateau (the running minimum of K_t when the
            patience ran out). It counts the fixed points, the patterns on cycles and those
            still moving together: the stable cells reached are `n_stable`, not this. Equal to
            ``n_probes`` (with ``converged`` False) when no two probes ever met: M is then too
            small to resolve the count.
        curve: K_t for every iteration run (``curve[0]`` counts the random probes' patterns).
        converged: True if K_t stopped decreasing for ``patience`` iterations before
            ``max_iterations``.
        fixed_fraction: fraction of probes whose final pattern is a fixed point of the map.
        two_cycle_fraction: fraction of probes on a 2-cycle (not fixed, ``g ↦ g' ↦ g``).
        patterns: packed patterns ``uint32 [K_s, W]`` of the distinct stable cells reached.
        targets: their target directions T_κ(g), ``[K_s, D]``.
        basin: how many probes ended in each of them, ``[K_s]`` (descending).
        empty_is_stable: whether the empty pattern (a dead neuron: T = 0, gate(0) = ∅) is among
            them; it is a fixed point by the definition and counted like any other.
        n_probes, patience, n_samples: the run's settings.
    """

    kappa: int
    estimate: int
    curve: tuple[int, ...]
    converged: bool
    fixed_fraction: float
    two_cycle_fraction: float
    patterns: np.ndarray
    targets: np.ndarray
    basin: np.ndarray
    empty_is_stable: bool
    n_probes: int
    patience: int
    n_samples: int

    @property
    def n_stable(self) -> int:
        """Number of distinct stable cells (fixed points) the probes reached."""
        return int(self.patterns.shape[0])


def _check_algorithm_options(probes, patience, chunk, max_iterations, kappas) -> None:
    for name, value in (
        ("probes", probes),
        ("patience", patience),
        ("chunk", chunk),
        ("max_iterations", max_iterations),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    bad = [k for k in kappas if k not in (1, -1)]
    if bad or not kappas:
        raise ValueError(f"kappa must be +1 and/or -1; got {list(kappas)!r}.")


def _plateau(curve: list[int], patience: int, n_probes: int) -> tuple[int, bool]:
    """Running minimum of K_t and whether it has not decreased for ``patience`` iterations.

    While every probe still has a pattern of its own (K_t = M) no two probes have met yet: the
    map has not started to contract, so that is not the plateau and the patience does not run.
    """
    best = min(curve)
    since_best = len(curve) - 1 - curve.index(best)
    return best, best < n_probes and since_best >= patience


class _Generation(NamedTuple):
    """The probes after t steps of the map, grouped by pattern (K_t = number of rows).

    Attributes:
        words: distinct packed patterns ``[K_t, W]``.
        probe_row: ``[M]`` row of each probe's pattern.
        image: packed gate(T_κ(g)) of each row ``[K_t, W]`` (the next generation's patterns).
        keys: fingerprints of ``words`` (`_distinct`), ascending.
        earlier: ``(keys, image)`` of the generation before, or None.
    """

    words: np.ndarray
    probe_row: np.ndarray
    image: np.ndarray
    keys: np.ndarray
    earlier: tuple | None = None


def _remembered_images(keys: np.ndarray, gen: _Generation) -> tuple[np.ndarray, np.ndarray]:
    """Which of the patterns with fingerprints ``keys`` the last two generations already mapped,
    and their images: ``(known [K] bool, image [K, W])`` (rows not known are 0). Late in
    Algorithm 1 the probes cycle, and up to 70 % of a map's patterns were mapped one or two
    generations before (CIFAR-10, κ = −1, K_t ≈ 10 000)."""
    known = np.zeros(keys.size, bool)
    image = np.zeros((keys.size, gen.image.shape[1]), gen.image.dtype)
    for old_keys, old_image in [(gen.keys, gen.image)] + (
        [gen.earlier] if gen.earlier is not None else []
    ):
        if not old_keys.size:
            continue
        where = np.minimum(np.searchsorted(old_keys, keys), old_keys.size - 1)
        hit = (old_keys[where] == keys) & ~known
        image[hit] = old_image[where[hit]]
        known |= hit
    return known, image


def _nearby_sums(words: np.ndarray, geo: _Geometry, *, chunk: int) -> np.ndarray:
    """S_hi of patterns that lie close together: `_sums_by_reference`, or by GEMM
    (`_signed_sums`) for fewer than 2 · `_ROWS_PER_REFERENCE` rows."""
    if words.shape[0] < 2 * _ROWS_PER_REFERENCE:
        return _signed_sums(words, geo, chunk=chunk)
    return _sums_by_reference(words, _references(words, geo.x64.shape[0]), geo, chunk=chunk)


def _advance(
    gen: _Generation, kappa: int, geo: _Geometry, *, chunk: int, shared=None
) -> _Generation:
    """One step ``g ↦ gate(T_κ(g))`` for every probe, done once per distinct pattern not already
    mapped in the last two generations (`_remembered_images`).

    The new patterns' signed sums come from `_nearby_sums`, or from ``shared`` =
    ``(words, inverse, keys, sums)`` computed for both κ at once (the second generation,
    `_second_generation`); their gates from `_gate_by_reference`.
    """
    if shared is not None:
        words, inverse, keys, sums = shared
        known = np.zeros(words.shape[0], bool)
        image = np.zeros_like(words)
    else:
        words, inverse, _, keys = _distinct(gen.image)
        known, image = _remembered_images(keys, gen)
        sums = _nearby_sums(words[~known], geo, chunk=chunk) if not known.all() else None
    new = np.flatnonzero(~known)
    if new.size:
        assert sums is not None  # computed above whenever a pattern is new
        positive, negative = _gate_by_reference(
            sums, words[new], geo, rank=_RANK, chunk=chunk, fallback_cost=_FALLBACK_COST
        )
        image[new] = positive if kappa == 1 else negative
    return _Generation(words, inverse[gen.probe_row], image, keys, (gen.keys, gen.image))


def _complement(words: np.ndarray, n: int) -> np.ndarray:
    """Packed complement of each pattern over the N samples (padding bits stay 0)."""
    full = np.full(words.shape[1], np.uint32(0xFFFFFFFF))
    if n % WORD_BITS:
        full[-1] = np.uint32((1 << (n % WORD_BITS)) - 1)
    return ~words & full


def _second_generation(
    first_positive: np.ndarray, first_negative: np.ndarray, geo: _Geometry, kappas, *, chunk: int
) -> dict:
    """``{κ: (words, inverse, keys, sums)}`` of the patterns after the first map, for each κ.

    The signed sums of the κ = +1 patterns come from `_nearby_sums`. Those of κ = −1 follow
    from them:
    gate(T_−(g)) is the complement of gate(T_+(g)) except at ties (z = 0, in neither), and
    S(¬g) = S(all) − S(g) exactly, so each κ = −1 pattern is an update of the complement of its
    κ = +1 counterpart by its (usually no) tie samples.
    """
    n = geo.x64.shape[0]
    out = {}
    if 1 in kappas:
        words, inverse, _, keys = _distinct(first_positive)
        out[1] = (words, inverse, keys, _nearby_sums(words, geo, chunk=chunk))
    if -1 in kappas:
        words, inverse, source, keys = _distinct(first_negative)
        if 1 in out:
            plus_words, plus_inverse, _, plus_sums = out[1]
            total = _signed_sums(
                _complement(np.zeros((1, words.shape[1]), np.uint32), n), geo, chunk=chunk
            )
            counterpart = plus_inverse[source]
            complement_sums = plus_sums[counterpart]
            np.subtract(total, complement_sums, out=complement_sums)  # exact: grid subset sums
            sums = _updated_sums(
                complement_sums,
                None,
                _complement(plus_words[counterpart], n),
                words,
                geo,
                chunk=chunk,
            )
        else:
            sums = _nearby_sums(words, geo, chunk=chunk)
        out[-1] = (words, inverse, keys, sums)
    return {k: v for k, v in out.items() if k in kappas}


def _run_one_kappa(
    first: _Generation,
    shared: tuple,
    kappa: int,
    data: TrainingData,
    geo: _Geometry,
    *,
    patience: int,
    chunk: int,
    max_iterations: int,
) -> StableCellEstimate:
    """Iterate from the random probes' generation ``first`` (its image already computed for κ)."""
    m = first.probe_row.shape[0]
    gen = first
    curve = [gen.words.shape[0]]
    _, converged = _plateau(curve, patience, m)
    while not converged and len(curve) < max_iterations:
        gen = _advance(gen, kappa, geo, chunk=chunk, shared=shared if len(curve) == 1 else None)
        curve.append(gen.words.shape[0])
        _, converged = _plateau(curve, patience, m)
    after = _advance(gen, kappa, geo, chunk=chunk, shared=shared if len(curve) == 1 else None)
    words = gen.words[gen.probe_row]  # g_T per probe
    mapped = gen.image[gen.probe_row]  # g_{T+1}
    mapped_twice = after.image[after.probe_row]  # g_{T+2}
    fixed = np.all(mapped == words, axis=1)
    two_cycle = np.all(mapped_twice == words, axis=1) & ~fixed
    stable_words = words[fixed]
    kap = jnp.asarray(kappa, jnp.int32)
    if stable_words.shape[0]:
        distinct, inverse, _, _ = _distinct(stable_words)
        basin = np.bincount(inverse, minlength=distinct.shape[0])
        order = np.argsort(-basin, kind="stable")
        patterns, basin = distinct[order], basin[order]
        targets = np.asarray(
            _pattern_targets(jnp.asarray(patterns), kap, data, chunk=min(chunk, patterns.shape[0]))
        )
    else:
        patterns = np.zeros((0, words.shape[1]), np.uint32)
        targets = np.zeros((0, data.x.shape[1]), np.asarray(data.x).dtype)
        basin = np.zeros((0,), np.int64)
    estimate, _ = _plateau(curve, patience, m)
    return StableCellEstimate(
        kappa=kappa,
        estimate=estimate,
        curve=tuple(curve),
        converged=converged,
        fixed_fraction=float(fixed.mean()),
        two_cycle_fraction=float(two_cycle.mean()),
        patterns=patterns,
        targets=targets,
        basin=basin,
        empty_is_stable=bool(np.any(~patterns.any(axis=1))),
        n_probes=m,
        patience=patience,
        n_samples=int(data.x.shape[0]),
    )


def stable_cells(
    data: TrainingData,
    key: jax.Array,
    *,
    probes: int = 10_000,
    patience: int = 3,
    kappa: tuple[int, ...] = (1, -1),
    chunk: int = 4096,
    max_iterations: int = 200,
) -> dict[int, StableCellEstimate]:
    """Algorithm 1 (docs/theory.md §3, paper Appendix D) on open cells: the plateau of K_t and
    the stable cells (fixed points) the probes reach.

    Draw M = ``probes`` directions uniform on S^{D−1}. Repeat: record K_t, the number of distinct
    gating patterns among the probes; replace each probe u by ``T_κ(gate(u))``. Stop when K_t has
    not decreased for ``patience`` consecutive iterations; the estimate is the last K_t before
    that plateau. Probes may cycle between two patterns, hence the plateau and not strict fixed
    points; the result reports both fractions. The patience starts once two probes share a
    pattern: while K_t = M the iteration has not begun to contract (on 4000 MNIST digits K_t stays
    at M for the first iterations), and stopping there would return M itself.

    How it is computed (the result is that of exact arithmetic; see "exact gates of signed
    sums" above). The random probes' patterns are gated in the data dtype as before (probe j
    depends on ``key`` and j only). Since ``gate(T_κ(g))_s = 1[κ x_s·S(g) > 0]`` with the signed
    sum ``S(g) = Σ_{g(j)=1} ỹ_j x_j``, each step works on the K_t *distinct* patterns only:

    * first map (the random patterns): one GEMM for S (2ND per pattern; by int8 digits where
      that is faster, `_grid_digits`), a rank-128 filter for the gate; shared by both κ, as
      ``gate(T_−(g)) = ¬gate(T_+(g))`` away from ties;
    * later maps: the patterns lie close together (a few dozen samples apart after one map, about
      14 after two on CIFAR-10), so each new pattern's sum is the sum of the nearest of 64
      reference patterns plus the rows of the samples where they differ (`_sums_by_reference`);
      the κ = −1 sums of the second map follow exactly from ``S(¬g) = S(all) − S(g)``. The
      targets lie close together too, so each gate is that of the nearest of 64 reference
      targets except on the samples its distance leaves unsure (a few dozen to a few hundred),
      which are checked densely (`_gate_by_reference`); the farthest patterns go to the
      rank-64 filter.

    On CIFAR-10 (N = 4000, D = 1024, M = 100 000) the first map (the random probes' gate, a
    0.8-TFLOP float32 GEMM, their signed sums and its filter) is about a third of the cost.

    Args:
        data: `TrainingData`; its float dtype sets the precision of the random probes.
        key: PRNG key of the probes (probe j depends on ``key`` and j only, not on ``chunk``).
        probes, patience, chunk, max_iterations: see above (positive integers); ``chunk`` bounds
            the rows per device call (memory: ``[chunk, N]`` floats).
        kappa: the alignments to run, from ``(1, -1)``.

    Returns:
        ``{κ: StableCellEstimate}``.

    Example:
        >>> est = stable_cells(data, jax.random.key(0), probes=2000)  # doctest: +SKIP
        >>> est[1].estimate, est[-1].estimate  # doctest: +SKIP
    """
    kappas = tuple(int(k) for k in kappa)
    _check_algorithm_options(probes, patience, chunk, max_iterations, kappas)
    chunk = min(int(chunk), int(probes))
    # Host linear algebra first: NumPy's BLAS threads run slowly while XLA's are still spinning.
    geo = _geometry(data, (_FIRST_RANK, _RANK))
    keys = jax.random.split(key, int(probes))
    start = _initial_patterns(keys, data, chunk=chunk)
    words, inverse, _, fingerprints = _distinct(start)
    # The first map: ~M distinct random patterns, shared by both κ.
    positive, negative = _gate(
        _signed_sums(words, geo, chunk=chunk), words, geo, rank=_FIRST_RANK, chunk=chunk
    )
    second = _second_generation(positive, negative, geo, kappas, chunk=chunk)
    return {
        k: _run_one_kappa(
            _Generation(words, inverse, positive if k == 1 else negative, fingerprints),
            second[k],
            k,
            data,
            geo,
            patience=int(patience),
            chunk=chunk,
            max_iterations=int(max_iterations),
        )
        for k in kappas
    }


# --------------------------------------------------------------------------- Algorithm 1 on faces


@dataclasses.dataclass(frozen=True)
class StableFaceEstimate:
    """Result of Algorithm 1 on faces (the face map Φ_κ of `gflow._faces`) for one κ.

    Fixed points, 2-cycles and the plateau are three different things, reported apart:

    Attributes:
        kappa: +1 or −1.
        plateau: K_t at the plateau, the number of distinct faces the probes occupy when K_t
            stopped decreasing: fixed points, faces on cycles and faces still moving together.
            **Not** a count of stable faces (see `n_fixed_points`).
        curve: K_t for every iteration (``curve[0]``: the random probes' cells).
        converged: K_t stopped decreasing for ``patience`` iterations before ``max_iterations``.
        fixed_fraction: share of probes whose final face is stable (a fixed point of Φ_κ).
        two_cycle_fraction: share of probes on a 2-cycle (``Φ²(f) = f ≠ Φ(f)``).
        active, sliding: packed faces ``uint32 [K_s, W]`` (g and S) of the distinct stable faces
            reached, largest basin first.
        targets: their targets ``P/‖P‖`` ``[K_s, D]`` (0 where P = 0, e.g. the empty face).
        basin: probes that ended on each of them ``[K_s]``.
        n_two_cycles: distinct 2-cycles ``{f, Φ(f)}`` the probes ended on.
        map_disagreements: faces where ``Φ(f) = f`` and the criterion of `stable_face_test`
            disagree (0: the two implementations of a fixed point agree).
        overflow_fraction: share of probes whose last step had more than ``capacity``
            candidates.
        empty_is_stable: the empty face is among the stable faces reached.
        n_probes, patience, n_samples, capacity, bias: the run's settings.
    """

    kappa: int
    plateau: int
    curve: tuple[int, ...]
    converged: bool
    fixed_fraction: float
    two_cycle_fraction: float
    active: np.ndarray
    sliding: np.ndarray
    targets: np.ndarray
    basin: np.ndarray
    n_two_cycles: int
    map_disagreements: int
    overflow_fraction: float
    empty_is_stable: bool
    n_probes: int
    patience: int
    n_samples: int
    capacity: int
    bias: bool

    @property
    def n_fixed_points(self) -> int:
        """Number of distinct stable faces (fixed points of Φ_κ) the probes reached."""
        return int(self.active.shape[0])

    @property
    def sliding_sizes(self) -> np.ndarray:
        """|S| of each stable face reached ``[K_s]`` (0: a stable open cell)."""
        return np.bitwise_count(self.sliding).sum(axis=1).astype(np.int64)


def _unique_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact distinct rows of ``uint32 [K, W]``: ``(rows [K', W], inverse [K])``."""
    words = np.ascontiguousarray(words, np.uint32)
    flat = words.view(np.dtype((np.void, words.dtype.itemsize * words.shape[1]))).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    return words[first], inverse.ravel()


def _face_steps(
    faces: np.ndarray, kappa: int, x: jax.Array, labels: jax.Array, *, capacity: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`gflow._faces.face_step` of packed faces ``[K, 2W]`` (g then S), ``rows`` per device call
    (one compiled shape): ``(image [K, 2W], overflow [K], stable [K], P/‖P‖ [K, D])``."""
    from ._faces import face_step

    k, n = faces.shape[0], x.shape[0]
    w = faces.shape[1] // 2
    image = np.empty_like(faces)
    overflow = np.empty((k,), bool)
    stable = np.empty((k,), bool)
    targets = np.empty((k, x.shape[1]), np.asarray(x).dtype)
    kap = jnp.full((rows,), kappa, x.dtype)
    for start in range(0, k, rows):
        stop = min(start + rows, k)
        block = np.zeros((rows, 2 * w), np.uint32)
        block[: stop - start] = faces[start:stop]
        step = face_step(
            unpack_patterns(jnp.asarray(block[:, :w]), n),
            unpack_patterns(jnp.asarray(block[:, w:]), n),
            kap,
            x,
            labels,
            capacity=capacity,
        )
        mapped = np.concatenate(
            [np.asarray(pack_patterns(step.active)), np.asarray(pack_patterns(step.sliding))], 1
        )
        image[start:stop] = mapped[: stop - start]
        overflow[start:stop] = np.asarray(step.overflow)[: stop - start]
        stable[start:stop] = np.asarray(step.test.stable)[: stop - start]
        p = np.asarray(step.test.projection.target)[: stop - start]
        norm = np.linalg.norm(p, axis=1, keepdims=True)
        targets[start:stop] = p / np.where(norm > 0, norm, 1.0)
    return image, overflow, stable, targets


def stable_faces(
    data: TrainingData,
    key: jax.Array,
    *,
    probes: int = 2000,
    patience: int = 3,
    kappa: tuple[int, ...] = (1, -1),
    capacity: int | None = None,
    chunk: int = 512,
    max_iterations: int = 200,
    bias: bool = False,
    on_iteration=None,
) -> dict[int, StableFaceEstimate]:
    """Algorithm 1 on faces (docs/theory.md §3, §8; `gflow._faces`): count the stable faces.

    As `stable_cells`, with the face map in place of the cell map: M probes uniform on S^{D−1}
    start in their cells ``(gate(u), ∅)``; each iteration records K_t, the number of distinct
    faces among the probes, and replaces every face f by Φ_κ(f) (jump to the projected target
    ``P_κ(g, S)`` of docs/theory.md eq. (3.1); the attracting samples it moves across and the
    sliding ones are decided by the minimal-norm problem). It stops when K_t has not decreased for
    ``patience`` iterations. Then each probe's face is classified: a **fixed point** (a stable
    face, criterion (a)–(c) of docs/theory.md §3.1), on a **2-cycle**, or neither; the plateau K_t
    is reported apart and is not a count of stable faces.

    Args:
        data: `TrainingData` (its dtype sets the precision; float64 recommended: signs within
            the rounding bound of `gflow._faces.boundary_tolerance` count as on the boundary).
        key: PRNG key of the probes (probe j depends on ``key`` and j only).
        probes, patience, max_iterations: as `stable_cells` (positive integers).
        kappa: the alignments to run, from ``(1, -1)``.
        capacity: K, the most candidates of one face (`gflow._faces.map_faces`; default
            `gflow._faces.DEFAULT_CAPACITY`).
        chunk: faces per device call (memory ~ chunk × N × K floats).
        bias: faces of θ = (w, b) with inputs x̃_s = (x_s, 1) instead of w with x_s.
        on_iteration: optional ``callable(kappa, iteration, K_t)`` after every iteration.

    Returns:
        ``{κ: StableFaceEstimate}``.
    """
    from ._faces import DEFAULT_CAPACITY, face_inputs

    capacity = DEFAULT_CAPACITY if capacity is None else capacity
    kappas = tuple(int(k) for k in kappa)
    _check_algorithm_options(probes, patience, chunk, max_iterations, kappas)
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer; got {capacity!r}.")
    m = int(probes)
    x = face_inputs(data, bias=bias)
    labels = jnp.asarray(data.signed_labels, x.dtype)
    n = int(x.shape[0])
    w = num_words(n)
    keys = jax.random.split(key, m)
    cells = np.empty((m, w), np.uint32)
    step = min(int(chunk), m)
    for start in list(range(0, m - step, step)) + [m - step]:
        cells[start : start + step] = np.asarray(_probe_patterns(keys[start : start + step], x))
    start_faces = np.concatenate([cells, np.zeros_like(cells)], axis=1)
    options = dict(capacity=int(capacity), rows=step)
    out = {}
    for kap in kappas:
        faces, probe_row = _unique_rows(start_faces)
        curve = [faces.shape[0]]
        if on_iteration is not None:
            on_iteration(kap, 0, curve[-1])
        _, converged = _plateau(curve, patience, m)
        image, overflow, stable, targets = _face_steps(faces, kap, x, labels, **options)
        while not converged and len(curve) < max_iterations:
            faces, inverse = _unique_rows(image)
            probe_row = inverse[probe_row]
            curve.append(faces.shape[0])
            if on_iteration is not None:
                on_iteration(kap, len(curve) - 1, curve[-1])
            _, converged = _plateau(curve, patience, m)
            image, overflow, stable, targets = _face_steps(faces, kap, x, labels, **options)
        image2 = _face_steps(image, kap, x, labels, **options)[0]
        fixed_by_map = np.all(image == faces, axis=1)
        on_cycle = np.all(image2 == faces, axis=1) & ~fixed_by_map
        # A 2-cycle {f, Φ(f)} is met from both of its faces when both are occupied.
        pairs = {
            tuple(sorted((faces[i].tobytes(), image[i].tobytes()))) for i in np.nonzero(on_cycle)[0]
        }
        counts = np.bincount(probe_row, minlength=faces.shape[0])
        order = np.argsort(-counts[stable], kind="stable")
        kept = np.nonzero(stable)[0][order]
        estimate_plateau, _ = _plateau(curve, patience, m)
        out[kap] = StableFaceEstimate(
            kappa=kap,
            plateau=int(estimate_plateau),
            curve=tuple(int(c) for c in curve),
            converged=bool(converged),
            fixed_fraction=float(counts[stable].sum() / m),
            two_cycle_fraction=float(counts[on_cycle & ~stable].sum() / m),
            active=faces[kept, :w],
            sliding=faces[kept, w:],
            targets=targets[kept],
            basin=counts[kept].astype(np.int64),
            n_two_cycles=len(pairs),
            map_disagreements=int(np.sum(stable != fixed_by_map)),
            overflow_fraction=float(counts[overflow].sum() / m),
            empty_is_stable=bool(np.any(~faces[kept].any(axis=1))),
            n_probes=m,
            patience=int(patience),
            n_samples=n,
            capacity=int(capacity),
            bias=bool(bias),
        )
    return out
