"""Backtest reports from hand-made results: every figure checked against a hand computation."""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest

from backtests.report import (
    build_report,
    drawdown,
    equity_returns,
    inventory_stats,
    parse_interval,
    sharpe_sortino,
    summary_row,
    write_report,
)
from backtests.result import MARK_DTYPE, BacktestResult, FillRecord
from engine.errors import ConfigError
from engine.scale import V1

H = 3_600_000_000  # one hour in µs
T0 = 1_700_000_000_000_000
XBT = 10**8  # v2 scale


def _marks(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=MARK_DTYPE)


def _result(fills: list[FillRecord], marks: np.ndarray, *, strategies: list[str] | None = None,
            summary: dict | None = None) -> BacktestResult:
    return BacktestResult(
        config_path="cfg.yaml", data_path="data.jsonl", seed=7, fills=fills, marks=marks,
        strategies=strategies or ["mm"], summary=summary or {"strategies": {"mm": {"market": "XBT:GBP", "orders_placed": 8}}},
        events=1000, wall_seconds=0.5, final_hash="ab" * 32,
    )


def _round_trip() -> BacktestResult:
    # buy 0.01 XBT @ 30000.00 for 300.00 (fee 0.09), buy 0.01 @ 30020.00 for 300.20 (fee 0.09),
    # sell 0.01 @ 30030.00 for 300.30 (fee 0.09): average cost 300.10 per 0.01, so realized 0.20;
    # 0.01 left, marked at 30040.00 -> worth 300.40 against a cost of 300.10: unrealized 0.30.
    fills = [
        FillRecord("mm", 1, 1, 30000_00, XBT // 100, 300_00, 9, T0 + H),
        FillRecord("mm", 2, 1, 30020_00, XBT // 100, 300_20, 9, T0 + 2 * H),
        FillRecord("mm", 3, -1, 30030_00, XBT // 100, 300_30, 9, T0 + 3 * H),
    ]
    marks = _marks([
        (T0, 0, 0, 0, 30000_00),
        (T0 + H, 0, XBT // 100, -9, 30000_00),
        (T0 + 2 * H, 0, 2 * XBT // 100, -18 - 20, 30000_00),
        (T0 + 3 * H, 0, XBT // 100, 20 - 27 + 20, 30030_00),
        (T0 + 4 * H, 0, XBT // 100, 20 - 27 + 30, 30040_00),
    ])
    return _result(fills, marks)


def test_pnl_fees_volume_and_fill_ratio_by_hand():
    m = build_report(_round_trip()).strategies["mm"]
    assert (m.realized, m.unrealized, m.fees) == (20, 30, 27)
    assert m.net == 23
    assert m.mark_price == 30040_00
    assert (m.fills, m.buys, m.sells, m.filled_orders) == (3, 2, 1, 3)
    assert m.volume_base == 3 * XBT // 100 and m.volume_counter == 900_50
    assert m.fill_ratio == pytest.approx(3 / 8)
    d = m.to_dict()
    assert d["net_pnl"] == "0.23" and d["realized_pnl"] == "0.20" and d["unrealized_pnl"] == "0.30"
    assert d["fees"] == "0.27" and d["volume_base"] == "0.03000000" and d["volume_counter"] == "900.50"
    assert d["mark_price"] == "30040.00"
    # the last equity mark (what the replay sampled) agrees with the exact PnL
    assert m.final_equity_mark == math.floor(m.net)


def test_pro_rata_realized_is_floored_in_text_and_exact_inside():
    # buy 3 units for 10 counter units, sell 1 for 4: realized 4 - 10/3 = 2/3 of a penny
    fills = [FillRecord("mm", 1, 1, 1, 3, 10, 0, T0), FillRecord("mm", 2, -1, 1, 1, 4, 0, T0 + 1)]
    m = build_report(_result(fills, _marks([]))).strategies["mm"]
    assert m.realized * 3 == 2
    assert m.to_dict()["realized_pnl"] == "0.00"
    # no marks: unrealized at the last fill price, inventory from the fills
    assert m.mark_price == 1 and m.inventory.final == 2 and m.inventory.max == 3


def test_losses_are_floored_toward_minus_infinity():
    fills = [FillRecord("mm", 1, 1, 30000_00, 3, 1, 1, T0)]  # fee 0.01, no realized
    m = build_report(_result(fills, _marks([]))).strategies["mm"]
    assert m.to_dict()["fees"] == "0.01"
    assert m.to_dict()["net_pnl"] == m.money(m.net)
    assert m.net < 0 and m.to_dict()["net_pnl"].startswith("-")


def test_drawdown_from_running_peak():
    t = np.arange(6, dtype=np.int64) * 10
    assert drawdown(t, np.array([0, 100, 50, 150, 20, 80])) == (130, 30, 40)
    assert drawdown(t, np.array([0, 1, 2, 3, 4, 5])) == (0, None, None)
    # the peak starts at 0: a first loss is a drawdown from the (implicit) start
    assert drawdown(t[:2], np.array([-30, 10])) == (30, None, 0)
    assert drawdown(t[:0], np.array([], dtype=np.int64)) == (0, None, None)


def test_equity_is_resampled_to_the_interval_grid():
    # marks at irregular times; the grid value is the last mark at or before each grid time
    times = np.array([0, 10, 25, 30, 59, 61, 95], dtype=np.int64)
    equity = np.array([0, 5, 7, 9, 4, 100, 3], dtype=np.int64)
    r = equity_returns(times, equity, 30)
    # grid 0, 30, 60, 90 -> 0, 9, 4, 100; the partial interval 90..95 is left out
    assert list(r) == [9, -5, 96]


def test_sharpe_and_sortino_match_a_hand_computation():
    returns = np.array([1.0, 2.0, 3.0, -1.0])
    sharpe, sortino = sharpe_sortino(returns, H)
    periods_per_year = 365 * 24
    mean = statistics.mean(returns)
    assert sharpe == pytest.approx(mean / statistics.stdev(returns) * math.sqrt(periods_per_year))
    downside = math.sqrt((0 + 0 + 0 + 1) / 4)
    assert sortino == pytest.approx(mean / downside * math.sqrt(periods_per_year))
    # a daily interval annualises with sqrt(365)
    s_day, _ = sharpe_sortino(returns, 24 * H)
    assert s_day == pytest.approx(sharpe / math.sqrt(24))
    # too few periods, no dispersion, no losing interval: no figure
    assert sharpe_sortino(np.array([1.0]), H) == (None, None)
    assert sharpe_sortino(np.array([2.0, 2.0, 2.0]), H) == (None, None)


def test_report_sharpe_uses_the_chosen_interval():
    r = _round_trip()
    hourly = build_report(r, interval="1h").strategies["mm"]
    eq = [0, -9, -38, 13, 23]
    rets = np.diff(np.array(eq, dtype=np.float64))
    expected, _ = sharpe_sortino(rets, H)
    assert hourly.periods == 4 and hourly.sharpe == pytest.approx(expected)
    two = build_report(r, interval="2h").strategies["mm"]
    assert two.periods == 2  # grid 0, 2h, 4h: -38, then 23 - -38
    assert two.sharpe == pytest.approx(sharpe_sortino(np.array([-38.0, 61.0]), 2 * H)[0])
    assert build_report(r, interval="1d").strategies["mm"].sharpe is None


def test_inventory_is_time_weighted():
    times = np.array([0, H, 4 * H, 5 * H], dtype=np.int64)
    pos = np.array([0, 2, -1, 7], dtype=np.int64)  # 0 for 1h, 2 for 3h, -1 for 1h; 7 at the end
    inv = inventory_stats(times, pos)
    assert inv.mean == pytest.approx((0 * 1 + 2 * 3 - 1 * 1) / 5)
    assert inv.abs_mean == pytest.approx((0 + 6 + 1) / 5)
    assert (inv.max, inv.min, inv.final, inv.span_us) == (7, -1, 7, 5 * H)


def test_interval_parsing():
    assert parse_interval("15m") == 15 * 60 * 10**6
    assert parse_interval("1d") == 24 * H
    assert parse_interval(30) == 30 * 10**6
    assert parse_interval("0.5h") == H // 2
    for bad in ("1 week", "", "-1h", "0s", True):
        with pytest.raises(ConfigError, match="interval"):
            parse_interval(bad)  # type: ignore[arg-type]


def test_write_report_files(tmp_path):
    r = _round_trip()
    report = write_report(r, tmp_path / "out", interval="1h")
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(report.to_dict()))
    assert summary["strategies"]["mm"]["net_pnl"] == "0.23"
    assert summary["final_hash"] == r.final_hash and summary["interval"] == "1h"
    with (out / "fills.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["side"] for row in rows] == ["buy", "buy", "sell"]
    assert rows[1]["price"] == "30020.00" and rows[1]["quantity"] == "0.01000000"
    assert rows[1]["total"] == "300.20" and rows[1]["fee"] == "0.09"
    assert [row["position"] for row in rows] == ["0.01000000", "0.02000000", "0.01000000"]
    assert rows[0]["time_utc"].endswith("Z") and rows[0]["time_us"] == str(T0 + H)
    for name in ("price", "inventory", "equity"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "0.23" in page


def test_table_and_json_for_several_strategies(tmp_path):
    fills = [
        FillRecord("a", 1, 1, 30000_00, XBT // 100, 300_00, 9, T0 + 1),
        FillRecord("b", 1, -1, 29000_00, XBT // 10, 2900_00, 87, T0 + 2),
    ]
    marks = _marks([(T0, 0, 0, 0, 30000_00), (T0, 1, 0, 0, 29000_00),
                    (T0 + 1, 0, XBT // 100, -9, 30000_00), (T0 + 2, 1, -XBT // 10, -87, 29000_00)])
    summary = {"strategies": {"a": {"market": "XBT:GBP", "orders_placed": 1},
                              "b": {"market": "XBT:EUR", "orders_placed": 4}}}
    r = _result(fills, marks, strategies=["a", "b"], summary=summary)
    report = build_report(r)
    a, b = report.strategies["a"], report.strategies["b"]
    assert a.market.name == "XBT:GBP" and b.market.name == "XBT:EUR"
    assert (a.fill_ratio, b.fill_ratio) == (1.0, 0.25)
    assert b.to_dict()["inventory"]["final"] == "-0.10000000"
    table = report.table()
    assert "net PnL" in table and "-0.87" in table and "-0.09" in table and "25.0%" in table
    assert table.splitlines()[0].split() == ["a", "b"]
    assert json.dumps(report.to_dict())  # JSON-able: no Fractions, no numpy scalars
    row = summary_row(report)
    assert row["b"]["net_pnl"] == pytest.approx(-0.87) and row["a"]["fills"] == 1
    paths = write_report(r, tmp_path, html_report=False)
    assert paths.strategies.keys() == {"a", "b"} and not (tmp_path / "report.html").exists()


def test_api_version_from_summary_and_explicit_scales():
    fills = [FillRecord("mm", 1, 1, 30000_00, 100, 300_00, 9, T0)]  # v1: 0.01 XBT = 100 units
    r = _result(fills, _marks([]), summary={"api_version": 1, "strategies": {"mm": {"market": "XBT:GBP"}}})
    assert build_report(r).strategies["mm"].to_dict()["volume_base"] == "0.0100"
    r2 = _result(fills, _marks([]), summary={"strategies": {}})
    assert build_report(r2, scales=V1).strategies["mm"].to_dict()["volume_base"] == "0.0100"
    assert build_report(r2).strategies["mm"].to_dict()["volume_base"] == "0.00000100"
    assert build_report(r2).strategies["mm"].orders_placed is None


# -- against the real replay ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from backtests.scenarios import load_scenario, make_data, run_scenario

    sc = load_scenario("mm_calm")
    data = make_data(sc, tmp_path_factory.mktemp("data") / "calm.jsonl")
    result, report = run_scenario(sc, data)
    return result, report


def test_report_agrees_with_the_runtime_and_its_marks(replayed):
    result, report = replayed
    m = report.strategies["mm"]
    core = result.summary["strategies"]["mm"]
    assert m.fills == core["trades"] == len(result.fills) > 50
    assert m.volume_base == core["volume_base"] and m.orders_placed == core["orders_placed"]
    d = m.to_dict()
    assert (d["realized_pnl"], d["fees"]) == (core["realized_pnl"], core["fees"])
    assert m.inventory.final == core["position_units"]
    # the replay's last equity mark is floor(realized + unrealized at its mid - fees): ours exactly
    last = result.marks[-1]
    assert m.mark_price == int(last["mid"]) and m.final_equity_mark == math.floor(m.net)
    # drawdown and inventory extremes come from the same marks
    eq = result.marks["equity"]
    assert m.max_drawdown == int(np.max(np.maximum.accumulate(np.maximum(eq, 0)) - eq))
    assert (m.inventory.max, m.inventory.min) == (int(result.marks["position"].max()), int(result.marks["position"].min()))
    assert m.periods == (int(last["time_us"]) - int(result.marks[0]["time_us"])) // (5 * 60 * 10**6)


def test_report_files_of_a_real_replay(replayed, tmp_path):
    result, _ = replayed
    report = write_report(result, tmp_path, interval="5m")
    with (tmp_path / "fills.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.fills)
    buys = sum(f.quantity for f in result.fills if f.side > 0)
    sells = sum(f.quantity for f in result.fills if f.side < 0)
    assert rows[-1]["position"] == report.strategies["mm"].base(buys - sells)
    assert sum(int(r["fee"].replace(".", "")) for r in rows) == report.strategies["mm"].fees


def test_a_strategy_that_never_traded(tmp_path):
    r = _result([], _marks([]), summary={"strategies": {"mm": {"market": "XBT:GBP", "orders_placed": 0}}})
    report = write_report(r, tmp_path)
    d = json.loads((tmp_path / "summary.json").read_text())["strategies"]["mm"]
    assert (d["net_pnl"], d["fills"], d["fill_ratio"], d["sharpe"], d["mark_price"]) == ("0.00", 0, None, None, None)
    assert (tmp_path / "fills.csv").read_text() == ",".join(
        ("strategy", "ref", "time_us", "time_utc", "side", "price", "quantity", "total", "fee", "position")) + "\n"
    assert "fill ratio" in report.table() and (tmp_path / "equity.png").exists()
