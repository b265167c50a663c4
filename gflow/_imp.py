"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019;
docs/theory.md §6).

Each round trains under the current mask, prunes globally (W and V pooled, biases never) the
alive weights of smallest |θ|, rewinds the survivors to their values at step k and retrains; R
rounds reach sparsity s, each pruning the fraction ``q = 1 − (1−s)^{1/R}`` of the remaining
weights. Controls: random pruning and random reinitialisation. Masks are `Params` of booleans,
so everything runs inside one jit and vmaps over seeds, sparsities or learning rates. Semantics
(open_lth's ``sparse_global``), integer counts and masked training: docs/numerics.md §4.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from ._network import Params, accuracy, init_params, loss
from ._observables import TrainingData
from ._sgd import SGDConfig, _batch_indices, check_hyperparameters, flow_time
from ._trajectory import NON_FINITE, OK, raise_if_failed


@dataclasses.dataclass(frozen=True)
class IMPConfig:
    """Static shape of an IMP run (one compilation per distinct config).

    Attributes:
        steps: optimiser steps of every training run (dense and each retraining).
        batch_size: B (``None``: full batch).
        rounds: R, pruning rounds (paper: 3).
        rewind_step: k, the step whose weights survivors are rewound to (0: initialisation).
    """

    steps: int
    batch_size: int | None = 4
    rounds: int = 3
    rewind_step: int = 0

    def __post_init__(self):
        SGDConfig(steps=self.steps, batch_size=self.batch_size)  # validates steps and batch_size
        if not (isinstance(self.rounds, (int, np.integer)) and self.rounds > 0):
            raise ValueError(f"rounds must be a positive integer; got {self.rounds!r}.")
        if not (
            isinstance(self.rewind_step, (int, np.integer)) and 0 <= self.rewind_step < self.steps
        ):
            raise ValueError(
                f"rewind_step must be an integer in [0, steps={self.steps}); got "
                f"{self.rewind_step!r}."
            )


def per_round_fraction(target_sparsity, rounds: int):
    """q = 1 − (1−s)^{1/R}: the fraction of the remaining weights each round prunes."""
    return 1.0 - (1.0 - target_sparsity) ** (1.0 / rounds)


def _check_sparsity(target_sparsity) -> None:
    if isinstance(target_sparsity, jax.core.Tracer):
        return
    s = np.asarray(target_sparsity, dtype=np.float64)
    if not np.all((s >= 0) & (s < 1)):
        raise ValueError(f"target_sparsity must lie in [0, 1); got {target_sparsity!r}.")


def pruned_counts(num_weights: int, target_sparsity, rounds: int) -> jax.Array:
    """Weights pruned after rounds 0..R: round(n·(1 − (1−s)^{r/R})), int32 ``[R+1]``.

    Evaluated in JAX's default float (float64 with x64 enabled), so it may be traced; the last
    entry is round(n·s) up to that precision.
    """
    dtype = jnp.result_type(float)
    r = jnp.arange(rounds + 1, dtype=dtype)
    s = jnp.asarray(target_sparsity, dtype)
    return jnp.round(num_weights * (1.0 - (1.0 - s) ** (r / rounds))).astype(jnp.int32)


def dense_mask(params: Params) -> Params:
    """A mask that keeps every weight (``True`` everywhere)."""
    return jax.tree.map(lambda a: jnp.ones(a.shape, bool), params)


def num_prunable(params: Params) -> int:
    """n = d·D + 2d: the entries of W and V."""
    return int(params.W.size + params.V.size)


def apply_mask(params: Any, mask: Params) -> Any:
    """θ ⊙ m (pruned entries become exactly 0)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def sparsity(mask: Params) -> jax.Array:
    """Fraction of the prunable weights (W and V) that are pruned."""
    pruned = jnp.sum(~mask.W) + jnp.sum(~mask.V)
    return pruned / (mask.W.size + mask.V.size)


@jax.jit
def magnitude_prune(params: Params, mask: Params, num_pruned) -> Params:
    """Global magnitude pruning over W and V up to ``num_pruned`` pruned weights in total.

    Among the weights still alive, the smallest |θ| go first; already pruned weights stay
    pruned (they rank below every live weight). Exactly ``num_pruned`` entries of the new mask
    are ``False`` whenever ``num_pruned`` ≥ the count already pruned. Biases are never pruned.
    Jittable; ``num_pruned`` may be traced.
    """
    flat = jnp.concatenate([jnp.abs(params.W).ravel(), jnp.abs(params.V).ravel()])
    alive = jnp.concatenate([mask.W.ravel(), mask.V.ravel()])
    score = jnp.where(alive, flat, -1.0)
    n = flat.shape[0]
    rank = (
        jnp.empty((n,), jnp.int32)
        .at[jnp.argsort(score, stable=True)]
        .set(jnp.arange(n, dtype=jnp.int32))
    )
    keep = rank >= num_pruned
    split = params.W.size
    return Params(
        W=keep[:split].reshape(params.W.shape), b=mask.b, V=keep[split:].reshape(params.V.shape)
    )


@jax.jit
def random_prune_like(key: jax.Array, mask: Params) -> Params:
    """Shuffle each tensor's mask: a random mask with the same per-tensor sparsity (W, V)."""
    kw, kv = jax.random.split(key)

    def shuffle(k, m):
        return jax.random.permutation(k, m.ravel()).reshape(m.shape)

    return Params(W=shuffle(kw, mask.W), b=mask.b, V=shuffle(kv, mask.V))


def _masked_steps(
    params,
    key,
    data: TrainingData,
    mask: Params,
    lr,
    beta,
    first_step: int,
    num_steps: int,
    batch_size,
    state=None,
):
    """``num_steps`` SGD steps from step ``first_step`` under ``mask``.

    ``state`` is the optax momentum to continue from (``None``: fresh, zero momentum).
    Returns ``(params, state)``.
    """
    optimizer = optax.sgd(learning_rate=lr, momentum=beta)
    n = data.x.shape[0]
    grad_fn = jax.grad(loss)
    params = apply_mask(params, mask)
    if state is None:
        state = optimizer.init(params)

    def step(carry, k):
        p, s = carry
        if batch_size is None:
            g = grad_fn(p, data.x, data.y)
        else:
            idx = _batch_indices(key, k, n, batch_size)
            g = grad_fn(p, data.x[idx], data.y[idx])
        g = apply_mask(g, mask)
        updates, s = optimizer.update(g, s, p)
        updates = apply_mask(updates, mask)
        return (apply_mask(optax.apply_updates(p, updates), mask), s), None

    if num_steps == 0:
        return params, state
    (params, state), _ = jax.lax.scan(step, (params, state), first_step + jnp.arange(num_steps))
    return params, state


def train_masked(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    mask: Params,
    *,
    learning_rate,
    momentum=0.0,
    steps: int,
    batch_size: int | None = 4,
    first_step: int = 0,
) -> Params:
    """SGD with momentum under a fixed mask: pruned weights start and stay exactly 0.

    Steps ``first_step .. first_step + steps − 1`` of the mini-batch schedule of `train_sgd`
    (same `_batch_indices`, same key → same batches); the optimiser starts with zero momentum.
    The mask is applied to the gradient, the optax update and the parameters each step.
    Returns the final parameters.
    """
    check_hyperparameters(learning_rate, momentum)
    return _train_masked(
        params0, key, data, mask, learning_rate, momentum, int(steps), batch_size, first_step
    )


@functools.partial(jax.jit, static_argnames=("steps", "batch_size"))
def _train_masked(params0, key, data, mask, learning_rate, momentum, steps, batch_size, first_step):
    dtype = params0.W.dtype
    params, _ = _masked_steps(
        params0,
        key,
        data,
        mask,
        jnp.asarray(learning_rate, dtype),
        jnp.asarray(momentum, dtype),
        first_step,
        steps,
        batch_size,
    )
    return params


class IMPResult(NamedTuple):
    """One IMP run; round 0 is the dense network. Leading axis ``[R+1]`` on per-round fields.

    Attributes:
        masks: `Params` of bools, the mask trained in each round (round 0: all True).
        final_params: `Params` at the end of each round's training.
        rewind_params: θ_k, the dense run's weights at the rewinding step (θ_0 for k = 0).
        sparsity: pruned fraction of W and V per round.
        num_pruned: pruned weight count per round (exact, `pruned_counts`).
        train_loss, train_accuracy, test_accuracy: per round, at the end of its training.
        random_pruning: `ControlResult` of the random-pruning branch at the final sparsity.
        random_reinit: `ControlResult` of the random-reinitialisation branch.
        rewind_time: flow time k·η/(1−β) of the rewinding point.
        status: `OK` or `NON_FINITE` (any run diverged).
    """

    masks: Params
    final_params: Params
    rewind_params: Params
    sparsity: jax.Array
    num_pruned: jax.Array
    train_loss: jax.Array
    train_accuracy: jax.Array
    test_accuracy: jax.Array
    random_pruning: ControlResult
    random_reinit: ControlResult
    rewind_time: jax.Array
    status: jax.Array


class ControlResult(NamedTuple):
    """A control branch: its mask, trained weights and metrics."""

    mask: Params
    final_params: Params
    train_loss: jax.Array
    train_accuracy: jax.Array
    test_accuracy: jax.Array


def _metrics(params: Params, data: TrainingData):
    test = (
        accuracy(params, data.x_test, data.y_test)
        if data.x_test.shape[0]
        else jnp.array(jnp.nan, data.x.dtype)
    )
    return loss(params, data.x, data.y), accuracy(params, data.x, data.y), test


def _where(condition, a, b):
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), a, b)


@functools.partial(jax.jit, static_argnames=("config", "controls"))
def _imp(
    params0,
    key,
    control_key,
    data,
    target_sparsity,
    learning_rate,
    momentum,
    reinit_sigma,
    config: IMPConfig,
    controls: bool,
):
    dtype = params0.W.dtype
    lr = jnp.asarray(learning_rate, dtype)
    beta = jnp.asarray(momentum, dtype)
    k, rounds = config.rewind_step, config.rounds
    batch_key = key
    shuffle_key, init_key = jax.random.split(control_key)
    counts = pruned_counts(params0.W.size + params0.V.size, target_sparsity, rounds)
    dense = dense_mask(params0)
    zero_momentum = optax.sgd(learning_rate=lr, momentum=beta).init(params0)

    # Steps 0..k−1 of the dense run (nothing when k = 0); its momentum carries into round 0.
    theta_k, state_k = _masked_steps(
        params0, batch_key, data, dense, lr, beta, 0, k, config.batch_size
    )
    width, dim = params0.W.shape
    if controls:
        fresh = init_params(init_key, width, dim, jnp.asarray(reinit_sigma, dtype), dtype=dtype)

    # Jobs 0..R are the rounds (0: dense), R+1 random pruning, R+2 random reinitialisation.
    # One scan over jobs keeps a single compiled training loop.
    def job(carry, r):
        trained_prev, imp_mask_prev = carry
        pruned = magnitude_prune(trained_prev, imp_mask_prev, counts[jnp.minimum(r, rounds)])
        imp_mask = _where(r == 0, dense, _where(r <= rounds, pruned, imp_mask_prev))
        if controls:  # static: without controls no random mask or fresh weights are traced
            mask = _where(r == rounds + 1, random_prune_like(shuffle_key, imp_mask_prev), imp_mask)
            start = _where(r == rounds + 2, fresh, theta_k)
        else:
            mask, start = imp_mask, theta_k
        state = _where(r == 0, state_k, zero_momentum)
        trained, _ = _masked_steps(
            start, batch_key, data, mask, lr, beta, k, config.steps - k, config.batch_size, state
        )
        carry = (_where(r <= rounds, trained, trained_prev), imp_mask)
        return carry, (mask, trained, _metrics(trained, data))

    num_jobs = rounds + 1 + (2 if controls else 0)
    _, (masks, finals, (train_loss, train_acc, test_acc)) = jax.lax.scan(
        job, (params0, dense), jnp.arange(num_jobs)
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(finals)]))

    def control(j):
        if not controls:
            nan = jnp.array(jnp.nan, dtype)
            return ControlResult(
                jax.tree.map(lambda m: m[rounds], masks), apply_mask(params0, dense), nan, nan, nan
            )
        pick = functools.partial(jax.tree.map, lambda a: a[j])
        return ControlResult(pick(masks), pick(finals), train_loss[j], train_acc[j], test_acc[j])

    imp_rounds = functools.partial(jax.tree.map, lambda a: a[: rounds + 1])
    round_masks = imp_rounds(masks)
    return IMPResult(
        masks=round_masks,
        final_params=imp_rounds(finals),
        rewind_params=theta_k,
        sparsity=jax.vmap(sparsity)(round_masks),
        num_pruned=counts,
        train_loss=train_loss[: rounds + 1],
        train_accuracy=train_acc[: rounds + 1],
        test_accuracy=test_acc[: rounds + 1],
        random_pruning=control(rounds + 1),
        random_reinit=control(rounds + 2),
        rewind_time=flow_time(jnp.asarray(k, dtype), lr, beta),
        status=jnp.where(finite, OK, NON_FINITE).astype(jnp.int32),
    )


def imp(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    *,
    target_sparsity,
    learning_rate,
    momentum=0.0,
    config: IMPConfig,
    reinit_sigma=None,
    control_key: jax.Array | None = None,
    controls: bool = True,
    throw: bool = True,
) -> IMPResult:
    """Iterative magnitude pruning with rewinding and its control branches (docs/numerics.md §4).

    Args:
        params0: initial dense `Params` θ_0.
        key: PRNG key of the mini-batch order, as in `train_sgd` (the dense round is the run
            ``train_sgd(params0, key, ...)`` would take).
        data: `TrainingData`.
        target_sparsity: s ∈ [0, 1) after ``config.rounds`` rounds (traced: vmappable).
        learning_rate, momentum: η > 0, β ∈ [0, 1) of SGD (traced).
        config: `IMPConfig` (steps, batch size, rounds, rewinding step).
        reinit_sigma: σ of the random re-initialisation control (default: the RMS of θ_0's
            W and V entries).
        control_key: PRNG key of the random mask and the re-initialisation (default
            ``fold_in(key, 1)``).
        controls: also run the random-pruning and random-reinitialisation branches.
        throw: raise `TrajectoryError` if a run diverged (not under vmap).

    Example:
        >>> import gflow
        >>> ds = gflow.load_dataset("xor", n_samples=40, seed=0)
        >>> data = gflow.training_data(ds)
        >>> p0 = gflow.init_params(jax.random.key(0), 8, ds.dim, 0.1)
        >>> res = imp(p0, jax.random.key(1), data, target_sparsity=0.5, learning_rate=0.05,
        ...           momentum=0.9, config=IMPConfig(steps=50, batch_size=4))
        >>> [int(c) for c in res.num_pruned]
        [0, 7, 12, 16]
    """
    _check_sparsity(target_sparsity)
    check_hyperparameters(learning_rate, momentum)
    if config.batch_size is not None and config.batch_size > data.x.shape[0]:
        raise ValueError(
            f"batch_size ({config.batch_size}) must not exceed the number of samples N "
            f"({data.x.shape[0]})."
        )
    if reinit_sigma is None:
        reinit_sigma = jnp.sqrt(
            jnp.mean(jnp.concatenate([params0.W.ravel(), params0.V.ravel()]) ** 2)
        )
    if control_key is None:
        control_key = jax.random.fold_in(key, 1)
    result = _imp(
        params0,
        key,
        control_key,
        data,
        target_sparsity,
        learning_rate,
        momentum,
        reinit_sigma,
        config,
        controls,
    )
    if throw:
        raise_if_failed(result)
    return result


def pruned_per_neuron(mask: Params) -> tuple[jax.Array, jax.Array]:
    """(pruned incoming weights, pruned outgoing weights) per neuron, ``[..., d]`` each.

    Works on NumPy or JAX masks (the array's own ``sum``), with any leading axes.
    """
    return (~mask.W).sum(axis=-1), (~mask.V).sum(axis=-1)
