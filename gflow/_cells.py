"""Cells of the input space and the stable cells of the target map (SPEC.md §3, Appendix D).

With ``b = 0`` the directions ``w ∈ R^D`` that share a gating pattern ``g(s) = 1[w·x_s > 0]``
form a cone, a *cell*; the N hyperplanes ``w·x_s = 0`` cut R^D into at most
``C(N, D) = 2 Σ_{k=0}^{D−1} binom(N−1, k)`` of them (Lemma 3.1, Cover 1965). The target map of a
pattern for an outgoing alignment κ,

    T_κ(g) = κ Σ_{s: g(s)=1} ỹ_s x_s / ‖Σ_{s: g(s)=1} ỹ_s x_s‖,

names the direction the incoming weights of a neuron in that cell turn to (Lemma 3.4); the cell
is **stable** for κ iff ``gate(T_κ(g)) = g``.

Patterns over N samples are stored bit-packed, 32 samples per ``uint32`` word (sample ``s`` is
bit ``s mod 32`` of word ``s // 32``), so that 100 000 patterns over 4 000 samples take 50 MB
instead of 1.6 GB of floats. The gate itself is always `gflow._network.gating_pattern` and the
target always `gflow._observables.target_directions`: this module only packs, compares, hashes
and iterates.

`stable_cells` is Algorithm 1 of the paper (Appendix D): M probes uniform on S^{D−1} are pushed
through ``u ← T_κ(gate(u))`` until the number K_t of distinct patterns among them stops
decreasing. Since ``T_κ(gate(u))`` depends on ``u`` only through its pattern, every iteration
maps each *distinct* pattern once (in chunks of ``chunk`` probes, so memory stays at
``[chunk, N]`` floats) and copies the result to the probes that share it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
        patterns = jnp.concatenate([patterns, jnp.zeros(patterns.shape[:-1] + (pad,), bool)], axis=-1)
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
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * WORD_BITS,))[..., :n_samples].astype(bool)


def same_cell(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cell identity: True where packed patterns ``a`` and ``b`` (``[..., W]``) are equal."""
    return jnp.all(jnp.asarray(a) == jnp.asarray(b), axis=-1)


# --------------------------------------------------------------------------- gates


def direction_gates(u: jax.Array, x: jax.Array) -> jax.Array:
    """gate(u)_s = 1[u·x_s > 0] for each row of ``u [M, D]`` → ``bool [M, N]`` (SPEC.md §3).

    The directions are handed to `gating_pattern` as incoming weights with zero bias, so the
    gate has a single owner.
    """
    m = u.shape[0]
    probe_params = Params(W=u, b=jnp.zeros((m,), u.dtype), V=jnp.zeros((m, 2), u.dtype))
    return gating_pattern(probe_params, x).T


def neuron_patterns(params: Params, x: jax.Array) -> jax.Array:
    """Packed gating pattern of every neuron, ``uint32 [d, W]`` (row i is g_i over the samples)."""
    return pack_patterns(gating_pattern(params, x).T)


def map_patterns(patterns: jax.Array, kappa: jax.Array, data: TrainingData) -> jax.Array:
    """One step of the target map on patterns: ``g ↦ gate(T_κ(g))`` (SPEC.md §3).

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
    z = preactivations(Params(W=targets, b=jnp.zeros((m,), targets.dtype), V=jnp.zeros((m, 2), targets.dtype)),
                       data.x).T
    return z > 0, -z > 0


def is_stable(patterns: jax.Array, kappa: jax.Array, data: TrainingData) -> jax.Array:
    """Stability test ``gate(T_κ(g)) == g`` for each row of ``patterns`` ``bool [M, N]`` → ``[M]``."""
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
        raise ValueError(f"cell_hash must be [T, d] with T = len(t) >= 2; got shape {h.shape} for {t.shape[0]} times.")
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
    """C(N, D) = 2 Σ_{k=0}^{D−1} binom(N−1, k), exact (Python integers; SPEC.md §3, Lemma 3.1).

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
    position = jnp.arange(words.shape[-1], dtype=jnp.uint32).reshape((1,) * (words.ndim - 1) + (-1,))
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
    return PatternGroups(count=sorted_group[-1] + 1, group=group, representative=representative, size=size)


def count_distinct(words: jax.Array) -> jax.Array:
    """Number of distinct packed patterns among the rows of ``words [M, W]``; jittable."""
    return group_patterns(words).count


# --------------------------------------------------------------------------- Algorithm 1


def _chunk_starts(chunk: int, m: int):
    """Start of chunk i, clipped so that the last chunk ends at ``m`` (it may overlap the one
    before, which recomputes a few rows identically)."""
    return lambda i: jnp.minimum(i * chunk, m - chunk)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _initial_patterns(keys: jax.Array, data: TrainingData, *, chunk: int) -> jax.Array:
    """gate(u) of M probes u uniform on S^{D−1}, packed; probe j is drawn from ``keys[j]``."""
    m = keys.shape[0]
    n, dim = data.x.shape
    start_of = _chunk_starts(chunk, m)

    def body(i, out):
        start = start_of(i)
        k = jax.lax.dynamic_slice_in_dim(keys, start, chunk)
        u = jax.vmap(lambda key: jax.random.normal(key, (dim,), data.x.dtype))(k)
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        return jax.lax.dynamic_update_slice_in_dim(out, pack_patterns(direction_gates(u, data.x)), start, 0)

    out = jnp.zeros((m, num_words(n)), jnp.uint32)
    return jax.lax.fori_loop(0, -(-m // chunk), body, out)


_group_patterns_jit = jax.jit(group_patterns)


@functools.partial(jax.jit, static_argnames=("chunk", "both_signs"))
def _map_representatives(words: jax.Array, groups: PatternGroups, kappa: jax.Array, data: TrainingData,
                         *, chunk: int, both_signs: bool = False) -> jax.Array:
    """``g ↦ gate(T_κ(g))`` for every probe, computed once per distinct pattern.

    ``groups`` describes ``words`` (`group_patterns`); the map runs on the K representatives in
    ``ceil(K / chunk)`` chunks and is then copied to every probe of each group. With
    ``both_signs`` the result is ``[2, M, W]`` for κ = +1 and κ = −1 (``kappa`` is ignored).
    """
    m = words.shape[0]
    n = data.x.shape[0]
    start_of = _chunk_starts(chunk, m)

    def body(i, out):
        start = start_of(i)
        reps = jax.lax.dynamic_slice_in_dim(groups.representative, start, chunk)
        gates = unpack_patterns(words[reps], n)
        if both_signs:
            mapped = jnp.stack([pack_patterns(g) for g in map_patterns_both_signs(gates, data)])
        else:
            mapped = pack_patterns(map_patterns(gates, kappa, data))[None]
        return jax.lax.dynamic_update_slice_in_dim(out, mapped, start, 1)

    out = jnp.zeros((2 if both_signs else 1,) + words.shape, jnp.uint32)
    mapped_reps = jax.lax.fori_loop(0, (groups.count + chunk - 1) // chunk, body, out)
    mapped = mapped_reps[:, groups.group]
    return mapped if both_signs else mapped[0]


def _chunk_for(count: int, chunk: int, m: int) -> int:
    """Smallest chunk of the ladder 64, 256, 1024, … (capped at ``chunk`` and M) that holds
    ``count`` rows: few compilations, and little work wasted once K_t is small."""
    size = 64
    while size < count and size < chunk:
        size *= 4
    return min(size, chunk, m)


def _map_distinct(words: jax.Array, kappa: jax.Array, data: TrainingData, *, chunk: int):
    """Group ``words`` and map each probe; returns ``(next_words, number of distinct patterns)``."""
    groups = _group_patterns_jit(words)
    count = int(groups.count)
    size = _chunk_for(count, chunk, words.shape[0])
    return _map_representatives(words, groups, kappa, data, chunk=size), count


@functools.partial(jax.jit, static_argnames=("chunk",))
def _pattern_targets(words: jax.Array, kappa: jax.Array, data: TrainingData, *, chunk: int) -> jax.Array:
    """T_κ(g) for each packed pattern ``[K, W]`` → ``[K, D]``, in chunks."""
    k = words.shape[0]
    n, dim = data.x.shape
    start_of = _chunk_starts(chunk, k)

    def body(i, out):
        start = start_of(i)
        gates = unpack_patterns(jax.lax.dynamic_slice_in_dim(words, start, chunk), n)
        kap = jnp.broadcast_to(kappa, (chunk,))
        return jax.lax.dynamic_update_slice_in_dim(out, target_directions(gates.T, kap, data), start, 0)

    return jax.lax.fori_loop(0, -(-k // chunk), body, jnp.zeros((k, dim), data.x.dtype))


@dataclasses.dataclass(frozen=True)
class StableCellEstimate:
    """Result of Algorithm 1 for one alignment κ (SPEC.md §3, Appendix D).

    Attributes:
        kappa: +1 or −1.
        estimate: the stable-cell count, the last K_t before the plateau (the running minimum
            of K_t when the patience ran out). Equal to ``n_probes`` (with ``converged``
            False) when no two probes ever met: M is then too small to resolve the count.
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
    for name, value in (("probes", probes), ("patience", patience), ("chunk", chunk),
                        ("max_iterations", max_iterations)):
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


def _run_one_kappa(start: jax.Array, start_count: int, first: jax.Array, kappa: int, data: TrainingData, *,
                   patience: int, chunk: int, max_iterations: int) -> StableCellEstimate:
    """Iterate from the probes' patterns ``start`` (K_0 = ``start_count``, image ``first``)."""
    kap = jnp.asarray(kappa, jnp.int32)
    words, mapped = start, first
    curve = [start_count]
    _, converged = _plateau(curve, patience, int(start.shape[0]))
    while not converged and len(curve) < max_iterations:
        words = mapped
        mapped, count = _map_distinct(words, kap, data, chunk=chunk)
        curve.append(count)
        _, converged = _plateau(curve, patience, int(start.shape[0]))
    mapped_twice, _ = _map_distinct(mapped, kap, data, chunk=chunk)
    fixed = np.asarray(same_cell(mapped, words))
    two_cycle = np.asarray(same_cell(mapped_twice, words)) & ~fixed
    stable_words = np.asarray(words)[fixed]
    if stable_words.shape[0]:
        fp = np.asarray(pattern_fingerprints(jnp.asarray(stable_words)))
        _, first_index, basin = np.unique(fp, axis=0, return_index=True, return_counts=True)
        order = np.argsort(-basin, kind="stable")
        patterns, basin = stable_words[first_index[order]], basin[order]
        targets = np.asarray(_pattern_targets(jnp.asarray(patterns), kap, data,
                                              chunk=min(chunk, patterns.shape[0])))
    else:
        patterns = np.zeros((0, start.shape[1]), np.uint32)
        targets = np.zeros((0, data.x.shape[1]), np.asarray(data.x).dtype)
        basin = np.zeros((0,), np.int64)
    estimate, _ = _plateau(curve, patience, int(start.shape[0]))
    return StableCellEstimate(
        kappa=kappa, estimate=estimate, curve=tuple(curve), converged=converged,
        fixed_fraction=float(fixed.mean()), two_cycle_fraction=float(two_cycle.mean()),
        patterns=patterns, targets=targets, basin=basin,
        empty_is_stable=bool(np.any(~patterns.any(axis=1))), n_probes=int(start.shape[0]),
        patience=patience, n_samples=int(data.x.shape[0]),
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
    """Algorithm 1 (SPEC.md §3, paper Appendix D): estimate the number of stable cells.

    Draw M = ``probes`` directions uniform on S^{D−1}. Repeat: record K_t, the number of distinct
    gating patterns among the probes; replace each probe u by ``T_κ(gate(u))``. Stop when K_t has
    not decreased for ``patience`` consecutive iterations; the estimate is the last K_t before
    that plateau. Probes may cycle between two patterns, hence the plateau and not strict fixed
    points; the result reports both fractions. The patience starts once two probes share a
    pattern: while K_t = M the iteration has not begun to contract (on 4000 MNIST digits K_t stays
    at M for the first iterations), and stopping there would return M itself.

    The same M probes serve every κ, and the first step (M distinct random patterns, the
    dominant cost: three ``[M, N] × [N, D]``-sized matmuls in all) is shared by both κ. Later
    steps map each distinct pattern once. Memory: the probes live as packed patterns
    ``[M, N/32]``; floats are materialised for ``chunk`` probes at a time (``[chunk, N]`` gates
    and ``[chunk, D]`` targets). Distinct patterns are found by sorting two 32-bit fingerprints.

    Cost: ``Σ_t K_t · 4ND`` flops (a target and a gate matmul per distinct pattern and
    iteration), so it is set by how fast K_t falls; on the paper's CIFAR-10 binary set
    (N = 4000, D = 1024) with M = 100 000, K_t stays near M for the first iterations and
    Σ_t K_t is about 9·M (0.9 million pattern maps) over both κ, i.e. ~15 TFLOP.

    Args:
        data: `TrainingData`; its float dtype sets the precision.
        key: PRNG key of the probes (probe j depends on ``key`` and j only, not on ``chunk``).
        probes, patience, chunk, max_iterations: see above (positive integers).
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
    keys = jax.random.split(key, int(probes))
    start = _initial_patterns(keys, data, chunk=chunk)
    groups = _group_patterns_jit(start)
    count = int(groups.count)
    # The first step maps ~M distinct random patterns: the dominant cost, shared by both κ.
    size = _chunk_for(count, chunk, int(probes))
    if len(kappas) == 2:
        plus, minus = _map_representatives(start, groups, jnp.asarray(1), data, chunk=size, both_signs=True)
        first = {1: plus, -1: minus}
    else:
        first = {kappas[0]: _map_representatives(start, groups, jnp.asarray(kappas[0]), data, chunk=size)}
    return {
        k: _run_one_kappa(start, count, first[k], k, data, patience=int(patience), chunk=chunk,
                          max_iterations=int(max_iterations))
        for k in kappas
    }
