"""``on_book`` conflation (StrategyConfig.book_interval) in the live runner and the replay.

The promise: at most one ``on_book`` per interval, and no change of the touch is lost: every
change is followed by a call within one interval, which sees the book as it is then.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine.runner import Runner
from engine.strategy import Context, Strategy, StrategyConfig
from tests.test_runtime_support import load_config, options

INTERVAL_US = 2_000_000


class Watcher(Strategy):
    """Records when ``on_book`` runs and the touch it sees; never trades."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        pass

    def on_start(self, ctx: Context) -> None:
        self.calls: list[tuple[int, Any, Any]] = []

    def on_book(self, ctx: Context) -> None:
        self.calls.append((ctx.now_us, ctx.book.best_bid, ctx.book.best_ask))


CONFIG = """
markets: ["XBT:GBP"]
strategies:
  - name: w
    class: "tests.test_runtime_conflation:Watcher"
    market: "XBT:GBP"
    params: {book_interval: %s}
run: {duration: 120, seed: 3}
"""


async def _run(tmp_path: Any, interval: str) -> tuple[list[int], list[int]]:
    """Run the Watcher for two virtual minutes; return its on_book times and the times the
    runtime saw the touch change (a spy on the core's change hook, installed at start)."""
    cfg = load_config(CONFIG % interval, tmp_path / f"state-{interval}")
    runner = Runner(cfg, options(duration=120))
    changes: list[int] = []

    async def spy() -> None:
        await runner._started.wait()
        core = runner.core
        assert core is not None
        inner = core._book_changed

        def wrapped(market: Any) -> None:
            changes.append(core.clock_us())
            inner(market)

        core._book_changed = wrapped  # type: ignore[method-assign]

    async with trio.open_nursery() as n:
        n.start_soon(spy)
        result = await runner.run()
    assert result.exit_code == 0, result.summary
    assert runner.core is not None
    calls = runner.core.slots["w"].strategy.calls  # type: ignore[attr-defined]
    return [t for t, _, _ in calls], changes


async def test_conflated_on_book_runs_at_most_once_per_interval(tmp_path, autojump_clock):
    times, changes = await _run(tmp_path, "2.0")
    assert len(times) > 5, "the market moved: on_book must have run"
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= INTERVAL_US, gaps
    assert len(times) < len(changes), "it conflated: fewer calls than changes"


async def test_every_touch_change_is_followed_by_a_call_within_the_interval(tmp_path, autojump_clock):
    times, changes = await _run(tmp_path, "2.0")
    assert changes, "the touch never changed"
    end = times[-1]
    for c in changes:
        if c > end:  # the run stopped inside the last interval
            assert c - end < INTERVAL_US
            continue
        after = [t for t in times if t >= c]
        assert after and after[0] - c <= INTERVAL_US, (c, after[:1])


async def test_without_an_interval_every_change_calls_on_book(tmp_path, autojump_clock):
    times, changes = await _run(tmp_path, "null")
    assert len(times) > 5 and len(times) >= len(changes)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) < INTERVAL_US


def test_a_negative_interval_is_a_config_error(tmp_path):
    from engine.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG % "-1")
    from engine.config import load_run_config

    with pytest.raises(ConfigError, match="book_interval"):
        load_run_config(str(path))
