"""The JSON codec for both roles: no I/O, no trio, strict, fast.

Client role::

    frame = CODEC.decode_server_frame(text)      # -> Notice | ReplyFrame
    if isinstance(frame, ReplyFrame):
        reply = CODEC.decode_reply(frame, PlaceOrderReply)   # ErrorReply if error_code != 0

Server role::

    try:
        cmd = CODEC.decode_command(text)          # -> Command
    except BadCommand as e:
        send(ErrorReply(tag=e.tag, error_code=8, error_msg=e.error_msg))

Anything the peer sends that we cannot accept (truncated JSON, NaN, 1e400, integers outside
int64, bools or floats for integers, deep nesting, missing fields, unknown notice names)
raises :class:`RemoteProtocolError` (or its subclasses below) naming the field and value;
nothing else escapes.  ``RecursionError`` from pathological nesting is caught here too.

Decoding is by msgspec's typed decoder: notices decode straight into frozen structs in one
pass (about 10x the throughput of ``json.loads`` building dicts; see BENCHMARKS.md).
"""

from __future__ import annotations

import re
from typing import TypeVar, Union

import msgspec

from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.protocol.messages import (
    COMMANDS,
    NOTICES,
    UNSET,
    Command,
    ErrorReply,
    Int64,
    Notice,
    Reply,
    UnsetType,
)

R = TypeVar("R", bound=Reply)

DEFAULT_MAX_FRAME = 1 << 20  # bytes; the exchange uses a smaller limit for commands

MAX_COMMAND_NESTING = 32
"""How deeply a command's JSON may nest arrays and objects (the protocol's commands are flat
objects: depth 1; deeper values can only sit in fields the exchange ignores).  Deeper
frames are refused with error 8 "JSON nesting too deep.".  Without this limit the answer
would depend on the interpreter: msgspec stops at CPython's recursion limit, which is
about 1,000 levels on 3.11 and about 10,000 on 3.12+, so a frame nested 5,000 deep was
refused on one and executed on the other."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_nesting(data: bytes | str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do
    not count).  For well-formed JSON; used on frames the cheap test in
    :meth:`Codec.decode_command` finds suspicious, so C-speed throughout (no Python loop
    over the frame)."""
    import numpy as np  # the protocol layer needs it only here

    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    a = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((a == 0x5B) | (a == 0x7B), 1, -1)
    return int(np.cumsum(steps).max())


class UnknownNotice(RemoteProtocolError):
    """A frame with a ``notice`` we do not know (log once per name, then ignore)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown notice {name[:64]!r}", field="$.notice")
        self.name = name


class BadCommand(RemoteProtocolError):
    """A command frame the exchange refuses with error 8 (or the code given).

    ``tag`` is the frame's tag when one could be read (so the error reply can echo it),
    ``error_msg`` the text for the reply.
    """

    def __init__(self, error_msg: str, *, tag: int | None, field: str | None = None, error_code: int = 8) -> None:
        super().__init__(error_msg, field=field)
        self.tag = tag
        self.error_code = error_code
        self.error_msg = error_msg


class ReplyFrame(msgspec.Struct, frozen=True, gc=False):
    """The head of a reply frame, enough to route it by tag; ``raw`` keeps the text."""

    tag: int | None
    error_code: int
    raw: bytes | str


class _ReplyHead(msgspec.Struct):
    error_code: Int64
    tag: Int64 | UnsetType = UNSET
    error_msg: str | UnsetType = UNSET


class _CommandHead(msgspec.Struct):
    tag: msgspec.Raw = msgspec.Raw(b"null")
    method: msgspec.Raw = msgspec.Raw(b"null")


_AT = re.compile(r" - at `(\$[^`]*)`$")


def _describe(err: Exception) -> tuple[str, str | None]:
    """(message, json path) from a msgspec error."""
    text = str(err)
    m = _AT.search(text)
    if m:
        return text[: m.start()], m.group(1)
    return text, None


class Codec:
    """Stateless JSON codec shared by the client and the local exchange."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, validate_outgoing: bool = False) -> None:
        self.max_frame = max_frame
        # Commands are always checked before they leave (msgspec does not type-check at
        # construction, so PlaceOrder(quantity=1.5) would otherwise go out as a float);
        # replies and notices only when asked, since the exchange builds them from ints.
        self.validate_outgoing = validate_outgoing
        self._check_decoders: dict[type, msgspec.json.Decoder] = {}
        self._encoder = msgspec.json.Encoder()
        self._notice_decoder = msgspec.json.Decoder(Union[NOTICES])  # type: ignore[valid-type]
        self._command_decoder = msgspec.json.Decoder(Union[COMMANDS])  # type: ignore[valid-type]
        self._head_decoder = msgspec.json.Decoder(_ReplyHead)
        self._cmd_head_decoder = msgspec.json.Decoder(_CommandHead)
        self._reply_decoders: dict[type, msgspec.json.Decoder] = {}
        self._known_methods = {c.__struct_config__.tag for c in COMMANDS}

    # -- encoding ------------------------------------------------------------------------

    def encode(self, msg: Command | Reply | Notice) -> bytes:
        """Encode any message to its exact JSON text (UTF-8 bytes).

        Raises LocalProtocolError for a message that would violate the protocol (a float,
        bool or out-of-range integer where an int64 belongs, a bad field combination).
        """
        try:
            data = self._encoder.encode(msg)
        except (TypeError, ValueError, OverflowError) as e:
            raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {e}") from None
        if self.validate_outgoing or isinstance(msg, Command):
            t = type(msg)
            dec = self._check_decoders.get(t)
            if dec is None:
                dec = self._check_decoders[t] = msgspec.json.Decoder(t)
            try:
                dec.decode(data)
            except msgspec.ValidationError as e:
                text, path = _describe(e)
                raise LocalProtocolError(f"refusing to send {t.__name__}: {text}", field=path) from None
        return data

    def encode_trusted(self, msg: Command | Reply | Notice) -> bytes:
        """:meth:`encode` without the check that decodes the text again, for a message whose
        every field is already known to be what that check accepts: a PlaceOrder the order
        tracker built from an order it vouched for (``Order.wire_checked``; the connection's
        ``send_nowait(..., vouched=True)``), or a notice the exchange built from its own ints
        (unless ``validate_outgoing``).  Everything else goes through :meth:`encode`."""
        try:
            return self._encoder.encode(msg)
        except (TypeError, ValueError, OverflowError) as e:
            raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {e}") from None

    def encode_text(self, msg: Command | Reply | Notice) -> str:
        return self.encode(msg).decode("utf-8")

    # -- client role ---------------------------------------------------------------------

    def _check_size(self, data: bytes | str) -> None:
        if len(data) > self.max_frame:
            raise RemoteProtocolError(f"frame of {len(data)} bytes exceeds the limit of {self.max_frame}")

    def decode_notice(self, data: bytes | str) -> Notice:
        """Decode a frame that must be a notice."""
        self._check_size(data)
        try:
            return self._notice_decoder.decode(data)  # type: ignore[no-any-return]
        except msgspec.ValidationError as e:
            msg, path = _describe(e)
            if path == "$.notice" and msg.startswith("Invalid value"):
                raise UnknownNotice(msg[len("Invalid value ") :].strip("'")) from None
            raise RemoteProtocolError(f"invalid notice: {msg}", field=path) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise RemoteProtocolError(f"malformed JSON: {e}") from None
        except RecursionError:
            raise RemoteProtocolError("JSON nesting too deep") from None

    def decode_server_frame(self, data: bytes | str) -> Notice | ReplyFrame:
        """Decode anything the exchange sends: a notice, or the routable head of a reply."""
        if len(data) > self.max_frame:  # _check_size, inline: this runs for every frame received
            self._check_size(data)
        try:
            return self._notice_decoder.decode(data)  # type: ignore[no-any-return]
        except msgspec.ValidationError as e:
            msg, path = _describe(e)
            if path == "$.notice" and msg.startswith("Invalid value"):
                raise UnknownNotice(msg[len("Invalid value ") :].strip("'")) from None
            if msg != "Object missing required field `notice`":
                raise RemoteProtocolError(f"invalid notice: {msg}", field=path) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise RemoteProtocolError(f"malformed JSON: {e}") from None
        except RecursionError:
            raise RemoteProtocolError("JSON nesting too deep") from None
        # Not a notice: it must be a reply with an error_code.
        try:
            head = self._head_decoder.decode(data)
        except msgspec.ValidationError as e:
            msg, path = _describe(e)
            raise RemoteProtocolError(f"frame is neither a notice nor a reply: {msg}", field=path) from None
        except RecursionError:
            raise RemoteProtocolError("JSON nesting too deep") from None
        if head.error_code != 0 and head.error_msg is UNSET:
            raise RemoteProtocolError("error reply without error_msg", field="$.error_msg")
        tag = None if head.tag is UNSET else head.tag
        return ReplyFrame(tag, head.error_code, data)

    def decode_reply(self, frame: ReplyFrame | bytes | str, reply_type: type[R]) -> R | ErrorReply:
        """Decode a reply as ``reply_type``, or as ErrorReply when ``error_code != 0``."""
        if not isinstance(frame, ReplyFrame):
            head = self.decode_server_frame(frame)
            if not isinstance(head, ReplyFrame):
                raise RemoteProtocolError(f"expected a reply, got notice {type(head).__name__}")
            frame = head
        target: type = ErrorReply if frame.error_code != 0 else reply_type
        dec = self._reply_decoders.get(target)
        if dec is None:
            dec = self._reply_decoders[target] = msgspec.json.Decoder(target)
        try:
            return dec.decode(frame.raw)  # type: ignore[no-any-return]
        except msgspec.ValidationError as e:
            msg, path = _describe(e)
            raise RemoteProtocolError(f"invalid {target.__name__}: {msg}", field=path) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            raise RemoteProtocolError(f"malformed reply: {e}") from None

    # -- server role ---------------------------------------------------------------------

    def decode_command(self, data: bytes | str) -> Command:
        """Decode a command; any refusal is a :class:`BadCommand` carrying the reply text."""
        if len(data) > self.max_frame:
            raise BadCommand(f"Request too large ({len(data)} bytes, limit {self.max_frame}).", tag=None)
        # Fewer opening brackets than the limit cannot nest deeper than it: two C-level
        # counts decide every real command; only a suspicious frame is measured.
        if isinstance(data, bytes):
            opening = data.count(b"[") + data.count(b"{")
        else:
            opening = data.count("[") + data.count("{")
        if opening > MAX_COMMAND_NESTING and json_nesting(data) > MAX_COMMAND_NESTING:
            raise BadCommand("JSON nesting too deep.", tag=None)
        try:
            return self._command_decoder.decode(data)  # type: ignore[no-any-return]
        except msgspec.ValidationError as e:
            msg, path = _describe(e)
            tag, method = self._peek(data)
            if msg == "Object missing required field `method`":
                raise BadCommand("You must specify a method.", tag=tag, field="$.method") from None
            if path == "$.method":
                shown = method if method is not None else "?"
                raise BadCommand(f"Unknown method: {shown[:64]}.", tag=tag, field="$.method") from None
            if path is None:
                # __post_init__ rule (spec text) or a top-level type error
                raise BadCommand(msg if msg.endswith(".") else f"Invalid request: {msg}.", tag=tag) from None
            field = path[2:] if path.startswith("$.") else path
            raise BadCommand(f"Invalid {field}: {msg}.", tag=tag, field=path) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise BadCommand(f"Malformed JSON: {e}.", tag=None) from None
        except RecursionError:
            raise BadCommand("JSON nesting too deep.", tag=None) from None

    def _peek(self, data: bytes | str) -> tuple[int | None, str | None]:
        """Best-effort read of ``tag`` and ``method`` from a frame that failed validation."""
        try:
            head = self._cmd_head_decoder.decode(data)
            tag = msgspec.json.decode(head.tag)
            method = msgspec.json.decode(head.method)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            return None, None
        tag_ok = type(tag) is int and tag != 0 and -(2**63) <= tag < 2**63
        return (tag if tag_ok else None), (method if isinstance(method, str) else None)


CODEC = Codec()
"""A shared codec instance (the codec is stateless; sharing it is safe)."""
