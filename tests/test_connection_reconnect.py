"""ReconnectingClient: survives a dropped connection (F1), backs off exactly, halts on error 7
(F11), re-subscribes and lets the application reconcile before anything resumes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from engine.client.notices import ReplyEvent, SessionEnded, SessionStarted
from engine.client.reconnect import Backoff, ReconnectingClient
from engine.client.urls import Target
from engine.connection import Connection, ConnectionOptions, Credentials
from engine.errors import AuthenticationFailed, ConnectFailed, ConnectionLost
from engine.protocol.messages import (
    Authenticate,
    BalanceChanged,
    Command,
    GetBalances,
    GetOrders,
    Reply,
    WatchOrders,
    WatchTicker,
)
from engine.secret import Secret
from tests.scripted_peer import DEFAULT_USER, PeerSession, ScriptedPeer, error

XBT, GBP = 1, 2


def creds(passphrase: str = DEFAULT_USER.passphrase) -> Credentials:
    return Credentials(1, Secret(DEFAULT_USER.cookie), Secret(passphrase))


@asynccontextmanager
async def tcp_url(peer: ScriptedPeer) -> AsyncIterator[str]:
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            yield f"ws://127.0.0.1:{port}/"
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise (group.exceptions[0] if len(group.exceptions) == 1 else group) from None


@asynccontextmanager
async def guarded_nursery(limit: float = 1000.0) -> AsyncIterator[trio.Nursery]:
    """A nursery with a (virtual-time) deadline, so a regression fails instead of hanging."""
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            yield nursery


def drain(client: ReconnectingClient) -> list[Any]:
    out = []
    while True:
        try:
            out.append(client.notices.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


# -- backoff --------------------------------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped():
    b = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(0)
    assert [b.delay(a, rng) for a in range(7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert b.delay(10**9, rng) == 8.0  # no overflow


def test_backoff_jitter_stays_in_bounds_and_is_seeded():
    b = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=0.5)
    first = [b.delay(a, random.Random(42)) for a in range(12)]
    again = [b.delay(a, random.Random(42)) for a in range(12)]
    assert first == again
    rng = random.Random(1)
    for attempt in range(12):
        base = min(30.0, 0.5 * 2.0**attempt)
        for _ in range(200):
            assert base * 0.5 <= b.delay(attempt, rng) <= base


@pytest.mark.parametrize(
    "kwargs, message",
    [({"initial": 5.0, "maximum": 1.0}, "initial <= maximum"), ({"multiplier": 0.5}, "multiplier must be >= 1"),
     ({"jitter": 1.5}, "jitter must be within"), ({"reset_after": -1.0}, "reset_after must be >= 0")],
)
def test_backoff_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


# -- surviving a dropped connection (F1) ------------------------------------------------------------


async def test_F1_survives_a_dropped_tcp_connection():
    async def on_command(session: PeerSession, command: Command) -> None:
        if isinstance(command, GetOrders) and session.index == 1:
            await session.drop()  # RST in the middle of the flow
        else:
            await session.reply_default(command)

    peer = ScriptedPeer(on_command=on_command)
    reconciled: list[int] = []

    async def on_connected(conn: Connection) -> None:
        await conn.request(GetBalances(), echo=True)  # the application's reconciliation
        reconciled.append(conn.session)

    async with tcp_url(peer) as url:
        client = ReconnectingClient(
            url, creds(), allow_insecure=True, on_connected=on_connected,
            backoff=Backoff(initial=0.0), rng=random.Random(3),
        )
        with trio.fail_after(20):
            async with guarded_nursery() as nursery:
                await nursery.start(client.run)
                await client.watch_orders(XBT, GBP)
                await client.watch_ticker(XBT, GBP)
                with pytest.raises(ConnectionLost, match="outcome of GetOrders .* is unknown"):
                    await client.request(GetOrders())
                # The next request waits for the new session, which is reconciled first.
                assert (await client.request(GetOrders())).orders == []
                stats = client.statistics()
                nursery.cancel_scope.cancel()
    assert reconciled == [1, 2]
    assert stats.reconnects == 1 and stats.session == 2 and stats.open
    first, second = peer.sessions
    assert second.authenticated and second.auth_attempts == 1
    kinds = [type(c) for c in second.commands]
    assert kinds[0] is Authenticate
    assert set(kinds[1:3]) == {WatchOrders, WatchTicker}  # re-subscribed, pipelined
    assert kinds[3:] == [GetBalances, GetOrders]  # reconcile first, then the application
    assert all(c.watch for c in second.commands[1:3])
    events = drain(client)
    assert events[0] == SessionStarted(1, 1)
    ended = events.index(SessionEnded(1, events[4].reason))
    assert ended == 4 and "peer closed the connection" in events[4].reason
    assert events[5] == SessionStarted(2, 1)
    echoed = [type(e.command) for e in events[6:] if isinstance(e, ReplyEvent)]
    assert set(echoed[:2]) == {WatchOrders, WatchTicker} and echoed[2:] == [GetBalances]


async def test_backoff_times_are_exact_and_reset_after_a_stable_session(autojump_clock):
    peer = ScriptedPeer()
    dials: list[float] = []
    backoff = Backoff(initial=1.0, maximum=4.0, multiplier=2.0, jitter=0.5, reset_after=60.0)

    async with guarded_nursery() as nursery:

        async def dial(target: Target) -> trio.abc.Stream:
            dials.append(trio.current_time())
            if 2 <= len(dials) <= 5:
                raise ConnectFailed("connection refused (test)")
            client_end, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(peer.handle_stream, server_end)
            return client_end

        client = ReconnectingClient("ws://127.0.0.1/", creds(), allow_insecure=True, dial=dial,
                                    backoff=backoff, rng=random.Random(7))
        await nursery.start(client.run)
        await trio.sleep(5.0)
        await peer.sessions[0].drop()
        await peer.wait_sessions(2)
        await trio.sleep(100.0)  # a stable session: the attempt counter resets
        await peer.sessions[1].drop()
        await peer.wait_sessions(3)
        nursery.cancel_scope.cancel()

    rng = random.Random(7)
    delays = [backoff.delay(a, rng) for a in range(5)] + [backoff.delay(0, rng)]
    assert client.delays == delays
    assert delays[3] == delays[4] or delays[4] <= 4.0  # capped at maximum
    expected = [0.0]
    t = 5.0
    for d in delays[:5]:
        t = t + d
        expected.append(t)
    expected.append(t + 100.0 + delays[5])
    assert dials == expected
    assert client.statistics().connect_failures == 4


async def test_F11_error_7_halts_without_retrying():
    peer = ScriptedPeer()
    async with tcp_url(peer) as url:
        client = ReconnectingClient(url, creds("wrong passphrase"), allow_insecure=True,
                                    backoff=Backoff(initial=0.0))
        with trio.fail_after(10), pytest.raises(AuthenticationFailed, match="incorrect signature"):
            await client.run()
        with pytest.raises(ConnectionLost, match="the client halted: error 7"):
            await client.request(GetBalances())
    assert [s.auth_attempts for s in peer.sessions] == [1]


async def test_error_6_on_authenticate_is_retried_with_backoff(autojump_clock):
    class Peer(ScriptedPeer):
        def _authenticate(self, session: PeerSession, command: Authenticate) -> Reply:
            if self.connections_seen == 1:
                return error(command, 6, "You are making authentication attempts too rapidly.")
            return super()._authenticate(session, command)

    peer = Peer()
    async with guarded_nursery() as nursery:
        client = ReconnectingClient("ws://127.0.0.1/", creds(), allow_insecure=True,
                                    dial=peer.memory_dial(nursery), backoff=Backoff(jitter=0.0))
        await nursery.start(client.run)
        assert trio.current_time() == 0.5  # one initial backoff delay
        assert [s.authenticated for s in peer.sessions] == [False, True]
        assert client.statistics().connect_failures == 1
        nursery.cancel_scope.cancel()


async def test_requests_wait_until_on_connected_has_reconciled(autojump_clock):
    peer = ScriptedPeer()

    async def on_connected(conn: Connection) -> None:
        await trio.sleep(3.0)  # a slow reconciliation
        await conn.request(GetOrders())

    async with guarded_nursery() as nursery:
        client = ReconnectingClient("ws://127.0.0.1/", creds(), allow_insecure=True,
                                    dial=peer.memory_dial(nursery), on_connected=on_connected)
        nursery.start_soon(client.run)
        await client.request(GetBalances())  # issued at t=0, before any session exists
        assert trio.current_time() == 3.0
        session = peer.sessions[0]
        assert [type(c) for c in session.commands] == [Authenticate, GetOrders, GetBalances]
        nursery.cancel_scope.cancel()


async def test_reconnect_waits_for_a_stuck_consumer_to_drain(autojump_clock):
    flood = [BalanceChanged(asset=GBP, balance=i) for i in range(20)]

    async def on_command(session: PeerSession, command: Command) -> None:
        if session.index == 1:
            await session.send_many(flood)
        await session.reply_default(command)

    peer = ScriptedPeer(on_command=on_command)
    opts = ConnectionOptions(max_own_notices=10)
    async with guarded_nursery() as nursery:
        client = ReconnectingClient("ws://127.0.0.1/", creds(), allow_insecure=True, options=opts,
                                    dial=peer.memory_dial(nursery), backoff=Backoff(jitter=0.0))
        await nursery.start(client.run)
        with pytest.raises(ConnectionLost, match="own notice queue overflow"):
            await client.request(GetOrders())
        await trio.sleep(50.0)  # the application reads nothing: no reconnect into a stuck consumer
        assert len(peer.sessions) == 1
        events = [client.notices.receive_nowait() for _ in range(7)]  # 11 own left -> 5 (half of 10)
        assert events[0] == SessionStarted(1, 1) and events[1:] == flood[:6]
        await client.wait_connected()
        assert trio.current_time() == 50.0 + 0.5 and len(peer.sessions) == 2
        rest = drain(client)
        assert rest[:5] == flood[6:11] and isinstance(rest[5], SessionEnded) and rest[6] == SessionStarted(2, 1)
        nursery.cancel_scope.cancel()


async def test_run_once_and_stream_closes_when_run_ends(autojump_clock):
    peer = ScriptedPeer()
    async with guarded_nursery() as nursery:
        client = ReconnectingClient("ws://127.0.0.1/", None, allow_insecure=True, dial=peer.memory_dial(nursery))
        with trio.move_on_after(1.0):
            await client.run()
        with pytest.raises(RuntimeError, match="called once"):
            await client.run()
        assert [e async for e in client.notices] == [
            SessionStarted(1, None), SessionEnded(1, "closed by the application")
        ]
        with pytest.raises(ConnectionLost, match="not running"):
            await client.request(GetBalances())
        nursery.cancel_scope.cancel()
