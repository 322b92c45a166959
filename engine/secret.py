"""Secrets (passphrases, API cookies, private keys) that never print themselves.

A :class:`Secret` hides its value from ``repr``, ``str``, f-strings, logging and pickling;
the value is reachable only through :meth:`Secret.reveal`, which makes every use greppable.

Secrets come from an environment variable or from a file that only its owner can read
(mode 0600 or stricter, not a symlink).  They are never read from YAML and never from argv.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Generic, TypeVar

from engine.errors import SecretError

T = TypeVar("T")


class Secret(Generic[T]):
    """A value that masks itself: ``repr(Secret("x")) == "Secret('***')"``."""

    __slots__ = ("_value", "_label")

    def __init__(self, value: T, label: str = "secret") -> None:
        self._value = value
        self._label = label

    def reveal(self) -> T:
        """The real value. Call it only where the secret is used, never to log."""
        return self._value

    @property
    def label(self) -> str:
        return self._label

    def __repr__(self) -> str:
        return f"Secret({self._label!r}: ***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        import hmac

        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        if isinstance(a, bytes) and isinstance(b, bytes):
            return hmac.compare_digest(a, b)
        return bool(a == b)

    def __hash__(self) -> int:
        return hash(("Secret", self._label))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)


def from_env(name: str, label: str | None = None, environ: dict[str, str] | None = None) -> Secret[str]:
    """Read a secret from environment variable ``name`` (error names the variable, not the value)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None or value == "":
        raise SecretError(f"environment variable {name} is not set (needed for {label or name})")
    return Secret(value, label or name)


def from_file(path: str | os.PathLike[str], label: str | None = None) -> Secret[str]:
    """Read a secret from a file readable by its owner only (0600 or stricter, no symlink).

    Trailing newlines are stripped; the rest of the file is the secret.
    """
    p = Path(path)
    lbl = label or str(p)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise SecretError(f"secret file {p} does not exist (needed for {lbl})") from None
    if stat.S_ISLNK(st.st_mode):
        raise SecretError(f"secret file {p} is a symlink; point to the real file")
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"secret file {p} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"secret file {p} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must not be readable by group or others (chmod 600 {p})"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecretError(f"secret file {p} is not owned by the current user")
    value = p.read_text(encoding="utf-8").rstrip("\r\n")
    if not value:
        raise SecretError(f"secret file {p} is empty")
    return Secret(value, lbl)
