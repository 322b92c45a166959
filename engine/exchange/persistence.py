"""Exchange snapshot files: JSON only, written atomically, verified by state hash on load.

::

    save_snapshot(path, exchange)                  # temp file, fsync, rename, fsync dir; mode 0600
    exchange = load_exchange(path, settings, clock_us=..., rng=...)   # None if no file yet

File layout (one JSON object)::

    {"format": "cftrade-exchange-snapshot", "version": 1,
     "state_hash": "<sha256 hex of the canonical snapshot>", "snapshot": {...core snapshot...}}

A reader never trusts the stored hash alone: the exchange is rebuilt from ``snapshot`` and its
own ``state_hash()`` must equal the stored one, so a torn, edited or mismatched file (or a
restore bug) refuses to start instead of trading on a wrong book (RELIABILITY F6).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomicfile import write_atomic
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.exchange.core import Exchange
    from engine.exchange.settings import ExchangeSettings

FORMAT = "cftrade-exchange-snapshot"
VERSION = 1


class SnapshotError(ConfigError):
    """A snapshot file cannot be used: unreadable, not ours, or its state hash does not match."""


def encode_snapshot(exchange: Exchange) -> bytes:
    """The file content for ``exchange``'s current state."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "state_hash": exchange.state_hash(),
        "snapshot": exchange.snapshot(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def save_snapshot(path: str | os.PathLike[str], exchange: Exchange) -> str:
    """Write ``exchange``'s snapshot to ``path`` atomically (mode 0600); returns the state hash."""
    data = encode_snapshot(exchange)
    write_atomic(path, data)
    return str(json.loads(data)["state_hash"])


def read_snapshot(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(stored state hash, core snapshot) from a file written by :func:`save_snapshot`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {p}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"snapshot {p} is not valid JSON ({e}); refusing to start from it") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"{p} is not a cftrade exchange snapshot (format {FORMAT!r} expected)")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"snapshot {p} has version {doc.get('version')!r}; this build reads {VERSION}")
    stored, snap = doc.get("state_hash"), doc.get("snapshot")
    if not isinstance(stored, str) or not isinstance(snap, dict):
        raise SnapshotError(f"snapshot {p} lacks state_hash or snapshot")
    return stored, snap


def load_exchange(
    path: str | os.PathLike[str],
    settings: ExchangeSettings,
    *,
    clock_us: Callable[[], int],
    rng: random.Random,
) -> Exchange | None:
    """Restore an exchange from ``path``, or None when the file does not exist.

    The restored state must hash to the stored ``state_hash``; then the orphaned
    ``persist: false`` orders (their connections died with the old process) are cancelled.
    Raises :class:`SnapshotError` when the file exists but cannot be restored exactly.
    """
    from engine.exchange.core import Exchange

    if not Path(path).exists():
        return None
    stored, snap = read_snapshot(path)
    try:
        exchange = Exchange.restore(settings, snap, clock_us=clock_us, rng=rng)
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"snapshot {path} does not fit these settings: {e}") from None
    actual = exchange.state_hash()
    if actual != stored:
        raise SnapshotError(
            f"snapshot {path}: state hash after restore is {actual[:16]}..., file says {stored[:16]}...; "
            "refusing to start from a state that does not reproduce"
        )
    # Connections do not survive a restart: persist:false orders of a snapshot taken while
    # clients were connected (a periodic one, before a crash) are cancelled now, as their
    # disconnect would have done.  Only then: the call also moves the engine's clock, and a
    # graceful restart should come back with exactly the state (and hash) it stopped with.
    if _has_volatile_orders(snap):
        exchange.cancel_orphaned_orders()
    return exchange


def _has_volatile_orders(snap: dict[str, Any]) -> bool:
    for book in snap.get("books", []):
        for side in ("bids", "asks"):
            if any(o.get("persist") is False for o in book.get(side, [])):
                return True
    return False
