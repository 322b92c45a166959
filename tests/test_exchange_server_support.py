"""Helpers shared by the exchange server tests (no tests in this module).

``RawClient`` speaks raw JSON text frames so tests see exactly what the server sends;
``connect_memory`` wires a client to :meth:`ExchangeServer.handle_stream` over trio memory
streams, so idle timeouts and slow readers run in virtual time under ``autojump_clock``.
"""

from __future__ import annotations

import json
import random
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

from engine.exchange.core import Exchange
from engine.exchange.server import ExchangeServer, trio_clock_us
from engine.exchange.settings import DEMO_COOKIE, DEMO_PASSPHRASE, ExchangeSettings, UserSettings
from engine.protocol.auth import (
    b64_nonce,
    derive_private_key,
    new_nonce,
    nonce_from_b64,
    sign,
    signed_message,
)
from engine.scale import GBP, XBT

EPOCH_US = 1_700_000_000_000_000
BASE, COUNTER = XBT.code, GBP.code


def demo_settings(users: int = 2, **kw: Any) -> ExchangeSettings:
    """Users 1..n with the AUTH.md demo credentials and comfortable balances."""
    return ExchangeSettings(
        users=[
            UserSettings(user_id=i, demo=True, balances={"XBT": "100", "GBP": "1000000.00", "EUR": "1000000.00"})
            for i in range(1, users + 1)
        ],
        seed=1,
        **kw,
    )


def make_exchange(settings: ExchangeSettings | None = None) -> Exchange:
    """An exchange on trio's clock (virtual under MockClock); call inside trio."""
    return Exchange(settings or demo_settings(), clock_us=trio_clock_us(EPOCH_US), rng=random.Random(1))


def authenticate_frame(
    server_nonce_b64: str,
    *,
    user_id: int = 1,
    passphrase: str = DEMO_PASSPHRASE,
    cookie: str = DEMO_COOKIE,
    tag: int | None = None,
) -> dict[str, Any]:
    """A correctly signed Authenticate for this connection's server nonce (AUTH.md)."""
    client_nonce = new_nonce()
    key = derive_private_key(user_id, passphrase)
    r, s = sign(key, signed_message(user_id, nonce_from_b64(server_nonce_b64), client_nonce))
    frame: dict[str, Any] = {
        "method": "Authenticate",
        "user_id": user_id,
        "cookie": cookie,
        "nonce": b64_nonce(client_nonce),
        "signature": [r, s],
    }
    if tag is not None:
        frame["tag"] = tag
    return frame


class RawClient:
    """A test client over a trio-websocket connection, speaking raw JSON text."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.notices: list[dict[str, Any]] = []
        self.nonce = ""

    async def welcome(self) -> str:
        first = json.loads(await self.ws.get_message())
        assert first["notice"] == "Welcome", first
        self.nonce = first["nonce"]
        return self.nonce

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        obj = json.loads(await self.ws.get_message())
        assert isinstance(obj, dict)
        return obj

    async def reply(self) -> dict[str, Any]:
        """The next reply; notices met on the way are kept in ``self.notices``."""
        while True:
            obj = await self.recv()
            if "notice" in obj:
                self.notices.append(obj)
                continue
            return obj

    async def request(self, frame: dict[str, Any] | str) -> dict[str, Any]:
        await self.send(frame)
        return await self.reply()

    async def login(self, user_id: int = 1) -> None:
        if not self.nonce:
            await self.welcome()
        rep = await self.request(authenticate_frame(self.nonce, user_id=user_id))
        assert rep == {"error_code": 0}, rep


async def connect_memory(
    server: ExchangeServer,
    nursery: trio.Nursery,
    *,
    lockstep: bool = False,
    message_queue_size: int = 1000,
) -> RawClient:
    """A client connected to ``server`` over memory streams (``lockstep``: no buffering at all,
    so a client that stops reading stops the server's sender at once)."""
    if lockstep:
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
    else:
        client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream, "memory")
    ws = await wrap_client_stream(
        nursery, client_stream, "127.0.0.1", "/",  # type: ignore[arg-type]
        message_queue_size=message_queue_size,
    )
    return RawClient(ws)


def limit_order(quantity: int, price: int, *, tag: int | None = None, persist: bool | None = None,
                tonce: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"method": "PlaceOrder", "base": BASE, "counter": COUNTER,
                             "quantity": quantity, "price": price}
    if tag is not None:
        frame["tag"] = tag
    if persist is not None:
        frame["persist"] = persist
    if tonce is not None:
        frame["tonce"] = tonce
    return frame
