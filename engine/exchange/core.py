"""The exchange core: a pure, synchronous, deterministic matching and accounting engine.

No I/O, no trio, no clock reads of its own: time comes from the injected ``clock_us`` and
every random choice (stochastic rounding) from the injected ``rng``.  The trio server owns
the sockets and calls :meth:`Exchange.handle` with decoded commands; simulated
participants and backtests use :meth:`Exchange.open_internal_session` and the same
:meth:`Exchange.handle`, so every path goes through the same checks and accounting.

How a limit order flows through the engine (each step delivers its notices at once, so
every recipient sees them in engine order, as IMPL-GUIDE promises)::

    validate (errors 7, 6, 1, 8, 3, 5, 4 -- nothing changes on any error)
    reserve      BalanceChanged(owner)              reservation taken from available
    match        OrdersMatched, BalanceChanged...   against the opposite side, best first
    rest / close OrderOpened for a remainder, or OrderClosed(quantity 0) when filled

Money is conserved to the unit: for every asset, the users' available plus reserved
balances plus the fees collected always equal the opening balances plus deposits
(:meth:`Exchange.check_invariants` asserts it, with every other book invariant).

The accounting of a bid follows IMPL-GUIDE "How Fees Affect Trade Quantities": the bid
reserves ``ceil(q*p*mul/den)`` counter units; each trade takes the total *and the buyer's
fee* out of that reservation; the remaining quantity becomes the largest quantity the
rest of the reservation still covers at the bid's price, and any excess goes straight
back to the buyer's available balance.  A buyer is never made to pay more than it
reserved (limit) or holds (market): a trade is shrunk to what the budget covers even if
both the total and the fee round up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from bisect import insort
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from msgspec import UNSET

from engine.errors import ConfigError, RemoteProtocolError
from engine.exchange import notices as _notices
from engine.exchange.book import Book, BookSide, Order
from engine.exchange.rounding import PPM, make_below
from engine.exchange.settings import ExchangeSettings, UserCredentials, resolve_credentials
from engine.exchange.windows import PairVolume, Ticker
from engine.limits import RATE_ERROR_MSG, Limit, Limiter, SlidingWindow, TokenBucket, make_limiter
from engine.protocol import auth as _auth
from engine.protocol.codec import CODEC as _CODEC
from engine.protocol.codec import BadCommand
from engine.protocol.messages import (
    Authenticate,
    AuthenticateReply,
    Balance,
    BalanceChanged,
    BookOrder,
    CancelAllOrders,
    CancelAllOrdersReply,
    CancelOrder,
    CancelOrderReply,
    Command,
    ErrorReply,
    EstimateMarketOrder,
    EstimateMarketOrderReply,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    GetOrdersReply,
    GetTradeVolume,
    GetTradeVolumeReply,
    Notice,
    OpenOrder,
    PlaceOrder,
    PlaceOrderReply,
    Reply,
    TickerChanged,
    TradeVolumeChanged,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
)
from engine.scale import INT64_MAX, ceil_div

__all__ = ["Exchange", "Session", "Msg", "SNAPSHOT_VERSION"]

SNAPSHOT_VERSION = 1


class Msg:
    """Every error text the engine sends (WEBSOCKET-README wording where it has one)."""

    NO_SUCH_USER = "There is no such user."
    AUTH_RATE = RATE_ERROR_MSG["auth"]
    BAD_COOKIE = "You sent an incorrect login cookie."
    BAD_SIGNATURE = "You sent an incorrect signature. This probably means you used a wrong passphrase."
    NOT_AUTHENTICATED = "You are not authenticated."
    ALREADY_AUTHENTICATED = "You are already authenticated."  # our choice (spec silent)
    BAD_NONCE = "Nonce must be 16 bytes, base64-encoded."  # our choice (spec: "varies")
    INVALID_PAIR = "You specified an invalid asset pair."
    INVALID_ASSET = "You specified an invalid asset."  # our choice (GetTradeVolume)
    ORDER_NOT_FOUND = "The specified order was not found."
    TONCE_SEQUENCE = "Tonce is out of sequence."
    INSUFFICIENT_FUNDS = "You have insufficient funds."
    TOO_MANY_ORDERS = "You have too many outstanding orders."
    TONCE_ZERO = "Tonce must not be zero."
    PRICE_ZERO = "Price must not be zero."
    PRICE_NEGATIVE = "Price must be positive."  # our choice (spec silent)
    QUANTITY_ZERO = "Quantity must not be zero."
    TOTAL_ZERO = "Total must not be zero."
    OVERFLOW = "Order total would overflow."
    MARKET_NEEDS = "You must specify either quantity or total for a market order."
    CANCEL_NEEDS = "You must specify either order ID or tonce."
    NOT_WATCHING_ORDERS = "You are not watching the order book for the specified asset pair."
    ALREADY_WATCHING_ORDERS = "You are already watching the order book for the specified asset pair."
    NOT_WATCHING_TICKER = "You are not watching the ticker for the specified asset pair."
    ALREADY_WATCHING_TICKER = "You are already watching the ticker for the specified asset pair."
    UNKNOWN_METHOD = "Unknown method."


class _Reject(Exception):
    """Internal: abort a command with an error reply (raised before any state changes)."""

    __slots__ = ("code", "msg")

    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = msg


def _ignore(notice: Notice) -> None:
    pass


class Session:
    """One connection (or one in-process agent).  Pure state; the server owns the socket.

    ``deliver`` is called synchronously, in engine order, with every notice this session
    must receive, already in the recipient's form (own-order fields only for the owner).
    """

    __slots__ = (
        "id",
        "user_id",
        "server_nonce",
        "watching_orders",
        "watching_ticker",
        "deliver",
        "internal",
        "listening",
        "limiters",
        "volatile",
        "closed",
    )

    def __init__(
        self,
        id: int,
        deliver: Callable[[Notice], None] | None,
        server_nonce: bytes,
        *,
        user_id: int | None = None,
        internal: bool = False,
    ) -> None:
        self.id = id
        self.user_id = user_id
        self.server_nonce = server_nonce
        self.watching_orders: set[tuple[int, int]] = set()
        self.watching_ticker: set[tuple[int, int]] = set()
        self.deliver: Callable[[Notice], None] = deliver if deliver is not None else _ignore
        self.internal = internal
        self.listening = deliver is not None
        self.limiters: dict[str, Limiter] = {}
        self.volatile: dict[int, Order] = {}  # persist=false orders placed on this session
        self.closed = False

    def __repr__(self) -> str:
        kind = "internal " if self.internal else ""
        return f"Session({kind}id={self.id}, user_id={self.user_id})"


class _Account:
    __slots__ = ("user_id", "avail", "reserved", "orders", "by_tonce", "tonce_hw", "volumes", "listeners")

    def __init__(self, user_id: int, assets: list[int]) -> None:
        self.user_id = user_id
        self.avail: dict[int, int] = dict.fromkeys(assets, 0)
        self.reserved: dict[int, int] = dict.fromkeys(assets, 0)
        self.orders: dict[int, Order] = {}  # open orders in id order
        self.by_tonce: dict[int, Order] = {}
        self.tonce_hw = 0  # highest successful tonce since the last CancelAllOrders
        self.volumes: dict[tuple[int, int], PairVolume] = {}  # by market
        self.listeners: dict[int, Session] = {}  # authenticated sessions that take notices


class _Login:
    __slots__ = ("cookie_digest", "public_key")

    def __init__(self, cookie_digest: bytes, public_key: Any) -> None:
        self.cookie_digest = cookie_digest
        self.public_key = public_key


_TICKER_FIELDS = ("last", "bid", "ask", "low", "high", "volume")


class Exchange:
    """The matching and accounting engine of the local Coinfloor-protocol exchange.

    ``clock_us`` gives microseconds since the epoch (wall clock live, virtual in tests);
    the engine makes it non-decreasing and reads it once per command.  ``rng`` drives the
    stochastic rounding; seed it for reproducible runs.  ``credentials`` (optional) are the
    users' login secrets; by default they are resolved from the settings (env vars, files,
    demo flag).  Public keys are derived once here and passphrases are not kept.
    """

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        clock_us: Callable[[], int],
        rng: random.Random,
        credentials: Mapping[int, UserCredentials] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.scales = settings.scales
        self._clock = clock_us
        self._rng = rng
        self._below = make_below(rng)
        self._now = 0
        self._last_time = 0
        self._next_id = 1
        self._next_session_id = 1
        self._max_open = settings.max_open_orders
        self._depth = settings.watch_depth
        self._self_trade_cancel = settings.policy.self_trade == "cancel_resting"
        self._open_first = settings.policy.open_notice_before_match
        self._verify = settings.policy.verify_each_command

        self._books: dict[tuple[int, int], Book] = {}
        assets: list[int] = []
        for ms in settings.markets:
            m = ms.market
            mul, den = self.scales.total_divisor(m)
            tiers = [
                (self.scales.parse_amount(t.min_volume, m.base), t.maker_ppm, t.taker_ppm)
                for t in settings.fees
            ]
            self._books[m.codes] = Book(m.base.code, m.counter.code, mul, den, tiers)
            for a in m.codes:
                if a not in assets:
                    assets.append(a)
        opening = settings.opening_balances()
        for bal in opening.values():
            for a in bal:
                if a not in assets:
                    assets.append(a)
        assets.sort()
        self._assets = assets
        self._supply: dict[int, int] = dict.fromkeys(assets, 0)
        self._fees: dict[int, int] = dict.fromkeys(assets, 0)
        self._accounts: dict[int, _Account] = {}
        for uid, bal in opening.items():
            acct = _Account(uid, assets)
            for a, amount in bal.items():
                acct.avail[a] = amount
                self._supply[a] += amount
            self._accounts[uid] = acct

        creds = resolve_credentials(settings, environ) if credentials is None else credentials
        self._logins: dict[int, _Login] = {}
        for uid, c in creds.items():
            if uid not in self._accounts:
                raise ConfigError(f"credentials given for user {uid}, who is not in settings.users")
            key = _auth.derive_private_key(uid, c.passphrase)
            digest = hashlib.sha256(c.cookie.reveal().encode("utf-8")).digest()
            self._logins[uid] = _Login(digest, _auth.public_key(key))
            del key

        lim = settings.limits
        self._limits: dict[str, tuple[Limit, str]] = {}
        if lim.enabled:
            for metric in ("orders", "info", "auth"):
                cfg = getattr(lim, metric)
                if cfg.enabled:
                    self._limits[metric] = (Limit(cfg.count, cfg.per, cfg.scope), lim.algorithm)
        self._user_limiters: dict[tuple[str, int], Limiter] = {}

        self._orders: dict[int, Order] = {}
        self._sessions: dict[int, Session] = {}
        self._touched: list[Book] = []  # books whose ticker may have changed in this command
        self._auth_rated = False
        self._dust_taker = False  # set by _match: a taker bid that cannot pay for one unit
        self.journal: Callable[[dict[str, Any]], None] | None = None
        """Set to a callable to receive every state-changing input as a JSON-able event
        (see engine/exchange/journal.py); replaying them onto the same starting snapshot
        reproduces the state hash."""
        self.command_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None
        """``(begin, end)``, called around every :meth:`handle` (``end`` even when the
        command fails), so a front end can batch the notices one command delivers (the
        server writes them once per connection).  ``None``: no calls."""

        self._handlers: dict[type, Callable[[Session, Any, Any], Reply]] = {
            Authenticate: self._authenticate,
            GetBalances: self._get_balances,
            GetOrders: self._get_orders,
            EstimateMarketOrder: self._estimate,
            PlaceOrder: self._place_order,
            CancelOrder: self._cancel_order,
            CancelAllOrders: self._cancel_all,
            GetTradeVolume: self._get_trade_volume,
            WatchOrders: self._watch_orders,
            WatchTicker: self._watch_ticker,
        }

    # ------------------------------------------------------------------------------------
    # sessions

    def open_session(
        self, deliver: Callable[[Notice], None], *, server_nonce: bytes | None = None
    ) -> Session:
        """A new unauthenticated connection; ``server_nonce`` defaults to 16 fresh OS bytes."""
        nonce = secrets.token_bytes(16) if server_nonce is None else server_nonce
        if len(nonce) != 16:
            raise ValueError(f"server_nonce must be 16 bytes, was {len(nonce)}")
        s = Session(self._next_session_id, deliver, nonce)
        self._next_session_id += 1
        self._sessions[s.id] = s
        if self.journal is not None:
            self.journal({"op": "open", "sid": s.id})
        return s

    def open_internal_session(
        self, user_id: int, deliver: Callable[[Notice], None] | None = None
    ) -> Session:
        """A pre-authenticated session for in-process participants and backtests.

        Never reachable from the wire.  With ``deliver=None`` no notices are built for it.
        """
        acct = self._accounts.get(user_id)
        if acct is None:
            raise ConfigError(f"internal session for user {user_id}, who is not in settings.users")
        s = Session(self._next_session_id, deliver, b"\0" * 16, user_id=user_id, internal=True)
        self._next_session_id += 1
        self._sessions[s.id] = s
        if s.listening:
            acct.listeners[s.id] = s
        if self.journal is not None:
            self.journal({"op": "internal", "sid": s.id, "uid": user_id})
        return s

    def close_session(self, session: Session) -> None:
        """The connection is gone: drop its subscriptions, cancel its persist=false orders."""
        if session.closed:
            return
        session.closed = True
        now = self._tick()
        if self.journal is not None:
            self.journal({"op": "close", "sid": session.id, "t": now})
        self._sessions.pop(session.id, None)
        for codes in session.watching_orders:
            self._books[codes].order_watchers.pop(session.id, None)
        for codes in session.watching_ticker:
            self._books[codes].ticker_watchers.pop(session.id, None)
        session.watching_orders.clear()
        session.watching_ticker.clear()
        if session.user_id is not None:
            acct = self._accounts[session.user_id]
            acct.listeners.pop(session.id, None)
            if session.volatile:
                for order in sorted(session.volatile.values(), key=lambda o: o.id):
                    self._close_order(order, acct)
                session.volatile.clear()
                self._flush_tickers()

    def cancel_orphaned_orders(self) -> int:
        """Cancel persist=false orders whose session is no longer open (after a restore,
        every connection is gone).  Returns how many were cancelled."""
        now = self._tick()
        if self.journal is not None:
            self.journal({"op": "orphans", "t": now})
        orphans = [
            o for o in self._orders.values() if not o.persist and o.session_id not in self._sessions
        ]
        for o in sorted(orphans, key=lambda o: o.id):
            self._close_order(o, self._accounts[o.user_id])
        self._flush_tickers()
        return len(orphans)

    # ------------------------------------------------------------------------------------
    # commands

    def handle(self, session: Session, cmd: Command) -> Reply:
        """Execute one decoded command; return its success reply or an ErrorReply.

        All notices the command causes have been delivered before this returns.  The
        reply echoes ``tag`` iff it was given and non-zero.
        """
        tag = cmd.tag
        if tag == 0:
            tag = UNSET
        handler = self._handlers.get(type(cmd))
        if handler is None:
            return ErrorReply(tag=tag, error_code=8, error_msg=Msg.UNKNOWN_METHOD)
        hooks = self.command_hooks
        if hooks is not None:
            hooks[0]()
        try:
            reply = handler(session, cmd, tag)
        except _Reject as e:
            reply = ErrorReply(tag=tag, error_code=e.code, error_msg=e.msg)
        finally:
            if hooks is not None:
                hooks[1]()
        if self.journal is not None:
            self._journal_command(session, cmd)
        if self._verify:
            self.check_invariants()
        return reply

    def _journal_command(self, session: Session, cmd: Command) -> None:
        assert self.journal is not None
        if isinstance(cmd, Authenticate):
            # Never the cookie or signature: only what the command did to the state.
            self.journal({"op": "auth", "sid": session.id, "t": self._now, "uid": cmd.user_id,
                          "rated": self._auth_rated, "ok": session.user_id == cmd.user_id})
            self._auth_rated = False
        else:
            self.journal({"op": "cmd", "sid": session.id, "t": self._now, "cmd": _CODEC.encode(cmd).decode()})

    def reply_to_bad_command(self, session: Session, err: BadCommand) -> ErrorReply:
        """The error reply for a frame the codec refused (error 8 with its text)."""
        tag = UNSET if err.tag is None or err.tag == 0 else err.tag
        return ErrorReply(tag=tag, error_code=err.error_code, error_msg=err.error_msg)

    # -- helpers shared by the handlers

    def _tick(self) -> int:
        now = self._clock()
        if now < self._last_time:
            now = self._last_time
        self._last_time = now
        self._now = now
        return now

    def _account(self, s: Session) -> _Account:
        uid = s.user_id
        if uid is None:
            raise _Reject(7, Msg.NOT_AUTHENTICATED)
        return self._accounts[uid]

    def _rate(self, s: Session, metric: str, user_id: int | None = None) -> None:
        entry = self._limits.get(metric)
        if entry is None:
            return
        limit, algorithm = entry
        uid = user_id if user_id is not None else s.user_id
        limiter: Limiter | None
        if limit.scope == "user" and uid is not None:
            key = (metric, uid)
            limiter = self._user_limiters.get(key)
            if limiter is None:
                limiter = self._user_limiters[key] = make_limiter(limit, algorithm)  # type: ignore[arg-type]
        else:
            limiter = s.limiters.get(metric)
            if limiter is None:
                limiter = s.limiters[metric] = make_limiter(limit, algorithm)  # type: ignore[arg-type]
        if limiter.try_acquire(self._now / 1e6) > 0.0:
            raise _Reject(6, RATE_ERROR_MSG[metric])

    def _book(self, base: int, counter: int) -> Book:
        book = self._books.get((base, counter))
        if book is None:
            raise _Reject(1, Msg.INVALID_PAIR)
        return book

    def _fee_ppm(self, acct: _Account, book: Book, maker: bool) -> int:
        """The fee rate of ``acct`` in ``book`` by its 30-day volume in the base asset (the
        lowest tier applies below every tier's minimum)."""
        tiers = book.fee_tiers
        v = self._asset_volume(acct, book.base)
        for min_vol, maker_ppm, taker_ppm in tiers:
            if v >= min_vol:
                return maker_ppm if maker else taker_ppm
        _, maker_ppm, taker_ppm = tiers[-1]
        return maker_ppm if maker else taker_ppm

    def _asset_volume(self, acct: _Account, asset: int) -> int:
        """A user's 30-day volume in ``asset``: the sum over the markets that trade it."""
        now = self._now
        total = 0
        for (base, counter), v in acct.volumes.items():
            if asset == base or asset == counter:
                v.expire(now)
                total += v.base if asset == base else v.counter
        return total

    # -- Authenticate

    def _authenticate(self, s: Session, cmd: Authenticate, tag: Any) -> Reply:
        if s.user_id is not None:
            raise _Reject(8, Msg.ALREADY_AUTHENTICATED)
        uid = cmd.user_id
        login = self._logins.get(uid)
        if login is None:
            raise _Reject(1, Msg.NO_SUCH_USER)
        self._tick()
        self._rate(s, "auth", uid)
        self._auth_rated = True
        digest = hashlib.sha256(cmd.cookie.encode("utf-8", "surrogatepass")).digest()
        if not hmac.compare_digest(digest, login.cookie_digest):
            raise _Reject(7, Msg.BAD_COOKIE)
        try:
            client_nonce = _auth.nonce_from_b64(cmd.nonce)
        except RemoteProtocolError:
            raise _Reject(8, Msg.BAD_NONCE) from None
        message = _auth.signed_message(uid, s.server_nonce, client_nonce)
        if not _auth.verify(login.public_key, message, cmd.signature):
            raise _Reject(7, Msg.BAD_SIGNATURE)
        s.user_id = uid
        self._accounts[uid].listeners[s.id] = s
        return AuthenticateReply(tag=tag)

    def _replay_auth(self, s: Session, uid: int, rated: bool, ok: bool) -> None:
        """Journal replay of an Authenticate: re-apply its effects (auth-rate token, login)
        without the secrets, which the journal never holds."""
        self._tick()
        if rated:
            try:
                self._rate(s, "auth", uid)
            except _Reject:
                raise ConfigError(f"journal replay: auth rate limit of user {uid} disagrees with the journal") from None
        if ok:
            s.user_id = uid
            self._accounts[uid].listeners[s.id] = s

    # -- information requests

    def _get_balances(self, s: Session, cmd: GetBalances, tag: Any) -> Reply:
        acct = self._account(s)
        self._tick()
        self._rate(s, "info")
        return GetBalancesReply(
            tag=tag, balances=[Balance(asset=a, balance=v) for a, v in acct.avail.items()]
        )

    def _get_orders(self, s: Session, cmd: GetOrders, tag: Any) -> Reply:
        acct = self._account(s)
        self._tick()
        self._rate(s, "info")
        return GetOrdersReply(tag=tag, orders=[_open_order(o) for o in acct.orders.values()])

    def _get_trade_volume(self, s: Session, cmd: GetTradeVolume, tag: Any) -> Reply:
        acct = self._account(s)
        self._tick()
        self._rate(s, "info")
        if cmd.asset not in acct.avail:
            raise _Reject(8, Msg.INVALID_ASSET)
        return GetTradeVolumeReply(tag=tag, volume=self._asset_volume(acct, cmd.asset))

    # -- EstimateMarketOrder

    def _estimate(self, s: Session, cmd: EstimateMarketOrder, tag: Any) -> Reply:
        self._tick()
        self._rate(s, "orders")
        book = self._book(cmd.base, cmd.counter)
        if cmd.quantity is not UNSET:
            if cmd.quantity == 0:
                raise _Reject(8, Msg.QUANTITY_ZERO)
            q, t = self._estimate_in(book, cmd.quantity > 0, quantity=abs(cmd.quantity))
        elif cmd.total is not UNSET:
            if cmd.total == 0:
                raise _Reject(8, Msg.TOTAL_ZERO)
            q, t = self._estimate_in(book, cmd.total > 0, total=abs(cmd.total))
        else:  # the codec refuses this already; a hand-built command may not
            raise _Reject(8, Msg.MARKET_NEEDS)
        return EstimateMarketOrderReply(tag=tag, quantity=q, total=t)

    def estimate(
        self, base: int, counter: int, *, quantity: int | None = None, total: int | None = None
    ) -> tuple[int, int]:
        """(quantity, total), both positive, that a market order would trade now, with the
        wire's signs (quantity or total > 0 buys).  Fees and balances are ignored."""
        book = self._books[(base, counter)]
        if quantity is not None:
            return self._estimate_in(book, quantity > 0, quantity=abs(quantity))
        if total is None:
            raise ValueError("estimate needs quantity or total")
        return self._estimate_in(book, total > 0, total=abs(total))

    def _estimate_in(
        self, book: Book, buy: bool, *, quantity: int | None = None, total: int | None = None
    ) -> tuple[int, int]:
        """Exact arithmetic; the total is the exact sum rounded half up (no rng is used, so
        an estimate never changes the engine's random stream)."""
        side = book.asks if buy else book.bids
        mul, den = book.mul, book.den
        traded = 0
        num = 0  # exact total * den
        if quantity is not None:
            left = quantity
            for o in side:
                x = o.quantity if o.quantity < left else left
                traded += x
                num += x * o.price * mul
                left -= x
                if left == 0:
                    break
        else:
            assert total is not None
            budget = total * den
            for o in side:
                x = budget // (o.price * mul)
                if x > o.quantity:
                    x = o.quantity
                if x == 0:
                    break
                traded += x
                cost = x * o.price * mul
                num += cost
                budget -= cost
        return traded, (2 * num + den) // (2 * den)

    # -- PlaceOrder

    def _place_order(self, s: Session, cmd: PlaceOrder, tag: Any) -> Reply:
        # The hot path: helpers are inlined here on purpose (see bench_exchange_core).
        uid = s.user_id
        if uid is None:
            raise _Reject(7, Msg.NOT_AUTHENTICATED)
        acct = self._accounts[uid]
        now = self._clock()
        if now < self._last_time:
            now = self._last_time
        self._last_time = self._now = now
        if self._limits:
            self._rate(s, "orders")
        book = self._books.get((cmd.base, cmd.counter))
        if book is None:
            raise _Reject(1, Msg.INVALID_PAIR)
        tonce: int | None = None if cmd.tonce is UNSET else cmd.tonce
        if tonce == 0:
            raise _Reject(8, Msg.TONCE_ZERO)
        price = cmd.price
        if price is not UNSET:
            q = cmd.quantity
            if q is UNSET:
                raise _Reject(8, Msg.MARKET_NEEDS)
            if q == 0:
                raise _Reject(8, Msg.QUANTITY_ZERO)
            if price <= 0:
                raise _Reject(8, Msg.PRICE_ZERO if price == 0 else Msg.PRICE_NEGATIVE)
            is_bid = q > 0
            aq = q if is_bid else -q
            if aq * price > INT64_MAX:
                raise _Reject(8, Msg.OVERFLOW)
            if is_bid:
                need = -((-aq * price * book.mul) // book.den)
                if need > INT64_MAX:
                    raise _Reject(8, Msg.OVERFLOW)
                asset = book.counter
            else:
                need = aq
                asset = book.base
            if tonce is not None and tonce <= acct.tonce_hw:
                raise _Reject(3, Msg.TONCE_SEQUENCE)
            if len(acct.orders) >= self._max_open:
                raise _Reject(5, Msg.TOO_MANY_ORDERS)
            if acct.avail[asset] < need:
                raise _Reject(4, Msg.INSUFFICIENT_FUNDS)
            # -- no error is possible from here on: commit
            if tonce is not None:
                acct.tonce_hw = tonce
            oid = self._next_id
            self._next_id = oid + 1
            order = Order(
                oid, uid, tonce, book.base, book.counter, is_bid, aq, price, now, cmd.persist is not False, s.id, need
            )
            self._limit_order(book, acct, order, s, asset)
            if self._touched:
                self._flush_tickers()
            return PlaceOrderReply(tag=tag, id=oid, time=now)

        # market order
        if cmd.quantity is not UNSET:
            if cmd.quantity == 0:
                raise _Reject(8, Msg.QUANTITY_ZERO)
            buy = cmd.quantity > 0
            want_q: int | None = abs(cmd.quantity)
            want_t: int | None = None
        elif cmd.total is not UNSET:
            if cmd.total == 0:
                raise _Reject(8, Msg.TOTAL_ZERO)
            buy = cmd.total > 0
            want_q, want_t = None, abs(cmd.total)
        else:
            raise _Reject(8, Msg.MARKET_NEEDS)
        if tonce is not None and tonce <= acct.tonce_hw:
            raise _Reject(3, Msg.TONCE_SEQUENCE)
        if acct.avail[book.counter if buy else book.base] <= 0:
            raise _Reject(4, Msg.INSUFFICIENT_FUNDS)
        if tonce is not None:
            acct.tonce_hw = tonce
        traded_q, traded_t = self._match(book, acct, buy, None, None, want_q, want_t, tonce)
        if self._touched:
            self._flush_tickers()
        remaining = want_q - traded_q if want_q is not None else want_t - traded_t  # type: ignore[operator]
        return PlaceOrderReply(tag=tag, remaining=remaining)

    def _limit_order(self, book: Book, acct: _Account, order: Order, s: Session, asset: int) -> None:
        """Reserve, match and rest (or close) a validated limit order."""
        is_bid, price, oid, tonce, need = order.is_bid, order.price, order.id, order.tonce, order.reserved
        acct.avail[asset] -= need
        acct.reserved[asset] += need
        if acct.listeners:
            self._notify_balance(acct, asset)
        if self._open_first:
            self._notify_opened(order)
        # Match only if the order crosses the best opposite price (most orders do not).
        keys = book.asks.keys if is_bid else book.bids.keys
        dust = False
        if keys and (-keys[-1] <= price if is_bid else keys[-1] >= price):
            self._match(book, acct, is_bid, order, price, None, None, tonce)
            dust = self._dust_taker
        if order.quantity > 0 and not dust:
            # BookSide.add, inlined (test_exchange_fast_paths checks it against BookSide.add).
            side = book.bids if is_bid else book.asks
            level = side.levels.get(price)
            if level is None:
                level = side.levels[price] = OrderedDict()
                insort(side.keys, price if is_bid else -price)
            level[oid] = order
            side.count += 1
            self._orders[oid] = order
            acct.orders[oid] = order
            if tonce is not None:
                acct.by_tonce[tonce] = order
            if not order.persist:
                s.volatile[oid] = order
            if book.ticker_watchers:
                self._touched.append(book)
            if not self._open_first:
                # _notify_opened with the owner's account and the book already in hand.
                owners = acct.listeners
                watchers = book.order_watchers
                if owners or watchers:
                    _notices.order_opened(order, owners, watchers)
        else:
            # Filled on arrival (quantity 0), or what is left cannot pay for one unit plus
            # its fee at the best price and would cross the book: close it either way.
            self._release(order, acct, book)

    def _match(
        self,
        book: Book,
        acct: _Account,
        buy: bool,
        order: Order | None,
        limit: int | None,
        want_q: int | None,
        want_t: int | None,
        tonce: int | None,
    ) -> tuple[int, int]:
        """Match a taker against the opposite side; return (quantity, total) traded.

        ``order`` is the taker's limit order (None for a market order, which is limited by
        ``want_q`` or ``want_t`` and by the taker's available balance instead).

        The buyer always pays total + fee out of a budget (the bid's reservation, or the
        market buyer's available balance), so each fill is capped at the quantity whose
        total and fee fit the budget even if both round up (see rounding.py).  A resting
        bid that cannot pay for a single unit is dust and is closed; so is a taker bid,
        which would otherwise rest crossing the book.
        """
        self._dust_taker = False
        if book.ticker_watchers:
            self._touched.append(book)
        opp: BookSide = book.asks if buy else book.bids
        opp_keys, opp_levels = opp.keys, opp.levels
        mul, den = book.mul, book.den
        accounts = self._accounts
        self_cancel = self._self_trade_cancel
        flat = book.flat_fees
        if flat is not None:
            maker_ppm, taker_ppm = flat
        traded_q = traded_t = 0
        while opp_keys:
            if order is not None:
                left = order.quantity
                if left == 0:
                    break
            elif want_q is not None:
                left = want_q - traded_q
                if left == 0:
                    break
            else:
                left = INT64_MAX
            k = opp_keys[-1]
            p = -k if buy else k
            if limit is not None and (p > limit if buy else p < limit):
                break
            m = next(iter(opp_levels[p].values()))
            if self_cancel and m.user_id == acct.user_id:
                self._close_order(m, acct)
                continue
            maker = accounts[m.user_id]
            x = m.quantity if m.quantity < left else left
            if want_t is not None:
                cap = ((want_t - traded_t) * den) // (p * mul)
                if cap < x:
                    x = cap
            if buy:
                if flat is None:
                    ppm_b = self._fee_ppm(acct, book, False)
                    ppm_a = self._fee_ppm(maker, book, True)
                else:
                    ppm_b, ppm_a = taker_ppm, maker_ppm
                budget = order.reserved if order is not None else acct.avail[book.counter]
                # largest x with ceil(x*p*mul/den) + fee, both rounded up, within budget
                cap = ((budget * PPM) // (PPM + ppm_b) * den) // (p * mul)
                if cap < x:
                    x = cap
                if x <= 0:
                    if order is not None and cap <= 0:
                        self._dust_taker = True
                    break
                t = self._trade(book, acct, maker, order, m, x, p, ppm_b, ppm_a, tonce, None)
            else:
                if flat is None:
                    ppm_a = self._fee_ppm(acct, book, False)
                    ppm_b = self._fee_ppm(maker, book, True)
                else:
                    ppm_a, ppm_b = taker_ppm, maker_ppm
                cap = ((m.reserved * PPM) // (PPM + ppm_b) * den) // (p * mul)
                if cap <= 0:
                    # The resting bid cannot pay for one unit plus fee: it is dust; close it.
                    self._close_order(m, maker)
                    continue
                if cap < x:
                    x = cap
                if order is None:
                    have = acct.avail[book.base]
                    if have < x:
                        x = have
                if x <= 0:
                    break
                t = self._trade(book, maker, acct, m, order, x, p, ppm_b, ppm_a, None, tonce)
            traded_q += x
            traded_t += t
        return traded_q, traded_t

    def _trade(
        self,
        book: Book,
        buyer: _Account,
        seller: _Account,
        bid: Order | None,
        ask: Order | None,
        x: int,
        p: int,
        ppm_b: int,
        ppm_a: int,
        bid_mkt_tonce: int | None,
        ask_mkt_tonce: int | None,
    ) -> int:
        """One fill of ``x`` at ``p``; either ``bid`` or ``ask`` may be None (market side)."""
        below = self._below
        mul, den = book.mul, book.den
        base, counter = book.base, book.counter
        # Stochastic rounding, inlined (rounding.stochastic_round): total, then the buyer's
        # fee, then the seller's fee, each drawing only when it has a fractional part.
        t, r = divmod(x * p * mul, den)
        if r and below(den) < r:
            t += 1
        fb, r = divmod(t * ppm_b, PPM)
        if r and below(PPM) < r:
            fb += 1
        fa, r = divmod(t * ppm_a, PPM)
        if r and below(PPM) < r:
            fa += 1
        # Orders and reservations first (OrdersMatched reports the remainders) ...
        excess = 0
        if bid is not None:
            r = bid.reserved - t - fb
            q = bid.quantity - x
            if q:
                bp = bid.price
                q_max = (r * den) // (bp * mul)
                if q_max < q:
                    q = q_max
                need = -((-q * bp * mul) // den)
            else:
                need = 0
            excess = r - need
            buyer.reserved[counter] -= bid.reserved - need
            bid.quantity = q
            bid.reserved = need
        if ask is not None:
            ask.quantity -= x
            ask.reserved -= x
            seller.reserved[base] -= x
        self._fees[counter] += fb + fa
        now = self._now
        book.ticker.trade(now, p, x)
        if buyer.listeners or seller.listeners or book.order_watchers:
            _notices.orders_matched(
                book, buyer.user_id, buyer.listeners, seller.user_id, seller.listeners,
                bid, ask, x, p, t, fb, fa, now, bid_mkt_tonce, ask_mkt_tonce,
            )
        # ... then the available balances, one change per BalanceChanged, in this order:
        # buyer base (+x), buyer counter (excess back, or total+fee paid at market),
        # seller base (-x, market only), seller counter (+total-fee).  One change per
        # notice lets a client match each BalanceChanged to the delta it anticipates,
        # even in a self-trade.
        buyer.avail[base] += x
        if buyer.listeners:
            self._notify_balance(buyer, base)
        if bid is not None:
            if excess:
                buyer.avail[counter] += excess
                if buyer.listeners:
                    self._notify_balance(buyer, counter)
        else:
            buyer.avail[counter] -= t + fb
            if buyer.listeners:
                self._notify_balance(buyer, counter)
        if ask is None:
            seller.avail[base] -= x
            if seller.listeners:
                self._notify_balance(seller, base)
        seller.avail[counter] += t - fa
        if seller.listeners:
            self._notify_balance(seller, counter)
        self._add_volume(buyer, book, x, t, now)
        self._add_volume(seller, book, x, t, now)
        # a resting order that is done leaves the book
        if bid is not None and bid.quantity == 0 and bid.id in self._orders:
            self._close_order(bid, buyer)
        if ask is not None and ask.quantity == 0 and ask.id in self._orders:
            self._close_order(ask, seller)
        return t

    def _add_volume(self, acct: _Account, book: Book, x: int, t: int, now: int) -> None:
        """Add one side of a trade to a user's 30-day volumes (TradeVolumeChanged if listened)."""
        v = acct.volumes.get(book.codes)
        if v is None:
            v = acct.volumes[book.codes] = PairVolume()
        v.add(now, x, t)
        if acct.listeners:
            nb = TradeVolumeChanged(asset=book.base, volume=self._asset_volume(acct, book.base))
            for sess in acct.listeners.values():
                sess.deliver(nb)
            if t:
                nc = TradeVolumeChanged(asset=book.counter, volume=self._asset_volume(acct, book.counter))
                for sess in acct.listeners.values():
                    sess.deliver(nc)

    # -- closing orders

    def _close_order(self, order: Order, acct: _Account) -> None:
        """Take a resting order off the book and release what it still reserves."""
        book = self._books[(order.base, order.counter)]
        (book.bids if order.is_bid else book.asks).remove(order)
        oid = order.id
        del self._orders[oid]
        del acct.orders[oid]
        tonce = order.tonce
        if tonce is not None and acct.by_tonce.get(tonce) is order:
            del acct.by_tonce[tonce]
        if not order.persist:
            s = self._sessions.get(order.session_id)
            if s is not None:
                s.volatile.pop(oid, None)
        if book.ticker_watchers:
            self._touched.append(book)
        self._release(order, acct, book)

    def _release(self, order: Order, acct: _Account, book: Book | None = None) -> None:
        """OrderClosed, then return the order's reservation (BalanceChanged)."""
        if book is None:
            book = self._books[(order.base, order.counter)]
        if acct.listeners or book.order_watchers:
            self._notify_closed(order)
        r = order.reserved
        if r:
            asset = order.counter if order.is_bid else order.base
            acct.reserved[asset] -= r
            acct.avail[asset] += r
            order.reserved = 0
            if acct.listeners:
                self._notify_balance(acct, asset)

    # -- CancelOrder / CancelAllOrders

    def _cancel_order(self, s: Session, cmd: CancelOrder, tag: Any) -> Reply:
        uid = s.user_id
        if uid is None:
            raise _Reject(7, Msg.NOT_AUTHENTICATED)
        acct = self._accounts[uid]
        self._tick()
        if self._limits:
            self._rate(s, "orders")
        order: Order | None
        if cmd.id is not UNSET:
            order = acct.orders.get(cmd.id)
        elif cmd.tonce is not UNSET:
            order = acct.by_tonce.get(cmd.tonce)
        else:
            raise _Reject(8, Msg.CANCEL_NEEDS)
        if order is None:
            raise _Reject(1, Msg.ORDER_NOT_FOUND)
        quantity = order.quantity if order.is_bid else -order.quantity
        self._close_order(order, acct)
        if self._touched:
            self._flush_tickers()
        return CancelOrderReply(
            tag=tag, id=order.id, tonce=order.tonce, base=order.base, counter=order.counter,
            quantity=quantity, price=order.price, time=order.time,
        )

    def _cancel_all(self, s: Session, cmd: CancelAllOrders, tag: Any) -> Reply:
        acct = self._account(s)
        self._tick()
        self._rate(s, "orders")
        cancelled = [_open_order(o) for o in acct.orders.values()]
        for o in list(acct.orders.values()):
            self._close_order(o, acct)
        acct.tonce_hw = 0
        self._flush_tickers()
        return CancelAllOrdersReply(tag=tag, orders=cancelled)

    # -- WatchOrders / WatchTicker

    def _watch_orders(self, s: Session, cmd: WatchOrders, tag: Any) -> Reply:
        book = self._book(cmd.base, cmd.counter)
        codes = (cmd.base, cmd.counter)
        if not cmd.watch:
            if codes not in s.watching_orders:
                raise _Reject(1, Msg.NOT_WATCHING_ORDERS)
            s.watching_orders.discard(codes)
            book.order_watchers.pop(s.id, None)
            return WatchOrdersReply(tag=tag)
        if codes in s.watching_orders:
            raise _Reject(2, Msg.ALREADY_WATCHING_ORDERS)
        s.watching_orders.add(codes)
        book.order_watchers[s.id] = s
        return WatchOrdersReply(tag=tag, orders=self._snapshot_orders(book, self._depth))

    def _snapshot_orders(self, book: Book, depth: int) -> list[BookOrder]:
        out: list[BookOrder] = []
        for side in (book.bids, book.asks):
            n = 0
            for o in side:
                if n == depth:
                    break
                out.append(BookOrder(id=o.id, quantity=o.signed_quantity, price=o.price, time=o.time))
                n += 1
        return out

    def _watch_ticker(self, s: Session, cmd: WatchTicker, tag: Any) -> Reply:
        book = self._book(cmd.base, cmd.counter)
        codes = (cmd.base, cmd.counter)
        if not cmd.watch:
            if codes not in s.watching_ticker:
                raise _Reject(1, Msg.NOT_WATCHING_TICKER)
            s.watching_ticker.discard(codes)
            book.ticker_watchers.pop(s.id, None)
            return WatchTickerReply(tag=tag)
        if codes in s.watching_ticker:
            raise _Reject(2, Msg.ALREADY_WATCHING_TICKER)
        self._tick()
        # Bring the current watchers up to date first (the 24-hour window may have moved),
        # so that the baseline of "changed" fields is what every watcher has seen.
        self._touched.append(book)
        self._flush_tickers()
        values = self._ticker_values(book)
        book.ticker_sent = values
        s.watching_ticker.add(codes)
        book.ticker_watchers[s.id] = s
        last, bid, ask, low, high, volume = values
        return WatchTickerReply(tag=tag, last=last, bid=bid, ask=ask, low=low, high=high, volume=volume)

    def _ticker_values(self, book: Book) -> tuple[Any, ...]:
        t = book.ticker
        t.expire(self._now)
        return (t.last, book.bids.best_price(), book.asks.best_price(), t.low, t.high, t.volume)

    def _flush_tickers(self) -> None:
        """Send TickerChanged (changed fields only) for every book this command touched."""
        touched = self._touched
        if not touched:
            return
        self._touched = []
        now = self._now
        # dict.fromkeys: the touched books once each, in order (usually one book, twice).
        for book in dict.fromkeys(touched) if len(touched) > 1 else touched:
            if not book.ticker_watchers:
                continue
            t = book.ticker
            # Ticker.expire's own early-out, tested here: a bucket leaves the 24-hour window
            # at most once a minute, so the call usually decides nothing.
            buckets = t.buckets
            if buckets and buckets[0][0] <= now - t.window_us:
                t.expire(now)
            bids, asks = book.bids.keys, book.asks.keys
            values: tuple[Any, ...] = (t.last, bids[-1] if bids else None, -asks[-1] if asks else None, t.low, t.high, t.volume)
            prev = book.ticker_sent
            if prev == values:
                continue
            book.ticker_sent = values
            last, bid, ask, low, high, volume = values
            if prev is None:
                n = TickerChanged(base=book.base, counter=book.counter, last=last, bid=bid, ask=ask, low=low,
                                  high=high, volume=volume)
            else:  # changed fields only (UNSET = absent); no per-field dict: this runs per tick
                n = TickerChanged(
                    base=book.base, counter=book.counter,
                    last=last if last != prev[0] else UNSET, bid=bid if bid != prev[1] else UNSET,
                    ask=ask if ask != prev[2] else UNSET, low=low if low != prev[3] else UNSET,
                    high=high if high != prev[4] else UNSET, volume=volume if volume != prev[5] else UNSET,
                )
            for s in list(book.ticker_watchers.values()):
                s.deliver(n)

    def refresh_tickers(self) -> None:
        """Push 24-hour window changes (old trades leaving it) to ticker watchers; the server
        may call this periodically, since time alone changes low/high/volume."""
        now = self._tick()
        if self.journal is not None:
            self.journal({"op": "refresh", "t": now})
        self._touched.extend(self._books.values())
        self._flush_tickers()

    # ------------------------------------------------------------------------------------
    # notices

    def _notify_balance(self, acct: _Account, asset: int) -> None:
        listeners = acct.listeners
        if listeners:
            n = BalanceChanged(asset=asset, balance=acct.avail[asset])
            for s in listeners.values():
                s.deliver(n)

    def _notify_opened(self, o: Order) -> None:
        owners = self._accounts[o.user_id].listeners
        watchers = self._books[(o.base, o.counter)].order_watchers
        if owners or watchers:
            _notices.order_opened(o, owners, watchers)

    def _notify_closed(self, o: Order) -> None:
        owners = self._accounts[o.user_id].listeners
        watchers = self._books[(o.base, o.counter)].order_watchers
        if owners or watchers:
            _notices.order_closed(o, owners, watchers)

    # ------------------------------------------------------------------------------------
    # administration and introspection (tests, journal, participants)

    def deposit(self, user_id: int, asset: int, amount: int) -> None:
        """Credit (or, negative, debit) a user's available balance from outside the market.

        The exchange's supply of the asset changes by the same amount, so conservation
        still holds.  A debit may not take the available balance below zero.
        """
        acct = self._accounts.get(user_id)
        if acct is None:
            raise ConfigError(f"deposit for unknown user {user_id}")
        if asset not in acct.avail:
            raise ConfigError(f"deposit of unknown asset {asset:#x}")
        if acct.avail[asset] + amount < 0:
            raise ConfigError(f"withdrawal of {-amount} exceeds user {user_id}'s available {acct.avail[asset]}")
        if self._supply[asset] + amount > INT64_MAX:
            raise ConfigError("deposit would make the asset's supply exceed a 64-bit integer")
        acct.avail[asset] += amount
        self._supply[asset] += amount
        if self.journal is not None:
            self.journal({"op": "deposit", "uid": user_id, "asset": asset, "amount": amount})
        self._notify_balance(acct, asset)

    @property
    def assets(self) -> list[int]:
        """Asset codes this exchange knows (sorted)."""
        return list(self._assets)

    @property
    def users(self) -> list[int]:
        return list(self._accounts)

    @property
    def markets(self) -> list[tuple[int, int]]:
        return list(self._books)

    def balances(self, user_id: int) -> dict[int, tuple[int, int]]:
        """asset -> (available, reserved) of one user."""
        acct = self._accounts[user_id]
        return {a: (acct.avail[a], acct.reserved[a]) for a in self._assets}

    def set_remaining(self, order_id: int, quantity: int, extra: int = 0) -> bool:
        """Set a resting order's remaining ``quantity`` in place (its queue position kept),
        with the reservation a resting order of that quantity holds (``ceil(quantity *
        price)`` for a bid, ``quantity`` for an ask), the difference moved between its
        owner's reserved and available balances; 0 closes it (OrderClosed, as a cancel).
        Replays only (backtests.replay: the copies of recorded orders follow the recorded
        remainders); the live exchange never calls it.  Sends no notice but the close and
        its BalanceChanged.  ``extra`` (a bid's only): reserve that much more, so that the
        fee and the rounding of its next fill cannot cut what it keeps (that fill returns
        what it does not need, as every fill of a bid does; until then the reservation
        is above O6's formula: call this again if no fill comes).  False, and nothing
        changed, if the order is not resting, an argument is negative, or the owner cannot
        fund a larger reservation."""
        o = self._orders.get(order_id)
        if o is None or quantity < 0 or extra < 0 or (extra and not o.is_bid):
            return False
        acct = self._accounts[o.user_id]
        if quantity == 0:
            self._close_order(o, acct)
            if self._touched:
                self._flush_tickers()
            return True
        if o.is_bid:
            book = self._books[(o.base, o.counter)]
            need = ceil_div(quantity * o.price * book.mul, book.den) + extra
            asset = o.counter
        else:
            need = quantity
            asset = o.base
        delta = need - o.reserved
        if delta > acct.avail[asset]:
            return False
        acct.avail[asset] -= delta
        acct.reserved[asset] += delta
        o.reserved = need
        o.quantity = quantity
        if delta and acct.listeners:
            self._notify_balance(acct, asset)
        return True

    def fees_collected(self) -> dict[int, int]:
        return dict(self._fees)

    def supply(self) -> dict[int, int]:
        """Opening balances plus deposits, per asset (what conservation compares with)."""
        return dict(self._supply)

    def open_orders(self, user_id: int) -> list[OpenOrder]:
        return [_open_order(o) for o in self._accounts[user_id].orders.values()]

    def book(self, base: int, counter: int) -> tuple[list[BookOrder], list[BookOrder]]:
        """(bids, asks) of one market, best first, full depth."""
        b = self._books[(base, counter)]
        return (
            [BookOrder(id=o.id, quantity=o.quantity, price=o.price, time=o.time) for o in b.bids],
            [BookOrder(id=o.id, quantity=-o.quantity, price=o.price, time=o.time) for o in b.asks],
        )

    def tonce_high_water(self, user_id: int) -> int:
        return self._accounts[user_id].tonce_hw

    def trade_volume(self, user_id: int, asset: int) -> int:
        return self._asset_volume(self._accounts[user_id], asset)

    def ticker(self, base: int, counter: int) -> dict[str, Any]:
        """The current ticker values of one market (as WatchTicker would reply)."""
        return dict(zip(_TICKER_FIELDS, self._ticker_values(self._books[(base, counter)]), strict=True))

    # -- snapshot / restore

    def snapshot(self) -> dict[str, Any]:
        """The whole durable state as JSON-able data (no pickle).  Sessions are not part of
        it: after a restart every connection is gone (see :meth:`cancel_orphaned_orders`)."""
        version, internal, gauss = self._rng.getstate()
        books = []
        for (base, counter), b in self._books.items():
            books.append(
                {
                    "base": base,
                    "counter": counter,
                    "bids": [_order_json(o) for o in b.bids],
                    "asks": [_order_json(o) for o in b.asks],
                    "ticker": b.ticker.to_json(),
                }
            )
        accounts = []
        for uid, a in self._accounts.items():
            accounts.append(
                {
                    "user_id": uid,
                    "avail": [[k, v] for k, v in a.avail.items()],
                    "reserved": [[k, v] for k, v in a.reserved.items()],
                    "tonce_hw": a.tonce_hw,
                    "volumes": [[k[0], k[1], v.to_json()] for k, v in sorted(a.volumes.items())],
                }
            )
        limiters = []
        for (metric, uid), lim in sorted(self._user_limiters.items()):
            limiters.append([metric, uid, _limiter_json(lim)])
        return {
            "version": SNAPSHOT_VERSION,
            "api_version": self.settings.api_version,
            "next_id": self._next_id,
            "next_session_id": self._next_session_id,
            "last_time": self._last_time,
            "rng": [version, list(internal), gauss],
            "supply": [[k, v] for k, v in self._supply.items()],
            "fees": [[k, v] for k, v in self._fees.items()],
            "accounts": accounts,
            "books": books,
            "limiters": limiters,
        }

    @classmethod
    def restore(
        cls,
        settings: ExchangeSettings,
        snapshot: dict[str, Any],
        *,
        clock_us: Callable[[], int],
        rng: random.Random,
        credentials: Mapping[int, UserCredentials] | None = None,
        environ: dict[str, str] | None = None,
    ) -> Exchange:
        """Rebuild an exchange from :meth:`snapshot` output (``rng`` takes the saved state)."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ConfigError(f"snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        if snapshot["api_version"] != settings.api_version:
            raise ConfigError(
                f"snapshot was taken with api_version {snapshot['api_version']}, settings say {settings.api_version}"
            )
        snap_users = {a["user_id"] for a in snapshot["accounts"]}
        want_users = {u.user_id for u in settings.users}
        if snap_users != want_users:
            raise ConfigError(
                "snapshot users differ from settings.users: "
                f"only in snapshot {sorted(snap_users - want_users)}, only in settings {sorted(want_users - snap_users)} "
                "(balances would no longer add up)"
            )
        ex = cls(settings, clock_us=clock_us, rng=rng, credentials=credentials, environ=environ)
        version, internal, gauss = snapshot["rng"]
        rng.setstate((version, tuple(internal), gauss))
        ex._next_id = snapshot["next_id"]
        ex._next_session_id = snapshot["next_session_id"]
        ex._last_time = ex._now = snapshot["last_time"]
        ex._supply = {k: v for k, v in snapshot["supply"]}
        ex._fees = {k: v for k, v in snapshot["fees"]}
        for a in snapshot["accounts"]:
            uid = a["user_id"]
            acct = ex._accounts.get(uid)
            if acct is None:
                raise ConfigError(f"snapshot has user {uid}, who is not in settings.users")
            acct.avail = {k: v for k, v in a["avail"]}
            acct.reserved = {k: v for k, v in a["reserved"]}
            acct.tonce_hw = a["tonce_hw"]
            acct.volumes = {(b, c): PairVolume.from_json(v) for b, c, v in a["volumes"]}
        all_orders: list[Order] = []
        for b in snapshot["books"]:
            codes = (b["base"], b["counter"])
            book = ex._books.get(codes)
            if book is None:
                raise ConfigError(f"snapshot has market {codes}, which is not in settings.markets")
            for side_name, side in (("bids", book.bids), ("asks", book.asks)):
                for d in b[side_name]:
                    o = _order_from_json(d, codes)
                    side.add(o)
                    all_orders.append(o)
            book.ticker = Ticker.from_json(b["ticker"])
        for o in sorted(all_orders, key=lambda o: o.id):
            ex._orders[o.id] = o
            acct = ex._accounts[o.user_id]
            acct.orders[o.id] = o
            if o.tonce is not None:
                acct.by_tonce[o.tonce] = o
        for metric, uid, state in snapshot["limiters"]:
            entry = ex._limits.get(metric)
            if entry is not None:
                ex._user_limiters[(metric, uid)] = _limiter_from_json(state, entry[0])
        return ex

    def state_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`snapshot` (hex)."""
        text = json.dumps(self.snapshot(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    # -- invariants

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant (tests, debug mode)."""
        seen = 0
        reserved_sum: dict[int, dict[int, int]] = {u: dict.fromkeys(self._assets, 0) for u in self._accounts}
        for codes, book in self._books.items():
            for side in (book.bids, book.asks):
                keys = side.keys
                if keys != sorted(set(keys)):
                    raise AssertionError(f"{codes} {'bids' if side.is_bid else 'asks'}: level keys not strictly sorted")
                if len(keys) != len(side.levels):
                    raise AssertionError(f"{codes}: level keys and levels disagree")
                n = 0
                for k in keys:
                    price = k if side.is_bid else -k
                    level = side.levels.get(price)
                    if not level:
                        raise AssertionError(f"{codes}: empty or missing level at {price}")
                    prev: Order | None = None
                    for o in level.values():
                        n += 1
                        if o.price != price or o.is_bid != side.is_bid:
                            raise AssertionError(f"order {o.id} sits at the wrong level or side")
                        if prev is not None and (o.id <= prev.id or o.time < prev.time):
                            raise AssertionError(f"time priority broken at {price}: {prev.id} before {o.id}")
                        prev = o
                        if o.quantity <= 0:
                            raise AssertionError(f"order {o.id} rests with quantity {o.quantity}")
                        want = (
                            ceil_div(o.quantity * o.price * book.mul, book.den) if o.is_bid else o.quantity
                        )
                        if o.reserved != want:
                            raise AssertionError(f"order {o.id} reserves {o.reserved}, formula says {want} (O6)")
                        if self._orders.get(o.id) is not o:
                            raise AssertionError(f"order {o.id} on the book but not in the order index")
                        acct = self._accounts[o.user_id]
                        if acct.orders.get(o.id) is not o:
                            raise AssertionError(f"order {o.id} not in its owner's open orders")
                        if o.tonce is not None and acct.by_tonce.get(o.tonce) is not o:
                            raise AssertionError(f"order {o.id} not indexed by its tonce {o.tonce}")
                        asset = book.counter if o.is_bid else book.base
                        reserved_sum[o.user_id][asset] += o.reserved
                if n != side.count:
                    raise AssertionError(f"{codes}: side count {side.count} but {n} orders")
                seen += n
            bb, ba = book.bids.best_price(), book.asks.best_price()
            if bb is not None and ba is not None and bb >= ba:
                raise AssertionError(f"{codes}: book crossed, best bid {bb} >= best ask {ba}")
        if seen != len(self._orders):
            raise AssertionError(f"order index has {len(self._orders)} orders, books hold {seen}")
        totals = dict.fromkeys(self._assets, 0)
        for uid, acct in self._accounts.items():
            if len(acct.orders) > self._max_open:
                raise AssertionError(f"user {uid} has {len(acct.orders)} open orders > {self._max_open}")
            for a in self._assets:
                if acct.avail[a] < 0:
                    raise AssertionError(f"user {uid} available {a:#x} is negative: {acct.avail[a]}")
                if acct.reserved[a] != reserved_sum[uid][a]:
                    raise AssertionError(
                        f"user {uid} reserved {a:#x} is {acct.reserved[a]}, its orders hold {reserved_sum[uid][a]} (O6)"
                    )
                totals[a] += acct.avail[a] + acct.reserved[a]
            for t, o in acct.by_tonce.items():
                if o.tonce != t or o.id not in acct.orders:
                    raise AssertionError(f"user {uid} tonce index stale at {t}")
                if t > acct.tonce_hw:
                    raise AssertionError(f"user {uid} open tonce {t} above high-water {acct.tonce_hw}")
        for a in self._assets:
            if totals[a] + self._fees[a] != self._supply[a]:
                raise AssertionError(
                    f"conservation broken for {a:#x}: users {totals[a]} + fees {self._fees[a]} != supply {self._supply[a]}"
                )


def _open_order(o: Order) -> OpenOrder:
    return OpenOrder(
        id=o.id, tonce=o.tonce, base=o.base, counter=o.counter, quantity=o.signed_quantity, price=o.price, time=o.time
    )


def _order_json(o: Order) -> dict[str, Any]:
    return {
        "id": o.id,
        "user_id": o.user_id,
        "tonce": o.tonce,
        "is_bid": o.is_bid,
        "quantity": o.quantity,
        "price": o.price,
        "time": o.time,
        "persist": o.persist,
        "session_id": o.session_id,
        "reserved": o.reserved,
    }


def _order_from_json(d: dict[str, Any], codes: tuple[int, int]) -> Order:
    return Order(
        d["id"], d["user_id"], d["tonce"], codes[0], codes[1], d["is_bid"], d["quantity"], d["price"],
        d["time"], d["persist"], d["session_id"], d["reserved"],
    )


def _limiter_json(lim: Limiter) -> dict[str, Any]:
    if isinstance(lim, SlidingWindow):
        return {"kind": "window", "times": list(lim._times)}
    if isinstance(lim, TokenBucket):
        return {"kind": "bucket", "tokens": lim._tokens, "last": lim._last}
    raise TypeError(f"cannot snapshot limiter {type(lim).__name__}")


def _limiter_from_json(state: dict[str, Any], limit: Limit) -> Limiter:
    if state["kind"] == "window":
        w = SlidingWindow(limit)
        w._times.extend(state["times"])
        return w
    b = TokenBucket(limit)
    b._tokens = state["tokens"]
    b._last = state["last"]
    return b
