"""A sliding-mode (Filippov) integrator of the ReLU gradient flow (docs/theory.md §8, §8.1).

The Filippov velocity is the minimal-norm element of ``−∂L``; it splits into one problem per
neuron over its candidate pairs ``S_i`` (``x̃_s = (x_s, 1)``, ``c_is = (v_i·r_s)/N``),

    min_λ ‖G_i + Σ_{s∈S_i} λ_s c_is x̃_s‖²,   λ ∈ [0, 1]^{|S_i|}                (8.1)

where a ``λ_s`` strictly inside (0, 1) is a pair that slides (``z_is`` stays 0). While the
sliding set is fixed the motion is the smooth ODE ``θ̇_i = −Π_i ∇_{θ_i} L_g(θ)`` with a constant
projection ``Π_i``; a step of length h is Heun's method on it, with the events (crossings,
arrivals, exits) placed inside the step, then a balance rescaling: second order, two gradients
per step. The algorithm (steps 1–7), why it is second order, and why a ``lax`` loop of its own
rather than a diffrax solver: docs/theory.md §8.1.

With a leaky ReLU of slope α (``a = z (α + (1 − α) g)``, the ``slope`` of `sliding_step` and
`solve_sliding`) a pair's term is ``(α + (1 − α) g_is) c_is x̃_s``: the field jumps by
``(1 − α) c_is x̃_s``, which takes the place of ``c_is x̃_s`` in (8.1) and in the events, and the
continuous part ``α c_is x̃_s`` enters every step at Heun's weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._gauss import equal_steps
from ._network import PAPER, Model, Params, balance, logit_loss, preactivations
from ._observables import Observables, TrainingData, observe
from ._projection import balance_scale_of, rescale_to_balance


class SlidingState(NamedTuple):
    """State of the sliding integrator between steps.

    Attributes:
        params: the network `Params`.
        sliding: ``[N, d]`` booleans, pair (s, i) sits on its gate boundary ``z_is = 0`` and
            slides along it.
        z: ``[N, d]`` the pre-activations ``z_is = w_i·x_s + b_i`` at ``params``, carried
            from the step that made them (each step knows its end point's ``z`` from products
            with the Gram matrix, which saves the product with the data), or ``None`` to
            compute them.
        lazy: `LazyWeights` (the incoming weights are then ``materialized(params, lazy, x)``,
            and ``z`` must be given), or ``None``: ``params.W`` are the weights.
    """

    params: Params
    sliding: jax.Array
    z: jax.Array | None = None
    lazy: LazyWeights | None = None


class LazyWeights(NamedTuple):
    """The incoming weights of a `SlidingState` between grid times, kept without the product
    with the data each step would take: ``W = scale_i w_i − shift_i X`` with ``w_i`` the rows of
    the state's ``params.W`` (those at the last grid time). A step adds ``h`` times its
    coefficients to ``shift`` and rescales both (`sliding_step`); its balance rescaling needs
    only ``‖w_i‖²``, which each step updates from products it has anyway (`materialized` gives
    the weights at a grid time).

    Attributes:
        scale: ``[d]``.
        shift: ``[d, N]``, accumulated coefficients ``h·coef`` of the steps.
        w_sq: ``[d]`` ``‖w_i‖²`` of the weights these stand for.
    """

    scale: jax.Array
    shift: jax.Array
    w_sq: jax.Array


def lazy_weights(params: Params, n: int) -> LazyWeights:
    """`LazyWeights` standing for ``params.W`` itself (for ``n`` samples)."""
    d = params.W.shape[0]
    dtype = params.W.dtype
    return LazyWeights(
        scale=jnp.ones((d,), dtype),
        shift=jnp.zeros((d, n), dtype),
        w_sq=jnp.sum(params.W**2, axis=1),
    )


def materialized(params: Params, lazy: LazyWeights, x: jax.Array) -> Params:
    """``params`` with the incoming weights ``lazy`` stands for: ``scale_i w_i − shift_i X``."""
    return params._replace(W=lazy.scale[:, None] * params.W - lazy.shift @ x)


class StepReport(NamedTuple):
    """What one step saw.

    Attributes:
        crossings: pairs whose gate changed inside the step (a fractional gate).
        overflow: some neuron had more than ``capacity`` candidate pairs.
        qp_violation: largest scaled KKT violation of the step's problems (1) (~ε when solved).
        dissipation: ``‖θ_{n+1} − θ_n‖² / h``, the step's share of ``∫‖θ'‖² dt``.
        balance_defect: the largest relative balance change the rescaling removed.
    """

    crossings: jax.Array
    overflow: jax.Array
    qp_violation: jax.Array
    dissipation: jax.Array
    balance_defect: jax.Array


class SlidingRecord(NamedTuple):
    """Records of a sliding solve on its save grid (``[T]`` leading axis; seeds in front).

    Attributes:
        sliding: ``[T, d]`` sliding pairs per neuron at each save time.
        crossings: ``[T]`` gate crossings in the steps since the previous save time.
        crossings_max: ``[T]`` most crossings in one of those steps.
        overflow: ``[T]`` whether a neuron had more than ``capacity`` candidates in one of them
            (a step taken at its shortest length: see ``halvings``).
        halvings: ``[T]`` steps since the previous save time taken again at half length because
            a neuron had more than ``capacity`` candidates in them.
        dissipation: ``[T]`` ``∫_{t_0}^t ‖θ'‖² dt`` so far (the energy identity says it equals
            ``L(t_0) − L(t)``).
        qp_violation: ``[T]`` largest scaled KKT violation of the problems (1) since the
            previous save time.
        snapshots: ``[K, N, d]`` which pairs slide at each snapshot time.
    """

    sliding: jax.Array
    crossings: jax.Array
    crossings_max: jax.Array
    overflow: jax.Array
    halvings: jax.Array
    dissipation: jax.Array
    qp_violation: jax.Array
    snapshots: jax.Array


class Geometry(NamedTuple):
    """Data of the solve: inputs, labels and the Gram matrix ``x̃_s·x̃_t = x_s·x_t + 1``."""

    x: jax.Array
    y: jax.Array
    gram: jax.Array


def geometry(x: jax.Array, y: jax.Array) -> Geometry:
    """`Geometry` of inputs ``x`` ``[N, D]`` and labels ``y`` ``[N]``.

    The barrier keeps XLA from computing the Gram matrix at compile time when the data are
    constants of the caller's jitted function (a vmapped sweep closing over them): constant
    folding an N×N×D product is slower than computing it."""
    x = jax.lax.optimization_barrier(x)
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST) + 1.0
    return Geometry(x=x, y=y, gram=gram)


def spd_solve(a: jax.Array, b: jax.Array, size=None) -> jax.Array:
    """``a⁻¹ b`` for a symmetric positive definite ``a`` ``[K, K]`` and ``b`` ``[K]`` or
    ``[K, m]``.

    On the CPU by `gauss_jordan` (a loop over the pivots in use); on an accelerator by one batched
    LU factorisation with partial pivoting (`jnp.linalg.solve`). On a GPU every iteration of a
    loop whose trip count is known only at run time costs a round trip to the host to read its
    condition, which made the pivot loops most of the sliding step's time there (docs/theory.md
    §8.1); on the CPU a LAPACK call inside these loops, run concurrently with other work of the
    step, was seen to deadlock (K = 32, N = 1000, d = 50), and with LAPACK's Cholesky in its
    place the demo's step took 2.5–3× longer than with the loop over the slots in use. Both are
    backward stable for such matrices and agree to rounding; only the branch of the platform
    compiled for is lowered.

    ``size`` (`gauss_jordan`) says that only the leading ``size`` rows and columns of ``a`` differ
    from the identity's; the result does not depend on it beyond rounding.

    Example:
        >>> A, r = jnp.array([[4.0, 2.0], [2.0, 3.0]]), jnp.array([2.0, 1.0])
        >>> [float(v) for v in spd_solve(A, r)]
        [0.5, 0.0]
    """
    return jax.lax.platform_dependent(
        a, b, cpu=lambda a, b: gauss_jordan(a, b, size), default=lu_solve
    )


def lu_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a⁻¹ b`` for ``a`` ``[K, K]`` and ``b`` ``[K]`` or ``[K, m]`` by one LU factorisation with
    partial pivoting (`jnp.linalg.solve`; batched under `jax.vmap`).

    Example:
        >>> A, r = jnp.array([[4.0, 2.0], [2.0, 3.0]]), jnp.array([2.0, 1.0])
        >>> [float(v) for v in lu_solve(A, r)]
        [0.5, 0.0]
    """
    if b.ndim == a.ndim - 1:
        return jnp.linalg.solve(a, b[..., None])[..., 0]
    return jnp.linalg.solve(a, b)


def gauss_jordan(a: jax.Array, b: jax.Array, size=None) -> jax.Array:
    """``a⁻¹ b`` for a symmetric positive definite ``a`` ``[K, K]`` and ``b`` ``[K]`` or
    ``[K, m]``: Gauss–Jordan elimination without pivoting (stable for such matrices, as Cholesky
    is), in plain XLA ops.

    The elimination loop is not unrolled: unrolled, the ten solves of a step doubled its compile
    time (12.8 s → 26.7 s on a 2-core CPU, d = 20, K = 16) and saved only 6–16 % of the step's
    run time.

    ``size`` (an integer, may be traced; default K) says that only the leading ``size`` rows and
    columns of ``a`` differ from the identity's: the elimination stops there, and the result is
    the same to the bit (an identity pivot whose column is ``e_j`` changes nothing). The sliding
    solver's problems are padded to K with identity rows behind the used candidate slots, so
    its solves run over the slots in use, not over K.

    Example:
        >>> A, r = jnp.array([[4.0, 2.0], [2.0, 3.0]]), jnp.array([2.0, 1.0])
        >>> [float(v) for v in gauss_jordan(A, r)]
        [0.5, 0.0]
    """

    def eliminate(j, ab):
        a, b = ab
        row, bj = a[j] / a[j, j], b[j] / a[j, j]
        column = a[:, j]
        a = (a - column[:, None] * row[None, :]).at[j].set(row)
        column = column.reshape((-1,) + (1,) * (b.ndim - 1))  # [K] or [K, 1]
        b = (b - column * jnp.expand_dims(bj, tuple(range(b.ndim - 1)))).at[j].set(bj)
        return a, b

    stop = a.shape[-1] if size is None else jnp.minimum(size, a.shape[-1])
    return jax.lax.fori_loop(0, stop, eliminate, (a, b))[1]


def box_qp(
    M: jax.Array,
    q: jax.Array,
    free0: jax.Array | None = None,
    size=None,
    *,
    max_iterations: int | None = None,
):
    """``argmin_{λ ∈ [0,1]^K} ½ λᵀMλ + qᵀλ`` for a positive semidefinite ``M`` ``[K, K]``.

    A primal active-set method: λ stays feasible, each iteration solves the problem on the free
    variables with the others at their bounds; an infeasible solution is cut back to the first
    bound it meets (which joins the active set), a feasible one releases the bound whose
    multiplier has the wrong sign by the most. The objective never increases, so the method
    ends in finitely many iterations at a KKT point (the global minimum: the problem is convex).
    ``M`` may be singular: the free sub-problems get a jitter of 10ε on the diagonal.
    ``free0`` (booleans ``[K]``) starts the working set with those variables free (a warm start:
    the previous step's sliding pairs), from the feasible point λ = 0. ``size`` (`gauss_jordan`)
    bounds the slots that can be free: variables from ``size`` on must have ``M = 1``, ``q > 0``
    (inert, λ = 0) and not be in ``free0``.

    Returns:
        ``(λ, free, violation)``: the minimiser; which variables are strictly between their
        bounds (free); and the largest KKT violation (stationarity of the free variables, sign
        of the bounds' multipliers), each scaled by ``Σ_l |M_kl| + |q_k|``: ~ε when solved.

    Example:
        >>> lam, free, _ = box_qp(jnp.eye(2), jnp.array([-0.5, 2.0]))
        >>> [round(float(v), 5) for v in lam], [bool(f) for f in free]
        ([0.5, 0.0], [True, False])
    """
    k = q.shape[-1]
    dtype = q.dtype
    eps = jnp.finfo(dtype).eps
    # Each multiplier M_k·λ + q_k is judged against the rounding it carries, so that variables
    # of very different sizes (a neuron's c_is spans decades) are each solved to their own scale.
    scale = jnp.sum(jnp.abs(M), axis=1) + jnp.abs(q)
    scale = jnp.where(scale > 0, scale, 1.0)
    tol = 1e2 * k * eps * scale
    eye = jnp.eye(k, dtype=dtype)
    jitter = 10 * eps * jnp.diag(jnp.abs(jnp.diagonal(M)))
    iterations = 4 * k + 4 if max_iterations is None else max_iterations
    slots = jnp.arange(k)

    reg = M + jitter

    def free_inverse(free):
        """``H = (M + jitter)_FF⁻¹`` padded with zeros: the working set's inverse."""
        both = free[:, None] & free[None, :]
        return jnp.where(both, spd_solve(jnp.where(both, reg, eye), eye, size), 0.0)

    def body(carry):
        it, lam, lower, upper, _, h_inv = carry
        free = ~lower & ~upper
        fixed = upper.astype(dtype)
        sol = jnp.where(free, h_inv @ jnp.where(free, -q - M @ fixed, 0.0), fixed)
        step = sol - lam
        infeasible = jnp.any(free & ((sol < 0) | (sol > 1)))
        # Infeasible: move towards sol until the first bound is met; that variable is fixed.
        ratio = jnp.where(
            free & (step < 0),
            -lam / jnp.where(step < 0, step, -1.0),
            jnp.where(free & (step > 0), (1.0 - lam) / jnp.where(step > 0, step, 1.0), jnp.inf),
        )
        j_block = jnp.argmin(ratio)
        blocking = slots == j_block
        alpha = jnp.clip(jnp.min(ratio), 0.0, 1.0)
        cut = jnp.clip(lam + alpha * step, 0.0, 1.0)
        cut = jnp.where(blocking, jnp.where(step < 0, 0.0, 1.0), cut)
        # Feasible: release the bound whose multiplier has the wrong sign by the most.
        grad = M @ sol + q
        wrong = jnp.where(lower, -grad, jnp.where(upper, grad, -jnp.inf))
        j_release = jnp.argmax(wrong)
        release = (slots == j_release) & (jnp.max(wrong) > tol)
        lam = jnp.where(infeasible, cut, sol)
        lower = jnp.where(infeasible, lower | (blocking & (step < 0)), lower & ~release)
        upper = jnp.where(infeasible, upper | (blocking & (step > 0)), upper & ~release)
        # One variable leaves or joins the working set: rank-one update of its inverse.
        col = h_inv[:, j_block]
        removed = h_inv - jnp.outer(col, col) / jnp.where(col[j_block] != 0, col[j_block], 1.0)
        removed = jnp.where(blocking[:, None] | blocking[None, :], 0.0, removed)
        u = jnp.where(free, reg[:, j_release], 0.0)
        w = h_inv @ u
        v = w - (slots == j_release).astype(dtype)
        schur = reg[j_release, j_release] - u @ w
        added = h_inv + jnp.outer(v, v) / jnp.where(schur > 0, schur, 1.0)
        h_inv = jnp.where(infeasible, removed, jnp.where(jnp.any(release), added, h_inv))
        done = ~infeasible & ~jnp.any(release)
        return it + 1, lam, lower, upper, done, h_inv

    def cond(carry):
        it, *_, done, _ = carry
        return (it < iterations) & ~done

    lower0 = jnp.ones(k, bool) if free0 is None else ~free0
    init = (
        0,
        jnp.zeros_like(q),
        lower0,
        jnp.zeros(k, bool),
        jnp.asarray(False),
        free_inverse(~lower0),
    )
    _, lam, lower, upper, _, _ = jax.lax.while_loop(cond, body, init)
    free = ~lower & ~upper
    # The working set's solution once more from scratch: the rank-one updates' rounding stays out.
    fixed = upper.astype(dtype)
    both = free[:, None] & free[None, :]
    exact = spd_solve(jnp.where(both, reg, eye), jnp.where(free, -q - M @ fixed, fixed), size)
    lam = jnp.where(free, jnp.clip(exact, 0.0, 1.0), lam)
    grad = M @ lam + q
    violation = jnp.max(jnp.where(free, jnp.abs(grad), jnp.where(lower, -grad, grad)) / scale)
    return lam, free, jnp.maximum(violation, 0.0)


def _leak(gates, slope: float):
    """``α + (1 − α) g``: the factor of a pair's pre-activation in its activation
    ``a = z (α + (1 − α) g)`` and of its coefficient in the gradient of θ_i, for gates ``g``
    (booleans, or the fraction of a step spent active) and the leaky slope ``α`` (``g`` itself,
    unchanged, for the ReLU, α = 0)."""
    if slope == 0:
        return gates
    return slope + (1.0 - slope) * gates


def _jump(c, slope: float):
    """``(1 − α) c``: the jump of a pair's coefficient across its boundary (``c`` itself for the
    ReLU), the ``c_is`` of problem (8.1)."""
    return c if slope == 0 else (1.0 - slope) * c


def _output_gradients(z, gates, V, y, output_loss, slope: float = 0.0):
    """``c_is = ∂L/∂a_i(s) = (v_i·r_s)/N`` ``[N, d]`` and ``∂L/∂o = r/N`` ``[N, K]`` of the
    network whose hidden activations are ``a = z (α + (1 − α) gates)`` (`_leak`;
    ``∂L/∂V = aᵀ ∂L/∂o``)."""
    grad_o = jax.grad(lambda o: jnp.mean(output_loss(o, y)))((_leak(gates, slope) * z) @ V)
    return grad_o @ V.T, grad_o


def _gram_times(geom: Geometry, coef: jax.Array) -> jax.Array:
    """``X̃ X̃ᵀ coef`` ``[N, d]``: the change of every pre-activation when each θ_i moves by
    ``coef_iᵀ X̃`` (Gram product when N ≤ D + 1, else through the inputs)."""
    if _through_gram(geom):
        return geom.gram @ coef
    return geom.x @ (coef.T @ geom.x).T + jnp.sum(coef, axis=0, keepdims=True)


def _through_gram(geom: Geometry) -> bool:
    """Whether `_gram_times` multiplies by the Gram matrix (N² d multiply-adds) rather than
    through the inputs (2 N (D + 1) d)."""
    n, dim = geom.x.shape
    return n <= 2 * (dim + 1)


def _event_gram_times(
    geom: Geometry,
    first: jax.Array,
    second: jax.Array,
    candidates: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """`_gram_times` of ``first`` and ``second`` ``[N, d]``, both zero but at a neuron's
    candidate pairs and a few others (the change of a step's coefficients between its two
    passes, the jumps at its events); ``candidates`` are the step's ``(idx, valid, gram[idx],
    mask)`` ``[d, K]``, ``[d, K]``, ``[d, K, N]``, ``[N, d]`` (the valid slots' pairs).

    On the CPU, when no neuron has more than 2K other such pairs and all neurons together no
    more than 16K, as sums of Gram rows: the candidates' from their rows the step has gathered,
    the others' gathered by a list of (neuron, sample) pairs and added in by neuron (against
    the N² d multiply-adds of each dense product; `_gram_rows_times`). Otherwise, and on an
    accelerator, where the dense products cost less than the kernels that gather, by
    `_gram_times`. The two agree up to rounding."""
    capacity = candidates[0].shape[1]

    def dense(first, second, _=None):
        return _gram_times(geom, first), _gram_times(geom, second)

    if not _through_gram(geom):
        return dense(first, second)
    per_neuron, total = 2 * capacity, 16 * capacity

    def by_events(first, second):
        others = _other_pairs(first, second, candidates[3])
        count = jnp.sum(others, axis=0)
        fits = (jnp.max(count) <= per_neuron) & (jnp.sum(count) <= total)
        sparse = functools.partial(
            _gram_rows_times, geom, candidates=candidates, per_neuron=per_neuron, total=total
        )
        return jax.lax.cond(fits, sparse, dense, first, second, others)

    return jax.lax.platform_dependent(first, second, cpu=by_events, default=dense)


def _other_pairs(first, second, mask):
    """Pairs ``[N, d]`` where ``first`` or ``second`` is nonzero, other than the candidates
    ``mask`` ``[N, d]``."""
    return ((first != 0) | (second != 0)) & ~mask


def _gram_rows_times(
    geom: Geometry,
    first: jax.Array,
    second: jax.Array,
    others: jax.Array,
    *,
    candidates: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    per_neuron: int,
    total: int,
) -> tuple[jax.Array, jax.Array]:
    """``Σ_s G[:, s] a_si`` ``[N, d]`` for ``a`` = ``first``, ``second`` over each neuron's
    candidates (of `_event_gram_times`) and its first ``per_neuron`` pairs of ``others``
    (`_other_pairs`), at most ``total`` of those in all: their `_gram_times` when no neuron or
    total has more (pairs past them are left out)."""
    d = first.shape[1]
    idx, valid, gram_rows, _ = candidates
    neurons = jnp.arange(d)
    both = jnp.stack([first, second])
    at_candidates = jnp.where(valid, both[:, idx, neurons[:, None]], 0.0)  # [2, d, K]
    out = jnp.einsum("ikn,jik->jin", gram_rows, at_candidates)
    # Each neuron's others in `per_neuron` slots, then the slots in use in one list.
    idx_o, valid_o = _compact(others, others, per_neuron)
    used = valid_o.reshape(-1, 1)
    slot, in_list = (a[0] for a in _compact(used, used, total))
    neuron = jnp.where(in_list, slot // per_neuron, d)  # past the list: d, after all, dropped
    sample = idx_o.reshape(-1)[slot]
    values = jnp.where(in_list, both[:, sample, neuron], 0.0)  # [2, total]
    rows = geom.gram[sample]  # [total, N]

    def by_neuron(v):  # the list is in neuron order: a sorted segment sum, not a scatter
        return jax.ops.segment_sum(
            v[:, None] * rows, neuron, num_segments=d, indices_are_sorted=True
        )

    return (out[0] + by_neuron(values[0])).T, (out[1] + by_neuron(values[1])).T


def _first_root(z0, a, b):
    """The root in (0, 1] of ``z0 + a τ + b τ²`` when ``z0`` and ``z0 + a + b`` differ in sign
    (numerically stable form; the secant through the ends when the quadratic has none there)."""
    disc = jnp.maximum(a * a - 4.0 * b * z0, 0.0)
    q = -0.5 * (a + jnp.where(a >= 0, 1.0, -1.0) * jnp.sqrt(disc))
    safe_q = jnp.where(q != 0, q, 1.0)
    r1 = z0 / safe_q
    r2 = q / jnp.where(b != 0, b, 1.0)
    secant = z0 / jnp.where(a + b != 0, -(a + b), 1.0)
    ok1 = (q != 0) & (r1 >= 0) & (r1 <= 1)
    ok2 = (b != 0) & (r2 > 0) & (r2 <= 1)
    return jnp.where(ok1, r1, jnp.where(ok2, r2, jnp.clip(secant, 0.0, 1.0)))


def _smooth_exits(c_star, coef_off, idx, gram_rows, gram_k, sliding, upper_bound, lam, h):
    """Sliding pairs ``[d, K]`` whose λ leaves [0, 1] within the step: ``(exits, τ_e, z at the
    step's end, to the upper bound)``, from λ of the end mode (sliding set ``sliding``, the
    pairs at the upper bound ``upper_bound``) at θ* against ``lam`` at θ_n; ``c_star`` ``[N, d]``
    are the jumps ``(1 − α) c_is`` at θ*, ``coef_off`` the field's coefficients there with the
    candidates on their inactive side."""
    dtype = c_star.dtype
    k = idx.shape[1]
    c_k = _pick(c_star, idx)
    xg = jnp.einsum("ikn,in->ik", gram_rows, coef_off.T)  # x̃_k·G_i at θ*
    m = c_k[:, :, None] * c_k[:, None, :] * gram_k
    both = sliding[:, :, None] & sliding[:, None, :]
    eye = jnp.broadcast_to(jnp.eye(k, dtype=dtype), m.shape)
    inv = jnp.where(both, _solves(jnp.where(both, m, eye), eye, sliding), 0.0)
    rhs = -c_k * xg - jnp.einsum("ikl,il->ik", m, upper_bound.astype(dtype))
    lam_star = jnp.einsum("ikl,il->ik", inv, jnp.where(sliding, rhs, 0.0))
    upper = lam_star > 1.0
    exits = sliding & (upper | (lam_star < 0.0))
    bound = upper.astype(dtype)
    span = jnp.where(exits, lam_star - lam, 1.0)
    tau_e = jnp.where(exits, jnp.clip((bound - lam) / span, 0.0, 1.0), 0.0)
    schur = 1.0 / jnp.where(exits, jnp.diagonal(inv, axis1=1, axis2=2), 1.0)
    rate = schur * (lam_star - bound) / jnp.where(exits, c_k, 1.0)
    return exits, tau_e, jnp.where(exits, 0.5 * (1.0 - tau_e) * h * rate, 0.0), upper


def _slots_in_use(mask: jax.Array) -> jax.Array:
    """``1 + max{k : mask_ik}`` over all neurons ``i`` (``mask`` ``[d, K]``; 0 if none): the
    slots beyond are identity padding in every neuron's problem."""
    k = mask.shape[-1]
    return jnp.max(jnp.where(mask, jnp.arange(1, k + 1), 0))


def _solves(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    """`spd_solve` of every neuron's ``a`` ``[d, K, K]``, ``b`` ``[d, K]`` or ``[d, K, K]``, whose
    rows and columns outside ``mask`` ``[d, K]`` are the identity's, over the slots in use."""
    return jax.vmap(spd_solve, in_axes=(0, 0, None))(a, b, _slots_in_use(mask))


_WORD = 32  # bits of the words `_compact` packs a neuron's pairs into


def _compact(mask: jax.Array, first: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Each neuron's pairs of ``mask`` ``[N, d]`` in ``capacity`` slots: ``(idx, valid)``
    ``[d, K]``, the pairs of ``first`` before the others, each group in sample order; slots past
    a neuron's count are not ``valid`` and hold 0. Pairs past the capacity are left out (the
    caller reports the overflow).

    A stable partition without a sort (``lax.top_k`` sorts every row, at more than the rest of
    the step's cost on the CPU) and without a running count over the samples (XLA's cumulative
    sum of N entries per neuron is a reduce-window, which took 8 % of the demo's step): each
    group's booleans are packed into 32-bit words, ``⌈N/32⌉`` per neuron; slot k lies in the
    first word whose running count of set bits exceeds k, at the bit where the count of the
    word's set bits at or below it first exceeds k's rank in the word. Every search is one
    comparison of all candidates (words, bits), with no loop: the same program on every
    platform (on an accelerator each iteration of a loop waits for the host)."""
    n, d = mask.shape
    per_group = -(-n // _WORD)
    bit = jnp.left_shift(jnp.uint32(1), jnp.arange(_WORD, dtype=jnp.uint32))

    def pack(m):  # [N, d] booleans → [⌈N/32⌉, d] words, sample s at bit s mod 32
        m = jnp.pad(m, ((0, _WORD * per_group - n), (0, 0))).reshape(per_group, _WORD, d)
        return jnp.sum(jnp.where(m, bit[None, :, None], jnp.uint32(0)), axis=1, dtype=jnp.uint32)

    words = jnp.concatenate([pack(mask & first), pack(mask & ~first)], axis=0).T  # [d, W]
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    counts = jnp.cumsum(per_word, axis=1)
    slot = jnp.arange(capacity, dtype=jnp.int32)
    word = jnp.sum(counts[:, None, :] <= slot[None, :, None], axis=2, dtype=jnp.int32)
    word = jnp.minimum(word, 2 * per_group - 1)  # an invalid slot's (past the last word)
    rank = slot - jnp.take_along_axis(counts - per_word, word, axis=1)  # within its word
    # The set bits at or below each bit b: those of the word under the mask 2^(b+1) − 1.
    at_or_below = jax.lax.population_count(
        jnp.take_along_axis(words, word, axis=1)[:, :, None] & (bit * 2 - 1)
    )
    pos = _WORD * (word % per_group) + jnp.sum(
        at_or_below.astype(jnp.int32) <= rank[:, :, None], axis=2, dtype=jnp.int32
    )
    valid = slot < counts[:, -1:]
    return jnp.where(valid, pos, 0), valid


def _pick(a: jax.Array, idx: jax.Array) -> jax.Array:
    """``a[idx[i, k], i]``: entries ``[d, K]`` of an ``[N, d]`` array at each neuron's
    candidates (gathered in place: no transposed copy of ``a``)."""
    return a[idx, jnp.arange(idx.shape[0])[:, None]]


def _neuron_problems(idx, valid, c0, active, z_dot, gram, free0):
    """Problem (8.1) of every neuron for the candidate pairs ``idx`` ``[d, K]`` (``valid`` marks
    the real ones), each on its boundary, with the jumps ``c0`` ``[N, d]`` (``(1 − α) c_is``);
    also returns their ``c``, whether they are active now, and their Gram block ``[d, K, K]``.

    ``x̃_k·G_i`` comes from the rates ``z_dot = −X̃ X̃ᵀ coef`` with the active candidates' own
    terms removed; unused slots get ``M = 1, q = 1`` (λ = 0, inert). The problem's ``M, q``
    come last."""
    c_k = _pick(c0, idx)
    active_k = _pick(active, idx) & valid
    gram_k = gram[idx[:, :, None], idx[:, None, :]]
    xg = -_pick(z_dot, idx) - jnp.einsum("ikl,il->ik", gram_k, jnp.where(active_k, c_k, 0.0))
    both = valid[:, :, None] & valid[:, None, :]
    qp_m = jnp.where(
        both, c_k[:, :, None] * c_k[:, None, :] * gram_k, jnp.eye(idx.shape[1], dtype=c_k.dtype)
    )
    qp_q = jnp.where(valid, c_k * xg, 1.0)
    solve = jax.vmap(box_qp, in_axes=(0, 0, 0, None))
    lam, free, violation = solve(qp_m, qp_q, free0 & valid, _slots_in_use(valid))
    return lam, free, violation, c_k, active_k, gram_k, qp_m, qp_q


def sliding_step(
    state: SlidingState,
    h,
    geom: Geometry,
    q_ref: jax.Array,
    *,
    capacity: int,
    output_loss: Callable = logit_loss,
    slope: float = 0.0,
) -> tuple[SlidingState, StepReport]:
    """One step of the sliding integrator (docs/theory.md §8.1, steps 1–7); ``q_ref`` ``[d]`` is the
    balance each neuron is projected back to.

    ``slope`` α ∈ [0, 1) makes the hidden activation the leaky ReLU ``a = z (α + (1 − α) g)``:
    a pair's term in the gradient of θ_i is ``(α + (1 − α) g_is) c_is x̃_s``, so the field jumps
    across ``z_is = 0`` by ``(1 − α) c_is x̃_s`` and problem (8.1) has ``(1 − α) c_is`` for
    ``c_is`` (`_leak`, `_jump`); the part ``α c_is x̃_s`` is continuous there and enters every
    step at Heun's weights. α = 0 is the ReLU.

    A ``state`` with `LazyWeights` (``state.lazy``) keeps them: the returned state's
    ``params.W`` is unchanged and its ``lazy`` stands for the new incoming weights (no product
    with the data). Without, the step returns the new weights themselves."""
    p, sliding, z0, lazy = state
    x, y, gram = geom
    eager = lazy is None
    if eager:
        lazy = lazy_weights(p, x.shape[0])
    elif z0 is None:
        raise ValueError("a SlidingState with LazyWeights needs its pre-activations z.")
    n, d = sliding.shape
    capacity = min(capacity, n)
    dtype = x.dtype
    rows = jnp.arange(d)[:, None]

    # 1. The field at θ_n, sliding pairs off.
    z0 = preactivations(p, x) if z0 is None else z0
    g0 = ((z0 > 0) & ~sliding).astype(dtype)
    c0, grad_o0 = _output_gradients(z0, g0, p.V, y, output_loss, slope)
    grad_v0 = (_leak(g0, slope) * z0).T @ grad_o0
    z_dot = -_gram_times(geom, _leak(g0, slope) * c0)
    j0 = _jump(c0, slope)  # the jump coefficients of problem (8.1)

    # 2. Candidates. First the pairs sliding now, alone: their problem (8.1) gives the velocity
    # the flow has before any new pair arrives, and so each pair's rate on its present side
    # (own gate included): the arrival time of a pair heading to its boundary is exact to O(h²).
    active = g0 > 0
    idx_s, valid_s = _compact(sliding, sliding, capacity)
    lam_s, _, _, c_s, *_ = _neuron_problems(idx_s, valid_s, j0, active, z_dot, gram, valid_s)
    rate = z_dot - jnp.einsum("ikn,ik->ni", gram[idx_s], jnp.where(valid_s, lam_s * c_s, 0.0))
    towards = jnp.where(active, rate < 0, rate > 0) & ~sliding
    tau = jnp.where(towards, -z0 / jnp.where(towards, h * rate, 1.0), jnp.inf)
    tau = jnp.where(sliding, 0.0, tau)
    candidate = sliding | (towards & (c0 > 0) & (tau <= 1.0))
    idx, valid = _compact(candidate, sliding, capacity)  # the pairs sliding now first
    overflow = jnp.any(jnp.sum(candidate, axis=0) > capacity)

    # 3. Problem (8.1) per neuron, with every candidate on its boundary: the mode after the
    # candidates' arrivals, which drives the predictor.
    at_start = _pick(sliding, idx) & valid  # candidates sliding at θ_n
    lam, free, violation, c_k, active_k, gram_k, qp_m, qp_q = _neuron_problems(
        idx, valid, j0, active, z_dot, gram, at_start
    )
    slides = free & valid
    gram_rows = gram[idx]  # [d, K, N]
    z_k = _pick(z0, idx)

    def landing(mask, rows_dot_coef, target):
        """ω ``[d, K]`` such that θ_i − h(coef_i − Σ_k ω_ik x̃_k)ᵀ has ``z_ik = target`` on
        ``mask`` (an orthogonal projection onto those constraints), from ``x̃_k·(coef_iᵀX̃)``."""
        gram_mask = jnp.where(
            mask[:, :, None] & mask[:, None, :], gram_k, jnp.eye(capacity, dtype=dtype)
        )
        rhs = jnp.where(mask, rows_dot_coef - (z_k - target) / h, 0.0)
        return jnp.where(mask, _solves(gram_mask, rhs, mask), 0.0)

    # 4. Stage 1: the Filippov velocity at θ_n (candidates at λ, not at their present gates),
    # landed. It differs from the coefficients g0·c0 only at the candidates, by `delta`; so
    # θ* has z* = z0 + h ż − h Σ_k x̃_s·x̃_k delta_ik without a second product with the data.
    delta = jnp.where(valid, (lam - active_k) * c_k, 0.0)
    delta = delta - landing(
        slides, -_pick(z_dot, idx) + jnp.einsum("ikl,il->ik", gram_k, delta), 0.0
    )
    z_star = z0 + h * (z_dot - jnp.einsum("ikn,ik->ni", gram_rows, delta))
    v_star = p.V - h * grad_v0

    # Crossings of the other pairs (from the linear interpolation of z between θ_n and θ*) also
    # change problem (8.1): solved again with their gates flipped, it gives the mode at the end
    # of the step. A pair sliding at θ_n that this mode releases was released by the neuron's
    # first event in the step (an arrival or a crossing: the field jumps there), so it stays on
    # its boundary until then: without this, a release caused by an event is a first-order error.
    cand = jnp.zeros((n, d), bool).at[idx, rows].max(valid)
    start_on = z0 > 0
    ends_on = z_star > 0
    flips = (start_on != ends_on) & ~cand
    cross = jnp.where(flips, z0 / jnp.where(flips, z0 - z_star, 1.0), 0.0)
    flip_coef = jnp.where(flips, jnp.where(ends_on, j0, -j0), 0.0)
    qp_q_end = qp_q + jnp.where(valid, c_k * jnp.einsum("ikn,ni->ik", gram_rows, flip_coef), 0.0)
    lam_end, free_end, violation_end = jax.vmap(box_qp, in_axes=(0, 0, 0, None))(
        qp_m, qp_q_end, slides, _slots_in_use(valid)
    )
    slides_end = free_end & valid
    stays_on = ~free_end & (lam_end > 0.5) & valid
    released = at_start & ~slides_end
    # Candidates that cross their boundary rather than slide on (or stay at) it.
    crossing_k = valid & ~at_start & ~slides_end & (active_k != stays_on)

    def schedule(flips, cross, tau_k):
        """The part [α, β] of the step (in units of h) each pair spends active, for crossings
        of ``flips`` at fractions ``cross`` and candidates arriving at ``tau_k``; also the held
        pairs and their release times."""
        first_event = jnp.minimum(
            jnp.min(jnp.where(valid & ~at_start, tau_k, jnp.inf), axis=1),
            jnp.min(jnp.where(flips, cross, jnp.inf), axis=0),
        )
        tau_release = jnp.where(
            released & jnp.isfinite(first_event)[:, None], first_event[:, None], 0.0
        )
        held = released & (tau_release > 0)
        tau_release = jnp.where(exits, tau_exit, tau_release)
        arrive = jnp.where(at_start | exits, tau_release, tau_k)
        on_k = jnp.where(active_k | stays_on, jnp.where(active_k, 0.0, arrive), 1.0)
        beta_k = jnp.where(active_k & ~stays_on, tau_k, 1.0)
        ends = start_on != flips
        alpha = jnp.where(start_on, 0.0, jnp.where(ends, cross, 1.0))
        beta = jnp.where(start_on, jnp.where(ends, 1.0, cross), 1.0)

        def at_candidates(a, a_k):
            return a.at[jnp.where(valid, idx, n), rows].set(a_k, mode="drop")

        on = at_candidates(alpha, on_k)  # when the pair turns active (a landed pair: never)
        alpha = at_candidates(alpha, jnp.where(slides_end, 1.0, on_k))
        return alpha, at_candidates(beta, beta_k), on, held, tau_release

    def coefficients(alpha, beta, held, tau_release):
        """The step's coefficients ``[d, N]`` (θ_{n+1} = θ_n − h coefᵀX̃): each pair's term
        ``c_is x̃_s`` with the weights of the linear interpolant of c over its [α, β] (Heun's
        ½, ½ when always active), the sliding pairs landed on their boundaries."""
        gates = beta - alpha
        mid = 0.5 * (alpha + beta)
        coef = gates * ((1.0 - mid) * j0 + mid * j_star)
        if slope != 0:  # the continuous part α c x̃ of every pair, at Heun's weights
            coef = coef + slope * 0.5 * (c0 + c_star)
        coef_t = coef.T
        rows_dot = jnp.einsum("ikn,in->ik", gram_rows, coef_t)
        # A held pair moves only after its release, at the rate it has with the sliding pairs'
        # velocity projected (their arrivals are over by then): it lands at that fraction of the
        # step's free motion.
        free_motion = -h * (
            rows_dot - jnp.einsum("ikl,il->ik", gram_k, landing(slides_end, rows_dot, z_k))
        )
        target = jnp.where(held, z_k + (1.0 - tau_release) * free_motion, 0.0)
        target = jnp.where(exits, exit_target, target)
        return coef_t.at[rows, idx].add(-landing(slides_end | held | exits, rows_dot, target))

    exits = jnp.zeros_like(valid)
    tau_exit = exit_target = jnp.zeros_like(lam)

    # 5. Event times first from the linear predictor (z between θ_n and θ*, a candidate's arrival
    # time); the second stage's activations are β − α.
    tau_k = jnp.clip(_pick(tau, idx), 0.0, 1.0)
    alpha, beta, _, held, tau_release = schedule(flips, cross, tau_k)
    c_star, grad_o_star = _output_gradients(z_star, beta - alpha, v_star, y, output_loss, slope)
    j_star = _jump(c_star, slope)
    # Smooth exits: λ of the end mode again at θ*, with its sliding set and bounds kept. A sliding
    # pair whose λ leaves [0, 1] inside the step leaves its boundary at the time τ_e where the
    # linear interpolation of λ meets the bound, with a normal velocity that grows from 0 (the
    # sliding and free velocities agree there): its z at the step's end is ½(1 − τ_e) h ż_free(θ*),
    # ż_free = S_kk (λ_k − bound)/c_k with S_kk the Schur complement of the other sliding pairs.
    # Releasing it a step late instead would cost O(h²).
    exits, tau_exit, exit_target, upper = _smooth_exits(
        j_star,
        _leak((start_on != flips) & ~cand, slope) * c_star,
        idx,
        gram_rows,
        gram_k,
        slides_end,
        stays_on,
        lam_end,
        h,
    )
    slides_end = slides_end & ~exits  # the closures above see the end mode with the exits
    stays_on = stays_on | (exits & upper)
    # Each pair's own term at Heun's weights on its starting side (α of it on the inactive side).
    if slope == 0:
        own = jnp.where(start_on, 0.5 * (c0 + c_star), 0.0)
    else:
        own = _leak(start_on, slope) * 0.5 * (c0 + c_star)
    rate_k = _pick(rate, idx)

    def refined(times, coef_t, gram_coef):
        """Each event time again, for the step's coefficients ``coef_t`` ``[d, N]`` at the event
        times ``times`` and their Gram product ``gram_coef``: from the quadratic through z at
        θ_n, its rate there and z at θ_{n+1} of the pair's smooth continuation on its starting
        side (its own term at Heun's weights). The time errs by O(h³), and so does the step."""
        z_pre = z0 - h * gram_coef + h * jnp.diagonal(gram)[:, None] * (coef_t.T - own)
        flips = (start_on != (z_pre > 0)) & ~cand
        cross = jnp.where(flips, _first_root(z0, z_star - z0, z_pre - z_star), 0.0)
        # The candidates that cross are off their boundary at θ_n, on the side `start_on` says.
        z_pre_k = _pick(z_pre, idx)
        refined = _first_root(z_k, h * rate_k, z_pre_k - z_k - h * rate_k)
        tau_k = jnp.where(crossing_k & ((z_k > 0) != (z_pre_k > 0)), refined, times[2])
        return flips, cross, tau_k

    # The coefficients at the predicted event times, the times again from their z at the step's
    # end, and the step's coefficients at those.
    alpha, beta, _, held, tau_release = schedule(flips, cross, tau_k)
    coef_first = coefficients(alpha, beta, held, tau_release)
    gram_first = _gram_times(geom, coef_first.T)
    times = refined((flips, cross, tau_k), coef_first, gram_first)
    alpha, beta, on, held, tau_release = schedule(*times)
    coef_t = coefficients(alpha, beta, held, tau_release)
    gates = beta - alpha
    # An event of neuron i at τ changes θ̇_i by −J x̃_k (J the jump of the pair's coefficient),
    # which bends the z of the neuron's other pairs; the trapezoid over-counts their activation
    # integral by ½ τ(1 − τ) h² x̃_s·Δθ̇_i: Heun's second activation takes it back (`kink`).
    flips_f, cross_f, tau_f = times
    jump = jnp.where(flips_f, jnp.where(start_on, -j0, j0) * cross_f * (1.0 - cross_f), 0.0)
    jump_k = jnp.where(crossing_k, jnp.where(active_k, -1.0, 1.0), 0.0) * c_k
    arrives = slides_end & ~at_start
    jump_k = jnp.where(arrives, (lam_end - active_k) * c_k, jump_k)
    jump = jump.at[idx, rows].add(jnp.where(valid, jump_k * tau_f * (1.0 - tau_f), 0.0))
    # The step's coefficients differ from the first ones only where an event moved (and at the
    # candidates), and the jumps sit at the events: both Gram products over those rows only.
    change, kink = _event_gram_times(
        geom, coef_t.T - coef_first.T, jump, (idx, valid, gram_rows, cand)
    )
    gram_coef = gram_first + change
    kink = h * kink
    z1 = z0 - h * gram_coef
    # The outgoing weights integrate a = relu(z) against the residual. On a step with an event
    # the pair's activation is linear on its active part [on, β] and 0 at the event, so Heun's
    # second activation is the one that makes ½h(a_n + a*) that part's exact integral; without
    # an event it is a at θ_{n+1} (z1, before the balance projection).
    a0 = g0 * z0
    event = (on > 0) | (beta < 1)
    part = jnp.maximum(beta - on, 0.0) * (
        jnp.where(on == 0, z0, 0.0) + jnp.where(beta == 1, z1, 0.0)
    )
    a_star = jnp.where(event, part - a0, jnp.where(gates > 0, z1, 0.0))
    a_star = a_star + jnp.where(event | (gates <= 0), 0.0, kink)
    if slope != 0:
        # The leaky activation is (1 − α) relu(z) + α z: the part α z of every pair is the
        # trapezoid of z, with Heun's second value z_{n+1} less the kinks of the neuron's events.
        a_star = (1.0 - slope) * a_star + slope * (z1 + kink)
    grad_v_star = a_star.T @ grad_o_star
    # 6. The step's end θ_n − h coefᵀX̃ (the outgoing weights by Heun's rule), then back to the
    # balance: the rescaling θ_i → c_i θ_i scales neuron i's pre-activations. The incoming
    # weights stay `LazyWeights`, whose ‖w_i − h coef_i X‖² is ‖w_i‖² − 2h coef_i·(Xw_i) +
    # h² coef_iᵀ(X Xᵀ)coef_i, with Xw_i = z_i − b_i and X Xᵀ coef_i = (G coef)_i − Σ_s coef_is
    # from the step's own products.
    sum_coef = jnp.sum(coef_t, axis=1)
    along = jnp.sum(coef_t.T * (z0 - p.b), axis=0)  # coef_i·(X w_i)
    quad = jnp.sum(coef_t.T * gram_coef, axis=0) - sum_coef**2  # ‖coef_i X‖²
    w_sq = lazy.w_sq - 2.0 * h * along + h * h * quad
    b_next = p.b - h * sum_coef
    v_next = p.V - 0.5 * h * (grad_v0 + grad_v_star)
    a_next = w_sq + b_next**2
    v_sq = jnp.sum(v_next**2, axis=1)
    scale = balance_scale_of(a_next, v_sq, q_ref)
    c2 = scale**2
    new_lazy = LazyWeights(
        scale=scale * lazy.scale,
        shift=scale[:, None] * (lazy.shift + h * coef_t),
        w_sq=c2 * w_sq,
    )
    new = Params(W=p.W, b=scale * b_next, V=v_next / scale[:, None])
    # ‖θ_{n+1} − θ_n‖², the incoming weights' part (c − 1)w_i − c h coef_i X from the same terms.
    moved_w = (
        (scale - 1.0) ** 2 * lazy.w_sq - 2.0 * (scale - 1.0) * scale * h * along + c2 * h * h * quad
    )
    moved = jnp.sum(moved_w) + jnp.sum((new.b - p.b) ** 2) + jnp.sum((new.V - p.V) ** 2)
    q_next = a_next - v_sq
    q_new = c2 * a_next - v_sq / c2
    defect = jnp.max(jnp.abs(q_new - q_next) / (c2 * a_next + v_sq / c2))
    if eager:
        new = materialized(new, new_lazy, x)
        new_lazy = None
    new_sliding = jnp.zeros((n, d), bool).at[idx, rows].max(slides_end)
    report = StepReport(
        crossings=jnp.sum((gates > 0) & (gates < 1), dtype=jnp.int32),
        overflow=overflow,
        qp_violation=jnp.max(
            jnp.where(jnp.any(valid, axis=1), jnp.maximum(violation, violation_end), 0.0)
        ),
        dissipation=moved / h,
        balance_defect=defect,
    )
    return SlidingState(new, new_sliding, z1 * scale, new_lazy), report


class SlidingSolution(NamedTuple):
    """Output of `solve_sliding` (grid-aligned records, before the trajectory is assembled)."""

    observables: Observables
    snapshots: Params
    record: SlidingRecord
    num_steps: jax.Array
    rejected_steps: jax.Array
    steps_needed: jax.Array
    balance_defect_max: jax.Array
    final_finite: jax.Array


@functools.partial(jax.jit, static_argnames=("capacity", "max_steps", "output_loss", "halvings"))
def solve_sliding(
    params0: Params,
    data: TrainingData,
    grid: jax.Array,
    save_pos: jax.Array,
    snap_pos: jax.Array,
    h,
    *,
    capacity: int,
    max_steps: int,
    model: Model = PAPER,
    output_loss: Callable | None = None,
    halvings: int = 0,
) -> SlidingSolution:
    """Integrate the flow with `sliding_step` over ``grid`` (sorted times, save and snapshot
    times together), in equal steps of at most ``h`` between consecutive grid times.

    A step in which a neuron has more than ``capacity`` candidate pairs is taken again at half
    length, up to ``halvings`` times (default ``0``: never); each interval between grid times
    starts one halving above where the previous one ended. Only a step at the last halving
    keeps the overflow (`SlidingRecord.overflow`); the retaken steps are counted
    (`SlidingRecord.halvings`, ``rejected_steps``).

    Observables are recorded at ``grid[save_pos]``, parameters and sliding sets at
    ``grid[snap_pos]``. At most ``max_steps`` steps are taken, retaken ones included
    (``steps_needed`` says how many the grid wanted). ``model`` is the network integrated and
    observed: a ReLU, or a leaky ReLU of slope α, integrated as ``a = z (α + (1 − α) g)``
    (`sliding_step`), with its loss.
    ``output_loss`` ``(o [N, K], y) → [N]`` replaces the model's loss of the outputs in the
    field only (a loss no `Model` describes, such as the frozen-residual problem of the exact
    tests; the observables stay those of ``model``).
    """
    if not model.piecewise_linear:
        raise ValueError(
            f"the sliding solver needs a ReLU or leaky-ReLU network; the model is "
            f"{model.describe()}."
        )
    slope = model.slope
    if output_loss is None:
        output_loss = functools.partial(logit_loss, model=model)
    geom = geometry(data.x, data.y)
    dtype = params0.W.dtype
    h = jnp.asarray(h, dtype)
    q_ref = balance(params0)
    n, d = data.x.shape[0], params0.W.shape[0]
    state0 = SlidingState(params0, jnp.zeros((n, d), bool), preactivations(params0, data.x))
    zero_i = jnp.asarray(0, jnp.int32)
    zero_f = jnp.asarray(0.0, dtype)

    def snapshot(buffers, state, j):
        hits = snap_pos == j
        slot = jnp.argmax(hits)
        params_buf, sliding_buf = buffers

        def write(buf, value):
            return jax.lax.dynamic_update_index_in_dim(
                buf, jnp.where(jnp.any(hits), value, buf[slot]), slot, 0
            )

        return jax.tree.map(write, params_buf, state.params), write(sliding_buf, state.sliding)

    def interval(carry, j):
        state, taken, level, dissipation, defect, buffers = carry
        t0, t1 = grid[j - 1], grid[j]
        count = equal_steps(t1 - t0, h).astype(jnp.int32)
        dt = (t1 - t0) / count
        # A step with more candidates in a neuron than the capacity is taken again at half
        # length (at most `halvings` times). The interval starts one level above where the
        # previous one ended: a run that needed shorter steps tries longer ones again.
        level = jnp.maximum(level - 1, 0)

        def more(c):
            remaining, taken = c[1], c[3]
            return (remaining > 0) & (taken < max_steps)

        def body(c):
            st, remaining, level, taken, rejected, cross, cross_max, over, viol, diss, dfc = c
            new, rep = sliding_step(
                st,
                dt / 2.0 ** level.astype(dtype),
                geom,
                q_ref,
                capacity=capacity,
                output_loss=output_loss,
                slope=slope,
            )
            retry = rep.overflow & (level < halvings)
            keep = ~retry
            return (
                jax.tree.map(lambda a, b: jnp.where(retry, a, b), st, new),
                jnp.where(retry, 2 * remaining, remaining - 1),
                level + retry,
                taken + 1,
                rejected + retry,
                cross + jnp.where(keep, rep.crossings, 0),
                jnp.maximum(cross_max, jnp.where(keep, rep.crossings, 0)),
                over | (rep.overflow & keep),
                jnp.maximum(viol, jnp.where(keep, rep.qp_violation, 0.0)),
                diss + jnp.where(keep, rep.dissipation, 0.0),
                jnp.maximum(dfc, jnp.where(keep, rep.balance_defect, 0.0)),
            )

        state = state._replace(lazy=lazy_weights(state.params, n))
        init = (state, count * 2**level, level, taken, zero_i, zero_i, zero_i)
        init = (*init, jnp.asarray(False), zero_f, dissipation, defect)
        out = jax.lax.while_loop(more, body, init)
        state, remaining, level, taken, rejected, cross, cross_max, over, viol = out[:9]
        dissipation, defect = out[9:]
        # The incoming weights, rescaled to the balance with their own norms (the steps' norms
        # are updates, whose rounding adds up), and the carried pre-activations again from the
        # data, at every grid time: rounding does not accumulate over more than one interval.
        assert state.lazy is not None
        params = rescale_to_balance(materialized(state.params, state.lazy, data.x), q_ref)
        state = SlidingState(params, state.sliding, preactivations(params, data.x))
        buffers = snapshot(buffers, state, j)
        # Steps the grid still wants from here when the step budget ran out (0 otherwise).
        left = jnp.where(remaining > 0, remaining, 0)
        out = (
            observe(state.params, data, model),
            jnp.sum(state.sliding, axis=0, dtype=jnp.int32),
            cross,
            cross_max,
            over,
            rejected,
            dissipation,
            viol,
            left,
        )
        return (state, taken, level, dissipation, defect, buffers), out

    n_snap = snap_pos.shape[0]
    buffers = (
        jax.tree.map(lambda a: jnp.zeros((n_snap, *a.shape), a.dtype), params0),
        jnp.zeros((n_snap, n, d), bool),
    )
    buffers = snapshot(buffers, state0, 0)
    carry0 = (state0, zero_i, zero_i, zero_f, zero_f, buffers)
    (state, taken, _, _, defect, buffers), outs = jax.lax.scan(
        interval, carry0, jnp.arange(1, grid.shape[0])
    )
    obs, sliding_count, cross, cross_max, over, rejected, dissipation, viol, left = outs
    # At each save time the state's records, and those of the steps reduced over every grid
    # interval since the previous save time (snapshot-only grid times included).
    since_save = jnp.searchsorted(save_pos, jnp.arange(grid.shape[0]))

    def at_saves(a0, a):
        return jnp.concatenate([a0[None], a])[save_pos]

    def over_saves(reduce, a0, a):
        a = jnp.concatenate([a0[None], a])
        return reduce(a, since_save, num_segments=save_pos.shape[0])

    obs = jax.tree.map(at_saves, observe(params0, data, model), obs)
    sliding_count = at_saves(jnp.zeros((d,), jnp.int32), sliding_count)
    dissipation = at_saves(zero_f, dissipation)
    cross = over_saves(jax.ops.segment_sum, zero_i, cross)
    cross_max = over_saves(jax.ops.segment_max, zero_i, cross_max)
    over = over_saves(jax.ops.segment_max, zero_i, over.astype(jnp.int32)) > 0
    rejected = over_saves(jax.ops.segment_sum, zero_i, rejected)
    viol = over_saves(jax.ops.segment_max, zero_f, viol)
    record = SlidingRecord(
        sliding=sliding_count,
        crossings=cross,
        crossings_max=cross_max,
        overflow=over,
        halvings=rejected,
        dissipation=dissipation,
        qp_violation=viol,
        snapshots=buffers[1],
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(state.params)]))
    return SlidingSolution(
        observables=obs,
        snapshots=buffers[0],
        record=record,
        num_steps=taken,
        rejected_steps=jnp.sum(rejected),
        steps_needed=taken + jnp.sum(left),
        balance_defect_max=defect,
        final_finite=finite,
    )
