"""Sans-I/O Coinfloor WebSocket protocol: message types, JSON codec, auth maths.

Nothing in this package does I/O or imports trio; the client connection and the local
exchange server both sit on top of it.
"""
