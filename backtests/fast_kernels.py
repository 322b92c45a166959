"""Numba kernels of the fast replay (backtests/fast.py): the recorded market in batches.

:func:`k_scan` applies recorded book events straight to the strategy's own L3 view (the
arena of :mod:`engine.state.book_kernels`, which also holds the strategy's resting orders)
and stops, *before* applying it, at the first event the exchange core must see:

* an OrderOpened that crosses the opposite best (recorded orders never cross each other,
  so it crosses one of ours, or a recorded order that holds more than the recording says);
* an OrdersMatched whose maker is not where the recording had it: not at its side's best
  price, holding less than the traded quantity plus the recorded remaining, or with one of our orders at or better than the
  trade price on its side (ours may be ahead of it in the queue);
* any event flagged own (a recording of a live run: the replay re-creates those orders),
  or any close or trade of an order in ``taken``: one our recorded taker emptied live, or
  one that holds more than the recording says (our order took flow that, live, went to it);
* with ``stop_trade``, every OrdersMatched (a strategy that overrides ``on_trade``).

It also stops *after* an event that changed the touch when ``stop_top`` is set (an
``on_book`` is due), and before the first event at or after ``until`` (a delivery, an
arrival or a timer of the replay comes first).  Everything else costs a few tens of
nanoseconds and never reaches Python.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.state.book_kernels import (
    _NO_NRT,
    EV_CLOSE,
    EV_MATCH,
    EV_OPEN,
    EVF_HAS_ASK,
    EVF_HAS_BID,
    EVF_OWN,
    EVF_OWN_ASK,
    H_BA,
    H_BB,
    H_EVENTS,
    H_TSIZE,
    NEED_GROW,
    S_ID,
    S_KEY,
    S_REM,
    S_TMO,
    TOP_PRICE,
    TOP_QTY,
    _close,
    _find,
    _get,
    _match,
    _open,
    _rec,
)

# k_scan's stop statuses (distinct from the book's change flags)
END = 0
UNTIL = 1
INTERACT = 2
TOP = 3
TRADE = 4
OTHER_MARKET = 5
GROW = 6

_TOP = TOP_PRICE | TOP_QTY


@njit(cache=True, **_NO_NRT)
def k_scan(a, ev, mkt, market, start, until, own_bid, own_ask, taken, stop_top, stop_trade, out):  # type: ignore[no-untyped-def]
    """Apply ``ev[start:]`` of ``market`` to arena ``a`` until a stop (see the module doc).

    ``mkt`` gives each row's traded-market index (-1: a market no strategy trades, skipped
    and counted in ``out[2]``); a row of another traded market stops with OTHER_MARKET.
    ``own_bid``/``own_ask``: the strategy's best prices (0 = none).  ``taken``: sorted ids
    whose every close and trade Python handles.
    Returns (next row, status); ``out[0]`` gets 1 if the touch changed, ``out[1]`` the last
    trade price applied (0 if none), ``out[2]`` the rows of untraded markets skipped,
    ``out[3]`` the receive time of the last row applied.
    """
    n = len(ev)
    i = start
    status = END
    applied = 0
    while i < n:
        e = ev[i]
        if e.recv_time >= until:
            status = UNTIL
            break
        m = mkt[i]
        if m != market:
            if m >= 0:
                status = OTHER_MARKET
                break
            out[2] += 1
            i += 1
            continue
        kind = e.kind
        flags = e.flags
        if kind == EV_OPEN:
            if flags & EVF_OWN:
                status = INTERACT
                break
            p = e.price
            if e.quantity > 0:
                ba = _get(a, H_BA)
                if ba != 0 and p >= ba:
                    status = INTERACT
                    break
            else:
                bb = _get(a, H_BB)
                if bb != 0 and p <= bb:
                    status = INTERACT
                    break
            r = _open(a, e.id, p, e.quantity, e.exch_time, 0)
        elif kind == EV_CLOSE:
            if flags & EVF_OWN:
                status = INTERACT
                break
            if _member(taken, e.id):
                status = INTERACT
                break
            r = _close(a, e.id, e.quantity, 0)
        elif kind == EV_MATCH:
            if flags & (EVF_OWN | EVF_OWN_ASK) or stop_trade:
                status = INTERACT if not stop_trade else TRADE
                break
            has_bid = flags & EVF_HAS_BID
            has_ask = flags & EVF_HAS_ASK
            if (has_bid and _member(taken, e.id)) or (has_ask and _member(taken, e.ask_id)):
                status = INTERACT
                break
            hb = _find(a, e.id)[0] if has_bid else -1
            ha = _find(a, e.ask_id)[0] if has_ask else -1
            # which side rested: the one in the view (both or neither: the older id)
            if not has_bid:
                taker_buy = True
            elif not has_ask:
                taker_buy = False
            elif (hb >= 0) != (ha >= 0):
                taker_buy = ha >= 0
            else:
                taker_buy = e.id > e.ask_id
            p = e.price
            if taker_buy:
                if has_bid and hb >= 0:  # the taker rests: not a recorded pattern here
                    status = INTERACT
                    break
                if ha < 0 or _get(a, H_BA) != p or (own_ask != 0 and own_ask <= p):
                    status = INTERACT
                    break
                # the view must hold at least what the recording says it held (ours may
                # have taken some of it: then Python walks, as the exact path trades)
                if _get(a, _rec(ha) + S_REM) < e.quantity + e.ask_remaining:
                    status = INTERACT
                    break
            else:
                if has_ask and ha >= 0:
                    status = INTERACT
                    break
                if hb < 0 or _get(a, H_BB) != p or (own_bid != 0 and own_bid >= p):
                    status = INTERACT
                    break
                # (a bid's remaining may drop by more than it bought: its fee comes out of
                # its reservation; the recorded remaining is the truth)
                if _get(a, _rec(hb) + S_REM) < e.quantity + e.remaining:
                    status = INTERACT
                    break
            r = _match(a, e.id, e.remaining, e.ask_id, e.ask_remaining, flags)
            out[1] = p
        else:
            r = 0
        if r == NEED_GROW:
            status = GROW
            break
        applied += 1
        out[3] = e.recv_time
        i += 1
        if r >= 0 and r & _TOP:
            out[0] = 1
            if stop_top:
                status = TOP
                break
    a[H_EVENTS] += applied
    return i, status


@njit(cache=True, **_NO_NRT)
def _member(ids, x):  # type: ignore[no-untyped-def]
    """``x`` in the sorted array ``ids`` (binary search)."""
    lo = 0
    hi = len(ids)
    while lo < hi:
        mid = (lo + hi) >> 1
        if ids[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(ids) and ids[lo] == x


@njit(cache=True)
def side_orders(a, bid, limit, out_id, out_rem, out_price, out_own):  # type: ignore[no-untyped-def]
    """Orders of one side at ``limit`` or better (``limit`` 0: all), in priority order
    (price, then time, then id) -- the queue a taker walks.  Returns the count (at most
    ``len(out_id)``: the best ones)."""
    tsize = a[H_TSIZE]
    keys = np.empty(tsize, dtype=np.int64)
    tmos = np.empty(tsize, dtype=np.int64)
    ids = np.empty(tsize, dtype=np.int64)
    rems = np.empty(tsize, dtype=np.int64)
    m = 0
    for h in range(tsize):
        o = _rec(h)
        k = a[o + S_KEY]
        if k == 0 or (k < 0) != bid:
            continue
        rem = a[o + S_REM]
        if rem <= 0:
            continue
        price = -k if k < 0 else k
        if limit != 0 and ((bid and price < limit) or (not bid and price > limit)):
            continue
        keys[m] = k
        tmos[m] = a[o + S_TMO]
        ids[m] = a[o + S_ID]
        rems[m] = rem
        m += 1
    # priority: smaller key is better on both sides, then time, then id (stable sorts,
    # least significant first)
    idx = np.argsort(ids[:m], kind="mergesort")
    idx = idx[np.argsort(tmos[:m][idx] >> 1, kind="mergesort")]
    idx = idx[np.argsort(keys[:m][idx], kind="mergesort")]
    n = min(m, len(out_id))
    for j in range(n):
        x = idx[j]
        out_id[j] = ids[x]
        out_rem[j] = rems[x]
        out_price[j] = -keys[x] if keys[x] < 0 else keys[x]
        out_own[j] = tmos[x] & 1
    return n


__all__ = ["k_scan", "side_orders", "END", "UNTIL", "INTERACT", "TOP", "TRADE", "OTHER_MARKET", "GROW"]
