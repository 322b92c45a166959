"""The client side of the Coinfloor protocol, split by concern.

``notices`` is the ordered, bounded notice stream and its overflow policy; ``urls`` checks
the target (TLS by default, ``ws://`` only to loopback) before any I/O; ``reconnect`` holds
the backoff and the reconnecting client.  :mod:`engine.connection` is the public entry point;
the WebSocket itself is :mod:`engine.ws`.
"""
