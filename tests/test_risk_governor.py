"""Risk governor: kill switch on equity marks, manual controls, HALTED persistence, kill file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from engine.errors import ConfigError, RiskDenied
from engine.limits import Limit
from engine.risk import MarketView, RiskGovernor, RiskLimits, TradingState, UserRiskLimits
from engine.risk.statefile import STATE_FORMAT
from engine.scale import XBT_GBP
from engine.strategy import Cancel, CancelAll, PlaceLimit, Side

ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
P = 5_000_000
BOOK = MarketView(best_bid=P - 100, best_ask=P + 100, last=P)
ORDER = PlaceLimit(Side.BUY, P, 1)
USER = UserRiskLimits(orders=Limit(10**6, 1000.0))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(path=None, *names: str, clock=None, **kw) -> RiskGovernor:
    g = RiskGovernor(USER, state_path=path, now=clock or Clock(), wall_clock=lambda: 1_700_000_000.0, **kw)
    for n in names:
        g.add_strategy(n, RiskLimits(max_loss=10_000, max_drawdown=5_000), market=XBT_GBP)
    return g


# -- kill switch on equity marks (F16) ------------------------------------------------------------


def test_F16_kill_switch_trips_on_max_loss():
    g = make(None, "a", "b")
    g.on_equity("a", 100_000)  # start: £1000.00
    assert g.on_equity("a", 104_000) == []  # peak 1040: drawdown limit is 50.00, loss limit 100.00
    assert g.on_equity("a", 100_000) == []  # drawdown exactly 40.00, loss 0
    g.resume("a")  # fresh baseline: the next mark is the start again
    assert g.on_equity("a", 100_000) == []
    assert g.on_equity("a", 95_000) == []  # loss 50.00 = drawdown limit exactly: allowed
    g2 = make(None, "x")
    g2.add_strategy("lossy", RiskLimits(max_loss=10_000), market=XBT_GBP)
    g2.on_equity("lossy", 100_000)
    assert g2.on_equity("lossy", 90_000) == []  # loss exactly 100.00
    assert g2.state("lossy") is ACTIVE
    assert g2.on_equity("lossy", 89_999) == [
        "max_loss: loss 100.01 GBP > limit 100.00 GBP (equity 899.99 GBP, start 1000.00 GBP)"
    ]
    assert g2.state("lossy") is HALTED and g2.state("x") is ACTIVE
    assert g2.needs_cancel("lossy") and not g2.needs_cancel("x")
    assert g2.reason("lossy").startswith("max_loss: loss 100.01 GBP")
    assert g2.check("lossy", ORDER, BOOK, XBT_GBP).rule == "halted"
    assert g2.check("lossy", CancelAll(), BOOK, XBT_GBP) is None
    assert g2.check("x", ORDER, BOOK, XBT_GBP) is None  # the others go on (F14)
    assert g2.on_equity("lossy", 50_000) == []  # already HALTED: reported once
    g2.cancel_done("lossy")
    assert not g2.needs_cancel("lossy")


def test_F16_kill_switch_trips_on_drawdown_from_peak():
    g = RiskGovernor(USER, state_path=None, now=Clock())
    g.add_strategy("s", RiskLimits(max_drawdown=10_000))  # no market: raw units in reasons
    marks = [100_000, 120_000, 115_000, 130_000, 120_001, 120_000]
    assert [g.on_equity("s", m) for m in marks] == [[]] * 6  # drawdown from 130_000 reaches 10_000
    assert g.state("s") is ACTIVE
    assert g.on_equity("s", 119_999) == [
        "max_drawdown: drawdown 10001 counter units > limit 10000 counter units "
        "(equity 119999 counter units, peak 130000 counter units)"
    ]
    assert g.state("s") is HALTED
    st = g.statistics().strategies["s"]
    assert (st.start_equity, st.peak_equity, st.last_equity) == (100_000, 130_000, 119_999)


def test_both_kill_reasons_reported_together():
    g = make(None, "s")
    g.on_equity("s", 100_000)
    reasons = g.on_equity("s", 80_000)
    assert [r.split(":")[0] for r in reasons] == ["max_loss", "max_drawdown"]
    assert g.reason("s") == "; ".join(reasons)


def test_bad_equity_mark_fails_closed():
    g = make(None, "s")
    assert g.on_equity("s", float("nan")) == [  # type: ignore[arg-type]
        "bad_equity: equity mark must be an int in counter units, got float nan"
    ]
    assert g.state("s") is HALTED


# -- manual controls ------------------------------------------------------------------------------


def test_halt_reduce_resume_one_strategy():
    g = make(None, "a", "b")
    g.reduce("a", "flatten before news")
    assert (g.state("a"), g.state("b")) == (REDUCING, ACTIVE)
    g.halt("a", "operator")
    g.halt("a", "second reason is ignored")
    assert g.state("a") is HALTED and g.reason("a") == "operator"
    g.resume("a")
    assert g.state("a") is ACTIVE and g.reason("a") is None and not g.needs_cancel("a")
    with pytest.raises(KeyError, match="unknown strategy 'nope' \\(known: a, b\\)"):
        g.halt("nope", "typo")


def test_global_kill_halts_everyone_including_later_strategies():
    g = make(None, "a", "b")
    g.halt(None, "cftrade kill")
    assert g.state("a") is HALTED and g.state("b") is HALTED
    assert g.needs_cancel("a") and g.needs_cancel("b")
    g.add_strategy("late", RiskLimits())
    assert g.state("late") is HALTED and g.needs_cancel("late")
    assert g.check("late", ORDER, BOOK, XBT_GBP).reason == (
        "halted: trading is HALTED; only cancels are allowed, not PlaceLimit"
    )
    with pytest.raises(RiskDenied, match=r"resume a refused: the global kill is on \(cftrade kill\)"):
        g.resume("a")
    with pytest.raises(RiskDenied, match="reduce a refused"):
        g.reduce("a", "x")
    assert g.statistics().kill_reason == "cftrade kill"
    g.resume(None)
    assert [g.state(n) for n in ("a", "b", "late")] == [ACTIVE] * 3
    assert g.statistics().kill_reason is None


def test_unknown_strategy_is_denied_not_raised():
    g = make(None, "a")
    d = g.check("ghost", ORDER, BOOK, XBT_GBP)
    assert d is not None and d.rule == "unknown_strategy"
    assert d.reason == "unknown_strategy: 'ghost' is not registered (known: a)"
    with pytest.raises(KeyError):
        g.state("ghost")
    with pytest.raises(ValueError, match="already registered"):
        g.add_strategy("a", RiskLimits())


def test_internal_error_fails_closed():
    g = make(None, "a")
    weird = MarketView(best_bid=P - 100, best_ask=P + 100, position="lots")  # type: ignore[arg-type]
    d = g.check("a", ORDER, weird, XBT_GBP)
    assert d is not None and d.rule == "internal_error" and d.reason.startswith("internal_error: TypeError")


def test_statistics_count_denials_by_rule():
    g = RiskGovernor(USER, state_path=None, now=Clock())
    g.add_strategy("s", RiskLimits(max_order_quantity=10))
    g.check("s", PlaceLimit(Side.BUY, P, 10), BOOK, XBT_GBP)
    g.check("s", PlaceLimit(Side.BUY, P, 11), BOOK, XBT_GBP)
    g.check("s", PlaceLimit(Side.BUY, P, 12), BOOK, XBT_GBP)
    g.check("s", PlaceLimit(Side.BUY, P, -1), BOOK, XBT_GBP)
    st = g.statistics().strategies["s"]
    assert (st.allowed, st.denied) == (1, 3)
    assert dict(st.denials) == {"max_order_quantity": 2, "invalid_intent": 1}
    assert st.state is ACTIVE and st.reason is None
    with pytest.raises(TypeError):
        st.denials["x"] = 1  # type: ignore[index]


# -- persistence (F16: HALTED survives a restart) -------------------------------------------------


def test_F16_halted_is_persisted_and_reloaded(tmp_path):
    path = tmp_path / "risk.json"
    g = make(path, "a", "b", "c")
    g.on_equity("a", 100_000)
    g.on_equity("a", 80_000)  # trips
    g.reduce("b", "manual")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == STATE_FORMAT and doc["kill"] is None
    assert doc["strategies"]["a"]["state"] == "HALTED"
    assert doc["strategies"]["b"] == {"state": "REDUCING", "reason": "manual", "at": 1_700_000_000.0}
    assert [p.name for p in tmp_path.iterdir()] == ["risk.json"]  # no temp files left behind

    again = make(path, "a", "b", "c")  # restart
    assert [again.state(n) for n in "abc"] == [HALTED, REDUCING, ACTIVE]
    assert again.reason("a").startswith("max_loss:")
    assert again.needs_cancel("a")  # its orders may have outlived the old process
    assert again.check("a", ORDER, BOOK, XBT_GBP).rule == "halted"
    again.resume("a")
    assert make(path, "a", "b").state("a") is ACTIVE  # resume is persisted too


def test_F16_global_kill_is_persisted(tmp_path):
    path = tmp_path / "risk.json"
    make(path, "a").halt(None, "SIGUSR1")
    g = make(path)
    g.add_strategy("new", RiskLimits())
    assert g.state("new") is HALTED and g.reason("new") == "SIGUSR1"
    g.resume(None)
    assert make(path, "new").state("new") is ACTIVE


@pytest.mark.parametrize(
    ("content", "mode", "error"),
    [
        ("{not json", 0o600, "not valid JSON"),
        ('{"format": "other"}', 0o600, "not a cftrade-risk/1 file"),
        ('{"format": "cftrade-risk/1", "kill": null, "strategies": {"a": {"state": "ACTIVE", "reason": "", "at": 0}}}', 0o600, "must be HALTED or REDUCING"),
        ('{"format": "cftrade-risk/1", "kill": null, "strategies": {}, "extra": 1}', 0o600, "expected keys"),
        ('{"format": "cftrade-risk/1", "kill": {"state": "HALTED", "reason": "x", "at": NaN}, "strategies": {}}', 0o600, "NaN is not allowed"),
        ('{"format": "cftrade-risk/1", "kill": null, "strategies": {}}', 0o644, "mode 0644 is too open"),
    ],
)
def test_damaged_state_file_refuses_to_start(tmp_path, content, mode, error):
    path = tmp_path / "risk.json"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=error):
        make(path)


def test_symlinked_state_file_is_refused(tmp_path):
    real = tmp_path / "real.json"
    real.write_text('{"format": "cftrade-risk/1", "kill": null, "strategies": {}}')
    real.chmod(0o600)
    (tmp_path / "risk.json").symlink_to(real)
    with pytest.raises(ConfigError, match="symlinks are refused"):
        make(tmp_path / "risk.json")


def test_halt_holds_in_memory_when_the_state_file_cannot_be_written(tmp_path):
    g = make(tmp_path / "missing-dir" / "risk.json", "a")
    g.halt("a", "operator")
    assert g.state("a") is HALTED
    assert "missing-dir" in g.statistics().persist_error
    with pytest.raises(OSError):
        g.resume("a")  # resume must be durable or not happen
    assert g.state("a") is HALTED


# -- kill file ------------------------------------------------------------------------------------


def test_kill_file_halts_everything_within_the_poll_interval(tmp_path):
    kill = tmp_path / "KILL"
    clock = Clock()
    g = make(tmp_path / "risk.json", "a", "b", clock=clock, kill_file=kill, kill_file_interval=0.5)
    assert g.check("a", ORDER, BOOK, XBT_GBP) is None  # polled at t=0: no file
    assert g.poll_kill_file() is False
    kill.touch()
    clock.t = 0.25
    assert g.check("a", ORDER, BOOK, XBT_GBP) is None  # next poll is due at t=0.5
    clock.t = 0.5
    d = g.check("a", ORDER, BOOK, XBT_GBP)
    assert d is not None and d.rule == "halted"
    assert g.state("b") is HALTED and g.reason("b") == f"kill file {kill} exists"
    assert g.check("b", Cancel(1), BOOK, XBT_GBP) is None
    with pytest.raises(RiskDenied, match="kill file .* exists; remove it first"):
        g.resume(None)
    kill.unlink()
    assert g.state("a") is HALTED  # removing the file does not resume: a human does
    assert make(tmp_path / "risk.json", "a").state("a") is HALTED  # and it survives a restart
    g.resume(None)
    assert g.state("a") is ACTIVE


def test_kill_file_present_at_start(tmp_path):
    kill = tmp_path / "KILL"
    kill.touch()
    g = make(None, "a", kill_file=kill)
    assert g.state("a") is HALTED
    assert g.poll_kill_file() is True


def test_kill_file_reason_is_the_one_cftrade_kill_wrote(tmp_path):
    # cftrade kill writes {"reason": ...} into the file; the halt records that reason
    # (a bare file keeps "exists"; a symlink is not followed; junk is ignored).
    import json
    import os

    kill = tmp_path / "KILL"
    kill.write_text(json.dumps({"reason": "desk  says\\nstop", "at": 1.0, "by": "cftrade kill"}))
    g = make(tmp_path / "risk.json", "a", kill_file=kill)
    assert g.poll_kill_file() is True
    assert g.reason("a") == f"kill file {kill}: desk says\\nstop"
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"reason": "the passphrase"}))
    for body in (None, "not json", json.dumps(["reason"])):
        other = tmp_path / f"k{body is None}{len(body or '')}"
        if body is None:
            os.symlink(secret, other)
        else:
            other.write_text(body)
        assert RiskGovernor._kill_file_reason(other) == f"kill file {other} exists"


def test_reduce_at_loss_is_a_soft_limit_below_max_loss(tmp_path):
    g = make(tmp_path / "risk.json", "x")
    g.add_strategy("r", RiskLimits(reduce_at_loss=2_000, max_loss=10_000), market=XBT_GBP)
    g.on_equity("r", 100_000)
    assert g.on_equity("r", 98_000) == [] and g.state("r") is ACTIVE  # loss exactly 20.00: allowed
    assert g.on_equity("r", 97_999) == [
        "reduce_at_loss: loss 20.01 GBP > limit 20.00 GBP (equity 979.99 GBP, start 1000.00 GBP)"
    ]
    assert g.state("r") is TradingState.REDUCING and g.needs_cancel("r") and g.state("x") is ACTIVE
    g.cancel_done("r")
    assert g.on_equity("r", 95_000) == [] and not g.needs_cancel("r")  # entered once, not per mark
    assert make(tmp_path / "risk.json", "r").state("r") is TradingState.REDUCING  # persisted
    assert g.on_equity("r", 89_999)[0].startswith("max_loss: loss 100.01 GBP")
    assert g.state("r") is HALTED  # the hard limit still trips from REDUCING
    # one step past both at once: HALTED, not REDUCING
    g.add_strategy("j", RiskLimits(reduce_at_loss=2_000, max_loss=10_000), market=XBT_GBP)
    g.on_equity("j", 100_000)
    assert [r.split(":")[0] for r in g.on_equity("j", 50_000)] == ["max_loss"] and g.state("j") is HALTED
