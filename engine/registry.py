"""Strategy registry: config names a strategy class; this module finds it without running config.

A config's ``class:`` is either a name registered by a shipped strategy::

    @register("market_maker")
    class MarketMaker(Strategy):
        class Config(StrategyConfig, frozen=True): ...

or ``"package.module:ClassName"`` for a strategy of your own on ``sys.path``.  The second form
imports the module by its dotted name with :func:`importlib.import_module` and nothing else:
no file paths, no ``eval``/``exec``, no attribute chains (RELIABILITY.md X6).

:func:`resolve` imports the ``strategies`` package first, so shipped strategies are always
registered before a name is looked up.  All it needs of a strategy class is a ``Config``
attribute holding a msgspec Struct type (the strategy's own parameter schema); the full base
class is :class:`engine.strategy.Strategy`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import msgspec

from engine.errors import ConfigError

__all__ = ["StrategyClass", "register", "registered", "resolve"]


class StrategyClass(Protocol):
    """What the registry requires of a strategy class: its parameter schema."""

    Config: ClassVar[type[msgspec.Struct]]


S = TypeVar("S", bound=type)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_REGISTRY: dict[str, type] = {}
_shipped_loaded = False


def _check_strategy_class(cls: Any, what: str) -> None:
    if not isinstance(cls, type):
        raise ConfigError(f"{what} is not a class")
    conf = getattr(cls, "Config", None)
    if not (isinstance(conf, type) and issubclass(conf, msgspec.Struct)):
        raise ConfigError(f"{what} has no 'Config' attribute holding a msgspec Struct type (its parameter schema)")
    # Strategies never await: an async hook would return a coroutine the runtime cannot use
    # (it would fail at its first call, after the run started); say so at check time.
    for hook in HOOKS:
        fn = getattr(cls, hook, None)
        if fn is not None and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            raise ConfigError(f"{what}: {hook} is 'async def'; strategy hooks are plain 'def' (strategies never await)")


HOOKS = ("on_start", "on_book", "on_trade", "on_ticker", "on_order", "on_fill", "on_timer",
         "on_risk_denied", "on_stop")
"""The strategy hooks (:class:`engine.strategy.Strategy`), all plain ``def``."""


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make a strategy class available to configs as ``class: name``.

    Names are lower_snake_case.  Registering a second, different class under a taken name is
    an error (re-registering the same class, e.g. on module reload, is not).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"strategy name {name!r} must be lower_snake_case ([a-z][a-z0-9_]*, at most 64 chars)")

    def deco(cls: S) -> S:
        _check_strategy_class(cls, f"strategy {name!r} ({cls.__qualname__})")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"strategy name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_shipped() -> None:
    global _shipped_loaded
    if not _shipped_loaded:
        importlib.import_module("strategies")  # registers the shipped strategies
        _shipped_loaded = True


def registered() -> dict[str, type]:
    """Name -> class of every registered strategy (shipped ones included), sorted by name."""
    _load_shipped()
    return dict(sorted(_REGISTRY.items()))


def resolve(spec: str) -> type:
    """The strategy class named by ``spec``: a registered name or ``"module:Class"``.

    Raises ConfigError with a suggestion (closest registered names, or the classes the module
    does have) when nothing matches.
    """
    _load_shipped()
    if ":" not in spec:
        cls = _REGISTRY.get(spec)
        if cls is not None:
            return cls
        if "." in spec:  # "mystrat.TouchQuoter": a module path with a dot for the colon
            dotted, _, name = spec.rpartition(".")
            raise ConfigError(f"unknown strategy {spec!r}; a class of your own is 'module:Class', "
                              f"here {dotted + ':' + name!r}")
        close = difflib.get_close_matches(spec, list(_REGISTRY), n=3, cutoff=0.5)
        hint = (
            "did you mean " + " or ".join(repr(c) for c in close) + "?"
            if close
            else "registered: " + (", ".join(sorted(_REGISTRY)) or "(none)")
        )
        raise ConfigError(f"unknown strategy {spec!r}; {hint} (or give 'package.module:ClassName')")
    module, _, clsname = spec.partition(":")
    if not _MODULE.fullmatch(module) or not _CLASS.fullmatch(clsname):
        raise ConfigError(
            f"strategy class {spec!r} must be a registered name or 'package.module:ClassName' "
            "(dotted module name, no file paths)"
        )
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise ConfigError(
                f"no module named {module!r} (is it on PYTHONPATH? cftrade does not import from "
                "the current directory: run with PYTHONPATH=. or install your package)"
            ) from None
        raise ConfigError(f"importing {module!r} failed: {type(e).__name__}: {e}") from e
    except ImportError as e:
        raise ConfigError(f"importing {module!r} failed: {type(e).__name__}: {e}") from e
    cls = getattr(mod, clsname, None)
    if cls is None:
        classes = [n for n, v in vars(mod).items() if isinstance(v, type) and hasattr(v, "Config")]
        close = difflib.get_close_matches(clsname, classes, n=1, cutoff=0.5)
        hint = f"; did you mean {module}:{close[0]}?" if close else (
            f"; strategy classes there: {', '.join(classes)}" if classes else ""
        )
        raise ConfigError(f"module {module!r} has no class {clsname!r}{hint}")
    _check_strategy_class(cls, f"{spec!r}")
    return cls  # type: ignore[no-any-return]
