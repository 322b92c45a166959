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
    assert s["ended"] == "duration"
    assert s["fills"] > 0 and mm["trades"] > 0
    assert mm["errors"] == 0 and mm["state"] == "ACTIVE"
    # shutdown cancelled everything: no orphans on the exchange either
    assert s["open_orders_left"] == 0
    assert runner.exchange.open_orders(1) == []
    runner.exchange.check_invariants()


class _Waiter:
    """Stands in for a ReplyWaiter whose reply the test controls."""

    def __init__(self) -> None:
        self.done = False
        self.abandoned = False
        self.callback = None

    def on_done(self, callback) -> None:
        self.callback = callback

    def abandon(self) -> None:
        self.abandoned = True

    def result(self):
        from engine.protocol.messages import PlaceOrderReply

        return PlaceOrderReply(tag=1, id=7, time=1)


class _Core:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.outbox: list = []

    def on_place_lost(self, order, why: str) -> None:
        import trio

        self.events.append((trio.current_time(), order, why))

    def on_place_reply(self, order, reply) -> None:
        import trio

        self.events.append((trio.current_time(), order, f"reply {reply.id}"))


async def test_replies_are_applied_by_callback_and_time_out_at_their_exact_deadline(tmp_path, autojump_clock):
    """No task per order: the reply callback applies a reply when it comes; one task gives
    up on each order ``request_timeout`` after it was sent (UNKNOWN: reconciliation settles it)."""
    import trio

    from engine.runtime import Outgoing

    runner = Runner(load_run_config(str(_config(tmp_path, """
        markets: ["XBT:GBP"]
        strategies:
          - name: mm
            class: market_maker
            market: "XBT:GBP"
    """))), RunOptions(request_timeout=10.0, status=False, handle_signals=False))
    core = _Core()
    runner.core = core  # type: ignore[assignment]
    answered, silent, late = _Waiter(), _Waiter(), _Waiter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner._reply_timeouts)
        await trio.sleep(3.0)
        runner._expect_reply(Outgoing("place", "A", "mm"), answered)  # type: ignore[arg-type]
        await trio.sleep(1.0)
        runner._expect_reply(Outgoing("place", "B", "mm"), silent)  # type: ignore[arg-type]
        runner._expect_reply(Outgoing("place", "C", "mm"), late)  # type: ignore[arg-type]
        await trio.sleep(2.0)
        answered.done = True
        answered.callback()  # the reader got A's reply at t=6
        await trio.sleep(30.0)
        nursery.cancel_scope.cancel()
    assert core.events == [(6.0, "A", "reply 7"), (14.0, "B", "reply timed out"), (14.0, "C", "reply timed out")]
    assert (answered.abandoned, silent.abandoned, late.abandoned) == (False, True, True)


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text`` (only what the status uses: lines, CSI n F =
    cursor up n lines to column 0, CSI J = erase from the cursor to the end)."""
    import re

    rows: list[str] = []
    for part in re.split(r"(\x1b\[\d*F\x1b\[J)", text):
        m = re.fullmatch(r"\x1b\[(\d*)F\x1b\[J", part)
        if m:
            del rows[len(rows) - int(m.group(1) or 1):]
        else:
            rows.extend(part.splitlines())
    return rows


def test_log_records_go_above_the_live_status_not_under_its_redraw(capsys) -> None:
    import logging

    from engine.runner import StatusAwareHandler, StatusBlock

    block = StatusBlock()
    handler = StatusAwareHandler(block)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test.status")
    log.propagate = False
    log.addHandler(handler)
    try:
        block.draw(["[###   ] 1/10 s", "  mm ACTIVE"])
        log.error("strategy mm raised in on_timer\nTraceback (most recent call last):\nValueError: late")
        block.draw(["[####  ] 2/10 s", "  mm HALTED"])
        block.draw(["[##### ] 3/10 s", "  mm HALTED"])
    finally:
        log.removeHandler(handler)
    screen = _screen(capsys.readouterr().err)
    assert screen == [
        "ERROR strategy mm raised in on_timer", "Traceback (most recent call last):", "ValueError: late",
        "[##### ] 3/10 s", "  mm HALTED",
    ], screen


def test_cli_refuses_live_on_the_embedded_exchange_before_any_io(tmp_path, capsys) -> None:
    from engine import runner_cli

    cfg = _config(tmp_path, """
        strategies:
          - {name: mm, class: market_maker, market: "XBT:GBP"}
    """)
    assert runner_cli.main([str(cfg), "--live", "--duration", "1"]) == 2
    assert "--live is for a real endpoint" in capsys.readouterr().err
    assert runner_cli.main([str(cfg), "--duration", "0"]) == 2
    assert not (tmp_path / "state" / "summary.json").exists()
