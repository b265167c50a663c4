"""Strict numerics for the whole suite: 64-bit available (dtypes are always passed explicitly)."""

from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The development copy of real MNIST/CIFAR files; tests that need it skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _release_compilations():
    """Drop the compiled programs of a test file after it: files rarely share shapes, and the
    cache of every file's programs would otherwise stay resident for the whole run."""
    yield
    jax.clear_caches()
