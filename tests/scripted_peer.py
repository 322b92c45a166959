"""A minimal Coinfloor-protocol WebSocket peer, scripted per test.

Not an exchange: it sends Welcome, verifies Authenticate exactly as AUTH.md says (cookie
compared in constant time, signature checked with ``engine.protocol.auth.verify`` against the
public key derived from the user's passphrase), answers a few commands with empty defaults,
and hands every other command to the test's ``on_command(session, command)``.  Tests use it
to produce what a real exchange rarely does on demand: reordered replies, malformed frames,
dropped TCP connections, half-open connections, floods.

Two ways in:

* ``port = await nursery.start(peer.serve)`` - real WebSocket over TCP on 127.0.0.1 port 0
  (``ssl_context=`` serves TLS);
* ``dial = peer.memory_dial(nursery)`` - pass to ``open_connection(..., dial=dial)``: each
  connection is a ``trio.testing.memory_stream_pair`` handled by the peer, for tests that run
  under ``autojump_clock``.

Each connection is a :class:`PeerSession` (``peer.sessions``) that records the commands it
received (and when), the frames the client sent (pings included, via :class:`TapStream`),
and offers ``send``, ``drop`` (abrupt TCP close, RST on sockets) and ``blackhole`` (stop
reading and writing: a half-open connection).
"""

from __future__ import annotations

import hmac
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed

from engine.client.urls import Target
from engine.errors import RemoteProtocolError
from engine.protocol import auth
from engine.protocol.codec import CODEC, BadCommand
from engine.protocol.messages import (
    UNSET,
    Authenticate,
    AuthenticateReply,
    Command,
    ErrorReply,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    GetOrdersReply,
    GetTradeVolume,
    GetTradeVolumeReply,
    Notice,
    Reply,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
    Welcome,
)
from engine.secret import Secret

OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 1, 2, 8, 9, 10


@dataclass(frozen=True)
class PeerUser:
    user_id: int
    cookie: str
    passphrase: str
    public_key: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = auth.public_key(auth.derive_private_key(self.user_id, Secret(self.passphrase)))
        object.__setattr__(self, "public_key", key)


# The AUTH.md example user.
DEFAULT_USER = PeerUser(1, "HGREqcILTz8blHa/jsUTVTNBJlg=", "opensesame")


def tag_of(command: Command) -> Any:
    """The tag to echo: the command's tag iff given and non-zero (WEBSOCKET-README)."""
    return command.tag if command.tag not in (UNSET, 0) else UNSET


def error(command: Command | None, code: int, msg: str) -> ErrorReply:
    return ErrorReply(tag=tag_of(command) if command is not None else UNSET, error_code=code, error_msg=msg)


class TapStream(trio.abc.Stream):
    """Wraps the peer's byte stream: records each client frame's (trio time, opcode) after
    the HTTP handshake, and can turn into a black hole (half-open connection)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.blackholed = False
        self.frames: list[tuple[float, int]] = []
        self._buf = bytearray()
        self._in_handshake = True

    @property
    def pings(self) -> list[float]:
        return [t for t, op in self.frames if op == OPCODE_PING]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.blackholed:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.blackholed:
            await trio.sleep_forever()
        data = await self.inner.receive_some(max_bytes)
        if self.blackholed:
            await trio.sleep_forever()
        self._parse(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _parse(self, data: bytes | bytearray) -> None:
        buf = self._buf
        buf += data
        if self._in_handshake:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self._in_handshake = False
        while len(buf) >= 2:
            opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = struct.unpack("!Q", buf[2:10])[0], 10
            if buf[1] & 0x80:
                pos += 4  # client frames are masked
            if len(buf) < pos + length:
                return
            self.frames.append((trio.current_time(), opcode))
            del buf[: pos + length]


class PeerSession:
    """One client connection as the scripted peer sees it."""

    def __init__(self, peer: ScriptedPeer, index: int, tap: TapStream) -> None:
        self.peer = peer
        self.index = index
        self.tap = tap
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.server_nonce = auth.new_nonce()
        self.commands: list[Command] = []
        self.received_at: list[float] = []
        self.user_id: int | None = None
        self.auth_attempts = 0
        self.closed = trio.Event()

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None

    def commands_of(self, kind: type[Command]) -> list[Any]:
        return [c for c in self.commands if isinstance(c, kind)]

    async def send(self, message: Reply | Notice | str | bytes) -> None:
        assert self.ws is not None
        if isinstance(message, str | bytes):
            await self.ws.send_message(message)
        else:
            await self.ws.send_message(CODEC.encode_text(message))

    async def send_many(self, messages: Iterable[Reply | Notice | str | bytes]) -> None:
        for m in messages:
            await self.send(m)

    async def drop(self) -> None:
        """Abrupt close without a WebSocket close frame (an RST on real sockets)."""
        inner = self.tap.inner
        sock = getattr(inner, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(inner)

    def blackhole(self) -> None:
        """Stop reading and writing while keeping the connection open (half-open)."""
        self.tap.blackholed = True

    async def reply_default(self, command: Command) -> None:
        await self.send(self.peer.default_reply(self, command))


CommandHandler = Callable[[PeerSession, Command], Awaitable[None]]
SessionHandler = Callable[[PeerSession], Awaitable[None]]


class ScriptedPeer:
    """See the module docstring.  ``users`` are the accounts Authenticate accepts."""

    def __init__(
        self,
        users: Iterable[PeerUser] = (DEFAULT_USER,),
        *,
        on_command: CommandHandler | None = None,
        on_session: SessionHandler | None = None,
        welcome: bool = True,
    ) -> None:
        self.users = {u.user_id: u for u in users}
        self.on_command = on_command
        self.on_session = on_session
        self.welcome = welcome
        self.sessions: list[PeerSession] = []
        self.connections_seen = 0
        self._lot = trio.lowlevel.ParkingLot()

    # -- ways in -------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        ssl_context: Any = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host`` port 0; reports the port through ``nursery.start``."""
        async with trio.open_nursery() as nursery:
            if ssl_context is None:
                listeners = await nursery.start(partial(trio.serve_tcp, self.handle_stream, 0, host=host))
                sock = listeners[0].socket
            else:
                listeners = await nursery.start(
                    partial(trio.serve_ssl_over_tcp, self.handle_stream, 0, ssl_context, host=host,
                            https_compatible=True)
                )
                sock = listeners[0].transport_listener.socket
            task_status.started(sock.getsockname()[1])

    def memory_dial(self, nursery: trio.Nursery) -> Callable[[Target], Awaitable[trio.abc.Stream]]:
        """A ``dial`` for open_connection: every connection is a memory stream pair."""

        async def dial(target: Target) -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(self.handle_stream, server)
            return client

        return dial

    async def wait_sessions(self, count: int) -> PeerSession:
        """Wait until ``count`` sessions were accepted; return the latest."""
        while len(self.sessions) < count:
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        return self.sessions[count - 1]

    @property
    def all_commands(self) -> list[Command]:
        return [c for s in self.sessions for c in s.commands]

    # -- one connection ------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        self.connections_seen += 1
        tap = TapStream(stream)
        session = PeerSession(self, len(self.sessions) + 1, tap)
        try:
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, tap, message_queue_size=4096)
                ws = await request.accept()
                session.ws = ws
                self.sessions.append(session)
                self._lot.unpark_all()
                try:
                    if self.welcome:
                        await session.send(Welcome(nonce=auth.b64_nonce(session.server_nonce)))
                    if self.on_session is not None:
                        await self.on_session(session)
                    while True:
                        text = await ws.get_message()
                        await self._on_message(session, text)
                finally:
                    nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            session.closed.set()
            await trio.aclose_forcefully(tap)

    async def _on_message(self, session: PeerSession, text: str | bytes) -> None:
        session.received_at.append(trio.current_time())
        try:
            command = CODEC.decode_command(text)
        except BadCommand as e:
            await session.send(ErrorReply(tag=e.tag if e.tag else UNSET, error_code=e.error_code, error_msg=e.error_msg))
            return
        session.commands.append(command)
        if isinstance(command, Authenticate):
            await session.send(self._authenticate(session, command))
        elif command.needs_auth and not session.authenticated:
            await session.send(error(command, 7, "You are not authenticated."))
        elif self.on_command is not None:
            await self.on_command(session, command)
        else:
            await session.reply_default(command)

    def _authenticate(self, session: PeerSession, command: Authenticate) -> Reply:
        session.auth_attempts += 1
        user = self.users.get(command.user_id)
        if user is None:
            return error(command, 1, "There is no such user.")
        if not hmac.compare_digest(command.cookie.encode(), user.cookie.encode()):
            return error(command, 7, "You sent an incorrect login cookie.")
        try:
            client_nonce = auth.nonce_from_b64(command.nonce)
        except RemoteProtocolError as e:
            return error(command, 8, f"Invalid nonce: {e}.")
        message = auth.signed_message(command.user_id, session.server_nonce, client_nonce)
        if not auth.verify(user.public_key, message, command.signature):
            return error(command, 7, "You sent an incorrect signature. This probably means you used a wrong passphrase.")
        session.user_id = user.user_id
        return AuthenticateReply(tag=tag_of(command))

    def default_reply(self, session: PeerSession, command: Command) -> Reply:
        """Empty but well-formed answers to the read-only commands; error 8 otherwise."""
        tag = tag_of(command)
        if isinstance(command, GetBalances):
            return GetBalancesReply(tag=tag, balances=[])
        if isinstance(command, GetOrders):
            return GetOrdersReply(tag=tag, orders=[])
        if isinstance(command, GetTradeVolume):
            return GetTradeVolumeReply(tag=tag, volume=0)
        if isinstance(command, WatchOrders):
            return WatchOrdersReply(tag=tag, orders=[]) if command.watch else WatchOrdersReply(tag=tag)
        if isinstance(command, WatchTicker):
            if not command.watch:
                return WatchTickerReply(tag=tag)
            return WatchTickerReply(tag=tag, last=None, bid=None, ask=None, low=None, high=None, volume=0)
        return error(command, 8, f"the scripted peer has no default for {type(command).__name__}")
