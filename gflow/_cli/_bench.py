"""``gflow bench``: seed sweeps, the ODE, stable cells and sweep memory, timed against the loops
researchers write today (the harness: `gflow.benchmarking`; its method in benchmarks/README.md).

Sections (``--only``): ``sweep`` (the paper's workload: d = 300, D = 1024, N = 800, B = 4,
β = 0.9, norms every 50 steps, S ∈ {1, 8, 32, 128}), ``ode`` (diffrax flow through the loss
drop, float32 and float64, against SGD over the same flow time), ``cells`` (Algorithm 1 with
M = 100 000 probes, N = 4000) and ``memory`` (peak RSS of a 1024-seed sweep with the norms
streamed to disk, measured in a subprocess). ``--quick`` shrinks everything
(`QUICK_PROMISE`).

Example:
    gflow bench --quick --json bench.json
    gflow bench --json full.json --dataset cifar:/path/to/cifar-10-batches-py
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from gflow.benchmarking import (
    QUICK,
    SECTIONS,
    BenchSettings,
    python_command,
    run_bench,
    thread_environment,
    write_report,
)

from ._common import EXIT_CHECK_FAILED, EXIT_OK, UsageError, add_command

# Measured on 2026-12-03 (benchmarks/README.md, `--quick`): 231–299 s of CPU time, most of it
# XLA compilation and Algorithm 1's calls, which do not spread over cores; 14.5 min of wall time
# on two cores that other jobs kept busy (load average 3–12).
QUICK_PROMISE = "about 5 minutes on two idle cores, up to 15 on busy ones"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"--seeds must be comma-separated positive integers; got {text!r}"
        ) from None
    return values


def _float_list(flag: str, text: str) -> tuple[float, ...]:
    """Comma-separated numbers; ``none`` (or nothing) for the empty list."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} must be comma-separated numbers or 'none'; got {text!r}"
        ) from None


def _settings_from_args(args) -> BenchSettings:
    base = QUICK if args.quick else BenchSettings()
    overrides = {}
    if args.seeds is not None:
        overrides["seeds"] = _int_list(args.seeds)
    for name in ("steps", "repeats", "width", "samples", "dim", "chunk", "record_every"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.small_ode:
        overrides.update(
            ode_width=16, ode_samples=60, ode64_width=16, ode64_samples=60, ode_max_steps=4000
        )
    if args.ode_width is not None:
        overrides.update(ode_width=args.ode_width, ode64_width=args.ode_width)
    if args.ode_max_steps is not None:
        overrides["ode_max_steps"] = args.ode_max_steps
    if args.ode_dtypes is not None:
        overrides["ode_dtypes"] = tuple(d.strip() for d in args.ode_dtypes.split(",") if d.strip())
    if args.ode_solver is not None:
        overrides["ode_solver"] = args.ode_solver
    if args.ode_dt is not None:
        overrides["ode_dt"] = args.ode_dt
    if args.ode_gd_levels is not None:
        overrides["ode_gd_levels"] = args.ode_gd_levels
    if args.ode_perturbations is not None:
        overrides["ode_perturbations"] = _float_list("--ode-perturbations", args.ode_perturbations)
    if args.cells_probes is not None:
        overrides["cells_probes"] = args.cells_probes
    if args.cells_samples is not None:
        overrides["cells_samples"] = args.cells_samples
    if args.memory_seeds is not None:
        overrides["memory_seeds"] = args.memory_seeds
        overrides["memory_group"] = min(base.memory_group, args.memory_seeds)
    return dataclasses.replace(base, **overrides)


def _sections(text: str | None) -> tuple[str, ...]:
    if text is None:
        return SECTIONS
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in chosen if s not in SECTIONS]
    if bad or not chosen:
        raise UsageError(
            f"--only takes a comma-separated subset of {', '.join(SECTIONS)}; got {text!r}"
        )
    return chosen


def _reexec_with_threads(threads: int) -> int:
    """Run this command again with every library limited to ``threads`` (env vars + affinity)."""
    if sys.argv[1:2] != ["bench"]:
        raise UsageError("--threads re-runs the command line; use it from the gflow command")
    env, cores = thread_environment(threads)
    code = "import sys; from gflow.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        python_command("-c", code, *sys.argv[1:]),
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
        check=False,
    )
    return proc.returncode


def _handler(args) -> int:
    settings = _settings_from_args(args)
    sections = _sections(args.only)
    cores = len(os.sched_getaffinity(0))
    if args.threads is not None:
        if not 1 <= args.threads <= cores:
            raise UsageError(
                f"--threads must be between 1 and the {cores} available cores; got {args.threads}"
            )
        if os.environ.get("GFLOW_BENCH_THREADS") != str(args.threads) and args.threads != cores:
            return _reexec_with_threads(args.threads)
    out = Path(args.json)
    if out.exists() and out.is_dir():
        raise UsageError(f"--json {args.json} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, flush=True))
    meta: dict[str, object] = {"quick": bool(args.quick)}
    if sys.argv[1:2] == ["bench"]:
        meta["command"] = "gflow " + " ".join(sys.argv[1:])
    saved = []

    def save(report: dict) -> None:  # after every section: a later failure loses nothing
        write_report({**report, **meta}, out)
        saved.append(tuple(k for k in SECTIONS if k in report))

    try:
        run_bench(
            settings,
            sections=sections,
            dataset=args.dataset,
            use_torch=not args.no_torch,
            log=log,
            save=save,
        )
    except Exception as err:
        kept = ", ".join(saved[-1]) if saved and saved[-1] else "no section"
        if isinstance(err, (ValueError, OSError)):  # the user's input: one line, exit 2
            if saved and saved[-1]:
                print(f"gflow bench: {kept} measured before the error, in {out}", file=sys.stderr)
            raise
        message = " ".join(str(err).split())[-300:]
        print(
            f"gflow bench: error: {type(err).__name__}: {message} (traceback and the sections "
            f"measured before it, {kept}, in {out})",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    if not args.quiet:
        print(f"wrote {out}")
    return EXIT_OK


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "bench",
        _handler,
        help="time seed sweeps, the ODE, stable cells and sweep memory against NumPy/PyTorch loops",
        description=(__doc__ or "").split("\n\n")[0]
        + " Same-run ratios, medians of repeats, compile time apart.",
        epilog="examples:\n  gflow bench --quick --json bench.json\n"
        "  gflow bench --json full.json --dataset cifar:/path/to/cifar-10-batches-py\n"
        "  gflow bench --only sweep --seeds 1,32 --json sweep.json\n",
    )
    parser.add_argument(
        "--json", required=True, metavar="FILE", help="where to write the JSON report"
    )
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK_PROMISE}")
    parser.add_argument(
        "--only", default=None, metavar="LIST", help=f"subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="DATASET",
        help="data for every section (e.g. cifar:PATH); default: synthetic inputs of the "
        "workload's shape for the sweep and memory, embedded MNIST for the ODE and cells",
    )
    parser.add_argument(
        "--seeds", default=None, metavar="LIST", help="values of S, e.g. 1,8,32,128"
    )
    parser.add_argument("--steps", type=int, default=None, help="SGD steps per sweep run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    parser.add_argument("--width", type=int, default=None, help="hidden neurons d")
    parser.add_argument("--samples", type=int, default=None, help="training samples N of the sweep")
    parser.add_argument(
        "--dim", type=int, default=None, help="input dimension D of synthetic sweep data"
    )
    parser.add_argument(
        "--chunk", type=int, default=None, help="SGD steps per chunk K (divides --record-every)"
    )
    parser.add_argument(
        "--record-every",
        dest="record_every",
        type=int,
        default=None,
        help="record norms every this many steps",
    )
    parser.add_argument("--small-ode", action="store_true", help="tiny ODE problems (N=60, d=16)")
    parser.add_argument(
        "--ode-width", type=int, default=None, help="hidden neurons d of both ODE solves"
    )
    parser.add_argument(
        "--ode-max-steps", type=int, default=None, help="solver steps allowed per ODE solve"
    )
    parser.add_argument(
        "--ode-dtypes",
        default=None,
        metavar="LIST",
        help="which ODE solves to run: float32,float64 (default both)",
    )
    parser.add_argument(
        "--ode-solver",
        default=None,
        metavar="NAME",
        help="ODE solver (default gauss1: implicit midpoint, exact balance; sliding: the "
        "sliding-mode integrator of the nonsmooth flow; heun, euler, midpoint, ralston: explicit "
        "with the balance projection; tsit5, ...: adaptive)",
    )
    parser.add_argument(
        "--ode-dt",
        dest="ode_dt",
        type=float,
        default=None,
        help="constant step of the gauss and projected solvers (default 0.25)",
    )
    parser.add_argument(
        "--ode-gd-levels",
        dest="ode_gd_levels",
        type=int,
        default=None,
        choices=(2, 3),
        help="GD runs behind the float64 reference: eta, eta/2 (2) or also eta/4 (3, default)",
    )
    parser.add_argument(
        "--ode-perturbations",
        default=None,
        metavar="LIST",
        help="relative sizes of the perturbed starts GD(eta) is rerun from, e.g. 1e-12,1e-8 "
        "(default); 'none' for no rerun",
    )
    parser.add_argument("--cells-probes", type=int, default=None, help="probes M of Algorithm 1")
    parser.add_argument("--cells-samples", type=int, default=None, help="samples N of Algorithm 1")
    parser.add_argument("--memory-seeds", type=int, default=None, help="seeds of the memory sweep")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit NumPy, XLA and torch to this many threads (default: all cores)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
