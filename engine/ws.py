"""A lean RFC 6455 WebSocket over any trio stream, read and written in the caller's task.

Both the client :class:`~engine.connection.Connection` and the exchange server use it::

    ws = await connect(stream, "example.com", "/", max_message_size=1 << 20)   # client
    request = await accept_request(stream, max_message_size=64 * 1024)        # server
    ws = await request.accept()            # or: await request.reject(404, b"not here\\n")
    message = await ws.receive()           # str (text) or bytes (binary); pings answered inside
    await ws.send("{}")                    # one frame, one socket write
    await ws.aclose(1000, "bye")           # close handshake, then the stream is closed

Why not trio-websocket (which this replaced on the hot path, ``cftrade bench latency``):
trio-websocket runs a reader task per connection and hands every message through a memory
channel, so each received message costs a task switch, and every send goes through wsproto
and a lock.  Here :meth:`WebSocket.receive` parses frames in the task that awaits it, straight
from the socket: on a plain TCP socket it calls ``recv`` itself and only waits
(``trio.lowlevel.wait_readable``) when nothing is there, so a message that wakes the task is
parsed and returned without a further scheduler round.  Sends are queued as bytes and written
at once when no other write is in progress (:meth:`WebSocket.write_nowait`, a plain ``def``
the exchange core can call mid-command); whatever the socket does not take waits for
:meth:`WebSocket.flush`.  Wire order is always the order of the calls.

What it implements (and the tests in ``tests/test_ws.py`` check, over loopback TCP and against
independent peers): the opening handshake (``Sec-WebSocket-Key``/``-Accept``, version 13;
bad requests get an HTTP 400 or 426 and :class:`~engine.errors.HandshakeFailed`), masking
(the client masks every frame with a fresh key; the server closes with 1002 on an unmasked
frame, the client on a masked one), fragmentation (continuation frames, control frames in
between), ping/pong (pings are answered by whichever task is in :meth:`~WebSocket.receive`),
the close handshake with codes and reasons, invalid UTF-8 (1007), protocol errors (1002) and
the message size limit (1009, checked on the frame header before the payload is read).
No extensions and no subprotocols are negotiated: offers are ignored, which RFC 6455 allows.

One task at a time may call :meth:`~WebSocket.receive`; any number may send.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio

from engine.errors import HandshakeFailed, WebSocketClosed

__all__ = [
    "CloseReason",
    "HandshakeRequest",
    "WebSocket",
    "accept_request",
    "connect",
    "encode_frame",
    "text_frame",
]

log = logging.getLogger("engine.ws")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE = 16 * 1024  # bytes of HTTP head we read before calling it a bad request
RECEIVE_SIZE = 64 * 1024
_IPPROTO_TCP = socket.IPPROTO_TCP
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NAMES = {
    1000: "NORMAL_CLOSURE",
    1001: "GOING_AWAY",
    1002: "PROTOCOL_ERROR",
    1003: "UNSUPPORTED_DATA",
    1005: "NO_STATUS_RCVD",
    1006: "ABNORMAL_CLOSURE",
    1007: "INVALID_FRAME_PAYLOAD_DATA",
    1008: "POLICY_VIOLATION",
    1009: "MESSAGE_TOO_BIG",
    1010: "MANDATORY_EXT",
    1011: "INTERNAL_ERROR",
    1012: "SERVICE_RESTART",
    1013: "TRY_AGAIN_LATER",
    1014: "BAD_GATEWAY",
}
# Codes a peer may put in a close frame (RFC 6455 7.4.1; 1005, 1006 and 1015 never go on the wire).
_SENDABLE = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))

_HTTP_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 426: "Upgrade Required",
                 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class CloseReason:
    """Why a WebSocket closed: the close ``code`` (1005 when the peer gave none, 1006 when
    the connection ended without a close frame) and the peer's or our ``reason`` text."""

    code: int
    reason: str = ""

    @property
    def name(self) -> str:
        if 3000 <= self.code < 5000:
            return "APPLICATION" if self.code < 4000 else "PRIVATE"
        return CLOSE_NAMES.get(self.code, "UNKNOWN")

    def __str__(self) -> str:
        text = f"{self.code} {self.name}"
        return f"{text}: {self.reason[:120]}" if self.reason else text


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")  # noqa: S324 - the RFC's hash


# -- frames ------------------------------------------------------------------------------


def _xor(payload: bytes, mask: bytes) -> bytes:
    """Apply a 4-byte WebSocket mask: one big-int XOR instead of a Python loop per byte."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _MaskKeys:
    """Masking keys from ``os.urandom`` (RFC 6455 10.3: unpredictable), 4 KiB at a time:
    one system call per 1,024 client frames instead of one per frame."""

    __slots__ = ("_pool", "_i")

    def __init__(self) -> None:
        self._pool = b""
        self._i = 0

    def __call__(self) -> bytes:
        i = self._i
        if i >= len(self._pool):
            self._pool = os.urandom(4096)
            i = 0
        self._i = i + 4
        return self._pool[i : i + 4]


_mask_key = _MaskKeys()


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """One frame (header + payload); masked with a fresh random key when ``mask``."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        key = _mask_key()
        return head + key + _xor(payload, key)
    return head + payload


# The headers of unfragmented text frames under 126 bytes (most notices), by payload
# length: one tuple index instead of building them per frame; from 126 bytes (an order
# command with its tag and tonce) the 16-bit length follows a fixed first two bytes.
_TEXT_HEADS = tuple(bytes((0x80 | OP_TEXT, n)) for n in range(126))
_MASKED_TEXT_HEADS = tuple(bytes((0x80 | OP_TEXT, 0x80 | n)) for n in range(126))
_TEXT_16 = bytes((0x80 | OP_TEXT, 126))
_MASKED_TEXT_16 = bytes((0x80 | OP_TEXT, 0x80 | 126))


def text_frame(utf8: bytes, *, mask: bool) -> bytes:
    """One unfragmented text frame: :func:`encode_frame` for ``OP_TEXT`` without its general
    header packing (this is on the path of every notice and every order)."""
    n = len(utf8)
    if n < 126:
        head = _MASKED_TEXT_HEADS[n] if mask else _TEXT_HEADS[n]
    elif n < 65536:
        head = (_MASKED_TEXT_16 if mask else _TEXT_16) + n.to_bytes(2, "big")
    else:
        return encode_frame(OP_TEXT, utf8, mask=mask)
    if not mask:
        return head + utf8
    key = _mask_key()
    return head + key + _xor(utf8, key)


def _close_payload(code: int, reason: str) -> bytes:
    raw = reason.encode("utf-8")
    while len(raw) > 123:  # control frames carry at most 125 bytes; cut on a character boundary
        reason = reason[:-1]
        raw = reason.encode("utf-8")
    return struct.pack("!H", code) + raw


class _PeerError(Exception):
    """The peer broke the protocol; close with ``code``."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


# -- the connection ----------------------------------------------------------------------


class WebSocket:
    """An open WebSocket (made by :func:`connect` or :meth:`HandshakeRequest.accept`).

    ``client=True`` masks outgoing frames and refuses masked incoming ones; the server role
    is the reverse.  Messages over ``max_message_size`` bytes close the connection with 1009.
    """

    def __init__(self, stream: trio.abc.Stream, *, client: bool, max_message_size: int = 1 << 20,
                 buffered: bytes = b"") -> None:
        self.stream = stream
        self.client = client
        self.max_message_size = max_message_size
        self._buf = bytearray(buffered)
        self._out = bytearray()
        self._send_lock = trio.Lock()
        # True while flush() has taken bytes off _out and not yet written them all: the span
        # in which a direct write would interleave.  A plain flag, not _send_lock.locked()
        # (a Python call, made before every order sent and every exchange write).
        self._flushing = False
        # A plain TCP socket is read and written with direct non-blocking system calls;
        # anything else (TLS, memory streams) goes through the stream's own methods.
        # (The socket is trio's own, non-blocking; os.read/os.write on its descriptor are
        # recv/send without flags.  fileno() is -1 once trio closed it.)
        self._sock: trio.socket.SocketType | None = stream.socket if isinstance(stream, trio.SocketStream) else None
        # The descriptor's getter, bound once: the stdlib socket's own C method when trio's
        # socket wraps one (trio's fileno() is a Python call forwarding to it, on every
        # read and write of a tick; both answer -1 once the socket is closed).
        self._fileno: Callable[[], int] | None = (
            None if self._sock is None else getattr(self._sock, "_sock", self._sock).fileno
        )
        # The client acknowledges what it has read before it waits (see _ack_now).
        self._ack_when_idle = client and self._sock is not None and _QUICKACK is not None
        self._ack_owed = False  # bytes were read since the reader last idled
        self._close_sent = False
        self._closed: CloseReason | None = None
        self._close_received = trio.Event()
        self._pongs: dict[bytes, trio.Event] = {}
        self._receiving = False
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._fragment_size = 0
        self._clock = trio.lowlevel.current_clock().current_time  # = trio.current_time, 2 calls fewer
        self.last_traffic = self._clock()
        """trio time of the last bytes received or sent (pings and pongs count)."""
        self._role = "client" if client else "server"

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> CloseReason | None:
        """None while open; why it closed otherwise."""
        return self._closed

    @property
    def sending(self) -> bool:
        """True while a :meth:`flush` is writing (new bytes then queue behind it)."""
        return self._flushing

    @property
    def idle(self) -> bool:
        """Nothing queued and no flush writing: a write would go to the socket at once (one
        test for ``not pending_bytes and not sending``, made before every order sent)."""
        return not self._out and not self._flushing

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for the socket and not yet written."""
        return len(self._out)

    # -- sending ---------------------------------------------------------------------------

    def frame(self, message: str | bytes) -> bytes:
        """The wire bytes of one data frame for ``message`` in this connection's role."""
        if isinstance(message, str):
            return encode_frame(OP_TEXT, message.encode("utf-8"), mask=self.client)
        return encode_frame(OP_BINARY, message, mask=self.client)

    def text_frame(self, utf8: bytes) -> bytes:
        """The wire bytes of one text frame whose payload is already UTF-8 encoded."""
        if self.client:  # an order command: text_frame's masked case, inline
            n = len(utf8)
            if 126 <= n < 65536:
                key = _mask_key()
                return _MASKED_TEXT_16 + n.to_bytes(2, "big") + key + _xor(utf8, key)
            if n < 126:
                key = _mask_key()
                return _MASKED_TEXT_HEADS[n] + key + _xor(utf8, key)
        return text_frame(utf8, mask=self.client)

    def write_nowait(self, data: bytes) -> bool:
        """Queue wire bytes and write as much as the socket takes now, without blocking.

        True when everything queued so far is written; otherwise the rest waits for the
        next :meth:`flush` (or :meth:`send`), which the caller must arrange.  Raises
        :class:`WebSocketClosed` once a close frame was sent or the connection is closed.
        """
        if self._closed is not None or self._close_sent:
            raise WebSocketClosed(self._closed or CloseReason(1006, "close already sent"))
        out = self._out
        out += data
        fileno = self._fileno
        if fileno is not None and not self._flushing:
            fd = fileno()
            if fd < 0:
                return False  # closed under us: flush() reports it
            try:
                n = os.write(fd, out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return False  # flush() meets the same error and reports it
            del out[:n]
            self.last_traffic = self._clock()
        return not out

    async def flush(self) -> None:
        """Write everything queued (one ``send_all`` per batch; waits while the peer is slow)."""
        async with self._send_lock:
            out = self._out
            try:
                while out:
                    data = bytes(out)
                    out.clear()
                    self._flushing = True
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                        self._closed = self._closed or CloseReason(1006, f"send failed: {e}")
                        raise WebSocketClosed(self._closed) from None
                    self.last_traffic = self._clock()
            finally:
                self._flushing = False

    async def send(self, message: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``) as one frame."""
        if self.write_nowait(self.frame(message)):
            await trio.lowlevel.checkpoint()
        else:
            await self.flush()

    async def send_many(self, messages: list[str]) -> None:
        """Send several text messages with one socket write."""
        mask = self.client
        self.write_nowait(b"".join([encode_frame(OP_TEXT, m.encode("utf-8"), mask=mask) for m in messages]))
        await self.flush()

    async def _send_control(self, opcode: int, payload: bytes) -> None:
        self.write_nowait(encode_frame(opcode, payload, mask=self.client))
        await self.flush()

    async def ping(self, payload: bytes) -> None:
        """Send a ping and wait for its pong (the caller owns the timeout).  Needs another
        task in :meth:`receive`, which sees the pong."""
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        event = self._pongs.setdefault(payload, trio.Event())
        await self._send_control(OP_PING, payload)
        await event.wait()

    # -- receiving -------------------------------------------------------------------------

    async def _read_more(self) -> None:
        """Append at least one byte to the buffer or raise WebSocketClosed (1006)."""
        sock, fileno = self._sock, self._fileno
        data: bytes | bytearray
        if sock is not None and fileno is not None:
            while True:
                try:
                    data = os.read(fileno(), RECEIVE_SIZE)
                except (BlockingIOError, InterruptedError):
                    if self._ack_owed:
                        self._ack_owed = False
                        self._ack_now(sock)
                    try:
                        await trio.lowlevel.wait_readable(sock)
                    except trio.ClosedResourceError as e:
                        self._closed = self._closed or CloseReason(1006, f"connection error: {e}")
                        raise WebSocketClosed(self._closed) from None
                    continue
                except OSError as e:
                    self._closed = self._closed or CloseReason(1006, f"connection error: {e}")
                    raise WebSocketClosed(self._closed) from None
                break
        else:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._closed = self._closed or CloseReason(1006, f"connection error: {e}")
                raise WebSocketClosed(self._closed) from None
        if not data:
            self._closed = self._closed or CloseReason(1006, "connection ended without a close frame")
            self._close_received.set()
            raise WebSocketClosed(self._closed)
        self._ack_owed = self._ack_when_idle
        self._buf += data
        self.last_traffic = self._clock()

    @staticmethod
    def _ack_now(sock: trio.socket.SocketType) -> None:
        """Send the TCP ACK of what was read, if one is owed, before the reader idles.

        Linux delays an ACK until the next segment we send, or until a second segment
        arrives.  A client that reads a burst (an order's fills) and then sends nothing owes
        one ACK, which the kernel sends when the exchange's next notice arrives: on loopback
        inside the exchange's ``write``, on the next tick's critical path (about 4 µs of
        the 16 µs that write took, ``cftrade bench latency``).  TCP_QUICKACK with value 2
        sends the owed ACK now and stays in delayed-ACK mode (value 1 would leave it, and
        the ACK would move into our next ``read``).  One system call when the reader idles
        after reading, outside any tick's path.
        """
        try:
            sock.setsockopt(_IPPROTO_TCP, _QUICKACK, 2)  # type: ignore[arg-type]
        except OSError:
            pass

    async def receive(self) -> str | bytes:
        """The next data message.  Pings are answered and pongs noted on the way.

        Raises :class:`WebSocketClosed` when the connection closes, for whatever reason: the
        peer's close frame (answered), a protocol error by the peer (we close with 1002,
        1007 or 1009 first), or a dropped connection (1006).
        """
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            raise WebSocketClosed(self._closed)
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebSocket")
        self._receiving = True
        try:
            if self._buf:
                # Data left over from an earlier read: let other tasks run before handing
                # it out, so a peer that streams fast cannot starve the loop.
                await trio.lowlevel.checkpoint()
            while True:
                message = self._parse()
                if message is not None:
                    if type(message) is tuple:  # a control frame to act on
                        await self._on_control(*message)
                        continue
                    return message  # type: ignore[return-value]
                await self._read_more()
        except _PeerError as e:
            await self._fail(e.code, e.why)
            raise AssertionError("unreachable") from None
        finally:
            self._receiving = False

    def _parse(self) -> str | bytes | tuple[int, bytes] | None:
        """One complete frame off the buffer: a data message, a (opcode, payload) control
        frame, or None when more bytes are needed.  Raises _PeerError."""
        while True:
            buf = self._buf
            n = len(buf)
            if n < 2:
                return None
            b0, b1 = buf[0], buf[1]
            if b0 & 0x70:
                raise _PeerError(1002, "reserved bits set without a negotiated extension")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            masked = b1 & 0x80
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if n < 4:
                    return None
                length = (buf[2] << 8) | buf[3]
                pos = 4
            elif length == 127:
                if n < 10:
                    return None
                length = int.from_bytes(buf[2:10], "big")
                if length >> 63:
                    raise _PeerError(1002, "frame length has its top bit set")
                pos = 10
            if masked:
                if self.client:
                    raise _PeerError(1002, "the server sent a masked frame")
            elif not self.client:
                raise _PeerError(1002, "the client sent an unmasked frame")
            if opcode >= 8:
                if not fin:
                    raise _PeerError(1002, "fragmented control frame")
                if length > 125:
                    raise _PeerError(1002, "control frame payload over 125 bytes")
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                if opcode == OP_CONT:
                    if not self._fragment_op:
                        raise _PeerError(1002, "continuation frame without a message to continue")
                elif self._fragment_op:
                    raise _PeerError(1002, "new data frame inside a fragmented message")
                if self._fragment_size + length > self.max_message_size:
                    raise _PeerError(1009, f"message over the {self.max_message_size}-byte limit")
            else:
                raise _PeerError(1002, f"unknown opcode {opcode:#x}")
            end = pos + (4 if masked else 0) + length
            if n < end:
                return None
            if masked:
                payload = _xor(bytes(buf[pos + 4 : end]), bytes(buf[pos : pos + 4]))
            else:
                payload = bytes(buf[pos:end])
            del buf[:end]
            if opcode >= 8:
                return (opcode, payload)
            if opcode != OP_CONT and fin:
                return self._decode(opcode, payload)
            if opcode != OP_CONT:
                self._fragment_op = opcode
            self._fragments.append(payload)
            self._fragment_size += length
            if fin:
                op = self._fragment_op
                whole = b"".join(self._fragments)
                self._fragments = []
                self._fragment_op = 0
                self._fragment_size = 0
                return self._decode(op, whole)

    @staticmethod
    def _decode(opcode: int, payload: bytes) -> str | bytes:
        if opcode == OP_BINARY:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _PeerError(1007, "text message is not valid UTF-8") from None

    async def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if not self._close_sent:
                try:
                    await self._send_control(OP_PONG, payload)
                except WebSocketClosed:
                    pass  # the next read reports the closure
        elif opcode == OP_PONG:
            event = self._pongs.pop(payload, None)
            if event is not None:
                event.set()
        else:
            await self._on_close_frame(payload)

    async def _on_close_frame(self, payload: bytes) -> None:
        if not payload:
            code, reason = 1005, ""
        elif len(payload) == 1:
            raise _PeerError(1002, "close frame with a one-byte payload")
        else:
            code = (payload[0] << 8) | payload[1]
            if code not in _SENDABLE:
                raise _PeerError(1002, f"close code {code} is not allowed on the wire")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise _PeerError(1007, "close reason is not valid UTF-8") from None
        self._close_received.set()
        log.debug("%s: close frame received: %d %s", self._role, code, reason[:120])
        if not self._close_sent:
            # Echo the peer's code (RFC 6455 5.5.1); 1005 cannot be sent, so answer 1000.
            self._closed = CloseReason(code, reason)
            await self._try_send_close(code if code != 1005 else 1000, "")
        elif self._closed is None:
            self._closed = CloseReason(code, reason)
        raise WebSocketClosed(self._closed)

    async def _try_send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        frame = encode_frame(OP_CLOSE, _close_payload(code, reason), mask=self.client)
        self._out += frame
        self._close_sent = True
        try:
            with trio.move_on_after(2.0):  # a peer that does not read must not hold us
                await self.flush()
        except WebSocketClosed:
            pass

    async def _fail(self, code: int, why: str) -> None:
        """The peer broke the protocol: send our close frame and raise WebSocketClosed."""
        log.debug("%s: closing with %d: %s", self._role, code, why)
        self._closed = self._closed or CloseReason(code, why)
        await self._try_send_close(code, why)
        raise WebSocketClosed(self._closed)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake: send a close frame, wait for the peer's, close the stream.

        The caller owns the timeout (``with trio.move_on_after(...)``); the stream is closed
        whatever happens.  Idempotent.
        """
        try:
            if self._closed is None:
                self._closed = CloseReason(code, reason)
            await self._try_send_close(code, reason)
            if not self._close_received.is_set():
                if self._receiving:
                    await self._close_received.wait()  # that task sees the peer's close frame
                else:
                    try:
                        while True:
                            await self.receive()  # data after our close frame is discarded
                    except WebSocketClosed:
                        pass
        finally:
            self.abort()
            await trio.aclose_forcefully(self.stream)

    def abort(self) -> None:
        """Mark the connection closed without a handshake (the stream is the caller's to close)."""
        if self._closed is None:
            self._closed = CloseReason(1006, "aborted")
        self._sock = self._fileno = None


# -- the opening handshake ---------------------------------------------------------------


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the headers (lower-case names; repeated headers joined by ", ")."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise ValueError("undecodable HTTP head") from None
    lines = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:60]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return lines[0], headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """Read up to the blank line ending an HTTP head; returns (head, bytes after it)."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end]), bytes(buf[end + 4 :])
        if len(buf) > MAX_HANDSHAKE:
            raise HandshakeFailed(f"HTTP head over {MAX_HANDSHAKE} bytes", status=431)
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise HandshakeFailed(f"connection failed during the WebSocket handshake: {e}") from None
        if not data:
            raise HandshakeFailed("connection closed during the WebSocket handshake")
        buf += data


async def connect(stream: trio.abc.Stream, host: str, resource: str = "/", *,
                  max_message_size: int = 1 << 20) -> WebSocket:
    """Client side: send the opening handshake on ``stream`` and check the answer.

    Raises :class:`HandshakeFailed` (``status`` set) when the server refuses (any status
    but 101) or answers without a valid ``Sec-WebSocket-Accept``.  The caller owns the timeout.
    """
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = (
        f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        await stream.send_all(request.encode("latin-1"))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise HandshakeFailed(f"connection failed during the WebSocket handshake: {e}") from None
    head, rest = await _read_head(stream)
    try:
        status_line, headers = _parse_head(head)
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[0].startswith("HTTP/1.") else 0
    except ValueError:
        status, headers = 0, {}
    if status != 101:
        body = rest[:200].decode("utf-8", "replace").strip()
        what = f"HTTP {status}" if status else "a malformed HTTP response"
        raise HandshakeFailed(f"server answered {what}" + (f": {body}" if body else ""), status=status)
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
            headers.get("connection", "")):
        raise HandshakeFailed("101 response without Upgrade: websocket / Connection: Upgrade", status=101)
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeFailed("101 response with a wrong Sec-WebSocket-Accept", status=101)
    if headers.get("sec-websocket-extensions") or headers.get("sec-websocket-protocol"):
        raise HandshakeFailed("server selected an extension or subprotocol the client did not offer", status=101)
    log.debug("client: WebSocket open to %s%s", host, resource)
    return WebSocket(stream, client=True, max_message_size=max_message_size, buffered=rest)


class HandshakeRequest:
    """A valid opening handshake a server has read; :meth:`accept` or :meth:`reject` it."""

    def __init__(self, stream: trio.abc.Stream, path: str, headers: dict[str, str], key: str,
                 rest: bytes, max_message_size: int) -> None:
        self.stream = stream
        self.path = path
        """The request target, e.g. ``/`` or ``/?x=1``."""
        self.headers = headers
        """Request headers, names in lower case."""
        self._key = key
        self._rest = rest
        self._max = max_message_size

    async def accept(self) -> WebSocket:
        """Send 101 Switching Protocols; returns the open :class:`WebSocket` (server role)."""
        response = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(self._key)}\r\n\r\n"
        )
        try:
            await self.stream.send_all(response.encode("latin-1"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise HandshakeFailed(f"connection failed during the WebSocket handshake: {e}") from None
        return WebSocket(self.stream, client=False, max_message_size=self._max, buffered=self._rest)

    async def reject(self, status: int, body: bytes = b"") -> None:
        """Answer with an HTTP error (e.g. 404, 503) and close the stream."""
        await _send_http_error(self.stream, status, body)


async def _send_http_error(stream: trio.abc.Stream, status: int, body: bytes,
                           extra: str = "") -> None:
    head = (f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    try:
        await stream.send_all(head.encode("latin-1") + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def accept_request(stream: trio.abc.Stream, *, max_message_size: int = 64 * 1024) -> HandshakeRequest:
    """Server side: read and check a client's opening handshake.

    A request that is not a valid WebSocket upgrade is answered here (400, or 426 for a
    wrong version), the stream closed, and :class:`HandshakeFailed` raised with that status.
    The caller owns the timeout (a slowloris guard).
    """
    head, rest = await _read_head(stream)
    why = ""
    status = 400
    extra = ""
    try:
        request_line, headers = _parse_head(head)
    except ValueError as e:
        request_line, headers, why = "", {}, str(e)
    parts = request_line.split(" ")
    key = headers.get("sec-websocket-key", "")
    if why:
        pass
    elif len(parts) != 3 or parts[0] != "GET" or parts[2] not in ("HTTP/1.1",):
        why = f"not a GET HTTP/1.1 request: {request_line[:80]!r}"
    elif "websocket" not in _tokens(headers.get("upgrade", "")):
        why = "missing Upgrade: websocket"
    elif "upgrade" not in _tokens(headers.get("connection", "")):
        why = "missing Connection: Upgrade"
    elif headers.get("sec-websocket-version") != "13":
        why, status, extra = "unsupported Sec-WebSocket-Version (only 13)", 426, "Sec-WebSocket-Version: 13\r\n"
    else:
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                why = "Sec-WebSocket-Key must be 16 bytes, base64"
        except ValueError:
            why = "Sec-WebSocket-Key is not base64"
    if why:
        log.debug("server: refusing a WebSocket handshake with %d: %s", status, why)
        await _send_http_error(stream, status, f"Bad WebSocket handshake: {why}\n".encode(), extra)
        raise HandshakeFailed(f"bad WebSocket handshake: {why}", status=status)
    return HandshakeRequest(stream, parts[1], headers, key, rest, max_message_size)
