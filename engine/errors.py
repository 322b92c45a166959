"""The one exception tree of the project.

Every error says whose fault it is::

    CoinfloorError
    ├── ConfigError              a configuration file is wrong (names file, line, key path)
    ├── ScaleError (ValueError)  an amount or price the scale cannot represent exactly
    ├── SecretError              a secret is missing, inline, or in an unsafe file
    ├── ProtocolError
    │   ├── LocalProtocolError   we tried to build or send an invalid message
    │   │   └── InvalidTransition    an own-order event the order state machine refuses
    │   └── RemoteProtocolError  the peer sent a frame we cannot accept
    ├── ExchangeError            the exchange answered a command with error_code != 0
    │   ├── NotFound                 1  no such user / order / pair, not watching
    │   ├── AlreadyWatching          2
    │   ├── TonceOutOfSequence       3
    │   ├── InsufficientFunds        4
    │   ├── TooManyOrders            5
    │   ├── RateLimitExceeded        6
    │   ├── AuthenticationFailed     7
    │   └── InvalidRequest           8  syntax or "(varies)"
    ├── RateLimited              our own governor refused a token (acquire_nowait)
    ├── RiskDenied               the risk governor refused an intent, with a reason
    └── ConnectionLost           the transport closed or died under a pending command
        ├── WebSocketClosed      the WebSocket closed (engine.ws), with its close code
        └── ConnectFailed        opening the connection failed; no trading command was sent
            └── HandshakeFailed  the WebSocket opening handshake failed (HTTP status)

``ExchangeError.from_reply(code, msg)`` picks the subclass from the code, so callers can
``except TonceOutOfSequence`` without comparing integers.
"""

from __future__ import annotations

from typing import Any


class CoinfloorError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(CoinfloorError):
    """A configuration file or value is invalid. The message names file, line and key path."""


class ScaleError(CoinfloorError, ValueError):
    """An amount or price cannot be represented exactly at its scale (never rounded silently)."""


class SecretError(CoinfloorError):
    """A secret could not be loaded safely. The message never contains the secret."""


class ProtocolError(CoinfloorError):
    """A message violates the Coinfloor WebSocket protocol.

    ``field`` names the offending JSON path (``$.quantity``) when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LocalProtocolError(ProtocolError):
    """We tried to build or send a message the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a frame we cannot accept (their bug, or a hostile peer)."""


class ExchangeError(CoinfloorError):
    """The exchange replied with a non-zero ``error_code``.

    ``error_code`` and ``error_msg`` are exactly what the exchange sent.
    """

    code: int = 0

    def __init__(self, error_code: int, error_msg: str) -> None:
        super().__init__(f"error {error_code}: {error_msg}")
        self.error_code = error_code
        self.error_msg = error_msg

    @staticmethod
    def from_reply(error_code: int, error_msg: str) -> ExchangeError:
        """Build the subclass matching ``error_code`` (unknown codes give ExchangeError)."""
        cls = _BY_CODE.get(error_code, ExchangeError)
        return cls(error_code, error_msg)

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.error_code, self.error_msg))


class NotFound(ExchangeError):
    """Error 1: no such user, order or asset pair, or not watching that feed."""

    code = 1


class AlreadyWatching(ExchangeError):
    """Error 2: already subscribed to that feed."""

    code = 2


class TonceOutOfSequence(ExchangeError):
    """Error 3: the tonce is not above every successful tonce since the last CancelAllOrders.

    On a resubmission this means only "a tonce >= this one succeeded": the order may be live.
    """

    code = 3


class InsufficientFunds(ExchangeError):
    """Error 4."""

    code = 4


class TooManyOrders(ExchangeError):
    """Error 5: the user already has the maximum number of open orders."""

    code = 5


class RateLimitExceeded(ExchangeError):
    """Error 6: a LIMITS.md budget is exhausted. The command was definitely not executed."""

    code = 6


class AuthenticationFailed(ExchangeError):
    """Error 7: not authenticated, or a wrong cookie or signature."""

    code = 7


class InvalidRequest(ExchangeError):
    """Error 8: a syntax error or a semantically invalid request."""

    code = 8


_BY_CODE: dict[int, type[ExchangeError]] = {
    c.code: c
    for c in (
        NotFound,
        AlreadyWatching,
        TonceOutOfSequence,
        InsufficientFunds,
        TooManyOrders,
        RateLimitExceeded,
        AuthenticationFailed,
        InvalidRequest,
    )
}


class RateLimited(CoinfloorError):
    """Our own rate-limit governor has no token now; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, metric: str, retry_after: float) -> None:
        super().__init__(message)
        self.metric = metric
        self.retry_after = retry_after


class RiskDenied(CoinfloorError):
    """The risk governor refused an intent; ``reason`` is meant for the strategy and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(CoinfloorError):
    """The connection closed while a command was pending; its outcome is unknown."""


class InvalidTransition(LocalProtocolError):
    """An own-order event the order state machine does not allow (engine.state.orders).

    Raised for our own misuse (cancelling a filled order) and for replies or notices that
    contradict what the exchange already confirmed; the runner answers the latter with a
    reconciliation (GetOrders + GetBalances), not a crash.
    """


class ConnectFailed(ConnectionLost):
    """Opening a connection failed: DNS, TCP, TLS verification, the WebSocket handshake, a
    missing or bad Welcome, or no reply to Authenticate.  No trading command was sent."""


class WebSocketClosed(ConnectionLost):
    """The WebSocket (engine.ws) is closed: ``close`` is its :class:`engine.ws.CloseReason`
    (``.code``: 1005 when the peer gave no code, 1006 when the TCP connection ended without
    a close frame; ``.reason``: the text)."""

    def __init__(self, close: Any) -> None:
        super().__init__(str(close))
        self.close = close

    @property
    def reason(self) -> Any:
        """The :class:`engine.ws.CloseReason` (named like trio-websocket's ConnectionClosed)."""
        return self.close


class HandshakeFailed(ConnectFailed):
    """The WebSocket opening handshake failed (engine.ws); ``status`` is the HTTP status
    the server answered or sent (0 when there was none)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
