"""Sweeps: spec loading, parameter sets, config overrides, ranking, walk-forward, pool and Dask.

The backtest here is a stand-in with a known answer (module-level so spawned workers and Dask
can import it): its net PnL is a function of ``half_spread`` and the window, so the ranking
and the walk-forward choices can be checked by hand.  The real replay is exercised by the
scenario tests.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import msgspec
import numpy as np
import pytest

from backtests.result import MARK_DTYPE, BacktestResult, FillRecord
from backtests.sweep import (
    Range,
    SweepSpec,
    Task,
    apply_params,
    load_sweep,
    parameter_sets,
    run_sweep,
    write_outputs,
)
from engine.config import RunConfig, load_run_config
from engine.configload import loads
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
XBT = 10**8
SPAN = (0, 4_000)  # the stand-in recordings' time span (µs)


def fake_backtest(cfg: RunConfig, task: Task) -> BacktestResult:
    """Net PnL (GBP) = 12·h − 2·h² + bonus, h = half_spread in GBP; best h = 3 on a full run.

    In a window, the best h is 1 + (window start // 1000): each 1000 µs window is another
    regime.  Recording 1 adds 1 GBP to every run.  half_spread 9.99 raises.
    """
    p = cfg.strategies[0].params
    h = float(p.half_spread)
    if p.half_spread == "9.99":
        raise RuntimeError("stand-in failure")
    if task.window is None:
        pnl = 12 * h - 2 * h * h
    else:
        best = 1 + task.window[0] // 1000
        pnl = 10 - (h - best) ** 2
    pnl += task.recording_index
    v = round(pnl * 100)  # counter units
    fills = [FillRecord("mm", 1, 1, 30000_00, XBT, 30000_00, 0, 10),
             FillRecord("mm", 2, -1, 30000_00, XBT, 30000_00 + v, 0, 20)]
    marks = np.array([(10, 0, XBT, 0, 30000_00), (20, 0, 0, v, 30000_00)], dtype=MARK_DTYPE)
    return BacktestResult(config_path=task.config_name, data_path=task.recording, seed=task.seed, fills=fills,
                          marks=marks, strategies=["mm"], summary={"strategies": {"mm": {"market": "XBT:GBP",
                                                                                           "orders_placed": 2}}},
                          events=100, wall_seconds=0.01, final_hash=f"{v}-{task.seed}")


def fake_span(path: str) -> tuple[int, int]:
    return SPAN


def _sweep(tmp_path: Path, body: str, recordings: int = 1) -> SweepSpec:
    for i in range(recordings):
        (tmp_path / f"rec{i}.jsonl").write_text("")
    recs = ", ".join(f"rec{i}.jsonl" for i in range(recordings))
    p = tmp_path / "sweep.yaml"
    p.write_text(f'config: "{ROOT / "configs" / "market_maker.yaml"}"\nrecordings: [{recs}]\n' + textwrap.dedent(body))
    return load_sweep(p)


GRID = """
grid:
  strategies[0].params.half_spread: ["1.00", "2.00", "3.00", "4.00", "5.00"]
"""


def _strip(runs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


def test_grid_sweep_ranks_by_hand(tmp_path):
    spec = _sweep(tmp_path, GRID + "seed: 5\n")
    res = run_sweep(spec, workers=0, backtest=fake_backtest)
    # 12h - 2h^2 for h = 1..5: 10, 16, 18, 16, 10
    assert [r["set"] for r in res.ranking] == [2, 1, 3, 0, 4]  # ties keep set order
    assert [r["score"] for r in res.ranking] == pytest.approx([18, 16, 16, 10, 10])
    assert res.best["params"] == {"strategies[0].params.half_spread": "3.00"}
    assert {r["final_hash"].split("-")[1] for r in res.runs} == {"5"}  # the sweep's seed reached the replay
    assert not res.errors


def test_mean_over_recordings_and_minimised_objectives(tmp_path):
    spec = _sweep(tmp_path, GRID + "objective: max_drawdown\n", recordings=2)
    res = run_sweep(spec, workers=0, backtest=fake_backtest)
    assert len(res.runs) == 10 and all(r["runs"] == 2 for r in res.ranking)
    # equity marks 0 then v > 0: no drawdown anywhere, so every set ties and keeps its order
    assert [r["set"] for r in res.ranking] == [0, 1, 2, 3, 4]
    spec = _sweep(tmp_path, GRID, recordings=2)
    res = run_sweep(spec, workers=0, backtest=fake_backtest)
    assert res.best["score"] == pytest.approx(18.5)  # (18 + 19) / 2


def test_failed_runs_are_reported_and_ranked_last(tmp_path):
    spec = _sweep(tmp_path, """
        grid:
          strategies[0].params.half_spread: ["9.99", "1.00"]
    """)
    res = run_sweep(spec, workers=0, backtest=fake_backtest)
    assert [r["set"] for r in res.ranking] == [1, 0]
    assert res.ranking[1]["score"] is None and res.ranking[1]["errors"] == 1
    assert res.errors[0]["error"] == "RuntimeError: stand-in failure"


def test_walk_forward_picks_on_train_and_reports_test(tmp_path):
    spec = _sweep(tmp_path, GRID + "walk_forward: {folds: 3}\n")
    res = run_sweep(spec, workers=0, backtest=fake_backtest, span=fake_span)
    # windows of 1000 µs: fold k trains on [1000(k-1), 1000k) whose best h is k, tests on the next
    assert [f["set"] for f in res.folds] == [0, 1, 2]
    assert [f["train"][0] for f in res.folds] == [[0, 1000], [1000, 2000], [2000, 3000]]
    assert [f["test"][0] for f in res.folds] == [[1000, 2000], [2000, 3000], [3000, 4000]]
    assert [f["train_score"] for f in res.folds] == pytest.approx([10, 10, 10])
    assert [f["test_score"] for f in res.folds] == pytest.approx([9, 9, 9])  # one regime late
    assert len(res.runs) == 3 * 5 + 3
    anchored = run_sweep(_sweep(tmp_path, GRID + "walk_forward: {folds: 3, anchored: true}\n"), workers=0,
                         backtest=fake_backtest, span=fake_span)
    assert [f["train"][0] for f in anchored.folds] == [[0, 1000], [0, 2000], [0, 3000]]
    assert [f["set"] for f in anchored.folds] == [0, 0, 0]
    assert [f["test_score"] for f in anchored.folds] == pytest.approx([9, 6, 1])


def test_process_pool_gives_the_same_runs(tmp_path):
    spec = _sweep(tmp_path, GRID, recordings=2)
    inline = run_sweep(spec, workers=0, backtest=fake_backtest)
    pooled = run_sweep(spec, workers=2, backtest=fake_backtest)
    assert _strip(pooled.runs) == _strip(inline.runs)
    assert pooled.ranking == inline.ranking


def test_dask_local_cluster_gives_the_same_runs(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = _sweep(tmp_path, GRID)
    inline = run_sweep(spec, workers=0, backtest=fake_backtest)
    with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as cl:
        done = []
        res = run_sweep(spec, scheduler=cl.scheduler_address, backtest=fake_backtest,
                        progress=lambda d, n: done.append((d, n)))
    assert _strip(res.runs) == _strip(inline.runs)
    assert res.ranking == inline.ranking and res.scheduler == cl.scheduler_address
    assert done[-1] == (5, 5)


def test_outputs(tmp_path):
    spec = _sweep(tmp_path, GRID + "walk_forward: {folds: 2}\n")
    res = run_sweep(spec, workers=0, backtest=fake_backtest, span=fake_span)
    paths = write_outputs(res, tmp_path / "out")
    with paths["ranking"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["rank"] == "1" and rows[0]["strategies[0].params.half_spread"] == res.best["params"][
        "strategies[0].params.half_spread"]
    assert float(rows[0]["score_net_pnl"]) == pytest.approx(res.best["score"])
    with paths["runs"].open() as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == len(res.runs) and {r["role"] for r in runs} == {"train", "test"}
    with paths["folds"].open() as fh:
        folds = list(csv.DictReader(fh))
    assert [int(f["set"]) for f in folds] == [f["set"] for f in res.folds]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(paths["json"].read_text())
    assert doc["best"]["set"] == res.best["set"] and doc["runs"] == len(res.runs)


# -- spec, parameter sets, overrides ----------------------------------------------------------


def test_parameter_sets_grid_and_random(tmp_path):
    spec = _sweep(tmp_path, """
        grid:
          strategies[0].params.half_spread: ["1.00", "2.00"]
          strategies[0].params.vol_window: [10, 20, 30]
    """)
    sets = parameter_sets(spec)
    assert len(sets) == 6 and sets[1] == {"strategies[0].params.half_spread": "1.00", "strategies[0].params.vol_window": 20}
    body = """
        random:
          samples: 40
          seed: 3
          params:
            strategies[0].params.half_spread: {low: "0.50", high: "2.00", step: "0.25"}
            strategies[0].params.vol_window: {low: 10, high: 30, step: 10}
            strategies[0].params.size: ["0.01", "0.02"]
    """
    a, b = parameter_sets(_sweep(tmp_path, body)), parameter_sets(_sweep(tmp_path, body))
    assert a == b and 1 < len(a) <= 40
    assert len({json.dumps(s, sort_keys=True) for s in a}) == len(a)  # no duplicates
    halves = {s["strategies[0].params.half_spread"] for s in a}
    assert halves <= {"0.50", "0.75", "1.00", "1.25", "1.50", "1.75", "2.00"} and len(halves) > 3
    assert {s["strategies[0].params.vol_window"] for s in a} <= {10, 20, 30}
    assert parameter_sets(_sweep(tmp_path, body.replace("seed: 3", "seed: 4"))) != a


def test_range_values():
    assert Range(low="0.5", high="1.25", step="0.25").values() == ["0.50", "0.75", "1.00", "1.25"]
    assert Range(low=1, high=10, step=4).values() == [1, 5, 9]
    with pytest.raises(ConfigError, match="step: must be > 0"):
        Range(low=1, high=2, step=0)
    with pytest.raises(ConfigError, match="all integers or all decimal text"):
        Range(low=1, high="2", step=1)


def test_apply_params_validates_like_a_run_config():
    path = ROOT / "configs" / "market_maker.yaml"
    base = load_run_config(str(path), resolve_secrets=False)
    text = apply_params(base, {"strategies[0].params.half_spread": "2.50", "risk.max_loss": "100.00"},
                        filename=str(path), base_dir=path.parent)
    cfg = loads(text, RunConfig, filename=str(path), resolve_secrets=False)
    assert cfg.strategies[0].params.half_spread == "2.50" and cfg.risk.max_loss == "100.00"
    assert cfg.strategies[0].params.size == base.strategies[0].params.size  # the rest is untouched
    with pytest.raises(ConfigError, match=r"parameter set .*half_spread.*: strategies\[0\]\.params\.half_spread"):
        apply_params(base, {"strategies[0].params.half_spread": 2.5}, filename=str(path), base_dir=path.parent)
    with pytest.raises(ConfigError, match="vol_window: must be >= 2|vol_window"):
        apply_params(base, {"strategies[0].params.vol_window": "ten"}, filename=str(path), base_dir=path.parent)
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.params\.half_sprad is not a key.*half_spread"):
        apply_params(base, {"strategies[0].params.half_sprad": "1.00"}, filename=str(path), base_dir=path.parent)
    with pytest.raises(ConfigError, match=r"strategies\[3\] does not exist"):
        apply_params(base, {"strategies[3].params.size": "1.00"}, filename=str(path), base_dir=path.parent)


@pytest.mark.parametrize(("body", "match"), [
    (GRID + "objectiv: sharpe\n", r"sweep.yaml:\d+: objectiv: unknown key; did you mean 'objective'"),
    (GRID + "random: {samples: 2, params: {a: [1]}}\n", "exactly one of 'grid' or 'random'"),
    ("grid:\n  strategies[0]..x: [1]\n", r"grid.*pattern|does not match"),
    (GRID + "objective: profit\n", "objective"),
    (GRID + "interval: 1 week\n", "interval"),
    ("random: {samples: 2, params: {a: {low: \"2\", high: \"1\", step: \"1\"}}}\n", "high: must be >= low"),
])
def test_bad_sweep_files_are_refused_with_a_line(tmp_path, body, match):
    (tmp_path / "rec0.jsonl").write_text("")
    p = tmp_path / "sweep.yaml"
    p.write_text(f'config: "{ROOT / "configs" / "market_maker.yaml"}"\nrecordings: [rec0.jsonl]\n' + body)
    with pytest.raises(ConfigError, match=match):
        load_sweep(p)


def test_sweep_refuses_missing_recordings_and_unknown_strategy(tmp_path):
    spec = _sweep(tmp_path, GRID + "strategy: nobody\n")
    with pytest.raises(ConfigError, match="strategy 'nobody' is not in"):
        run_sweep(spec, workers=0, backtest=fake_backtest)
    spec = _sweep(tmp_path, GRID)
    (tmp_path / "rec0.jsonl").unlink()
    with pytest.raises(ConfigError, match="rec0.jsonl does not exist"):
        run_sweep(spec, workers=0, backtest=fake_backtest)


# -- the real replay engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """The calm scenario's recording: 30 simulated minutes, about 8,000 events."""
    from backtests.scenarios import load_scenario, make_data

    sc = load_scenario("mm_calm")
    path = tmp_path_factory.mktemp("rec") / "calm.jsonl"
    make_data(sc, path)
    return path, sc


def test_cli_sweep_with_the_replay_engine(recording, tmp_path, capsys):
    from backtests.replay import ReplayOptions, run_backtest
    from backtests.sweep_cli import main

    path, sc = recording
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent(f"""
        config: "{sc.spec.config}"
        recordings: ["{path}"]
        grid:
          strategies[0].params.half_spread: ["1.00", "4.00"]
        objective: net_pnl
        interval: "5m"
        seed: 1
    """))
    assert main([str(sweep), "--workers", "0", "--quiet", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 sets x 1 recording(s): 2 runs" in out
    with (tmp_path / "out" / "runs.csv").open() as fh:
        runs = {r["set"]: r for r in csv.DictReader(fh)}
    assert runs.keys() == {"0", "1"} and all(r["error"] == "" for r in runs.values())
    # a sweep run is exactly the backtest of the config with its parameters applied
    base = load_run_config(sc.spec.config, resolve_secrets=False)
    text = apply_params(base, {"strategies[0].params.half_spread": "4.00"}, filename=sc.spec.config,
                        base_dir=Path(sc.spec.config).parent)
    cfg = loads(text, RunConfig, filename=sc.spec.config, resolve_secrets=False)
    direct = run_backtest(cfg, path, ReplayOptions(seed=1))
    assert runs["1"]["final_hash"] == direct.final_hash
    assert int(runs["1"]["fills"]) == len(direct.fills) > 0
    assert runs["0"]["final_hash"] != runs["1"]["final_hash"]


def test_walk_forward_with_the_replay_engine(recording, tmp_path):
    path, sc = recording
    spec = _sweep(tmp_path, """
        grid:
          strategies[0].params.half_spread: ["1.00", "4.00"]
        walk_forward: {folds: 2}
    """)
    spec = msgspec.structs.replace(spec, recordings=(str(path),), config=sc.spec.config)
    res = run_sweep(spec, workers=0)
    assert not res.errors
    assert len(res.folds) == 2 and len(res.runs) == 2 * 2 + 2
    train = [r for r in res.runs if r["role"] == "train"]
    # the folds cut the recording into three equal windows; each window trades on its own
    w = [r["window"] for r in train if r["set"] == 0]
    assert w[0][1] == w[1][0] and w[0][1] - w[0][0] == pytest.approx(w[1][1] - w[1][0], abs=1)
    assert len({r["final_hash"] for r in train}) == len(train)



def test_generated_recordings_are_made_once_and_reused(tmp_path):
    from backtests.scenarios import DIR

    ex = DIR / "mm_calm" / "exchange.yaml"
    p = tmp_path / "sweep.yaml"
    p.write_text(f'config: "{ROOT / "configs" / "market_maker.yaml"}"\n'
                 f'recordings: [{{exchange: "{ex}", seed: 3, hours: 0.02, markets: ["XBT:GBP"]}}]\n' + GRID)
    spec = load_sweep(p)
    first = run_sweep(spec, workers=0, backtest=fake_backtest, data_dir=tmp_path / "data")
    made = Path(first.recordings[0])
    assert made.parent == tmp_path / "data" and made.stat().st_size > 10_000
    stamp = made.stat().st_mtime_ns
    again = run_sweep(spec, workers=0, backtest=fake_backtest, data_dir=tmp_path / "data")
    assert again.recordings == first.recordings and made.stat().st_mtime_ns == stamp
    other = load_sweep(p.write_text(p.read_text().replace("seed: 3", "seed: 4")) and p)
    assert run_sweep(other, workers=0, backtest=fake_backtest, data_dir=tmp_path / "data").recordings != first.recordings


def test_the_shipped_example_sweep_loads():
    from backtests.scenarios import DIR

    spec = load_sweep(DIR / "mm_calm" / "sweep.yaml")
    assert len(parameter_sets(spec)) == 10 and len(spec.recordings) == 2


def test_cli_sweep_on_a_dask_cluster_with_the_replay_engine(recording, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    from backtests.sweep_cli import main

    path, sc = recording
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent(f"""
        config: "{sc.spec.config}"
        recordings: ["{path}"]
        grid:
          strategies[0].params.half_spread: ["1.00", "4.00"]
        seed: 1
    """))
    assert main([str(sweep), "--workers", "0", "--quiet", "--no-plot", "--out", str(tmp_path / "local")]) == 0
    with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as cl:
        assert main([str(sweep), "--scheduler", cl.scheduler_address, "--quiet", "--no-plot",
                     "--out", str(tmp_path / "dask")]) == 0
    assert f"on Dask {cl.scheduler_address}" in capsys.readouterr().out

    def hashes(d: str) -> list[str]:
        with (tmp_path / d / "runs.csv").open() as fh:
            return [r["final_hash"] for r in csv.DictReader(fh)]

    assert hashes("dask") == hashes("local") and len(set(hashes("local"))) == 2
