"""``cftrade bench exchange`` runs end to end on a tiny workload and checks its own answer."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_exchange


def test_bench_exchange_small_run_prints_one_checked_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_exchange.main(["--pairs", "60", "--roundtrips", "20", "--connections", "2", "--core-ops", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["checks"] == "ok"
    assert out["ws_pipelined"]["commands"] == 120 and out["ws_pipelined"]["frames_per_command"] == 3.0
    assert out["ws_parallel"]["commands"] == 120
    assert 0 < out["ws_roundtrip"]["command_p50_us"] <= out["ws_roundtrip"]["command_p99_us"]
