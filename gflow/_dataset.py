"""The dataset type every trainer and analysis in gflow consumes.

A classification set `{(x_s, c_s)}` (docs/theory.md §1) with K ≥ 2 classes. Labels are stored as
integers `y_s ∈ {0, …, K − 1}`. For the paper's binary task (K = 2) `0` is class 1 (signed label
`ỹ = +1`) and `1` is class 2 (`ỹ = −1`). An optional held-out split travels with the training
split so that test loss and accuracy can be observed along a trajectory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ._validation import check_sample_counts


def as_float32(x: np.ndarray, beyond_range: Callable[[], str]) -> np.ndarray:
    """``x`` as the float32 in which gflow stores inputs; ``ValueError(beyond_range())`` when a
    value leaves the float32 range (it would become inf)."""
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise ValueError(beyond_range())
    return x32


def _check_split(x, y, which: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(
            f"{which} inputs must be a 2-d array [samples, features]; got shape {x.shape}."
        )
    if y.ndim != 1:
        raise ValueError(f"{which} labels must be a 1-d array [samples]; got shape {y.shape}.")
    check_sample_counts(x.shape[0], y.shape[0], which)
    if x.shape[1] == 0:
        raise ValueError(f"{which} inputs have zero features.")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{which} inputs must be numeric; got dtype {x.dtype}.")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"{which} inputs contain {bad} non-finite values (NaN or inf).")
    x32 = as_float32(
        x,
        lambda: (
            f"{which} inputs reach |x| = {float(np.max(np.abs(x))):.3g}, beyond the float32 "
            f"range ({float(np.finfo(np.float32).max):.3g}) in which a Dataset stores them."
        ),
    )
    if not np.any(x32):
        raise ValueError(f"{which} inputs are all 0: there is nothing to learn from.")
    x = x32
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            pass
        else:
            raise ValueError(
                f"{which} labels must be integers 0 (class 1) or 1 (class 2); got dtype {y.dtype}."
            )
    y = y.astype(np.int32)
    values = set(np.unique(y).tolist())
    if not values <= set(range(classes)):
        allowed = "0 (class 1) or 1 (class 2)" if classes == 2 else f"0 … {classes - 1}"
        raise ValueError(f"{which} labels must be {allowed}; got values {sorted(values)}.")
    return x, y


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A validated classification dataset (binary unless ``classes`` says otherwise).

    Attributes:
        x: float32 inputs ``[N, D]``.
        y: int32 labels ``[N]`` in ``{0, …, K − 1}``; for K = 2, 0 = class 1 (ỹ = +1) and
            1 = class 2 (ỹ = −1).
        name: short identifier (``"mnist5k-0to4-vs-5to9"``, ``"clusters"``...).
        provenance: where the numbers came from and how they were preprocessed.
        x_test, y_test: optional held-out split with the same feature count.
        classes: K ≥ 2, the number of classes (default 2).

    Construction validates: 2-d inputs, matching sample counts, finite values within the
    float32 range, inputs not all 0, labels in {0, …, K − 1} with every class present in the
    training split.

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.eye(2, 3), np.array([0, 1]), name="toy", provenance="hand-made")
        >>> ds.n_samples, ds.dim
        (2, 3)
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    provenance: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: int = 2

    def __post_init__(self):
        if not isinstance(self.classes, int) or isinstance(self.classes, bool) or self.classes < 2:
            raise ValueError(f"classes K must be an integer >= 2; got {self.classes!r}.")
        x, y = _check_split(self.x, self.y, "training", self.classes)
        counts = np.bincount(y, minlength=self.classes)
        if counts.min() == 0 and self.classes == 2:
            missing = "class 1 (label 0)" if counts[0] == 0 else "class 2 (label 1)"
            raise ValueError(
                f"training labels contain only one class: {missing} has no samples; "
                "a binary task needs both."
            )
        if counts.min() == 0:
            empty = [int(k) for k in np.flatnonzero(counts == 0)]
            raise ValueError(
                f"training labels leave classes {empty} without samples; a {self.classes}-class "
                "task needs every class."
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError("x_test and y_test must be given together (or both omitted).")
        if self.x_test is not None:
            xt, yt = _check_split(self.x_test, self.y_test, "test", self.classes)
            if xt.shape[1] != x.shape[1]:
                raise ValueError(
                    f"test inputs have {xt.shape[1]} features but training inputs have "
                    f"{x.shape[1]}."
                )
            object.__setattr__(self, "x_test", xt)
            object.__setattr__(self, "y_test", yt)

    @property
    def n_samples(self) -> int:
        """N, the number of training samples."""
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        """D, the input dimension."""
        return int(self.x.shape[1])

    def require_binary(self, what: str) -> None:
        """``ValueError`` naming ``what`` when the task has K > 2 classes: the paper's closed
        forms (signed labels ỹ, κ = ±1, cells' targets T_κ) are written for two."""
        if self.classes != 2:
            raise ValueError(
                f"{what} is not covered by the theory for K = {self.classes} classes: its closed "
                "forms (signed labels, κ = ±1, the targets T_κ) are the paper's binary ones "
                "(docs/theory.md §10 says what carries over); use two class groups."
            )

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    @property
    def signed_labels(self) -> np.ndarray:
        """ỹ_s = +1 for class 1 (label 0), −1 for class 2 (label 1); NaN for K > 2 classes, where
        the paper's signed sums are not defined (docs/theory.md §10), so that no binary closed
        form returns a number for them."""
        if self.classes != 2:
            return np.full(self.y.shape, np.nan, np.float32)
        return (1 - 2 * self.y).astype(np.float32)

    def class_counts(self) -> tuple[int, ...]:
        c = np.bincount(self.y, minlength=self.classes)
        return tuple(int(v) for v in c)

    def describe(self) -> str:
        counts = self.class_counts()
        test = f", test N={self.x_test.shape[0]}" if self.x_test is not None else ""
        if self.classes == 2:
            per_class = f"{counts[0]} class 1 / {counts[1]} class 2"
        else:
            per_class = f"{self.classes} classes: " + " / ".join(str(c) for c in counts)
        return f"{self.name}: N={self.n_samples} ({per_class}), D={self.dim}{test}"
