"""The runtime end to end: shipped strategies on the local exchange in virtual time (issue 5)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from engine.config import load_run_config
from engine.runner import Runner, RunOptions

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(body) + f'\nrun:\n  seed: 3\n  state_dir: "{tmp_path / "state"}"\n')
    return p


async def _run(path: Path, duration: float) -> Runner:
    runner = Runner(load_run_config(str(path)),
                    RunOptions(duration=duration, status=False, handle_signals=False, transport="memory",
                               watchdog_seconds=0))
    result = await runner.run()
    assert result.exit_code == 0, result.summary
    return runner


async def test_market_maker_trades_in_virtual_time(tmp_path, autojump_clock):
    cfg = _config(tmp_path, """
        markets: ["XBT:GBP"]
        strategies:
          - name: mm
            class: market_maker
            market: "XBT:GBP"
            params: {size: "0.01", half_spread: "2.00", min_requote_seconds: 2.0}
    """)
    runner = await _run(cfg, 600)
    s = runner.summary()
    mm = s["strategies"]["mm"]
    assert s["fills"] > 0 and mm["trades"] > 0
    assert mm["errors"] == 0 and mm["state"] == "ACTIVE"
    # shutdown cancelled everything: no orphans on the exchange either
    assert s["open_orders_left"] == 0
    assert runner.exchange.open_orders(1) == []
    runner.exchange.check_invariants()
