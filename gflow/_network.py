"""The network and its loss as pure JAX functions (docs/theory.md §1, §10).

    z_i(x) = w_i·x + b_i,   a_i = σ(z_i),   o(x) = Σ_i v_i a_i(x) ∈ R^K
    p = softmax(o),   ℓ_s = −log p_{c_s},   L = (1/N) Σ_s ℓ_s

Parameters are the pytree ``Params(W [d, D], b [d], V [d, K])``; there is no output bias. The
number of classes K is the width of V (K = 2: the paper's binary task). The activation σ (ReLU by
default, leaky ReLU, softplus-β) and the loss (softmax cross-entropy by default, or square loss)
are chosen by a `Model`; every function below takes one as ``model`` and defaults to the paper's.
Gradients of `loss` come from ``jax.grad``; `closed_form_gradient` restates docs/theory.md §1 once,
as an independent oracle for tests.
"""

import dataclasses
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
        V: outgoing weights ``[d, K]`` (row i is v_i; K classes, 2 for the paper's task).
    """

    W: Shaped[Array, "*seeds neurons dim"]
    b: Shaped[Array, "*seeds neurons"]
    V: Shaped[Array, "*seeds neurons classes"]


def _check_init_args(width: int, dim: int, sigma: float, classes: int = 2) -> None:
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"width d must be a positive integer; got {width!r}.")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"input dimension D must be a positive integer; got {dim!r}.")
    if not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes K must be an integer >= 2; got {classes!r}.")
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
    classes: int = 2,
) -> Params:
    """Small initialisation: ``W, V ~ N(0, σ²)`` i.i.d., ``b = 0`` (docs/theory.md §1); V has
    ``classes`` = K columns.

    With ``orthogonal=True`` the rows of W are mutually orthogonal directions (a random
    orthonormal frame when d <= D, otherwise d directions in D dims drawn as a tight frame)
    rescaled to the norms a Gaussian draw would give, so that only directions change.

    ``sigma`` may be a traced scalar (vmapped over a sweep of init scales).

    Example:
        >>> p = init_params(jax.random.key(0), 4, 3, 1e-5)
        >>> p.W.shape, p.b.shape, p.V.shape
        ((4, 3), (4,), (4, 2))
    """
    _check_init_args(width, dim, sigma, classes)
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
    V = sigma * jax.random.normal(kv, (width, classes), dtype)
    b = jnp.zeros((width,), dtype)
    return Params(W=W, b=b, V=V)


ACTIVATIONS = ("relu", "leaky_relu", "softplus")
LOSSES = ("cross_entropy", "square")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Model:
    """What the network computes from its parameters: the activation, the loss, and optionally the
    point of a linearisation (docs/theory.md §10).

    Attributes:
        activation: ``"relu"`` (default, the paper's), ``"leaky_relu"`` (σ(z) = z for z > 0,
            α z otherwise) or ``"softplus"`` (σ(z) = log(1 + e^{βz})/β, smooth; → relu as
            β → ∞).
        slope: α ∈ [0, 1) of the leaky ReLU (0 for the others).
        beta: β > 0 of softplus.
        loss: ``"cross_entropy"`` (softmax cross-entropy, default) or ``"square"``
            (ℓ_s = ½‖o_s − e_{c_s}‖², one-hot targets).
        anchor: ``None``, or parameters θ₀ at which the network is linearised: the model is then
            the twin ``f_lin(θ) = f(θ₀) + J(θ₀)(θ − θ₀)``, evaluated by one ``jax.jvp`` (no
            Jacobian is formed). See `linearised`.

    A `Model` is a pytree whose only leaves are the anchor's arrays, so it passes through
    ``jax.jit`` and ``jax.vmap`` as an argument; the other fields are static.

    Example:
        >>> Model().is_paper, Model("leaky_relu", slope=0.1).homogeneous
        (True, True)
        >>> Model("softplus", beta=0.0)
        Traceback (most recent call last):
        ...
        ValueError: softplus needs beta > 0; got 0.0.
    """

    activation: str = "relu"
    slope: float = 0.0
    beta: float = 1.0
    loss: str = "cross_entropy"
    anchor: Params | None = None

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}.")
        slope, beta = float(self.slope), float(self.beta)
        if self.activation == "leaky_relu" and not 0.0 <= slope < 1.0:
            raise ValueError(f"leaky_relu needs a slope in [0, 1); got {self.slope!r}.")
        if self.activation != "leaky_relu" and slope != 0.0:
            raise ValueError(
                f"slope applies to leaky_relu only; got {self.slope!r} for {self.activation}."
            )
        if self.activation == "softplus" and not (beta > 0 and np.isfinite(beta)):
            raise ValueError(f"softplus needs beta > 0; got {self.beta!r}.")
        object.__setattr__(self, "slope", slope)
        object.__setattr__(self, "beta", beta)

    def tree_flatten(self):
        return (self.anchor,), (self.activation, self.slope, self.beta, self.loss)

    @classmethod
    def tree_unflatten(cls, aux, children):
        model = object.__new__(cls)
        for name, value in zip(("activation", "slope", "beta", "loss"), aux):
            object.__setattr__(model, name, value)
        object.__setattr__(model, "anchor", children[0])
        return model

    @property
    def is_paper(self) -> bool:
        """ReLU, cross-entropy, not linearised: the model of the paper's theory."""
        return self.activation == "relu" and self.loss == "cross_entropy" and self.anchor is None

    @property
    def homogeneous(self) -> bool:
        """σ(cz) = c σ(z) for c > 0 (ReLU, leaky ReLU): the balance Q_i is conserved by the flow
        (docs/theory.md §2), and the network is not linearised."""
        return self.activation != "softplus" and self.anchor is None

    @property
    def piecewise_linear(self) -> bool:
        """ReLU or leaky ReLU, not linearised: the field jumps across the gate hyperplanes (the
        gated and sliding solvers apply)."""
        return self.homogeneous

    def describe(self) -> str:
        """Short text such as ``"relu, cross_entropy"`` or ``"leaky_relu(0.1), square"``."""
        act = {
            "relu": "relu",
            "leaky_relu": f"leaky_relu({self.slope:g})",
            "softplus": f"softplus({self.beta:g})",
        }[self.activation]
        twin = ", linearised" if self.anchor is not None else ""
        return f"{act}, {self.loss}{twin}"


PAPER = Model()


def parse_activation(text: str) -> Model:
    """``"relu"``, ``"leaky_relu:0.1"`` or ``"softplus:20"`` → the `Model` with that activation.

    Example:
        >>> parse_activation("leaky_relu:0.1").slope
        0.1
    """
    name, _, arg = str(text).partition(":")
    try:
        if name == "leaky_relu":
            return Model("leaky_relu", slope=float(arg) if arg else 0.01)
        if name == "softplus":
            return Model("softplus", beta=float(arg) if arg else 1.0)
    except ValueError as err:
        if "could not convert" in str(err):
            raise ValueError(
                f"activation must look like relu, leaky_relu:ALPHA or softplus:BETA; got {text!r}."
            ) from None
        raise
    if name == "relu" and not arg:
        return Model()
    raise ValueError(
        f"activation must look like relu, leaky_relu:ALPHA or softplus:BETA; got {text!r}."
    )


def linearised(params0: Params, model: Model = PAPER) -> Model:
    """The linearised twin of ``model`` at ``params0``: f_lin(θ) = f(θ₀) + J(θ₀)(θ − θ₀)
    (docs/theory.md §10.4). Train it with any trainer by passing it as ``model``."""
    if model.anchor is not None:
        raise ValueError("the model is already linearised.")
    return dataclasses.replace(model, anchor=params0)


def preactivations(params: Params, x: Inputs) -> Float[Array, "samples neurons"]:
    """z_i(x_s) = w_i·x_s + b_i, shape ``[N, d]``."""
    return jnp.asarray(x) @ params.W.T + params.b[None, :]


def gating_pattern(params: Params, x: Inputs) -> Shaped[Array, "samples neurons"]:
    """g_i(s) = 1[z_i(x_s) > 0] as booleans ``[N, d]`` (docs/theory.md §1).

    The single owner of the ReLU gate: ``z = 0`` is closed, matching ``jax.nn.relu``'s
    derivative at the kink.
    """
    return preactivations(params, x) > 0


def activation(z: jax.Array, model: Model = PAPER) -> jax.Array:
    """σ(z) of the model: relu(z), leaky ReLU ``z (α + (1 − α) 1[z > 0])``, or
    softplus ``log(1 + e^{βz})/β``."""
    if model.activation == "softplus":
        return jax.nn.softplus(model.beta * z) / model.beta
    if model.activation == "leaky_relu":
        return jnp.where(z > 0, z, model.slope * z)
    return jax.nn.relu(z)


def gate_slopes(gates: jax.Array, model: Model = PAPER) -> jax.Array:
    """σ'(z) of a piecewise-linear activation from its gates: ``α + (1 − α) g`` (g for ReLU)."""
    g = gates.astype(jnp.result_type(float)) if gates.dtype == bool else gates
    if model.activation == "leaky_relu":
        return model.slope + (1.0 - model.slope) * g
    return g


def _network_logits(params: Params, x: Inputs, model: Model) -> jax.Array:
    return activation(preactivations(params, x), model) @ params.V


def logits(params: Params, x: Inputs, model: Model = PAPER) -> Float[Array, "samples classes"]:
    """o(x_s) = Σ_i v_i σ(w_i·x_s + b_i), shape ``[N, K]``; for a linearised model
    f(θ₀; x_s) + J(θ₀)(θ − θ₀), one forward-mode product."""
    if model.anchor is None:
        return _network_logits(params, x, model)
    anchor = model.anchor
    tangent = jax.tree.map(jnp.subtract, params, anchor)
    f0, df = jax.jvp(lambda p: _network_logits(p, x, model), (anchor,), (tangent,))
    return f0 + df


def logit_loss(
    o: Float[Array, "samples classes"], y: Labels, model: Model = PAPER
) -> Float[Array, " samples"]:
    """ℓ_s of logits ``o`` ``[N, K]``, shape ``[N]``: −log softmax(o_s)_{c_s} (its gradient in
    o_s is r_s = p_s − e_{c_s}) or, for the square loss, ½‖o_s − e_{c_s}‖² (r_s = o_s − e_{c_s})."""
    y = jnp.asarray(y).astype(jnp.int32)
    if model.loss == "square":
        target = jax.nn.one_hot(y, o.shape[-1], dtype=o.dtype)
        return 0.5 * jnp.sum((o - target) ** 2, axis=-1)
    logp = jax.nn.log_softmax(o, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def per_sample_loss(
    params: Params, x: Inputs, y: Labels, model: Model = PAPER
) -> Float[Array, " samples"]:
    """ℓ_s of sample s, shape ``[N]``; ``y`` holds class indices 0 … K − 1."""
    return logit_loss(logits(params, x, model), y, model)


def loss(params: Params, x: Inputs, y: Labels, model: Model = PAPER) -> Float[Array, ""]:
    """L = (1/N) Σ_s ℓ_s (docs/theory.md §1)."""
    return jnp.mean(per_sample_loss(params, x, y, model))


def accuracy(params: Params, x: Inputs, y: Labels, model: Model = PAPER) -> Float[Array, ""]:
    """Fraction of samples whose true class has the strictly largest logit (ties count as
    wrong)."""
    o = logits(params, x, model)
    y = jnp.asarray(y).astype(jnp.int32)
    own = jnp.take_along_axis(o, y[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, o.shape[-1], dtype=bool), -jnp.inf, o)
    return jnp.mean((own > jnp.max(others, axis=-1)).astype(o.dtype))


def output_residuals(o: jax.Array, y: Labels, model: Model = PAPER) -> jax.Array:
    """r_s = ∂ℓ_s/∂o_s of logits ``o`` ``[N, K]``: p_s − e_{c_s} (cross-entropy) or
    o_s − e_{c_s} (square loss)."""
    target = jax.nn.one_hot(jnp.asarray(y).astype(jnp.int32), o.shape[-1], dtype=o.dtype)
    if model.loss == "square":
        return o - target
    return jax.nn.softmax(o, axis=-1) - target


def residuals(
    params: Params, x: Inputs, y: Labels, model: Model = PAPER
) -> Float[Array, "samples classes"]:
    """r_s = ∂ℓ_s/∂o, shape ``[N, K]`` (docs/theory.md §1)."""
    return output_residuals(logits(params, x, model), y, model)


def balance(params: Params) -> Float[Array, "*seeds neurons"]:
    """Q_i = ‖w_i‖² + b_i² − ‖v_i‖² (docs/theory.md §2), ``[d]``: conserved by the flow."""
    return jnp.sum(params.W**2, axis=1) + params.b**2 - jnp.sum(params.V**2, axis=1)


def closed_form_gradient(params: Params, x: Inputs, y: Labels, model: Model = PAPER) -> Params:
    """∇L written out (docs/theory.md §1), used as a test oracle against ``jax.grad``.

    ∂L/∂v_i = (1/N) Σ_s a_i(s) r_s
    ∂L/∂w_i = (1/N) Σ_s σ'(z_i(s)) (v_i·r_s) x_s
    ∂L/∂b_i = (1/N) Σ_s σ'(z_i(s)) (v_i·r_s)

    with σ' = g (ReLU), α + (1 − α) g (leaky ReLU) or sigmoid(βz) (softplus). Not for a
    linearised model.
    """
    if model.anchor is not None:
        raise ValueError("closed_form_gradient is written for the network, not its linearisation.")
    n = x.shape[0]
    z = preactivations(params, x)
    if model.activation == "softplus":
        slope = jax.nn.sigmoid(model.beta * z)
    else:
        slope = gate_slopes((z > 0).astype(x.dtype), model)
    a = activation(z, model)
    r = residuals(params, x, y, model)
    gated = slope * (r @ params.V.T)  # [N, d]: σ'(z_i(s)) (v_i·r_s)
    return Params(W=gated.T @ x / n, b=jnp.sum(gated, axis=0) / n, V=a.T @ r / n)


loss_and_grad = jax.value_and_grad(loss)
