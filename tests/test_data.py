"""Data sources: readers on hand-written files in the real formats, preprocessing invariants,
the embedded MNIST default, synthetic clusters and the CIFAR preset (docs/theory.md §1, §7)."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from gflow import _data
from gflow.datasets import (
    Dataset,
    cifar_binary,
    cifar_luma,
    gaussian_clusters,
    gaussian_clusters_with_means,
    load_dataset,
    mnist_default,
    preprocess,
    read_cifar10_python,
    read_csv_digits,
    read_embedded_mnist5k,
    read_mnist_idx,
    read_npz_images,
    xor_clusters,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_CSV = SHARED_DATA / "mnist_5k.csv.gz"
CIFAR_NPZ = SHARED_DATA / "cifar10_4class_jpeg.npz"
EMBEDDED_CONTENT_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


# --------------------------------------------------------------------------- file writers


def write_idx(
    path: Path, array: np.ndarray, magic: int, *, gz: bool, count: int | None = None
) -> Path:
    dims = list(array.shape)
    if count is not None:
        dims[0] = count
    blob = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
    blob += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def idx_pair(tmp_path: Path, n=12, *, gz=False, prefix="train", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    ext = ".gz" if gz else ""
    ip = write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, 0x803, gz=gz)
    lp = write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels, 0x801, gz=gz)
    return ip, lp, images, labels


def coded_cifar_rows(labels: np.ndarray, rng) -> np.ndarray:
    """Rows whose three colour planes all equal 20·label + small noise: luma recovers the label."""
    value = 20 * labels[:, None] + rng.integers(0, 10, size=(len(labels), 1024))
    return np.tile(value, (1, 3)).astype(np.uint8)


def decode_label(x_none_preprocessed: np.ndarray) -> np.ndarray:
    return np.unique(np.round(x_none_preprocessed * 255).astype(int) // 20, axis=1)[:, 0]


def fake_cifar_dir(tmp_path: Path, per_batch=40) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        labels = np.arange(per_batch) % 10
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": coded_cifar_rows(labels, rng),
        }
        with open(d / name, "wb") as fh:
            pickle.dump(batch, fh)
    return d


def python2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 python batch as Python 2's cPickle wrote the official files (protocol 2):
    ``str`` values as BINSTRING, the array rebuilt by ``numpy.core.multiarray._reconstruct``
    with a ``numpy.dtype('u1')`` state, its bytes as one string."""

    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    rows, cols = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + string(b"b")
        + b"\x87R(K\x01M"
        + struct.pack("<H", rows)
        + b"M"
        + struct.pack("<H", cols)
        + b"\x86cnumpy\ndtype\n"
        + string(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + string(data.astype(np.uint8).tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([k]) for k in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def write_csv(path: Path, pixels: np.ndarray, labels: np.ndarray, *, gz: bool) -> Path:
    rows = "\n".join(",".join(str(v) for v in (*p, l)) for p, l in zip(pixels, labels)) + "\n"
    path.write_bytes(gzip.compress(rows.encode()) if gz else rows.encode())
    return path


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_mnist_idx_roundtrip(tmp_path, gz):
    ip, lp, images, labels = idx_pair(tmp_path, gz=gz)
    x, y = read_mnist_idx(ip, lp)
    assert x.dtype == np.uint8 and x.shape == (12, 12)
    np.testing.assert_array_equal(x, images.reshape(12, -1))
    np.testing.assert_array_equal(y, labels)


def test_read_mnist_idx_bad_magic(tmp_path):
    _, lp, images, _ = idx_pair(tmp_path)
    bad = write_idx(tmp_path / "bad", images, 0x801 + 0x10, gz=False)
    with pytest.raises(ValueError, match=r"magic number 0x00000811.*expected 0x00000803"):
        read_mnist_idx(bad, lp)


def test_read_mnist_idx_truncated(tmp_path):
    ip, lp, _, _ = idx_pair(tmp_path)
    ip.write_bytes(ip.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_mnist_idx(ip, lp)
    ip.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_mnist_idx(ip, lp)


def test_read_mnist_idx_truncated_gzip(tmp_path):
    ip, lp, _, _ = idx_pair(tmp_path, gz=True)
    ip.write_bytes(ip.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_mnist_idx(ip, lp)


def test_read_mnist_idx_count_mismatch(tmp_path):
    ip, _, _, labels = idx_pair(tmp_path)
    lp = write_idx(tmp_path / "short-labels", labels[:10], 0x801, gz=False)
    with pytest.raises(ValueError, match="12 images but .* 10 labels"):
        read_mnist_idx(ip, lp)


def test_read_mnist_idx_missing_file(tmp_path):
    ip, _, _, _ = idx_pair(tmp_path)
    with pytest.raises(ValueError, match="not found: .*nowhere"):
        read_mnist_idx(ip, tmp_path / "nowhere")


def test_mnist_idx_directory_spec(tmp_path):
    idx_pair(tmp_path, n=40, gz=True)
    idx_pair(tmp_path, n=20, prefix="t10k", seed=1)
    ds = load_dataset(f"mnist-idx:{tmp_path}", class1=(0, 1), class2=(2,), n_per_class=4, seed=3)
    assert ds.class_counts() == (4, 4) and ds.dim == 12
    assert ds.has_test and tuple(np.bincount(ds.y_test)) == (4, 2)
    assert ds.name == "mnist-0+1-vs-2" and "center-unit" in ds.provenance


# --------------------------------------------------------------------------- CIFAR python batches


def test_read_cifar10_python(tmp_path):
    d = fake_cifar_dir(tmp_path)
    x, y = read_cifar10_python(d, split="train")
    assert x.shape == (80, 3072) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, np.tile(np.arange(40) % 10, 2))
    xt, yt = read_cifar10_python(tmp_path, split="test")  # parent of cifar-10-batches-py works too
    assert xt.shape == (40, 3072)
    np.testing.assert_array_equal(decode_label(cifar_luma(xt) / 255), yt)
    with pytest.raises(ValueError, match="split must be"):
        read_cifar10_python(d, split="valid")


def test_read_cifar10_python_errors(tmp_path):
    with pytest.raises(ValueError, match="directory not found"):
        read_cifar10_python(tmp_path / "absent")
    d = fake_cifar_dir(tmp_path)
    (d / "data_batch_4").write_bytes((d / "data_batch_1").read_bytes())
    with pytest.raises(ValueError, match=r"not numbered 1\.\.k"):
        read_cifar10_python(d)
    (d / "data_batch_4").unlink()
    (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_2 is corrupt"):
        read_cifar10_python(d)
    with open(d / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match="3 inputs vs 2 labels"):
        read_cifar10_python(d)
    (d / "test_batch").unlink()
    with pytest.raises(ValueError, match="batch file not found: .*test_batch"):
        read_cifar10_python(d, split="test")


def test_cifar_batches_in_every_pickle_format_load(tmp_path):
    """The restricted unpickler reads the official files' format (Python 2 cPickle, protocol 2,
    numpy.core names) and batches re-saved by Python 3 at every protocol, without warnings."""
    rng = np.random.default_rng(2)
    labels = np.arange(30) % 10
    rows = coded_cifar_rows(labels, rng)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(python2_cifar_batch(rows, labels.tolist()))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        batch = {b"data": rows, b"labels": labels.tolist(), b"batch_label": b"training"}
        (d / f"data_batch_{protocol + 2}").write_bytes(pickle.dumps(batch, protocol=protocol))
    (d / "test_batch").write_bytes(python2_cifar_batch(rows, labels.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = read_cifar10_python(d)
    assert x.dtype == np.uint8 and x.shape == ((pickle.HIGHEST_PROTOCOL + 2) * 30, 3072)
    np.testing.assert_array_equal(x, np.tile(rows, (pickle.HIGHEST_PROTOCOL + 2, 1)))
    np.testing.assert_array_equal(y, np.tile(labels, pickle.HIGHEST_PROTOCOL + 2))
    ds = cifar_binary(d, n_per_class=6, test_per_class=4, preprocess="none")
    np.testing.assert_array_equal(np.isin(decode_label(ds.x), (0, 3)), ds.y == 0)


def test_cifar_batch_asking_for_anything_else_is_refused(tmp_path):
    """Only numpy's array reconstructors are allowed: a batch that would build any other object
    (here a harmless one, collections.OrderedDict) is refused, naming it."""
    import collections

    d = fake_cifar_dir(tmp_path)
    batch = collections.OrderedDict(data=np.zeros((2, 3072), np.uint8), labels=[0, 1])
    (d / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(
        ValueError,
        match=r"data_batch_2 is refused: it asks for "
        r"collections\.OrderedDict, which a CIFAR-10 batch never holds",
    ):
        read_cifar10_python(d)


def test_cifar_binary_from_directory_maps_labels(tmp_path):
    d = fake_cifar_dir(tmp_path)
    ds = cifar_binary(d, n_per_class=6, test_per_class=4, preprocess="none")
    assert ds.dim == 1024 and ds.class_counts() == (6, 6)
    assert tuple(np.bincount(ds.y_test)) == (4, 4)
    source = decode_label(ds.x)
    # class 1 = airplane(0) + cat(3), class 2 = automobile(1) + bird(2), drawn evenly.
    assert sorted(source[ds.y == 0].tolist()) == [0, 0, 0, 3, 3, 3]
    assert sorted(source[ds.y == 1].tolist()) == [1, 1, 1, 2, 2, 2]
    assert set(decode_label(ds.x_test)[ds.y_test == 0]) == {0, 3}
    assert ds.name == "cifar10-airplane+cat-vs-automobile+bird"
    assert "python batches" in ds.provenance
    rgb = cifar_binary(d, n_per_class=6, test_per_class=4, grayscale=False)
    assert rgb.dim == 3072 and rgb.name.endswith("-rgb")
    with pytest.raises(ValueError, match="n_per_class=20 is larger than available"):
        cifar_binary(d, n_per_class=20)


def test_cifar_luma_hand_made_pixel():
    row = np.zeros((1, 3072), np.uint8)
    row[0, 5], row[0, 1024 + 5], row[0, 2048 + 5] = 200, 100, 40  # pixel (0, 5): R, G, B
    y = cifar_luma(row)
    assert y.shape == (1, 1024)
    assert y[0, 5] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 40, abs=1e-4)
    assert np.count_nonzero(y) == 1


# --------------------------------------------------------------------------- npz


def test_read_npz_images_and_binary_spec(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(20, 5)),
        y_train=np.arange(20) % 2,
        x_test=rng.normal(size=(6, 5)),
        y_test=np.arange(6) % 2,
    )
    x, y, xt, yt = read_npz_images(path)
    assert x.shape == (20, 5) and yt.tolist() == [0, 1, 0, 1, 0, 1]
    ds = load_dataset(f"npz:{path}", n_per_class=5, preprocess="center")
    assert ds.class_counts() == (5, 5) and ds.x_test.shape == (6, 5) and ds.name == "npz-toy"
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['grayscale'\]"):
        load_dataset(f"npz:{path}", grayscale=False)


def test_npz_cifar_like_goes_to_cifar_preset(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.arange(40) % 4
    path = tmp_path / "four_jpeg.npz"
    np.savez(
        path,
        x_train=coded_cifar_rows(labels, rng),
        y_train=labels,
        x_test=coded_cifar_rows(labels, rng),
        y_test=labels,
    )
    ds = load_dataset(f"npz:{path}", n_per_class=8, test_per_class=4, preprocess="none")
    assert ds.dim == 1024 and ds.class_counts() == (8, 8)
    assert set(decode_label(ds.x)[ds.y == 0]) == {0, 3}
    assert "(JPEG copy)" in ds.provenance


def test_read_npz_images_corrupt_and_bad_layout(tmp_path):
    with pytest.raises(ValueError, match="npz file not found"):
        read_npz_images(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(ValueError, match="junk.npz"):
        read_npz_images(junk)
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((4, 3)), y_train=np.array([0, 1, 0, 1]))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ValueError, match="truncated.npz"):
        read_npz_images(truncated)
    nokeys = tmp_path / "nokeys.npz"
    np.savez(nokeys, images=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"lacks \['x_train', 'y_train'\]"):
        read_npz_images(nokeys)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            dict(x_train=np.array([[0.0, np.nan], [1.0, 2.0]]), y_train=np.array([0, 1])),
            "non-finite",
        ),
        (dict(x_train=np.ones((4, 3)), y_train=np.zeros(4, int)), "only one class"),
        (dict(x_train=np.ones((5, 3)), y_train=np.array([0, 1, 0, 1])), "5 inputs vs 4 labels"),
        (dict(x_train=np.ones((0, 3)), y_train=np.zeros(0, int)), "empty"),
        (
            dict(
                x_train=np.ones((4, 3)),
                y_train=np.array([0, 1, 0, 1]),
                x_test=np.ones((2, 2)),
                y_test=np.array([0, 1]),
            ),
            "x_test has 2 features",
        ),
        (dict(x_train=np.ones((4, 3)), y_train=np.array([0.5, 1, 0, 1])), "integer class labels"),
    ],
)
def test_bad_npz_data_is_rejected(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"npz:{path}")


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("gz", [False, True])
def test_read_csv_digits(tmp_path, gz):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 6))
    labels = np.arange(30) % 3
    path = write_csv(tmp_path / ("d.csv.gz" if gz else "d.csv"), pixels, labels, gz=gz)
    x, y = read_csv_digits(path)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, pixels)
    np.testing.assert_array_equal(y, labels)
    ds = load_dataset(f"csv:{path}", class1=(0,), class2=(1, 2), test_fraction=0.2, seed=1)
    assert ds.class_counts() == (8, 16) and tuple(np.bincount(ds.y_test)) == (2, 4)


def test_read_csv_digits_errors(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3,0\n4,5,1\n")
    with pytest.raises(ValueError, match="ragged.csv is not a numeric table"):
        read_csv_digits(ragged)
    nan = tmp_path / "nan.csv"
    nan.write_text("1,nan,3,0\n4,5,6,1\n")
    with pytest.raises(ValueError, match="non-finite"):
        read_csv_digits(nan)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        read_csv_digits(empty)
    with pytest.raises(ValueError, match="CSV file not found"):
        read_csv_digits(tmp_path / "absent.csv.gz")


# --------------------------------------------------------------------------- preprocessing


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 7))
    x[:, 4] = 1.5  # a zero-variance feature
    return x, rng.normal(3.0, 2.0, size=(11, 7))


def test_preprocess_center(split):
    x, xt = split
    xc, xtc = preprocess(x, xt, "center")
    assert xc.dtype == np.float32
    np.testing.assert_allclose(xc.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(xtc, xt - x.mean(0), rtol=1e-5, atol=1e-5)  # training mean


def test_preprocess_center_unit(split):
    x, xt = split
    xc, xtc = preprocess(x, xt, "center-unit")
    assert float((xc.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    centred = x - x.mean(0)
    scale = np.sqrt((centred**2).sum(1).mean())
    np.testing.assert_allclose(xtc, (xt - x.mean(0)) / scale, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="all training inputs are identical"):
        preprocess(np.ones((3, 2)), None, "center-unit")


def test_preprocess_standardize(split):
    x, xt = split
    xs, xts = preprocess(x, xt, "standardize")
    keep = np.arange(7) != 4
    np.testing.assert_allclose(xs[:, keep].std(0), 1.0, rtol=1e-5)
    assert np.all(xs[:, 4] == 0) and np.all(xts[:, 4] == 0)
    expected = (xt[:, keep] - x[:, keep].mean(0)) / x[:, keep].std(0)
    np.testing.assert_allclose(xts[:, keep], expected, rtol=1e-4, atol=1e-5)


def test_preprocess_standardize_constant_feature_rule():
    """A feature is constant when its training range is at most 1e-12·max|x_j| (rounding); it
    becomes 0 in both splits, a feature varying above that is standardized, and data whose
    features are all constant are refused with the count."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 4))
    x[:, 1] = 7.0
    x[:, 2] = 1.0 + 1e-13 * rng.normal(size=20)  # rounding-level range: constant
    x[:, 3] = 1.0 + 1e-9 * rng.normal(size=20)  # small but real variation: kept
    xt = rng.normal(size=(5, 4))
    xs, xts = preprocess(x, xt, "standardize")
    assert np.all(xs[:, 1:3] == 0) and np.all(xts[:, 1:3] == 0)
    np.testing.assert_allclose(xs[:, [0, 3]].std(0), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"'standardize': all 4 features are constant on the 20"):
        preprocess(np.tile(x[:1], (20, 1)), None, "standardize")


@pytest.mark.parametrize("mode", ["center-unit", "standardize"])
@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_preprocess_scale_invariance(split, mode, scale):
    """Centring and scaling remove any global scale that float64 represents without overflow."""
    x, xt = split
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way
        scaled = preprocess(x * scale, xt * scale, mode)
    for a, b in zip(scaled, preprocess(x, xt, mode)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


OVERFLOW = [
    (
        "center-unit",
        1e300,
        r"'center-unit': the centred mean squared norm overflows float64 "
        r"\(training inputs up to \|x\| = \d\.\d+e\+300\); rescale",
    ),
    ("standardize", 1e300, r"'standardize': the standard deviation of a feature overflows float64"),
    ("center", 1e307, r"'center': the mean of a feature overflows float64 \(training inputs up to"),
    (
        "none",
        1e300,
        r"'none': x_train reaches \|x\| = \d\.\d+e\+300 after preprocessing, "
        r"beyond the float32 range",
    ),
    ("center-unit", 1e-200, r"'center-unit': the centred mean squared norm underflows float64"),
    ("standardize", 1e-200, r"'standardize': the variance of 6 varying feature\(s\) underflows"),
    ("none", 1e-30, r"'none': 50 x_train input\(s\) have a norm that underflows float32 to 0"),
    ("center", 0.0, r"'center': every x_train input is 0 after preprocessing \(50 inputs, 7 "),
    ("none", 0.0, r"'none': every x_train input is 0 after preprocessing"),
]


@pytest.mark.parametrize("mode, scale, message", OVERFLOW)
def test_preprocess_refuses_data_that_overflow_or_vanish(split, mode, scale, message):
    """Never a silent all-zero or non-finite input set: each case names its problem."""
    x = split[0].copy()
    x[:, 4] = 1.0  # the constant feature scales along
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^preprocess {message}"):
            preprocess(x * scale, None, mode)


def test_preprocess_checks_the_test_split_too(split):
    x, xt = split
    with pytest.raises(ValueError, match=r"'center': x_test reaches \|x\| = .* float32 range"):
        preprocess(x, xt * 1e300, "center")
    with pytest.raises(ValueError, match=r"'none': every x_test input is 0 after preprocessing"):
        preprocess(x, np.zeros_like(xt), "none")
    extremes = np.array([[1e308, 1.0], [-1e308, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"'standardize': the range of a feature overflows"):
            preprocess(extremes, None, "standardize")
        with pytest.raises(ValueError, match=r"'center': x_train reaches \|x\| = 1e\+308 after"):
            preprocess(extremes, None, "center")


def test_dataset_refuses_inputs_beyond_float32_or_all_zero():
    y = np.array([0, 1, 0])
    with pytest.raises(ValueError, match=r"training inputs reach \|x\| = 1e\+300, beyond the"):
        Dataset(np.full((3, 2), 1e300), y, name="huge", provenance="t")
    with pytest.raises(ValueError, match=r"training inputs are all 0: there is nothing to learn"):
        Dataset(np.zeros((3, 2)), y, name="zeros", provenance="t")
    with pytest.raises(ValueError, match=r"test inputs are all 0"):
        Dataset(np.eye(3, 2), y, name="t", provenance="t", x_test=np.zeros((3, 2)), y_test=y)


def test_preprocess_pixels_and_none(split):
    x, xt = split
    xn, xtn = preprocess(x, xt, "none", pixel_max=2.0)
    np.testing.assert_allclose(xn, x / 2, rtol=1e-6)
    assert preprocess(x, None, "none")[1] is None
    with pytest.raises(ValueError, match="preprocess mode must be one of"):
        preprocess(x, xt, "whiten")
    with pytest.raises(ValueError, match="x_test has 3 features"):
        preprocess(x, xt[:, :3], "center")
    with pytest.raises(ValueError, match="x_train contains 1 non-finite"):
        preprocess(np.vstack([x[:-1], np.r_[x[-1, :-1], np.nan]]), None, "center")


# --------------------------------------------------------------------------- embedded MNIST default


def test_embedded_mnist5k_content():
    pixels, labels = read_embedded_mnist5k()
    assert pixels.shape == (5000, 784) and pixels.dtype == np.uint8 and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert not pixels.flags.writeable  # the cached arrays cannot be altered by a caller
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    assert digest == EMBEDDED_CONTENT_SHA256  # the value recorded in LICENSE-mnist5k.md
    licence = Path(_data.__file__).parent / "data" / "LICENSE-mnist5k.md"
    assert EMBEDDED_CONTENT_SHA256 in licence.read_text()


def test_embedded_mnist5k_matches_original_csv():
    if not MNIST_CSV.is_file():
        pytest.skip(f"{MNIST_CSV} not present")
    pixels, labels = read_embedded_mnist5k()
    with gzip.open(MNIST_CSV, "rt") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 5000
    for s in (0, 1, 499, 2500, 4321, 4999):
        row = np.array(lines[s].split(","), dtype=int)
        np.testing.assert_array_equal(pixels[s], row[:-1])
        assert labels[s] == row[-1]


def test_mnist_default():
    ds = mnist_default()
    assert ds.name == "mnist5k-0to4-vs-5to9" and ds.dim == 784
    assert ds.class_counts() == (2000, 2000) and ds.x_test.shape[0] == 1000
    assert ds.x.dtype == np.float32
    assert float((ds.x.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    assert "preprocess=center-unit" in ds.provenance and "CC BY-SA 3.0" in ds.provenance
    small = mnist_default(
        class1=(3,), class2=(8, 9), n_per_class=31, test_fraction=0.1, preprocess="none"
    )
    assert small.class_counts() == (31, 31) and small.name == "mnist5k-3-vs-8+9"
    assert tuple(np.bincount(small.y_test)) == (50, 100)
    assert 0.0 <= small.x.min() and small.x.max() <= 1.0
    assert mnist_default(test_fraction=0).x_test is None


def test_mnist_default_is_deterministic():
    a, b = mnist_default(n_per_class=40, seed=7), mnist_default(n_per_class=40, seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x, mnist_default(n_per_class=40, seed=8).x)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(n_per_class=0), r"n_per_class must be a positive integer \(>= 1\); got 0"),
        (dict(n_per_class=-3), "n_per_class must be a positive integer"),
        (dict(n_per_class=2001), "n_per_class=2001 is larger than available"),
        (dict(test_fraction=1.0), r"test_fraction must lie in \[0, 1\)"),
        (dict(class1=(0, 1), class2=(1, 2)), r"disjoint; both contain \[1\]"),
        (dict(class1=(), class2=(1,)), "class1 must name at least one"),
        (dict(class1=(0,), class2=(12,)), r"labels \[12\] that the data does not contain"),
        (dict(preprocess="zscore"), "preprocess mode must be one of"),
        (dict(colour=True), r"unknown option\(s\) \['colour'\] for dataset 'mnist'; allowed"),
    ],
)
def test_mnist_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", **options)


# --------------------------------------------------------------------------- synthetic


def test_gaussian_clusters_structure():
    ds, means, cluster = gaussian_clusters_with_means(
        n_samples=60,
        dim=10,
        clusters_per_class=3,
        separation=2.0,
        noise=0.01,
        seed=4,
        test_samples=20,
    )
    assert means.shape == (6, 10) and ds.class_counts() == (30, 30)
    np.testing.assert_allclose(means @ means.T, 4.0 * np.eye(6), atol=1e-5)  # orthogonal, norm 2
    np.testing.assert_array_equal(ds.y, cluster // 3)
    assert np.bincount(cluster).tolist() == [10] * 6
    assert np.abs(ds.x - means[cluster]).max() < 0.1
    assert ds.x_test.shape == (20, 10) and tuple(np.bincount(ds.y_test)) == (10, 10)
    again = gaussian_clusters(
        n_samples=60,
        dim=10,
        clusters_per_class=3,
        separation=2.0,
        noise=0.01,
        seed=4,
        test_samples=20,
    )
    np.testing.assert_array_equal(again.x, ds.x)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_gaussian_clusters_validation():
    with pytest.raises(ValueError, match="needs dim >= 2·3 = 6"):
        gaussian_clusters(n_samples=10, dim=5, clusters_per_class=3)
    with pytest.raises(ValueError, match="n_samples must be even"):
        gaussian_clusters(n_samples=11, dim=5)
    with pytest.raises(ValueError, match=r"separation must be finite and > 0"):
        gaussian_clusters(n_samples=10, dim=5, separation=0)
    with pytest.raises(
        ValueError, match=r"dataset 'clusters' needs option\(s\) \['n_samples', 'dim'\]"
    ):
        load_dataset("clusters")


def test_xor_clusters():
    ds = xor_clusters(n_samples=40, dim=5, noise=0.05, seed=2)
    assert ds.class_counts() == (20, 20) and ds.dim == 5 and ds.x_test.shape == (40, 5)
    signed = np.sign(ds.x[:, 0] * ds.x[:, 1])
    np.testing.assert_array_equal(signed, ds.signed_labels)  # ỹ = sign(x1·x2)
    np.testing.assert_array_equal(xor_clusters(n_samples=40, dim=5, noise=0.05, seed=2).x, ds.x)
    assert load_dataset("xor", n_samples=8, test_samples=0).x_test is None


# --------------------------------------------------------------------------- dispatcher, product
# hygiene


def test_load_dataset_unknown_spec():
    with pytest.raises(
        ValueError, match=r"unknown dataset spec 'mnst'; allowed: mnist, clusters, xor, cifar:PATH"
    ):
        load_dataset("mnst")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("cifar:")
    with pytest.raises(ValueError, match="CIFAR source not found"):
        load_dataset("cifar:/nonexistent/cifar")


def test_product_never_reads_the_shared_folder():
    assert "shared" not in inspect.getsource(_data)


# --------------------------------------------------------------------------- the real CIFAR copy


def test_cifar_preset_on_real_npz():
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"{CIFAR_NPZ} not present")
    ds = load_dataset(
        f"cifar:{CIFAR_NPZ}", n_per_class=100, test_per_class=60, preprocess="none", seed=5
    )
    assert ds.dim == 1024 and ds.class_counts() == (100, 100)
    assert tuple(np.bincount(ds.y_test)) == (60, 60)
    assert ds.name == "cifar10-airplane+cat-vs-automobile+bird" and "(JPEG copy)" in ds.provenance
    x_src, labels, _, _ = read_npz_images(CIFAR_NPZ)
    luma = cifar_luma(x_src) / 255
    for s in (0, 17, 99, 150):  # find each kept image among the source luma rows
        match = int(np.argmin(np.abs(luma - ds.x[s]).max(axis=1)))
        assert np.abs(luma[match] - ds.x[s]).max() < 1e-6
        assert labels[match] in ((0, 3) if ds.y[s] == 0 else (1, 2))
    again = cifar_binary(CIFAR_NPZ, n_per_class=100, test_per_class=60, preprocess="none", seed=5)
    np.testing.assert_array_equal(again.x, ds.x)
    default = cifar_binary(CIFAR_NPZ)
    assert default.n_samples == 800
    assert float((default.x.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
