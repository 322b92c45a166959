"""The exchange server over real WebSocket on 127.0.0.1 (port 0): frames, auth, limits, F2.

Raw JSON text goes in and the exact text (or its parsed dict) comes out, so these tests pin
what any client would see on the wire.  Time-dependent behaviour (idle timeout, slow readers,
chaos) is in test_exchange_server_time.py under virtual time.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from engine.errors import ConfigError
from engine.exchange.server import serve_exchange
from tests.test_exchange_server_support import (
    BASE,
    COUNTER,
    RawClient,
    authenticate_frame,
    limit_order,
    make_exchange,
)

NOT_AUTH = "You are not authenticated."


async def _eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (real time, bounded) for the server side of a closed socket to catch up."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling a counter of another task, bounded
            await trio.sleep(0.005)


async def _serve(nursery: trio.Nursery, **options: object):  # type: ignore[no-untyped-def]
    ex = make_exchange()
    server = await nursery.start(lambda task_status: serve_exchange(ex, task_status=task_status, **options))
    return ex, server


async def test_url_and_welcome_first_with_fresh_16_byte_nonce(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    assert server.url == f"ws://127.0.0.1:{server.port}/" and server.port > 0
    nonces = []
    for _ in range(3):
        async with open_websocket_url(server.url) as ws:
            text = await ws.get_message()
            first = json.loads(text)
            assert list(first) == ["notice", "nonce"] and first["notice"] == "Welcome"
            assert len(first["nonce"]) == 24
            assert len(base64.b64decode(first["nonce"], validate=True)) == 16
            nonces.append(first["nonce"])
    assert len(set(nonces)) == 3  # a fresh server nonce per connection (X7)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"method":"GetBalances"}', '{"error_code":7,"error_msg":"You are not authenticated."}'),
        ('{"method":"GetBalances","tag":0}', '{"error_code":7,"error_msg":"You are not authenticated."}'),
        ('{"method":"GetBalances","tag":42}', '{"tag":42,"error_code":7,"error_msg":"You are not authenticated."}'),
        ('{"tag":-3,"method":"GetOrders"}', '{"tag":-3,"error_code":7,"error_msg":"You are not authenticated."}'),
        # keep-alive style frames: error replies, never a disconnect
        ("{}", '{"error_code":8,"error_msg":"You must specify a method."}'),
        ('{"tag":5}', '{"tag":5,"error_code":8,"error_msg":"You must specify a method."}'),
        ('{"tag":0}', '{"error_code":8,"error_msg":"You must specify a method."}'),
    ],
)
async def test_exact_reply_and_tag_echoed_iff_nonzero(nursery: trio.Nursery, frame: str, expected: str) -> None:
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        await ws.get_message()  # Welcome
        await ws.send_message(frame)
        assert await ws.get_message() == expected
        # The connection lives on and still answers.
        await ws.send_message('{"method":"WatchTicker","base":63488,"counter":64032,"watch":false,"tag":9}')
        reply = json.loads(await ws.get_message())
        assert reply["tag"] == 9 and reply["error_code"] == 1


@pytest.mark.parametrize(
    ("frame", "tag"),
    [
        ("[]", None),
        ('"hello"', None),
        ("{not json", None),
        ('{"method":"Nope","tag":4}', 4),
        ('{"method":"GetBalances","tag":true}', None),  # a bool is not an integer tag
        ('{"method":"PlaceOrder","tag":6,"base":63488,"counter":64032,"quantity":1.5,"price":10}', 6),
        ('{"method":"PlaceOrder","tag":8,"base":63488,"counter":64032,"quantity":99999999999999999999,"price":1}', 8),
        # too deep to read even the tag: the reply cannot echo it
        ('{"method":"GetBalances","tag":3,"x":' + "[" * 5000 + "]" * 5000 + "}", None),
    ],
)
async def test_bad_frames_get_error_8_and_the_connection_survives(
    nursery: trio.Nursery, frame: str, tag: int | None
) -> None:
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        await c.welcome()
        reply = await c.request(frame)
        assert reply["error_code"] == 8 and reply["error_msg"]
        assert reply.get("tag") == tag
        await c.login()  # still a working connection
    assert server.statistics().bad_commands == 1


async def test_deep_nesting_gets_error_8(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        await c.welcome()
        reply = await c.request("[" * 30000 + "]" * 30000)
        assert reply["error_code"] == 8
        assert "tag" not in reply
        assert (await c.request('{"tag":1}'))["tag"] == 1


async def test_notices_never_carry_a_tag(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        await c.login()
        reply = await c.request(limit_order(100_000, 3_000_000, tag=11, tonce=5))
        assert reply["tag"] == 11 and reply["error_code"] == 0
        # the order's notices may arrive before the reply (legal) or after it
        while len(c.notices) < 2:
            c.notices.append(await c.recv())
        kinds = [n["notice"] for n in c.notices]
        assert kinds == ["BalanceChanged", "OrderOpened"]
        assert all("tag" not in n for n in c.notices)
        assert c.notices[1]["tonce"] == 5


async def test_oversized_frame_closes_1009_and_others_are_unaffected(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery, max_message_size=4096)
    async with open_websocket_url(server.url) as healthy, open_websocket_url(server.url) as big:
        h = RawClient(healthy)
        await h.welcome()
        await big.get_message()
        await big.send_message('{"method":"GetBalances","pad":"' + "x" * 5000 + '"}')
        with pytest.raises(ConnectionClosed) as e:
            await big.get_message()
        assert e.value.reason.code == 1009
        await h.login()
        assert (await h.request({"method": "GetBalances", "tag": 2}))["error_code"] == 0
    await _eventually(lambda: server.statistics().closed_oversize == 1)


async def test_binary_frame_closes_with_1003(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        await ws.get_message()
        await ws.send_message(b'{"method":"GetBalances"}')
        with pytest.raises(ConnectionClosed) as e:
            await ws.get_message()
        assert e.value.reason.code == 1003
        assert "binary" in (e.value.reason.reason or "")
    assert server.statistics().closed_binary == 1


async def test_only_path_slash_is_served(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    with pytest.raises(ConnectionRejected) as e:
        async with open_websocket_url(server.url + "v1/feed"):
            pass  # pragma: no cover
    assert e.value.status_code == 404


# -- authentication (AUTH.md, RELIABILITY X4) ---------------------------------------------


def _flip_bit(b64: str, bit: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[bit // 8] ^= 1 << (bit % 8)
    return base64.b64encode(bytes(raw)).decode()


async def test_demo_credentials_log_in_with_a_fresh_signature(nursery: trio.Nursery) -> None:
    ex, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        nonce = await c.welcome()
        assert await c.request(authenticate_frame(nonce, tag=77)) == {"tag": 77, "error_code": 0}
        balances = await c.request({"method": "GetBalances"})
        assert balances["error_code"] == 0
        assert {b["asset"]: b["balance"] for b in balances["balances"]} == {
            a: avail for a, (avail, _) in ex.balances(1).items()
        }


async def test_x4_forged_authentications_are_refused(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery)
    bad_sig = "You sent an incorrect signature. This probably means you used a wrong passphrase."
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        nonce = await c.welcome()
        good = authenticate_frame(nonce)
        r, s = good["signature"]
        forgeries = [
            ({**good, "signature": [_flip_bit(r, 3), s]}, 7, bad_sig),
            ({**good, "signature": [r, _flip_bit(s, 200)]}, 7, bad_sig),
            ({**good, "signature": [s, r]}, 7, bad_sig),
            ({**good, "signature": [r, r]}, 7, bad_sig),
            ({**good, "cookie": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}, 7, "You sent an incorrect login cookie."),
            ({**good, "user_id": 2}, 7, bad_sig),  # user 2 exists (demo) but the signature is user 1's
            ({**good, "user_id": 99}, 1, "There is no such user."),
            (authenticate_frame(nonce, passphrase="open sesame"), 7, bad_sig),
            ({**good, "signature": [r[:-4] + "====", s]}, 7, bad_sig),  # not 28 bytes
        ]
        for frame, code, msg in forgeries:
            assert await c.request(frame) == {"error_code": code, "error_msg": msg}, frame
            # still not logged in
            assert (await c.request({"method": "GetOrders"}))["error_msg"] == NOT_AUTH
        # The untampered frame still works on this connection: the failures were the forgeries'.
        assert await c.request(good) == {"error_code": 0}
        # One Authenticate per connection (our rule; the spec is silent).
        again = await c.request(authenticate_frame(nonce))
        assert again["error_code"] == 8

    # Replay of that captured valid frame on a NEW connection: fresh server nonce, refused.
    async with open_websocket_url(server.url) as ws2:
        c2 = RawClient(ws2)
        assert await c2.welcome() != nonce
        assert await c2.request(good) == {"error_code": 7, "error_msg": bad_sig}
        assert (await c2.request({"method": "GetBalances"}))["error_msg"] == NOT_AUTH


# -- persist:false on disconnect (RELIABILITY F2) -----------------------------------------


async def test_f2_persist_false_orders_cancelled_on_disconnect_persist_true_survive(nursery: trio.Nursery) -> None:
    ex, server = await _serve(nursery)
    async with open_websocket_url(server.url) as wsw, open_websocket_url(server.url) as wsb:
        watcher = RawClient(wsw)  # another session of user 1, and a book watcher
        await watcher.login()
        other = RawClient(wsb)
        await other.login()
        assert (await watcher.request({"method": "WatchOrders", "base": BASE, "counter": COUNTER,
                                       "watch": True}))["orders"] == []
        kept_elsewhere = (await other.request(limit_order(1_000, 2_000_000, persist=False)))["id"]
        async with open_websocket_url(server.url) as wsa:
            a = RawClient(wsa)
            await a.login()
            volatile = (await a.request(limit_order(100_000, 2_900_000, persist=False)))["id"]
            durable = (await a.request(limit_order(200_000, 2_800_000, persist=True)))["id"]
            default = (await a.request(limit_order(-300_000, 3_100_000)))["id"]
            assert {o.id for o in ex.open_orders(1)} == {kept_elsewhere, volatile, durable, default}
        # A is gone: its persist:false order is cancelled; the watcher sees it closed.
        closed = []
        with trio.fail_after(5):
            while not closed:
                n = await watcher.recv()
                if n.get("notice") == "OrderClosed":
                    closed.append(n)
        assert closed[0]["id"] == volatile and closed[0]["quantity"] == 100_000
        assert {o.id for o in ex.open_orders(1)} == {kept_elsewhere, durable, default}
        # persist:false is per connection: the other session's order was not touched.
        orders = await other.request({"method": "GetOrders", "tag": 1})
        assert {o["id"] for o in orders["orders"]} == {kept_elsewhere, durable, default}
        ex.check_invariants()


# -- limits and binding -------------------------------------------------------------------


async def test_connections_per_ip_are_limited(nursery: trio.Nursery) -> None:
    _, server = await _serve(nursery, max_connections_per_ip=2)
    async with open_websocket_url(server.url) as a, open_websocket_url(server.url) as b:
        await a.get_message()
        await b.get_message()
        with pytest.raises(ConnectionRejected) as e:
            async with open_websocket_url(server.url):
                pass  # pragma: no cover
        assert e.value.status_code == 503
        assert server.statistics().refused_limit == 1
    # Slots come back when connections close.
    await _eventually(lambda: server.statistics().open_connections == 0)
    async with open_websocket_url(server.url) as d:
        assert json.loads(await d.get_message())["notice"] == "Welcome"


async def test_non_loopback_bind_needs_explicit_flag() -> None:
    ex = make_exchange()
    with pytest.raises(ConfigError, match="refusing to bind '0.0.0.0'"):
        await serve_exchange(ex, "0.0.0.0", 0)
    with pytest.raises(ConfigError, match="nonce_seed is for tests only"):
        await serve_exchange(ex, "0.0.0.0", 0, allow_remote=True, nonce_seed=1)


async def test_unknown_or_bad_options_are_refused() -> None:
    ex = make_exchange()
    with pytest.raises(ConfigError, match="unknown server option.*idle_timout"):
        await serve_exchange(ex, idle_timout=5)
    with pytest.raises(ConfigError, match="send_queue_frames must be a positive integer"):
        await serve_exchange(ex, send_queue_frames=0)


async def test_no_secrets_in_logs(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        await c.login()
        await c.request(authenticate_frame(c.nonce, cookie="HGREqcILTz8blHa/jsUTVTNBJlg="))
    text = caplog.text
    assert "HGREqcILTz8blHa" not in text and "opensesame" not in text


async def test_shutdown_closes_clients_with_1001_and_cancels_their_volatile_orders(nursery: trio.Nursery) -> None:
    ex, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        c = RawClient(ws)
        await c.login()
        volatile = await c.request(limit_order(10_000, 2_000_000, persist=False))
        durable = await c.request(limit_order(10_000, 1_900_000))
        with trio.fail_after(10):
            await server.shutdown()
        assert server.statistics().open_connections == 0
        with pytest.raises(ConnectionClosed) as e:
            while True:
                await ws.get_message()
        assert e.value.reason.code == 1001
    assert [o.id for o in ex.open_orders(1)] == [durable["id"]] and volatile["id"] != durable["id"]
    # New connections are refused while shutting down.
    with pytest.raises(ConnectionRejected) as rej:
        async with open_websocket_url(server.url):
            pass  # pragma: no cover
    assert rej.value.status_code == 503


async def test_a_core_exception_closes_only_that_connection_with_1011(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ex, server = await _serve(nursery)
    real_handle = ex.handle

    def broken(session, cmd):  # type: ignore[no-untyped-def]
        if type(cmd).__name__ == "GetOrders":
            raise RuntimeError("simulated core bug")
        return real_handle(session, cmd)

    monkeypatch.setattr(ex, "handle", broken)
    async with open_websocket_url(server.url) as ws, open_websocket_url(server.url) as other:
        c = RawClient(ws)
        await c.login()
        await c.send({"method": "GetOrders", "tag": 1})
        with pytest.raises(ConnectionClosed) as e:
            while True:
                await ws.get_message()
        assert e.value.reason.code == 1011
        o = RawClient(other)
        await o.login()
        assert (await o.request({"method": "GetBalances"}))["error_code"] == 0
    assert server.statistics().internal_errors == 1
    assert "exchange core raised on GetOrders" in caplog.text


async def test_notices_of_one_command_go_out_in_one_socket_write(nursery: trio.Nursery) -> None:
    """Commands from connections and from in-process sessions (participants) alike: the
    frames one command delivers to a connection are written with one system call, in order."""
    from engine.protocol.messages import PlaceOrder

    ex, server = await _serve(nursery)
    async with open_websocket_url(server.url) as ws:
        client = RawClient(ws)
        await client.login(1)
        for method in ("WatchOrders", "WatchTicker"):
            rep = await client.request({"method": method, "base": BASE, "counter": COUNTER, "watch": True})
            assert rep["error_code"] == 0
        await _eventually(lambda: len(server._open) == 1)
        conn = next(iter(server._open))
        writes: list[bytes] = []
        original = conn.ws.write_nowait

        def counting(data: bytes) -> bool:
            writes.append(data)
            return original(data)

        conn.ws.write_nowait = counting  # type: ignore[method-assign]
        other = ex.open_internal_session(2)
        reply = ex.handle(other, PlaceOrder(base=BASE, counter=COUNTER, quantity=-1000, price=3000000))
        assert reply.error_code == 0
        assert len(writes) == 1 and writes[0].count(b'"notice"') == 2  # OrderOpened + TickerChanged
        names = [(await client.recv())["notice"] for _ in range(2)]
        assert names == ["OrderOpened", "TickerChanged"]
        # A command from the connection itself: its notices and the reply, one write.
        writes.clear()
        await client.send(limit_order(1000, 3000000, tag=9))  # takes the ask: several notices
        rep = await client.reply()
        assert rep["tag"] == 9 and rep["error_code"] == 0
        assert len(writes) == 1 and writes[0].count(b'"notice"') == len(client.notices) >= 3
