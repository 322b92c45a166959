"""``cftrade bench replay`` still runs and its self-checks hold (on a small recording)."""

from __future__ import annotations

import json

from backtests.scenarios import load_scenario, make_data
from benchmarks import bench_replay


def test_bench_replay_checks_its_answer(tmp_path, capsys):
    data = make_data(load_scenario("twap_volatile"), tmp_path / "small.jsonl")
    assert bench_replay.main(["--data", str(data), "--check-events", "1000"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checks_ok"] and all(res["checks"].values()) and set(res["checks"]) == {
        "all_events_counted", "report_matches_runtime", "balances_match_exchange", "deterministic_prefix"}
    assert res["events"] > 5000 and res["events_per_s"] > 0
    # peak (getrusage) and start (/proc) are read two ways: allow their rounding apart
    assert res["rss_peak_mib"] >= res["rss_start_mib"] - 1.0
    assert res["vs_baselines"]["hftbacktest_numba_quoter"] == round(res["events_per_s"] / 1_700_000, 4)


def test_bench_replay_fast_with_conflation_and_the_exact_figure(tmp_path, capsys):
    data = make_data(load_scenario("twap_volatile"), tmp_path / "small.jsonl")
    assert bench_replay.main(["--data", str(data), "--check-events", "1000", "--fast", "--book-interval", "1",
                              "--exact-events", "3000"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checks_ok"] and res["mode"] == "fast" and res["book_interval_s"] == 1.0
    ex = res["exact_same_run"]
    assert ex["events"] < res["events"] and ex["events_per_s"] > 0
    assert ex["fast_speedup"] == round(res["events_per_s"] / ex["events_per_s"], 1)
    assert res["fast_interactions"] is not None and res["fast_batches"] > 0
