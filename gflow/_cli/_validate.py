"""``gflow validate``: the paper's claims checked against a float64 gradient flow.

Runs the ODE for each seed on one dataset, evaluates every check of `gflow._theory`
(balance, Lemma 3.9, dP/dt identity, limit angles, stable cells, unlocking rates, racing,
silent alignment), estimates the number of stable cells with Algorithm 1 over several probe
seeds, prints a table and optionally writes JSON. Every check is of kind ``identity`` (an exact
identity that checks the implementation) or ``claim`` (a statement of the paper). Exit status:
0 when every identity and every claim holds, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time

import numpy as np

from ..solvers import DEFAULT_SLIDING_CAPACITY, DEFAULT_SLIDING_HALVINGS, DEFAULT_SLIDING_STEP
from ._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    add_dataset_options,
    dataset_from_args,
    positive,
)

_EXAMPLES = """examples:
  gflow validate                          # embedded MNIST, 25 digits per class, d=50, float64
  gflow validate --preprocess pixels      # grayscale in [0, 1], uncentred (the paper's)
  gflow validate --dataset clusters --n-per-class 60 --width 16 --json checks.json
  gflow validate --seeds 0,1,2 --n-per-class 50 --dt0 0.125
  gflow validate --dataset npz:my_data.npz --t-end 300

exit status: 0 every identity and every claim holds, 1 one fails, 2 bad input
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "validate",
        run,
        help="check the paper's claims (alignment, unlocking, racing) against a float64 ODE run",
        description="Simulate the gradient flow in float64 and compare every prediction of the "
        "theory (docs/theory.md §2–§5) with the simulation. Two tables: identities (exact; they "
        "check the implementation) and claims (the paper's statements), each with predicted, "
        "measured, relative error, tolerance and verdict. The defaults (embedded MNIST, 25 "
        "samples per class, d=50, the sliding solver at h=0.25) take about two minutes on 2 cores.",
        epilog=_EXAMPLES,
    )
    add_dataset_options(p)
    p.set_defaults(n_per_class=25)
    g = p.add_argument_group("network and flow")
    g.add_argument(
        "--width", type=int, default=50, metavar="D", help="hidden neurons d (default 50)"
    )
    g.add_argument("--sigma", type=float, default=1e-5, help="init scale σ (default 1e-5)")
    g.add_argument("--seeds", default="0", help="init seeds: 0,1,2 or a range 0:3 (default 0)")
    g.add_argument(
        "--t-end",
        type=float,
        default=None,
        help="flow horizon (default: --horizon-factor × ln(1/σ²)/γ_full)",
    )
    g.add_argument(
        "--horizon-factor",
        type=float,
        default=1.3,
        help="margin on the estimated loss-drop time for the automatic horizon (default 1.3; "
        "the simulated drop comes 1.1–1.2 times after the estimate)",
    )
    g.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="relative tolerance of the diffrax solvers (--solver tsit5, heun, ...; default "
        "1e-4). The balance_drift identity's tolerance 1e-8 is met by the default sliding "
        "solver (drift ~1e-15); Tsit5 at 1e-4 drifts ~4e-6 and fails it",
    )
    g.add_argument(
        "--solver",
        default="sliding",
        help="ODE solver: sliding (default: the sliding-mode "
        "integrator of the nonsmooth flow, constant steps --dt0, balance to rounding; "
        "docs/theory.md "
        "§8.1), or a diffrax solver at --rtol (tsit5, heun, ...), or gauss1/gauss2",
    )
    g.add_argument(
        "--dt0",
        type=float,
        default=DEFAULT_SLIDING_STEP,
        help=f"step of the sliding solver (default {DEFAULT_SLIDING_STEP:g})",
    )
    g.add_argument(
        "--sliding-capacity",
        type=int,
        default=None,
        metavar="K",
        help="sliding solver: most pairs of one neuron on or reaching their gate boundaries in "
        f"one step (default {DEFAULT_SLIDING_CAPACITY}; a step with more is taken again at half "
        "length, see --sliding-halvings)",
    )
    g.add_argument(
        "--sliding-halvings",
        type=int,
        default=None,
        metavar="L",
        help="sliding solver: times a step with more than K such pairs is taken again at half "
        f"length before the solve stops with an overflow status (default "
        f"{DEFAULT_SLIDING_HALVINGS})",
    )
    g.add_argument("--max-steps", type=int, default=2_000_000, help="ODE step budget (default 2e6)")
    g.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the simulation (default float64)",
    )
    g.add_argument(
        "--records", type=int, default=401, help="observable records over the horizon (default 401)"
    )
    g.add_argument(
        "--snapshots", type=int, default=201, help="full-parameter snapshots (default 201)"
    )
    c = p.add_argument_group("stable cells (Algorithm 1)")
    c.add_argument(
        "--probes", type=int, default=4000, help="probes M per probe seed (default 4000)"
    )
    c.add_argument("--patience", type=int, default=3, help="patience P (default 3)")
    c.add_argument(
        "--probe-seeds", type=int, default=3, help="probe seeds for the spread; 0 skips (default 3)"
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", metavar="FILE", default=None, help="write the checks and the report as JSON"
    )
    o.add_argument("--quiet", action="store_true", help="print only the table")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0:3"`` → ``[0, 1, 2]``."""
    try:
        if ":" in text:
            a, b = (int(v) for v in text.split(":"))
            seeds = list(range(a, b))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--seeds must look like 0,1,2 or 0:3; got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must name at least one non-negative seed; got {text!r}")
    return seeds


def check_json_path(path: str) -> None:
    """Fail before any work if the JSON file cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--json {path} is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"--json {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--json {path}: folder {folder} is not writable")


def _check_args(args) -> None:
    if args.width is None or args.width < 1:
        raise UsageError(f"--width must be a positive integer; got {args.width}")
    positive("--sigma", args.sigma)
    positive("--rtol", args.rtol)
    positive("--dt0", args.dt0)
    positive("--horizon-factor", args.horizon_factor)
    if args.t_end is not None:
        positive("--t-end", args.t_end)
    for name in ("max_steps", "probes", "patience"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name), int)
    for name, low in (("records", 10), ("snapshots", 10)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}; got {getattr(args, name)}")
    if args.probe_seeds < 0:
        raise UsageError(f"--probe-seeds must be >= 0; got {args.probe_seeds}")
    if args.n_per_class is not None and args.n_per_class < 1:
        raise UsageError(f"--n-per-class must be a positive integer; got {args.n_per_class}")
    if args.sliding_capacity is not None:
        positive("--sliding-capacity", args.sliding_capacity, int)
    if args.sliding_halvings is not None and args.sliding_halvings < 0:
        raise UsageError(f"--sliding-halvings must be >= 0; got {args.sliding_halvings}")
    for flag in ("sliding_capacity", "sliding_halvings"):
        if getattr(args, flag) is not None and args.solver != "sliding":
            raise UsageError(f"--{flag.replace('_', '-')} applies to --solver sliding only")
    if args.json is not None:
        check_json_path(args.json)


def _fmt(value) -> str:
    if value is None:
        return "—"
    value = float(value)
    if not math.isfinite(value):
        return "nan"
    return f"{value:.4g}"


_GROUP_TITLES = {
    "identity": "identities (exact; they check the implementation)",
    "claim": "claims (the paper's statements)",
}


def format_table(rows: list[dict], *, show_seed: bool) -> str:
    """The checks as one aligned text table, identities first, then claims, each under a title."""
    lines = []
    widths = _table_widths(rows, show_seed)
    for kind, title in _GROUP_TITLES.items():
        group = [r for r in rows if r.get("kind", "claim") == kind]
        if not group:
            continue
        passed = sum(r["passed"] for r in group)
        lines.append(f"{title}: {passed} of {len(group)} pass")
        lines.append(_format_rows(group, show_seed=show_seed, widths=widths))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _table_cells(rows: list[dict], show_seed: bool) -> tuple[list[str], list[list[str]]]:
    head = (["seed"] if show_seed else []) + [
        "check",
        "predicted",
        "measured",
        "rel. error",
        "tolerance",
        "result",
    ]
    body = []
    for r in rows:
        cells = [str(r["seed"])] if show_seed else []
        cells += [
            r["name"],
            _fmt(r["predicted"]),
            _fmt(r["measured"]),
            _fmt(r["rel_error"]),
            _fmt(r["tolerance"]),
            "pass" if r["passed"] else "FAIL",
        ]
        body.append(cells)
    return head, body


def _table_widths(rows: list[dict], show_seed: bool) -> list[int]:
    head, body = _table_cells(rows, show_seed)
    return [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]


def _format_rows(rows: list[dict], *, show_seed: bool, widths: list[int]) -> str:
    head, body = _table_cells(rows, show_seed)
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _jsonable(value):
    """Report values → JSON (NaN/inf → null, numpy → Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _stable_cell_summary(data, args, *, enabled: bool = True) -> dict:
    import jax

    from gflow.cells import log10_cover_bound, stable_cells
    from gflow.runs import Progress

    per_kappa: dict[int, list[int]] = {1: [], -1: []}
    fixed: dict[int, list[float]] = {1: [], -1: []}
    bar = Progress(args.probe_seeds, label="Algorithm 1", unit="probe seed", enabled=enabled)
    bar.note("compiling")
    for seed in range(args.probe_seeds):
        found = stable_cells(
            data, jax.random.key(10_000 + seed), probes=args.probes, patience=args.patience
        )
        for k, est in found.items():
            per_kappa[k].append(est.estimate)
            fixed[k].append(est.fixed_fraction)
        bar.update()
    bar.close()
    n, dim = (int(v) for v in data.x.shape)
    out = {
        "probes": args.probes,
        "patience": args.patience,
        "probe_seeds": args.probe_seeds,
        "log10_cover_bound": log10_cover_bound(n, dim),
    }
    for k, values in per_kappa.items():
        v = np.asarray(values, np.float64)
        out[f"kappa{k:+d}"] = {
            "estimates": values,
            "mean": float(v.mean()),
            "spread": float(v.std()),
            "min": int(v.min()),
            "max": int(v.max()),
            "fixed_fraction_mean": float(np.mean(fixed[k])),
        }
    return out


def summarise(seed, report: dict) -> str:
    """The measurements behind the table that are not pass/fail checks, in a few lines."""
    lines = [
        f"seed {seed}: loss drop at t = {_fmt(report.get('t_drop'))}, "
        f"{report.get('ode_steps', '?')} ODE steps"
    ]
    p1, p2, p3 = report.get("phase1"), report.get("phase2"), report.get("phase3")
    if p1:
        late = p1["second_order_at_t_drop"]
        lines.append(
            f"  target angles (median, rad) at t = {_fmt(p1['t_check'])}: current cell "
            f"{_fmt(p1['angle_to_current_target_rad']['median'])}, second order from the current "
            f"output {_fmt(p1['angle_to_second_order_target_rad']['median'])}, steady second "
            f"order {_fmt(p1['angle_to_steady_second_order_target_rad']['median'])}; at t_drop "
            f"{_fmt(late['angle_to_current_target_rad']['median'])}, "
            f"{_fmt(late['angle_to_second_order_target_rad']['median'])}, "
            f"{_fmt(late['angle_to_steady_second_order_target_rad']['median'])}; stable target "
            f"iterated from the initial cell "
            f"{_fmt(p1['angle_to_stable_target_from_init_rad']['median'])}"
        )
        lines.append(
            f"  κ predicted at t = 0 right for {_fmt(p1['kappa_predicted_at_init_matches'])} of "
            f"neurons; dead neurons {p1['dead_neurons']}; on a 2-cycle of the target map "
            f"{_fmt(p1['two_cycle_share'])}; sliding on a boundary {p1['sliding_neurons']}; in a "
            f"stable face {_fmt(p1['stable_face_share'])}"
        )
    if p2 and "median_rel_error_small_init" in p2:
        lines.append(
            f"  unlocking rate, median relative error over {p2['aligned_neurons']} aligned "
            f"neurons: small-init {_fmt(p2['median_rel_error_small_init'])}, √(4P²+Q²) form "
            f"{_fmt(p2['median_rel_error_q_form'])}, bias as a weight "
            f"{_fmt(p2['median_rel_error_augmented_small_init'])}; small-init over all "
            f"{p2['growing_neurons']} growing neurons "
            f"{_fmt(p2['median_rel_error_small_init_all_growing'])}; pair-ratio law error / γ_G "
            f"{_fmt(p2['pair_ratio']['median_abs_error_over_group_rate'])}"
        )
    elif p2:
        lines.append(
            f"  unlocking rate: no aligned neuron; small-init rate over all "
            f"{p2.get('growing_neurons', 0)} growing neurons: median relative error "
            f"{_fmt(p2.get('median_rel_error_small_init_all_growing'))}"
        )
    if p3 and "median_error_with_bias_as_weight" in p3:
        lines.append(
            f"  race law over {p3['groups']} groups: median error "
            f"{_fmt(float(np.median(p3['median_error_per_group'])))} with b = 0 as stated, "
            f"{_fmt(p3['median_error_with_bias_as_weight'])} with the bias as a weight (noise "
            f"{_fmt(p3['noise'])})"
        )
    return "\n".join(lines)


class heartbeat:
    """A progress line every ``interval`` seconds while a step with no progress of its own runs
    (compiling and solving the ODE, the checks): `gflow._progress.Progress` over one unit,
    ticked by a background thread, so a long step is never silent.

    Example:
        >>> with heartbeat("seed 0: ODE solve", enabled=False):  # doctest: +SKIP
        ...     run_the_solve()
    """

    def __init__(self, label: str, *, enabled: bool, interval: float = 5.0, stream=None):
        from gflow.runs import Progress

        self.bar = Progress(1, label=label, unit="step", enabled=enabled, stream=stream)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        from gflow.runs import format_duration

        while not self._stop.wait(self.interval):
            self.bar.note(f"running, {format_duration(self.bar.clock() - self.bar.started)}")

    def __enter__(self):
        if self.bar.enabled:
            self.bar.note("started")
            self._thread.start()
        return self.bar

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if exc[0] is None:
            self.bar.update(note="done")
        self.bar.close()


def run(args) -> int:
    _check_args(args)
    seeds = parse_seeds(args.seeds)
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from gflow import FlowConfig, gradient_flow, init_params, training_data
    from gflow.theory import CheckSettings, loss_drop_estimate, validate_trajectory

    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    if args.solver == "sliding":
        config = FlowConfig(
            solver="sliding",
            adaptive=False,
            dt0=args.dt0,
            max_steps=args.max_steps,
            sliding_capacity=args.sliding_capacity,
            sliding_halvings=args.sliding_halvings,
        )
    else:
        config = FlowConfig(solver=args.solver, rtol=args.rtol, max_steps=args.max_steps)
    dataset = dataset_from_args(args)
    dataset.require_binary("gflow validate")
    data = training_data(dataset, dtype)
    estimate = loss_drop_estimate(data, args.sigma)
    t_end = args.t_end if args.t_end is not None else args.horizon_factor * estimate
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    step = f"h={args.dt0:g}" if args.solver == "sliding" else f"rtol={args.rtol:g}"
    say(
        f"gflow validate: {dataset.describe()}; d={args.width}, σ={args.sigma:g}, {args.dtype}, "
        f"{args.solver} "
        f"{step}; "
        f"horizon t_end={t_end:.4g} (estimated loss drop {estimate:.4g})"
    )
    ts = np.linspace(0.0, t_end, args.records)
    snaps = np.linspace(0.0, t_end, args.snapshots)
    settings = CheckSettings()
    rows, reports = [], {}
    for seed in seeds:
        start = time.perf_counter()
        params0 = init_params(
            jax.random.key(seed), args.width, dataset.dim, args.sigma, dtype=dtype
        )
        with heartbeat(f"seed {seed}: compile and solve the ODE", enabled=not args.quiet):
            traj = gradient_flow(
                params0, data, ts, snapshot_times=snaps, config=config, throw=False
            )
            traj = jax.tree.map(np.asarray, traj)
        status = int(traj.status)
        say(
            f"  seed {seed}: {int(traj.num_steps)} ODE steps in {time.perf_counter() - start:.1f} s"
        )
        if status != 0:
            from gflow import status_message

            raise UsageError(f"seed {seed}: {status_message(status)}")
        with heartbeat(f"seed {seed}: checks", enabled=not args.quiet):
            checks, report = validate_trajectory(traj, data, settings=settings)
        report["ode_steps"] = int(traj.num_steps)
        reports[str(seed)] = report
        rows += [dict(c.as_dict(), seed=seed) for c in checks]
    cells = _stable_cell_summary(data, args, enabled=not args.quiet) if args.probe_seeds else None
    print(format_table(rows, show_seed=len(seeds) > 1))
    if cells is not None:
        for k in ("kappa+1", "kappa-1"):
            c = cells[k]
            print(
                f"stable cells {k}: {c['mean']:.4g} ± {c['spread']:.2g} over {args.probe_seeds} "
                "probe seeds "
                f"(M={args.probes}, P={args.patience}; estimates {c['estimates']}); "
                f"log10 Cover bound {cells['log10_cover_bound']:.4g}"
            )
    if not args.quiet:
        for row in rows:
            print(f"  {row['name']}: {row['detail']}")
        for seed, report in reports.items():
            print(summarise(seed, report))
    failed = [r for r in rows if not r["passed"]]
    identities = [r for r in rows if r["kind"] == "identity"]
    if args.json:
        payload = {
            "checks": rows,
            "dataset": dataset.describe(),
            "settings": {
                "width": args.width,
                "sigma": args.sigma,
                "seeds": seeds,
                "t_end": t_end,
                "rtol": args.rtol,
                "dt0": args.dt0,
                "sliding_capacity": args.sliding_capacity,
                "solver": args.solver,
                "dtype": args.dtype,
                "preprocess": args.preprocess,
                "records": args.records,
                "snapshots": args.snapshots,
            },
            "stable_cells": cells,
            "report": reports,
        }
        try:
            with open(args.json, "w") as fh:
                json.dump(_jsonable(payload), fh, indent=2, allow_nan=False)
        except OSError as err:
            raise UsageError(f"cannot write --json {args.json}: {err.strerror}") from None
    claims = [r for r in rows if r["kind"] != "identity"]
    bad_identities = sorted({r["name"] for r in identities if not r["passed"]})
    bad_claims = sorted({r["name"] for r in claims if not r["passed"]})
    print(
        f"identities: {sum(r['passed'] for r in identities)} of {len(identities)} pass; "
        f"claims: {sum(r['passed'] for r in claims)} of {len(claims)} pass"
        + ("; failing identities: " + ", ".join(bad_identities) if bad_identities else "")
        + ("; failing claims: " + ", ".join(bad_claims) if bad_claims else "")
    )
    return EXIT_CHECK_FAILED if failed else EXIT_OK
