"""Strict numerics for the whole suite: 64-bit available (dtypes are always passed explicitly)."""

import os
import shutil
import tempfile
from pathlib import Path

# XLA's compiled programs kept on disk for the length of one run, one folder per pytest worker
# (no two processes write one folder): a test that builds a program another test of the same
# worker already compiled (a new closure, a CLI subprocess, a file after `jax.clear_caches`)
# loads it instead of compiling it again. Set before jax is imported, so that the workers' and
# the subprocesses' jax read it from the environment.
_XLA_CACHE_OWNER = "GFLOW_TEST_XLA_CACHE" not in os.environ  # the workers inherit it
if _XLA_CACHE_OWNER:
    os.environ["GFLOW_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="gflow-tests-xla-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
    os.environ["GFLOW_TEST_XLA_CACHE"], os.environ.get("PYTEST_XDIST_WORKER", "main")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

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


def pytest_unconfigure(config):
    """The run's compiled programs go with it (the process that made the folder removes it)."""
    if _XLA_CACHE_OWNER:
        shutil.rmtree(os.environ["GFLOW_TEST_XLA_CACHE"], ignore_errors=True)


# The longest files first (about 220, 120, 110, 90 and 75 s of a run): the workers take one
# file at a time (``--dist loadfile``), and a long file handed out last would keep one worker
# busy while the other has nothing left.
_LONGEST_FIRST = (
    "test_sliding.py",
    "test_bench.py",
    "test_models.py",
    "test_regimes.py",
    "test_sliding_leaky.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
