"""Strict YAML loading into frozen msgspec Structs, with errors that name file, line and key.

Everyone who reads a YAML file goes through :func:`load` / :func:`loads`::

    class MakerConfig(ConfigStruct):
        spread_ticks: Annotated[int, Meta(gt=0)] = 2
        size: Amount = "0.01"

    cfg = load("configs/mm.yaml", MakerConfig)

A bad file raises :class:`~engine.errors.ConfigError` whose message reads like a compiler's::

    configs/mm.yaml:14: strategies[0].params.spread_ticks: must be > 0, was -3
    configs/mm.yaml:9: risk.max_posiiton: unknown key; did you mean 'max_position'?

Why not ``yaml.safe_load`` + ``msgspec.convert``?  ``safe_load`` is necessary but not
sufficient (RELIABILITY.md section 0 point 9): it keeps the last of duplicate keys, expands
alias bombs, turns ``no`` into ``False``, ``010`` into 8 and ``1:30`` into 90, and forgets
line numbers.  So the YAML here is only *composed* (scanned and parsed into a node graph) by
a strict SafeLoader subclass that refuses aliases, anchors and explicit tags; the node graph
is then converted field by field against the target type, where every scalar is judged by
how it is *written*:

========  ==============================================================================
target    accepted
========  ==============================================================================
``str``   a quoted scalar, or a plain one that does not look like a bool, number or null
``int``   plain decimal digits with an optional ``-`` (no ``010``, ``0x1F``, ``1_000``, ``1:30``)
``float`` a plain decimal (``0.5``, ``-2``, ``1e3``); never ``.inf``/``.nan``
``bool``  exactly ``true`` or ``false`` (never ``yes``/``no``/``on``/``off``/``True``)
``None``  ``null``, ``~`` or nothing
Amount    a decimal *string* (``"0.5"``); a YAML float here is an error with a hint to quote it
========  ==============================================================================

Supported target types are what ``msgspec.inspect`` describes: Structs (with
``forbid_unknown_fields``; subclass :class:`ConfigStruct`), ``list``/``tuple``/``set``,
``dict`` with string keys, ``Literal``, ``Enum``, unions, ``Any`` and ``Annotated`` with
``msgspec.Meta`` constraints.  Three config-specific types live here: :data:`Amount`,
:data:`Price` (decimal strings, turned into scaled ints only via :mod:`engine.scale`),
:data:`ConfigPath` (resolved against the config file's directory) and :class:`SecretRef`.

Hooks a Struct may define (both optional, both plain ``def``):

* ``__post_init__`` raising ``ValueError`` (error at the struct's path) or
  :func:`invalid` ``(key, why)`` (error at ``path.key``, on that key's line);
* ``_config_dynamic = ("params",)`` plus a classmethod
  ``_config_types(cls, values: dict) -> dict[str, type]``: the listed fields are converted
  last, with the types the hook picks from the already converted others (a strategy's
  ``params`` typed by its ``class``), keeping full paths and lines in errors.  The hook may
  raise :func:`invalid` to blame one of the converted keys.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml
from yaml.events import (
    AliasEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
)

from engine import scale as _scale
from engine.errors import ConfigError, SecretError
from engine.secret import Secret, from_env, from_file

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "Amount",
    "ConfigPath",
    "ConfigStruct",
    "InvalidField",
    "Price",
    "SecretRef",
    "amount_to_int",
    "dumps",
    "invalid",
    "load",
    "loads",
    "price_to_int",
]

T = TypeVar("T")

MAX_BYTES = 1 << 20
"""Config files larger than 1 MiB are refused before parsing (no config needs more)."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted."""

# ---------------------------------------------------------------------------------------
# Config-specific types

_DECIMAL_TEXT = r"^[0-9]+(\.[0-9]+)?$"
_KIND = "cftrade_kind"  # key in msgspec.Meta(extra=...) that marks our custom string types

Amount = Annotated[
    str,
    msgspec.Meta(
        pattern=_DECIMAL_TEXT,
        description='A non-negative decimal amount written as a quoted string, e.g. "0.5".',
        examples=["0.5", "1000"],
        extra={_KIND: "amount"},
    ),
]
"""A non-negative decimal quantity as text (``"0.5"``).  Convert with :func:`amount_to_int`."""

Price = Annotated[
    str,
    msgspec.Meta(
        pattern=_DECIMAL_TEXT,
        description='A non-negative decimal price written as a quoted string, e.g. "25000.50".',
        examples=["25000.50"],
        extra={_KIND: "price"},
    ),
]
"""A non-negative decimal price as text (``"25000.50"``).  Convert with :func:`price_to_int`."""

ConfigPath = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        description="A file system path; relative paths are relative to the config file's directory.",
        extra={_KIND: "path"},
    ),
]
"""A path; the loader makes a relative path absolute against the config file's directory."""


def amount_to_int(text: str, asset: _scale.Asset, scales: _scale.Scales = _scale.DEFAULT) -> int:
    """The scaled integer of an :data:`Amount` (raises ScaleError if the scale cannot hold it)."""
    return scales.parse_amount(text, asset)


def price_to_int(text: str, market: _scale.Market) -> int:
    """The scaled integer of a :data:`Price` in ``market``."""
    return _scale.parse_price(text, market)


class ConfigStruct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: frozen, keyword-only, unknown keys rejected.

    Subclass as ``class MyConfig(ConfigStruct, frozen=True, kw_only=True):`` (mypy wants ``frozen=True``
    repeated).  Any plain msgspec Struct works too: the loader rejects unknown keys in every
    Struct, whatever its ``forbid_unknown_fields``.
    """


class InvalidField(ConfigError, ValueError):
    """Raised by a config Struct's ``__post_init__`` to blame one of its keys.

    ``key`` is a key of that struct, or a tuple path below it (``("strategies", 2, "name")``)
    for cross-field checks.  The loader turns it into ``file:line: path.key: why`` with the
    line of the deepest key present in the file; outside the loader it is a plain ConfigError.
    """

    def __init__(self, key: str | tuple[str | int, ...], why: str) -> None:
        self.key: tuple[str | int, ...] = (key,) if isinstance(key, str) else tuple(key)
        super().__init__(f"{_fmt_path(self.key)}: {why}")
        self.why = why


def invalid(key: str | tuple[str | int, ...], why: str) -> InvalidField:
    """``raise invalid("url", "ws:// is only allowed to loopback hosts")`` in ``__post_init__``."""
    return InvalidField(key, why)


class SecretRef(ConfigStruct, frozen=True, kw_only=True):
    """Where a secret lives: ``{env: NAME}`` or ``{file: PATH}`` (exactly one).

    The secret itself is never in the YAML and never in the config object: the loader
    checks that it can be read (the variable is set, the file is 0600, owned by the user and
    not a symlink) and forgets it; :meth:`resolve` reads it again where it is used.
    """

    env: str | None = None
    """Name of the environment variable holding the secret."""
    file: str | None = None
    """Path of a file (mode 0600 or stricter) holding the secret; relative to the config file."""

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference needs exactly one of 'env' or 'file'")
        if self.env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.env):
            raise invalid("env", "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")

    def resolve(self, label: str | None = None, environ: dict[str, str] | None = None) -> Secret[str]:
        """Read the secret now (raises SecretError, never showing the value)."""
        if self.env is not None:
            return from_env(self.env, label, environ)
        assert self.file is not None
        return from_file(self.file, label)

    def __repr__(self) -> str:
        return f"SecretRef(env={self.env!r})" if self.env is not None else f"SecretRef(file={self.file!r})"


# ---------------------------------------------------------------------------------------
# Strict YAML composition: a node tree with a line number on every node


class _Reject(Exception):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line = line
        self.why = why


class _StrictComposer(yaml.composer.Composer):
    """Composition only: no aliases, no anchors, no explicit tags (nothing is constructed)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            raise _Reject(line, f"YAML aliases (*{event.anchor}) are not allowed in config files")
        if getattr(event, "anchor", None) is not None:
            raise _Reject(line, f"YAML anchors (&{event.anchor}) are not allowed in config files")
        if isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent) and event.tag is not None:
            raise _Reject(line, f"explicit YAML tags ({event.tag}) are not allowed in config files")
        return super().compose_node(parent, index)


class _StrictLoader(_StrictComposer, yaml.SafeLoader):
    """Pure-Python scanner and parser (the reference; used when libyaml is missing)."""


_Loader: Callable[[str], Any] = _StrictLoader
try:
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    pass
else:

    class _CStrictLoader(_StrictComposer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's scanner and parser (about 10x faster) under the same strict composer."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            yaml.composer.Composer.__init__(self)

    _Loader = _CStrictLoader


# How PyYAML (YAML 1.1) would read a plain scalar, to explain why we refuse it.
_Y11 = yaml.constructor.SafeConstructor()

_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
# A dot or an exponent is required: ``010`` must not pass as a float.
_FLOAT_RE = re.compile(r"-?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_YAML11_BOOLS = frozenset(
    "y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF".split()
)
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(slots=True)
class _Scalar:
    text: str
    line: int
    plain: bool
    kind: str  # "str" | "int" | "float" | "bool" | "null" | "other" (ambiguous plain scalar)
    reading: str = ""  # for kind "other": what YAML 1.1 makes of it

    def describe(self) -> str:
        return {
            "str": "a string" if not self.plain else "a plain string",
            "int": "an integer",
            "float": "a float",
            "bool": "a boolean",
            "null": "null",
        }.get(self.kind, "an ambiguous plain scalar")


@dataclass(slots=True)
class _Map:
    items: list[tuple[_Scalar, _Node]]
    line: int

    def describe(self) -> str:
        return "a mapping"


@dataclass(slots=True)
class _Seq:
    items: list[_Node]
    line: int

    def describe(self) -> str:
        return "a list"


_Node = _Scalar | _Map | _Seq


def _classify(node: yaml.ScalarNode) -> _Scalar:
    text = node.value
    line = node.start_mark.line + 1
    if node.style:  # quoted or block scalar: always a string (plain is None, or "" from libyaml)
        return _Scalar(text, line, False, "str")
    if _INT_RE.fullmatch(text):
        return _Scalar(text, line, True, "int")
    if _FLOAT_RE.fullmatch(text):
        return _Scalar(text, line, True, "float")
    if text in ("true", "false"):
        return _Scalar(text, line, True, "bool")
    if text in _NULLS:
        return _Scalar(text, line, True, "null")
    if node.tag != _STR_TAG or text in _YAML11_BOOLS:
        try:
            value = _Y11.construct_object(node) if node.tag != _STR_TAG else (text in ("y", "Y"))
        except Exception:  # a resolver match that does not construct (e.g. 2024-13-45)
            value = None
        what = {bool: "the boolean", int: "the integer", float: "the float"}.get(type(value), "a")
        shown = repr(value) if what != "a" else type(value).__name__
        return _Scalar(text, line, True, "other", f"{what} {shown}")
    return _Scalar(text, line, True, "str")


def _build(node: yaml.Node, depth: int = 0) -> _Node:
    if depth > MAX_DEPTH:
        raise _Reject(node.start_mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(node, yaml.ScalarNode):
        return _classify(node)
    if isinstance(node, yaml.SequenceNode):
        return _Seq([_build(n, depth + 1) for n in node.value], node.start_mark.line + 1)
    assert isinstance(node, yaml.MappingNode)
    items: list[tuple[_Scalar, _Node]] = []
    seen: dict[str, int] = {}
    for knode, vnode in node.value:
        kline = knode.start_mark.line + 1
        if not isinstance(knode, yaml.ScalarNode):
            raise _Reject(kline, "mapping keys must be plain strings, not lists or mappings")
        key = _classify(knode)
        if key.kind != "str":
            raise _Reject(kline, f"key {key.text!r} is not a string in YAML; quote it: \"{key.text}\"")
        if key.text in seen:
            raise _Reject(kline, f"duplicate key {key.text!r} (first on line {seen[key.text]})")
        seen[key.text] = kline
        items.append((key, _build(vnode, depth + 1)))
    return _Map(items, node.start_mark.line + 1)


def _compose(text: str, filename: str) -> _Node | None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise _error(filename, None, (), f"file is {size} bytes; config files are limited to {MAX_BYTES} bytes (1 MiB)")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        return None if root is None else _build(root)
    except _Reject as e:
        raise _error(filename, e.line, (), e.why) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        why = " ".join(p for p in (e.context, e.problem) if p)
        raise _error(filename, line, (), f"YAML syntax error: {why}") from None
    except yaml.YAMLError as e:
        raise _error(filename, None, (), f"YAML error: {e}") from None
    except RecursionError:
        raise _error(filename, None, (), "YAML nesting is too deep") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------
# Errors


def _fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", p):
            out += f".{p}" if out else p
        else:
            out += f"[{p!r}]"
    return out


def _error(filename: str, line: int | None, path: tuple[str | int, ...], why: str) -> ConfigError:
    where = f"{filename}:{line}" if line is not None else filename
    p = _fmt_path(path)
    err = ConfigError(f"{where}: {p}: {why}" if p else f"{where}: {why}")
    err.filename = filename  # type: ignore[attr-defined]
    err.line = line  # type: ignore[attr-defined]
    err.path = p  # type: ignore[attr-defined]
    err.why = why  # type: ignore[attr-defined]
    return err


class _Fail(Exception):
    """Internal: a conversion failure at (line, path); becomes a ConfigError at the top."""

    def __init__(self, line: int, path: tuple[str | int, ...], why: str) -> None:
        super().__init__(why)
        self.line = line
        self.path = path
        self.why = why


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------------------
# Conversion of the node tree against msgspec type info


@dataclass(slots=True)
class _Ctx:
    base_dir: Path
    resolve_secrets: bool
    secret: bool = False  # inside a SecretRef: never echo a value


@functools.lru_cache(maxsize=256)
def _type_info(t: Any) -> mi.Type:
    # msgspec.inspect walks the whole type each call; strategy params repeat per strategy.
    return mi.type_info(t)


def _kind_of(t: mi.Type) -> str | None:
    return t.extra.get(_KIND) if isinstance(t, mi.Metadata) and t.extra else None


def decimal_fields(obj: Any) -> list[tuple[str, str, str]]:
    """``(field, kind, text)`` for each :data:`Amount` (kind ``"amount"``) or :data:`Price`
    (``"price"``) field of a converted config Struct that is set: what a caller checks
    against the scales of the assets it belongs to (a strategy's params, say)."""
    if not isinstance(obj, msgspec.Struct):
        return []
    out = []
    info = mi.type_info(type(obj))
    for f in getattr(info, "fields", ()):
        _, kind = _unwrap(f.type)
        if kind not in ("amount", "price"):
            for m in (f.type.types if isinstance(f.type, mi.UnionType) else ()):
                _, kind = _unwrap(m)
                if kind in ("amount", "price"):
                    break
        text = getattr(obj, f.name)
        if kind in ("amount", "price") and isinstance(text, str):
            out.append((f.encode_name, kind, text))
    return out


def _unwrap(t: mi.Type) -> tuple[mi.Type, str | None]:
    kind = None
    while isinstance(t, mi.Metadata):
        kind = kind or _kind_of(t)
        t = t.type
    return t, kind


def _quote_hint(s: _Scalar, ctx: _Ctx) -> str:
    if ctx.secret:
        return ""
    return f"; quote it if you mean the text: \"{s.text}\""


def _check_num(v: int | float, t: mi.IntType | mi.FloatType, s: _Scalar, path: tuple[str | int, ...]) -> None:
    for bound, op, ok in (
        (t.gt, ">", lambda b: v > b),
        (t.ge, ">=", lambda b: v >= b),
        (t.lt, "<", lambda b: v < b),
        (t.le, "<=", lambda b: v <= b),
    ):
        if bound is not None and not ok(bound):
            raise _Fail(s.line, path, f"must be {op} {bound}, was {s.text}")
    if t.multiple_of is not None and v % t.multiple_of:
        raise _Fail(s.line, path, f"must be a multiple of {t.multiple_of}, was {s.text}")


def _check_len(n: int, t: Any, line: int, path: tuple[str | int, ...], unit: str) -> None:
    if t.min_length is not None and n < t.min_length:
        raise _Fail(line, path, f"must have at least {t.min_length} {unit}, has {n}")
    if t.max_length is not None and n > t.max_length:
        raise _Fail(line, path, f"must have at most {t.max_length} {unit}, has {n}")


def _expect(node: _Node, what: str, path: tuple[str | int, ...], ctx: _Ctx) -> _Fail:
    if isinstance(node, _Scalar) and not ctx.secret:
        if node.kind == "other":
            return _Fail(node.line, path, f"expected {what}, got {node.text} (YAML 1.1 reads it as {node.reading})")
        return _Fail(node.line, path, f"expected {what}, got {node.describe()} {_show(node.text)}")
    return _Fail(node.line, path, f"expected {what}, got {node.describe()}")


def _str(node: _Node, t: mi.StrType, kind: str | None, path: tuple[str | int, ...], ctx: _Ctx) -> str:
    if not isinstance(node, _Scalar):
        raise _expect(node, "a string", path, ctx)
    if kind in ("amount", "price"):
        what = "a decimal amount" if kind == "amount" else "a decimal price"
        if node.kind in ("int", "float") or node.kind == "other":
            raise _Fail(
                node.line, path,
                f"{what} must be a quoted string, got {node.describe()} {node.text}; write \"{node.text}\" "
                "(decimals are strings so they are never rounded through binary floats)",
            )
        if node.kind != "str":
            raise _expect(node, f"{what} as a quoted string", path, ctx)
        if not re.fullmatch(_DECIMAL_TEXT, node.text):
            raise _Fail(node.line, path, f"{what} must be plain non-negative decimal digits like \"0.5\", was {_show(node.text)}")
        return node.text
    if node.kind != "str":
        if node.kind == "other":
            why = f"expected a string, got {node.text}, which YAML 1.1 reads as {node.reading}"
        else:
            why = f"expected a string, got {node.describe()} {node.text}"
        raise _Fail(node.line, path, why + _quote_hint(node, ctx))
    text = node.text
    _check_len(len(text), t, node.line, path, "characters")
    if t.pattern is not None and not re.search(t.pattern, text):
        shown = "" if ctx.secret else f", was {_show(text)}"
        raise _Fail(node.line, path, f"must match the pattern {t.pattern!r}{shown}")
    if kind == "path":
        p = Path(text).expanduser()
        text = str(p if p.is_absolute() else ctx.base_dir / p)
    return text


def _int(node: _Node, t: mi.IntType, path: tuple[str | int, ...], ctx: _Ctx) -> int:
    if not isinstance(node, _Scalar) or node.kind != "int":
        if isinstance(node, _Scalar) and node.kind == "other":
            raise _Fail(node.line, path, f"expected an integer in plain decimal digits, got {node.text} "
                        f"(YAML 1.1 reads it as {node.reading}); write it as plain digits")
        if isinstance(node, _Scalar) and node.kind == "str" and not node.plain and _INT_RE.fullmatch(node.text):
            raise _Fail(node.line, path, f"expected an integer, got the quoted string {_show(node.text)}; remove the quotes")
        raise _expect(node, "an integer", path, ctx)
    v = int(node.text)
    _check_num(v, t, node, path)
    return v


def _float(node: _Node, t: mi.FloatType, path: tuple[str | int, ...], ctx: _Ctx) -> float:
    if not isinstance(node, _Scalar) or node.kind not in ("int", "float"):
        raise _expect(node, "a number", path, ctx)
    v = float(node.text)
    if v != v or v in (float("inf"), float("-inf")):
        raise _Fail(node.line, path, f"must be a finite number, was {node.text}")
    _check_num(v, t, node, path)
    return v


def _bool(node: _Node, path: tuple[str | int, ...], ctx: _Ctx) -> bool:
    if isinstance(node, _Scalar) and node.kind == "bool":
        return node.text == "true"
    if isinstance(node, _Scalar) and not node.plain and node.text in ("true", "false"):
        raise _Fail(node.line, path, f"expected true or false, got the quoted string {node.text!r}; remove the quotes")
    if isinstance(node, _Scalar) and node.kind in ("other", "str") and node.text in _YAML11_BOOLS:
        raise _Fail(node.line, path, f"expected true or false, got {node.text}; write {'true' if node.text.lower() in ('y', 'yes', 'true', 'on') else 'false'}")
    raise _expect(node, "true or false", path, ctx)


def _literal(node: _Node, values: tuple[Any, ...], path: tuple[str | int, ...], ctx: _Ctx) -> Any:
    if isinstance(node, _Scalar):
        for v in values:
            if isinstance(v, bool):
                continue
            if isinstance(v, int) and node.kind == "int" and int(node.text) == v:
                return v
            if isinstance(v, str) and node.text == v and (node.kind == "str" or not node.plain or node.kind == "other"):
                return v
        if values and all(isinstance(v, str) for v in values):
            close = difflib.get_close_matches(node.text, [str(v) for v in values], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            opts = ", ".join(repr(v) for v in values)
            return _raise(node.line, path, f"must be one of {opts}, was {_show(node.text)}{hint}")
    opts = ", ".join(repr(v) for v in values)
    if isinstance(node, _Scalar):
        raise _Fail(node.line, path, f"must be one of {opts}, was {_show(node.text)}")
    raise _Fail(node.line, path, f"must be one of {opts}, got {node.describe()}")


def _raise(line: int, path: tuple[str | int, ...], why: str) -> Any:
    raise _Fail(line, path, why)


def _plain_value(node: _Node, path: tuple[str | int, ...], ctx: _Ctx) -> Any:
    """``Any``: natural values.  Ambiguous plain scalars stay text (a typed pass decides)."""
    if isinstance(node, _Map):
        return {k.text: _plain_value(v, (*path, k.text), ctx) for k, v in node.items}
    if isinstance(node, _Seq):
        return [_plain_value(v, (*path, i), ctx) for i, v in enumerate(node.items)]
    if node.kind == "int":
        return int(node.text)
    if node.kind == "float":
        return float(node.text)
    if node.kind == "bool":
        return node.text == "true"
    if node.kind == "null":
        return None
    return node.text


def _field_name_hint(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; valid keys: " + ", ".join(names)


def _struct(node: _Node, t: mi.StructType, path: tuple[str | int, ...], ctx: _Ctx) -> Any:
    cls = t.cls
    name = getattr(cls, "__config_name__", None) or "a mapping"
    shorthands: tuple[str, ...] = getattr(cls, "__config_shorthands__", ())
    if shorthands and isinstance(node, _Scalar) and node.kind == "str" and node.text in shorthands:
        node = _Map([], node.line)  # a named default (``exchange: embedded``): all defaults
    if shorthands and not isinstance(node, _Map):
        name = f"{name} or {' or '.join(repr(s) for s in shorthands)}"
    if not isinstance(node, _Map):
        if cls is SecretRef and isinstance(node, _Scalar) and node.kind != "null":
            # Never echo it: this is very likely the secret itself.
            raise _Fail(node.line, path, "a secret must not be written inline in the config; "
                        "use {env: VARIABLE} or {file: PATH} (mode 0600)")
        raise _expect(node, name, path, ctx)
    by_name = {f.encode_name: f for f in t.fields}
    keys = {k.text: (k, v) for k, v in node.items}
    if t.tag_field is not None and t.tag_field in keys:
        k, v = keys.pop(t.tag_field)
        if not (isinstance(v, _Scalar) and v.text == str(t.tag)):
            raise _Fail(k.line, (*path, k.text), f"must be {t.tag!r}")
    for key, (k, _v) in keys.items():
        if key not in by_name:
            raise _Fail(k.line, (*path, key), _field_name_hint(key, list(by_name)))
    inner = _Ctx(ctx.base_dir, ctx.resolve_secrets, ctx.secret or cls is SecretRef)
    dyn_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(cls, "_config_types", None)
    values: dict[str, Any] = {}
    deferred: list[mi.Field] = []
    for f in t.fields:
        if dyn_hook is not None and f.name in getattr(cls, "_config_dynamic", ()):
            deferred.append(f)
            continue
        if f.encode_name not in keys:
            if f.required:
                raise _Fail(node.line, (*path, f.encode_name), "required key is missing")
            rebased = _rebase(f.default, f.type, ctx)
            if rebased is not f.default:
                values[f.name] = rebased
            continue
        k, v = keys[f.encode_name]
        values[f.name] = _convert(v, f.type, (*path, f.encode_name), inner)
    if dyn_hook is not None:
        try:
            types = dyn_hook(values)
        except InvalidField as e:
            raise _Fail(_line_at(node, e.key), (*path, *e.key), e.why) from None
        for f in deferred:
            ft = types.get(f.name)
            fti = _type_info(ft) if ft is not None else f.type
            if f.encode_name in keys:
                v = keys[f.encode_name][1]
            elif isinstance(_unwrap(fti)[0], mi.StructType):
                v = _Map([], node.line)  # absent: the struct's defaults, and its required keys reported
            elif f.required:
                raise _Fail(node.line, (*path, f.encode_name), "required key is missing")
            else:
                continue
            values[f.name] = _convert(v, fti, (*path, f.encode_name), inner)
    if cls is SecretRef and values.get("file") is not None:
        p = Path(values["file"]).expanduser()
        values["file"] = str(p if p.is_absolute() else ctx.base_dir / p)
    try:
        obj = cls(**values)
    except InvalidField as e:
        raise _Fail(_line_at(node, e.key), (*path, *e.key), e.why) from None
    except (ValueError, TypeError) as e:
        raise _Fail(node.line, path, str(e)) from None
    if isinstance(obj, SecretRef) and ctx.resolve_secrets:
        try:
            obj.resolve(_fmt_path(path) or None)
        except SecretError as e:
            raise _Fail(node.line, path, str(e)) from None
    return obj


def _rebase(value: Any, t: mi.Type, ctx: _Ctx) -> Any:
    """A default value with its :data:`ConfigPath` strings made relative to the config file.

    Returns ``value`` itself when nothing changes (so defaults stay shared and cheap).
    """
    t, kind = _unwrap(t)
    if kind == "path" and isinstance(value, str):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else ctx.base_dir / p)
    if isinstance(t, mi.UnionType):
        for m in t.types:
            new = _rebase(value, m, ctx)
            if new is not value:
                return new
        return value
    if isinstance(t, mi.StructType) and isinstance(value, t.cls):
        changes = {}
        for f in t.fields:
            old = getattr(value, f.name)
            new = _rebase(old, f.type, ctx)
            if new is not old:
                changes[f.name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    return value


def _line_at(node: _Node, rel: tuple[str | int, ...]) -> int:
    """Line of the deepest key of ``rel`` (a path below ``node``) present in the file."""
    line = node.line
    for p in rel:
        if isinstance(node, _Map) and isinstance(p, str):
            hit = next(((k, v) for k, v in node.items if k.text == p), None)
            if hit is None:
                break
            line, node = hit[0].line, hit[1]
        elif isinstance(node, _Seq) and isinstance(p, int) and 0 <= p < len(node.items):
            node = node.items[p]
            line = node.line
        else:
            break
    return line


def _union(node: _Node, t: mi.UnionType, path: tuple[str | int, ...], ctx: _Ctx) -> Any:
    members = [_unwrap(m)[0] for m in t.types]
    if isinstance(node, _Scalar) and node.kind == "null" and any(isinstance(m, mi.NoneType) for m in members):
        return None
    if isinstance(node, _Scalar) and any(isinstance(m, mi.StructType) and m.cls is SecretRef for m in members):
        # ``cookie: hunter2`` is almost surely the secret itself: refuse without echoing it.
        return _struct(node, next(m for m in members if isinstance(m, mi.StructType) and m.cls is SecretRef), path, ctx)
    maps = (mi.StructType, mi.DictType, mi.TypedDictType, mi.DataclassType)
    seqs = (mi.ListType, mi.TupleType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)
    if isinstance(node, _Map):
        cands = [m for m, raw in zip(members, t.types, strict=True) if isinstance(m, maps)]
        raws = [raw for m, raw in zip(members, t.types, strict=True) if isinstance(m, maps)]
        if len(cands) > 1:
            # Untagged struct unions: the one whose keys cover the mapping's keys.
            keys = {k.text for k, _ in node.items}
            fitting = [
                raw for m, raw in zip(cands, raws, strict=True)
                if isinstance(m, mi.StructType) and keys <= {f.encode_name for f in m.fields} | {m.tag_field}
            ]
            raws = fitting or raws[:1]
    elif isinstance(node, _Seq):
        raws = [raw for m, raw in zip(members, t.types, strict=True) if isinstance(m, seqs)]
    else:
        raws = [raw for m, raw in zip(members, t.types, strict=True) if not isinstance(m, maps + seqs)]
    if not raws:
        kinds = ", ".join(_describe_type(m) for m in members)
        raise _expect(node, kinds.replace(", ", " or "), path, ctx)
    first: _Fail | None = None
    fitting_kind: _Fail | None = None
    for raw in raws:
        try:
            return _convert(node, raw, path, ctx)
        except _Fail as e:
            first = first or e
            if fitting_kind is None and isinstance(node, _Scalar) and _fits_kind(node, _unwrap(raw)[0]):
                fitting_kind = e
    assert first is not None
    if fitting_kind is not None:
        raise fitting_kind  # right type, wrong value (``-1`` for ``int >= 1 | None``): say only that
    if len(raws) > 1 and isinstance(node, _Scalar):
        kinds = " or ".join(_describe_type(_unwrap(r)[0]) for r in raws)
        raise _Fail(first.line, first.path, f"expected {kinds}; {first.why}")
    raise first


def _fits_kind(node: _Scalar, t: mi.Type) -> bool:
    """Whether the scalar is of the member's type (so its failure is about the value)."""
    if isinstance(t, mi.IntType):
        return node.kind == "int"
    if isinstance(t, mi.FloatType):
        return node.kind in ("int", "float")
    if isinstance(t, mi.StrType):
        return node.kind == "str"
    if isinstance(t, mi.BoolType):
        return node.kind == "bool"
    return False


def _describe_type(t: mi.Type) -> str:
    if isinstance(t, mi.LiteralType):
        return " or ".join(repr(v) for v in t.values)
    return {
        mi.StrType: "a string", mi.IntType: "an integer", mi.FloatType: "a number",
        mi.BoolType: "true or false", mi.NoneType: "null", mi.StructType: "a mapping",
        mi.DictType: "a mapping", mi.ListType: "a list",
    }.get(type(t), type(t).__name__)


def _convert(node: _Node, t: mi.Type, path: tuple[str | int, ...], ctx: _Ctx) -> Any:
    t, kind = _unwrap(t)
    if isinstance(t, mi.AnyType):
        return _plain_value(node, path, ctx)
    if isinstance(t, mi.StructType):
        return _struct(node, t, path, ctx)
    if isinstance(t, mi.UnionType):
        return _union(node, t, path, ctx)
    if isinstance(t, mi.StrType):
        return _str(node, t, kind, path, ctx)
    if isinstance(t, mi.BoolType):
        return _bool(node, path, ctx)
    if isinstance(t, mi.IntType):
        return _int(node, t, path, ctx)
    if isinstance(t, mi.FloatType):
        return _float(node, t, path, ctx)
    if isinstance(t, mi.NoneType):
        if isinstance(node, _Scalar) and node.kind == "null":
            return None
        raise _expect(node, "null", path, ctx)
    if isinstance(t, mi.LiteralType):
        return _literal(node, t.values, path, ctx)
    if isinstance(t, mi.EnumType):
        members = list(t.cls)
        val = _literal(node, tuple(m.value for m in members), path, ctx)
        return t.cls(val)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        if not isinstance(node, _Seq):
            raise _expect(node, "a list", path, ctx)
        _check_len(len(node.items), t, node.line, path, "items")
        items = [_convert(v, t.item_type, (*path, i), ctx) for i, v in enumerate(node.items)]
        if isinstance(t, mi.ListType):
            return items
        if isinstance(t, mi.VarTupleType):
            return tuple(items)
        try:
            return set(items) if isinstance(t, mi.SetType) else frozenset(items)
        except TypeError:
            raise _Fail(node.line, path, "items must be plain values for a set") from None
    if isinstance(t, mi.TupleType):
        if not isinstance(node, _Seq):
            raise _expect(node, "a list", path, ctx)
        if len(node.items) != len(t.item_types):
            raise _Fail(node.line, path, f"expected a list of {len(t.item_types)} items, got {len(node.items)}")
        return tuple(_convert(v, it, (*path, i), ctx) for i, (v, it) in enumerate(zip(node.items, t.item_types, strict=True)))
    if isinstance(t, mi.DictType):
        if not isinstance(node, _Map):
            raise _expect(node, "a mapping", path, ctx)
        _check_len(len(node.items), t, node.line, path, "keys")
        out: dict[Any, Any] = {}
        for k, v in node.items:
            key = _convert(k, t.key_type, (*path, k.text), ctx)
            out[key] = _convert(v, t.value_type, (*path, k.text), ctx)
        return out
    raise TypeError(f"configload does not support fields of type {t!r} (at {_fmt_path(path) or 'the top'})")


# ---------------------------------------------------------------------------------------
# Public API


def loads(
    text: str,
    type_: type[T],
    *,
    filename: str = "<string>",
    resolve_secrets: bool = True,
    base_dir: str | os.PathLike[str] | None = None,
) -> T:
    """Strictly parse YAML ``text`` into ``type_`` (usually a :class:`ConfigStruct`).

    ``filename`` is used in error messages and (unless ``base_dir`` is given) its directory
    is where relative :data:`ConfigPath` and secret file paths start.  With
    ``resolve_secrets`` (the default) every :class:`SecretRef` is read once to prove it is
    present and safely stored; the value is not kept.  Raises ConfigError.
    """
    root = _compose(text, filename)
    if base_dir is None:
        base_dir = Path(filename).parent if not filename.startswith("<") else Path.cwd()
    ctx = _Ctx(Path(base_dir).absolute(), resolve_secrets)
    if root is None:
        root = _Map([], 1)  # an empty file is an empty mapping (all defaults)
    try:
        return _convert(root, _type_info(type_), (), ctx)  # type: ignore[no-any-return,arg-type]
    except _Fail as e:
        raise _error(filename, e.line, e.path, e.why) from None


def load(path: str | os.PathLike[str], type_: type[T], *, resolve_secrets: bool = True) -> T:
    """Read the YAML file at ``path`` and strictly convert it to ``type_`` (see :func:`loads`).

    Files over :data:`MAX_BYTES` are refused before they are read.
    """
    p = Path(path)
    name = str(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise _error(name, None, (), f"file is {size} bytes; config files are limited to {MAX_BYTES} bytes (1 MiB)")
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise _error(name, None, (), f"cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _error(name, line, (), f"file is not valid UTF-8 (byte {e.start})") from None
    return loads(text, type_, filename=name, resolve_secrets=resolve_secrets, base_dir=p.parent)


class _Dumper(yaml.SafeDumper):
    pass


def _repr_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Always quote strings so that "no", "010" or "1e3" read back as strings.
    return dumper.represent_scalar(_STR_TAG, data, style='"')


_Dumper.add_representer(str, _repr_str)


def dumps(obj: Any) -> str:
    """YAML text for a config object that :func:`loads` reads back to an equal object.

    Every string is double-quoted, so nothing can change type on the way back.
    """
    return yaml.dump(msgspec.to_builtins(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def iter_paths(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, leaf value) pairs of a converted config, for summaries and diffs."""
    data = msgspec.to_builtins(obj) if not isinstance(obj, dict | list) else obj
    if isinstance(data, dict):
        for k, v in data.items():
            yield from iter_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from iter_paths(v, f"{prefix}[{i}]")
    else:
        yield prefix, data


# ---------------------------------------------------------------------------------------
# JSON Schema


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a Struct class (the string literal under each field), by name.

    Python keeps no attribute docstrings at run time, so they are read from the source.
    """
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _struct_classes(t: mi.Type, out: dict[str, type]) -> None:
    t, _ = _unwrap(t)
    if isinstance(t, mi.StructType):
        if t.cls.__name__ in out:
            return
        out[t.cls.__name__] = t.cls
        for f in t.fields:
            _struct_classes(f.type, out)
    elif isinstance(t, mi.UnionType):
        for m in t.types:
            _struct_classes(m, out)
    elif isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        _struct_classes(t.item_type, out)
    elif isinstance(t, mi.TupleType):
        for it in t.item_types:
            _struct_classes(it, out)
    elif isinstance(t, mi.DictType):
        _struct_classes(t.value_type, out)


def json_schema(type_: type, *, title: str | None = None) -> dict[str, Any]:
    """JSON Schema (2020-12) of a config type, for editors and ``cftrade check --schema``.

    msgspec's schema plus what it cannot know: field docstrings become ``description``,
    class docstrings are dedented, and :class:`SecretRef` demands exactly one of env/file.
    The schema checks shapes; the loader's extra rules (YAML 1.1 traps, cross-field checks,
    strategy params) are stricter.
    """
    import inspect

    schema: dict[str, Any] = msgspec.json.schema(type_)
    classes: dict[str, type] = {}
    _struct_classes(mi.type_info(type_), classes)
    for name, d in schema.get("$defs", {}).items():
        cls = classes.get(name)
        if cls is None:
            continue
        if "description" in d:
            d["description"] = inspect.cleandoc(d["description"])
        docs = field_docs(cls)
        for f in msgspec.structs.fields(cls):
            prop = d.get("properties", {}).get(f.encode_name)
            if prop is not None and f.name in docs and "description" not in prop:
                prop["description"] = docs[f.name]
        if cls is SecretRef:
            d["oneOf"] = [{"required": ["env"]}, {"required": ["file"]}]
        shorthands = getattr(cls, "__config_shorthands__", ())
        if shorthands:
            obj = {k: v for k, v in d.items() if k not in ("title", "description")}
            for k in list(obj):
                del d[k]
            d["anyOf"] = [{"enum": list(shorthands)}, obj]
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if title:
        out["title"] = title
    out.update(schema)
    return out
