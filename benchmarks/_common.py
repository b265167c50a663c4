"""What every script in ``benchmarks/`` shares: its options, the thread limit, the report.

Options: ``--json FILE`` (the report, written after every section), ``--quick`` (the small
sizes of ``gflow bench --quick``), ``--threads N`` (every library on N threads and the first N
cores: the script re-runs itself with them set, since thread pools start at import),
``--dataset DATASET`` (e.g. ``cifar:PATH``), ``--no-torch``, ``--quiet``, and ``--set NAME=VALUE``
(repeatable) for any field of `gflow.benchmarking.BenchSettings`, e.g. ``--set ode_solver=heun
--set ode_dt=0.125``. Bad values exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gflow.benchmarking import (
    QUICK,
    BenchSettings,
    run_bench,
    settings_with,
    thread_environment,
    write_report,
)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the report")
    p.add_argument("--quick", action="store_true", help="the small sizes of gflow bench --quick")
    p.add_argument("--threads", type=int, default=None, help="threads and cores of every library")
    p.add_argument("--dataset", default=None, metavar="DATASET", help="e.g. cifar:PATH")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a BenchSettings field, e.g. ode_solver=heun (repeatable)",
    )
    return p


def main(sections: Sequence[str], description: str, argv: Sequence[str] | None = None) -> int:
    """Parse the options, limit the threads, run ``sections`` and write the report."""
    args = parser(description).parse_args(argv)
    prog = Path(sys.argv[0]).name
    try:
        settings = settings_with(QUICK if args.quick else BenchSettings(), args.set)
        if args.threads is not None and os.environ.get("GFLOW_BENCH_THREADS") != str(args.threads):
            env, cores = thread_environment(args.threads)
            script = str(Path(sys.argv[0]).resolve())
            return subprocess.run(
                [sys.executable, script, *sys.argv[1:]],
                env=env,
                preexec_fn=lambda: os.sched_setaffinity(0, cores),
                check=False,
            ).returncode
        out = Path(args.json)
        if out.is_dir():
            raise ValueError(f"--json {out} is a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, flush=True))
    meta = {"quick": bool(args.quick), "command": " ".join([prog, *sys.argv[1:]])}
    run_bench(
        settings,
        sections=tuple(sections),
        dataset=args.dataset,
        use_torch=not args.no_torch,
        log=log,
        save=lambda report: write_report({**report, **meta}, out),
    )
    if not args.quiet:
        print(f"wrote {out}")
    return 0
