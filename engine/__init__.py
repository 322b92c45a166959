"""cftrade: algorithmic trading on the Coinfloor Trade Engine protocol.

Map: ``scale``/``errors``/``secret`` are the ground; ``protocol`` is the sans-I/O codec both
sides speak; ``connection`` and ``governor`` are the client's I/O and limits; ``state`` holds
the numpy book, own orders and balances; ``exchange`` is the local protocol-exact venue.
"""

__version__ = "0.1.0"
