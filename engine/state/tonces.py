"""The tonce allocator: one per Coinfloor user, monotonic, crash-safe (RELIABILITY F1, F3, F10).

A tonce is the client-chosen number a ``PlaceOrder`` may carry.  The exchange accepts it only
if it is strictly greater than every tonce of a *successful* PlaceOrder by the same user since
that user's last ``CancelAllOrders``; in exchange it lets us resubmit a PlaceOrder whose reply
was lost without creating a duplicate, and cancel an order before its reply names its id.

Three rules make that promise hold across clock jumps, restarts and kill switches:

* **Monotonic**: ``tonce = max(last + 1, now_µs)`` where ``now_µs`` comes from an injected wall
  clock.  Using the wall clock keeps tonces above anything an earlier run may have used even if
  the state file were lost; the ``last + 1`` term means a clock stepped back by an hour (F10)
  only slows the tonce down to +1 per order, it never repeats or decreases.
* **Persisted before use** (F3d): the high-water mark is written atomically (temp file,
  fsync, rename, fsync of the directory; mode 0600; JSON) *before* :meth:`next` returns, so a
  process killed right after sending can never hand the same tonce out again.  With
  ``lease_us > 0`` the file records ``tonce + lease_us`` and is rewritten only when a tonce
  passes it; a restart then starts above the lease.  That trades up to ``lease_us`` of
  tonce space for far fewer fsyncs.
* **Epochs** (F3c): ``CancelAllOrders`` resets the exchange's counter to zero, after which
  an old tonce is accepted again, so resubmitting an intent from before the reset *would*
  create a duplicate.  :meth:`begin_cancel_all` bumps a persisted epoch counter (call it
  before sending CancelAllOrders: if its outcome is lost we must assume the reset happened),
  and :meth:`may_resubmit` refuses anything from an older epoch.

``may_resubmit(tonce, epoch)`` also requires the tonce to be above every *confirmed* tonce
(a success reply seen in this epoch): otherwise the exchange would answer error 3, which on a
resubmission only means "a tonce >= this one succeeded", so the intent has to be settled by
reconciliation (GetOrders) rather than by another send.  After a restart the confirmed set is
unknown, so it is taken to be everything up to the persisted high-water mark: intents from a
previous run are never resubmitted blindly; reconciliation settles them (fail-closed).

One process per user: a state file is guarded by an exclusive ``flock`` on ``<file>.lock``;
a second allocator on the same file (another process, or a forgotten one in this process)
is refused with :class:`~engine.errors.ConfigError`.

    >>> clock = iter([1_000, 1_000, 500]).__next__
    >>> alloc = TonceAllocator(clock=clock)
    >>> alloc.next(), alloc.next(), alloc.next()
    (1000, 1001, 1002)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.atomicfile import write_atomic
from engine.errors import ConfigError

__all__ = ["TonceAllocator", "wall_clock_us", "STATE_FORMAT"]

STATE_FORMAT = "cftrade-tonce/1"
_INT64_MAX = 2**63 - 1


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch from the system wall clock (may jump; that is fine)."""
    return time.time_ns() // 1000


class TonceAllocator:
    """Hands out strictly increasing tonces for one user and remembers them across restarts.

    ``path`` is the JSON state file (``None`` keeps state in memory only: tests, backtests).
    ``clock`` returns the wall clock in integer microseconds; it is injected so tests can jump
    it.  ``user_id``, when given, is written to the file and checked on load, so one user's
    state is never applied to another.
    """

    __slots__ = (
        "_path",
        "_clock",
        "_lease_us",
        "_user_id",
        "_last",
        "_persisted",
        "_epoch",
        "_confirmed",
        "_floor",
        "_lock_fd",
        "writes",
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], int] = wall_clock_us,
        lease_us: int = 0,
        user_id: int | None = None,
    ) -> None:
        if type(lease_us) is not int or lease_us < 0:
            raise ConfigError(f"tonce allocator: lease_us must be an int >= 0, was {lease_us!r}")
        self._path = Path(path) if path is not None else None
        self._clock = clock
        self._lease_us = lease_us
        self._user_id = user_id
        self._last = 0  # the highest tonce handed out (or the persisted mark after a restart)
        self._persisted = 0  # the high-water mark on disk
        self._epoch = 0
        self._confirmed = 0  # highest tonce confirmed by a success reply in this epoch
        self._floor = 0  # tonces at or below this one belong to an earlier epoch or run
        self._lock_fd: int | None = None
        self.writes = 0  # state-file writes so far (for benchmarks and tests)
        if self._path is not None:
            self._lock()
            try:
                self._load()
            except BaseException:
                self.close()
                raise

    # -- public API ----------------------------------------------------------------------

    @property
    def last(self) -> int:
        """The highest tonce handed out by this allocator (after a restart: the persisted mark)."""
        return self._last

    @property
    def high_water(self) -> int:
        """The mark on disk: no tonce at or below it will ever be handed out again."""
        return self._persisted

    @property
    def epoch(self) -> int:
        """The CancelAllOrders epoch: bumped by :meth:`begin_cancel_all`, persisted."""
        return self._epoch

    @property
    def confirmed(self) -> int:
        """The highest tonce confirmed (success reply) in the current epoch."""
        return self._confirmed

    @property
    def path(self) -> Path | None:
        return self._path

    def next(self) -> int:
        """The next tonce: ``max(last + 1, now_µs)``, persisted before it is returned."""
        now = self._clock()
        if type(now) is not int:
            raise TypeError(f"tonce clock must return int microseconds, returned {now!r}")
        tonce = max(self._last + 1, now)
        if tonce > _INT64_MAX:
            raise OverflowError(f"tonce {tonce} does not fit a signed 64-bit integer")
        if tonce > self._persisted:
            self._write(min(tonce + self._lease_us, _INT64_MAX), self._epoch)
        self._last = tonce
        return tonce

    def confirm(self, tonce: int, epoch: int) -> None:
        """Record a success reply to a PlaceOrder that carried ``tonce`` (issued in ``epoch``).

        Confirmations from an older epoch are ignored: the exchange forgot them at the reset.
        """
        if epoch == self._epoch and tonce > self._confirmed:
            self._confirmed = tonce

    def begin_cancel_all(self) -> int:
        """Call right *before* sending CancelAllOrders; returns the new epoch (persisted).

        The bump happens at send time because a CancelAllOrders whose reply is lost may still
        have reset the exchange's counter: from then on no older intent may be resubmitted.
        """
        self._write(max(self._persisted, self._last), self._epoch + 1)
        self._confirmed = 0
        self._floor = self._last  # everything issued so far belongs to the old epoch
        return self._epoch

    def may_resubmit(self, tonce: int, epoch: int) -> bool:
        """May a PlaceOrder issued with ``tonce`` in ``epoch`` be sent again with that tonce?

        True only in the same CancelAllOrders epoch and when ``tonce`` is above every tonce
        confirmed since (RELIABILITY F1/F3).  Anything else must be settled by reconciliation.
        """
        return epoch == self._epoch and max(self._confirmed, self._floor) < tonce <= self._last

    def close(self) -> None:
        """Release the per-user lock (the state on disk is always already current)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> TonceAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten allocator must not keep its user locked forever
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown; nothing useful to do
            pass

    def __repr__(self) -> str:
        return (
            f"TonceAllocator(path={str(self._path) if self._path else None!r}, "
            f"last={self._last}, high_water={self._persisted}, epoch={self._epoch})"
        )

    # -- persistence ---------------------------------------------------------------------

    def _lock(self) -> None:
        assert self._path is not None
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise ConfigError(f"tonce state {self._path}: cannot open lock file {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(
                    f"tonce state {self._path} is in use by another allocator (one process and one "
                    f"allocator per Coinfloor user: the tonce counter is user-wide)"
                ) from None
            raise
        self._lock_fd = fd

    def _load(self) -> None:
        assert self._path is not None
        where = f"tonce state {self._path}"
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return  # first run: start from the clock
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file (symlinks are refused)")
        if st.st_mode & 0o077:
            raise ConfigError(f"{where}: mode {stat.S_IMODE(st.st_mode):04o} is too open; expected 0600")
        try:
            with open(self._path, encoding="utf-8") as f:
                data: Any = json.load(f, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: not valid JSON ({e}); refusing to guess a tonce") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ConfigError(f"{where}: not a {STATE_FORMAT} file")
        hw, epoch, uid = data.get("high_water"), data.get("epoch"), data.get("user_id")
        if type(hw) is not int or not 0 <= hw <= _INT64_MAX:
            raise ConfigError(f"{where}: high_water must be an int in [0, 2**63), was {hw!r}")
        if type(epoch) is not int or epoch < 0:
            raise ConfigError(f"{where}: epoch must be an int >= 0, was {epoch!r}")
        if self._user_id is not None and uid != self._user_id:
            raise ConfigError(f"{where}: belongs to user {uid!r}, not user {self._user_id}")
        self._persisted = self._last = hw
        self._epoch = epoch
        # Fail-closed: we cannot know which pre-restart tonces were confirmed, so none of
        # them may be resubmitted; reconciliation (GetOrders) settles those intents.
        self._floor = hw

    def _write(self, high_water: int, epoch: int) -> None:
        if self._path is not None:
            doc = {"format": STATE_FORMAT, "user_id": self._user_id, "high_water": high_water, "epoch": epoch}
            write_atomic(self._path, json.dumps(doc, separators=(",", ":")).encode())
            self.writes += 1
        self._persisted = high_water
        self._epoch = epoch


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
