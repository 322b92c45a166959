"""``cftrade exchange``: serve the local Coinfloor-protocol exchange with a simulated market.

::

    cftrade exchange                                  # configs/exchange.yaml, 127.0.0.1, free port
    cftrade exchange --config my.yaml --port 8765 --state exchange.state.json

Prints exactly one line on stdout, the URL (``ws://127.0.0.1:PORT/``), once connections are
accepted; logs go to stderr.  Runs until SIGINT or SIGTERM, then closes every connection
(their ``persist: false`` orders are cancelled, as on any disconnect), writes the snapshot if
``--state`` was given, and exits 0.  With ``--state``, a snapshot present at start is
restored first and its state hash verified; the snapshot is also rewritten every
``server.snapshot_seconds`` while running (atomically: temp file, fsync, rename, 0600).

The YAML is :class:`ExchangeConfig`: every :class:`ExchangeSettings` key at the top level,
plus ``participants:`` (:class:`ParticipantsConfig`) and ``server:`` (:class:`ServerConfig`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from engine.errors import CoinfloorError
from engine.exchange.participants import (
    MarketSimulator,
    ParticipantsConfig,
    run_participants,
    settings_with_participants,
)
from engine.exchange.persistence import encode_snapshot, load_exchange, write_atomic
from engine.exchange.server import ExchangeServer, serve_exchange, wall_clock_us
from engine.exchange.settings import ExchangeSettings

if TYPE_CHECKING:
    from engine.exchange.core import Exchange

log = logging.getLogger("engine.exchange")

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "exchange.yaml"


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``server:`` section: connection limits and the snapshot period."""

    max_message_size: int = 64 * 1024
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    send_queue_frames: int = 20_000
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    snapshot_seconds: float = 60.0
    """How often ``--state`` is rewritten while running (it is always written at shutdown)."""

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_connections", "max_connections_per_ip", "send_queue_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, was {getattr(self, name)}")
        for name in ("handshake_timeout", "idle_timeout", "snapshot_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, was {getattr(self, name)}")

    def server_options(self) -> dict[str, Any]:
        return {
            "max_message_size": self.max_message_size,
            "max_connections": self.max_connections,
            "max_connections_per_ip": self.max_connections_per_ip,
            "send_queue_frames": self.send_queue_frames,
            "handshake_timeout": self.handshake_timeout,
            "idle_timeout": self.idle_timeout,
        }


class ExchangeConfig(ExchangeSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The exchange YAML: :class:`ExchangeSettings` keys plus ``participants`` and ``server``."""

    participants: ParticipantsConfig = msgspec.field(default_factory=ParticipantsConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)

    def exchange_settings(self, *, participants: bool = True) -> ExchangeSettings:
        """Plain settings for the core (participant users appended when ``participants``)."""
        base = ExchangeSettings(**{f: getattr(self, f) for f in ExchangeSettings.__struct_fields__})
        if participants and self.participants.enabled:
            return settings_with_participants(base, self.participants)
        return base


def load_config(path: str | Path) -> ExchangeConfig:
    """Strictly load an exchange YAML (raises ConfigError naming file:line and key path)."""
    from engine import configload

    return configload.load(path, ExchangeConfig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cftrade exchange",
        description="Serve the local Coinfloor-protocol exchange (WebSocket) with simulated participants.",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="exchange YAML (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    p.add_argument("--state", metavar="FILE", help="snapshot file: restored at start if present, written at exit")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding a non-loopback address (the demo credentials become reachable)")
    p.add_argument("--no-participants", action="store_true",
                   help="do not run the simulated market (its accounts and resting orders stay)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 0 <= args.port <= 65535:
        print(f"cftrade exchange: --port must be within 0..65535, was {args.port}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        participants = config.participants.enabled and not args.no_participants
        # The participants' accounts exist even with --no-participants (they just do not
        # trade), so a --state file stays restorable whichever way the exchange is started.
        settings = config.exchange_settings()
        return trio.run(_serve, config, settings, participants, args)
    except CoinfloorError as e:
        print(f"cftrade exchange: {e}", file=sys.stderr)
        return 2


async def _serve(config: ExchangeConfig, settings: ExchangeSettings, participants: bool,
                 args: argparse.Namespace) -> int:
    from engine.exchange.core import Exchange

    clock: Callable[[], int] = wall_clock_us
    rng = random.Random(settings.seed if settings.seed is not None else secrets.randbits(64))
    exchange = None
    if args.state:
        exchange = load_exchange(args.state, settings, clock_us=clock, rng=rng)
        if exchange is not None:
            log.info("restored exchange state from %s (hash %s)", args.state, exchange.state_hash()[:16])
    if exchange is None:
        exchange = Exchange(settings, clock_us=clock, rng=rng)

    async with trio.open_nursery() as nursery:
        server: ExchangeServer = await nursery.start(
            functools.partial(
                serve_exchange, exchange, args.host, args.port,
                allow_remote=args.allow_remote, **config.server.server_options(),
            )
        )
        if participants:
            sim = MarketSimulator(exchange, config.participants, start_us=clock())
            await nursery.start(run_participants, sim, clock)
            log.info("simulated market: %d participants", len(sim.agents))
        if args.state:
            nursery.start_soon(_snapshot_every, exchange, args.state, config.server.snapshot_seconds)
        print(server.url, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                break
        with trio.move_on_after(server.options.close_timeout + 1):
            await server.shutdown()  # 1001 to every client; their persist:false orders cancelled
        nursery.cancel_scope.cancel()
    # Every connection task has closed its session by now (persist:false orders cancelled).
    if args.state:
        write_atomic(args.state, encode_snapshot(exchange))
        log.info("state written to %s (hash %s)", args.state, exchange.state_hash()[:16])
    return 0


async def _snapshot_every(exchange: Exchange, path: str, seconds: float) -> None:
    while True:
        await trio.sleep(seconds)
        data = encode_snapshot(exchange)  # on the loop thread: a consistent state
        await trio.to_thread.run_sync(write_atomic, path, data)


__all__ = ["ExchangeConfig", "ServerConfig", "load_config", "main"]
