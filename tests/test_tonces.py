"""F3/F10/O8: the tonce allocator is monotonic under clock jumps, persisted, and epoch-aware."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from engine.errors import ConfigError
from engine.state.tonces import STATE_FORMAT, TonceAllocator, wall_clock_us

HOUR_US = 3_600 * 10**6
T0 = 1_700_000_000 * 10**6  # a plausible wall clock in µs


class JumpClock:
    """A wall clock in µs that advances 1 ms per reading and can be stepped by the test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


def test_tonce_is_max_of_last_plus_one_and_now():
    clock = JumpClock()
    alloc = TonceAllocator(clock=clock)
    first = alloc.next()
    assert first == T0 + 1_000
    clock.now -= 10_000  # clock goes back 10 ms: the tonce must still increase by exactly 1
    assert alloc.next() == first + 1
    clock.now += 5 * HOUR_US
    assert alloc.next() == clock.now  # a forward jump is taken at once


def test_f10_monotonic_under_100_clock_jumps_of_one_hour():
    rng = random.Random(10)
    clock = JumpClock()
    alloc = TonceAllocator(clock=clock)
    seen = []
    for _ in range(100):
        clock.now += rng.choice((-HOUR_US, HOUR_US))
        for _ in range(rng.randrange(1, 20)):
            seen.append(alloc.next())
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert len(set(seen)) == len(seen)


def test_clock_must_return_int_microseconds():
    alloc = TonceAllocator(clock=lambda: 1.5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="int microseconds"):
        alloc.next()


def test_default_clock_is_the_wall_clock_in_microseconds():
    alloc = TonceAllocator()
    before = wall_clock_us()
    t = alloc.next()
    assert before <= t <= wall_clock_us()


def test_f3d_restart_never_reuses_a_tonce_even_when_the_clock_went_back(tmp_path):
    path = tmp_path / "user42.tonce.json"
    clock = JumpClock()
    issued = []
    for restart in range(10):
        with TonceAllocator(path, clock=clock, user_id=42) as alloc:
            if restart:
                assert alloc.high_water == issued[-1]  # the mark on disk is the last tonce used
            for _ in range(5):
                issued.append(alloc.next())
        clock.now -= HOUR_US  # each "reboot" comes back with a clock one hour behind
    assert all(b > a for a, b in zip(issued, issued[1:], strict=False))
    assert issued[5] == issued[4] + 1  # the persisted mark, not the stale clock, set the pace


def test_state_file_is_json_mode_0600_and_holds_the_high_water_mark(tmp_path):
    path = tmp_path / "t.json"
    with TonceAllocator(path, clock=JumpClock(), user_id=7) as alloc:
        t = alloc.next()
        assert alloc.writes == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc == {"format": STATE_FORMAT, "user_id": 7, "high_water": t, "epoch": 0}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_lease_writes_rarely_and_a_restart_starts_above_the_lease(tmp_path):
    path = tmp_path / "t.json"
    lease = 10**6
    clock = JumpClock()
    with TonceAllocator(path, clock=clock, lease_us=lease) as alloc:
        tonces = [alloc.next() for _ in range(500)]  # 0.5 s of clock at 1 ms per tonce
        assert alloc.writes == 1
        assert alloc.high_water == tonces[0] + lease
    clock.now -= HOUR_US
    with TonceAllocator(path, clock=clock, lease_us=lease) as alloc:
        assert alloc.next() == tonces[0] + lease + 1


def test_one_allocator_per_user_file(tmp_path):
    path = tmp_path / "t.json"
    with TonceAllocator(path, clock=JumpClock()):
        with pytest.raises(ConfigError, match="in use by another allocator"):
            TonceAllocator(path, clock=JumpClock())
    TonceAllocator(path, clock=JumpClock()).close()  # released on close


def test_state_file_from_another_user_is_refused(tmp_path):
    path = tmp_path / "t.json"
    with TonceAllocator(path, clock=JumpClock(), user_id=1) as alloc:
        alloc.next()
    with pytest.raises(ConfigError, match="belongs to user 1, not user 2"):
        TonceAllocator(path, clock=JumpClock(), user_id=2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a cftrade-tonce/1 file"),
        ('{"format": "cftrade-tonce/1", "high_water": true, "epoch": 0}', "high_water must be an int"),
        ('{"format": "cftrade-tonce/1", "high_water": 1.5, "epoch": 0}', "high_water must be an int"),
        ('{"format": "cftrade-tonce/1", "high_water": NaN, "epoch": 0}', "not valid JSON"),
        ('{"format": "cftrade-tonce/1", "high_water": 5, "epoch": -1}', "epoch must be an int >= 0"),
    ],
)
def test_corrupt_state_is_refused_not_guessed(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        TonceAllocator(path)
    TonceAllocator(path.with_name("other.json")).close()  # the failed one released its lock
    path.write_text(json.dumps({"format": STATE_FORMAT, "high_water": 5, "epoch": 0}))
    TonceAllocator(path).close()


def test_state_file_with_open_mode_or_symlink_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": STATE_FORMAT, "high_water": 5, "epoch": 0}))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644 is too open"):
        TonceAllocator(path)
    path.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        TonceAllocator(link)


def test_lease_must_be_a_non_negative_int():
    with pytest.raises(ConfigError, match="lease_us must be an int >= 0"):
        TonceAllocator(lease_us=-1)


# -- epochs and the resubmission rule (F1, F3) -------------------------------------------


def test_may_resubmit_only_above_every_confirmed_tonce_in_the_same_epoch():
    alloc = TonceAllocator(clock=JumpClock())
    t1, t2, t3 = alloc.next(), alloc.next(), alloc.next()
    e = alloc.epoch
    assert alloc.may_resubmit(t1, e) and alloc.may_resubmit(t3, e)
    alloc.confirm(t2, e)  # F3b: T2 landed, so resubmitting T1 would only get error 3
    assert not alloc.may_resubmit(t1, e)
    assert not alloc.may_resubmit(t2, e)  # F3a: it already succeeded
    assert alloc.may_resubmit(t3, e)
    assert not alloc.may_resubmit(t3, e + 1)  # an epoch that does not exist yet
    assert not alloc.may_resubmit(alloc.last + 1, e)  # never handed out


def test_f3c_cancel_all_orders_blocks_resubmission_of_older_intents(tmp_path):
    path = tmp_path / "t.json"
    with TonceAllocator(path, clock=JumpClock()) as alloc:
        t = alloc.next()
        e = alloc.epoch
        assert alloc.may_resubmit(t, e)
        new_epoch = alloc.begin_cancel_all()
        assert new_epoch == e + 1 == alloc.epoch
        assert not alloc.may_resubmit(t, e)  # the exchange's counter was reset: a duplicate
        assert not alloc.may_resubmit(t, new_epoch)  # not issued in the new epoch either...
        alloc.confirm(t, e)  # a late confirmation from the old epoch changes nothing
        assert alloc.confirmed == 0
        t_new = alloc.next()
        assert t_new > t and alloc.may_resubmit(t_new, new_epoch)
    with TonceAllocator(path, clock=JumpClock()) as alloc:
        assert alloc.epoch == new_epoch  # the epoch survives a restart


def test_after_restart_pre_restart_tonces_are_never_resubmitted(tmp_path):
    path = tmp_path / "t.json"
    with TonceAllocator(path, clock=JumpClock()) as alloc:
        t = alloc.next()
        e = alloc.epoch
    with TonceAllocator(path, clock=JumpClock()) as alloc:
        assert not alloc.may_resubmit(t, e)  # fail-closed: reconciliation settles it
        t2 = alloc.next()
        assert alloc.may_resubmit(t2, e)


def test_repr_shows_state_not_secrets(tmp_path):
    alloc = TonceAllocator(clock=JumpClock())
    alloc.next()
    assert repr(alloc).startswith("TonceAllocator(path=None, last=")
