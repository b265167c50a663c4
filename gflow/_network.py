"""The network and its loss as pure JAX functions (docs/theory.md §1).

    z_i(x) = w_i·x + b_i,   a_i = relu(z_i),   o(x) = Σ_i v_i a_i(x) ∈ R²
    p = softmax(o),   ℓ_s = −log p_{c_s},   L = (1/N) Σ_s ℓ_s

Parameters are the pytree ``Params(W [d, D], b [d], V [d, 2])``; there is no output bias.
Gradients of `loss` come from ``jax.grad``; `closed_form_gradient` restates docs/theory.md §1 once,
as an
independent oracle for tests.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Integer, Shaped

# Shape-annotated array types of the public API (checked at run time by jaxtyping where a type
# checker is installed). Inputs may be NumPy arrays; outputs are JAX arrays.
Inputs = Float[Array | np.ndarray, "samples dim"]
Labels = Integer[Array | np.ndarray, " samples"]


class Params(NamedTuple):
    """Weights of the one-hidden-layer network.

    Attributes:
        W: incoming weights ``[d, D]`` (row i is w_i).
        b: biases ``[d]``.
        V: outgoing weights ``[d, 2]`` (row i is v_i).
    """

    W: Shaped[Array, "*seeds neurons dim"]
    b: Shaped[Array, "*seeds neurons"]
    V: Shaped[Array, "*seeds neurons 2"]


def _check_init_args(width: int, dim: int, sigma: float) -> None:
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"width d must be a positive integer; got {width!r}.")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"input dimension D must be a positive integer; got {dim!r}.")
    try:
        s = float(sigma)
    except TypeError:
        return  # traced value inside vmap: checked by the caller's configuration.
    if not s > 0:
        raise ValueError(f"init scale sigma must be > 0; got {sigma!r}.")


def init_params(
    key: jax.Array,
    width: int,
    dim: int,
    sigma,
    *,
    orthogonal: bool = False,
    dtype=jnp.float32,
) -> Params:
    """Small initialisation: ``W, V ~ N(0, σ²)`` i.i.d., ``b = 0`` (docs/theory.md §1).

    With ``orthogonal=True`` the rows of W are mutually orthogonal directions (a random
    orthonormal frame when d <= D, otherwise d directions in D dims drawn as a tight frame)
    rescaled to the norms a Gaussian draw would give, so that only directions change.

    ``sigma`` may be a traced scalar (vmapped over a sweep of init scales).

    Example:
        >>> p = init_params(jax.random.key(0), 4, 3, 1e-5)
        >>> p.W.shape, p.b.shape, p.V.shape
        ((4, 3), (4,), (4, 2))
    """
    _check_init_args(width, dim, sigma)
    kw, kv, kn = jax.random.split(key, 3)
    W = jax.random.normal(kw, (width, dim), dtype)
    if orthogonal:
        norms = jnp.linalg.norm(W, axis=1, keepdims=True)
        big, small = max(width, dim), min(width, dim)
        q, r = jnp.linalg.qr(jax.random.normal(kn, (big, small), dtype))
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        directions = q if width >= dim else q.T  # [width, dim] with orthonormal rows or columns
        directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
        W = directions * norms
    W = sigma * W
    V = sigma * jax.random.normal(kv, (width, 2), dtype)
    b = jnp.zeros((width,), dtype)
    return Params(W=W, b=b, V=V)


def preactivations(params: Params, x: Inputs) -> Float[Array, "samples neurons"]:
    """z_i(x_s) = w_i·x_s + b_i, shape ``[N, d]``."""
    return jnp.asarray(x) @ params.W.T + params.b[None, :]


def gating_pattern(params: Params, x: Inputs) -> Shaped[Array, "samples neurons"]:
    """g_i(s) = 1[z_i(x_s) > 0] as booleans ``[N, d]`` (docs/theory.md §1).

    The single owner of the ReLU gate: ``z = 0`` is closed, matching ``jax.nn.relu``'s
    derivative at the kink.
    """
    return preactivations(params, x) > 0


def logits(params: Params, x: Inputs) -> Float[Array, "samples 2"]:
    """o(x_s) = Σ_i v_i relu(w_i·x_s + b_i), shape ``[N, 2]``."""
    return jax.nn.relu(preactivations(params, x)) @ params.V


def logit_loss(o: Float[Array, "samples 2"], y: Labels) -> Float[Array, " samples"]:
    """ℓ_s = −log softmax(o_s)_{c_s} of logits ``o`` ``[N, 2]``, shape ``[N]``: the loss as a
    function of the network's output (its gradient in o_s is r_s = p_s − y_s)."""
    logp = jax.nn.log_softmax(o, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1)[:, 0]


def per_sample_loss(params: Params, x: Inputs, y: Labels) -> Float[Array, " samples"]:
    """ℓ_s = −log softmax(o(x_s))_{c_s}, shape ``[N]``; ``y`` holds labels 0/1."""
    return logit_loss(logits(params, x), y)


def loss(params: Params, x: Inputs, y: Labels) -> Float[Array, ""]:
    """L = (1/N) Σ_s ℓ_s (docs/theory.md §1)."""
    return jnp.mean(per_sample_loss(params, x, y))


def accuracy(params: Params, x: Inputs, y: Labels) -> Float[Array, ""]:
    """Fraction of samples whose larger logit is the true class (ties count as wrong)."""
    o = logits(params, x)
    margin = o[:, 0] - o[:, 1]
    correct = jnp.where(y == 0, margin > 0, margin < 0)
    return jnp.mean(correct.astype(o.dtype))


def residuals(params: Params, x: Inputs, y: Labels) -> Float[Array, "samples 2"]:
    """r_s = p(x_s) − y_s = ∂ℓ_s/∂o, shape ``[N, 2]`` (docs/theory.md §1)."""
    p = jax.nn.softmax(logits(params, x), axis=-1)
    return p - jax.nn.one_hot(y, 2, dtype=p.dtype)


def balance(params: Params) -> Float[Array, "*seeds neurons"]:
    """Q_i = ‖w_i‖² + b_i² − ‖v_i‖² (docs/theory.md §2), ``[d]``: conserved by the flow."""
    return jnp.sum(params.W**2, axis=1) + params.b**2 - jnp.sum(params.V**2, axis=1)


def closed_form_gradient(params: Params, x: Inputs, y: Labels) -> Params:
    """∇L written out (docs/theory.md §1), used as a test oracle against ``jax.grad``.

    ∂L/∂v_i = (1/N) Σ_s a_i(s) r_s
    ∂L/∂w_i = (1/N) Σ_s g_i(s) (v_i·r_s) x_s
    ∂L/∂b_i = (1/N) Σ_s g_i(s) (v_i·r_s)
    """
    n = x.shape[0]
    z = preactivations(params, x)
    g = (z > 0).astype(x.dtype)
    a = jax.nn.relu(z)
    r = residuals(params, x, y)
    gated = g * (r @ params.V.T)  # [N, d]: g_i(s) (v_i·r_s)
    return Params(W=gated.T @ x / n, b=jnp.sum(gated, axis=0) / n, V=a.T @ r / n)


loss_and_grad = jax.value_and_grad(loss)
