"""Run folders: what a sweep writes is what `load_run` reads, and the numbers are the trainers'.

Tiny problems (64 samples in 8 dimensions, d = 8) so that one compilation serves several tests.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.network import Observables
from gflow.runs import NOT_RUN, RunConfig, load_run, steps_to_flow_time, summarize, sweep
from gflow.solvers import MAX_STEPS_REACHED, OK
from gflow.theory import loss_drop

# Two learning rates × three seeds = 6 runs in chunks of 4: the second chunk is padded and the
# first one straddles the two points.
SGD = dict(
    trainer="sgd",
    dataset="clusters",
    width=8,
    sigma=1e-3,
    lr=(0.05, 0.1),
    momentum=0.9,
    batch=8,
    steps=300,
    record_every=30,
    seeds="0:3",
    chunk_size=4,
    dtype="float64",
)


@pytest.fixture(scope="module")
def clusters() -> gflow.Dataset:
    return gflow.load_dataset("clusters", n_samples=64, dim=8)


@pytest.fixture(scope="module")
def sgd_folder(clusters, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sgd"
    sweep(clusters, RunConfig(**SGD), out=out)
    return out


def test_load_run_round_trip(sgd_folder, clusters):
    run = load_run(sgd_folder)
    again = sweep(clusters, RunConfig(**SGD))  # in memory: a second, independent computation
    assert run.complete and np.all(run.status == OK)
    assert run.axes["P"] == ("point", "seed", "time", "neuron")
    assert run.axes["loss"] == ("point", "seed", "time")
    assert run.param_axes["W"] == ("point", "seed", "neuron", "input")
    assert run.observables["P"].shape == (2, 3, 11, 8)
    # Every array's axis names match its shape: one name per axis, each name one size.
    size = {"point": 2, "seed": 3, "time": 11, "neuron": 8, "input": 8, "output": 2}
    arrays = {**run.observables, "t": run.t, "status": run.status, "num_steps": run.num_steps}
    assert set(run.axes) == set(arrays)
    for name, a in arrays.items():
        assert a.shape == tuple(size[axis] for axis in run.axes[name]), name
    for name, a in zip("WbV", run.final_params):
        assert a.shape == tuple(size[axis] for axis in run.param_axes[name]), name
    assert run.final_params.W.shape == (2, 3, 8, 8) and run.final_params.V.shape == (2, 3, 8, 2)
    # Same configuration, same numbers: bitwise, field by field (determinism).
    for field in Observables._fields:
        np.testing.assert_array_equal(
            run.observables[field], again.observables[field], err_msg=field
        )
    for a, b in zip(run.final_params, again.final_params):
        np.testing.assert_array_equal(a, b)
    # The time axis is the flow time t = k·η/(1−β) of docs/theory.md §1 (k = 0, 30, ..., 300).
    k = np.arange(0, 301, 30)
    np.testing.assert_allclose(run.t, np.stack([k * 0.05 / 0.1, k * 0.1 / 0.1]), rtol=1e-12)
    # The stored final weights belong to the member whose records they sit next to:
    # P_i = ‖w_i‖‖v_i‖ from the weights equals the last recorded P_i, run by run.
    W, V = run.final_params.W.astype(np.float64), run.final_params.V.astype(np.float64)
    P_final = np.linalg.norm(W, axis=-1) * np.linalg.norm(V, axis=-1)
    np.testing.assert_allclose(P_final, run.observables["P"][:, :, -1], rtol=1e-13)
    # Configuration and manifest come back.
    assert RunConfig.from_mapping(run.config) == RunConfig(**SGD)
    m = run.manifest
    for lib in ("gflow", "jax", "jaxlib", "optax", "diffrax"):
        assert m["versions"][lib]
    assert m["backend"] == jax.default_backend() and m["device_count"] == len(m["devices"]) >= 1
    assert m["dtype"] == "float64" and m["seeds"] == [0, 1, 2]
    invocation = m["invocations"][-1]
    assert invocation["started"] <= invocation["ended"] and invocation["state"] == "finished"
    assert invocation["chunks_computed"] == [0, 1] and m["timings"]["compile_seconds"] >= 0


def test_run_folder_files_are_standard(sgd_folder):
    layout = json.loads((sgd_folder / "axes.json").read_text())
    chunk = sgd_folder / "chunks" / "chunk-00001"
    # Plain .npy files with the member axis first: the last chunk holds members 4 and 5 only.
    for name, spec in layout["fields"].items():
        a = np.load(chunk / f"{name}.npy", allow_pickle=False)
        assert a.shape == (2, *spec["shape"]) and a.dtype == np.dtype(spec["dtype"]), name
    with np.load(chunk / "params_final.npz") as z:
        assert sorted(z.files) == ["V", "W", "b"]
    assert layout["chunks"] == [[0, 4], [4, 6]]
    # No temporary or partial files are left behind.
    leftovers = [p for p in sgd_folder.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    # The report shows every figure it links, and the per-point numbers.
    report = (sgd_folder / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    # 4 figures per point and the settings figure of the sweep
    assert len(links) == 9 and all((sgd_folder / link).is_file() for link in links)
    assert "loss-drop time" in report and "balance drift" in report and "race winners" in report
    summary = json.loads((sgd_folder / "summary.json").read_text())
    assert [p["ok"] for p in summary["points"]] == [3, 3]


def test_unfinished_run_loads_with_missing_runs_marked(sgd_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sgd_folder, copy)
    shutil.rmtree(copy / "chunks" / "chunk-00001")
    run = load_run(copy)
    assert not run.complete
    assert run.status.ravel().tolist() == [OK] * 4 + [NOT_RUN] * 2
    assert np.all(np.isnan(run.observables["loss"][1, 1:]))
    assert "resume" in run.status_messages[1, 2]
    full = load_run(sgd_folder)
    np.testing.assert_array_equal(run.observables["P"][0], full.observables["P"][0])


def test_vmapped_sweep_equals_python_loop_over_seeds(clusters):
    """The sweep (vmap over members, chunked, padded) against one `train_sgd` call per run."""
    run = sweep(clusters, RunConfig(**SGD))
    data = gflow.training_data(clusters, jnp.float64)
    config = gflow.SGDConfig(steps=300, record_every=30, batch_size=8)
    for p, lr in enumerate((0.05, 0.1)):
        for s, seed in enumerate((0, 1, 2)):
            key_init, key_batch = jax.random.split(jax.random.key(seed))
            params0 = gflow.init_params(key_init, 8, 8, 1e-3, dtype=jnp.float64)
            traj = gflow.train_sgd(
                params0, key_batch, data, learning_rate=lr, momentum=0.9, config=config
            )
            for field in ("P", "cos_delta", "Q", "loss", "accuracy", "cell_hash"):
                expected = np.asarray(getattr(traj.observables, field))
                got = run.observables[field][p, s]
                # vmapped and single calls may round differently in the last bits (float64).
                np.testing.assert_allclose(
                    got, expected, rtol=1e-9, atol=1e-15, err_msg=f"{field} lr={lr} seed={seed}"
                )
            np.testing.assert_allclose(
                run.final_params.W[p, s], np.asarray(traj.final_params.W), rtol=1e-9, atol=1e-15
            )


def test_flow_sweep_marks_failed_solves_and_keeps_the_rest(clusters):
    """σ = 1e-3 needs ~1000 solver steps on this problem, σ = 0.3 under 100: with max_steps = 300
    the small-σ runs stop (MAX_STEPS_REACHED) inside the same vmapped batch as the large-σ runs,
    which finish, conserve the balance Q_i (docs/theory.md §2) and equal a sweep of σ = 0.3
    alone."""
    flow = dict(
        trainer="flow",
        dataset="clusters",
        width=8,
        t_end=40.0,
        save_points=21,
        rtol=1e-4,
        max_steps=300,
        chunk_size=4,
    )
    both = sweep(clusters, RunConfig(**flow, sigma=(1e-3, 0.3), seeds="0:2"))
    alone = sweep(clusters, RunConfig(**flow, sigma=0.3, seeds="0:4"))
    assert both.status.tolist() == [[MAX_STEPS_REACHED] * 2, [OK] * 2]
    assert "max_steps" in both.status_messages[0, 0]
    for field in Observables._fields:
        np.testing.assert_array_equal(
            both.observables[field][1], alone.observables[field][0, :2], err_msg=field
        )
    drift = np.asarray(gflow.balance_drift(both.observables_of(1, 0)))
    assert np.max(drift) < 1e-3  # ~rtol: the flow conserves Q_i
    summary = summarize(both)
    assert summary[0]["ok"] == 0 and summary[0]["final_loss"]["median"] is None
    assert [f["status"] for f in summary[0]["failed"]] == [MAX_STEPS_REACHED] * 2
    assert summary[1]["ok"] == 2 and summary[1]["balance_drift"]["max"] < 1e-3


def test_config_file_then_flags(tmp_path):
    """Defaults < the TOML file < the flags; '-' in a file key stands for '_'."""
    from gflow._cli._run import resolve_config
    from gflow.cli import build_parser

    path = tmp_path / "sweep.toml"
    path.write_text(
        'trainer = "gd"\nwidth = 16\nlr = [0.05]\nsteps = 400\nrecord-every = 20\nseeds = "0:8"\n'
    )
    args = build_parser().parse_args(
        ["sweep", "--config", str(path), "--lr", "0.1,0.2", "--seeds", "3:5"]
    )
    config = resolve_config(args, sweep=True)
    assert config.lr == (0.1, 0.2) and config.seeds == (3, 4)  # flags win
    assert config.width == 16 and config.steps == 400 and config.record_every == 20  # from the file
    assert (
        config.momentum == (0.0,) and config.batch is None and config.sigma == (1e-5,)
    )  # defaults of gd
    # gflow run takes one configuration: a list in the file is refused, pointing to gflow sweep.
    path.write_text("sigma = [1e-5, 1e-4]\n")
    with pytest.raises(ValueError, match="use gflow sweep"):
        resolve_config(build_parser().parse_args(["run", "--config", str(path)]), sweep=False)


def test_sliding_solver_options_reach_the_flow_config():
    """--sliding-capacity and --sliding-halvings become the run's FlowConfig options; they are
    refused for another trainer or solver and for bad values, and a stored configuration from
    before they existed matches one that leaves them unset (a resume is not refused)."""
    from gflow._cli._run import resolve_config
    from gflow._config import config_differences
    from gflow.cli import build_parser

    def config(*flags):
        return resolve_config(build_parser().parse_args(["run", *flags]), sweep=False)

    sliding = ("--trainer", "flow", "--solver", "sliding", "--dt0", "0.5")
    given = config(*sliding, "--sliding-capacity", "8", "--sliding-halvings", "1")
    flow = given.flow_config()
    assert (flow.sliding_capacity, flow.sliding_halvings, flow.adaptive) == (8, 1, False)
    plain = config(*sliding)
    assert (plain.flow_config().sliding_capacity, plain.flow_config().sliding_halvings) == (
        None,
        None,
    )
    older = {k: v for k, v in plain.to_dict().items() if not k.startswith("sliding_")}
    assert config_differences(older, plain.to_dict()) == []
    assert config_differences(older, given.to_dict()) == [
        "sliding_capacity: None there, 8 requested",
        "sliding_halvings: None there, 1 requested",
    ]
    for flags, match in (
        (("--sliding-capacity", "8"), "does not apply to trainer 'sgd'"),
        (("--trainer", "flow", "--sliding-halvings", "1"), "only applies to solver='sliding'"),
        ((*sliding, "--sliding-halvings", "-1"), "integer >= 0"),
        ((*sliding, "--sliding-capacity", "0"), "integer >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            config(*flags)


def test_figures_command_redraws_a_run_folder(sgd_folder, capsys):
    from gflow.cli import main

    report = sgd_folder / "report.md"
    report.unlink()
    assert main(["figures", str(sgd_folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "9 figure(s), 6 of 6 run(s) on disk (6 ok)" in out
    assert report.is_file() and "![norms](figures/norms_p0.png)" in report.read_text()


def test_loss_drop_is_reported_only_when_the_loss_dropped():
    """A flat loss, or one that moves by a fraction of a percent (0.693 → 0.690, where the
    half-way time of the "total decrease" would still exist), has no drop, with the reason; a
    real drop is found at the half-way time of its closed form."""
    t = np.linspace(0.0, 100.0, 101)
    flat = loss_drop(t, np.full(t.size, np.log(2.0)))
    assert flat.time is None and "never fell below" in flat.reason
    creep = np.log(2.0) - 0.003 * t / t[-1]
    small = loss_drop(t, creep)
    assert small.time is None and "fell by only 0.43% of L(0)" in small.reason
    # L(t) = L0 − A·s(t), s a logistic step from 0 to 1 centred at t = 40.5: L has fallen by
    # half of its total decrease once s ≥ ½, first at the record t = 41 (s(40) ≈ 0.46).
    step = 1.0 / (1.0 + np.exp(-(t - 40.5) / 3.0))
    drop = loss_drop(t, np.log(2.0) - 0.6 * (step - step[0]) / (step[-1] - step[0]))
    assert drop.time == 41.0 and drop.reason == ""
    assert loss_drop(t, np.full(t.size, np.nan)).time is None
    with pytest.raises(ValueError, match="min_fall"):
        loss_drop(t, creep, min_fall=0.0)


def test_steps_to_flow_time_meets_the_flow_clock():
    """k = t·(1−β)/η to the nearest multiple of the record intervals R, so flow_time(k, η, β)
    (docs/theory.md §1) is within R·η/(2(1−β)) of t, and exact when t·(1−β)/η is a multiple."""
    assert steps_to_flow_time(300.0, 0.01, 0.9, 300) == 3000
    for t_end, lr, beta, R in [(300.0, 0.013, 0.9, 30), (77.0, 0.05, 0.0, 10), (5.0, 0.3, 0.5, 8)]:
        k = steps_to_flow_time(t_end, lr, beta, R)
        assert k % R == 0 and k >= R
        assert abs(gflow.flow_time(k, lr, beta) - t_end) <= R * lr / (1 - beta) / 2 + 1e-12
    with pytest.raises(ValueError, match="t_end"):
        steps_to_flow_time(-1.0, 0.01, 0.9, 10)


def test_sweep_to_a_common_flow_time(tmp_path, capsys):
    """`gflow sweep --t-end` runs every learning rate to the same flow time (steps =
    t·(1−β)/η each), says so per setting, reports no drop with the reason when the loss has not
    dropped yet, and its report says what the chunks held."""
    from gflow.cli import main

    out = tmp_path / "t_end"
    args = ["sweep", "--dataset", "clusters", "--n-per-class", "32", "--width", "8"]
    args += ["--sigma", "1e-3", "--lr", "0.05,0.1", "--momentum", "0.9", "--batch", "8"]
    args += ["--t-end", "20", "--save-points", "5", "--seeds", "0:2", "--dtype", "float64"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    run = load_run(out)
    # 20·(1−0.9)/η = 40 and 20 steps: both multiples of the 4 record intervals, so exact.
    assert run.num_steps.tolist() == [[40, 40], [20, 20]]
    np.testing.assert_allclose(run.t[:, -1], [20.0, 20.0], rtol=1e-12)
    np.testing.assert_allclose(run.t[0], gflow.flow_time(np.arange(5) * 10, 0.05, 0.9))
    assert run.layout["t_end"] == 20.0 and run.layout["steps"] == [40, 20]
    assert printed.count("(t = 0..20, ") == 2 and "different flow times" not in printed
    # At t = 20 the loss of σ = 1e-3 has not dropped yet: no drop, with the reason.
    assert printed.count("| no loss drop in any seed (the loss fell by only") == 2
    report = (out / "report.md").read_text()
    assert "in 2 chunks of 2 runs" in report
    assert "| chunk_size | `16` (requested; the plan made 2 chunks of 2 runs) |" in report
    # --t-end sets the steps: a step count as well is refused with one line.
    assert main([*args, "--steps", "100", "--out", str(tmp_path / "x")]) == 2
    assert "--t-end sets the steps" in capsys.readouterr().err


def test_report_warns_when_settings_end_at_different_flow_times(sgd_folder):
    """A fixed step count runs η = 0.05 and 0.1 to t = 150 and 300: the report says so."""
    report = (sgd_folder / "report.md").read_text()
    assert "different flow times (t_end = 150, 300)" in report
    assert "| σ=0.001, η=0.05, β=0.9 | 150 |" in report
    assert "in 2 chunks of 4 runs (the last 2)" in report


def test_xarray_view_names_every_axis(sgd_folder):
    """`Run.to_xarray()`: the same arrays under their axis names, with the swept values and the
    seeds as coordinates (xarray is an optional extra: without it, a clear ImportError)."""
    run = load_run(sgd_folder)
    try:
        import xarray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'gflow\[xarray\]'"):
            run.to_xarray()
        return
    ds = run.to_xarray()
    assert ds.P.dims == run.axes["P"] and ds.final_b.dims == run.param_axes["b"]
    np.testing.assert_array_equal(ds.P.values, run.observables["P"])
    np.testing.assert_array_equal(ds.final_W.values, run.final_params.W)
    # Selection by value: the run of seed 2 at η = 0.1 is point 1, seed index 2.
    picked = ds.loss.sel(seed=2).isel(point=int(np.flatnonzero(ds.lr.values == 0.1)[0]))
    np.testing.assert_array_equal(picked.values, run.observables["loss"][1, 2])
    assert ds.sigma.values.tolist() == [1e-3, 1e-3]


def test_figure_axes_fit_the_data():
    """Log axes end on labelled ticks that enclose every value (the final loss is never below
    the lowest label); a cosine axis spans [0, 1] for non-negative data, else reaches the data."""
    from matplotlib.figure import Figure

    from gflow._plots import _cos_limits, _log_axis

    ax = Figure().add_subplot()
    loss = np.geomspace(np.log(2.0), 0.06, 50)
    _log_axis(ax, loss)
    ticks = ax.get_yticks()
    labels = [ax.yaxis.get_major_formatter()(y, 0) for y in ticks]
    assert (ticks[0], ticks[-1]) == ax.get_ylim() and ticks[0] <= loss.min() < loss.max() <= 1
    assert labels == ["0.05", "0.1", "0.2", "0.5", "1"]
    narrow = Figure().add_subplot()
    _log_axis(narrow, [0.25, np.log(2.0)])  # under a factor 3: every 1..9 × 10^k is labelled
    assert narrow.get_yticks().tolist() == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    cos = Figure().add_subplot()
    _cos_limits(cos, np.array([0.0, 0.4, 1.0]))
    assert cos.get_ylim() == pytest.approx((-0.02, 1.02))
    _cos_limits(cos, np.array([-0.43, 0.9]))
    assert cos.get_ylim()[0] <= -0.43 and cos.get_ylim()[1] == pytest.approx(1.02)
