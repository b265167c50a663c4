"""Shared entry of the benchmark scripts: fix thread counts, then run ``gflow bench``.

Thread counts must be set before NumPy, JAX or torch start their thread pools, so the scripts
export them here, before anything else is imported. ``--threads N`` (default: every core this
process may use) sets OMP/OpenBLAS/MKL threads, XLA's Eigen pool (single-threaded for N = 1),
torch's intra-op threads and the CPU affinity; every contender runs on the same N.
"""

from __future__ import annotations

import os
import sys


def run(section_args: list[str]) -> int:
    argv = sys.argv[1:]
    threads = None
    if "--threads" in argv:
        threads = int(argv[argv.index("--threads") + 1])
    cores = sorted(os.sched_getaffinity(0))
    threads = threads or len(cores)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["GFLOW_BENCH_THREADS"] = str(threads)
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    os.sched_setaffinity(0, cores[:threads])

    from gflow._cli import main

    return main(["bench", *section_args, *argv])
