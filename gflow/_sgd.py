"""Discrete training with optax: full-batch GD and mini-batch SGD with momentum (docs/theory.md §1).

Gradient descent with step η is the Euler scheme of the gradient flow; SGD with momentum β
follows the flow in expectation with flow time ``t = k·η/(1−β)`` after k steps. Every record
carries that time so that SGD and ODE trajectories can be laid over each other.

Steps are a ``lax.scan`` (records) of a ``lax.scan`` (steps between records); nothing loops in
Python. The learning rate, momentum, initial parameters and key are traced values: a sweep
over them reuses one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from ._network import PAPER, Model, Params, loss
from ._observables import TrainingData, check_labels, observe
from ._trajectory import NON_FINITE, OK, Trajectory, raise_if_failed


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """Static shape of a discrete run (one compilation per distinct config).

    Attributes:
        steps: optimiser steps k (must be a multiple of ``record_every``).
        record_every: observables are recorded at k = 0, r, 2r, ..., steps.
        batch_size: B; ``None`` means full batch (gradient descent, no shuffling).
            Mini-batches are drawn without replacement from a fresh permutation each epoch;
            the last N mod B samples of an epoch's permutation are skipped.
        snapshot_every: full parameters are kept every this many records (init and end
            always); ``None`` keeps only init and end.
    """

    steps: int
    record_every: int = 1
    batch_size: int | None = None
    snapshot_every: int | None = None

    def __post_init__(self):
        for name in ("steps", "record_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v > 0):
                raise ValueError(f"{name} must be a positive integer; got {v!r}.")
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})."
            )
        if self.batch_size is not None and not (
            isinstance(self.batch_size, (int, np.integer)) and self.batch_size > 0
        ):
            raise ValueError(
                "batch_size must be a positive integer or None (full batch); got "
                f"{self.batch_size!r}."
            )
        if self.snapshot_every is not None and not (
            isinstance(self.snapshot_every, int) and self.snapshot_every > 0
        ):
            raise ValueError(
                f"snapshot_every must be a positive integer or None; got {self.snapshot_every!r}."
            )

    @property
    def num_records(self) -> int:
        return self.steps // self.record_every + 1

    def snapshot_records(self) -> np.ndarray:
        """Indices of the records at which full parameters are kept."""
        last = self.num_records - 1
        every = self.snapshot_every or last
        return np.unique(np.concatenate([np.arange(0, last + 1, every), [last]]))


def check_hyperparameters(learning_rate, momentum) -> None:
    """Reject non-positive η and β outside [0, 1) when they are concrete numbers."""
    for name, value in (("learning_rate", learning_rate), ("momentum", momentum)):
        if isinstance(value, jax.core.Tracer):
            return
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise ValueError(f"{name} must be finite; got {value!r}.")
    if np.any(np.asarray(learning_rate) <= 0):
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")
    m = np.asarray(momentum)
    if np.any(m < 0) or np.any(m >= 1):
        raise ValueError(f"momentum must be in [0, 1); got {momentum!r}.")


def flow_time(step, learning_rate, momentum):
    """t = k·η/(1−β): the gradient-flow time SGD with momentum has covered after k steps."""
    return step * learning_rate / (1.0 - momentum)


def _batch_indices(key: jax.Array, step: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Indices of step k's mini-batch: a fresh permutation per epoch, sliced in order."""
    per_epoch = n // batch_size
    epoch, position = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)


@functools.partial(jax.jit, static_argnames=("config",))
def _train(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    learning_rate,
    momentum,
    config: SGDConfig,
    model: Model = PAPER,
) -> Trajectory:
    dtype = params0.W.dtype
    lr = jnp.asarray(learning_rate, dtype)
    beta = jnp.asarray(momentum, dtype)
    optimizer = optax.sgd(learning_rate=lr, momentum=beta)
    n = data.x.shape[0]
    grad_fn = jax.grad(functools.partial(loss, model=model))

    def step(carry, k):
        params, opt_state = carry
        if config.batch_size is None:
            grads = grad_fn(params, data.x, data.y)
        else:
            idx = _batch_indices(key, k, n, config.batch_size)
            grads = grad_fn(params, data.x[idx], data.y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    snap_records = jnp.asarray(config.snapshot_records())
    n_snap = snap_records.shape[0]

    def record(carry, j):
        params, opt_state, snaps = carry
        obs = observe(params, data, model)
        slot = jnp.searchsorted(snap_records, j)
        slot = jnp.minimum(slot, n_snap - 1)
        take = snap_records[slot] == j
        snaps = jax.tree.map(
            lambda buf, p: buf.at[slot].set(jnp.where(take, p, buf[slot])), snaps, params
        )
        ks = j * config.record_every + jnp.arange(config.record_every)
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), ks)
        return (params, opt_state, snaps), obs

    snaps0 = jax.tree.map(lambda p: jnp.zeros((n_snap,) + p.shape, p.dtype), params0)
    carry = (params0, optimizer.init(params0), snaps0)
    (params, _, snaps), obs = jax.lax.scan(record, carry, jnp.arange(config.num_records - 1))
    params = cast(Params, params)  # optax types the carry as its own generic Params
    # The last record (k = steps) has no steps after it.
    last = observe(params, data, model)
    obs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), obs, last)
    snaps = jax.tree.map(lambda buf, p: buf.at[-1].set(p), snaps, params)

    steps = jnp.arange(config.num_records) * config.record_every
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))
    return Trajectory(
        t=flow_time(steps.astype(dtype), lr, beta),
        observables=obs,
        snapshot_t=flow_time((snap_records * config.record_every).astype(dtype), lr, beta),
        snapshots=snaps,
        status=jnp.where(finite, OK, NON_FINITE).astype(jnp.int32),
        num_steps=jnp.asarray(config.steps, jnp.int32),
    )


def train_sgd(
    params0: Params,
    key: jax.Array,
    data: TrainingData,
    *,
    learning_rate,
    momentum=0.0,
    config: SGDConfig,
    throw: bool = True,
    model: Model = PAPER,
) -> Trajectory:
    """Mini-batch SGD (``config.batch_size = B``) or full-batch GD (``B = None``) with momentum.

    ``optax.sgd(η, momentum=β)``: m ← g + β m, θ ← θ − η m. Records carry flow time
    ``t = k·η/(1−β)``.

    Args:
        params0: initial `Params`.
        key: PRNG key for the mini-batch order (unused for GD).
        data: `TrainingData`.
        learning_rate: η > 0 (traced: sweeping it does not recompile).
        momentum: β in [0, 1).
        config: `SGDConfig` (steps, record interval, batch size, snapshots).
        throw: raise `TrajectoryError` if the run diverged (not under vmap).
        model: the `Model` whose loss is descended (default the paper's; see `gradient_flow`).
    """
    check_hyperparameters(learning_rate, momentum)
    check_labels(data, params0)
    if config.batch_size is not None and config.batch_size > data.x.shape[0]:
        raise ValueError(
            f"batch_size ({config.batch_size}) must not exceed the number of samples N "
            f"({data.x.shape[0]})."
        )
    traj = _train(params0, key, data, learning_rate, momentum, config, model)
    return raise_if_failed(traj) if throw else traj


def train_gd(
    params0: Params,
    data: TrainingData,
    *,
    learning_rate,
    momentum=0.0,
    config: SGDConfig,
    throw: bool = True,
    model: Model = PAPER,
) -> Trajectory:
    """Full-batch gradient descent: `train_sgd` with ``batch_size=None`` (the flow's Euler
    scheme)."""
    if config.batch_size is not None:
        config = dataclasses.replace(config, batch_size=None)
    return train_sgd(
        params0,
        jax.random.key(0),
        data,
        learning_rate=learning_rate,
        momentum=momentum,
        config=config,
        throw=throw,
        model=model,
    )
