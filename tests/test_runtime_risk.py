"""The risk gate, the kill switches and supervision, end to end in virtual time.

B8   a strategy emitting bad output gets denials with reasons, and nothing reaches the wire;
F16  a loser trips ``max_loss``: HALTED, its orders cancelled within 1 s, no new order after;
     the manual kill (``cftrade kill`` / the kill file / SIGUSR1) halts every strategy and
     cancels within about a second; HALTED survives a restart until ``--resume``;
F14  a strategy that raises halts alone: its orders are cancelled, the others keep trading.

Every "reached the wire" claim is checked on the exchange side (:class:`ExchangeTap`).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import trio

from engine import kill_cli
from engine.protocol.messages import CancelOrder
from engine.risk.model import RULES
from engine.runner import Runner
from tests.test_runtime_support import (
    USER,
    ExchangeTap,
    ledger,
    load_config,
    options,
    record_halts,
    run_with,
    strategy_of,
)


def _runner(cfg, duration: float, **kw) -> tuple[Runner, ExchangeTap]:
    holder: list[ExchangeTap] = []
    runner = Runner(cfg, options(duration=duration, drop_hook=lambda c, s: holder[0].hook(c, s), **kw))
    holder.append(ExchangeTap(runner))
    return runner, holder[0]


def _placed_by(runner: Runner, tap: ExchangeTap, name: str) -> list:
    return [s for s in tap.places() if strategy_of(runner, s.cmd.tonce) == name]


def _open_on_exchange(runner: Runner, name: str) -> list:
    return [o for o in runner.exchange.open_orders(USER) if o.tonce is not None and strategy_of(runner, o.tonce) == name]


MM = """
  - name: mm
    class: market_maker
    market: "XBT:GBP"
    params: {size: "0.01", half_spread: "2.00", min_requote_seconds: 2.0}
"""
CHURN = """
  - name: churn
    class: "tests.test_runtime_support:Churn"
    market: "XBT:GBP"
    risk: {max_loss: "0.01"}
"""
CRASH = """
  - name: crash
    class: "tests.test_runtime_support:Crasher"
    market: "XBT:GBP"
    params: {crash_after: 30}
"""
GRID = """
  - name: grid
    class: grid
    market: "XBT:GBP"
    params: {levels: 3, spacing: "3.00", size: "0.01"}
"""


async def test_b8_bad_output_is_denied_with_reasons_and_never_reaches_the_wire(tmp_path, autojump_clock, caplog):
    cfg = load_config("""
        strategies:
          - name: bad
            class: "tests.test_runtime_support:BadOutput"
            market: "XBT:GBP"
        risk:
          max_order_quantity: "0.5"
          max_order_notional: "50000.00"
          price_band_bps: 500
    """, tmp_path / "state")
    runner, tap = _runner(cfg, 30)
    result = await runner.run()
    assert result.exit_code == 0 and result.summary["errors"] == []

    bad = runner.core.slots["bad"].strategy
    assert bad.done and len(bad.refs) == 8
    assert bad.refs == [0] * 8, "a denied intent must not get an order reference"
    # Every intent came back through on_risk_denied, in order, with a rule and a reason.
    assert len(bad.denials) == 8
    assert all(d.intent is i for d, i in zip(bad.denials, bad.intents, strict=True))
    for d in bad.denials:
        assert d.rule in RULES and d.reason.startswith(d.rule), d
    rules = [d.rule for d in bad.denials]
    assert rules[0] == rules[1] == rules[5] == rules[7] == "invalid_intent", rules  # NaN, <0, float, bool
    assert rules[3] == rules[4] == "price_band", rules  # 10x and 1/10 of the market
    assert rules[6] == "max_order_quantity", rules
    assert "nan" in bad.denials[0].reason.lower()
    # Nothing reached the wire: the exchange never saw an order command of user 1.
    assert tap.places() == [] and tap.cancels() == []
    s = result.summary["strategies"]["bad"]
    assert s["denials"] == 8 and s["errors"] == 0 and s["state"] == "ACTIVE"  # a denial is not a crash
    # Counted by rule in the summary, and the first of each rule logged with its reason (a
    # strategy without on_risk_denied would otherwise never say why nothing trades).
    assert s["denials_by_rule"] == {r: rules.count(r) for r in set(rules)}
    logged = [r.getMessage() for r in caplog.records if "an intent was denied" in r.getMessage()]
    assert len(logged) == len(set(rules)), logged
    for rule in set(rules):
        first = next(d.reason for d in bad.denials if d.rule == rule)
        assert sum(f"({rule}): {first}" in m for m in logged) == 1, (rule, logged)


async def test_f16_max_loss_halts_cancels_within_1s_and_nothing_more_is_placed(tmp_path, autojump_clock):
    cfg = load_config(f"strategies:{CHURN}", tmp_path / "state")
    runner, tap = _runner(cfg, 300)
    seen: dict[str, object] = {}

    async def during(r: Runner) -> None:
        halts = record_halts(r)
        seen["halts"] = halts
        t_halt, _, _ = await halts.wait()
        await trio.sleep_until(t_halt + 1.0)
        seen["open_after_1s"] = _open_on_exchange(r, "churn")
        seen["tracked_after_1s"] = r.core.tracker.open_orders(strategy="churn")

    result = await run_with(runner, during)
    assert result.exit_code == 0, result.summary

    (t_halt, name, reason), *others = seen["halts"]
    assert name == "churn" and reason.startswith("max_loss"), reason
    assert [h[1] for h in others] == [], others
    assert runner.core.risk.state("churn").value == "HALTED"
    # Its resting bid was cancelled on the exchange within a second of the halt.
    assert seen["open_after_1s"] == [] and seen["tracked_after_1s"] == []
    rest = runner.core.tracker.get(runner.core.slots["churn"].strategy.rest)
    assert rest is not None and rest.state.name == "CANCELLED"
    cancel_times = [c.t for c in tap.cancels() if c.cmd.id == rest.id]
    assert cancel_times and t_halt <= cancel_times[0] <= t_halt + 1.0
    # Nothing reached the exchange after the halt.
    churn_places = _placed_by(runner, tap, "churn")
    assert len(churn_places) >= 2 and all(s.t <= t_halt for s in churn_places)
    assert len(churn_places) == len(tap.places())
    # HALTED was persisted at once.
    doc = json.loads((tmp_path / "state" / "risk.json").read_text())
    assert doc["strategies"]["churn"]["state"] == "HALTED"
    assert ledger(runner, tap).clean


async def test_reduce_at_loss_puts_the_strategy_in_reducing_before_max_loss(tmp_path, autojump_clock):
    # The soft limit: REDUCING (persisted), its resting bid cancelled, and from then on its
    # buys (which only grow its long position) are denied by rule "reducing"; max_loss,
    # far beyond, is never reached because it can no longer add to the loss.
    churn = """
  - name: churn
    class: "tests.test_runtime_support:Churn"
    market: "XBT:GBP"
    risk: {reduce_at_loss: "0.01", max_loss: "5.00"}
"""
    cfg = load_config(f"strategies:{churn}", tmp_path / "state")
    runner, tap = _runner(cfg, 300)
    result = await run_with(runner)
    assert result.exit_code == 0, result.summary
    s = result.summary["strategies"]["churn"]
    assert s["state"] == "REDUCING", s
    assert runner.core.risk.reason("churn").startswith("reduce_at_loss: loss ")
    assert s["denials_by_rule"].get("reducing", 0) > 10, s  # every later buy: 5 s timer, 300 s
    doc = json.loads((tmp_path / "state" / "risk.json").read_text())
    assert doc["strategies"]["churn"]["state"] == "REDUCING"
    rest = runner.core.tracker.get(runner.core.slots["churn"].strategy.rest)
    assert rest is not None and rest.state.name == "CANCELLED"
    # What reached the exchange after REDUCING began: nothing (the strategy only buys).
    t_reduce = min(c.t for c in tap.cancels() if c.cmd.id == rest.id)
    assert all(p.t <= t_reduce for p in _placed_by(runner, tap, "churn"))
    assert ledger(runner, tap).clean


def _kill_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"strategies:{MM}{GRID}\nrun:\n  seed: 5\n  state_dir: \"{tmp_path / 'state'}\"\n")
    return path


async def test_f16_manual_kill_by_cli_halts_everything_cancels_and_persists_until_resume(
    tmp_path, autojump_clock, capsys
):
    from engine.config import load_run_config

    path = _kill_config(tmp_path)
    cfg = load_run_config(str(path))
    runner, tap = _runner(cfg, 120)
    seen: dict[str, object] = {}

    async def during(r: Runner) -> None:
        halts = record_halts(r)
        await trio.sleep(60)
        seen["open_before"] = len(r.exchange.open_orders(USER))
        t_kill = trio.current_time()
        assert kill_cli.main([str(path), "--reason", "desk says stop"]) == 0
        seen["t_kill"] = t_kill
        await trio.sleep(1.0)
        seen["halts"] = list(halts)
        seen["open_after_1s"] = r.exchange.open_orders(USER)
        seen["states"] = {n: r.core.risk.state(n).value for n in r.core.slots}

    result = await run_with(runner, during)
    assert result.exit_code == 0 and result.summary["errors"] == []
    assert seen["open_before"] >= 2, "the strategies should have been quoting before the kill"
    assert (tmp_path / "state" / "KILL").exists()
    assert "HALTED" in capsys.readouterr().out
    ((t_halt, who, _),) = seen["halts"]
    assert who is None and seen["t_kill"] <= t_halt <= seen["t_kill"] + 0.5  # the 0.5 s kill-file poll
    assert seen["states"] == {"mm": "HALTED", "grid": "HALTED"}
    assert seen["open_after_1s"] == []
    assert all(s.t <= t_halt for s in tap.places()), "an order reached the exchange after the kill"
    assert ledger(runner, tap).clean

    # Restart with the same state dir: everything starts HALTED and nothing is placed.
    runner2, tap2 = _runner(load_run_config(str(path)), 60)
    result2 = await runner2.run()
    assert result2.exit_code == 0
    assert {n: s["state"] for n, s in result2.summary["strategies"].items()} == {"mm": "HALTED", "grid": "HALTED"}
    assert tap2.places() == []
    # The operator's words are in the kill file; risk.json holds the runner's own record of it.
    assert runner2.core.risk.statistics().kill_reason is not None
    assert json.loads((tmp_path / "state" / "KILL").read_text())["reason"] == "desk says stop"

    # A single resume is refused while the global kill is on; --resume --all lifts it.
    capsys.readouterr()
    assert kill_cli.main([str(path), "--resume", "mm"]) == 1
    assert "refused" in capsys.readouterr().err
    assert kill_cli.main([str(path), "--resume", "--all"]) == 0
    assert not (tmp_path / "state" / "KILL").exists()
    runner3, tap3 = _runner(load_run_config(str(path)), 60)
    result3 = await runner3.run()
    assert {n: s["state"] for n, s in result3.summary["strategies"].items()} == {"mm": "ACTIVE", "grid": "ACTIVE"}
    assert tap3.places(), "resumed strategies trade again"


async def test_f16_manual_kill_by_signal_sigusr1(tmp_path, autojump_clock):
    cfg = load_config(f"strategies:{MM}{GRID}", tmp_path / "state")
    runner, tap = _runner(cfg, 60, handle_signals=True)
    seen: dict[str, object] = {}

    async def during(r: Runner) -> None:
        halts = record_halts(r)
        await trio.sleep(20)
        os.kill(os.getpid(), signal.SIGUSR1)
        with trio.fail_after(1.0):
            await halts.wait()
        await trio.sleep(1.0)
        seen["halts"] = list(halts)
        seen["open"] = r.exchange.open_orders(USER)

    result = await run_with(runner, during)
    assert result.exit_code == 0
    ((t_halt, who, reason),) = seen["halts"]
    assert who is None and "SIGUSR1" in reason
    assert seen["open"] == []
    assert all(s.t <= t_halt for s in tap.places())
    doc = json.loads((tmp_path / "state" / "risk.json").read_text())
    assert doc["kill"]["state"] == "HALTED"


async def test_f14_when_every_strategy_has_crashed_the_run_ends_as_failed(tmp_path, autojump_clock):
    # Nothing is left to trade: the run stops (it would idle out its duration, or forever
    # without one) and says so: exit 1, ended "failed", the reason in errors.
    cfg = load_config(f"strategies:{CRASH}", tmp_path / "state")
    runner, tap = _runner(cfg, 3600)
    t0 = trio.current_time()
    result = await run_with(runner)
    s = result.summary
    assert result.exit_code == 1 and s["ended"] == "failed", s
    assert s["errors"] == ["every strategy raised and is halted (see each strategy's last_error)"]
    assert "ZeroDivisionError" in s["strategies"]["crash"]["last_error"]
    assert trio.current_time() - t0 < 120  # the crash comes after 30 s; it did not wait an hour
    assert s["open_orders_left"] == 0 and runner.exchange.open_orders(1) == []


async def test_a_hook_returning_a_ref_halts_with_a_clear_reason(tmp_path, autojump_clock):
    strategy = """
  - name: ret
    class: "tests.test_runtime_support:ReturnsRef"
    market: "XBT:GBP"
"""
    cfg = load_config(f"strategies:{strategy}{MM}", tmp_path / "state")
    runner, tap = _runner(cfg, 60)
    result = await run_with(runner)
    s = result.summary["strategies"]
    assert s["ret"]["state"] == "HALTED" and s["ret"]["errors"] == 1
    assert s["ret"]["last_error"].startswith("TypeError: on_book returned ") and "do not return their refs" in s["ret"]["last_error"]
    assert s["mm"]["state"] == "ACTIVE" and result.exit_code == 0
    assert runner.exchange.open_orders(1) == []  # the placed bid was cancelled with the halt, like any crash


async def test_f14_a_crashing_strategy_halts_alone_and_the_others_keep_trading(tmp_path, autojump_clock):
    cfg = load_config(f"strategies:{CRASH}{MM}{GRID}", tmp_path / "state")
    runner, tap = _runner(cfg, 400)
    seen: dict[str, object] = {}

    async def during(r: Runner) -> None:
        halts = record_halts(r)
        t, _, _ = await halts.wait()
        seen["halts"] = halts
        seen["fills_at_crash"] = {n: sum(1 for s, _ in r.core.fills if s == n) for n in ("mm", "grid")}
        seen["places_at_crash"] = len(tap.places())
        await trio.sleep_until(t + 2.0)
        seen["crash_open_after_2s"] = _open_on_exchange(r, "crash")

    result = await run_with(runner, during)
    assert result.exit_code == 0, result.summary
    ((t_crash, name, reason),) = seen["halts"]
    assert name == "crash" and "ZeroDivisionError" in reason and "on_book" in reason
    s = result.summary["strategies"]
    assert s["crash"]["state"] == "HALTED" and s["crash"]["errors"] == 1
    assert s["mm"]["state"] == s["grid"]["state"] == "ACTIVE"
    assert s["mm"]["errors"] == s["grid"]["errors"] == 0
    # The crasher's bid was on the book and was cancelled within 2 s (F14).
    crash_places = _placed_by(runner, tap, "crash")
    assert len(crash_places) == 1 and seen["crash_open_after_2s"] == []
    assert [c for c in tap.cancels() if isinstance(c.cmd, CancelOrder) and t_crash <= c.t <= t_crash + 2.0]
    # The others kept trading after the crash: more orders, more fills.
    assert len(tap.places()) > seen["places_at_crash"]
    fills_end = {n: sum(1 for st, _ in runner.core.fills if st == n) for n in ("mm", "grid")}
    assert sum(fills_end.values()) > sum(seen["fills_at_crash"].values()), (seen["fills_at_crash"], fills_end)
    assert result.summary["sessions"] == 1  # the connection was never touched
    assert ledger(runner, tap).clean
