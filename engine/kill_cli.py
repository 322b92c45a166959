"""``cftrade kill``: the manual kill switch for the strategies of one state directory.

::

    cftrade kill configs/market_maker.yaml --reason "desk says stop"   # HALT everything
    cftrade kill --state-dir runs/market_maker                         # same, by directory
    cftrade kill configs/market_maker.yaml --status                    # what is halted, and why
    cftrade kill configs/market_maker.yaml --resume mm                 # one strategy back to ACTIVE
    cftrade kill configs/market_maker.yaml --resume --all              # lift the kill and every halt

**How it stops a running runner.**  Killing does two things, in this order:

1. it creates the kill file ``<state_dir>/KILL`` (atomically, mode 0600; its text says who,
   when and why, for the humans).  A running :class:`~engine.runner.Runner` polls that path
   every 0.5 s (``RiskGovernor.poll_kill_file``): its appearance HALTs every strategy and the
   runner cancels their open orders at once, so orders are being cancelled within about a
   second.  Cancels are still allowed while HALTED; nothing else is.
2. it records the global kill, with ``--reason``, in ``<state_dir>/risk.json`` through
   :mod:`engine.risk.statefile` (the same atomic writer the risk governor uses), so the reason
   survives even if someone deletes the kill file by hand.

Either one alone makes the next start come up HALTED (the governor reloads ``risk.json`` and
checks the kill file when it is built): **HALTED persists across restarts** until a human
resumes.  The kill file was chosen over signalling a process because it needs no process id,
works before the runner starts and after it dies, and is exactly what the runner already
watches; ``kill -USR1 <pid>`` remains the signal-based alternative.

**Resuming** never happens by itself.  ``--resume --all`` deletes the kill file and clears
every record of ``risk.json``; ``--resume NAME`` clears one strategy's HALTED/REDUCING record
and is refused while the global kill is on (the same rules as ``RiskGovernor.resume``).  A
runner that is *still running* keeps its in-memory HALTED state (and writes it back on its
next state change): resume, then restart it.

Exit status: 0 done (also "already killed"), 1 refused (nothing to resume, or the global kill
blocks a single resume), 2 bad usage, unreadable config or damaged state file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from engine.errors import CoinfloorError
from engine.risk.model import TradingState
from engine.risk.statefile import StateRecord, load_states, save_states

KILL_FILE = "KILL"
STATE_FILE = "risk.json"
MAX_REASON = 500


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cftrade kill",
        description="Halt every strategy of a run (kill switch); HALTED persists across restarts.",
    )
    p.add_argument("config", nargs="?", help="the run config (YAML) whose run.state_dir to act on")
    p.add_argument("--state-dir", type=Path, help="act on this state directory instead of a config's")
    p.add_argument("--reason", default="manual kill (cftrade kill)", help="why, recorded with the kill")
    p.add_argument("--resume", nargs="?", const="", metavar="NAME",
                   help="resume strategy NAME (or, with --all, lift the kill and every halt)")
    p.add_argument("--all", action="store_true", help="with --resume: every strategy and the global kill")
    p.add_argument("--status", action="store_true", help="print the trading states as JSON and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        state_dir = _state_dir(args)
        if args.status:
            return _status(state_dir)
        if args.resume is not None:
            return _resume(state_dir, args.resume, args.all)
        if args.all:
            return _fail("--all only goes with --resume", 2)
        return _kill(state_dir, args.reason)
    except CoinfloorError as e:
        return _fail(str(e), 2)
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror or e}", 2)


def _fail(message: str, status: int) -> int:
    print(f"cftrade kill: {message}", file=sys.stderr)
    return status


def _state_dir(args: argparse.Namespace) -> Path:
    from engine.errors import ConfigError

    if (args.config is None) == (args.state_dir is None):
        raise ConfigError("give a run config or --state-dir DIR (exactly one)")
    if args.state_dir is not None:
        d: Path = args.state_dir
        if not d.is_dir():
            # A typo must not create a fresh directory and report a kill nobody watches.
            raise ConfigError(f"state directory {d} does not exist (is it the run's run.state_dir?)")
        return d
    from engine.config import load_run_config

    config = load_run_config(args.config, resolve_secrets=False)
    d = Path(config.run.state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)  # a kill before the first start counts too
    return d


def _kill(state_dir: Path, reason: str) -> int:
    reason = " ".join(str(reason).split())[:MAX_REASON] or "manual kill (cftrade kill)"
    kill_file = state_dir / KILL_FILE
    created = _create_kill_file(kill_file, reason)
    state_path = state_dir / STATE_FILE
    kill, records = load_states(state_path)
    if kill is None:
        save_states(state_path, StateRecord(TradingState.HALTED, reason, time.time()), records)
        kill_reason = reason
    else:
        kill_reason = kill.reason
    what = "kill file created" if created else "kill file was already there"
    print(f"cftrade kill: every strategy of {state_dir} is HALTED ({what}: {kill_file}; reason: {kill_reason}). "
          "A running runner cancels its orders within about a second.")
    return 0


def _create_kill_file(path: Path, reason: str) -> bool:
    """Create ``path`` atomically (temp file + link, so it never exists half-written)."""
    if os.path.lexists(path):
        return False
    body = json.dumps({"reason": reason, "at": time.time(), "by": f"cftrade kill (pid {os.getpid()} on "
                       f"{socket.gethostname()})"}) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if someone created it meanwhile: theirs stays
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def _resume(state_dir: Path, name: str, everything: bool) -> int:
    state_path = state_dir / STATE_FILE
    kill_file = state_dir / KILL_FILE
    kill, records = load_states(state_path)
    if everything:
        if name:
            return _fail("--resume NAME and --all are exclusive", 2)
        had_file = os.path.lexists(kill_file)
        if had_file:
            os.unlink(kill_file)
        if kill is None and not records and not had_file:
            print(f"cftrade kill: nothing to resume in {state_dir}: every strategy is ACTIVE")
            return 0
        save_states(state_path, None, {})
        print(f"cftrade kill: resumed every strategy of {state_dir} (kill file {'removed' if had_file else 'absent'}). "
              "A runner still running stays HALTED until restarted.")
        return 0
    if not name:
        return _fail("--resume needs a strategy NAME, or --all", 2)
    if os.path.lexists(kill_file):
        return _fail(f"resume {name} refused: kill file {kill_file} exists; use --resume --all", 1)
    if kill is not None:
        return _fail(f"resume {name} refused: the global kill is on ({kill.reason}); use --resume --all", 1)
    if name not in records:
        halted = ", ".join(sorted(records)) or "none"
        return _fail(f"strategy {name!r} is not HALTED or REDUCING in {state_path} (halted: {halted})", 1)
    rest = {k: v for k, v in records.items() if k != name}
    save_states(state_path, None, rest)
    print(f"cftrade kill: resumed {name} ({records[name].state.value} since {_when(records[name].at)}: "
          f"{records[name].reason}). Restart a runner that is still running.")
    return 0


def _status(state_dir: Path) -> int:
    kill, records = load_states(state_dir / STATE_FILE)
    kill_file = state_dir / KILL_FILE
    doc = {
        "state_dir": str(state_dir),
        "kill_file": os.path.lexists(kill_file),
        "kill": None if kill is None else kill.to_json(),
        "strategies": {k: v.to_json() for k, v in sorted(records.items())},
    }
    print(json.dumps(doc))
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


if __name__ == "__main__":
    sys.exit(main())
