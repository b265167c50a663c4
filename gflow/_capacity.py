"""Effective capacity: aligned-neuron clusters, merging and norm pruning (docs/theory.md §6).

Neurons of one outgoing alignment κ are clustered by complete linkage on the cosine similarity
of their augmented vectors ``w̃_i = (w_i, b_i)`` at threshold τ, so every pair in a cluster has
cos ≥ τ. Cluster C merges into one neuron ``û_C = Σ_{j∈C} w̃_j / ‖Σ_{j∈C} w̃_j‖``,
``v_C = Σ_{j∈C} ‖w̃_j‖ v_j``, which changes the logits by at most

    ‖x̃‖ Σ_C Σ_{j∈C} ‖w̃_j‖ ‖v_j‖ ‖ŵ̃_j − û_C‖,        ‖ŵ̃_j − û_C‖ ≤ √(2(1−τ)).

Norm pruning masks to zero the neurons of smallest ``P_i = ‖w_i‖‖v_i‖``. Complete linkage, the
bound, and the ``"contribution"`` weighting that cancels the merge's first-order error:
docs/theory.md §6.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._network import Params, accuracy, logits
from ._observables import TrainingData, class_alignment, safe_norm

# --------------------------------------------------------------------------- clusters


class Clusters(NamedTuple):
    """A partition of the hidden neurons into clusters of mutually aligned neurons.

    Attributes:
        labels: ``[d]`` int, cluster of each neuron, numbered 0..count−1 in the order of each
            cluster's smallest neuron index (so the numbering does not depend on how the
            clustering ran).
        count: number of clusters, the effective capacity.
        kappa: ``[d]`` outgoing alignment κ_i ∈ {+1, −1} used to separate the clusters.
        threshold: τ, the cosine similarity every pair within a cluster reaches.
    """

    labels: np.ndarray
    count: int
    kappa: np.ndarray
    threshold: float

    def sizes(self) -> np.ndarray:
        """Number of neurons in each cluster, ``[count]``."""
        return np.bincount(self.labels, minlength=self.count)


def augmented_weights(params: Params) -> jax.Array:
    """w̃_i = (w_i, b_i), shape ``[d, D+1]``; z_i(x) = w̃_i·(x, 1)."""
    return jnp.concatenate([params.W, params.b[:, None]], axis=1)


def augmented_inputs(x: jax.Array) -> jax.Array:
    """x̃ = (x, 1), shape ``[N, D+1]``."""
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


def _check_threshold(threshold) -> float:
    t = float(threshold)
    if not -1.0 <= t <= 1.0:
        raise ValueError(
            f"threshold τ is a cosine similarity and must lie in [-1, 1]; got {threshold!r}."
        )
    return t


def _complete_linkage(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Agglomerative complete linkage on a similarity matrix; returns a representative per row.

    Ties in the best similarity are broken by the smallest row, then column, index, so the
    result is a function of the matrix alone. Cluster similarity is the minimum over member
    pairs (Lance–Williams update for complete linkage: min of the two merged rows).
    """
    d = similarity.shape[0]
    sim = similarity.astype(np.float64, copy=True)
    np.fill_diagonal(sim, -np.inf)
    owner = np.arange(d)
    alive = np.ones(d, dtype=bool)
    while True:
        flat = int(np.argmax(sim))  # first maximum in row-major order: smallest (i, j)
        i, j = divmod(flat, d)
        if not sim[i, j] >= threshold:
            break
        a, b = min(i, j), max(i, j)
        merged = np.minimum(sim[a], sim[b])
        sim[a, :] = merged
        sim[:, a] = merged
        sim[a, a] = -np.inf
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
        alive[b] = False
        owner[owner == b] = a
    return owner


def _canonical_order(augmented: np.ndarray, V: np.ndarray) -> np.ndarray:
    """A neuron order that depends only on the neurons' values (lexicographic in (w̃, v))."""
    keys = np.concatenate([augmented, V], axis=1)
    return np.lexsort(keys.T[::-1])


def neuron_clusters(params: Params, *, threshold: float = 0.95) -> Clusters:
    """Clusters of neurons with the same κ whose augmented vectors pairwise reach cos ≥ τ.

    Complete linkage (docs/theory.md §6): every pair inside a cluster has
    cos(w̃_i, w̃_j) ≥ τ, so merging is covered by the bound of `merge_logit_bound`. Neurons
    with w̃_i = 0 are singletons. The result is deterministic and does not depend on the order
    of the neurons: they are processed in a canonical order (lexicographic in their values),
    and labels are numbered by each cluster's smallest original index.

    Runs outside jit (NumPy, O(d³) time, O(d²) memory).

    Args:
        params: the network.
        threshold: τ ∈ [−1, 1] (paper: 0.95).

    Example:
        >>> import gflow
        >>> p = gflow.init_params(jax.random.key(0), 6, 3, 1.0)
        >>> p = p._replace(W=p.W.at[1].set(2 * p.W[0]), V=p.V.at[1].set(p.V[0]))
        >>> c = neuron_clusters(p, threshold=0.99)
        >>> int(c.labels[0]) == int(c.labels[1])
        True
    """
    tau = _check_threshold(threshold)
    aug = np.asarray(augmented_weights(params), dtype=np.float64)
    V = np.asarray(params.V, dtype=np.float64)
    kappa = np.asarray(class_alignment(params.V))
    order = _canonical_order(aug, V)
    unit = _unit_rows(aug[order])
    sim = unit @ unit.T
    k = kappa[order]
    zero = np.linalg.norm(aug[order], axis=1) == 0
    sim[k[:, None] != k[None, :]] = -np.inf  # never join neurons of opposite alignment
    sim[zero, :] = -np.inf
    sim[:, zero] = -np.inf
    owner_sorted = _complete_linkage(sim, tau)
    owner = np.empty_like(owner_sorted)
    owner[order] = order[owner_sorted]  # representative, as an original index
    labels = _relabel_by_first_member(owner)
    return Clusters(
        labels=labels, count=int(labels.max()) + 1, kappa=kappa.astype(np.int8), threshold=tau
    )


def _relabel_by_first_member(owner: np.ndarray) -> np.ndarray:
    """Map arbitrary cluster ids to 0..K−1, numbered by each cluster's smallest index."""
    _, first, inverse = np.unique(owner, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse].astype(np.int32)


def count_clusters(params: Params, *, threshold: float = 0.95) -> int:
    """Effective capacity: the number of clusters of `neuron_clusters`."""
    return neuron_clusters(params, threshold=threshold).count


# --------------------------------------------------------------------------- merging


WEIGHTINGS = ("norm", "contribution")


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}.")


def merged_directions(params: Params, labels: jax.Array, *, weighting: str = "norm") -> jax.Array:
    """The merged neuron's augmented vector for slot C = 0..d−1, ``[d, D+1]`` (0 for empty slots).

    ``"norm"`` (docs/theory.md §6): û_C = Σ_{j∈C} w̃_j / ‖Σ_{j∈C} w̃_j‖, the normalised
    ‖w̃_j‖-weighted mean of the unit vectors ŵ̃_j.
    ``"contribution"``: u_C = Σ_j P̃_j ŵ̃_j / Σ_j P̃_j with P̃_j = ‖w̃_j‖‖v_j‖, not normalised
    (docs/theory.md §6: cancels the merge's first-order error).
    """
    _check_weighting(weighting)
    d = params.W.shape[0]
    aug = augmented_weights(params)
    if weighting == "norm":
        summed = jax.ops.segment_sum(aug, labels, num_segments=d)
        n = safe_norm(summed)
        return summed / jnp.where(n > 0, n, 1.0)[:, None]
    norms = safe_norm(aug)
    unit = aug / jnp.where(norms > 0, norms, 1.0)[:, None]
    weight = norms * safe_norm(params.V)
    total = jax.ops.segment_sum(weight, labels, num_segments=d)
    summed = jax.ops.segment_sum(weight[:, None] * unit, labels, num_segments=d)
    return summed / jnp.where(total > 0, total, 1.0)[:, None]


def merge_neurons(
    params: Params, labels: jax.Array, *, rebalance: bool = False, weighting: str = "norm"
) -> Params:
    """The merged network, same shape as ``params``: slot C holds cluster C, other slots are 0.

        w̃_C = û_C (`merged_directions`),  v_C = Σ_{j∈C} ‖w̃_j‖ v_j        (docs/theory.md §6)

    With ``rebalance`` the pair is rescaled to ‖w̃_C‖ = ‖v_C‖ (relu's homogeneity leaves the
    function unchanged). Jittable: ``labels`` ``[d]`` may be traced; values must lie in [0, d).
    Use `compact` outside jit to drop the empty slots.
    """
    d = params.W.shape[0]
    u = merged_directions(params, labels, weighting=weighting)
    scale = safe_norm(augmented_weights(params))
    v = jax.ops.segment_sum(scale[:, None] * params.V, labels, num_segments=d)
    if rebalance:
        nu, nv = safe_norm(u), safe_norm(v)
        ok = (nu > 0) & (nv > 0)
        s = jnp.where(ok, jnp.sqrt(jnp.where(ok, nv, 1.0) / jnp.where(ok, nu, 1.0)), 1.0)
        u = u * s[:, None]
        v = v / s[:, None]
    return Params(W=u[:, :-1], b=u[:, -1], V=v)


def compact(params: Params, count: int) -> Params:
    """Keep the first ``count`` neurons (the occupied slots of `merge_neurons`); outside jit."""
    return jax.tree.map(lambda a: a[:count], params)


def merged_network(
    params: Params, clusters: Clusters, *, rebalance: bool = False, weighting: str = "norm"
) -> Params:
    """The smaller network with one neuron per cluster, width ``clusters.count``."""
    merged = merge_neurons(
        params, jnp.asarray(clusters.labels), rebalance=rebalance, weighting=weighting
    )
    return compact(merged, clusters.count)


def _member_gaps(params: Params, labels: jax.Array, weighting: str) -> jax.Array:
    """ŵ̃_j − û_C(j) for every neuron, ``[d, D+1]`` (0 for w̃_j = 0, which contributes nothing)."""
    aug = augmented_weights(params)
    norms = safe_norm(aug)
    unit = aug / jnp.where(norms > 0, norms, 1.0)[:, None]
    gap = unit - merged_directions(params, labels, weighting=weighting)[labels]
    return jnp.where((norms > 0)[:, None], gap, 0.0)


def merge_logit_bound(
    params: Params,
    labels: jax.Array,
    x: jax.Array,
    *,
    per_sample_direction: bool = True,
    weighting: str = "norm",
) -> jax.Array:
    """Upper bound on ‖o_merged(x_s) − o(x_s)‖₂ for every sample, ``[N]`` (docs/theory.md §6).

    With ``per_sample_direction`` (default) the bound is Σ_j ‖w̃_j‖‖v_j‖ |(ŵ̃_j − û_C(j))·x̃_s|;
    otherwise the Cauchy–Schwarz form ‖x̃_s‖ Σ_j ‖w̃_j‖‖v_j‖ ‖ŵ̃_j − û_C(j)‖, which is larger.
    """
    gap = _member_gaps(params, labels, weighting)
    weight = safe_norm(augmented_weights(params)) * safe_norm(params.V)  # ‖w̃_j‖ ‖v_j‖
    xt = augmented_inputs(x)
    if per_sample_direction:
        return jnp.abs(xt @ gap.T) @ weight
    return safe_norm(xt) * jnp.sum(weight * safe_norm(gap))


class MergeReport(NamedTuple):
    """What merging at τ did to a network (docs/theory.md §6, Appendix G).

    Attributes:
        width: d, neurons before merging.  clusters: neurons after merging.
        threshold: τ.
        train_accuracy, train_accuracy_merged, test_accuracy, test_accuracy_merged: accuracies
            before and after merging (test: NaN without a held-out split).
        max_logit_change: max over train and test samples of ‖o_merged − o‖₂.
        max_bound: max over samples of the per-sample bound of `merge_logit_bound`.
        bound_holds: every sample's change is within its own bound (up to rounding).
        max_angle_gap: max_j ‖ŵ̃_j − û_C(j)‖, at most √(2(1−τ)) by complete linkage.
        logit_scale: max over samples of ‖o(x)‖₂, to read the change relatively.
        weighting: how the merged direction was formed (`merged_directions`).
    """

    width: int
    clusters: int
    threshold: float
    train_accuracy: float
    train_accuracy_merged: float
    test_accuracy: float
    test_accuracy_merged: float
    max_logit_change: float
    max_bound: float
    bound_holds: bool
    max_angle_gap: float
    logit_scale: float
    weighting: str = "norm"


def _accuracy_or_nan(params: Params, x, y) -> jax.Array:
    return accuracy(params, x, y) if x.shape[0] else jnp.array(jnp.nan, x.dtype)


def _merge_metrics(
    params: Params, labels: jax.Array, data: TrainingData, rebalance: bool, weighting: str
) -> dict:
    """Everything `merge_report` measures, on the same-shape merged network (empty slots of
    `merge_neurons` contribute exactly 0 to the logits)."""
    merged = merge_neurons(params, labels, rebalance=rebalance, weighting=weighting)
    x = jnp.concatenate([data.x, data.x_test], axis=0)
    change = safe_norm(logits(merged, x) - logits(params, x))
    bound = merge_logit_bound(params, labels, x, weighting=weighting)
    gap = safe_norm(_member_gaps(params, labels, weighting))
    # Rounding: each side is a sum of d terms of size up to ‖w̃_j‖‖v_j‖‖x̃‖.
    eps = 64 * jnp.finfo(x.dtype).eps
    norms = safe_norm(augmented_weights(params))
    slack = eps * safe_norm(augmented_inputs(x)) * jnp.sum(norms * safe_norm(params.V))
    return {
        "train_accuracy": accuracy(params, data.x, data.y),
        "train_accuracy_merged": accuracy(merged, data.x, data.y),
        "test_accuracy": _accuracy_or_nan(params, data.x_test, data.y_test),
        "test_accuracy_merged": _accuracy_or_nan(merged, data.x_test, data.y_test),
        "max_logit_change": jnp.max(change),
        "max_bound": jnp.max(bound),
        "bound_holds": jnp.all(change <= bound + slack),
        "max_angle_gap": jnp.max(gap),
        "logit_scale": jnp.max(safe_norm(logits(params, x))),
    }


@functools.partial(jax.jit, static_argnames=("rebalance",))
def _merge_metrics_all(
    params: Params, labels: jax.Array, data: TrainingData, rebalance: bool
) -> dict:
    """`_merge_metrics` for every weighting in one compilation per shape."""
    return {w: _merge_metrics(params, labels, data, rebalance, w) for w in WEIGHTINGS}


def merge_report(
    params: Params,
    data: TrainingData,
    *,
    threshold: float = 0.95,
    rebalance: bool = False,
    weighting: str = "norm",
    clusters: Clusters | None = None,
) -> MergeReport:
    """Cluster at τ (or use the given ``clusters``), merge, and compare the two networks on the
    train and test samples.

    Example:
        >>> import gflow
        >>> data = gflow.training_data(gflow.load_dataset("xor", n_samples=40, seed=0))
        >>> p = gflow.init_params(jax.random.key(0), 8, 2, 0.5)
        >>> r = merge_report(p, data, threshold=0.95)
        >>> r.bound_holds, r.clusters <= r.width
        (True, True)
    """
    _check_weighting(weighting)
    if clusters is None:
        clusters = neuron_clusters(params, threshold=threshold)
    m = _merge_metrics_all(params, jnp.asarray(clusters.labels), data, rebalance)[weighting]
    return MergeReport(
        width=int(params.W.shape[0]),
        clusters=clusters.count,
        threshold=clusters.threshold,
        train_accuracy=float(m["train_accuracy"]),
        train_accuracy_merged=float(m["train_accuracy_merged"]),
        test_accuracy=float(m["test_accuracy"]),
        test_accuracy_merged=float(m["test_accuracy_merged"]),
        max_logit_change=float(m["max_logit_change"]),
        max_bound=float(m["max_bound"]),
        bound_holds=bool(m["bound_holds"]),
        max_angle_gap=float(m["max_angle_gap"]),
        logit_scale=float(m["logit_scale"]),
        weighting=weighting,
    )


# --------------------------------------------------------------------------- norm pruning


def _check_fraction(fraction) -> None:
    if isinstance(fraction, Tracer):
        return
    f = np.asarray(fraction, dtype=np.float64)
    if not np.all((f >= 0) & (f <= 1)):
        raise ValueError(f"fraction of neurons to prune must lie in [0, 1]; got {fraction!r}.")


def norm_pruning_mask(P: jax.Array, *, fraction=None, threshold=None) -> jax.Array:
    """Neurons kept by norm pruning, bool ``[d]`` (docs/theory.md §6).

    Exactly one of:
        fraction: remove the round(fraction·d) neurons with the smallest P_i (ties: the lower
            index goes first); jittable, ``fraction`` may be traced.
        threshold: remove every neuron with P_i < threshold.
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("norm pruning needs exactly one of fraction= or threshold=.")
    if threshold is not None:
        return P >= threshold
    _check_fraction(fraction)
    d = P.shape[0]
    removed = jnp.round(jnp.asarray(fraction, P.dtype) * d)
    rank = (
        jnp.empty((d,), jnp.int32)
        .at[jnp.argsort(P, stable=True)]
        .set(jnp.arange(d, dtype=jnp.int32))
    )
    return rank >= removed


def prune_neurons(params: Params, keep: jax.Array) -> Params:
    """Zero the incoming, bias and outgoing weights of the neurons with ``keep = False``."""
    k = keep.astype(params.W.dtype)
    return Params(W=params.W * k[:, None], b=params.b * k, V=params.V * k[:, None])


class PruningCurve(NamedTuple):
    """Accuracy against the fraction of neurons removed by norm pruning (``[F]`` each)."""

    fraction: np.ndarray
    neurons_kept: np.ndarray
    train_accuracy: np.ndarray
    test_accuracy: np.ndarray


@jax.jit
def _pruning_accuracies(params: Params, data: TrainingData, fractions: jax.Array):
    P = safe_norm(params.W) * safe_norm(params.V)

    def one(f):
        keep = norm_pruning_mask(P, fraction=f)
        pruned = prune_neurons(params, keep)
        return (
            jnp.sum(keep),
            accuracy(pruned, data.x, data.y),
            _accuracy_or_nan(pruned, data.x_test, data.y_test),
        )

    return jax.vmap(one)(fractions)


def norm_pruning_curve(params: Params, data: TrainingData, fractions) -> PruningCurve:
    """Train/test accuracy after removing each fraction of the lowest-P_i neurons
    (docs/theory.md §6)."""
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    _check_fraction(fractions)
    kept, train, test = _pruning_accuracies(params, data, jnp.asarray(fractions, params.W.dtype))
    return PruningCurve(
        fraction=fractions,
        neurons_kept=np.asarray(kept),
        train_accuracy=np.asarray(train, dtype=np.float64),
        test_accuracy=np.asarray(test, dtype=np.float64),
    )


def load_network_npz(path, dim: int, dtype) -> Params:
    """`Params` from an npz holding one network: ``W [d, D]``, ``b [d]``, ``V [d, 2]``.

    Raises ``ValueError`` naming the file and what is wrong (missing, missing arrays, a chunk's
    stacked ``[runs, ...]`` weights, shapes that do not form a network, D unlike the data's).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"params file {path}: file not found")
    with np.load(p) as z:
        missing = [k for k in ("W", "b", "V") if k not in z.files]
        if missing:
            raise ValueError(
                f"params file {path}: missing arrays {missing} (need W [d, D], b [d], "
                f"V [d, 2]); has {z.files}"
            )
        W, b, V = (np.asarray(z[k]) for k in ("W", "b", "V"))
    if W.ndim == 3 and b.ndim == 2 and V.ndim == 3:
        raise ValueError(
            f"params file {path}: holds the stacked weights of {W.shape[0]} runs (a chunk of a "
            "run folder); take one run with --run DIR --point P --seed S "
            "(gflow.load_run(DIR).params_of(point, seed))"
        )
    if W.ndim != 2 or b.shape != (W.shape[0],) or V.shape != (W.shape[0], 2):
        raise ValueError(
            f"params file {path}: shapes W {W.shape}, b {b.shape}, V {V.shape} do not form a "
            "network (need W [d, D], b [d], V [d, 2])"
        )
    if W.shape[1] != dim:
        raise ValueError(
            f"params file {path}: W has {W.shape[1]} inputs but the dataset has D = {dim}"
        )
    return Params(W=jnp.asarray(W, dtype), b=jnp.asarray(b, dtype), V=jnp.asarray(V, dtype))


def capacity_report(
    params: Params,
    data: TrainingData,
    *,
    tau: float,
    rebalance: bool,
    fractions,
    weighting: str = "norm",
) -> dict:
    """Merging at τ (`merge_report`) and the norm-pruning curve (`norm_pruning_curve`) as one
    JSON-ready dict (non-finite numbers as None): what ``gflow capacity`` prints."""
    m = merge_report(params, data, threshold=tau, rebalance=rebalance, weighting=weighting)
    curve = norm_pruning_curve(params, data, fractions)
    return {
        "merge": {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in m._asdict().items()
        },
        "norm_pruning": [
            {
                "fraction": float(f),
                "neurons_kept": int(k),
                "train_accuracy": float(a),
                "test_accuracy": float(t) if math.isfinite(t) else None,
            }
            for f, k, a, t in zip(
                curve.fraction, curve.neurons_kept, curve.train_accuracy, curve.test_accuracy
            )
        ],
    }
