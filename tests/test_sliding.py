"""The sliding-mode integrator (`gflow.solvers`, docs/theory.md §8): the per-neuron box problems
against brute-force enumeration, sliding along a boundary against the reduced ODE of the motion,
the invariants (balance, energy, constraints), second-order convergence through the loss drop,
statuses and configuration."""

import functools
import itertools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.network import PAPER, Params, TrainingData, balance, preactivations
from gflow.solvers import (
    LOSS_ROSE,
    OK,
    SLIDING_OVERFLOW,
    SlidingState,
    box_qp,
    gauss_jordan,
    lazy_weights,
    lu_solve,
    materialized,
    raise_if_failed,
    sliding_step,
    solve_sliding,
)


def _enumerate_qp(M, q):
    """min ½λᵀMλ + qᵀλ over [0,1]^K by trying every split of the variables into lower bound,
    upper bound and free (the free ones solved by least squares): the global minimum of a convex
    problem is the best feasible stationary point of one of the 3^K faces."""
    k = len(q)
    best, best_lam = np.inf, None
    for split in itertools.product((0, 1, 2), repeat=k):
        split = np.array(split)
        lam = np.where(split == 1, 1.0, 0.0)
        free = split == 2
        if free.any():
            rhs = -q[free] - M[np.ix_(free, ~free)] @ lam[~free]
            lam[free] = np.linalg.lstsq(M[np.ix_(free, free)], rhs, rcond=None)[0]
        if np.any(lam < -1e-12) or np.any(lam > 1 + 1e-12):
            continue
        value = 0.5 * lam @ M @ lam + q @ lam
        if value < best:
            best, best_lam = value, lam
    return best, best_lam


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_box_qp_matches_brute_force_enumeration(k):
    """The active-set solution has the enumerated minimum (to rounding), its KKT violation is at
    rounding, and where M is definite (unique minimiser) the same λ; also for singular M."""
    rng = np.random.default_rng(k)
    solve = jax.jit(box_qp)
    for trial in range(60):
        rank = k if trial % 3 else max(1, k - 1)  # every third problem singular
        a = rng.normal(size=(rank, k)) * rng.uniform(0.1, 3.0, size=k)
        M = a.T @ a
        q = rng.normal(size=k) * rng.uniform(0.1, 3.0)
        lam, free, violation = (np.asarray(v) for v in solve(jnp.asarray(M), jnp.asarray(q)))
        want, want_lam = _enumerate_qp(M, q)
        got = 0.5 * lam @ M @ lam + q @ lam
        scale = np.abs(M).sum() + np.abs(q).sum()
        assert got == pytest.approx(want, abs=1e-12 * scale), (trial, lam, want_lam)
        assert np.all((lam >= 0) & (lam <= 1))
        assert float(violation) < 1e-12
        assert np.all(lam[~free] * (1 - lam[~free]) == 0)  # bound variables sit exactly on a bound
        if rank == k:
            np.testing.assert_allclose(lam, want_lam, atol=1e-9)


def test_box_qp_solves_each_variable_to_its_own_scale():
    """One variable 1e12 times smaller than the others is still solved (its multiplier is not
    lost in the rounding of the large ones)."""
    M = np.diag([1.0, 1e-24])
    q = np.array([-0.5, -0.3e-24])
    lam, free, _ = jax.jit(box_qp)(jnp.asarray(M), jnp.asarray(q))
    np.testing.assert_allclose(np.asarray(lam), [0.5, 0.3], rtol=1e-12)
    assert bool(free.all())


def test_gauss_jordan_and_lu_solve_agree_on_padded_spd_systems():
    """The CPU's elimination over the slots in use and the accelerators' batched LU solve the
    sliding solver's systems (SPD blocks padded with identity rows, scales spanning decades) to
    the same answer, and that answer solves the system; the elimination is unchanged to the bit
    by stopping at the used slots."""
    rng = np.random.default_rng(3)
    k, used = 12, 7
    a = rng.normal(size=(40, used, used + 3))
    scale = 10.0 ** rng.uniform(-6, 2, size=(40, used))
    blocks = np.einsum("nij,nkj->nik", a, a) * scale[:, :, None] * scale[:, None, :]
    m = np.broadcast_to(np.eye(k), (40, k, k)).copy()
    m[:, :used, :used] = blocks
    b = rng.normal(size=(40, k, 3))
    full = jax.vmap(gauss_jordan)(jnp.asarray(m), jnp.asarray(b))
    cut = jax.vmap(gauss_jordan, in_axes=(0, 0, None))(jnp.asarray(m), jnp.asarray(b), used)
    lu = jax.vmap(lu_solve)(jnp.asarray(m), jnp.asarray(b))
    assert np.array_equal(np.asarray(full), np.asarray(cut))
    # Each solution is judged on its own scale: relative residual of every right-hand side.
    for x in (np.asarray(cut), np.asarray(lu)):
        residual = np.einsum("nij,njm->nim", m, x) - b
        bound = np.einsum("nij,njm->nim", np.abs(m), np.abs(x)) + np.abs(b)
        assert np.max(np.abs(residual) / bound) < 1e-13
    cond = np.linalg.cond(m)
    rel = np.linalg.norm(np.asarray(cut) - np.asarray(lu), axis=1) / np.linalg.norm(
        np.asarray(lu), axis=1
    )
    assert np.all(rel.max(axis=1) < 1e-15 * cond * 1e3), (rel.max(), cond.max())
    vector = jax.vmap(lu_solve)(jnp.asarray(m), jnp.asarray(b[:, :, 0]))
    np.testing.assert_allclose(np.asarray(vector), np.asarray(lu)[:, :, 0], rtol=1e-12)


def _two_sample_data():
    """Two samples in 2 dims: x_1 = (1, 0) of class 2, x_2 = (0.5, 1) of class 1 (x̃_1·x̃_2 = 1.5,
    ‖x̃_1‖² = 2)."""
    x = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    y = jnp.array([1, 0], jnp.int32)
    return TrainingData(
        x=x,
        y=y,
        signed_labels=jnp.array([-1.0, 1.0]),
        x_test=jnp.zeros((0, 2)),
        y_test=jnp.zeros((0,), jnp.int32),
    )


def _on_boundary_start():
    """One neuron predicting class 1 with z_1 = 0 and z_2 > 0: sample 2 pulls w along x̃_2, which
    raises z_1; activating sample 1 (class 2) would raise the loss (c_1 > 0), so the pair slides
    as long as p_1(x_2) > 1/3 (always here: it starts at ½ and grows)."""
    x_tilde_1 = np.array([1.0, 0.0, 1.0])
    theta = np.array([0.3, 0.4, 0.0])
    theta = theta - (theta @ x_tilde_1) / (x_tilde_1 @ x_tilde_1) * x_tilde_1  # z_1 = 0
    return Params(
        W=jnp.asarray(theta[None, :2]), b=jnp.asarray(theta[2:]), V=jnp.array([[0.3, -0.2]])
    )


def _reduced_sliding_motion(p0, t1):
    """The sliding motion in closed form: with z_1 ≡ 0, sample 1 contributes nothing, θ moves only
    along Πx̃_2 (Π = projection orthogonal to x̃_1), and (z_2, v) obey the 3-dim ODE

        ż_2 = −½ (v·r_2) ‖Πx̃_2‖²,    v̇ = −½ z_2 r_2,    r_2 = softmax(z_2 v) − (1, 0),

    solved here by Dopri8 at tolerance 1e-13."""
    x1, x2 = np.array([1.0, 0.0, 1.0]), np.array([0.5, 1.0, 1.0])
    proj_sq = x2 @ x2 - (x1 @ x2) ** 2 / (x1 @ x1)

    def field(t, state, args):
        z2, v = state[0], state[1:]
        r2 = jax.nn.softmax(z2 * v) - jnp.array([1.0, 0.0])
        return jnp.concatenate([jnp.array([-0.5 * (v @ r2) * proj_sq]), -0.5 * z2 * r2])

    theta0 = np.concatenate([np.asarray(p0.W[0]), np.asarray(p0.b)])
    y0 = jnp.concatenate([jnp.array([theta0 @ x2]), p0.V[0]])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Dopri8(),
        0.0,
        t1,
        0.01,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-13),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=100_000,
    )
    return np.asarray(sol.ys[-1])


def test_t1_sliding_pair_stays_on_its_boundary_and_follows_the_reduced_motion():
    """T1: z_1 stays 0 to rounding while the neuron slides, and (z_2, v) converge at second order
    to the reduced closed-form motion (`_reduced_sliding_motion`)."""
    data, p0, t1 = _two_sample_data(), _on_boundary_start(), 4.0
    want = _reduced_sliding_motion(p0, t1)
    errors = []
    for h in (0.04, 0.02, 0.01):
        cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=h)
        traj = gflow.gradient_flow(p0, data, np.linspace(0.0, t1, 5), config=cfg)
        p1 = traj.final_params
        z = np.asarray(preactivations(p1, data.x))[:, 0]
        assert np.all(np.asarray(traj.sliding.sliding)[1:, 0] == 1)  # slides at every save time
        assert abs(z[0]) < 1e-15 * np.linalg.norm(np.asarray(p1.W))
        errors.append(np.max(np.abs(np.concatenate([[z[1]], np.asarray(p1.V[0])]) - want)))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.9), (errors, orders)
    assert errors[-1] < 1e-5
    assert float(jnp.abs(balance(p1) - balance(p0))[0]) < 1e-15


def _mnist_small(dtype=jnp.float64, width=20, sigma=1e-4, seed=0):
    ds = gflow.mnist_default(n_per_class=100)
    data = gflow.training_data(ds, dtype)
    return data, gflow.init_params(jax.random.key(seed), width, ds.dim, sigma, dtype=dtype)


@pytest.fixture(scope="module")
def drop_runs():
    """The small MNIST problem (N = 200, d = 20, σ = 1e-4, float64) through its loss drop
    (t ∈ [0, 130]) at h = 0.2, 0.1, 0.05."""
    data, p0 = _mnist_small()
    ts = np.linspace(0.0, 130.0, 27)
    runs = {}
    for h in (0.2, 0.1, 0.05):
        cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=h)
        runs[h] = gflow.gradient_flow(p0, data, ts, config=cfg, return_stats=True)
        if h == 0.2:
            compiled = solve_sliding._cache_size()
    assert solve_sliding._cache_size() == compiled  # h is traced: one compilation for all three
    return data, p0, ts, runs


def test_steps_with_lazy_incoming_weights_are_the_eager_steps():
    """Twelve steps through crossings and captures (the orthogonal problem of T3 below, t ≤ 6)
    with the incoming weights kept as `LazyWeights` (as `solve_sliding` takes them between grid
    times), then `materialized`, against the same steps each ending with its weights: the same
    parameters and pre-activations to rounding, the tracked ‖w_i‖² that of the materialized
    weights, and the same reports."""
    data, p0 = _orthogonal_problem()
    geom = gflow.solvers.geometry(data.x, data.y)
    q = balance(p0)
    n, d = data.x.shape[0], p0.W.shape[0]

    @functools.partial(jax.jit, static_argnums=0)
    def run(lazy: bool):
        state = SlidingState(p0, jnp.zeros((n, d), bool), preactivations(p0, data.x))
        if lazy:
            state = state._replace(lazy=lazy_weights(p0, n))

        def one(st, _):
            return sliding_step(st, 0.5, geom, q, capacity=16)

        return jax.lax.scan(one, state, None, length=12)

    eager, eager_reports = run(False)
    lazy, lazy_reports = run(True)
    assert eager.lazy is None and lazy.lazy is not None
    assert int(np.sum(np.asarray(eager_reports.crossings))) > 0  # gates change in these steps
    assert int(np.sum(np.asarray(eager.sliding))) > 0  # and pairs slide at the end
    weights = materialized(lazy.params, lazy.lazy, data.x)
    w_eager = np.asarray(eager.params.W)
    np.testing.assert_allclose(
        np.asarray(weights.W), w_eager, rtol=0, atol=1e-13 * np.abs(w_eager).max()
    )
    np.testing.assert_allclose(
        np.asarray(lazy.lazy.w_sq), np.sum(np.asarray(weights.W) ** 2, 1), rtol=1e-13
    )
    for a, b in (
        (lazy.params.b, eager.params.b),
        (lazy.params.V, eager.params.V),
        (lazy.z, eager.z),
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(lazy.sliding), np.asarray(eager.sliding))
    np.testing.assert_array_equal(
        np.asarray(lazy_reports.crossings), np.asarray(eager_reports.crossings)
    )
    np.testing.assert_allclose(
        np.asarray(lazy_reports.dissipation), np.asarray(eager_reports.dissipation), rtol=1e-10
    )


@pytest.mark.parametrize(
    ("n", "d", "k", "density"), [(300, 20, 12, 0.04), (64, 7, 30, 0.6), (1000, 3, 5, 0.002)]
)
def test_candidates_are_gathered_by_a_stable_partition(n, d, k, density):
    """Each neuron's pairs in its slots, those of ``first`` before the others, each group in
    sample order, the slots past its count invalid: against a sort (sample counts a multiple of
    the 32-bit words and not, neurons past and within their slots, empty neurons)."""
    from gflow._sliding import _compact

    rng = np.random.default_rng(4)
    mask = rng.random((n, d)) < density
    mask[:, 0] = False
    first = mask & (rng.random((n, d)) < 0.4)
    idx, valid = (np.asarray(a) for a in _compact(jnp.asarray(mask), jnp.asarray(first), k))
    assert idx.shape == valid.shape == (d, k)
    for i in range(d):
        samples = np.nonzero(mask[:, i])[0]
        want = sorted(samples, key=lambda s: (not first[s, i], s))[:k]
        assert valid[i].sum() == len(want)
        assert list(idx[i][valid[i]]) == want
        assert np.all(idx[i][~valid[i]] == 0)
    if density > 0.01:
        assert np.any(mask.sum(axis=0) > k)  # some neuron overflows its slots


def test_gram_products_over_the_event_rows_are_the_dense_products():
    """The Gram products of a step's sparse changes as sums of Gram rows (the candidates' from
    their gathered rows, the other pairs' from a list) equal the dense products (float64, to
    rounding); with a neuron past its slots for the other pairs, or more of them in all than
    the list holds, `_event_gram_times` falls back to the dense products, while the rows alone
    leave the pairs past the slots out."""
    from gflow._sliding import (
        _compact,
        _event_gram_times,
        _gram_rows_times,
        _gram_times,
        _other_pairs,
        geometry,
    )

    rng = np.random.default_rng(11)
    n, dim, d, k = 90, 60, 12, 3
    geom = geometry(jnp.asarray(rng.normal(size=(n, dim))), jnp.zeros(n, jnp.int32))
    cand = rng.random((n, d)) < 0.03
    idx, valid = _compact(jnp.asarray(cand), jnp.asarray(cand), k)
    kept = np.zeros((n, d), bool)
    kept[np.asarray(idx), np.arange(d)[:, None]] = np.asarray(valid)
    candidates = (idx, valid, geom.gram[idx], jnp.asarray(kept))
    first = np.where(kept | (rng.random((n, d)) < 0.02), rng.normal(size=(n, d)), 0.0)
    second = np.where(kept | (rng.random((n, d)) < 0.01), rng.normal(size=(n, d)), 0.0)
    first[:, 0] = second[:, 0] = 0.0  # a neuron without events
    others = ((first != 0) | (second != 0)) & ~kept
    assert others.sum(axis=0).max() <= 2 * k and 0 < others.sum() <= 16 * k
    assert np.any(kept & (first != 0))

    def rows_times(first, second):
        others = _other_pairs(first, second, candidates[3])
        return _gram_rows_times(
            geom, first, second, others, candidates=candidates, per_neuron=2 * k, total=16 * k
        )

    def check(first, second, *, sparse=True):
        want = [np.asarray(_gram_times(geom, jnp.asarray(a))) for a in (first, second)]
        ways = [
            jax.jit(_event_gram_times)(geom, jnp.asarray(first), jnp.asarray(second), candidates)
        ]
        if sparse:
            ways.append(rows_times(jnp.asarray(first), jnp.asarray(second)))
        for got in ways:
            for g, w in zip(got, want, strict=True):
                scale = np.abs(w).max()
                np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-12 * scale)
        return want

    check(first, second)
    crowded = first.copy()
    crowded[~kept[:, 3], 3] = 1.0  # neuron 3 past its slots
    dense = check(crowded, second, sparse=False)[0]
    rows = rows_times(jnp.asarray(crowded), jnp.asarray(second))[0]
    assert np.abs(np.asarray(rows)[:, 3] - dense[:, 3]).max() > 1e-3 * np.abs(dense[:, 3]).max()
    many, second_many = np.where(kept, first, 0.0), np.where(kept, second, 0.0)
    for i in range(1, d):  # five other pairs in each neuron: within its slots, not in all
        many[rng.choice(np.nonzero(~kept[:, i])[0], 5, replace=False), i] = 1.0
    assert ((many != 0) & ~kept).sum() > 16 * k
    check(many, second_many, sparse=False)


def test_sliding_flow_is_the_same_with_the_accelerators_solve(drop_runs, monkeypatch):
    """The drop problem's flow (h = 0.2) with every small system solved by the batched LU of the
    accelerators (forced here on the CPU) follows the CPU's trajectory: the two solves differ by
    rounding, and the active sets and events they decide are the same."""
    import gflow._sliding as sliding_module

    data, p0, ts, runs = drop_runs
    traj = runs[0.2][0]
    # The fixture's call of `solve_sliding` again (its save and snapshot grid: no compilation) ...
    snap = np.asarray(traj.snapshot_t)
    grid = np.union1d(ts, snap)
    args = (p0, data, jnp.asarray(grid))
    args += (jnp.asarray(np.searchsorted(grid, ts)), jnp.asarray(np.searchsorted(grid, snap)), 0.2)
    options = dict(
        capacity=gflow.solvers.DEFAULT_SLIDING_CAPACITY,
        max_steps=gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.2).max_steps,
        model=PAPER,
        halvings=gflow.solvers.DEFAULT_SLIDING_HALVINGS,
    )
    compiled = solve_sliding._cache_size()
    cpu = solve_sliding(*args, **options)
    assert solve_sliding._cache_size() == compiled
    np.testing.assert_array_equal(np.asarray(cpu.observables.P), np.asarray(traj.observables.P))
    # ... and traced anew (a jit of its own, leaving the cached one alone) with the other solve.
    monkeypatch.setattr(sliding_module, "spd_solve", lambda a, b, size=None: lu_solve(a, b))

    def traced_anew(*args, **options):  # a function of its own: JAX's trace caches miss it
        return solve_sliding.__wrapped__(*args, **options)

    fresh = jax.jit(traced_anew, static_argnames=("capacity", "max_steps", "halvings"))
    lu = fresh(*args, **options)
    assert int(np.asarray(cpu.record.sliding).max()) > 0  # with pairs sliding
    P_cpu, P_lu = np.asarray(cpu.observables.P), np.asarray(lu.observables.P)
    assert np.max(np.abs(P_cpu - P_lu)) / P_cpu.max() < 1e-10
    assert not np.array_equal(P_cpu, P_lu)  # the other solve was used


def test_sliding_flow_converges_at_second_order_through_the_loss_drop(drop_runs):
    """Self-convergence of P_i through the drop (the loss falls from ln 2 to < 0.25, with tens of
    pairs sliding): the observed order log₂(e(h, h/2)/e(h/2, h/4)) over h = 0.2, 0.1, 0.05 is
    ≥ 1.8 at every save time after the drop (1.74 with the event times of the linear predictor,
    docs/theory.md §8.1), and the finest difference is below 1.2e-3 of each neuron's largest P_i."""
    _, _, ts, runs = drop_runs
    traj = runs[0.05][0]
    assert float(traj.observables.loss[0]) == pytest.approx(np.log(2.0))
    assert float(traj.observables.loss[-1]) < 0.25
    assert int(np.max(np.asarray(traj.sliding.sliding).sum(axis=1))) >= 20
    P = {h: np.asarray(r[0].observables.P) for h, r in runs.items()}
    scale = np.max(np.abs(P[0.05]), axis=0)

    def err(a, b):
        return np.max(np.abs(P[a] - P[b]) / scale, axis=1)

    late = ts >= 100
    order = np.log2(err(0.2, 0.1)[late] / err(0.1, 0.05)[late])
    assert np.all(order >= 1.8), order
    assert np.max(err(0.1, 0.05)) < 1.2e-3


def test_sliding_flow_invariants_and_costs(drop_runs):
    """Balance drift at rounding (≤ 1e-12), two gradients per step, no overflow, the problems (1)
    solved to rounding, and the energy identity L(0) − L(t) = ∫‖θ'‖² converging at second order."""
    _, _, ts, runs = drop_runs
    gaps = {}
    for h, (traj, stats) in runs.items():
        assert int(traj.status) == OK
        assert float(gflow.balance_drift(traj.observables).max()) <= 1e-12
        assert int(stats.evaluations) == 2 * int(stats.num_steps) == 2 * round(130 / h)
        assert float(stats.stage_residual_max) < 1e-10
        drop = float(traj.observables.loss[0] - traj.observables.loss[-1])
        gaps[h] = abs(drop - float(traj.sliding.dissipation[-1])) / drop
    ratios = [gaps[a] / gaps[b] for a, b in ((0.2, 0.1), (0.1, 0.05))]
    assert all(r > 3.0 for r in ratios), (gaps, ratios)
    assert gaps[0.05] < 4e-4


def test_gd_approaches_the_sliding_flow_at_first_order(drop_runs):
    """GD at η and η/2 approaches the sliding flow (its Richardson extrapolation
    (4·S(h/2) − S(h))/3 over h = 0.1, 0.05) with order ≈ 1, and GD's own Richardson
    extrapolation 2·GD(η/2) − GD(η) agrees with it to 1e-3 relative in P_i."""
    data, p0, ts, runs = drop_runs
    P = {h: np.asarray(r[0].observables.P) for h, r in runs.items()}
    ref = (4.0 * P[0.05] - P[0.1]) / 3.0
    scale = np.max(np.abs(ref), axis=0)
    gd = {}
    for eta in (0.02, 0.01):
        cfg = gflow.SGDConfig(steps=round(130 / eta), record_every=round(5 / eta))
        gd[eta] = np.asarray(gflow.train_gd(p0, data, learning_rate=eta, config=cfg).observables.P)
    err = {eta: np.max(np.abs(g - ref) / scale) for eta, g in gd.items()}
    order = np.log2(err[0.02] / err[0.01])
    assert 0.7 < order < 1.5, err
    rich = np.max(np.abs(2 * gd[0.01] - gd[0.02] - ref) / scale)
    assert rich < 1e-3 and rich < err[0.01], (rich, err)


def _orthogonal_problem():
    """Six orthogonal inputs of unequal norms in R⁶ (three per class), 4 neurons at σ = 0.5."""
    x = 2.0 * jnp.diag(jnp.array([1.0, 1.3, 0.8, 1.1, 0.9, 1.2]))
    y = jnp.array([0, 0, 0, 1, 1, 1], jnp.int32)
    data = TrainingData(
        x=x,
        y=y,
        signed_labels=jnp.where(y == 0, 1.0, -1.0),
        x_test=jnp.zeros((0, 6)),
        y_test=jnp.zeros((0,), jnp.int32),
    )
    return data, gflow.init_params(jax.random.key(0), 4, 6, 0.5, dtype=jnp.float64)


def _dopri8(p0, data, t1, max_steps):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(gflow.vector_field),
        diffrax.Dopri8(),
        jnp.asarray(0.0),
        jnp.asarray(t1),  # traced: both windows share one compilation
        jnp.asarray(0.01),
        p0,
        args=data,
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
        throw=False,
    )
    return sol.result, jax.tree.map(lambda a: a[-1], sol.ys)


def test_t3_orthogonal_inputs_no_spurious_capture():
    """T3, orthogonal inputs (docs/theory.md §9). With the bias, an inactive pair still moves with
    ḃ_i, so pairs pushed off their boundary from the active side can be pushed back: sliding is
    real here. (a) On [0, 1.2] the flow crosses one boundary transversally and slides nowhere:
    Dopri8 at tolerance 1e-12 resolves it (step rejection at the crossing), the sliding solver
    captures no pair and converges to it at second order. (b) On [0, 4] Dopri8 stalls (max_steps)
    with one pair pinned at |z| < 1e-8: the pair the sliding solver captured first."""
    data, p0 = _orthogonal_problem()
    result, ref = _dopri8(p0, data, 1.2, 20_000)
    assert result == diffrax.RESULTS.successful
    want = np.concatenate([np.ravel(a) for a in ref])
    errors = []
    # Both windows save and snapshot at 5 times: one compilation of the solver serves both.
    ts = np.linspace(0.0, 1.2, 5)
    for h in (0.04, 0.02, 0.01):
        cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=h)
        traj, stats = gflow.gradient_flow(
            p0, data, ts, snapshot_times=ts, config=cfg, return_stats=True
        )
        assert int(np.max(np.asarray(traj.sliding.sliding))) == 0
        assert int(stats.fractional_gates) >= 1  # the window does contain a crossing
        got = np.concatenate([np.ravel(a) for a in traj.final_params])
        errors.append(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.8), (errors, orders)
    assert errors[-1] < 5e-6

    result, stalled = _dopri8(p0, data, 4.0, 20_000)
    assert result == diffrax.RESULTS.max_steps_reached
    ts = np.linspace(0.0, 4.0, 5)  # captures at t ≈ 1.55, 2.8, 3.5: one new pair per snapshot
    traj = gflow.gradient_flow(
        p0,
        data,
        ts,
        snapshot_times=ts,
        config=gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.01),
    )
    sliding = np.asarray(traj.sliding.snapshots)
    first = int(np.argmax(sliding.any(axis=(1, 2))))
    captured = list(zip(*np.nonzero(sliding[first])))
    z_stalled = np.asarray(preactivations(stalled, data.x))
    pinned = list(zip(*np.nonzero(np.abs(z_stalled) < 1e-8)))
    assert len(captured) == 1 and captured == pinned, (captured, pinned)


def test_overflow_is_a_status_and_capacity_is_checked():
    """A capacity of 1 on the drop problem overflows even at dt0/8 (after the default three
    halvings): status SLIDING_OVERFLOW (a TrajectoryError when throw=True); bad configurations
    fail at construction."""
    data, p0 = _mnist_small(width=6)
    cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.2, sliding_capacity=1)
    ts = np.linspace(0.0, 100.0, 11)
    traj = gflow.gradient_flow(p0, data, ts, config=cfg, throw=False)
    assert int(traj.status) == SLIDING_OVERFLOW
    assert bool(np.any(np.asarray(traj.sliding.overflow)))
    assert int(np.asarray(traj.sliding.halvings).sum()) > 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="sliding_halvings must be an integer >= 0"):
            gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.1, sliding_halvings=bad)
    with pytest.raises(ValueError, match="sliding_halvings only applies"):
        gflow.FlowConfig(solver="heun", adaptive=False, dt0=0.1, sliding_halvings=2)
    with pytest.raises(gflow.TrajectoryError, match="sliding_capacity"):
        gflow.gradient_flow(p0, data, ts, config=cfg)
    with pytest.raises(ValueError, match="constant steps"):
        gflow.FlowConfig(solver="sliding")
    with pytest.raises(ValueError, match="sliding_capacity must be an integer >= 1"):
        gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.1, sliding_capacity=0)
    with pytest.raises(ValueError, match="only applies"):
        gflow.FlowConfig(solver="heun", adaptive=False, dt0=0.1, sliding_capacity=4)


def test_a_step_with_too_many_candidates_is_taken_again_at_half_length():
    """The drop problem at h = 1 with K = 8: a step in which a neuron has more than K candidates
    is taken again at h/2 (and h/4, h/8), each save interval starting one halving above where
    the previous one ended. Against the same rule written out as a loop of single steps (each
    ending with its weights; at every save time the balance rescaling and the pre-activations
    from the data, as the solver does): the same retaken steps in the same intervals and P_i
    to rounding; the run ends ok (without halvings it overflows), and the counts are honest:
    every step taken, retaken ones included, costs two gradients."""
    data, p0 = _mnist_small()
    ts, h, k, halvings = np.linspace(0.0, 25.0, 6), 1.0, 8, 3
    cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=h, sliding_capacity=k)
    traj, stats = gflow.gradient_flow(p0, data, ts, config=cfg, return_stats=True)
    assert int(traj.status) == OK and not np.any(np.asarray(traj.sliding.overflow))

    geom = gflow.solvers.geometry(data.x, data.y)
    q = balance(p0)
    step = jax.jit(lambda st, dt: sliding_step(st, dt, geom, q, capacity=k))
    n, d = data.x.shape[0], p0.W.shape[0]
    state = SlidingState(p0, jnp.zeros((n, d), bool), preactivations(p0, data.x))

    def norms_product(p):  # P_i = ‖w_i‖ ‖v_i‖
        return np.linalg.norm(np.asarray(p.W), axis=1) * np.linalg.norm(np.asarray(p.V), axis=1)

    level, taken, retaken, P = 0, 0, [0], [norms_product(p0)]
    for t0, t1 in itertools.pairwise(ts):
        count = int(np.ceil((t1 - t0) / h - 1e-6))
        level = max(level - 1, 0)
        remaining, retaken_here = count * 2**level, 0
        while remaining:
            new, report = step(state, (t1 - t0) / count / 2**level)
            taken += 1
            if bool(report.overflow) and level < halvings:
                level, remaining, retaken_here = level + 1, 2 * remaining, retaken_here + 1
                continue
            assert not bool(report.overflow)
            state, remaining = new, remaining - 1
        params = gflow.solvers.rescale_to_balance(state.params, q)
        state = SlidingState(params, state.sliding, preactivations(params, data.x))
        retaken.append(retaken_here)
        P.append(norms_product(params))
    assert sum(retaken) > 0  # the rule was exercised ...
    assert np.asarray(traj.sliding.halvings).tolist() == retaken  # ... the same way
    P_want = np.array(P)
    np.testing.assert_allclose(np.asarray(traj.observables.P), P_want, atol=1e-12 * P_want.max())
    assert int(stats.num_steps) == int(traj.num_steps) == taken
    assert int(stats.num_rejected_steps) == sum(retaken)
    assert int(stats.num_accepted_steps) == taken - sum(retaken)
    assert int(stats.evaluations) == 2 * taken


def test_a_step_too_large_for_the_flow_is_a_status():
    """On the drop problem h = 1 holds every candidate (K = 80, no overflow) but the loss rises by
    a fifth within a save interval after the drop and the run ends far from the flow (L = 0.38,
    against 0.22 at h ≤ 0.9): the status LOSS_ROSE, not ok (the stable runs of the other tests
    are ok, and `gradient_flow` raises on any other status)."""
    data, p0 = _mnist_small()
    ts = np.linspace(0.0, 130.0, 27)
    cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=1.0, sliding_capacity=80)
    traj = gflow.gradient_flow(p0, data, ts, config=cfg, throw=False)
    loss = np.asarray(traj.observables.loss)
    assert int(traj.status) == LOSS_ROSE
    assert not np.any(np.asarray(traj.sliding.overflow))
    assert np.max(np.diff(loss) / loss[:-1]) > 0.1 and loss[-1] > 0.3
    with pytest.raises(gflow.TrajectoryError, match="loss rose between save times"):
        raise_if_failed(traj)


def test_vmap_over_seeds_equals_a_loop():
    """Two seeds vmapped in one program give the loop's trajectories, and the sliding records
    come out per seed (the drop problem's shapes, so that the loop reuses its compilation; the
    demo's tests run the solver in float32)."""
    data, _ = _mnist_small()
    keys = jax.random.split(jax.random.key(5), 2)
    p0 = jax.vmap(lambda k: gflow.init_params(k, 20, data.x.shape[1], 1e-2, dtype=jnp.float64))(
        keys
    )
    ts = np.linspace(0.0, 60.0, 27)
    cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=0.25)
    batched = jax.vmap(lambda p: gflow.gradient_flow(p, data, ts, config=cfg, throw=False))(p0)
    assert batched.sliding.sliding.shape == (2, 27, 20)
    assert float(batched.observables.loss[:, -1].max()) < 0.5  # through the drop
    assert int(np.asarray(batched.sliding.sliding).max()) > 0  # with pairs sliding
    for i in range(2):
        single = gflow.gradient_flow(jax.tree.map(lambda a: a[i], p0), data, ts, config=cfg)
        np.testing.assert_allclose(
            np.asarray(batched.observables.P[i]),
            np.asarray(single.observables.P),
            rtol=1e-9,
            atol=1e-15,
        )
        assert int(batched.status[i]) == OK


def test_softplus_flows_approach_the_sliding_motion_as_beta_grows():
    """The smooth flows of the network with softplus_β(z) = log(1 + e^{βz})/β in place of the ReLU
    (integrated by the stiff solver Kvaerno5 at tolerance 1e-10) approach the sliding motion of T1
    as β → ∞: the error of (z_2, v) at t = 4 falls at a measured rate ≈ 1/β (log-log slope in
    [0.8, 1.2]), and the sliding pair's z_1 is O(1/β)."""
    data, p0, t1 = _two_sample_data(), _on_boundary_start(), 4.0
    want = _reduced_sliding_motion(p0, t1)
    x = np.asarray(data.x)

    def loss(theta, beta):
        W, b, V = theta[:2][None, :], theta[2:3], theta[3:].reshape(1, 2)
        a = jax.nn.softplus(beta * (data.x @ W.T + b)) / beta
        return jnp.mean(gflow.network.logit_loss(a @ V, data.y))

    def field(t, theta, beta):
        return -jax.grad(loss)(theta, beta)

    theta0 = jnp.concatenate([p0.W[0], p0.b, p0.V[0]])
    errors, z1 = [], []
    betas = np.array([50.0, 100.0, 200.0, 400.0])
    for beta in betas:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Kvaerno5(),
            0.0,
            t1,
            0.01,
            theta0,
            args=beta,
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=100_000,
        )
        theta = np.asarray(sol.ys[-1])
        z = x @ theta[:2] + theta[2]
        errors.append(np.max(np.abs(np.concatenate([[z[1]], theta[3:]]) - want)))
        z1.append(abs(z[0]))
    slope = -np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert 0.8 <= slope <= 1.2, (errors, slope)
    assert np.all(np.diff(errors) < 0) and np.all(np.diff(z1) < 0), (errors, z1)
