"""The example scenarios in backtests/scenarios/ as golden tests.

Each one regenerates its recording from the seed, replays it through its config and compares
the report's exact figures and the replay's final hash (S2) with expected.json.  A failure
lists every figure that moved; if the change behind it is intended, regenerate the golden
files with ``python -m backtests.scenarios --update`` and commit them with the change.
"""

from __future__ import annotations

import hashlib

import pytest

from backtests.scenarios import DIR, compare, golden, load_scenario, make_data, names, run_scenario
from engine.errors import ConfigError


def test_scenarios_are_shipped_with_expected_figures():
    assert len(names()) >= 2
    for name in names():
        sc = load_scenario(name)
        assert sc.expected() is not None, f"{name}: no expected.json (python -m backtests.scenarios --update)"
        assert sc.spec.description.strip()


@pytest.mark.parametrize("name", names())
def test_scenario_matches_its_golden_summary(name, tmp_path):
    sc = load_scenario(name)
    data = make_data(sc, tmp_path / f"{name}.jsonl")
    result, report = run_scenario(sc, data)
    seen = golden(result, report)
    diffs = compare(sc.expected() or {}, seen)
    assert not diffs, (
        f"scenario {name} moved ({len(diffs)} figures):\n  " + "\n  ".join(diffs)
        + "\nIf intended: python -m backtests.scenarios --update, and commit expected.json"
    )
    # the figures are the report's own: the strategy traded, and the books balance
    for m in report.strategies.values():
        assert m.fills > 0 and m.orders_placed
        assert result.summary["replay"]["balance_view_mismatch"] == {}


def test_scenario_data_are_the_same_bytes_for_the_same_seed(tmp_path):
    sc = load_scenario("twap_volatile")
    a = make_data(sc, tmp_path / "a.jsonl").read_bytes()
    b = make_data(sc, tmp_path / "b.jsonl").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest() and len(a) > 100_000


def test_compare_names_every_moved_figure():
    want = {"final_hash": "a", "strategies": {"mm": {"fills": 3, "net_pnl": "1.00"}}}
    got = {"final_hash": "b", "strategies": {"mm": {"fills": 3, "net_pnl": "0.99", "fees": "0.01"}}}
    assert compare(want, got) == [
        "final_hash: expected 'a', got 'b'",
        "strategies.mm.fees: expected '<absent>', got '0.01'",
        "strategies.mm.net_pnl: expected '1.00', got '0.99'",
    ]
    assert compare(want, want) == []


def test_unknown_and_bad_scenarios_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no scenario 'nope': known scenarios are"):
        load_scenario("nope")
    d = tmp_path / "bad"
    d.mkdir()
    (d / "scenario.yaml").write_text(
        "description: x\nconfig: c.yaml\ndata: {exchange: e.yaml, seed: 1, hours: 0}\n")
    with pytest.raises(ConfigError, match=r"scenario.yaml:3: data.hours: must be > 0"):
        load_scenario(d)
    assert (DIR / "mm_calm" / "config.yaml").exists()
