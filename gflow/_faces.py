"""Faces of the gate arrangement and the stable faces of the projected target map
(docs/theory.md §3.1, §8).

A face ``(g, S)`` holds the directions active on g, on their boundary on S and inactive on the
other samples (``S = ∅``: the open cells). A neuron in it moves along the projected target

    λ* = argmin_{λ ∈ [0,1]^S} ‖S(g) + Σ_{s∈S} λ_s ỹ_s x_s‖²,
    P_κ(g, S) = κ (S(g) + Σ_{s∈S} λ*_s ỹ_s x_s),         S(g) = Σ_{s∈g} ỹ_s x_s,      (3.1)

problem (3.1) of docs/theory.md. The face is stable for κ iff (a) every s ∈ S attracts, (b)
every λ*_s lies strictly inside (0, 1), (c) P lies in the face's closed cone; the face map Φ_κ
fixes exactly the stable faces. Derivation, tolerances, the face map and its capacity K:
docs/theory.md §3.1. All functions are pure and jittable (``capacity`` static); rows are faces:
``active`` and ``sliding`` are ``bool [M, N]``, ``kappa`` is ±1 per row or one scalar.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._observables import TrainingData
from ._sliding import box_qp

# K, the most candidates of one face: the sliding solver's default; compile time grows with K.
DEFAULT_CAPACITY = 16
_HIGHEST = jax.lax.Precision.HIGHEST


def face_inputs(data: TrainingData, *, bias: bool = False) -> jax.Array:
    """The inputs the faces live in: x_s ``[N, D]``, or x̃_s = (x_s, 1) ``[N, D+1]`` with ``bias``
    (docs/theory.md §1, §3: with a trained bias the cones are those of θ = (w, b))."""
    x = data.x
    if not bias:
        return x
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


def attracting(kappa: ArrayLike, signed_labels: ArrayLike) -> jax.Array:
    """``κ ỹ_s = −1``: sample s's boundary attracts a neuron of alignment κ (c_is > 0,
    docs/theory.md §8), ``bool [M, N]`` for ``kappa [M]`` (or a scalar: ``[1, N]``)."""
    kappa = jnp.atleast_1d(jnp.asarray(kappa))
    return kappa[:, None] * jnp.asarray(signed_labels)[None, :] < 0


def boundary_tolerance(target: jax.Array, x: jax.Array, capacity: int) -> jax.Array:
    """``τ_s = (D + K + 2) ε ‖P‖ ‖x_s‖`` ``[M, N]``: the rounding bound γ_{D+K} of ``P·x_s``
    (D products, and the K sliding terms that cancel on the boundary); within it a sample counts
    as on its boundary (docs/theory.md §3.1)."""
    n_terms = x.shape[1] + capacity + 2
    eps = jnp.finfo(x.dtype).eps
    norm_p = jnp.sqrt(jnp.sum(target * target, axis=1))
    norm_x = jnp.sqrt(jnp.sum(x * x, axis=1))
    return n_terms * eps * norm_p[:, None] * norm_x[None, :]


class FaceProjection(NamedTuple):
    """Problem (3.1) of each face (docs/theory.md §3.1).

    Attributes:
        target: ``[M, D]`` the projected target P_κ(g, S) (not normalised: the velocity up to one
            positive factor).
        multipliers: ``[M, K]`` λ* of the sliding samples ``index`` (0 in unused slots).
        index: ``int [M, K]`` the samples of S, valid slots first.
        valid: ``bool [M, K]`` which slots hold a sample of S.
        interior: ``bool [M, K]`` λ* strictly inside (0, 1) (a valid slot that slides).
        overflow: ``bool [M]`` S had more than K samples (the rest were left out).
        violation: ``[M]`` the QP's largest scaled KKT violation (~ε when solved).
    """

    target: jax.Array
    multipliers: jax.Array
    index: jax.Array
    valid: jax.Array
    interior: jax.Array
    overflow: jax.Array
    violation: jax.Array


def _rows(kappa: ArrayLike, m: int, dtype) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(kappa), (m,)).astype(dtype)


def _solve_faces(base, index, valid, kappa, x, signed_labels) -> FaceProjection:
    """(3.1) for active samples ``base`` and the samples ``index`` (``valid`` slots) on their
    boundary."""
    dtype = x.dtype
    m, k = index.shape
    ytil = jnp.asarray(signed_labels, dtype)
    total = jnp.matmul(base.astype(dtype) * ytil[None, :], x, precision=_HIGHEST)  # S(g) [M, D]
    xk = x[index]  # [M, K, D]
    yk = jnp.where(valid, ytil[index], 0.0)
    gram = jnp.einsum("mkd,mld->mkl", xk, xk, precision=_HIGHEST)
    both = valid[:, :, None] & valid[:, None, :]
    qp_m = jnp.where(both, yk[:, :, None] * yk[:, None, :] * gram, jnp.eye(k, dtype=dtype))
    qp_q = jnp.where(valid, yk * jnp.einsum("mkd,md->mk", xk, total, precision=_HIGHEST), 1.0)
    lam, free, violation = jax.vmap(box_qp)(qp_m, qp_q, valid)
    lam = jnp.where(valid, lam, 0.0)
    velocity = total + jnp.einsum("mk,mkd->md", lam * yk, xk, precision=_HIGHEST)
    target = _rows(kappa, m, dtype)[:, None] * velocity
    return FaceProjection(
        target=target,
        multipliers=lam,
        index=index,
        valid=valid,
        # box_qp's working set can hold a variable at a bound (λ = 0 when q = 0): not sliding.
        interior=free & valid & (lam > 0) & (lam < 1),
        overflow=jnp.zeros((m,), bool),
        violation=jnp.where(jnp.any(valid, axis=1), violation, 0.0),
    )


def _slots(score: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The ``capacity`` samples of highest finite ``score`` per row: ``(index, valid)``."""
    k = min(capacity, score.shape[1])
    best, index = jax.lax.top_k(score, k)
    return index, jnp.isfinite(best)


@functools.partial(jax.jit, static_argnames=("capacity",))
def project_targets(
    active: ArrayLike,
    sliding: ArrayLike,
    kappa: ArrayLike,
    x: jax.Array,
    signed_labels: ArrayLike,
    *,
    capacity: int = DEFAULT_CAPACITY,
) -> FaceProjection:
    """The projected target ``P_κ(g, S)`` of each face, eq. (3.1) (docs/theory.md §3.1, §8).

    Args:
        active, sliding: ``bool [M, N]`` g and S (a sample in both counts as sliding).
        kappa: ±1, ``[M]`` or a scalar.
        x: ``[N, D]`` inputs (`face_inputs`). signed_labels: ``[N]`` ỹ_s = ±1.
        capacity: K, the most sliding samples per face.

    Example:
        >>> x = jnp.array([[1.0, 0.0], [0.5, 1.0]]); y = jnp.array([1.0, -1.0])
        >>> p = project_targets(jnp.array([[True, False]]), jnp.array([[False, True]]), 1, x, y)
        >>> [round(float(v), 6) for v in p.target[0]], round(float(p.multipliers[0, 0]), 6)
        ([0.8, -0.4], 0.4)
    """
    active = jnp.asarray(active, bool)
    sliding = jnp.asarray(sliding, bool)
    dtype = x.dtype
    index, valid = _slots(jnp.where(sliding, jnp.ones((), dtype), -jnp.inf), capacity)
    proj = _solve_faces(active & ~sliding, index, valid, kappa, x, signed_labels)
    return proj._replace(overflow=jnp.sum(sliding, axis=1) > index.shape[1])


class FaceTest(NamedTuple):
    """The stable-face criterion (a)–(c) of docs/theory.md §3.1, per face.

    Attributes:
        stable: ``bool [M]`` (a), (b) and (c) hold and S fits the capacity.
        attracting: ``bool [M]`` (a): every sliding sample attracts (κ ỹ_s = −1).
        interior: ``bool [M]`` (b): every λ*_s is strictly inside (0, 1).
        in_cone: ``bool [M]`` (c): P lies in the face's closed cone (within τ_s).
        projection: the `FaceProjection` of the faces (S less its repelling samples).
    """

    stable: jax.Array
    attracting: jax.Array
    interior: jax.Array
    in_cone: jax.Array
    projection: FaceProjection


class FaceStep(NamedTuple):
    """One step of the face map Φ_κ (docs/theory.md §3.1), and the criterion at the face it starts
    from.

    Attributes:
        active, sliding: ``bool [M, N]`` the image face (g', S').
        overflow: ``bool [M]`` more than K candidates (the nearest K were kept), or S larger than K.
        candidates: ``int [M]`` how many candidates the step had.
        test: the `FaceTest` of the starting face (g, S).
    """

    active: jax.Array
    sliding: jax.Array
    overflow: jax.Array
    candidates: jax.Array
    test: FaceTest


@functools.partial(jax.jit, static_argnames=("capacity",))
def face_step(
    active: ArrayLike,
    sliding: ArrayLike,
    kappa: ArrayLike,
    x: jax.Array,
    signed_labels: ArrayLike,
    *,
    capacity: int = DEFAULT_CAPACITY,
) -> FaceStep:
    """One step of the face map ``Φ_κ(g, S) = (g', S')`` and the stable-face test of (g, S)
    (docs/theory.md §3.1, §8). Arguments as `project_targets`.

    Two problems (3.1): at (g, S), which gives P, criterion (a)–(c), and the samples P moves
    across; then over the candidates (S and the attracting samples that flip) with the flipped
    gates elsewhere, which decides each candidate. Both run as one ``lax.scan`` body, so the
    compiled program holds one box QP (its compile time grows with K).
    """
    active = jnp.asarray(active, bool)
    sliding = jnp.asarray(sliding, bool)
    dtype = x.dtype
    m = active.shape[0]
    rows = jnp.arange(m)[:, None]
    kap = _rows(kappa, m, dtype)
    pull = attracting(kap, signed_labels)
    norm_x = jnp.sqrt(jnp.sum(x * x, axis=1))
    big = jnp.finfo(dtype).max

    def stage(carry, _):
        base, index, valid = carry
        proj = _solve_faces(base, index, valid, kap, x, signed_labels)
        z = jnp.matmul(proj.target, x.T, precision=_HIGHEST)
        tol = boundary_tolerance(proj.target, x, capacity)
        held = jnp.zeros_like(base).at[rows, index].max(valid)
        in_cone = jnp.all(jnp.where(base, z >= -tol, held | (z <= tol)), axis=1)
        flips = ~held & jnp.where(base, z < -tol, z > tol)
        wanted = held | (flips & pull)
        # S first, then the flips nearest their boundary; −inf marks no candidate.
        score = jnp.where(held, big, jnp.where(wanted, -jnp.abs(z) / norm_x[None, :], -jnp.inf))
        next_index, _ = _slots(score, capacity)
        next_valid = jnp.take_along_axis(wanted, next_index, axis=1)
        chosen = jnp.zeros_like(wanted).at[rows, next_index].max(next_valid)
        gates = (base ^ flips) & ~chosen
        count = jnp.sum(wanted, axis=1).astype(jnp.int32)
        return (gates, next_index, next_valid), (carry, proj, in_cone, count)

    held = sliding & pull  # repelling samples leave S, inactive
    index, valid = _slots(jnp.where(held, jnp.ones((), dtype), -jnp.inf), capacity)
    start = (active & ~sliding, index, valid)
    _, (inputs, proj, in_cone, count) = jax.lax.scan(stage, start, length=2)
    first, second = (jax.tree.map(lambda a, i=i: a[i], proj) for i in (0, 1))
    s_overflow = jnp.sum(held, axis=1) > index.shape[1]
    first = first._replace(overflow=s_overflow)
    base2, index2, valid2 = (a[1] for a in inputs)
    on = valid2 & ~second.interior & (second.multipliers > 0.5)
    new_active = base2 | jnp.zeros_like(base2).at[rows, index2].max(on)
    new_sliding = jnp.zeros_like(base2).at[rows, index2].max(second.interior)
    attract = jnp.all(~sliding | pull, axis=1)
    interior = jnp.all(first.interior | ~first.valid, axis=1)
    test = FaceTest(
        stable=attract & interior & in_cone[0] & ~s_overflow,
        attracting=attract,
        interior=interior,
        in_cone=in_cone[0],
        projection=first,
    )
    return FaceStep(
        active=new_active,
        sliding=new_sliding,
        overflow=(count[0] > index2.shape[1]) | s_overflow,
        candidates=count[0],
        test=test,
    )


def stable_face_test(
    active: ArrayLike,
    sliding: ArrayLike,
    kappa: ArrayLike,
    x: jax.Array,
    signed_labels: ArrayLike,
    *,
    capacity: int = DEFAULT_CAPACITY,
) -> FaceTest:
    """Whether each face ``(g, S)`` is stable for κ: conditions (a)–(c) of docs/theory.md
    §3.1 (and §8). Arguments as `project_targets`; computed by `face_step`."""
    return face_step(active, sliding, kappa, x, signed_labels, capacity=capacity).test


def map_faces(
    active: ArrayLike,
    sliding: ArrayLike,
    kappa: ArrayLike,
    x: jax.Array,
    signed_labels: ArrayLike,
    *,
    capacity: int = DEFAULT_CAPACITY,
) -> FaceStep:
    """One step of the face map ``Φ_κ(g, S) = (g', S')`` (docs/theory.md §3.1, §8):
    jump to ``P_κ(g, S)``; the samples it moves across flip, the attracting ones and S are decided
    by (3.1). Its fixed points are the stable faces. Arguments as `project_targets`; the same
    compiled program as `face_step`."""
    return face_step(active, sliding, kappa, x, signed_labels, capacity=capacity)
