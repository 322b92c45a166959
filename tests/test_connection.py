"""The trio client connection against tests/scripted_peer.py.

Real WebSocket over 127.0.0.1 port 0 where the transport matters (login, 10,000 pipelined
commands, dropped TCP); trio-websocket over memory streams with ``autojump_clock`` where time
matters (keep-alive, dead peers, late replies, pacing), asserting exact virtual times.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from engine.connection import (
    Connection,
    ConnectionOptions,
    Credentials,
    FeedGap,
    ReplyEvent,
    SessionEnded,
    SessionStarted,
    open_connection,
)
from engine.errors import (
    AlreadyWatching,
    AuthenticationFailed,
    ConfigError,
    ConnectFailed,
    ConnectionLost,
    ExchangeError,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    RateLimitExceeded,
    RemoteProtocolError,
    SecretError,
    TonceOutOfSequence,
    TooManyOrders,
)
from engine.governor import Governor
from engine.protocol import auth
from engine.protocol.codec import CODEC
from engine.protocol.messages import (
    BalanceChanged,
    Command,
    GetBalances,
    GetOrders,
    GetTradeVolume,
    GetTradeVolumeReply,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    TickerChanged,
    TradeVolumeChanged,
)
from engine.secret import Secret
from tests.scripted_peer import DEFAULT_USER, PeerSession, ScriptedPeer, error

XBT, GBP, EUR = 1, 2, 3


def creds(passphrase: str = "opensesame", cookie: str = DEFAULT_USER.cookie, user_id: int = 1) -> Credentials:
    return Credentials(user_id, Secret(cookie, "cookie"), Secret(passphrase, "passphrase"))


def place(**kw: Any) -> PlaceOrder:
    args = dict(base=XBT, counter=GBP, quantity=100_000_000, price=40_000_00, tonce=1)
    args.update(kw)
    return PlaceOrder(**args)


def unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    """The helpers' nurseries wrap a body's exception in a group; hand back the one inside
    so ``pytest.raises(ConnectionLost)`` works around them."""
    return group.exceptions[0] if len(group.exceptions) == 1 else group


@asynccontextmanager
async def tcp_url(peer: ScriptedPeer) -> AsyncIterator[str]:
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            yield f"ws://127.0.0.1:{port}/"
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap(group) from None


@asynccontextmanager
async def memory_connection(
    peer: ScriptedPeer, credentials: Credentials | None = None, **kw: Any
) -> AsyncIterator[Connection]:
    try:
        async with trio.open_nursery() as nursery:
            async with open_connection(
                "ws://127.0.0.1/", credentials if credentials is not None else creds(),
                allow_insecure=True, dial=peer.memory_dial(nursery), **kw,
            ) as conn:
                yield conn
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap(group) from None


def drain(conn: Connection) -> list[Any]:
    out = []
    while True:
        try:
            out.append(conn.notices.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


# -- login (P1, F11, X1) ------------------------------------------------------------------


async def test_P1_login_signature_verified_by_peer():
    peer = ScriptedPeer()
    async with tcp_url(peer) as url, open_connection(url, creds(), allow_insecure=True) as conn:
        session = peer.sessions[0]
        assert session.authenticated and session.user_id == 1 and conn.user_id == 1
        (cmd,) = session.commands
        # A fresh client nonce each time, the signature over uid || server || client nonce
        message = auth.signed_message(1, session.server_nonce, auth.nonce_from_b64(cmd.nonce))
        assert auth.verify(DEFAULT_USER.public_key, message, cmd.signature)
        assert conn.notices.receive_nowait() == SessionStarted(1, 1)
        reply = await conn.request(GetBalances())
        assert reply.balances == []


async def test_F11_wrong_passphrase_raises_AuthenticationFailed_after_one_attempt():
    peer = ScriptedPeer()
    async with tcp_url(peer) as url:
        with pytest.raises(AuthenticationFailed, match="incorrect signature") as info:
            async with open_connection(url, creds("open sesame"), allow_insecure=True):
                pytest.fail("must not get here")
    assert info.value.error_code == 7
    assert [s.auth_attempts for s in peer.sessions] == [1]
    with pytest.raises(NotFound, match="no such user"):
        async with tcp_url(peer) as url, open_connection(url, creds(user_id=5), allow_insecure=True):
            pass


async def test_X1_secrets_never_logged_or_in_errors(caplog):
    caplog.set_level(logging.DEBUG)
    canary_pass, canary_cookie = "canary-pass-7f3a", "Y2FuYXJ5LWNvb2tpZQ=="
    peer = ScriptedPeer()
    good = creds(canary_pass, canary_cookie)
    key_hex = f"{auth.derive_private_key(1, canary_pass).reveal():x}"
    texts = [repr(good), str(good)]
    async with tcp_url(peer) as url:
        try:
            async with open_connection(url, good, allow_insecure=True):
                pass
        except ExchangeError as e:
            texts.append(str(e))
            texts.append(repr(e))
    texts.append(caplog.text)
    texts.extend(repr(c) for c in peer.all_commands)
    blob = "\n".join(texts)
    assert "Credentials(user_id=1, cookie=***, passphrase=***)" in blob
    for secret in (canary_pass, canary_cookie, key_hex):
        assert secret not in blob


async def test_credentials_validation_and_env():
    with pytest.raises(SecretError, match="cookie must be a Secret"):
        Credentials(1, "plain", Secret("x"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="user_id must be a positive 64-bit int"):
        Credentials(True, Secret("c"), Secret("p"))  # type: ignore[arg-type]
    env = {"CF_USER_ID": "7", "CF_COOKIE": "c00kie", "CF_PASSPHRASE": "pw"}
    c = Credentials.from_env(environ=env)
    assert c.user_id == 7 and c.cookie.reveal() == "c00kie" and "c00kie" not in repr(c)
    with pytest.raises(ConfigError, match="CF_USER_ID must hold the numeric user id"):
        Credentials.from_env(environ={**env, "CF_USER_ID": "seven"})
    with pytest.raises(SecretError, match="CF_PASSPHRASE is not set"):
        Credentials.from_env(environ={"CF_USER_ID": "7", "CF_COOKIE": "c"})


async def test_bad_welcome_is_a_connect_failure():
    peer = ScriptedPeer(welcome=False)

    async def bad_welcome(session: PeerSession) -> None:
        await session.send('{"notice":"Welcome","nonce":"c2hvcnQ="}')  # 5 bytes, not 16

    peer.on_session = bad_welcome
    with pytest.raises(ConnectFailed, match="bad Welcome .* must be 16 bytes"):
        async with memory_connection(peer):
            pass
    assert peer.all_commands == []  # no Authenticate after a bad Welcome


# -- requests (P4, B5, error mapping) ---------------------------------------------------------


async def test_P4_10000_pipelined_commands_with_shuffled_replies_reach_their_callers():
    n_commands = 10_000
    rng = random.Random(4)
    batch: list[GetTradeVolume] = []

    async def on_command(session: PeerSession, command: Command) -> None:
        assert isinstance(command, GetTradeVolume)
        batch.append(command)
        if len(batch) == n_commands:
            rng.shuffle(batch)
            # noise: an untagged reply and one with a tag nobody used
            await session.send('{"error_code":0,"volume":1}')
            await session.send('{"tag":999999999,"error_code":0,"volume":1}')
            for c in batch:
                await session.send(GetTradeVolumeReply(tag=c.tag, volume=c.asset * 3 + 1))

    peer = ScriptedPeer(on_command=on_command)
    results: dict[int, int] = {}
    async with tcp_url(peer) as url, open_connection(url, creds(), allow_insecure=True) as conn:

        async def call(i: int) -> None:
            reply = await conn.request(GetTradeVolume(asset=i, tag=7))  # any given tag is replaced
            results[i] = reply.volume

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(n_commands):
                    nursery.start_soon(call, i)
        stats = conn.statistics()
    assert results == {i: 3 * i + 1 for i in range(n_commands)}
    assert (stats.unknown_replies, stats.pending_requests, stats.malformed_frames) == (2, 0, 0)
    tags = [c.tag for c in batch]
    assert len(set(tags)) == n_commands and all(isinstance(t, int) and t > 0 for t in tags)


@pytest.mark.parametrize(
    "code, cls",
    [(1, NotFound), (2, AlreadyWatching), (3, TonceOutOfSequence), (4, InsufficientFunds),
     (5, TooManyOrders), (6, RateLimitExceeded), (7, AuthenticationFailed), (8, InvalidRequest),
     (99, ExchangeError)],
)
async def test_error_replies_raise_their_exception_class(code, cls):
    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send(error(command, code, f"spec text {code}"))

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        with pytest.raises(ExchangeError) as info:
            await conn.request(place())
        assert type(info.value) is cls
        assert (info.value.error_code, info.value.error_msg) == (code, f"spec text {code}")
        assert not conn.closed  # an error reply is a definite answer, not a broken connection


async def test_B5_late_reply_reaches_the_stream_and_duplicates_are_ignored(autojump_clock):
    async def on_command(session: PeerSession, command: Command) -> None:
        await trio.sleep(2.0)
        reply = PlaceOrderReply(tag=command.tag, id=42, time=1)
        await session.send(reply)
        await session.send(reply)  # a duplicate

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        assert conn.notices.receive_nowait() == SessionStarted(1, 1)
        with trio.move_on_after(1.0):
            await conn.request(place(tonce=9))
        event = await conn.notices.receive()
        assert trio.current_time() == 2.0
        assert isinstance(event, ReplyEvent) and event.late
        assert event.reply.id == 42 and event.command.tonce == 9
        await trio.sleep(0.1)
        stats = conn.statistics()
        assert (stats.late_replies, stats.unknown_replies, stats.pending_requests) == (1, 1, 0)


async def test_echo_puts_the_reply_at_its_wire_position():
    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send(OrderOpened(id=1, base=XBT, counter=GBP, quantity=5, price=10, time=1))
        await session.reply_default(command)
        await session.send(OrderClosed(id=1, base=XBT, counter=GBP, quantity=5, price=10))

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        reply = await conn.request(GetOrders(), echo=True)
        with trio.fail_after(5):
            events = [await conn.notices.receive() for _ in range(4)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SessionStarted", "OrderOpened", "ReplyEvent", "OrderClosed"]
    assert events[2].reply == reply and not events[2].late


# -- notices (ordering, B1, B2, B6, F8) ---------------------------------------------------------


def sample_notices() -> list[Any]:
    return [
        BalanceChanged(asset=GBP, balance=500),
        OrderOpened(id=1, base=XBT, counter=GBP, quantity=5, price=10, time=1),
        OrderOpened(id=2, tonce=7, base=XBT, counter=GBP, quantity=-5, price=11, time=2),
        OrdersMatched(bid=1, ask=2, ask_tonce=7, base=XBT, counter=GBP, quantity=5, price=10,
                      total=1, bid_rem=0, ask_rem=0, time=3, ask_base_fee=0, ask_counter_fee=0),
        OrderClosed(id=1, base=XBT, counter=GBP, quantity=0, price=10),
        OrderClosed(id=2, tonce=7, base=XBT, counter=GBP, quantity=0, price=11),
        BalanceChanged(asset=GBP, balance=499),
        TradeVolumeChanged(asset=XBT, volume=5),
        TickerChanged(base=XBT, counter=GBP, last=10),
    ]


async def test_notices_flow_in_wire_order_and_unknown_notices_are_ignored(caplog):
    notices = sample_notices()

    async def on_command(session: PeerSession, command: Command) -> None:
        for i, n in enumerate(notices):
            await session.send(n)
            if i % 3 == 0:
                await session.send('{"notice":"Foo","x":1}')  # B2: unknown notice
        await session.reply_default(command)

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        await conn.request(GetOrders())
        got = [await conn.notices.receive() for _ in range(len(notices) + 1)]
        stats = conn.statistics()
    assert got == [SessionStarted(1, 1), *notices]
    assert stats.unknown_notices == 3 and stats.malformed_frames == 0
    assert [r.getMessage() for r in caplog.records if "unknown notice" in r.getMessage()] == [
        "session 1: ignoring unknown notice 'Foo' (logged once per name)"
    ]


BAD_FRAMES: list[str | bytes] = [
    '{"notice":"OrderOpened","id":1,"base":1',  # truncated, not own
    '{"notice":"TickerChanged","base":1,"counter":2,"last":NaN}',
    '{"notice":"TickerChanged","base":1,"counter":2,"last":1e400}',
    '{"notice":"TickerChanged","base":1,"counter":2,"last":' + "9" * 5000 + "}",
    "[" * 100_000 + "]" * 100_000,
    '"\\ud800"',
    "[]",
    "5",
    "",
    "null",
    '{"notice":7}',
    '{"error_code":true}',
    '{"tag":"x","error_code":0}',
    '{"tag":3,"error_code":5}',  # error reply without error_msg
    b"\xff\xfe\x00binary",
    '{"notice":"Welcome","nonce":"azRzAi5rm1ry/l0drnz1vw=="}',  # a second Welcome
]


async def test_B1_malformed_frames_are_counted_and_survived(autojump_clock, caplog):
    good = OrderOpened(id=9, base=XBT, counter=GBP, quantity=5, price=10, time=1)

    async def on_command(session: PeerSession, command: Command) -> None:
        if isinstance(command, GetOrders):
            await session.send_many(BAD_FRAMES)
            await session.send(good)
        await session.reply_default(command)

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        await conn.request(GetOrders())
        assert drain(conn) == [SessionStarted(1, 1), good]
        assert (await conn.request(GetBalances())).balances == []  # still alive
        stats = conn.statistics()
        assert stats.open and stats.malformed_frames == len(BAD_FRAMES)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # rate-limited: one line per kind within the same second
    assert sum("malformed frame" in line for line in lines) == 1
    assert sum("binary frame" in line for line in lines) == 1


async def test_B1_damaged_own_order_frame_breaks_the_connection():
    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send('{"notice":"OrderOpened","id":1,"tonce":5,"base":1,"counter":2,"quantity":1.5}')

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        with pytest.raises(ConnectionLost, match="damaged own-order .* outcome of GetOrders"):
            await conn.request(GetOrders())
        reason = await conn.wait_closed()
        assert "reconcile" in reason
        events = drain(conn)
    assert events == [SessionStarted(1, 1), SessionEnded(1, reason)]


async def test_damaged_reply_outcome_unknown_and_order_replies_break_the_connection():
    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send(f'{{"tag":{command.tag},"error_code":0,"balances":"x","id":"x"}}')

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        with pytest.raises(RemoteProtocolError, match="damaged reply to GetBalances"):
            await conn.request(GetBalances())
        assert not conn.closed  # an info reply: only that caller is affected
        with pytest.raises(RemoteProtocolError, match="damaged reply to PlaceOrder.*outcome unknown"):
            await conn.request(place())
        assert "damaged reply to PlaceOrder" in await conn.wait_closed()
        assert conn.statistics().malformed_frames == 2


async def test_B6_oversized_frame_closes_with_1009():
    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send('{"notice":"Foo","pad":"' + "x" * 5000 + '"}')

    opts = ConnectionOptions(max_frame=4096)
    async with memory_connection(ScriptedPeer(on_command=on_command), options=opts) as conn:
        with pytest.raises(ConnectionLost):
            await conn.request(GetOrders())
        assert "1009" in await conn.wait_closed()
        assert conn.statistics().oversized_frames == 1


async def test_F8_ticker_flood_is_conflated_and_pings_still_answered(autojump_clock):
    flood = 20_000

    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send(TickerChanged(base=XBT, counter=GBP, bid=5, last=0))
        for i in range(1, flood):
            await session.send(TickerChanged(base=XBT, counter=GBP, last=i))
        await session.reply_default(command)

    peer = ScriptedPeer(on_command=on_command)
    async with memory_connection(peer, options=ConnectionOptions(message_queue_size=1)) as conn:
        await conn.request(GetOrders())
        await trio.sleep(100.0)  # the application reads nothing for 100 virtual seconds
        stats = conn.statistics()
        assert stats.open and stats.dead_peers == 0 and stats.pings_sent == 2
        assert peer.sessions[0].tap.pings == [45.0, 90.0]
        assert stats.notices.tickers_conflated == flood - 1
        assert drain(conn) == [SessionStarted(1, 1), TickerChanged(base=XBT, counter=GBP, bid=5, last=flood - 1)]


async def test_F8_public_flood_leaves_a_gap_marker_and_keeps_own_notices():
    def opened(i: int, counter: int = GBP) -> OrderOpened:
        return OrderOpened(id=i, base=XBT, counter=counter, quantity=1, price=10, time=i)

    own = [BalanceChanged(asset=GBP, balance=i) for i in range(10)]

    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send_many([opened(i) for i in range(150)] + own + [opened(i, EUR) for i in range(5)])
        await session.reply_default(command)

    opts = ConnectionOptions(max_public_notices=100)
    async with memory_connection(ScriptedPeer(on_command=on_command), options=opts) as conn:
        await conn.request(GetOrders())
        events = drain(conn)
        stats = conn.statistics()
    assert events == [
        SessionStarted(1, 1), *[opened(i) for i in range(100)], FeedGap(1, XBT, GBP), *own, FeedGap(1, XBT, EUR)
    ]
    assert stats.open and stats.notices.dropped_public == 55 and stats.notices.feed_gaps == 2


async def test_F8_own_notice_overflow_breaks_the_connection_loudly():
    own = [BalanceChanged(asset=GBP, balance=i) for i in range(60)]

    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send_many(own)
        await session.reply_default(command)

    opts = ConnectionOptions(max_own_notices=50)
    async with memory_connection(ScriptedPeer(on_command=on_command), options=opts) as conn:
        with pytest.raises(ConnectionLost, match="own notice queue overflow"):
            await conn.request(GetOrders())
        reason = await conn.wait_closed()
        events = [e async for e in conn.notices]  # ends: the queue closed with the connection
    assert events == [SessionStarted(1, 1), *own[:51], SessionEnded(1, reason)]


# -- liveness and closing (F7, F1) ----------------------------------------------------------------


async def test_F7_keepalive_pings_after_45s_of_silence(autojump_clock):
    peer = ScriptedPeer()
    async with memory_connection(peer) as conn:
        await trio.sleep(100.0)
        session = peer.sessions[0]
        assert session.tap.pings == [45.0, 90.0]
        await trio.sleep(20.0)  # t=120
        await session.send(BalanceChanged(asset=GBP, balance=1))  # traffic resets the timer
        await trio.sleep(100.0)
        assert session.tap.pings == [45.0, 90.0, 135.0 + 30.0, 210.0]
        assert conn.statistics().open and conn.statistics().last_traffic == 210.0


async def test_F7_dead_peer_detected_by_missing_pong(autojump_clock):
    peer = ScriptedPeer()
    async with memory_connection(peer) as conn:
        await trio.sleep(10.0)
        peer.sessions[0].blackhole()  # half-open: nothing in, nothing out
        with trio.fail_after(120), pytest.raises(ConnectionLost, match="no pong within 15 s .* outcome of GetOrders"):
            await conn.request(GetOrders())
        assert trio.current_time() == 60.0  # ping at 45 s, pong deadline 15 s later
        assert "half-open" in await conn.wait_closed()
        assert conn.statistics().dead_peers == 1


async def test_F1_peer_drops_tcp_pending_request_raises_ConnectionLost():
    async def on_command(session: PeerSession, command: Command) -> None:
        if isinstance(command, GetOrders):
            await session.drop()
        else:
            await session.reply_default(command)

    peer = ScriptedPeer(on_command=on_command)
    async with tcp_url(peer) as url, open_connection(url, creds(), allow_insecure=True) as conn:
        with trio.fail_after(10):
            await conn.request(GetBalances())
            with pytest.raises(ConnectionLost, match=r"outcome of GetOrders \(tag 3\) is unknown"):
                await conn.request(GetOrders())
            reason = await conn.wait_closed()
            assert "peer closed the connection" in reason
            with pytest.raises(ConnectionLost, match="the command was not sent"):
                await conn.request(GetBalances())
            events = [e async for e in conn.notices]
    assert events == [SessionStarted(1, 1), SessionEnded(1, reason)]


async def test_aclose_fails_pending_requests_and_closes_cleanly():
    async def never(session: PeerSession, command: Command) -> None:
        pass

    peer = ScriptedPeer(on_command=never)
    async with memory_connection(peer) as conn:
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await conn.request(GetOrders())
            except ConnectionLost as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(0.01)
            await conn.aclose()
        assert len(errors) == 1 and "closed by the application" in str(errors[0])
        await conn.aclose()  # idempotent
    with trio.fail_after(5):
        await peer.sessions[0].closed.wait()


async def test_governor_paces_requests_at_exact_times(autojump_clock):
    peer = ScriptedPeer()
    governor = Governor(safety_factor=1.0)
    async with memory_connection(peer, governor=governor) as conn:
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(conn.request, GetBalances())
    session = peer.sessions[0]
    times = [t for c, t in zip(session.commands, session.received_at, strict=True) if isinstance(c, GetBalances)]
    assert times == [0.0] * 10 + [10.0] * 2
    assert governor.statistics().metrics["auth"].granted == 1


async def test_unauthenticated_session_for_public_feeds():
    peer = ScriptedPeer()
    async with trio.open_nursery() as nursery:
        async with open_connection("ws://localhost/", None, allow_insecure=True, dial=peer.memory_dial(nursery)) as conn:
            assert conn.notices.receive_nowait() == SessionStarted(1, None)
            with pytest.raises(AuthenticationFailed, match="not authenticated"):
                await conn.request(GetBalances())
        nursery.cancel_scope.cancel()


def test_encoded_commands_never_carry_float_or_bool_numbers():
    # The codec is the only way out; a sanity check that requests encode integers only.
    text = CODEC.encode_text(place(tag=5))
    assert "." not in text and "true" not in text


# -- the inline path: send_nowait, reply callbacks, after_frame (bench latency) -----------


async def test_send_nowait_writes_at_once_and_refuses_without_a_token():
    """send_nowait never waits: the socket takes the frame now, and with no governor token
    left it raises WouldBlock, taking nothing and sending nothing."""
    peer = ScriptedPeer()
    governor = Governor(safety_factor=1.0)
    async with tcp_url(peer) as url:
        async with open_connection(url, creds(), governor=governor, allow_insecure=True) as conn:
            sent = [conn.send_nowait(GetBalances()) for _ in range(10)]  # the info budget: 10 per 10 s
            with pytest.raises(trio.WouldBlock):
                conn.send_nowait(GetBalances())
            assert governor.statistics().metrics["info"].granted == 10
            for waiter in sent:
                assert type(await waiter.wait()).__name__ == "GetBalancesReply"
    tags = [c.tag for c in peer.sessions[0].commands if isinstance(c, GetBalances)]
    assert tags == [w.tag for w in sent]  # ten on the wire, in call order


async def test_send_nowait_over_a_memory_stream_leaves_the_write_to_the_writer_task(autojump_clock):
    """No socket to write to directly: the frame waits for the connection's writer task,
    and until it is written a further send_nowait says WouldBlock (wire order kept)."""
    async with memory_connection(ScriptedPeer()) as conn:
        first = conn.send_nowait(GetBalances())
        with pytest.raises(trio.WouldBlock):
            conn.send_nowait(GetBalances())
        await first.wait()
        second = conn.send_nowait(GetBalances())
        assert second.tag == first.tag + 1
        await second.wait()


async def test_on_done_runs_in_the_reader_and_abandon_makes_the_reply_late():
    release = trio.Event()

    async def on_command(session: PeerSession, command: Command) -> None:
        if command.tonce == 2:
            await release.wait()
        await session.send(PlaceOrderReply(tag=command.tag, id=command.tonce, time=1))

    async with tcp_url(ScriptedPeer(on_command=on_command)) as url:
        async with open_connection(url, creds(), allow_insecure=True) as conn:
            assert conn.notices.receive_nowait() == SessionStarted(1, 1)
            calls: list[int] = []
            got_first = trio.Event()
            first = conn.send_nowait(place(tonce=1))
            first.on_done(lambda: (calls.append(first.result().id), got_first.set()))
            second = conn.send_nowait(place(tonce=2))
            second.on_done(lambda: calls.append(-1))
            with pytest.raises(trio.WouldBlock):
                second.result()
            with trio.fail_after(5):
                await got_first.wait()
            assert calls == [1] and first.done and not second.done
            second.abandon()  # gave up: its reply will be late, and the callback is not called
            release.set()
            with trio.fail_after(5):
                event = await conn.notices.receive()
            assert isinstance(event, ReplyEvent) and event.late and event.reply.id == 2
            assert calls == [1]
            first.on_done(lambda: calls.append(0))  # the outcome is known: runs at once
            assert calls == [1, 0]


async def test_pending_commands_fail_through_their_callbacks_when_the_connection_dies():
    async def on_command(session: PeerSession, command: Command) -> None:
        if isinstance(command, PlaceOrder):
            await session.drop()

    async with memory_connection(ScriptedPeer(on_command=on_command)) as conn:
        outcomes: list[str] = []
        waiter = conn.send_nowait(place(tonce=5))

        def done() -> None:
            try:
                waiter.result()
            except ConnectionLost as e:
                outcomes.append(str(e))

        waiter.on_done(done)
        await conn.wait_closed()
    assert len(outcomes) == 1 and "outcome of PlaceOrder (tag 2) is unknown" in outcomes[0]


async def test_after_frame_consumes_events_in_the_reader_without_waking_the_queue(autojump_clock):
    """The inline consumer sees each frame's events right after the frame; a task waiting
    on the queue is not woken for events the consumer took (and is, for any it left)."""
    peer = ScriptedPeer()
    async with memory_connection(peer) as conn:
        shared = conn._shared
        taken: list[Any] = []
        leave: list[bool] = [False]

        def after() -> None:
            if not leave[0]:
                while True:
                    try:
                        taken.append(conn.notices.receive_nowait())
                    except trio.WouldBlock:
                        return

        woken: list[float] = []

        async def waiter() -> None:
            while True:
                await conn.notices.wait_event()
                woken.append(trio.current_time())
                if leave[0]:
                    return

        drain(conn)
        shared.after_frame = after
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            session = await peer.wait_sessions(1)
            await session.send(BalanceChanged(asset=GBP, balance=7))
            await trio.sleep(1)
            assert [type(e).__name__ for e in taken] == ["BalanceChanged"] and woken == []
            leave[0] = True
            await session.send(BalanceChanged(asset=GBP, balance=8))
            await trio.sleep(1)
            assert woken == [1.0]
            assert conn.notices.receive_nowait() == BalanceChanged(asset=GBP, balance=8)
