"""The trading-state file: HALTED (and REDUCING) survive a restart (RELIABILITY F16, §5.1).

One small JSON document, written atomically (temp file, fsync, rename, fsync of the
directory; mode 0600) on every state change, never on the hot path::

    {"format": "cftrade-risk/1",
     "kill": {"state": "HALTED", "reason": "kill file /run/cftrade.kill exists", "at": 1700000000.0},
     "strategies": {"mm": {"state": "HALTED", "reason": "max_loss: ...", "at": 1700000000.0}}}

``kill`` is the global kill switch (every strategy HALTED, also ones added later); strategies
absent from ``strategies`` are ACTIVE.  A file that is unreadable, not ours, too open (group or
world bits) or a symlink is refused with :class:`ConfigError`: losing a HALTED record silently
is exactly what this file exists to prevent, so a damaged file stops the start-up and a human
decides.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomicfile import write_atomic
from engine.errors import ConfigError
from engine.risk.model import TradingState

__all__ = ["StateRecord", "STATE_FORMAT", "load_states", "save_states"]

STATE_FORMAT = "cftrade-risk/1"


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A non-ACTIVE state with its reason and the wall-clock time (Unix seconds) it began."""

    state: TradingState
    reason: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason, "at": self.at}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _record(where: str, raw: Any, *, kill: bool = False) -> StateRecord:
    if not isinstance(raw, dict) or set(raw) != {"state", "reason", "at"}:
        raise ConfigError(f"{where}: must be an object with exactly state, reason and at, was {raw!r}")
    try:
        state = TradingState(raw["state"])
    except ValueError:
        raise ConfigError(f"{where}.state must be HALTED or REDUCING, was {raw['state']!r}") from None
    if state is TradingState.ACTIVE or (kill and state is not TradingState.HALTED):
        raise ConfigError(f"{where}.state must be {'HALTED' if kill else 'HALTED or REDUCING'}, was {state.value!r}")
    if not isinstance(raw["reason"], str):
        raise ConfigError(f"{where}.reason must be a string, was {raw['reason']!r}")
    at = raw["at"]
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise ConfigError(f"{where}.at must be a number (Unix seconds), was {at!r}")
    return StateRecord(state, raw["reason"], float(at))


def load_states(path: Path) -> tuple[StateRecord | None, dict[str, StateRecord]]:
    """(global kill or None, per-strategy records) from ``path``; a missing file is empty."""
    where = f"risk state {path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, {}
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: not a regular file (symlinks are refused)")
    if st.st_mode & 0o077:
        raise ConfigError(f"{where}: mode {stat.S_IMODE(st.st_mode):04o} is too open; expected 0600")
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: not valid JSON ({e}); refusing to guess which strategies are HALTED") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ConfigError(f"{where}: not a {STATE_FORMAT} file")
    if set(data) != {"format", "kill", "strategies"}:
        raise ConfigError(f"{where}: expected keys format, kill, strategies; found {sorted(data)}")
    kill = None if data["kill"] is None else _record(f"{where}: kill", data["kill"], kill=True)
    raw = data["strategies"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: strategies must be an object, was {raw!r}")
    records = {name: _record(f"{where}: strategies.{name}", rec) for name, rec in raw.items()}
    return kill, records


def save_states(path: Path, kill: StateRecord | None, records: dict[str, StateRecord]) -> None:
    """Replace ``path`` atomically with the given states (mode 0600)."""
    doc = {
        "format": STATE_FORMAT,
        "kill": None if kill is None else kill.to_json(),
        "strategies": {name: rec.to_json() for name, rec in sorted(records.items())},
    }
    write_atomic(path, json.dumps(doc, indent=1, allow_nan=False).encode() + b"\n")
