"""X2: TLS by default with verification; plaintext only to loopback, on purpose.

Every bad case must fail before Authenticate is sent; refused URLs fail before any I/O at all.
TLS cases run a real TLS server on 127.0.0.1 (certificates from a throwaway trustme CA).
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from engine.client.reconnect import ReconnectingClient
from engine.client.urls import DEFAULT_URL, Target, check_url, is_loopback
from engine.connection import Credentials, open_connection
from engine.errors import ConfigError, ConnectFailed
from engine.protocol.messages import GetBalances
from engine.secret import Secret
from tests.scripted_peer import DEFAULT_USER, ScriptedPeer


def creds() -> Credentials:
    return Credentials(1, Secret(DEFAULT_USER.cookie), Secret(DEFAULT_USER.passphrase))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@asynccontextmanager
async def tls_peer(peer: ScriptedPeer, cert: trustme.LeafCert) -> AsyncIterator[str]:
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: peer.serve(ssl_context=server_context(cert), task_status=task_status))
            yield f"wss://127.0.0.1:{port}/"
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise (group.exceptions[0] if len(group.exceptions) == 1 else group) from None


# -- URL vetting, before any I/O ----------------------------------------------------------


@pytest.mark.parametrize(
    "url, kwargs, message",
    [
        ("ws://example.com/", {"allow_insecure": True}, "refusing plaintext ws:// to non-loopback host 'example.com'"),
        ("ws://10.0.0.1:8080/", {"allow_insecure": True}, "non-loopback host '10.0.0.1'"),
        ("ws://[::ffff:10.0.0.1]/", {"allow_insecure": True}, "non-loopback host"),
        ("ws://127.0.0.1:9000/", {}, "without allow_insecure=True"),
        ("ws://localhost/", {}, "without allow_insecure=True"),
        ("http://127.0.0.1/", {"allow_insecure": True}, "must start with wss://"),
        ("wss:///nohost", {}, "has no host"),
        ("wss://user:pw@apiv2.coinfloor.co.uk/", {}, "must not contain credentials"),
        ("wss://host:99999/", {}, "not a valid URL"),
        ("ws://127.0.0.1/", {"allow_insecure": True, "ssl_context": ssl.create_default_context()}, "ssl_context was given"),
    ],
)
def test_X2_refused_urls_name_the_problem(url, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_url(url, **kwargs)


def test_X2_accepted_urls():
    t = check_url(DEFAULT_URL)
    assert (t.host, t.port, t.resource, t.host_header) == ("apiv2.coinfloor.co.uk", 443, "/", "apiv2.coinfloor.co.uk")
    assert t.ssl_context is not None and t.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert t.ssl_context.check_hostname and t.ssl_context.minimum_version >= ssl.TLSVersion.TLSv1_2
    t = check_url("ws://[::1]:8765/feed?x=1", allow_insecure=True)
    assert (t.host, t.port, t.resource, t.ssl_context, t.host_header) == ("::1", 8765, "/feed?x=1", None, "[::1]:8765")
    assert check_url("ws://127.9.9.9/", allow_insecure=True).host == "127.9.9.9"
    assert is_loopback("LOCALHOST") and is_loopback("127.0.0.1") and not is_loopback("localhost.evil.com")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_X2_weak_ssl_contexts_are_refused():
    no_verify = ssl.create_default_context()
    no_verify.check_hostname = False
    no_verify.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigError, match=r"certificate verification is off \(verify_mode must be CERT_REQUIRED\); hostname checking is off"):
        check_url(DEFAULT_URL, ssl_context=no_verify)
    old_tls = ssl.create_default_context()
    old_tls.minimum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ConfigError, match="minimum TLS version is TLSv1_1"):
        check_url(DEFAULT_URL, ssl_context=old_tls)


async def test_X2_plaintext_to_non_loopback_refused_without_any_connection_attempt():
    attempts: list[Target] = []

    async def dial(target: Target) -> trio.abc.Stream:
        attempts.append(target)
        raise AssertionError("must not dial")

    # Refused when called, before the ``async with`` even starts: no DNS, no TCP.
    with pytest.raises(ConfigError, match="non-loopback"):
        open_connection("ws://example.com/", creds(), allow_insecure=True, dial=dial)
    with pytest.raises(ConfigError, match="non-loopback"):
        ReconnectingClient("ws://example.com/", creds(), allow_insecure=True, dial=dial)
    assert attempts == []


# -- TLS on a real socket -----------------------------------------------------------------------


async def test_X2_trusted_certificate_logs_in_over_tls(ca):
    peer = ScriptedPeer()
    async with tls_peer(peer, ca.issue_cert("127.0.0.1")) as url:
        with trio.fail_after(10):
            async with open_connection(url, creds(), ssl_context=trusting(ca)) as conn:
                assert (await conn.request(GetBalances())).balances == []
    assert peer.sessions[0].authenticated


@pytest.mark.parametrize(
    "case, issue, error",
    [
        ("untrusted CA", lambda ca, other: other.issue_cert("127.0.0.1"), "certificate verify failed"),
        ("wrong host", lambda ca, other: ca.issue_cert("example.org"), "mismatch"),
        (
            "expired",
            lambda ca, other: ca.issue_cert(
                "127.0.0.1",
                not_before=datetime.datetime(2020, 1, 1),
                not_after=datetime.datetime(2021, 1, 1),
            ),
            "expired",
        ),
    ],
)
async def test_X2_bad_certificates_fail_before_authenticate(ca, case, issue, error):
    peer = ScriptedPeer()
    cert = issue(ca, trustme.CA())
    async with tls_peer(peer, cert) as url:
        with trio.fail_after(10):
            with pytest.raises(ConnectFailed, match=f"TLS handshake with 127.0.0.1:\\d+ failed: .*{error}"):
                async with open_connection(url, creds(), ssl_context=trusting(ca)):
                    pytest.fail("connected despite a bad certificate")
    # The TCP connection was made, but no WebSocket session and no Authenticate ever were.
    assert peer.connections_seen == 1
    assert peer.sessions == [] and peer.all_commands == []


async def test_X2_default_context_does_not_trust_a_private_ca(ca):
    peer = ScriptedPeer()
    async with tls_peer(peer, ca.issue_cert("127.0.0.1")) as url:
        with trio.fail_after(10), pytest.raises(ConnectFailed, match="certificate verify failed"):
            async with open_connection(url, creds()):
                pass
    assert peer.sessions == []


async def test_X2_our_client_and_our_exchange_server_over_tls(ca):
    """Both ends of engine.ws over TLS (trio SSLStream: the generic stream path, not the
    direct socket calls): log in, pipeline, receive notices, close."""
    from engine.exchange.server import serve_exchange
    from engine.protocol.messages import OrderOpened, PlaceOrder
    from engine.runner import DEMO_COOKIE, DEMO_PASSPHRASE
    from tests.test_exchange_server_support import BASE, COUNTER, make_exchange

    demo = Credentials(1, Secret(DEMO_COOKIE), Secret(DEMO_PASSPHRASE))
    async with trio.open_nursery() as nursery:
        ex = make_exchange()
        server = await nursery.start(
            lambda task_status: serve_exchange(ex, ssl_context=server_context(ca.issue_cert("127.0.0.1")),
                                               task_status=task_status))
        assert server.url.startswith("wss://127.0.0.1:")
        with trio.fail_after(10):
            async with open_connection(server.url, demo, ssl_context=trusting(ca)) as conn:
                await conn.request(GetBalances())
                waiters = [await conn.send(PlaceOrder(base=BASE, counter=COUNTER, quantity=-1000, price=3000000 + i,
                                                      tonce=i + 1)) for i in range(20)]
                ids = [(await w.wait()).id for w in waiters]  # type: ignore[attr-defined]
                opened = []
                while len(opened) < 20:
                    event = await conn.notices.receive()
                    if isinstance(event, OrderOpened):
                        opened.append(event.id)
                assert opened == ids
        nursery.cancel_scope.cancel()
    assert server.statistics().accepted == 1
