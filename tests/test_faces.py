"""Faces, the projected target and the stable-face criterion (gflow/_faces.py;
docs/theory.md §3, §8).

Checked against closed forms (two samples whose open cells 2-cycle), brute-force enumeration of
the box problem (3.1) of docs/theory.md §3.1 and of the criterion on tiny problems, the open-cell
map of `gflow.cells`, and the sliding solver's motion of neurons started in a face.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gflow import Dataset, FlowConfig, Params, gradient_flow, target_directions, training_data
from gflow.cells import (
    face_inputs,
    face_step,
    is_stable,
    map_patterns,
    stable_cells,
    stable_face_test,
    stable_faces,
    unpack_patterns,
)

K = 4  # capacity: small, so that each compiled face step is cheap


def two_cycle_pair(rng, dim):
    """x1 (class 1), x2 (class 2) with 0 < x1·x2 < min(‖x1‖², ‖x2‖²): for κ = +1 the open cells
    2-cycle, {1} → gate(x1) = {1, 2} → gate(x1 − x2) = {1}, and the face ({1}, {2}) is stable
    with λ = x1·x2/‖x2‖² and P = x1 − λ x2 (x1's component orthogonal to x2)."""
    while True:
        x1, x2 = rng.standard_normal((2, dim))
        c = x1 @ x2
        if 0.1 < c < 0.9 * min(x1 @ x1, x2 @ x2):
            return np.stack([x1, x2])


def crossed_pairs():
    """Two orthogonal copies of the two-cycle pair, the second with the classes swapped:
    samples 0 (class 1), 1 (class 2) in the first two axes, 2 (class 2), 3 (class 1) in the
    last two. Each pair has, for each κ, one stable face with one sliding sample (the sample of
    class −κ), and the pairs do not interact (orthogonal), so the stable faces of κ = +1 are
    ∅, ({0}, {1}), ({3}, {2}) and ({0, 3}, {1, 2}); for κ = −1 ({1}, {0}), ({2}, {3}), their
    union and ∅. The open-cell map's only stable cell is the empty one: every other probe ends
    on a 2-cycle."""
    pair = np.array([[1.0, 0.0], [0.5, 1.0]])
    x = np.zeros((4, 4))
    x[:2, :2] = pair
    x[2:, 2:] = pair[::-1]
    y = np.array([0, 1, 1, 0])
    return training_data(Dataset(x, y, name="pairs", provenance="test"), jnp.float64)


def rows(*sets, n):
    out = np.zeros((len(sets), n), bool)
    for i, s in enumerate(sets):
        out[i, list(s)] = True
    return jnp.asarray(out)


# --------------------------------------------------------------------------- closed forms


def pair_step(active, sliding, kappa, x):
    """`face_step` on two faces of a two-sample problem in R^3 (one compiled shape for all the
    two-sample checks)."""
    return face_step(
        rows(*active, n=2),
        rows(*sliding, n=2),
        jnp.asarray(kappa, jnp.float64),
        jnp.asarray(x, jnp.float64),
        jnp.array([1.0, -1.0]),
        capacity=K,
    )


def test_two_sample_closed_form_projection_and_stability():
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = two_cycle_pair(rng, 3)
        lam = (x[0] @ x[1]) / (x[1] @ x[1])
        p = x[0] - lam * x[1]
        test = pair_step([{0}, {0}], [{1}, {1}], [1.0, -1.0], x).test
        proj = test.projection
        np.testing.assert_allclose(proj.target[0], p, rtol=1e-12, atol=1e-12)
        assert float(proj.multipliers[0, 0]) == pytest.approx(lam, rel=1e-12)
        assert bool(proj.interior[0, 0]) and 0 < lam < 1
        # κ = −1: the same λ and P_{−κ} = −P_κ, but sample 1 (class 2) repels a κ = −1 neuron
        # (it is not held on its boundary, nor is the face stable).
        assert test.stable.tolist() == [True, False]
        assert test.attracting.tolist() == [True, False]
        assert not bool(proj.valid[1].any())


def test_open_cells_two_cycle_where_the_face_map_has_a_fixed_point():
    """The open-cell map sends {0} → {0, 1} → {0}; the face map sends the cell {0} to the face
    ({0}, {1}) and fixes it (κ = +1)."""
    rng = np.random.default_rng(1)
    x = two_cycle_pair(rng, 3)
    data = training_data(Dataset(x, np.array([0, 1]), name="pair", provenance="t"), jnp.float64)
    one = rows({0}, n=2)
    both = np.asarray(map_patterns(one, 1, data))
    assert both.tolist() == [[True, True]]
    assert np.asarray(map_patterns(jnp.asarray(both), 1, data)).tolist() == [[True, False]]
    step = pair_step([{0}, {0}], [set(), {1}], [1.0, 1.0], x)
    assert np.asarray(step.active).tolist() == [[True, False]] * 2
    assert np.asarray(step.sliding).tolist() == [[False, True]] * 2
    assert np.asarray(step.test.stable).tolist() == [False, True]


# --------------------------------------------------------------------------- brute force


def brute_projection(base, sliding, kappa, x, ytil):
    """Problem (3.1) by enumeration: every sample of S at 0, at 1 or free (the free ones by least
    squares), the feasible point of least norm; then criterion (a)–(c) with exact signs."""
    s_idx = np.flatnonzero(sliding)
    a = (ytil[s_idx, None] * x[s_idx]).T  # columns ỹ_s x_s
    b = (base * ytil) @ x
    best = (np.inf, None)
    for status in itertools.product((0, 1, 2), repeat=s_idx.size):
        status = np.array(status, int)
        lam = np.where(status == 1, 1.0, 0.0)
        free = status == 2
        if free.any():
            rhs = b + a[:, ~free] @ lam[~free]
            lam[free] = -np.linalg.lstsq(a[:, free], rhs, rcond=None)[0]
            if np.any(lam[free] < 0) or np.any(lam[free] > 1):
                continue
        value = np.linalg.norm(b + a @ lam)
        if value < best[0] - 1e-13:
            best = (value, lam)
    lam = best[1]
    p = kappa * (b + a @ lam)
    z = x @ p
    attract = bool(np.all(kappa * ytil[s_idx] < 0))
    interior = bool(np.all((lam > 0) & (lam < 1)))
    off = ~base & ~sliding
    in_cone = bool(np.all(z[base] >= 0) and np.all(z[off] <= 0))
    return p, lam, s_idx, attract and interior and in_cone


@pytest.fixture(scope="module")
def tiny_faces():
    """Random faces on 7 samples in general position in R^4 (|S| ≤ K), and the faces reached by
    iterating the face map from them: the stable faces among them come from the iteration."""
    rng = np.random.default_rng(4)
    n, dim, m = 7, 4, 128
    x = rng.standard_normal((n, dim))
    ytil = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    sliding = np.zeros((m, n), bool)
    for i in range(m):
        sliding[i, rng.choice(n, size=rng.integers(0, K + 1), replace=False)] = True
    active = (rng.random((m, n)) < 0.5) & ~sliding
    kappa = np.where(rng.random(m) < 0.5, 1.0, -1.0)
    a, s = jnp.asarray(active), jnp.asarray(sliding)
    xj, yj, kj = jnp.asarray(x), jnp.asarray(ytil), jnp.asarray(kappa)
    for _ in range(4):
        step = face_step(a, s, kj, xj, yj, capacity=K)
        a, s = step.active, step.sliding
    half = m // 2
    active = np.concatenate([active[:half], np.asarray(a)[half:]])
    sliding = np.concatenate([sliding[:half], np.asarray(s)[half:]])
    return x, ytil, active, sliding, kappa


def test_projection_and_criterion_match_enumeration(tiny_faces):
    x, ytil, active, sliding, kappa = tiny_faces
    step = face_step(
        jnp.asarray(active),
        jnp.asarray(sliding),
        jnp.asarray(kappa),
        jnp.asarray(x),
        jnp.asarray(ytil),
        capacity=K,
    )
    test = step.test
    stable = []
    for i in range(active.shape[0]):
        # (3.1) as the sliding solver poses it drops repelling samples from S: compare like for like
        held = sliding[i] & (kappa[i] * ytil < 0)
        p, lam, s_idx, ok = brute_projection(active[i] & ~sliding[i], held, kappa[i], x, ytil)
        ok = ok and bool(np.all(~sliding[i] | held))
        scale = np.linalg.norm((active[i] * ytil) @ x) + np.abs(x).sum()
        np.testing.assert_allclose(test.projection.target[i], p, rtol=0, atol=1e-12 * scale)
        got = dict(
            zip(
                np.asarray(test.projection.index[i])[np.asarray(test.projection.valid[i])],
                np.asarray(test.projection.multipliers[i]),
            )
        )
        np.testing.assert_allclose([got[s] for s in s_idx], lam, atol=1e-10)
        assert bool(test.stable[i]) == ok, i
        stable.append(ok)
    stable = np.array(stable)
    assert stable.sum() >= 5 and (~stable).sum() >= 5  # both outcomes are exercised
    assert sliding[stable].any()  # some stable faces slide
    # Φ(f) = f exactly on the stable faces (docs/theory.md §3.1's "iff"), a second implementation
    fixed = np.all(np.asarray(step.active) == active, axis=1) & np.all(
        np.asarray(step.sliding) == sliding, axis=1
    )
    np.testing.assert_array_equal(fixed, stable)


def test_stable_cells_are_the_stable_faces_without_sliding(tiny_faces):
    """With S = ∅ the criterion is Definition 3.5's ``gate(T_κ(g)) = g`` (`gflow.cells`), and P
    points along the cell's target T_κ(g)."""
    x, ytil, *_ = tiny_faces
    n = x.shape[0]
    data = training_data(Dataset(x, (ytil < 0).astype(int), name="g", provenance="t"), jnp.float64)
    rng = np.random.default_rng(2)
    m = 128
    kappa = np.where(np.arange(m) % 2 == 0, 1, -1)
    g = rng.random((m, n)) < 0.5
    cur = jnp.asarray(g[m // 2 :])
    for _ in range(10):
        cur = map_patterns(cur, jnp.asarray(kappa[m // 2 :]), data)
    patterns = jnp.concatenate([jnp.asarray(g[: m // 2]), cur])
    cells = np.asarray(is_stable(patterns, jnp.asarray(kappa), data))
    test = stable_face_test(
        patterns,
        jnp.zeros_like(patterns),
        jnp.asarray(kappa, jnp.float64),
        data.x,
        jnp.asarray(ytil),
        capacity=K,
    )
    np.testing.assert_array_equal(np.asarray(test.stable), cells)
    assert cells.any() and not cells.all()
    p = np.asarray(test.projection.target)
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    expected = np.asarray(target_directions(patterns.T, jnp.asarray(kappa), data))
    np.testing.assert_allclose(p / np.where(norm > 0, norm, 1.0), expected, atol=1e-12)


def test_overflowing_face_is_never_stable():
    """A face with more sliding samples than the capacity is flagged and not judged stable,
    even when it is stable with room for all of them (here: the crossed pairs' union face)."""
    data = crossed_pairs()
    m = 128  # the shape of the face steps of Algorithm 1 below: one compilation for both
    active = jnp.tile(rows({0, 3}, n=4), (m, 1))
    sliding = jnp.tile(rows({1, 2}, n=4), (m, 1))
    labels = jnp.asarray(data.signed_labels, jnp.float64)
    kappa = jnp.ones((m,), jnp.float64)
    roomy = stable_face_test(active, sliding, kappa, data.x, labels, capacity=K)
    tight = stable_face_test(active[:1], sliding[:1], kappa[:1], data.x, labels, capacity=1)
    assert bool(roomy.stable[0]) and not bool(roomy.projection.overflow[0])
    assert not bool(tight.stable[0]) and bool(tight.projection.overflow[0])


# --------------------------------------------------------------------------- Algorithm 1 on faces


def face_sets(active, sliding, n):
    a = np.asarray(unpack_patterns(jnp.asarray(active), n))
    s = np.asarray(unpack_patterns(jnp.asarray(sliding), n))
    return {(tuple(np.flatnonzero(r)), tuple(np.flatnonzero(t))) for r, t in zip(a, s)}


def test_algorithm_1_on_faces_finds_the_sliding_fixed_points():
    """On the crossed pairs every probe of the open-cell Algorithm 1 that does not die ends on a
    2-cycle; the face version reaches the four stable faces and no cycle."""
    data = crossed_pairs()
    key = jax.random.key(0)
    faces = stable_faces(data, key, probes=128, patience=2, capacity=K, chunk=128)
    cells = stable_cells(data, key, probes=128, patience=2, chunk=128)
    expected = {
        1: {((), ()), ((0,), (1,)), ((3,), (2,)), ((0, 3), (1, 2))},
        -1: {((), ()), ((1,), (0,)), ((2,), (3,)), ((1, 2), (0, 3))},
    }
    for kappa, want in expected.items():
        est = faces[kappa]
        assert face_sets(est.active, est.sliding, 4) == want
        assert est.n_fixed_points == 4 and est.fixed_fraction == 1.0
        assert est.two_cycle_fraction == 0.0 and est.n_two_cycles == 0
        assert est.map_disagreements == 0 and est.basin.sum() == 128
        assert sorted(est.sliding_sizes.tolist()) == [0, 1, 1, 2]
        # the open-cell algorithm: only the empty cell is fixed, the rest 2-cycles
        old = cells[kappa]
        assert old.n_stable == 1 and old.empty_is_stable
        assert old.fixed_fraction + old.two_cycle_fraction == 1.0 and old.two_cycle_fraction > 0
        np.testing.assert_allclose(
            np.linalg.norm(est.targets, axis=1), [1.0 if a.any() else 0.0 for a in est.active]
        )


def test_algorithm_1_on_faces_rejects_bad_options():
    data = crossed_pairs()
    with pytest.raises(ValueError, match="capacity"):
        stable_faces(data, jax.random.key(0), capacity=0)
    with pytest.raises(ValueError, match="kappa"):
        stable_faces(data, jax.random.key(0), kappa=(3,))


# --------------------------------------------------------------------------- the sliding solver


def test_a_neuron_in_a_stable_face_stays_there_under_the_sliding_flow():
    """Phase 1 with a trained bias (faces of θ = (w, b), inputs x̃ = (x, 1)): neuron 0 starts
    inside the stable face ({0}, {1}) of a two-cycle pair, neuron 1 in the cell {0}, whose image
    under the face map is that face. The sliding solver keeps neuron 0 in the face, with sample
    1 sliding, and moves it along θ_0 + k(t) P exactly (the velocity is P at every point of the
    face, up to the O(|o|) departure of p from ½); neuron 1 reaches the face and slides there."""
    x = np.array([[1.0, 0.0], [-0.5, 1.0]])  # x̃1·x̃2 = 0.5 < ‖x̃1‖² = 2, ‖x̃2‖² = 2.25
    data = training_data(Dataset(x, np.array([0, 1]), name="pair", provenance="t"), jnp.float64)
    xt = face_inputs(data, bias=True)
    step = pair_step([{0}, {0}], [{1}, set()], [1.0, 1.0], xt)
    assert step.test.stable.tolist() == [True, False]
    p = np.asarray(step.test.projection.target[0])
    assert np.asarray(step.sliding).tolist() == [[False, True]] * 2  # the cell maps to the face
    # neuron 0: P plus a direction inside the face (orthogonal to x̃2); neuron 1: in cell {0}
    x2 = np.asarray(xt[1])
    inside = np.cross(x2, p)
    theta0 = np.stack([p + 0.5 * np.linalg.norm(p) * inside / np.linalg.norm(inside), xt[0]])
    theta0[1] -= 0.5 * x2  # z_2 < 0: sample 1 inactive, sample 0 active
    z0 = theta0 @ np.asarray(xt).T
    assert z0[0, 0] > 0 and abs(z0[0, 1]) < 1e-14 and z0[1, 0] > 0 and z0[1, 1] < 0
    scale = 1e-10
    params = Params(
        W=jnp.asarray(scale * theta0[:, :2]),
        b=jnp.asarray(scale * theta0[:, 2]),
        V=jnp.asarray(scale * np.array([[1.0, -1.0], [1.0, -1.0]])),  # κ = +1
    )
    ts = jnp.linspace(0.0, 30.0, 7)
    traj = gradient_flow(
        params,
        data,
        ts,
        config=FlowConfig(solver="sliding", adaptive=False, dt0=0.05, sliding_capacity=K),
    )
    end = traj.final_params
    theta = np.concatenate([np.asarray(end.W), np.asarray(end.b)[:, None]], axis=1)
    z = theta @ np.asarray(xt).T
    eps = np.finfo(np.float64).eps
    boundary = 1e3 * eps * np.linalg.norm(theta, axis=1) * np.linalg.norm(np.asarray(xt), axis=1)
    assert (
        z[0, 0] > 0 and abs(z[0, 1]) <= boundary[0] and z[1, 0] > 0 and abs(z[1, 1]) <= boundary[1]
    )
    snapshots = np.asarray(traj.sliding.snapshots)  # [T, N, d]
    assert snapshots[-1][:, 0].tolist() == [False, True] == snapshots[-1][:, 1].tolist()
    # neuron 0 moved along P: θ(t) − θ(0) ∥ P, to within the phase-1 approximation |o| ≪ 1
    moved = theta[0] - scale * theta0[0]
    off_line = np.linalg.norm(moved - (moved @ p) / (p @ p) * p) / np.linalg.norm(moved)
    logits = np.asarray(jax.nn.relu(np.asarray(xt) @ theta.T) @ np.asarray(end.V))
    assert moved @ p > 0 and off_line <= max(10 * np.abs(logits).max(), 1e3 * eps)
    # and its direction turned towards the face's target
    cos = lambda a, b: (a @ b) / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos(theta[0], p) > cos(theta0[0], p)
    assert cos(theta[1], p) > cos(theta0[1], p)
