"""Numba kernels of the L3 book: one int64 arena, one algorithm for the per-event and batch paths.

Everything the book knows lives in ONE C-contiguous ``int64`` array, the *arena*, so that a
per-event call from Python unboxes a single array (about 0.1 us through the compiled entry
point) and the batch path runs a whole block of events in one call.  The kernels index the
arena directly: slicing it into typed views inside the hot loop made numba count references
on every view (an atomic NRT_incref/NRT_decref pair each time), which measured 3x slower.
Layout, in int64 words::

    header  [0, H_WORDS)                sizes, region offsets, cursors, counters, the touch
    orders  [H_WORDS, +4*tsize)         hash table of order records: id, key, rem, tmo
    levels  [H_O_LV, +4*W)              per side, per window level: qty, cnt (16 bytes)
    bits    [H_O_BITS, +2*W/64)         per side, one bit per non-empty window level

*Orders.*  The records live in the hash table itself (open addressing, linear probing,
Fibonacci hashing of the id, backward-shift deletion, no tombstones): a lookup touches the
record it needs and nothing else, which measured 12 % faster than a table of slot numbers
in front of separate order arrays.  Ids need not be dense.  The load factor stays <= 0.75
(``H_CAP`` orders at most, then the arena grows).  A record is ``id``, ``key`` (the signed
price: ``-price`` for a bid, ``+price`` for an ask; 0 marks an empty entry), ``rem`` (the
remaining quantity, >= 0) and ``tmo`` (the order time in micro-timestamp, shifted left
once, with the own flag in bit 0).  Time then id give FIFO order within a price.  Records
move when others are deleted, so nothing outside a kernel holds a record's position.

*Keys.*  With key = -price for bids and +price for asks, "better" is "smaller" on both
sides, so one code path serves both.

*Window.*  Each side keeps dense levels over ``W`` consecutive keys from ``base[s]``: level
``i`` is key ``base[s] + i``; ``best[s]`` is the best non-empty level (``W`` when the side
is empty), found again after the best level empties by scanning the bitmap 64 levels per
word.  The window starts ``W/4`` keys better than the touch, leaving room to improve.
Orders deeper than the window are *far*: they live in the table but not in the levels
(``far[s]`` counts them), which bounds the level memory at ``16 * W`` bytes per side however
wide the book is.  The window is rebuilt from the records ("recentred") when an order
arrives better than its start, when a side gets its first order, when its last level
empties while far orders exist, or when the touch drifts past ``W/2`` while far orders
exist.  Invariant: a side with live orders has its best level inside the window.

*Live orders.*  IMPL-GUIDE keeps an order in the view until its ``OrderClosed``, even when an
``OrdersMatched`` set its remaining to 0 (the OrderClosed with quantity 0 follows).  Such an
order stays in the table, so the OrderClosed finds it, but adds nothing to the levels: level
totals and counts cover live orders (remaining > 0) only, so no level is ever empty and the
touch never shows quantity 0.

Kernel results are change flags (``TOP_PRICE``, ``TOP_QTY``, ``OWN``, ``IGNORED``), or
``NEED_GROW`` (negative; nothing changed) when the table is full: the caller grows the
arena with :func:`grow` and applies the event again.  Kernels never raise; the hot ones
never allocate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.options import DefaultOptions
from numba.cpython.unsafe.numbers import trailing_zeros as _tz
from numba.extending import intrinsic

# ---------------------------------------------------------------------------------------
# Header layout (int64 words).  Side-indexed entries take two words: [bid, ask].

H_CAP = 0  # most orders the table takes (3/4 of its size)
H_TSIZE = 1  # hash table entries (power of two)
H_TBITS = 2  # log2(tsize)
H_W = 3  # window width in keys (power of two, >= 64)
H_N = 6  # orders in the view (including zero-remaining ones)
H_O_LV = 8  # region offsets, in words (the table starts at H_WORDS)
H_O_BITS = 9
H_BASE = 10  # +side: key of window level 0
H_BEST = 12  # +side: index of the best level, W when the side is empty
H_LIVE = 14  # +side: live orders (remaining > 0), in or beyond the window
H_FAR = 16  # +side: live orders beyond the window
H_BB = 18  # best bid price (0 = none; prices are > 0 on the wire)
H_BA = 19  # best ask price (0 = none)
H_BBQ = 20  # quantity at the best bid
H_BAQ = 21  # quantity at the best ask
H_IGNORED = 22  # notice sides naming an id not in the view (IMPL-GUIDE: ignore)
H_MISMATCH = 23  # notices that disagree with the view (applied anyway, counted)
H_DUP = 24  # OrderOpened for an id already in the view (replaced, counted)
H_BAD = 25  # invalid OrderOpened (price <= 0 or > MAX_PRICE, quantity 0): ignored
H_RECENTRE = 26  # window rebuilds
H_EVENTS = 27  # events applied
H_WORDS = 32

REC_WORDS = 4
S_ID = 0
S_KEY = 1
S_REM = 2
S_TMO = 3

# Change flags returned by every kernel (>= 0), and the one negative status.
TOP_PRICE = 1  # best bid or best ask price changed (appeared, vanished, moved)
TOP_QTY = 2  # quantity at the best bid or ask changed (always set with TOP_PRICE)
OWN = 4  # the event concerns one's own order (a tonce key was present)
IGNORED = 8  # the event (or a side of it) named an id not in the view, or was invalid
TIMER = 16  # batch only: stopped before an event at or after ``until``
NEED_GROW = -1  # the table is full: grow the arena, then apply the event again

# Event kinds and flags of engine.state.events (kept here so that the kernels depend on
# nothing but numpy and numba; events.py re-exports these very objects).
EV_OTHER = 0
EV_OPEN = 1
EV_CLOSE = 2
EV_MATCH = 3
EVF_OWN = 1  # OrderOpened/OrderClosed: own order; OrdersMatched: own bid
EVF_OWN_ASK = 2
EVF_HAS_BID = 4
EVF_HAS_ASK = 8

MAX_PRICE = 1 << 62  # keys and window bases stay far from int64 overflow
_HASH_MULT = -7046029254386353131  # 0x9E3779B97F4A7C15 (Fibonacci hashing) as int64


def table_size(capacity: int) -> int:
    """Hash table entries for ``capacity`` orders: a power of two, load <= 0.75 when full."""
    t = 16
    while t * 3 < capacity * 4:
        t *= 2
    return t


def layout(capacity: int, window: int) -> tuple[int, int, int, int]:
    """(table size, levels offset, bits offset, total words) of an arena."""
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, was {capacity}")
    if window < 64 or window & (window - 1):
        raise ValueError(f"window must be a power of two >= 64, was {window}")
    tsize = table_size(capacity)
    o_lv = H_WORDS + REC_WORDS * tsize
    o_bits = o_lv + 4 * window
    return tsize, o_lv, o_bits, o_bits + 2 * window // 64


def new_arena(capacity: int, window: int) -> np.ndarray:
    """An empty book arena for at least ``capacity`` orders, ``window`` keys per side."""
    tsize, o_lv, o_bits, words = layout(capacity, window)
    a = np.zeros(words, dtype=np.int64)
    a[H_CAP] = tsize * 3 // 4
    a[H_TSIZE] = tsize
    a[H_TBITS] = tsize.bit_length() - 1
    a[H_W] = window
    a[H_O_LV] = o_lv
    a[H_O_BITS] = o_bits
    a[H_BEST] = a[H_BEST + 1] = window
    return a


# ---------------------------------------------------------------------------------------
# Compilation modes.  The hot kernels take arrays from their caller and never allocate, so
# they are compiled without numba's reference counting (NRT): with it, the IR inlining of
# the helpers below leaves an atomic NRT_incref/NRT_decref pair around most helper calls
# (numba's refcount pruning cannot remove them across the branches), which measured 23 %
# of the batch path.  ``_nrt`` is a numba target option (numba/core/options.py); should a
# numba release drop it, the kernels simply compile with reference counting again.

_NO_NRT: dict[str, Any] = {"_nrt": False} if hasattr(DefaultOptions, "_nrt") else {}
_inline = njit(cache=True, inline="always", **_NO_NRT)
_hot = njit(cache=True, **_NO_NRT)


# ---------------------------------------------------------------------------------------
# Unchecked arena access.  Numba wraps every signed index (``a[i]`` with ``i < 0`` means
# ``a[len + i]``), which costs three instructions per access; the hot path makes ~30
# accesses per event and every index it computes is in range by construction.


def _get_typer(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """``arr[idx]`` without wraparound or bounds checks (``idx`` must be in range)."""
    if not isinstance(arr, types.Array):
        return None
    sig = arr.dtype(arr, types.intp)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        return builder.load(ptr)

    return sig, codegen


def _put_typer(typingctx, arr, idx, val):  # type: ignore[no-untyped-def]
    """``arr[idx] = val`` without wraparound or bounds checks."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr, types.intp, arr.dtype)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        builder.store(args[2], ptr)
        return context.get_dummy_value()

    return sig, codegen


# Typed as Any: mypy cannot see through numba's intrinsic wrapper.
_ctz: Any = _tz  # count trailing zeros (tzcnt)
_get: Any = intrinsic(_get_typer)
_put: Any = intrinsic(_put_typer)


@_inline
def _add(a, i, d):  # type: ignore[no-untyped-def]
    _put(a, i, _get(a, i) + d)


# ---------------------------------------------------------------------------------------
# Small helpers, inlined into every kernel (numba IR inlining: plain calls would pass the
# arena struct and keep LLVM from optimising across them; measured 25 % slower).


@_inline
def _rec(s):  # type: ignore[no-untyped-def]
    return H_WORDS + REC_WORDS * s


@_inline
def _home(a, id_):  # type: ignore[no-untyped-def]
    tbits = _get(a, H_TBITS)
    return ((id_ * _HASH_MULT) >> (64 - tbits)) & ((1 << tbits) - 1)


@_inline
def _find(a, id_):  # type: ignore[no-untyped-def]
    """(position, position) of ``id_``'s record; (-1, the empty position) when absent."""
    mask = _get(a, H_TSIZE) - 1
    h = _home(a, id_)
    while True:
        o = _rec(h)
        if _get(a, o + S_KEY) == 0:
            return -1, h
        if _get(a, o + S_ID) == id_:
            return h, h
        h = (h + 1) & mask


@_inline
def _tab_delete(a, h):  # type: ignore[no-untyped-def]
    """Backward-shift deletion of the record at position ``h``."""
    mask = _get(a, H_TSIZE) - 1
    i = h
    j = h
    while True:
        j = (j + 1) & mask
        o = _rec(j)
        if _get(a, o + S_KEY) == 0:
            break
        k = _home(a, _get(a, o + S_ID))
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        d = _rec(i)
        _put(a, d, _get(a, o))
        _put(a, d + 1, _get(a, o + 1))
        _put(a, d + 2, _get(a, o + 2))
        _put(a, d + 3, _get(a, o + 3))
        i = j
    _put(a, _rec(i) + S_KEY, 0)


@_inline
def _next_level(a, s, start):  # type: ignore[no-untyped-def]
    """Index of the first non-empty level >= ``start`` of side ``s``, or W."""
    w = _get(a, H_W)
    if start >= w:
        return w
    nw = w >> 6
    o = _get(a, H_O_BITS) + s * nw
    wi = start >> 6
    word = _get(a, o + wi) & (-1 << (start & 63))
    while word == 0:
        wi += 1
        if wi == nw:
            return w
        word = _get(a, o + wi)
    return (wi << 6) + _ctz(word)


@_hot
def _recentre(a, s):  # type: ignore[no-untyped-def]
    """Rebuild side ``s``'s window from the records, its best key W/4 from the start."""
    w = a[H_W]
    nw = w >> 6
    hwm = a[H_TSIZE]
    bid = s == 0
    lo = MAX_PRICE + 1  # keys lie in [-MAX_PRICE, MAX_PRICE]
    for i in range(hwm):
        o = _rec(i)
        k = a[o + S_KEY]
        if k != 0 and (k < 0) == bid and a[o + S_REM] > 0 and k < lo:
            lo = k
    lv = a[H_O_LV] + 2 * s * w
    a[lv : lv + 2 * w] = 0
    ob = a[H_O_BITS] + s * nw
    a[ob : ob + nw] = 0
    a[H_RECENTRE] += 1
    a[H_FAR + s] = 0
    a[H_BEST + s] = w
    if lo > MAX_PRICE:
        return
    base = lo - w // 4
    a[H_BASE + s] = base
    best = w
    far = 0
    for i in range(hwm):
        o = _rec(i)
        k = a[o + S_KEY]
        q = a[o + S_REM]
        if k != 0 and (k < 0) == bid and q > 0:
            idx = k - base
            if idx >= w:
                far += 1
            else:
                j = lv + 2 * idx
                if a[j + 1] == 0:
                    a[ob + (idx >> 6)] |= 1 << (idx & 63)
                a[j] += q
                a[j + 1] += 1
                if idx < best:
                    best = idx
    a[H_FAR + s] = far
    a[H_BEST + s] = best


# The level helpers return 1 when they may have changed the touch (a level at or better
# than the best one, or a recentre), so that the touch is recomputed only then.


@_inline
def _add_live(a, s, k, q):  # type: ignore[no-untyped-def]
    """An order already in the table (side ``s``, key ``k``) becomes live with ``q`` > 0."""
    w = _get(a, H_W)
    live = _get(a, H_LIVE + s) + 1
    _put(a, H_LIVE + s, live)
    idx = k - _get(a, H_BASE + s)
    if idx < 0 or live == 1:
        # Better than the window start, or the side's first order: place the window anew.
        _recentre(a, s)
        return 1
    if idx >= w:
        _add(a, H_FAR + s, 1)
        return 0
    j = _get(a, H_O_LV) + 2 * (s * w + idx)
    bi = _get(a, H_O_BITS) + s * (w >> 6) + (idx >> 6)
    _put(a, bi, _get(a, bi) | (1 << (idx & 63)))  # branch-free: setting a set bit is harmless
    _add(a, j, q)
    _add(a, j + 1, 1)
    best = _get(a, H_BEST + s)
    _put(a, H_BEST + s, min(best, idx))
    return 1 if idx <= best else 0


@_inline
def _sub_live(a, s, k, q):  # type: ignore[no-untyped-def]
    """A live order (side ``s``, key ``k``, remaining ``q`` > 0) stops being live.

    The caller has already deleted or zeroed the order's record (a recentre reads them).
    """
    w = _get(a, H_W)
    _add(a, H_LIVE + s, -1)
    idx = k - _get(a, H_BASE + s)
    if idx >= w or idx < 0:
        _add(a, H_FAR + s, -1)
        return 0
    j = _get(a, H_O_LV) + 2 * (s * w + idx)
    _add(a, j, -q)
    c = _get(a, j + 1) - 1
    _put(a, j + 1, c)
    best = _get(a, H_BEST + s)
    bi = _get(a, H_O_BITS) + s * (w >> 6) + (idx >> 6)
    _put(a, bi, _get(a, bi) & ~(np.int64(c == 0) << (idx & 63)))
    if c == 0:
        if idx == best:
            nxt = _next_level(a, s, idx + 1)
            if _get(a, H_FAR + s) > 0 and nxt >= w // 2:
                # The window ran dry (or the touch drifted deep) while far orders wait.
                _recentre(a, s)
            else:
                _put(a, H_BEST + s, nxt)
    return 1 if idx == best else 0


@_inline
def _set_rem(a, h, new):  # type: ignore[no-untyped-def]
    """Set the remaining quantity of the order at position ``h``, keeping the levels right."""
    o = _rec(h)
    old = _get(a, o + S_REM)
    if new == old:
        return 0
    k = _get(a, o + S_KEY)
    s = 0 if k < 0 else 1
    _put(a, o + S_REM, new)
    if old > 0 and new > 0:
        w = _get(a, H_W)
        idx = k - _get(a, H_BASE + s)
        if 0 <= idx < w:
            _add(a, _get(a, H_O_LV) + 2 * (s * w + idx), new - old)
            return 1 if idx == _get(a, H_BEST + s) else 0
        return 0
    if old > 0:
        return _sub_live(a, s, k, old)
    return _add_live(a, s, k, new)


@_inline
def _remove(a, h):  # type: ignore[no-untyped-def]
    """Delete the order at table position ``h`` from the view."""
    o = _rec(h)
    q = _get(a, o + S_REM)
    k = _get(a, o + S_KEY)
    _tab_delete(a, h)
    _add(a, H_N, -1)
    if q > 0:
        return _sub_live(a, 0 if k < 0 else 1, k, q)
    return 0


@_inline
def _top(a):  # type: ignore[no-untyped-def]
    """Refresh the touch in the header; return TOP_PRICE/TOP_QTY for what changed."""
    w = _get(a, H_W)
    lv = _get(a, H_O_LV)
    b = _get(a, H_BEST)
    if b < w:
        bb = -(_get(a, H_BASE) + b)
        bbq = _get(a, lv + 2 * b)
    else:
        bb = 0
        bbq = 0
    b = _get(a, H_BEST + 1)
    if b < w:
        ba = _get(a, H_BASE + 1) + b
        baq = _get(a, lv + 2 * (w + b))
    else:
        ba = 0
        baq = 0
    f = 0
    if bb != _get(a, H_BB) or ba != _get(a, H_BA):
        f = TOP_PRICE | TOP_QTY
    elif bbq != _get(a, H_BBQ) or baq != _get(a, H_BAQ):
        f = TOP_QTY
    _put(a, H_BB, bb)
    _put(a, H_BA, ba)
    _put(a, H_BBQ, bbq)
    _put(a, H_BAQ, baq)
    return f


@_inline
def _top_side(a, s):  # type: ignore[no-untyped-def]
    """Refresh side ``s`` of the touch in the header; return TOP_PRICE/TOP_QTY if changed."""
    w = _get(a, H_W)
    b = _get(a, H_BEST + s)
    if b < w:
        k = _get(a, H_BASE + s) + b
        p = -k if s == 0 else k
        q = _get(a, _get(a, H_O_LV) + 2 * (s * w + b))
    else:
        p = 0
        q = 0
    f = 0
    if p != _get(a, H_BB + s):
        f = TOP_PRICE | TOP_QTY
        _put(a, H_BB + s, p)
        _put(a, H_BBQ + s, q)
    elif q != _get(a, H_BBQ + s):
        f = TOP_QTY
        _put(a, H_BBQ + s, q)
    return f


# ---------------------------------------------------------------------------------------
# The three IMPL-GUIDE rules, shared by the per-event entry points and the batch loop.


@_inline
def _store(a, id_, price, quantity, time_, own):  # type: ignore[no-untyped-def]
    """Put a new order in the table (not yet in the levels).

    Returns its position, -1 (NEED_GROW: nothing changed) or -2 (invalid: ignored, counted).
    An id already in the view is replaced (counted): "will not have contained any order
    with the given ID" says the guide, so the stream and the view disagree; replacing
    keeps the totals right.
    """
    if price <= 0 or price > MAX_PRICE or quantity == 0:
        _add(a, H_BAD, 1)
        return -2
    at, h = _find(a, id_)
    if at >= 0:
        _add(a, H_DUP, 1)
        _remove(a, at)
        at, h = _find(a, id_)
    if _get(a, H_N) == _get(a, H_CAP):
        return -1
    _add(a, H_N, 1)
    o = _rec(h)
    _put(a, o + S_ID, id_)
    _put(a, o + S_KEY, -price if quantity > 0 else price)
    _put(a, o + S_REM, quantity if quantity > 0 else -quantity)
    _put(a, o + S_TMO, (time_ << 1) | (1 if own else 0))
    return h


@_inline
def _open(a, id_, price, quantity, time_, own):  # type: ignore[no-untyped-def]
    f = OWN if own else 0
    h = _store(a, id_, price, quantity, time_, own)
    if h < 0:
        return NEED_GROW if h == -1 else f | IGNORED
    o = _rec(h)
    s = 0 if quantity > 0 else 1
    if _add_live(a, s, _get(a, o + S_KEY), _get(a, o + S_REM)):
        f |= _top_side(a, s)
    return f


@_inline
def _close(a, id_, quantity, own):  # type: ignore[no-untyped-def]
    f = OWN if own else 0
    h, _ = _find(a, id_)
    if h < 0:
        _add(a, H_IGNORED, 1)  # beyond the snapshot's top 1000, or never seen: ignore
        return f | IGNORED
    o = _rec(h)
    rem = _get(a, o + S_REM)
    k = _get(a, o + S_KEY)
    if quantity != (rem if k < 0 else -rem):
        _add(a, H_MISMATCH, 1)
    if _remove(a, h):
        f |= _top_side(a, 0 if k < 0 else 1)
    return f


@_inline
def _match_side(a, id_, rem, bid):  # type: ignore[no-untyped-def]
    """Set one side's remaining; returns IGNORED, or 1 if the touch may have changed."""
    h, _ = _find(a, id_)
    if h < 0:
        _add(a, H_IGNORED, 1)
        return IGNORED
    o = _rec(h)
    # ask_rem is positive on the wire, like bid_rem: the side lives in the key's sign here.
    if (_get(a, o + S_KEY) < 0) != bid or rem > _get(a, o + S_REM) or rem < 0:
        _add(a, H_MISMATCH, 1)
    if rem >= 0:
        return _set_rem(a, h, rem)
    return 0


@_inline
def _match(a, bid, bid_rem, ask, ask_rem, evf):  # type: ignore[no-untyped-def]
    f = OWN if evf & (EVF_OWN | EVF_OWN_ASK) else 0
    if evf & EVF_HAS_BID:
        t = _match_side(a, bid, bid_rem, True)
        f |= t & IGNORED
        if t & 1:
            f |= _top_side(a, 0)
    if evf & EVF_HAS_ASK:
        t = _match_side(a, ask, ask_rem, False)
        f |= t & IGNORED
        if t & 1:
            f |= _top_side(a, 1)
    return f


# ---------------------------------------------------------------------------------------
# Entry points.  engine.state.book compiles them for these exact signatures on first use
# (or loads them from numba's cache) and calls their compiled entry points directly.

_A = types.int64[::1]
_I = types.int64
SIG_OPEN = _I(_A, _I, _I, _I, _I, _I)
SIG_CLOSE = _I(_A, _I, _I, _I)
SIG_MATCH = _I(_A, _I, _I, _I, _I, _I)


@_hot
def k_open(a, id_, price, quantity, time_, own):  # type: ignore[no-untyped-def]
    """Apply an OrderOpened (``quantity`` signed as on the wire)."""
    r = _open(a, id_, price, quantity, time_, own)
    if r >= 0:
        a[H_EVENTS] += 1
    return r


@_hot
def k_close(a, id_, quantity, own):  # type: ignore[no-untyped-def]
    """Apply an OrderClosed (``quantity`` signed as on the wire, 0 after a full fill)."""
    a[H_EVENTS] += 1
    return _close(a, id_, quantity, own)


@_hot
def k_match(a, bid, bid_rem, ask, ask_rem, evf):  # type: ignore[no-untyped-def]
    """Apply an OrdersMatched; ``evf`` says which sides are present and own (EVF_*)."""
    a[H_EVENTS] += 1
    return _match(a, bid, bid_rem, ask, ask_rem, evf)


@_hot
def k_batch(a, ev, start, stop_mask, until, out_bb, out_ba):  # type: ignore[no-untyped-def]
    """Apply ``ev[start:]`` until the end, a stop, or a full arena.

    Before each event: stop with TIMER (event not applied) if its ``recv_time >= until``.
    After each event: record the best bid and ask (0 = none) in ``out_bb``/``out_ba`` from
    index 0, and stop if its flags meet ``stop_mask``.  Returns (events applied, status):
    status 0 at the end of the block, the stopping event's flags, TIMER, or NEED_GROW (the
    event at ``start + applied`` was not applied).
    """
    n = len(ev)
    i = start
    j = 0
    status = 0
    while i < n:
        e = ev[i]
        if e.recv_time >= until:
            status = TIMER
            break
        kind = e.kind
        if kind == EV_OPEN:
            r = _open(a, e.id, e.price, e.quantity, e.exch_time, e.flags & EVF_OWN)
        elif kind == EV_CLOSE:
            r = _close(a, e.id, e.quantity, e.flags & EVF_OWN)
        elif kind == EV_MATCH:
            r = _match(a, e.id, e.remaining, e.ask_id, e.ask_remaining, e.flags)
        else:
            r = 0
        if r < 0:
            status = r
            break
        _put(out_bb, j, _get(a, H_BB))
        _put(out_ba, j, _get(a, H_BA))
        j += 1
        i += 1
        if r & stop_mask:
            status = r
            break
    a[H_EVENTS] += j
    return j, status


# ---------------------------------------------------------------------------------------
# Maintenance and queries (not on the hot path).


@njit(cache=True)
def grow(a, capacity):  # type: ignore[no-untyped-def]
    """A copy of arena ``a`` holding ``capacity`` orders or more (window, cursors kept)."""
    w = a[H_W]
    tsize = 16
    while tsize * 3 < capacity * 4:
        tsize *= 2
    o_lv = H_WORDS + REC_WORDS * tsize
    o_bits = o_lv + 4 * w
    b = np.zeros(o_bits + 2 * w // 64, dtype=np.int64)
    b[:H_WORDS] = a[:H_WORDS]
    b[H_CAP] = tsize * 3 // 4
    b[H_TSIZE] = tsize
    tbits = 0
    while (1 << tbits) < tsize:
        tbits += 1
    b[H_TBITS] = tbits
    b[H_O_LV] = o_lv
    b[H_O_BITS] = o_bits
    b[o_lv:] = a[a[H_O_LV] : a[H_O_BITS] + 2 * w // 64]
    for i in range(a[H_TSIZE]):
        o = _rec(i)
        if a[o + S_KEY] != 0:
            at, h = _find(b, a[o + S_ID])
            d = _rec(h)
            b[d : d + REC_WORDS] = a[o : o + REC_WORDS]
    return b


@njit(cache=True)
def load_orders(a, ids, quantities, prices, times):  # type: ignore[no-untyped-def]
    """Insert snapshot orders (quantity signed); returns how many (< len: grow, call again).

    Orders go into the table first and each side's window is built once at the end
    (inserting them one by one could recentre on every order better than the last).
    """
    done = len(ids)
    for i in range(len(ids)):
        if _store(a, ids[i], prices[i], quantities[i], times[i], 0) == -1:
            done = i
            break
    live0 = 0
    live1 = 0
    for i in range(a[H_TSIZE]):
        o = _rec(i)
        if a[o + S_REM] > 0 and a[o + S_KEY] != 0:
            if a[o + S_KEY] < 0:
                live0 += 1
            else:
                live1 += 1
    a[H_LIVE] = live0
    a[H_LIVE + 1] = live1
    _recentre(a, 0)
    _recentre(a, 1)
    _top(a)
    return done


@njit(cache=True)
def levels(a, s, n, out_price, out_qty, out_cnt):  # type: ignore[no-untyped-def]
    """Fill the best ``n`` levels of side ``s`` (price, total, order count); return how many.

    Window levels come from the bitmap; if they run out while far orders exist, the far
    orders are aggregated by price on the spot (only deep queries reach them).
    """
    w = a[H_W]
    base = a[H_BASE + s]
    lv = a[H_O_LV] + 2 * s * w
    m = 0
    idx = _next_level(a, s, 0) if a[H_LIVE + s] > 0 else w
    while m < n and idx < w:
        k = base + idx
        out_price[m] = -k if s == 0 else k
        out_qty[m] = a[lv + 2 * idx]
        out_cnt[m] = a[lv + 2 * idx + 1]
        m += 1
        idx = _next_level(a, s, idx + 1)
    nf = a[H_FAR + s]
    if m < n and nf > 0:
        fk = np.empty(nf, dtype=np.int64)
        fq = np.empty(nf, dtype=np.int64)
        c = 0
        for i in range(a[H_TSIZE]):
            o = _rec(i)
            k = a[o + S_KEY]
            if k != 0 and (k < 0) == (s == 0) and a[o + S_REM] > 0 and k - base >= w:
                fk[c] = k
                fq[c] = a[o + S_REM]
                c += 1
        order = np.argsort(fk[:c], kind="mergesort")
        i = 0
        while i < c and m < n:
            k = fk[order[i]]
            tq = 0
            tc = 0
            while i < c and fk[order[i]] == k:
                tq += fq[order[i]]
                tc += 1
                i += 1
            out_price[m] = -k if s == 0 else k
            out_qty[m] = tq
            out_cnt[m] = tc
            m += 1
    return m


@njit(cache=True)
def find_order(a, id_, out):  # type: ignore[no-untyped-def]
    """Copy (key, remaining, tmo) of order ``id_`` into ``out``; False if absent."""
    h, _ = _find(a, id_)
    if h < 0:
        return False
    o = _rec(h)
    out[0] = a[o + S_KEY]
    out[1] = a[o + S_REM]
    out[2] = a[o + S_TMO]
    return True


@njit(cache=True)
def queue_ahead(a, id_):  # type: ignore[no-untyped-def]
    """Quantity ahead of order ``id_`` at its price (FIFO: time, then id); -1 if absent."""
    at, _ = _find(a, id_)
    if at < 0:
        return -1
    o = _rec(at)
    k = a[o + S_KEY]
    t = a[o + S_TMO] >> 1
    total = 0
    for i in range(a[H_TSIZE]):
        p = _rec(i)
        if a[p + S_KEY] == k and i != at:
            ti = a[p + S_TMO] >> 1
            if ti < t or (ti == t and a[p + S_ID] < id_):
                total += a[p + S_REM]
    return total


@njit(cache=True)
def export_orders(a, out_id, out_qty, out_price, out_time, out_own):  # type: ignore[no-untyped-def]
    """Copy every order of the view (quantity signed as on the wire); return the count."""
    m = 0
    for i in range(a[H_TSIZE]):
        o = _rec(i)
        k = a[o + S_KEY]
        if k != 0:
            rem = a[o + S_REM]
            out_id[m] = a[o + S_ID]
            out_qty[m] = rem if k < 0 else -rem
            out_price[m] = -k if k < 0 else k
            out_time[m] = a[o + S_TMO] >> 1
            out_own[m] = a[o + S_TMO] & 1
            m += 1
    return m


@_inline
def _mix(x):  # type: ignore[no-untyped-def]
    # splitmix64's finaliser on int64: logical shifts emulated, multiplies wrap mod 2**64.
    x ^= (x >> 30) & ((1 << 34) - 1)
    x *= -4658895280553007687  # 0xBF58476D1CE4E5B9
    x ^= (x >> 27) & ((1 << 37) - 1)
    x *= -7723592293110705685  # 0x94D049BB133111EB
    x ^= (x >> 31) & ((1 << 33) - 1)
    return x


@njit(cache=True)
def checksum(a):  # type: ignore[no-untyped-def]
    """Order-independent hash of every order (id, key, remaining, time, own), mod 2**64."""
    total = 0
    for i in range(a[H_TSIZE]):
        o = _rec(i)
        k = a[o + S_KEY]
        if k != 0:
            tmo = a[o + S_TMO]
            total += _mix(a[o + S_ID] ^ _mix(k ^ _mix(a[o + S_REM] ^ _mix((tmo >> 1) + (tmo & 1)))))
    return total


@njit(cache=True)
def check_invariants(a):  # type: ignore[no-untyped-def]
    """Recompute every aggregate from the records; 0 if consistent, else a failure code."""
    w = a[H_W]
    nw = w >> 6
    n = 0
    live = np.zeros(2, dtype=np.int64)
    far = np.zeros(2, dtype=np.int64)
    lv2 = np.zeros(4 * w, dtype=np.int64)
    for i in range(a[H_TSIZE]):
        o = _rec(i)
        k = a[o + S_KEY]
        if k == 0:
            continue
        n += 1
        at, h = _find(a, a[o + S_ID])
        if at != i:
            return 1  # the id is not found where its record is (probe chain broken)
        q = a[o + S_REM]
        if q < 0:
            return 2
        if q == 0:
            continue
        s = 0 if k < 0 else 1
        live[s] += 1
        idx = k - a[H_BASE + s]
        if idx < 0:
            return 3  # a live order better than the window start
        if idx >= w:
            far[s] += 1
        else:
            lv2[2 * (s * w + idx)] += q
            lv2[2 * (s * w + idx) + 1] += 1
    if n != a[H_N]:
        return 4
    lv = a[H_O_LV]
    for s in range(2):
        if live[s] != a[H_LIVE + s] or far[s] != a[H_FAR + s]:
            return 5
        best = w
        for idx in range(w):
            j = 2 * (s * w + idx)
            if lv2[j] != a[lv + j] or lv2[j + 1] != a[lv + j + 1]:
                return 6  # a level's total or count differs from its orders
            bit = (a[a[H_O_BITS] + s * nw + (idx >> 6)] >> (idx & 63)) & 1
            if bit != (1 if lv2[j + 1] > 0 else 0):
                return 7
            if lv2[j + 1] > 0 and best == w:
                best = idx
        if best != a[H_BEST + s]:
            return 8
        if live[s] > 0 and best == w:
            return 9  # live orders but an empty window
    return 0
