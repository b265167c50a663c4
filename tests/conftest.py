"""Strict numerics for the whole suite: 64-bit available (dtypes are always passed explicitly)."""

import os
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


@pytest.fixture(autouse=True, scope="session")
def _shared_compilations(tmp_path_factory):
    """One persistent compilation cache for the session's workers (the pytest-xdist processes
    share the parent of their temporary folders): a program two test files compile, such as
    the default validation flow, is compiled once. Nothing outlives the session."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    jax.config.update("jax_compilation_cache_dir", str(shared / "jax-compilation-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    yield
