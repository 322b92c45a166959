"""An append-only journal of the exchange's inputs, and its replay.

A snapshot says where the exchange was; the journal says what happened since.  Together
they rebuild the exact state after a crash (RELIABILITY F6): restore the snapshot taken
when the journal started, replay every journaled event with the clock value it was
recorded with, and the state hash is the one the exchange had after its last journaled
event (tested in tests/test_exchange_core_journal.py)::

    genesis = exchange.snapshot()                       # save it (persistence.save_snapshot)
    writer = JournalWriter("exchange.journal")
    exchange.journal = writer.record                    # from now on every input is logged
    ...
    ex2 = Exchange.restore(settings, genesis, clock_us=..., rng=random.Random())
    replay(ex2, read_journal("exchange.journal"))       # ex2.state_hash() == exchange.state_hash()

One JSON object per line (``op`` first):

====================  =========================================================================
``open``              a wire session opened (``sid``)
``internal``          an internal session opened for ``uid``
``auth``              an Authenticate: ``uid``, whether it used an auth-rate token (``rated``)
                      and whether it succeeded (``ok``).  Never the cookie or the signature.
``cmd``               any other command, as its exact JSON (``cmd``), on session ``sid`` at ``t``
``close``             a session closed (its persist=false orders were cancelled)
``deposit``, ``refresh``, ``orphans``   the administrative calls of the same names
====================  =========================================================================

Replay needs no credentials: an ``auth`` event re-applies its effect (rate token, login)
instead of re-verifying a signature.  JSON only (no pickle); a torn last line, as a crash
mid-write leaves, is ignored, while damage anywhere else is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from engine.errors import ConfigError
from engine.exchange.core import Exchange, Session
from engine.protocol.codec import CODEC, BadCommand


class JournalError(ConfigError):
    """A journal file is damaged or does not fit the exchange it is replayed onto."""


class JournalWriter:
    """Appends events as JSON lines to a file created with mode 0600.

    ``fsync=True`` makes every event durable before the engine goes on (slow; for a live
    venue at a few events per second); otherwise lines are flushed to the OS each time.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file: IO[bytes] = os.fdopen(fd, "ab")
        self._fsync = fsync
        self.events = 0

    def record(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self.events += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a journal file; a torn final line is dropped, other damage refused."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    events: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        try:
            ev = json.loads(line)
        except ValueError:
            raise JournalError(f"{path}:{i}: not a JSON event") from None
        if not isinstance(ev, dict) or "op" not in ev:
            raise JournalError(f"{path}:{i}: not a journal event")
        events.append(ev)
    if torn:
        try:
            ev = json.loads(torn)
        except ValueError:
            ev = None  # a crash mid-write: the event never completed
        if isinstance(ev, dict) and "op" in ev:
            events.append(ev)
    return events


class _ReplayClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def replay(exchange: Exchange, events: Iterable[dict[str, Any]]) -> Exchange:
    """Apply journaled ``events`` to ``exchange`` (restored from the journal's starting
    snapshot).  Returns the same exchange; its clock is replaced for the duration."""
    clock = _ReplayClock(exchange._last_time)
    saved_clock, saved_journal = exchange._clock, exchange.journal
    exchange._clock, exchange.journal = clock, None
    sessions: dict[int, Session] = {}
    try:
        for n, ev in enumerate(events, 1):
            op = ev["op"]
            if "t" in ev:
                clock.now = ev["t"]
            if op in ("open", "internal"):
                s = (
                    exchange.open_session(lambda _n: None, server_nonce=b"\0" * 16)
                    if op == "open"
                    else exchange.open_internal_session(ev["uid"])
                )
                if s.id != ev["sid"]:
                    raise JournalError(f"event {n}: session id {s.id} where the journal has {ev['sid']}")
                sessions[s.id] = s
            elif op == "cmd":
                try:
                    cmd = CODEC.decode_command(ev["cmd"])
                except BadCommand as e:
                    raise JournalError(f"event {n}: bad command: {e.error_msg}") from None
                exchange.handle(_session(sessions, ev, n), cmd)
            elif op == "auth":
                exchange._replay_auth(_session(sessions, ev, n), ev["uid"], ev["rated"], ev["ok"])
            elif op == "close":
                exchange.close_session(_session(sessions, ev, n))
            elif op == "deposit":
                exchange.deposit(ev["uid"], ev["asset"], ev["amount"])
            elif op == "refresh":
                exchange.refresh_tickers()
            elif op == "orphans":
                exchange.cancel_orphaned_orders()
            else:
                raise JournalError(f"event {n}: unknown op {op!r}")
    finally:
        exchange._clock, exchange.journal = saved_clock, saved_journal
    return exchange


def _session(sessions: dict[int, Session], ev: dict[str, Any], n: int) -> Session:
    s = sessions.get(ev["sid"])
    if s is None:
        raise JournalError(f"event {n}: session {ev['sid']} was never opened in this journal")
    return s
