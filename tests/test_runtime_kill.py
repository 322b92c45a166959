"""``cftrade kill`` as a command: what it writes, what it refuses, and how a restart reads it.

The end-to-end half (a running runner halting and cancelling within a second, HALTED across
a restart) is in test_runtime_risk.py; here each case is one command against a state dir.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from engine import cli, kill_cli
from engine.risk import (
    RiskGovernor,
    RiskLimits,
    StateRecord,
    TradingState,
    load_states,
    save_states,
)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        'strategies:\n  - {name: mm, class: market_maker, market: "XBT:GBP"}\n'
        '  - {name: grid, class: grid, market: "XBT:GBP"}\n'
        'run:\n  state_dir: "state/mm"\n'  # relative: to the config file's directory
    )
    return path


def _governor(state_dir: Path) -> RiskGovernor:
    gov = RiskGovernor(state_path=state_dir / "risk.json", kill_file=state_dir / "KILL", now=lambda: 0.0)
    for name in ("mm", "grid"):
        gov.add_strategy(name, RiskLimits())
    return gov


def test_kill_by_config_before_any_run_starts_everything_halted_with_the_reason(tmp_path, capsys):
    path = _config(tmp_path)
    assert cli.main(["kill", str(path), "--reason", "fat finger\non the desk"]) == 0
    state = tmp_path / "state" / "mm"
    out = capsys.readouterr().out
    assert "HALTED" in out and str(state) in out
    kill_file = state / "KILL"
    assert stat.S_IMODE(kill_file.stat().st_mode) == 0o600
    body = json.loads(kill_file.read_text())
    assert body["reason"] == "fat finger on the desk" and "cftrade kill" in body["by"]
    kill, records = load_states(state / "risk.json")
    assert kill is not None and kill.state is TradingState.HALTED and kill.reason == "fat finger on the desk"
    assert records == {}
    # What a runner's risk governor sees when it starts on this state dir.
    gov = _governor(state)
    assert gov.state("mm") is TradingState.HALTED and gov.state("grid") is TradingState.HALTED
    assert gov.reason("mm") == "fat finger on the desk"
    assert gov.needs_cancel("mm")  # orders that outlived the previous process get cancelled


def test_kill_file_alone_also_halts_a_restart(tmp_path):
    # If risk.json is lost (or the operator only touched KILL), the kill file still holds.
    state = tmp_path / "s"
    state.mkdir()
    assert kill_cli.main(["--state-dir", str(state)]) == 0
    (state / "risk.json").unlink()
    assert _governor(state).state("mm") is TradingState.HALTED


def test_killing_twice_keeps_the_first_reason(tmp_path, capsys):
    state = tmp_path / "s"
    state.mkdir()
    assert kill_cli.main(["--state-dir", str(state), "--reason", "first"]) == 0
    assert kill_cli.main(["--state-dir", str(state), "--reason", "second"]) == 0
    assert "already there" in capsys.readouterr().out
    assert json.loads((state / "KILL").read_text())["reason"] == "first"
    assert load_states(state / "risk.json")[0].reason == "first"


def test_status_prints_the_states_as_json(tmp_path, capsys):
    state = tmp_path / "s"
    state.mkdir()
    save_states(state / "risk.json", None, {"mm": StateRecord(TradingState.HALTED, "max_loss: ...", 1.0)})
    assert kill_cli.main(["--state-dir", str(state), "--status"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kill_file"] is False and doc["kill"] is None
    assert doc["strategies"] == {"mm": {"state": "HALTED", "reason": "max_loss: ...", "at": 1.0}}


def test_resume_rules(tmp_path, capsys):
    state = tmp_path / "s"
    state.mkdir()
    save_states(state / "risk.json", None, {
        "mm": StateRecord(TradingState.HALTED, "max_loss: lost 5.00 GBP", 1.0),
        "grid": StateRecord(TradingState.REDUCING, "manual", 2.0),
    })
    assert kill_cli.main(["--state-dir", str(state)]) == 0
    # One strategy cannot be resumed while the global kill is on.
    assert kill_cli.main(["--state-dir", str(state), "--resume", "mm"]) == 1
    assert "use --resume --all" in capsys.readouterr().err
    assert kill_cli.main(["--state-dir", str(state), "--resume"]) == 2
    assert kill_cli.main(["--state-dir", str(state), "--all"]) == 2
    # --resume --all lifts the kill and every record.
    assert kill_cli.main(["--state-dir", str(state), "--resume", "--all"]) == 0
    assert not (state / "KILL").exists()
    assert load_states(state / "risk.json") == (None, {})
    assert _governor(state).state("mm") is TradingState.ACTIVE
    assert kill_cli.main(["--state-dir", str(state), "--resume", "--all"]) == 0
    assert "nothing to resume" in capsys.readouterr().out

    # A single resume clears that strategy only; a name that is not halted is refused.
    save_states(state / "risk.json", None, {
        "mm": StateRecord(TradingState.HALTED, "a", 1.0), "grid": StateRecord(TradingState.HALTED, "b", 1.0),
    })
    assert kill_cli.main(["--state-dir", str(state), "--resume", "mm"]) == 0
    kill, records = load_states(state / "risk.json")
    assert kill is None and list(records) == ["grid"]
    assert kill_cli.main(["--state-dir", str(state), "--resume", "mmm"]) == 1
    assert "'mmm' is not HALTED" in capsys.readouterr().err


def test_a_kill_file_made_by_hand_blocks_single_resumes(tmp_path, capsys):
    state = tmp_path / "s"
    state.mkdir()
    save_states(state / "risk.json", None, {"mm": StateRecord(TradingState.HALTED, "a", 1.0)})
    (state / "KILL").touch()
    assert kill_cli.main(["--state-dir", str(state), "--resume", "mm"]) == 1
    assert "kill file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "exactly one"),
        (["--state-dir", "/nonexistent/cftrade-state"], "does not exist"),
        (["x.yaml", "--state-dir", "."], "exactly one"),
        (["/nonexistent/run.yaml"], "cannot read config file"),
    ],
)
def test_bad_usage_exits_2_with_a_reason(argv, message, capsys):
    assert kill_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_state_file_is_refused_not_overwritten(tmp_path, capsys):
    state = tmp_path / "s"
    state.mkdir()
    risk = state / "risk.json"
    risk.write_text("{not json")
    os.chmod(risk, 0o600)
    assert kill_cli.main(["--state-dir", str(state)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert risk.read_text() == "{not json"
    # The kill file was still created first: a running runner halts anyway.
    assert (state / "KILL").exists()
