"""``gflow cells``: Algorithm 1 on faces or on open cells, with fixed points, 2-cycles and the
plateau reported apart, and the Cover bound."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time

import numpy as np

from ._common import (
    EXIT_OK,
    UsageError,
    add_command,
    add_dataset_options,
    dataset_from_args,
    positive,
)
from ._validate import check_json_path

_EXAMPLES = """examples:
  gflow cells                                   # embedded MNIST (4000 digits), face map, M=2000
  gflow cells --map cells --dtype float32       # the paper's open-cell map (Appendix D)
  gflow cells --dataset clusters --n-per-class 200 --kappa +1 --json cells.json
"""

# What each printed column means (also written to the JSON as "legend").
LEGEND = {
    "kappa": "outgoing alignment κ of the neurons (+1: pushes towards class 1, −1: class 2)",
    "fixed points": "distinct fixed points of the map found over all probe seeds (per seed in "
    "brackets): the stable faces (g, S), whose projected target lies in their closed cone "
    "(docs/theory.md §3, §8), or with --map cells the stable cells gate(T(g)) = g",
    "sliding": "how many of those fixed points have samples sliding on their boundary (S ≠ ∅)",
    "on fixed": "share of probes that end on a fixed point (mean over probe seeds)",
    "on 2-cycle": "share of probes that end on a 2-cycle f → f' → f, f' ≠ f (mean over seeds)",
    "other": "share of probes on neither when K_t stopped decreasing (longer cycles, still "
    "moving; mean over seeds)",
    "2-cycles": "distinct 2-cycles {f, f'} the probes ended on",
    "plateau K_t": "distinct faces (cells) the probes occupy when K_t stopped decreasing: fixed "
    "points, cycles and moving faces together, NOT a count of stable cells",
    "iterations": "map iterations run per probe seed",
    "overflow": "share of probes whose last face step had more than --capacity candidates "
    "(mean over seeds)",
}


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "cells",
        run,
        help="count the fixed points of the target map (Algorithm 1 on faces or cells), "
        "its 2-cycles and plateau, and the Cover bound",
        description="Push M random probes through the target map until K_t, the number of "
        "distinct faces (or cells) among them, stops decreasing (Algorithm 1, docs/theory.md §3). "
        "The face map (default) jumps to the projected target P_κ(g, S), the minimal-norm "
        "velocity of the sliding flow on the face (g, S) (docs/theory.md §8); --map cells is the "
        "paper's map g ↦ gate(T_κ(g)). Fixed points (stable faces or cells), 2-cycles and the "
        "plateau K_t are reported apart; each printed column is explained below the table. The "
        "Cover bound C(N, D) = 2 Σ_{k<D} binom(N−1, k) bounds the number of cells.",
        epilog=_EXAMPLES,
    )
    add_dataset_options(p)
    p.add_argument(
        "--map",
        choices=("faces", "cells"),
        default="faces",
        help="faces: the projected target map on faces (g, S) (default); cells: the open-cell "
        "map of the paper's Appendix D",
    )
    p.add_argument(
        "--probes",
        type=int,
        default=2000,
        metavar="M",
        help="probes per seed (default 2000; more probes reach more of the small basins)",
    )
    p.add_argument(
        "--patience", type=int, default=3, metavar="P", help="iterations without decrease (3)"
    )
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        metavar="K",
        help="faces only: most candidate samples of one face step (default "
        "gflow.cells.DEFAULT_CAPACITY; more are flagged in the overflow column; compile time "
        "grows with K)",
    )
    p.add_argument(
        "--bias",
        action="store_true",
        help="faces only: faces of θ = (w, b) with inputs (x, 1) (the trained bias); default w, x",
    )
    p.add_argument("--chunk", type=int, default=512, help="faces (cells) processed per device call")
    p.add_argument("--max-iterations", type=int, default=200, help="iteration cap (default 200)")
    p.add_argument("--probe-seeds", type=int, default=3, help="independent probe sets (default 3)")
    p.add_argument(
        "--kappa",
        choices=("both", "+1", "-1"),
        default="both",
        help="alignments to run (default both)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="precision (default float64 for faces, whose signs are judged to rounding; "
        "float32 for cells, whose signs are exact in any precision)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")


def _check_args(args) -> None:
    for name in ("probes", "patience", "chunk", "max_iterations", "probe_seeds"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name), int)
    if args.capacity is not None:
        positive("--capacity", args.capacity, int)
    if args.n_per_class is not None and args.n_per_class < 1:
        raise UsageError(f"--n-per-class must be a positive integer; got {args.n_per_class}")
    if args.map == "cells" and args.bias:
        raise UsageError("--bias applies to --map faces only")
    if args.json is not None:
        check_json_path(args.json)


def _faces_row(kappa: int, runs: list) -> dict:
    """Per-κ summary of `stable_faces` results over the probe seeds."""
    union = {}
    for r in runs:
        for a, s in zip(r.active, r.sliding):
            union[a.tobytes() + s.tobytes()] = bool(s.any())
    return {
        "kappa": kappa,
        "fixed_points": len(union),
        "fixed_points_per_seed": [r.n_fixed_points for r in runs],
        "sliding": sum(union.values()),
        "sliding_sizes_per_seed": [r.sliding_sizes.tolist() for r in runs],
        "probe_shares": {
            "fixed_point": [r.fixed_fraction for r in runs],
            "two_cycle": [r.two_cycle_fraction for r in runs],
            "other": [max(1.0 - r.fixed_fraction - r.two_cycle_fraction, 0.0) for r in runs],
        },
        "two_cycles_per_seed": [r.n_two_cycles for r in runs],
        "plateau_per_seed": [r.plateau for r in runs],
        "iterations": [len(r.curve) for r in runs],
        "converged": [bool(r.converged) for r in runs],
        "overflow_share": [r.overflow_fraction for r in runs],
        "empty_face_stable": [r.empty_is_stable for r in runs],
        "map_disagreements": [r.map_disagreements for r in runs],
        "basins_per_seed": [r.basin.tolist() for r in runs],
        "curves": [list(r.curve) for r in runs],
    }


def _cells_row(kappa: int, runs: list) -> dict:
    """Per-κ summary of `stable_cells` results over the probe seeds."""
    union = {p.tobytes() for r in runs for p in r.patterns}
    return {
        "kappa": kappa,
        "fixed_points": len(union),
        "fixed_points_per_seed": [r.n_stable for r in runs],
        "sliding": None,
        "probe_shares": {
            "fixed_point": [r.fixed_fraction for r in runs],
            "two_cycle": [r.two_cycle_fraction for r in runs],
            "other": [max(1.0 - r.fixed_fraction - r.two_cycle_fraction, 0.0) for r in runs],
        },
        "two_cycles_per_seed": [None for _ in runs],
        "plateau_per_seed": [int(r.estimate) for r in runs],
        "iterations": [len(r.curve) for r in runs],
        "converged": [bool(r.converged) for r in runs],
        "overflow_share": [None for _ in runs],
        "empty_face_stable": [r.empty_is_stable for r in runs],
        "basins_per_seed": [r.basin.tolist() for r in runs],
        "curves": [list(r.curve) for r in runs],
    }


def _share(values) -> str:
    return "–" if any(v is None for v in values) else f"{np.mean(values):.3f}"


def _table(rows: list[dict], faces: bool) -> list[str]:
    head = ["kappa", "fixed points", "sliding", "on fixed", "on 2-cycle", "other", "2-cycles"]
    head += ["plateau K_t", "iterations", "overflow"]
    body = []
    for r in rows:
        shares = r["probe_shares"]
        cycles = r["two_cycles_per_seed"]
        body.append(
            [
                f"{r['kappa']:+d}",
                f"{r['fixed_points']} {r['fixed_points_per_seed']}",
                str(r["sliding"]) if faces else "–",
                _share(shares["fixed_point"]),
                _share(shares["two_cycle"]),
                _share(shares["other"]),
                str(cycles) if faces else "–",
                str(r["plateau_per_seed"]),
                str(r["iterations"]),
                _share(r["overflow_share"]),
            ]
        )
    if not faces:  # columns that the open-cell map does not have
        keep = [i for i, h in enumerate(head) if h not in ("sliding", "2-cycles", "overflow")]
        head = [head[i] for i in keep]
        body = [[b[i] for i in keep] for b in body]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    lines.append("columns:")
    for h in head:
        line = f"  {h + ':':<13} {LEGEND[h]}"
        lines.append(textwrap.fill(line, width=100, subsequent_indent=" " * 16))
    return lines


def run(args) -> int:
    _check_args(args)
    import jax

    faces = args.map == "faces"
    dtype = args.dtype or ("float64" if faces else "float32")
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from gflow import training_data
    from gflow.cells import (
        DEFAULT_CAPACITY,
        cover_bound,
        log10_cover_bound,
        stable_cells,
        stable_faces,
    )
    from gflow.runs import Progress

    if args.capacity is None:
        args.capacity = DEFAULT_CAPACITY
    dataset = dataset_from_args(args)
    dataset.require_binary("gflow cells")
    data = training_data(dataset, jnp.float64 if dtype == "float64" else jnp.float32)
    kappas = {"both": (1, -1), "+1": (1,), "-1": (-1,)}[args.kappa]
    what = (
        f"face map, capacity K={args.capacity}{', with bias' if args.bias else ''}"
        if faces
        else "open-cell map"
    )
    print(
        f"gflow cells: {dataset.describe()}; {what}; M={args.probes} probes, patience "
        f"{args.patience}, {args.probe_seeds} probe seed(s), {dtype}",
        file=sys.stderr,
        flush=True,
    )
    total = args.probe_seeds * (len(kappas) if faces else 1)
    bar = Progress(total, label="cells", unit="run", enabled=not args.quiet)
    bar.note("compiling and mapping the first faces" if faces else "first map")
    runs: dict[int, list] = {k: [] for k in kappas}
    seconds = []

    for seed in range(args.probe_seeds):
        start = time.perf_counter()
        if faces:
            done: set[int] = set()
            last = [-math.inf]

            def report(kappa, iteration, count, seed=seed, done=done, last=last):
                if iteration == 0 and done:
                    bar.update()
                done.add(kappa)
                now = time.monotonic()
                if iteration == 0 or now - last[0] >= 5.0:  # a line at most every 5 s
                    last[0] = now
                    bar.note(f"seed {seed} κ={kappa:+d} iteration {iteration}: K_t = {count}")

            found = stable_faces(
                data,
                jax.random.key(seed),
                probes=args.probes,
                patience=args.patience,
                kappa=kappas,
                capacity=args.capacity,
                chunk=args.chunk,
                max_iterations=args.max_iterations,
                bias=args.bias,
                on_iteration=report,
            )
        else:
            found = stable_cells(
                data,
                jax.random.key(seed),
                probes=args.probes,
                patience=args.patience,
                kappa=kappas,
                chunk=args.chunk,
                max_iterations=args.max_iterations,
            )
        seconds.append(time.perf_counter() - start)
        bar.update(note=f"seed {seed} done")
        for k, est in found.items():
            runs[k].append(est)
    bar.close()
    rows = [(_faces_row if faces else _cells_row)(k, runs[k]) for k in kappas]
    for line in _table(rows, faces):
        print(line)
    n, dim = dataset.n_samples, dataset.dim + (1 if args.bias else 0)
    bound = cover_bound(n, dim)
    log_bound = log10_cover_bound(n, dim)
    bound_text = str(bound) if bound < 10**15 else f"10^{log_bound:.4f}"
    print(
        f"Cover bound C(N={n}, D={dim}) = {bound_text}: the number of cells (open regions, "
        f"faces with S = ∅) that the N sample hyperplanes cut in general position; "
        f"{args.probe_seeds} probe seed(s) took {sum(seconds):.1f} s"
    )
    if args.json:
        for r in rows:  # earlier readers' names for the plateau K_t; it is not a stable-cell count
            plateau = np.asarray(r["plateau_per_seed"], np.float64)
            r.update(estimates=r["plateau_per_seed"], mean=float(plateau.mean()))
            r["spread"] = float(plateau.std())
        payload = {
            "dataset": dataset.describe(),
            "map": args.map,
            "bias": bool(args.bias),
            "capacity": args.capacity if faces else None,
            "dtype": dtype,
            "n_samples": n,
            "dim": dim,
            "probes": args.probes,
            "patience": args.patience,
            "probe_seeds": args.probe_seeds,
            "cover_bound": str(bound),
            "log10_cover_bound": log_bound if math.isfinite(log_bound) else None,
            "seconds": seconds,
            "legend": {
                **LEGEND,
                "estimates, mean, spread": "the plateau K_t per seed, its mean and sd (older "
                "name of plateau_per_seed): NOT a count of stable cells; see fixed_points",
            },
            "kappa": rows,
        }
        try:
            with open(args.json, "w") as fh:
                json.dump(payload, fh, indent=2)
        except OSError as err:
            raise UsageError(f"cannot write --json {args.json}: {err.strerror}") from None
    return EXIT_OK
