"""``cftrade bench book`` runs end to end on a small recording and checks its own answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_book


def test_bench_book_generates_runs_and_checks_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rec.jsonl"
    assert bench_book.main(["--generate", str(path), "--n", "4000", "--seed", "3"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert gen["events"] == 4000 and len(path.read_bytes().splitlines()) == 4001
    assert bench_book.main(["--events", str(path), "--repeat", "2", "--verify", "4000"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checksum_ok"] is True and res["events"] == 4000 and res["market"] == "XBT:GBP"
    for key in ("wire_per_s", "batch_per_s", "naive_per_s", "batch_vs_naive", "wire_vs_naive",
                "peak_rss_mb", "bytes_per_resting_order", "jit_first_call_s", "checksum"):
        assert key in res
    assert len(res["wire_per_s_runs"]) == 2 and len(res["batch_per_s_runs"]) == 10
    assert res["resting_orders"] > 1000 and res["final_best_bid"] < res["final_best_ask"]


def test_bench_book_default_generates_a_temporary_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_book.main(["--n", "2000", "--repeat", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checksum_ok"] and res["events_file"].startswith("(generated")


def test_bench_book_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_book.main(["--events", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
