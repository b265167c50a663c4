"""``gflow figures DIR``: re-draw the figures, summary and report of an existing run folder."""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, add_command

FIGURES_EPILOG = """examples:
  gflow figures gflow-out/run          # after changing gflow's figures, or of an unfinished sweep
  gflow figures runs/sweep --quiet

Writes DIR/figures/*.png, DIR/summary.json and DIR/report.md from the data in DIR (nothing is
recomputed; runs that failed or were not computed yet are left out of the numbers).
"""


def _handle(args: argparse.Namespace) -> int:
    from gflow.runs import load_run, write_outputs

    run = load_run(args.folder)
    paths = write_outputs(run)
    count = sum(len(f) for f in paths["figures"].values())
    if not args.quiet:
        for figs in paths["figures"].values():
            for path in figs.values():
                print(path)
    done = int((run.status >= 0).sum())
    print(
        f"{count} figure(s), {done} of {run.status.size} run(s) on disk "
        f"({int(run.ok.sum())} ok); report: {paths['report']}"
    )
    return EXIT_OK


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "figures",
        _handle,
        help="re-draw the figures and report of a run folder",
        description="Re-draw the figures (norms P_i per seed, cos δ_i, loss and accuracy, final "
        "P_i against early cos δ_i, and for a sweep loss-drop time and final loss against the "
        "swept parameter), summary.json and report.md of a run folder written by gflow run or "
        "gflow sweep.",
        epilog=FIGURES_EPILOG,
    )
    parser.add_argument(
        "folder", metavar="DIR", help="run folder (holds config.json, axes.json, chunks/)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
