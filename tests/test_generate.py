"""The seeded recording generator (issue 6 item 6): determinism, realism, exact sizes (S2)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backtests.generate import GenerateOptions, generate
from backtests.generate import main as generate_main
from backtests.recording import LT_SNAPSHOT, load, read_jsonl, read_npz, replay_book, validate
from engine.errors import ConfigError
from engine.scale import XBT_EUR, XBT_GBP

ROOT = Path(__file__).resolve().parents[1]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_S2_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    opts = GenerateOptions(hours=0.05, seed=11, jitter_us=300)
    a = generate(tmp_path / "a.jsonl", opts)
    b = generate(tmp_path / "b.jsonl", opts)
    c = generate(tmp_path / "c.jsonl", GenerateOptions(hours=0.05, seed=12, jitter_us=300))
    assert a.lines == b.lines > 500
    assert sha(tmp_path / "a.jsonl") == sha(tmp_path / "b.jsonl")
    assert sha(tmp_path / "a.jsonl") != sha(tmp_path / "c.jsonl")
    assert a.exchange.state_hash() == b.exchange.state_hash() != c.exchange.state_hash()
    # jitter never reorders the feed: the file validates (times never go backwards)
    rec = load(tmp_path / "a.jsonl")
    t = rec.events["recv_time"]
    assert np.all(np.diff(t) >= 0) and len(np.unique(t)) > 100


def test_a_generated_quarter_hour_is_a_lively_consistent_market(tmp_path):
    result = generate(tmp_path / "q.jsonl", GenerateOptions(hours=0.25, seed=5, feed_latency_us=2500))
    rec = load(tmp_path / "q.jsonl")  # validation included
    report = validate(rec)
    assert report.ok and report.unknown_refs == 0 and report.unsnapshotted == 0
    assert rec.header.markets == ("XBT:GBP", "XBT:EUR")
    assert rec.header.created_us == rec.header.meta["generator"]["start_us"]
    c = report.counts
    assert c["snapshots"] == 2 and c["ticker_replies"] == 2
    assert c["OrderOpened"] > 2000 and c["OrderClosed"] > 2000 and c["OrdersMatched"] > 500
    assert c["other_notices"] > 300  # TickerChanged
    assert report.takers > 50  # crossing limit orders and market orders
    # hundreds of resting orders in the snapshot and at the end
    first = rec.snapshot_arrays(0)
    assert len(first) > 250 and (first["quantity"] > 0).sum() > 100 and (first["quantity"] < 0).sum() > 100
    for m in (XBT_GBP, XBT_EUR):
        book = replay_book(rec, m)
        bids, asks = result.exchange.book(*m.codes)
        o = book.orders()
        assert list(zip(o["id"].tolist(), o["quantity"].tolist(), o["price"].tolist(), strict=True)) == sorted(
            (b.id, b.quantity, b.price) for b in bids + asks)
        assert len(o["id"]) > 150 and book.best_bid < book.best_ask
    # receive time = exchange time + feed latency for every stamped notice
    ev = rec.events
    stamped = (ev["kind"] == 1) | (ev["kind"] == 3)
    assert np.all(ev["recv_time"][stamped] - ev["exch_time"][stamped] == 2500)
    # the simulated span: 60 s of warm-up, then a quarter hour
    assert ev["recv_time"][0] == rec.header.created_us + 60_000_000 + 2500
    assert ev["recv_time"][-1] <= rec.header.created_us + 60_000_000 + 900_000_000 + 2500


def test_exact_line_count_and_npz_output(tmp_path):
    r = generate(tmp_path / "n.npz", GenerateOptions(hours=0, max_lines=3000, seed=2, markets=("XBT:GBP",)))
    assert r.lines == 3000 and not (tmp_path / "n.npz.jsonl.part").exists()
    rec = read_npz(tmp_path / "n.npz")
    assert len(rec) == 3000 and rec.header.markets == ("XBT:GBP",)
    assert rec.line_type[0] == LT_SNAPSHOT and validate(rec).ok
    # the npz is the columnar form of the very same JSONL
    generate(tmp_path / "n.jsonl", GenerateOptions(hours=0, max_lines=3000, seed=2, markets=("XBT:GBP",)))
    again = read_jsonl(tmp_path / "n.jsonl")
    assert np.array_equal(again.events, rec.events) and again.raw == rec.raw


def test_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="hours must be > 0"):
        GenerateOptions(hours=0)
    with pytest.raises(ConfigError, match="feed latency and jitter must be >= 0"):
        GenerateOptions(feed_latency_us=-1)
    with pytest.raises(ConfigError, match="max_lines must be >= 1"):
        GenerateOptions(max_lines=0)
    cfg = tmp_path / "x.yaml"
    cfg.write_text((ROOT / "configs" / "exchange.yaml").read_text().replace(
        '  - base: "XBT"\n    counter: "EUR"\n', ""))
    with pytest.raises(ConfigError, match="market XBT:EUR is not one of the exchange's markets"):
        generate(tmp_path / "y.jsonl", GenerateOptions(hours=0.01, config=cfg, markets=("XBT:EUR",)))


def test_cli_main_and_module(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert generate_main(["--events", "400", "--seed", "9", "--out", str(out), "--markets", "XBT:EUR"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lines"] == 400 and len(load(out)) == 400
    assert generate_main(["--hours", "0", "--out", str(tmp_path / "bad.jsonl")]) == 2
    assert "hours must be > 0" in capsys.readouterr().err
    # python -m backtests.generate is the documented entry point
    proc = subprocess.run([sys.executable, "-m", "backtests.generate", "--events", "50", "--out", str(tmp_path / "p.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lines"] == 50
