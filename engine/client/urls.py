"""Where to connect, checked before any I/O (RELIABILITY X2).

* ``wss://`` is the default and uses ``ssl.create_default_context()``: certificate
  verification against the system CAs, hostname check, TLS 1.2 or newer.  A caller-supplied
  context must keep all three (no "verify: false" switch).
* ``ws://`` (plaintext) is allowed only to a loopback host (127.0.0.0/8, ::1, ``localhost``)
  and only with ``allow_insecure=True``.  Anything else is refused here, before a DNS lookup
  or a TCP connection, so no secret can leave the machine unencrypted.
* Credentials in the URL (``wss://user:pass@host``) are refused: secrets never live in URLs.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from dataclasses import dataclass

from engine.errors import ConfigError

__all__ = ["DEFAULT_URL", "Target", "check_url", "default_ssl_context", "is_loopback"]

DEFAULT_URL = "wss://apiv2.coinfloor.co.uk/"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (no DNS lookup is made)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and hostname verification against the system CAs, TLS >= 1.2."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True, slots=True)
class Target:
    """A checked connection target.  ``ssl_context`` is None only for loopback ``ws://``."""

    url: str
    host: str
    port: int
    resource: str
    ssl_context: ssl.SSLContext | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.ssl_context is not None else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_url(
    url: str, *, ssl_context: ssl.SSLContext | None = None, allow_insecure: bool = False
) -> Target:
    """Parse and vet ``url``; raise :class:`ConfigError` naming the problem, with no I/O."""
    if not isinstance(url, str):
        raise ConfigError(f"url must be a string, was {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        port_value = parts.port
    except ValueError as e:
        raise ConfigError(f"url {url!r} is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("ws", "wss"):
        raise ConfigError(f"url {url!r} must start with wss:// (or ws:// to a loopback host)")
    if not host:
        raise ConfigError(f"url {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"url for host {host!r} must not contain credentials; use Credentials")
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    if scheme == "ws":
        if not is_loopback(host):
            raise ConfigError(
                f"refusing plaintext ws:// to non-loopback host {host!r}: "
                "use wss:// (ws:// is allowed only to 127.0.0.1, ::1 or localhost)"
            )
        if not allow_insecure:
            raise ConfigError(
                f"refusing plaintext ws:// to {host!r} without allow_insecure=True "
                "(needed even for loopback, so plaintext is always a deliberate choice)"
            )
        if ssl_context is not None:
            raise ConfigError(f"url {url!r} is ws:// but an ssl_context was given; use wss://")
        return Target(url, host, port_value or 80, resource, None)
    ctx = default_ssl_context() if ssl_context is None else ssl_context
    weak = []
    if ctx.verify_mode != ssl.CERT_REQUIRED:
        weak.append("certificate verification is off (verify_mode must be CERT_REQUIRED)")
    if not ctx.check_hostname:
        weak.append("hostname checking is off")
    if ctx.minimum_version not in (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_3,
        ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ):
        weak.append(f"minimum TLS version is {ctx.minimum_version.name} (must be TLSv1_2 or newer)")
    if weak:
        raise ConfigError(f"refusing ssl_context for {host!r}: " + "; ".join(weak))
    return Target(url, host, port_value or 443, resource, ctx)
