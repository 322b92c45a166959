"""engine.ws: the lean RFC 6455 transport, over real loopback TCP (port 0).

Peers: our own client and server, a raw socket speaking hand-made frames (to break the rules
on purpose), and independent implementations (trio-websocket's client and server, which sit
on wsproto).
"""

from __future__ import annotations

import base64
import functools
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio_websocket

from engine.errors import HandshakeFailed, WebSocketClosed
from engine.ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseReason,
    WebSocket,
    accept_key,
    accept_request,
    connect,
    encode_frame,
)

Handler = Callable[[WebSocket], Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler, *, max_message_size: int = 1 << 16,
                 failures: list[HandshakeFailed] | None = None, path: str = "/") -> int:
    """A lean server on 127.0.0.1:0 running ``handler`` per connection; returns the port."""

    async def on_stream(stream: trio.SocketStream) -> None:
        try:
            request = await accept_request(stream, max_message_size=max_message_size)
        except HandshakeFailed as e:
            if failures is not None:
                failures.append(e)
            return
        if request.path != path:
            await request.reject(404, b"no such path\n")
            return
        ws = await request.accept()
        try:
            await handler(ws)
        except WebSocketClosed:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, on_stream, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _echo(ws: WebSocket) -> None:
    while True:
        await ws.send(await ws.receive())


async def _client(port: int, *, max_message_size: int = 1 << 16, resource: str = "/") -> WebSocket:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return await connect(stream, f"127.0.0.1:{port}", resource, max_message_size=max_message_size)


class Raw:
    """A hand-driven client: our own handshake bytes and frames, so it can break the rules."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True) -> Raw:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            await raw.stream.send_all(
                f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await raw.read_head()
            assert head.startswith(b"HTTP/1.1 101 ")
            assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head
        return raw

    @classmethod
    async def accept(cls, stream: trio.SocketStream) -> Raw:
        """The server role: read the client's handshake and accept it, by hand."""
        raw = cls(stream)
        head = (await raw.read_head()).decode()
        key = next(line.split(": ", 1)[1] for line in head.split("\r\n") if line.lower().startswith("sec-websocket-key"))
        await stream.send_all(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode())
        return raw

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            if not await self._more():
                break
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        return head

    async def read_all(self) -> bytes:
        while await self._more():
            pass
        return bytes(self.buf)

    async def frame(self) -> tuple[int, bool, bytes]:
        """The next server frame: (opcode, fin, payload); server frames are never masked."""
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "the server masked a frame"
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127:
                    n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
                if len(self.buf) >= pos + n:
                    payload = bytes(self.buf[pos : pos + n])
                    del self.buf[: pos + n]
                    return b0 & 0x0F, bool(b0 & 0x80), payload
            if not await self._more():
                raise EOFError("connection closed")

    async def close_frame(self) -> CloseReason:
        """Skip data frames until the server's close frame; return its code and reason."""
        while True:
            op, _, payload = await self.frame()
            if op == OP_CLOSE:
                return CloseReason(struct.unpack("!H", payload[:2])[0], payload[2:].decode())

    async def send(self, op: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        await self.stream.send_all(encode_frame(op, payload, mask=mask, fin=fin))


# -- handshake ---------------------------------------------------------------------------


def test_accept_key_is_the_rfc_example():
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
async def test_text_and_binary_round_trip_at_every_length_encoding(nursery, size):
    port = await _serve(nursery, _echo, max_message_size=1 << 20)
    ws = await _client(port, max_message_size=1 << 20)
    text = ("é" * size)[:size] if size < 200 else "x" * size
    await ws.send(text)
    assert await ws.receive() == text
    blob = os.urandom(size)
    await ws.send(blob)
    assert await ws.receive() == blob
    await ws.aclose()
    assert ws.closed == CloseReason(1000, "")


async def test_server_rejects_a_wrong_path_with_404_and_the_client_says_so(nursery):
    port = await _serve(nursery, _echo, path="/")
    with pytest.raises(HandshakeFailed, match="HTTP 404: no such path") as info:
        await _client(port, resource="/elsewhere")
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("request_head", "status", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "missing Upgrade: websocket"),
        (b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400, "not a GET"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n", 400, "Connection: Upgrade"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 426, "Version"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n", 400, "16 bytes"),
        (b"GET / HTTP/1.1\r\nbroken header line\r\n\r\n", 400, "malformed header"),
    ],
)
async def test_bad_handshakes_get_an_http_error_naming_the_problem(nursery, request_head, status, why):
    failures: list[HandshakeFailed] = []
    port = await _serve(nursery, _echo, failures=failures)
    raw = await Raw.open(port, handshake=False)
    await raw.stream.send_all(request_head)
    answer = await raw.read_all()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert why.encode() in answer
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in answer
    await trio.testing.wait_all_tasks_blocked()
    assert [f.status for f in failures] == [status] and why in str(failures[0])


async def test_client_refuses_a_101_with_a_wrong_accept_key(nursery):
    async def fake(stream: trio.SocketStream) -> None:
        await Raw(stream).read_head()
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n")
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, fake, 0, host="127.0.0.1"))
    with pytest.raises(HandshakeFailed, match="wrong Sec-WebSocket-Accept"):
        await _client(listeners[0].socket.getsockname()[1])


async def test_bytes_sent_right_after_the_handshake_are_not_lost(nursery):
    """A client may pipeline its first frame behind the request; the server must keep it."""
    port = await _serve(nursery, _echo)
    raw = Raw(await trio.open_tcp_stream("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await raw.stream.send_all(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + encode_frame(OP_TEXT, b"early", mask=True)
    )
    assert (await raw.read_head()).startswith(b"HTTP/1.1 101")
    assert await raw.frame() == (OP_TEXT, True, b"early")


# -- frames: fragmentation, control frames, masking --------------------------------------


async def test_fragmented_message_with_a_ping_in_between_is_reassembled_and_the_ping_answered(nursery):
    got: list[str | bytes] = []

    async def collect(ws: WebSocket) -> None:
        got.append(await ws.receive())
        await ws.send("done")

    port = await _serve(nursery, collect)
    raw = await Raw.open(port)
    await raw.send(OP_TEXT, "hé".encode()[:2], fin=False)  # splits the é across frames
    await raw.send(OP_PING, b"are you there")
    await raw.send(OP_CONT, "hé".encode()[2:], fin=False)
    await raw.send(OP_CONT, b" world", fin=True)
    assert await raw.frame() == (OP_PONG, True, b"are you there")
    assert await raw.frame() == (OP_TEXT, True, b"done")
    assert got == ["hé world"]


@pytest.mark.parametrize(
    ("frames", "code", "why"),
    [
        ([(OP_TEXT, b"plain", True, False)], 1002, "unmasked"),
        ([(OP_CONT, b"x", True, True)], 1002, "continuation frame without"),
        ([(OP_TEXT, b"a", False, True), (OP_TEXT, b"b", True, True)], 1002, "inside a fragmented"),
        ([(OP_PING, b"p", False, True)], 1002, "fragmented control"),
        ([(OP_PING, b"p" * 126, True, True)], 1002, "over 125 bytes"),
        ([(0x3, b"", True, True)], 1002, "unknown opcode"),
        ([(OP_TEXT, b"\xff\xfe", True, True)], 1007, "not valid UTF-8"),
        ([(OP_CLOSE, b"\x03\xed", True, True)], 1002, "1005 is not allowed"),
    ],
)
async def test_protocol_violations_close_with_the_right_code(nursery, frames, code, why):
    seen: list[WebSocketClosed] = []

    async def reader(ws: WebSocket) -> None:
        try:
            while True:
                await ws.receive()
        except WebSocketClosed as e:
            seen.append(e)

    port = await _serve(nursery, reader)
    raw = await Raw.open(port)
    for op, payload, fin, mask in frames:
        await raw.send(op, payload, fin=fin, mask=mask)
    close = await raw.close_frame()
    assert close.code == code and why in close.reason
    await trio.testing.wait_all_tasks_blocked()
    assert seen and seen[0].reason.code == code


async def test_reserved_bits_close_with_1002(nursery):
    port = await _serve(nursery, _echo)
    raw = await Raw.open(port)
    frame = bytearray(encode_frame(OP_TEXT, b"x", mask=True))
    frame[0] |= 0x40  # RSV1 without permessage-deflate
    await raw.stream.send_all(bytes(frame))
    assert (await raw.close_frame()).code == 1002


async def test_client_closes_with_1002_when_the_server_masks(nursery):
    async def masking_server(stream: trio.SocketStream) -> None:
        raw = await Raw.accept(stream)
        await stream.send_all(encode_frame(OP_TEXT, b"masked", mask=True))
        while len(raw.buf) < 2:
            await raw._more()
        closes.append((raw.buf[0] & 0x0F, bool(raw.buf[1] & 0x80)))

    closes: list[tuple[int, bool]] = []
    listeners = await nursery.start(functools.partial(trio.serve_tcp, masking_server, 0, host="127.0.0.1"))
    ws = await _client(listeners[0].socket.getsockname()[1])
    with pytest.raises(WebSocketClosed, match="1002 PROTOCOL_ERROR: the server sent a masked frame"):
        await ws.receive()
    await trio.testing.wait_all_tasks_blocked()
    # The client's close frame reached the server, masked as a client's must be.
    assert closes == [(OP_CLOSE, True)]


async def test_client_frames_are_masked_text_frames(nursery):
    frames: list[bytes] = []

    async def sniff(stream: trio.SocketStream) -> None:
        raw = await Raw.accept(stream)
        while len(raw.buf) < 2 + 4 + 5:
            await raw._more()
        frames.append(bytes(raw.buf))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, sniff, 0, host="127.0.0.1"))
    ws = await _client(listeners[0].socket.getsockname()[1])
    await ws.send("hello")
    await trio.testing.wait_all_tasks_blocked()
    frame = frames[0]
    assert frame[0] == 0x80 | OP_TEXT and frame[1] == 0x80 | 5  # FIN, text; MASK bit, 5 bytes
    mask = frame[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:11])) == b"hello"


# -- size limit, ping/pong, close ----------------------------------------------------------


async def test_oversized_message_closes_with_1009_from_the_header_alone(nursery):
    port = await _serve(nursery, _echo, max_message_size=1000)
    raw = await Raw.open(port)
    # Only the header of a 1 MiB frame: the server must not wait for the payload.
    await raw.stream.send_all(struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, 1 << 20) + b"MASK")
    close = await raw.close_frame()
    assert close.code == 1009 and "1000-byte limit" in close.reason


async def test_oversized_fragmented_message_closes_with_1009(nursery):
    port = await _serve(nursery, _echo, max_message_size=1000)
    raw = await Raw.open(port)
    await raw.send(OP_BINARY, b"x" * 600, fin=False)
    await raw.send(OP_CONT, b"x" * 600, fin=True)
    assert (await raw.close_frame()).code == 1009


async def test_ping_waits_for_its_pong(nursery):
    port = await _serve(nursery, _echo)
    ws = await _client(port)
    messages: list[Any] = []
    got = trio.Event()

    async def read() -> None:
        try:
            while True:
                messages.append(await ws.receive())
                got.set()
        except WebSocketClosed:
            pass

    nursery.start_soon(read)
    with trio.fail_after(5):
        await ws.ping(b"one")
        await ws.send("after")
        await got.wait()
    assert messages == ["after"]
    with pytest.raises(ValueError, match="at most 125 bytes"):
        await ws.ping(b"x" * 126)


async def test_close_handshake_carries_code_and_reason_both_ways(nursery):
    closed_by_server: list[CloseReason | None] = []

    async def closer(ws: WebSocket) -> None:
        assert await ws.receive() == "bye please"
        await ws.aclose(1001, "going away now")
        closed_by_server.append(ws.closed)

    port = await _serve(nursery, closer)
    ws = await _client(port)
    await ws.send("bye please")
    with pytest.raises(WebSocketClosed) as info:
        await ws.receive()
    assert info.value.reason == CloseReason(1001, "going away now")
    assert info.value.reason.name == "GOING_AWAY"
    await trio.testing.wait_all_tasks_blocked()
    assert closed_by_server == [CloseReason(1001, "going away now")]
    # A send after the close is refused, not silently dropped.
    with pytest.raises(WebSocketClosed):
        await ws.send("too late")


async def test_dropped_tcp_is_1006(nursery):
    async def drop(ws: WebSocket) -> None:
        await ws.receive()
        await trio.aclose_forcefully(ws.stream)

    port = await _serve(nursery, drop)
    ws = await _client(port)
    await ws.send("x")
    with pytest.raises(WebSocketClosed) as info:
        await ws.receive()
    assert info.value.reason.code == 1006


async def test_write_nowait_keeps_order_when_the_socket_fills_up(nursery):
    """Writes that the socket does not take wait in order for flush(); nothing is lost."""
    received: list[bytes] = []
    go, done = trio.Event(), trio.Event()

    async def slow_reader(ws: WebSocket) -> None:
        await go.wait()
        while len(received) < count:
            received.append(await ws.receive())  # type: ignore[arg-type]
        done.set()

    port = await _serve(nursery, slow_reader, max_message_size=1 << 20)
    ws = await _client(port)
    count = 0
    blob = os.urandom(60_000)
    while ws.write_nowait(ws.frame(blob[:-8] + count.to_bytes(8, "big"))) and count < 10_000:
        count += 1
    count += 1  # the one the socket took only in part
    assert ws.pending_bytes > 0, "the socket never filled up"
    go.set()
    with trio.fail_after(10):
        await ws.flush()
        await done.wait()
    assert [int.from_bytes(m[-8:], "big") for m in received] == list(range(count))


# -- independent peers ---------------------------------------------------------------------


async def test_trio_websocket_client_talks_to_our_server(nursery):
    port = await _serve(nursery, _echo)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as client:
        await client.send_message("über")
        assert await client.get_message() == "über"
        await client.send_message(b"\x00\x01")
        assert await client.get_message() == b"\x00\x01"
        with trio.fail_after(5):
            await client.ping(b"hb")  # answered by our server's receive()
        big = "y" * 50_000
        await client.send_message(big)
        assert await client.get_message() == big


async def test_our_client_talks_to_a_trio_websocket_server(nursery):
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            if message == "close":
                await ws.aclose(4000, "as asked")
                return
            await ws.send_message(message)

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    ws = await _client(server.port)
    await ws.send("hello")
    assert await ws.receive() == "hello"
    await ws.send(b"\xff")
    assert await ws.receive() == b"\xff"
    await ws.send("close")
    with pytest.raises(WebSocketClosed) as info:
        await ws.receive()
    assert info.value.reason == CloseReason(4000, "as asked") and info.value.reason.name == "PRIVATE"


async def test_our_client_over_a_memory_stream_uses_the_generic_path():
    """Streams that are not plain TCP (TLS, memory) go through the stream's own methods."""
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await accept_request(server_end)
            ws = await request.accept()
            await ws.send(await ws.receive())

        nursery.start_soon(serve)
        ws = await connect(client_end, "example.com", "/")
        assert not ws.write_nowait(ws.frame("queued"))  # no socket: waits for flush
        await ws.flush()
        assert await ws.receive() == "queued"


async def test_client_acks_what_it_read_before_idling_over_tcp():
    """The client pushes the TCP ACK it owes (TCP_QUICKACK 2) when its reader goes idle
    after reading, once per idle; the server never does (bench latency: the owed ACK would
    otherwise go out inside the exchange's next write)."""
    import socket

    from engine.ws import _QUICKACK

    if _QUICKACK is None:
        pytest.skip("TCP_QUICKACK is Linux only")
    calls: list[tuple[str, tuple[int, int, int]]] = []
    got = trio.Event()

    def spy(role: str, sock: Any) -> None:
        real = sock.setsockopt

        def setsockopt(*args: Any) -> Any:
            if args[:2] == (socket.IPPROTO_TCP, _QUICKACK):
                calls.append((role, args))
            return real(*args)

        sock.setsockopt = setsockopt

    async def serve(stream: Any) -> None:
        spy("server", stream.socket)
        ws = await (await accept_request(stream)).accept()
        await ws.send("one")
        await ws.send("two")
        await got.wait()
        await ws.send("three")
        assert await ws.receive() == "bye"

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        spy("client", stream.socket)
        ws = await connect(stream, "127.0.0.1")
        assert calls == []  # the handshake is not the reader
        assert [await ws.receive(), await ws.receive()] == ["one", "two"]
        got.set()
        assert await ws.receive() == "three"  # it waited at least once after reading
        assert calls and {role for role, _ in calls} == {"client"}
        assert all(args[2] == 2 for _, args in calls)
        n = len(calls)
        nursery.start_soon(ws.receive)  # idles after reading "three": one ACK, then it waits
        await trio.testing.wait_all_tasks_blocked()
        assert len(calls) == n + 1
        await ws.send("bye")
        nursery.cancel_scope.cancel()
