"""Lottery tickets: IMP with rewinding (docs/theory.md §6) and the rank statistics of ticket
prediction."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.capacity import (
    IMPConfig,
    apply_mask,
    average_ranks,
    dense_mask,
    imp,
    kept_by_imp,
    magnitude_prune,
    mann_whitney_auc,
    neuron_scores,
    per_round_fraction,
    predicted_alignment,
    pruned_counts,
    pruned_per_neuron,
    random_prune_like,
    score_quality,
    snip_saliency,
    spearman,
    spearman_test,
    train_masked,
)
from gflow.network import observe

F64 = jnp.float64
WIDTH, DIM, N = 6, 5, 24


def _data(seed=0, n=N, dim=DIM):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(2, dim))
    y = np.arange(n) % 2
    x = means[y] + 0.7 * rng.normal(size=(n, dim))
    xt = means[np.arange(10) % 2] + 0.7 * rng.normal(size=(10, dim))
    return gflow.training_data(
        gflow.Dataset(
            x, y, name="two-blobs", provenance="normal draws", x_test=xt, y_test=np.arange(10) % 2
        ),
        F64,
    )


def _params(seed=0, sigma=0.1):
    return gflow.init_params(jax.random.key(seed), WIDTH, DIM, sigma, dtype=F64)


# --------------------------------------------------------------------------- schedule and pruning


@pytest.mark.parametrize("s", [0.2, 0.5, 0.7])
def test_pruned_counts_follow_the_geometric_schedule(s):
    n = 1000
    q = per_round_fraction(s, 3)
    assert (1 - q) ** 3 == pytest.approx(1 - s)
    counts = np.asarray(pruned_counts(n, s, 3))
    assert counts[0] == 0 and counts[-1] == round(n * s)
    # Each round prunes the fraction q of what remains, up to rounding to whole weights.
    remaining = n - counts
    np.testing.assert_allclose(remaining[1:], remaining[:-1] * (1 - q), atol=1.0)


def test_magnitude_prune_is_global_exact_and_keeps_pruned_weights_pruned():
    rng = np.random.default_rng(0)
    p = gflow.Params(
        W=jnp.asarray(rng.normal(size=(4, 3)), F64),
        b=jnp.asarray(rng.normal(size=4), F64),
        V=jnp.asarray(rng.normal(size=(4, 2)), F64),
    )
    mask = dense_mask(p)
    m1 = magnitude_prune(p, mask, 5)
    flat = np.abs(np.concatenate([np.asarray(p.W).ravel(), np.asarray(p.V).ravel()]))
    keep = np.concatenate([np.asarray(m1.W).ravel(), np.asarray(m1.V).ravel()])
    assert (~keep).sum() == 5
    assert flat[~keep].max() < flat[keep].min()  # globally the 5 smallest magnitudes over W and V
    assert bool(jnp.all(m1.b))  # biases are never pruned
    # A pruned weight made large again stays pruned: only live weights compete.
    big = apply_mask(p, m1)._replace(W=jnp.where(m1.W, p.W, 100.0))
    m2 = magnitude_prune(big, m1, 9)
    keep2 = np.concatenate([np.asarray(m2.W).ravel(), np.asarray(m2.V).ravel()])
    assert (~keep2).sum() == 9 and np.all(keep2 <= keep)
    # Ties are broken by position, so the count stays exact.
    tied = gflow.Params(W=jnp.ones((4, 3), F64), b=jnp.zeros(4, F64), V=jnp.ones((4, 2), F64))
    assert (
        int(jnp.sum(~magnitude_prune(tied, dense_mask(tied), 7).W))
        + int(jnp.sum(~magnitude_prune(tied, dense_mask(tied), 7).V))
        == 7
    )


def test_random_pruning_keeps_each_tensors_count():
    p = _params()
    m = magnitude_prune(p, dense_mask(p), 13)
    r = random_prune_like(jax.random.key(3), m)
    assert int(jnp.sum(~r.W)) == int(jnp.sum(~m.W)) and int(jnp.sum(~r.V)) == int(jnp.sum(~m.V))
    assert not bool(jnp.all(r.W == m.W))


# --------------------------------------------------------------------------- masked training


def test_pruned_weights_stay_exactly_zero_through_training():
    data, p0 = _data(), _params()
    mask = random_prune_like(jax.random.key(1), magnitude_prune(p0, dense_mask(p0), 15))
    out = train_masked(
        p0, jax.random.key(2), data, mask, learning_rate=0.05, momentum=0.9, steps=60, batch_size=4
    )
    assert bool(jnp.all(jnp.where(mask.W, 0.0, out.W) == 0.0)) and bool(
        jnp.all(jnp.where(mask.V, 0.0, out.V) == 0.0)
    )
    assert bool(jnp.any(jnp.where(mask.W, out.W != p0.W, False)))  # survivors did train


# --------------------------------------------------------------------------- IMP


@pytest.fixture(scope="module")
def imp_run():
    data, p0 = _data(), _params()
    key = jax.random.key(11)
    cfg = IMPConfig(steps=60, batch_size=4, rounds=3, rewind_step=0)
    targets = jnp.asarray([0.2, 0.5, 0.7], F64)
    res = jax.vmap(
        lambda s: imp(
            p0,
            key,
            data,
            target_sparsity=s,
            learning_rate=0.05,
            momentum=0.9,
            config=cfg,
            throw=False,
        )
    )(targets)
    return data, p0, key, cfg, targets, res


def test_imp_sparsity_is_exact_each_round_and_masks_are_nested(imp_run):
    data, p0, key, cfg, targets, res = imp_run
    n = WIDTH * DIM + WIDTH * 2
    for j, s in enumerate(np.asarray(targets)):
        for r in range(cfg.rounds + 1):
            pruned = int(jnp.sum(~res.masks.W[j, r])) + int(jnp.sum(~res.masks.V[j, r]))
            assert pruned == round(n * (1 - (1 - s) ** (r / cfg.rounds)))
            assert float(res.sparsity[j, r]) == pytest.approx(pruned / n)
            if r:
                assert bool(jnp.all(res.masks.W[j, r] <= res.masks.W[j, r - 1]))
        assert bool(jnp.all(res.masks.b[j]))
    assert np.all(np.asarray(res.status) == 0)


def test_imp_pruned_weights_are_exactly_zero_in_every_round_and_control(imp_run):
    _, _, _, _, _, res = imp_run
    for m, p in (
        (res.masks.W, res.final_params.W),
        (res.masks.V, res.final_params.V),
        (res.random_pruning.mask.W, res.random_pruning.final_params.W),
        (res.random_reinit.mask.W, res.random_reinit.final_params.W),
    ):
        assert bool(jnp.all(jnp.where(m, 0.0, p) == 0.0))
    assert bool(jnp.all(res.random_reinit.mask.W == res.masks.W[:, -1]))
    assert bool(
        jnp.all(
            jnp.sum(~res.random_pruning.mask.W, axis=(1, 2))
            == jnp.sum(~res.masks.W[:, -1], axis=(1, 2))
        )
    )


def test_imp_rewinds_survivors_to_their_initial_values(imp_run):
    # Round r must be the masked run from θ_0 ⊙ m_r: recomputing it from the rewound weights gives
    # the same trained network. The dense round (a masked run with an all-True mask) is the plain
    # `train_sgd` run with the same key: same optax steps, same mini-batches.
    data, p0, key, cfg, targets, res = imp_run
    assert bool(jnp.all(res.rewind_params.W == p0.W))
    dense = gflow.train_sgd(
        p0,
        key,
        data,
        learning_rate=0.05,
        momentum=0.9,
        config=gflow.SGDConfig(steps=cfg.steps, record_every=cfg.steps, batch_size=4),
    ).final_params
    np.testing.assert_allclose(res.final_params.W[1, 0], dense.W, rtol=1e-12, atol=1e-14)
    j, r = 1, 2
    mask = jax.tree.map(lambda a: a[j, r], res.masks)
    rewound = apply_mask(p0, mask)
    assert bool(jnp.all(jnp.where(mask.W, rewound.W == p0.W, rewound.W == 0)))
    again = train_masked(
        rewound, key, data, mask, learning_rate=0.05, momentum=0.9, steps=cfg.steps, batch_size=4
    )
    np.testing.assert_allclose(again.W, res.final_params.W[j, r], rtol=1e-12, atol=1e-14)


def test_imp_rewinding_to_an_early_step():
    data, p0 = _data(), _params()
    key = jax.random.key(11)
    k = 30  # = steps − k, so both halves share one compiled masked trainer (first_step is traced)
    res = imp(
        p0,
        key,
        data,
        target_sparsity=0.5,
        learning_rate=0.05,
        momentum=0.9,
        config=IMPConfig(steps=60, batch_size=4, rewind_step=k),
        controls=False,
    )
    theta_k = train_masked(
        p0, key, data, dense_mask(p0), learning_rate=0.05, momentum=0.9, steps=k, batch_size=4
    )
    np.testing.assert_allclose(res.rewind_params.W, theta_k.W, rtol=1e-12, atol=1e-14)
    assert float(res.rewind_time) == pytest.approx(k * 0.05 / 0.1)
    mask = jax.tree.map(lambda a: a[3], res.masks)
    again = train_masked(
        apply_mask(theta_k, mask),
        key,
        data,
        mask,
        learning_rate=0.05,
        momentum=0.9,
        steps=60 - k,
        batch_size=4,
        first_step=k,
    )
    np.testing.assert_allclose(again.W, res.final_params.W[3], rtol=1e-12, atol=1e-14)


def test_imp_vmapped_equals_a_single_call(imp_run):
    data, p0, key, cfg, targets, res = imp_run
    single = imp(
        p0,
        key,
        data,
        target_sparsity=0.5,
        learning_rate=0.05,
        momentum=0.9,
        config=cfg,
        controls=False,
    )
    np.testing.assert_allclose(res.final_params.W[1], single.final_params.W, rtol=1e-10, atol=1e-13)
    assert bool(jnp.all(res.masks.W[1] == single.masks.W))
    assert np.isnan(float(single.random_pruning.test_accuracy))


def test_imp_rejects_bad_configuration():
    with pytest.raises(ValueError, match="rewind_step"):
        IMPConfig(steps=10, rewind_step=10)
    with pytest.raises(ValueError, match="rounds"):
        IMPConfig(steps=10, rounds=0)
    with pytest.raises(ValueError, match="target_sparsity"):
        imp(
            _params(),
            jax.random.key(0),
            _data(),
            target_sparsity=1.0,
            learning_rate=0.1,
            config=IMPConfig(steps=4),
        )


def test_pruned_per_neuron_counts_rows():
    W = jnp.asarray([[True, False, False], [True, True, True]])
    V = jnp.asarray([[False, True], [True, True]])
    incoming, outgoing = pruned_per_neuron(gflow.Params(W=W, b=jnp.ones(2, bool), V=V))
    assert incoming.tolist() == [2, 0] and outgoing.tolist() == [1, 0]
    assert kept_by_imp(np.asarray(W)).tolist() == [False, True]


# --------------------------------------------------------------------------- rank statistics


def test_average_ranks_and_spearman_by_hand():
    assert average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    # No ties: ρ = 1 − 6 Σ d² / (n(n²−1)); d = (−1, 1, −1, 1, 0), Σd² = 4, n = 5 → 0.8.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Ties: ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3, 4); Pearson of ranks = 4.5 / √(4.5·5) = 3/√10.
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / np.sqrt(10))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])


def test_permutation_p_value_matches_the_exact_permutation_distribution():
    # n = 4, perfect ranking: exactly 2 of the 4! = 24 orderings reach |ρ| = 1, so p = 1/12.
    res = spearman_test([1, 2, 3, 4], [10, 20, 30, 40], permutations=20000, seed=1)
    assert res.rho == pytest.approx(1.0)
    assert res.p_value == pytest.approx(1 / 12, abs=0.006)
    # n = 5, ρ = 0.8: count the orderings with |ρ| ≥ 0.8 exhaustively.
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    rhos = [spearman(x, p) for p in itertools.permutations(y)]
    exact = np.mean(np.abs(rhos) >= 0.8 - 1e-12)
    assert spearman_test(x, y, permutations=20000, seed=2).p_value == pytest.approx(exact, abs=0.01)


def test_auc_is_the_probability_that_a_positive_outranks_a_negative():
    assert mann_whitney_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(
        0.75
    )
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=30).astype(float)  # many ties
    pos = rng.random(30) < 0.4
    pairs = [(a, b) for a in s[pos] for b in s[~pos]]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert mann_whitney_auc(s, pos) == pytest.approx(brute)
    assert np.isnan(mann_whitney_auc([1.0, 2.0], [True, True]))


# --------------------------------------------------------------------------- scores


def test_scores_agree_with_the_recorded_observables_and_closed_forms():
    data, p0 = _data(), _params(sigma=0.05)
    obs = jax.jit(observe)(p0, data)
    scores = neuron_scores(p0, obs, data)
    # With κ from the current v, the t = 0 alignment is the observable cos_target.
    np.testing.assert_allclose(scores["cos_delta_t0_current_kappa"], obs.cos_target, rtol=1e-12)
    np.testing.assert_allclose(
        scores["unlocking_rate_early"],
        np.sqrt(2) * obs.target_strength * obs.cos_target,
        rtol=1e-12,
    )
    # SNIP against the closed-form gradient of docs/theory.md §1.
    g = jax.jit(gflow.closed_form_gradient)(p0, data.x, data.y)
    snip = jnp.abs(p0.W * g.W).sum(1) + jnp.abs(p0.b * g.b) + jnp.abs(p0.V * g.V).sum(1)
    np.testing.assert_allclose(jax.jit(snip_saliency)(p0, data), snip, rtol=1e-10)
    # κ̂ = sign Σ_s a_i(s) ỹ_s.
    a = np.maximum(np.asarray(data.x) @ np.asarray(p0.W).T, 0)
    drive = np.asarray(data.signed_labels) @ a
    kappa_hat = np.asarray(jax.jit(predicted_alignment)(p0, data))
    np.testing.assert_array_equal(kappa_hat[drive != 0], np.sign(drive[drive != 0]))
    q = score_quality(scores, np.exp(scores["cos_delta_t0"]), permutations=99)
    assert q["cos_delta_t0"].spearman_log_P.rho == pytest.approx(1.0)
    assert np.isnan(q["cos_delta_t0"].auc_kept)
