"""Cells, the Cover bound and Algorithm 1 (docs/theory.md §3, paper Appendix D).

Checked against independent constructions: brute-force enumeration of the cells that many
random directions visit, Cover's recursion, explicit Python loops for the target map, and a
dataset whose stable cells are known in closed form.
"""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow._cells as cells_impl  # its private helpers and module globals, tested directly
from gflow import Dataset, gating_pattern, init_params, training_data
from gflow._cells import (
    _gate,
    _gate_by_reference,
    _geometry,
    _grid_split,
    _initial_patterns,
    _plateau,
    _set_bit_positions,
    _set_bits,
    _signed_sums,
    _unpack_host,
    _updated_sums,
)
from gflow.cells import (
    cell_transitions,
    count_distinct,
    cover_bound,
    direction_gates,
    group_patterns,
    is_stable,
    log10_cover_bound,
    map_patterns,
    map_patterns_both_signs,
    neuron_patterns,
    pack_patterns,
    pattern_fingerprints,
    same_cell,
    stable_cells,
    unpack_patterns,
)


@pytest.fixture(autouse=True)
def strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def general_position_data(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    y = np.arange(n) % 2
    return training_data(Dataset(x, y, name="gauss", provenance="test"), jnp.float64)


def orthogonal_clusters(per_cluster=6, eps=0.05):
    """Four clusters at orthonormal means e_0..e_3 (0, 1: class 1; 2, 3: class 2); sample s adds
    ``eps`` along its own private axis e_{4+s}, so samples of different clusters are orthogonal
    and samples of one cluster overlap only through their mean.

    Closed form of the target map (κ = +1): ``T(g) ∝ Σ_k a_k μ_k ± eps Σ_{s∈g} e_{4+s}`` with
    ``a_k = |g ∩ C_k|`` for class-1 clusters and ``−|g ∩ C_k|`` for class-2 ones, so
    ``gate(T(g)) = ∪ {C_k : class 1, g ∩ C_k ≠ ∅}``: the stable cells are C_0, C_1, C_0 ∪ C_1
    and the empty pattern (T = 0, gate(0) = ∅). For κ = −1 the same holds with the class-2 clusters.
    """
    n = 4 * per_cluster
    cluster = np.repeat(np.arange(4), per_cluster)
    x = np.zeros((n, 4 + n))
    x[np.arange(n), cluster] = 1.0
    x[np.arange(n), 4 + np.arange(n)] = eps
    y = (cluster >= 2).astype(int)
    data = training_data(Dataset(x, y, name="orthogonal", provenance="test"), jnp.float64)
    return data, cluster


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("n", [1, 31, 32, 33, 70, 129])
def test_pack_round_trip(n):
    rng = np.random.default_rng(n)
    g = rng.random((7, n)) < 0.5
    words = jax.jit(pack_patterns)(jnp.asarray(g))
    assert words.shape == (7, -(-n // 32)) and words.dtype == jnp.uint32
    back = jax.jit(unpack_patterns, static_argnums=1)(words, n)
    np.testing.assert_array_equal(np.asarray(back), g)


def test_pack_layout_is_little_endian_bits_in_words():
    g = np.zeros(40, bool)
    g[[0, 2, 31, 32, 39]] = True
    words = np.asarray(pack_patterns(jnp.asarray(g)))
    assert words.tolist() == [1 + 4 + 2**31, 1 + 2**7]


def test_unpack_rejects_wrong_width():
    with pytest.raises(ValueError, match="n_samples=100"):
        unpack_patterns(jnp.zeros((2, 3), jnp.uint32), 100)


def test_neuron_patterns_pack_the_core_gate():
    data = general_position_data(50, 5)
    params = init_params(jax.random.key(0), 9, 5, 1.0, dtype=jnp.float64)
    packed = neuron_patterns(params, data.x)
    np.testing.assert_array_equal(
        np.asarray(unpack_patterns(packed, 50)), np.asarray(gating_pattern(params, data.x)).T
    )
    assert np.all(np.asarray(same_cell(packed, packed)))


# --------------------------------------------------------------------------- Cover bound


def test_cover_bound_closed_forms_and_recursion():
    assert cover_bound(6, 2) == 2 * sum(math.comb(5, k) for k in range(2)) == 12
    for n in range(1, 12):
        assert cover_bound(n, 1) == 2  # a line through the origin: two half-lines
        assert cover_bound(n, n) == 2**n == cover_bound(n, n + 5)  # every dichotomy
        for d in range(2, 8):
            # Cover (1965): adding a hyperplane splits the cells it crosses,
            # C(N+1, D) = C(N, D) + C(N, D−1).
            assert cover_bound(n + 1, d) == cover_bound(n, d) + cover_bound(n, d - 1)


def test_log10_cover_bound_large():
    value = log10_cover_bound(4000, 1024)
    assert math.isfinite(value) and 900 < value < 1300
    assert log10_cover_bound(6, 2) == pytest.approx(math.log10(12))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_cover_bound_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive integer"):
        cover_bound(bad, 3)


@pytest.mark.parametrize("n, dim", [(6, 2), (7, 3)])
def test_random_directions_visit_exactly_the_cover_bound_cells(n, dim):
    """N points in general position, b = 0: the cells number exactly C(N, D), and enough random
    directions land in every one of them (brute force, counted two ways)."""
    data = general_position_data(n, dim, seed=dim)
    u = jax.random.normal(jax.random.key(1), (200_000, dim), jnp.float64)
    words = pack_patterns(direction_gates(u, data.x))
    brute = np.unique(np.asarray(words), axis=0).shape[0]
    assert brute == cover_bound(n, dim)
    assert int(count_distinct(words)) == brute


# --------------------------------------------------------------------------- distinct patterns


def test_group_patterns_matches_numpy_unique():
    rng = np.random.default_rng(3)
    base = rng.random((37, 70)) < 0.5
    g = base[rng.integers(0, 37, size=500)]
    words = pack_patterns(jnp.asarray(g))
    groups = jax.jit(group_patterns)(words)
    uniq, inverse, counts = np.unique(
        np.asarray(words), axis=0, return_inverse=True, return_counts=True
    )
    k = int(groups.count)
    assert k == uniq.shape[0]
    rep = np.asarray(groups.representative)[:k]
    grp = np.asarray(groups.group)
    w = np.asarray(words)
    np.testing.assert_array_equal(w[rep[grp]], w)  # every probe's representative has its pattern
    assert sorted(np.asarray(groups.size)[:k].tolist()) == sorted(counts.tolist())
    # the group ids induce the same partition as numpy's
    pairs = set(zip(grp.tolist(), inverse.ravel().tolist()))
    assert len(pairs) == k


def test_fingerprints_separate_patterns_one_bit_apart():
    g = np.zeros((65, 64), bool)
    g[np.arange(1, 65), np.arange(64)] = True  # the empty pattern and every single-bit pattern
    fp = np.asarray(pattern_fingerprints(pack_patterns(jnp.asarray(g))))
    assert np.unique(fp, axis=0).shape[0] == 65


# --------------------------------------------------------------------------- target map


def explicit_map(g, kappa, x, ytil):
    """gate(T_κ(g)) by loops over samples (docs/theory.md §3)."""
    n, dim = x.shape
    total = np.zeros(dim)
    for s in range(n):
        if g[s]:
            total += ytil[s] * x[s]
    norm = np.sqrt(np.sum(total**2))
    target = kappa * total / norm if norm > 0 else np.zeros(dim)
    return np.array([float(np.dot(target, x[s])) > 0 for s in range(n)])


def test_map_and_stability_match_explicit_loops():
    data = general_position_data(40, 6, seed=5)
    x, ytil = np.asarray(data.x), np.asarray(data.signed_labels)
    rng = np.random.default_rng(0)
    g = rng.random((25, 40)) < 0.5
    g[0] = False  # the empty pattern maps to itself
    kappa = np.where(rng.random(25) < 0.5, 1, -1)
    mapped = np.asarray(map_patterns(jnp.asarray(g), jnp.asarray(kappa), data))
    for i in range(25):
        np.testing.assert_array_equal(mapped[i], explicit_map(g[i], kappa[i], x, ytil))
    # stable patterns: fixed points reached by iterating; compare is_stable with the definition
    cur = g
    for _ in range(30):
        cur = np.asarray(map_patterns(jnp.asarray(cur), jnp.asarray(kappa), data))
    stable = np.asarray(is_stable(jnp.asarray(cur), jnp.asarray(kappa), data))
    by_loop = np.array(
        [np.array_equal(explicit_map(cur[i], kappa[i], x, ytil), cur[i]) for i in range(25)]
    )
    np.testing.assert_array_equal(stable, by_loop)
    assert stable[0] and by_loop.any()


def test_both_signs_map_equals_two_single_maps():
    data = general_position_data(60, 8, seed=2)
    g = jax.random.bernoulli(jax.random.key(4), 0.5, (50, 60))
    plus, minus = map_patterns_both_signs(g, data)
    np.testing.assert_array_equal(np.asarray(plus), np.asarray(map_patterns(g, 1, data)))
    np.testing.assert_array_equal(np.asarray(minus), np.asarray(map_patterns(g, -1, data)))


def test_closed_form_stable_cells_of_orthogonal_clusters():
    data, cluster = orthogonal_clusters()
    members = {k: cluster == k for k in range(4)}
    expected = {
        1: [members[0], members[1], members[0] | members[1], np.zeros_like(members[0])],
        -1: [members[2], members[3], members[2] | members[3], np.zeros_like(members[0])],
    }
    for kappa, cells in expected.items():
        patterns = jnp.asarray(np.stack(cells))
        assert np.all(np.asarray(is_stable(patterns, kappa, data)))
        # a mixed pattern is not stable and maps onto the class-κ clusters it touched
        mixed = members[0] | members[2] | (members[1] & (np.arange(cluster.size) % 2 == 0))
        image = np.asarray(map_patterns(jnp.asarray(mixed[None]), kappa, data))[0]
        np.testing.assert_array_equal(image, members[0] | members[1] if kappa == 1 else members[2])


# --------------------------------------------------------------------------- Algorithm 1


def test_algorithm_1_counts_the_known_stable_cells():
    data, cluster = orthogonal_clusters()
    found = stable_cells(data, jax.random.key(0), probes=2000, patience=3, chunk=256)
    for kappa, clusters in ((1, (0, 1)), (-1, (2, 3))):
        est = found[kappa]
        assert est.estimate == 4, est.curve
        assert est.converged and est.fixed_fraction == 1.0 and est.two_cycle_fraction == 0.0
        assert est.n_stable == 4 and est.empty_is_stable
        assert est.basin.sum() == 2000
        rows = np.asarray(unpack_patterns(jnp.asarray(est.patterns), cluster.size))
        cells = {tuple(np.nonzero(row)[0]) for row in rows}
        a, b = (tuple(np.nonzero(cluster == k)[0]) for k in clusters)
        assert cells == {a, b, tuple(sorted(a + b)), ()}
        # targets are the normalised signed sums of each stable cell
        norms = np.linalg.norm(est.targets, axis=1)
        np.testing.assert_allclose(np.sort(norms), [0.0, 1.0, 1.0, 1.0], atol=1e-12)
        assert est.curve[0] > 4 and min(est.curve) == 4


def test_algorithm_1_does_not_depend_on_the_chunk_size():
    data = general_position_data(90, 7, seed=1)
    a = stable_cells(data, jax.random.key(2), probes=200, patience=2, chunk=200)
    b = stable_cells(data, jax.random.key(2), probes=200, patience=2, chunk=64)
    for k in (1, -1):
        assert a[k].curve == b[k].curve
        assert a[k].fixed_fraction == b[k].fixed_fraction
        np.testing.assert_array_equal(a[k].patterns, b[k].patterns)


def test_algorithm_1_single_kappa_matches_joint_run():
    data = general_position_data(90, 7, seed=1)
    both = stable_cells(data, jax.random.key(5), probes=300, patience=2, chunk=64)
    only = stable_cells(data, jax.random.key(5), probes=300, patience=2, chunk=64, kappa=(-1,))
    assert only[-1].curve == both[-1].curve and set(only) == {-1}


@pytest.mark.parametrize(
    "field, value", [("probes", 0), ("patience", -1), ("chunk", 2.5), ("kappa", (2,))]
)
def test_algorithm_1_rejects_bad_options(field, value):
    data = general_position_data(10, 3)
    with pytest.raises(ValueError, match=field):
        stable_cells(data, jax.random.key(0), **{field: value})


# --------------------------------------------------------------------------- transitions


def test_cell_transitions_counts_and_times():
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    h = np.array([[7, 1, 5], [7, 2, 5], [8, 2, 5], [8, 1, 5], [7, 1, 5]], np.uint32)
    tr = cell_transitions(t, h)
    assert tr.count.tolist() == [2, 2, 0]
    np.testing.assert_array_equal(tr.first_time[:2], [2.0, 1.0])
    np.testing.assert_array_equal(tr.last_time[:2], [4.0, 3.0])
    assert np.isnan(tr.first_time[2]) and np.isnan(tr.last_time[2])
    np.testing.assert_array_equal(tr.times(1, t), [1.0, 3.0])
    with pytest.raises(ValueError, match="cell_hash"):
        cell_transitions(t[:3], h)


def test_plateau_rule_waits_for_the_first_merge():

    assert _plateau([100, 100, 100, 100, 100], 3, 100) == (100, False)  # no probes met yet
    assert _plateau([100, 40, 12, 12, 13, 12], 3, 100) == (12, True)
    assert _plateau([100, 40, 12, 12, 11], 3, 100) == (11, False)


# --------------------------------------------------------------- exact gates (Algorithm 1's engine)


def exact_preactivations(x_int: np.ndarray, labels: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """z_s(g) = x_s · Σ_{g(j)=1} ỹ_j x_j in integer arithmetic (data given as integers)."""
    sums = (gates * labels[None, :]).astype(np.int64) @ x_int.astype(np.int64)
    return sums @ x_int.astype(np.int64).T


def integer_data(n, dim, seed, *, fine_bits=0):
    """Float32 data that are exactly ``x_int / 2^(3+fine_bits)`` for small integers ``x_int``, so
    that every pre-activation is an exact integer multiple of a power of two: many exact ties
    (z = 0) and, with ``fine_bits``, many near-ties far below float32 rounding of ‖x‖‖S‖."""
    rng = np.random.default_rng(seed)
    x_int = rng.integers(-3, 4, size=(n, dim)) << fine_bits
    if fine_bits:
        x_int = x_int + rng.integers(-1, 2, size=(n, dim))
    x = (x_int / 2.0 ** (3 + fine_bits)).astype(np.float32)
    assert np.array_equal(x.astype(np.float64) * 2.0 ** (3 + fine_bits), x_int)
    labels = np.arange(n) % 2
    return x_int, training_data(Dataset(x, labels, name="ints", provenance="test"), jnp.float32)


@pytest.mark.parametrize("fine_bits", [0, 18])
@pytest.mark.parametrize("rank, dense_size", [(6, 16), (6, None), (64, 10_000)])
def test_gate_is_the_exact_sign_with_ties(fine_bits, rank, dense_size):
    """`_gate` returns 1[z > 0] and 1[z < 0] of the exact pre-activations, through the rank-r
    filter, the dense check and every host fallback; a tie (z = 0) gets neither."""

    n, dim = 300, 24
    x_int, data = integer_data(n, dim, seed=fine_bits + rank, fine_bits=fine_bits)
    rng = np.random.default_rng(1)
    gates = rng.random((70, n)) < rng.random((70, 1))
    gates[0] = False  # the empty pattern: z = 0 everywhere
    gates[1] = gates[2]
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    geo = _geometry(data, (rank,))
    sums = _signed_sums(words, geo, chunk=32)
    positive, negative = _gate(sums, words, geo, rank=rank, chunk=32, dense_size=dense_size)
    z = exact_preactivations(x_int, np.asarray(data.signed_labels).astype(np.int64), gates)
    assert (z == 0).sum() > 100 and (
        np.abs(z) < 2**fine_bits
    ).sum() > 100  # ties and near-ties are tested
    np.testing.assert_array_equal(_unpack_host(positive, n), z > 0)
    np.testing.assert_array_equal(_unpack_host(negative, n), z < 0)


def test_gate_is_exact_for_float64_data_with_zero_columns():
    """Float64 data whose some features are 0 for every sample (the border pixels of MNIST): the
    grid split puts a zero column on any grid, and the gate is still the exact sign."""

    n, dim = 240, 20
    rng = np.random.default_rng(9)
    x_int = (rng.integers(-3, 4, size=(n, dim)) << 18) + rng.integers(-1, 2, size=(n, dim))
    x_int[:, [0, 7]] = 0
    data = training_data(
        Dataset(x_int / 2.0**21, np.arange(n) % 2, name="zeros", provenance="test"), jnp.float64
    )
    gates = rng.random((50, n)) < rng.random((50, 1))
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    geo = _geometry(data, (6,))
    sums = _signed_sums(words, geo, chunk=16)
    positive, negative = _gate(sums, words, geo, rank=6, chunk=16, dense_size=16)
    z = exact_preactivations(x_int, np.asarray(data.signed_labels).astype(np.int64), gates)
    assert (np.abs(z) < 2**18).sum() > 20  # near-ties far below the scale of the data
    np.testing.assert_array_equal(_unpack_host(positive, n), z > 0)
    np.testing.assert_array_equal(_unpack_host(negative, n), z < 0)


@pytest.mark.parametrize("digits", [True, False])
def test_signed_sums_are_exact_and_updates_match_them(monkeypatch, digits):
    """The grid part of the data sums exactly (any order), by float GEMMs and by int8 digit GEMMs
    alike; the incremental update, dense columns and sparse remainder alike, gives bitwise the
    sums computed from scratch."""

    monkeypatch.setattr(cells_impl, "_integer_gemm_speedup", lambda: 1e3 if digits else 0.0)
    monkeypatch.setattr(cells_impl, "_DIGIT_MIN_SAMPLES", 0)  # the dense update by digits too
    ds = Dataset(
        np.random.default_rng(0).standard_normal((500, 40)),
        np.arange(500) % 2,
        name="g",
        provenance="t",
    )
    data = training_data(ds, jnp.float32)
    x64 = np.asarray(data.x, np.float64)
    x_hi, x_lo, _ = _grid_split(x64, np.float32)
    assert np.abs(x_lo).max() < 1e-4 * np.abs(x64).max()
    rng = np.random.default_rng(2)
    gates = rng.random((300, 500)) < 0.5
    geo = _geometry(data, (8,))
    assert (geo.device.digits.shape[1] > 0) == digits
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    sums = _signed_sums(words, geo, chunk=64)
    signed = gates * np.asarray(data.signed_labels, np.float64)[None, :]
    exact = np.array(
        [
            [math.fsum(col) for col in (signed[i][:, None] * x_hi.astype(np.float64)).T]
            for i in range(0, 300, 37)
        ]
    )
    np.testing.assert_array_equal(sums[::37].astype(np.float64), exact)
    # many rows flip samples 0..9 (dense columns), a few rows flip one other sample each (sparse)
    flipped = gates.copy()
    flipped[:, :10] ^= rng.random((300, 10)) < 0.5
    flipped[np.arange(0, 300, 7), rng.integers(10, 500, size=43)] ^= True
    new_words = np.asarray(pack_patterns(jnp.asarray(flipped)))
    updated = _updated_sums(sums, np.arange(300), words, new_words, geo, chunk=64)
    np.testing.assert_array_equal(updated, _signed_sums(new_words, geo, chunk=64))


def test_grid_digits_sum_exactly_at_the_edges_of_the_grid():
    """Columns built to stress the grid: one that sums to just below a power of two (the rounded
    entries would overshoot 2^24 steps without the doubling), one dominated by a single sample
    (integers near 2^24: four digits), an all-zero column and tiny values. The grid integers
    then sum to at most 2^24 per column, their digits recombine to them, and the int8 digit
    GEMMs give the exact sums of every pattern, those of the float GEMM bitwise."""

    n = 3000
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, 6))
    x[:, 0] = np.abs(x[:, 0]) + 0.5
    x[:, 0] *= (2.0**30 - 1) / np.abs(x[:, 0]).sum()  # col L1 just below 2^30: grid step 2^6
    x[:, 1] = rng.standard_normal(n) * 1e-3
    x[5, 1] = 1e4
    x[:, 2] = 0.0
    x[:, 3] *= 1e-20
    labels = np.arange(n) % 2
    ds = Dataset(x, labels, name="edges", provenance="t")
    data = training_data(ds, jnp.float32)
    np.testing.assert_array_equal(np.asarray(data.x), x.astype(np.float32))
    x_hi, _, step = cells_impl._grid_split(np.asarray(data.x, np.float64), np.float32)
    q = np.round(x_hi.astype(np.float64) / step)
    assert np.abs(q).sum(axis=0).max() <= 2**24 and np.abs(q[:, 1]).max() > 2**23
    signed64 = (1.0 - 2 * labels).astype(np.float64)
    digits = cells_impl._grid_digits(x_hi.astype(np.float64), step, signed64)
    assert digits.dtype == np.int8 and digits.shape[1] == 4 * 6
    base = np.int64(cells_impl._DIGIT_BASE) ** np.arange(4)
    recombined = np.einsum("nld,l->nd", digits.reshape(n, 4, 6).astype(np.int64), base)
    np.testing.assert_array_equal(
        recombined, q.astype(np.int64) * signed64.astype(np.int64)[:, None]
    )
    assert cells_impl._grid_digits(x_hi.astype(np.float64), step, signed64 * 0.5) is None
    gates = rng.random((200, n)) < rng.random((200, 1))
    gates[0] = labels == 0  # every positive-label sample: the largest sums of the columns
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    exact = (gates * signed64).astype(np.float64) @ x_hi.astype(
        np.float64
    )  # integers·step < 2^53: exact
    for speedup in (1e3, 0.0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cells_impl, "_integer_gemm_speedup", lambda: speedup)
            geo = cells_impl._geometry(data, (3,))
            assert (geo.device.digits.shape[1] == 24) == (speedup > 0)
            np.testing.assert_array_equal(
                cells_impl._signed_sums(words, geo, chunk=64).astype(np.float64), exact
            )


def test_sums_by_reference_equal_the_sums_from_scratch(monkeypatch):
    """Patterns scattered around a few centres: each row's sum is the update of its nearest of the
    reference rows, bitwise the GEMM's (both are exact grid sums), and the nearest reference
    (found on the samples where the references disagree) is one at the least Hamming distance."""

    monkeypatch.setattr(cells_impl, "_REFERENCES", 16)
    ds = Dataset(
        np.random.default_rng(5).standard_normal((300, 32)),
        np.arange(300) % 2,
        name="g",
        provenance="t",
    )
    geo = cells_impl._geometry(training_data(ds, jnp.float32), (8,))
    rng = np.random.default_rng(6)
    centres = rng.random((5, 300)) < 0.5
    centres[:, :40] = True  # samples where every reference agrees
    gates = centres[rng.integers(0, 5, 1100)] ^ (rng.random((1100, 300)) < 0.03)
    gates[:, 40:60] = False
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    references = cells_impl._references(words, 300)
    assert references.rows.size == 16
    np.testing.assert_array_equal(
        cells_impl._sums_by_reference(words, references, geo, chunk=64),
        cells_impl._signed_sums(words, geo, chunk=64),
    )
    distance = np.bitwise_count(words[:, None, :] ^ words[references.rows][None, :, :]).sum(axis=2)
    np.testing.assert_array_equal(
        distance[np.arange(1100), references.nearest], distance.min(axis=1)
    )


def clustered_integer_patterns(x_int, labels, rng, *, count, flips):
    """Patterns around a few centres, plus the special rows of the gate: the empty pattern, a
    non-empty pattern whose signed sum is 0 (two equal samples of opposite labels; ``x_int`` is
    changed to make them equal) and one whose sum points away from the centres'."""
    n = x_int.shape[0]
    centres = rng.random((4, n)) < 0.5
    gates = centres[rng.integers(0, 4, count)] ^ (rng.random((count, n)) < flips)
    gates[0] = False
    a, b = np.flatnonzero(labels > 0)[0], np.flatnonzero(labels < 0)[0]
    x_int[b] = x_int[a]
    gates[1] = False
    gates[1, [a, b]] = True
    gates[2] = ~centres[0] & (labels > 0)
    return gates


@pytest.mark.parametrize("fine_bits", [0, 18])
@pytest.mark.parametrize("fallback_cost", [0, 40, 10**9])
def test_gate_by_reference_is_the_exact_sign_with_ties(fine_bits, fallback_cost):
    """`_gate_by_reference` returns the exact 1[z > 0] and 1[z < 0], like `_gate`: through the
    reference's gate, the host dense check of the unsure samples, the host settling and the
    device fallback alike (fallback cost 0: every row on the device; 10⁹: every row on the host)."""

    n, dim = 300, 24
    rng = np.random.default_rng(fine_bits + 7)
    x_int = rng.integers(-3, 4, size=(n, dim)) << fine_bits
    if fine_bits:
        x_int = x_int + rng.integers(-1, 2, size=(n, dim))
    labels = np.where(np.arange(n) % 2 == 0, 1, -1)  # ỹ of the labels 0, 1, 0, …
    gates = clustered_integer_patterns(x_int, labels, rng, count=400, flips=0.02)
    x = (x_int / 2.0 ** (3 + fine_bits)).astype(np.float32)
    data = training_data(Dataset(x, np.arange(n) % 2, name="ints", provenance="test"), jnp.float32)
    assert np.array_equal(np.asarray(data.signed_labels), labels)
    words = np.asarray(pack_patterns(jnp.asarray(gates)))
    geo = _geometry(data, (6,))
    sums = _signed_sums(words, geo, chunk=64)
    assert not sums[1].any() and gates[1].any()  # a non-empty pattern with S = 0
    positive, negative = _gate_by_reference(
        sums, words, geo, rank=6, chunk=64, fallback_cost=fallback_cost
    )
    z = exact_preactivations(x_int, labels, gates)
    assert (z == 0).sum() > 100 and (
        np.abs(z) < 2**fine_bits
    ).sum() > 100  # ties and near-ties are tested
    np.testing.assert_array_equal(_unpack_host(positive, n), z > 0)
    np.testing.assert_array_equal(_unpack_host(negative, n), z < 0)
    # no reference to take: every pattern empty
    empty = np.zeros((130, words.shape[1]), np.uint32)
    positive, negative = _gate_by_reference(
        np.zeros((130, dim), np.float32), empty, geo, rank=6, chunk=64, fallback_cost=fallback_cost
    )
    assert not positive.any() and not negative.any()


def test_gate_by_reference_equals_the_gate_on_algorithm_1_patterns():
    """On the patterns of a real map (MNIST digits after one map of Algorithm 1) both gates agree
    bitwise, and the reference path handles most rows itself."""
    from gflow import load_dataset

    data = training_data(load_dataset("mnist", n_per_class=300), jnp.float32)
    geo = cells_impl._geometry(data, (24,))
    start = cells_impl._initial_patterns(jax.random.split(jax.random.key(2), 1500), data, chunk=512)
    words, _, _, _ = cells_impl._distinct(start)
    positive, _ = cells_impl._gate(
        cells_impl._signed_sums(words, geo, chunk=512), words, geo, rank=24, chunk=512
    )
    mapped, _, _, _ = cells_impl._distinct(positive)
    sums = cells_impl._nearby_sums(mapped, geo, chunk=512)
    sent = []
    device_gate = cells_impl._gate

    def counting_gate(s, w, g, **kw):
        sent.append(w.shape[0])
        return device_gate(s, w, g, **kw)

    cells_impl._gate = counting_gate
    try:
        by_reference = cells_impl._gate_by_reference(
            sums, mapped, geo, rank=24, chunk=256, fallback_cost=1200
        )
    finally:
        cells_impl._gate = device_gate
    direct = cells_impl._gate(sums, mapped, geo, rank=24, chunk=256)
    np.testing.assert_array_equal(by_reference[0], direct[0])
    np.testing.assert_array_equal(by_reference[1], direct[1])
    assert sum(sent) < 0.2 * mapped.shape[0]


def test_host_bit_helpers_match_the_packing():

    rng = np.random.default_rng(4)
    g = rng.random((9, 70)) < 0.1
    words = np.asarray(pack_patterns(jnp.asarray(g)))
    np.testing.assert_array_equal(_unpack_host(words, 70), g)
    rows, samples = _set_bit_positions(words)
    assert sorted(zip(rows.tolist(), samples.tolist())) == sorted(zip(*map(list, np.nonzero(g))))
    rebuilt = np.zeros_like(words)
    _set_bits(rebuilt, rows, samples)
    np.testing.assert_array_equal(rebuilt, words)


@pytest.mark.parametrize("k", [1, 50, 64, 200])
def test_host_fingerprints_equal_the_fingerprints_in_any_chunking(monkeypatch, k):
    """Chunked device calls (the last chunk overlapping the one before) give every row the
    fingerprint `pattern_fingerprints` gives it; `_distinct` groups exactly the equal rows."""

    monkeypatch.setattr(cells_impl, "_FINGERPRINT_ROWS", 64)
    rng = np.random.default_rng(k)
    base = rng.integers(0, 2**32, size=(max(k // 3, 1), 5), dtype=np.uint32)
    words = base[rng.integers(0, base.shape[0], size=k)]
    np.testing.assert_array_equal(
        cells_impl._host_fingerprints(words), np.asarray(pattern_fingerprints(jnp.asarray(words)))
    )
    distinct, inverse, first, keys = cells_impl._distinct(words)
    np.testing.assert_array_equal(distinct[inverse], words)
    assert distinct.shape[0] == np.unique(words, axis=0).shape[0] and np.all(
        np.diff(keys.astype(np.float64)) >= 0
    )


def dense_reference(data, key, *, probes, patience, kappa, max_iterations=200):
    """Algorithm 1 the straightforward way: every probe mapped by the dense target map each
    iteration, pre-activations in float64 (exact for these data to ~1e-12; ties would be flagged).
    The random probes' patterns come from the same `_initial_patterns` (they define the probes)."""

    x = np.asarray(data.x, np.float64)
    labels = np.asarray(data.signed_labels, np.float64)
    start = np.asarray(_initial_patterns(jax.random.split(key, probes), data, chunk=probes))
    gates = _unpack_host(start, x.shape[0])

    def image(g):
        z = ((g * labels) @ x) @ x.T
        assert np.abs(z).min() > 1e-9  # no tie within float64 rounding: 1[κ z > 0] is exact
        return kappa * z > 0

    curve = [np.unique(gates, axis=0).shape[0]]
    mapped = image(gates)
    while not _plateau(curve, patience, probes)[1] and len(curve) < max_iterations:
        gates = mapped
        curve.append(np.unique(gates, axis=0).shape[0])
        mapped = image(gates)
    twice = image(mapped)
    fixed = np.all(mapped == gates, axis=1)
    two_cycle = np.all(twice == gates, axis=1) & ~fixed
    stable, basin = np.unique(gates[fixed], axis=0, return_counts=True)
    return (
        curve,
        fixed.mean(),
        two_cycle.mean(),
        {row.tobytes(): b for row, b in zip(stable, basin)},
    )


def test_algorithm_1_equals_the_dense_exact_reference(monkeypatch):
    """Realistic case (200 MNIST digits, float32, D = 784), both κ, with 2-cycles: the fast
    path (rank filter, dense check, incremental sums, shared first maps) gives the reference's
    K_t curve, estimate, fractions and stable cells exactly. Small ranks and dense checks force
    every path of the engine at this size."""
    from gflow import load_dataset

    monkeypatch.setattr(cells_impl, "_FIRST_RANK", 24)
    monkeypatch.setattr(cells_impl, "_RANK", 24)
    monkeypatch.setattr(cells_impl, "_DENSE_SIZES", (0, 32, 64, 128, 192))
    monkeypatch.setattr(
        cells_impl, "_SETTLE_COST", 3
    )  # dense checks of 128 and 192 samples, and many entries settled
    monkeypatch.setattr(cells_impl, "_PILOT_ROWS", 64)
    monkeypatch.setattr(cells_impl, "_REFERENCES", 8)  # sums by reference from 64 patterns up
    data = training_data(load_dataset("mnist", n_per_class=100), jnp.float32)
    key, probes, patience = jax.random.key(3), 400, 3
    found = stable_cells(data, key, probes=probes, patience=patience, chunk=256)
    cycles = 0.0
    for kappa in (1, -1):
        curve, fixed, two_cycle, stable = dense_reference(
            data, key, probes=probes, patience=patience, kappa=kappa
        )
        est = found[kappa]
        assert est.curve == tuple(curve)
        assert est.estimate == min(curve)
        assert est.fixed_fraction == fixed and est.two_cycle_fraction == two_cycle
        rows = np.asarray(unpack_patterns(jnp.asarray(est.patterns), 200))
        assert {row.tobytes(): b for row, b in zip(rows, est.basin)} == stable
        cycles += two_cycle
    assert cycles > 0.1  # the case has probes on 2-cycles


@pytest.mark.parametrize("digits", [True, False])
def test_exact_engine_matmuls_ask_for_true_float32(monkeypatch, digits):
    """Every float32 matmul of the exact engine requests HIGHEST precision: JAX's default may round
    float32 inputs to TF32 (GPU) or bfloat16 (TPU), which would break the grid sums' exactness
    and the error bounds. The digit sums' matmuls are int8 × int8 with int32 results, and the
    bit placement's bfloat16 × bfloat16 with float32 results: exact on every backend."""

    monkeypatch.setattr(cells_impl, "_integer_gemm_speedup", lambda: 1e3 if digits else 0.0)
    ds = Dataset(
        np.random.default_rng(7).standard_normal((200, 16)),
        np.arange(200) % 2,
        name="g",
        provenance="t",
    )
    geo = cells_impl._geometry(training_data(ds, jnp.float32), (4,))
    words = np.asarray(pack_patterns(jnp.asarray(np.random.default_rng(8).random((8, 200)) < 0.5)))
    sums = cells_impl._signed_sums(words, geo, chunk=8)
    sizes = np.bitwise_count(words).sum(axis=1).astype(np.int32)
    dense = np.arange(0, 200, 7)
    merge, mask = cells_impl._dense_placement(dense, 200)
    samples = jnp.asarray(dense.astype(np.int32))
    traced = [
        jax.make_jaxpr(cells_impl._signed_sums_kernel)(jnp.asarray(words), geo.device),
        jax.make_jaxpr(lambda *a: cells_impl._sum_changes_kernel(*a, by_digits=digits))(
            jnp.asarray(words), jnp.asarray(words), samples, geo.device
        ),
        jax.make_jaxpr(lambda *a: cells_impl._gate_kernel(*a, rank=4))(
            jnp.asarray(sums),
            jnp.asarray(sizes),
            geo.device,
            samples,
            geo.device.x[samples],
            jnp.asarray(merge),
            jnp.asarray(mask),
        ),
    ]

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for value in eqn.params.values():
                if hasattr(value, "jaxpr"):
                    yield from dots(value.jaxpr)

    found = [eqn for closed in traced for eqn in dots(closed.jaxpr)]
    assert len(found) >= 6  # 1 + 1 + (filter 2, dense check, placement)
    integer = [
        eqn for eqn in found if all(jnp.issubdtype(v.aval.dtype, jnp.integer) for v in eqn.invars)
    ]
    assert len(integer) == (2 if digits else 0)
    assert all(v.aval.dtype == jnp.int8 for eqn in integer for v in eqn.invars)
    assert all(eqn.params["preferred_element_type"] == jnp.int32 for eqn in integer)
    # The bit placement: 0/1 times powers of two below 2^16, bfloat16 numbers, summed in float32.
    placement = [eqn for eqn in found if all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars)]
    assert len(placement) == 1 and placement[0].params["preferred_element_type"] == jnp.float32
    highest = jax.lax.Precision.HIGHEST
    assert all(
        eqn.params["precision"] == (highest, highest)
        for eqn in found
        if eqn not in integer + placement
    )


# --------------------------------------------------------------------------- gflow cells


def test_cells_cli_reports_fixed_points_apart_and_explains_its_columns(tmp_path, capsys):
    """`gflow cells` on two orthogonal two-cycle pairs (tests/test_faces.py): the face map's
    four stable faces per κ (three with a sliding sample) are counted as fixed points, apart
    from 2-cycles and the plateau; the open-cell map finds only the empty cell fixed and the
    rest on 2-cycles. Every printed column has a legend line, and progress goes to stderr."""
    from gflow.cli import main

    x = np.zeros((4, 4))
    x[:2, :2] = [[1.0, 0.0], [0.5, 1.0]]
    x[2:, 2:] = [[0.5, 1.0], [1.0, 0.0]]
    path = tmp_path / "pairs.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 1, 0]))
    common = ["cells", "--dataset", f"npz:{path}", "--preprocess", "none", "--probes", "128"]
    common += ["--patience", "2", "--probe-seeds", "2", "--chunk", "128"]
    out = tmp_path / "faces.json"
    assert main([*common, "--capacity", "4", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    payload = json.loads(out.read_text())
    assert payload["map"] == "faces" and payload["dim"] == 4
    for row in payload["kappa"]:
        assert row["fixed_points"] == 4 and row["fixed_points_per_seed"] == [4, 4]
        assert row["sliding"] == 3 and row["two_cycles_per_seed"] == [0, 0]
        assert row["probe_shares"]["fixed_point"] == [1.0, 1.0]
        assert all(min(c) == p for c, p in zip(row["curves"], row["plateau_per_seed"]))
    table = captured.out.splitlines()
    head = table[0]
    legend = table[table.index("columns:") + 1 :]
    named = [m.group(1) for m in (re.match(r"  (\S[^:]*):", line) for line in legend) if m]
    assert named == re.split(r"\s{2,}", head.strip()) and "fixed points" in named
    assert "Cover bound" in captured.out and "NOT a count of stable cells" in captured.out
    assert "K_t" in captured.err and "cells [" in captured.err
    out_cells = tmp_path / "cells.json"
    assert main([*common, "--map", "cells", "--json", str(out_cells), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "cells [" not in captured.err
    for row in json.loads(out_cells.read_text())["kappa"]:
        assert row["fixed_points"] == 1 and row["empty_face_stable"] == [True, True]
        shares = row["probe_shares"]
        assert all(
            f + c == 1.0 and c > 0 for f, c in zip(shares["fixed_point"], shares["two_cycle"])
        )
    for argv, needle in (
        ([*common, "--capacity", "0"], "--capacity"),
        ([*common, "--map", "cells", "--bias"], "--bias"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err
