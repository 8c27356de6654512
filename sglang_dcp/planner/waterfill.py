"""Water-filled shard plans for a split ``dcp`` request (pure Python).

``waterfill`` spreads ``total`` tokens over bins with different base heights; ``GuestPlans``
(mixed into ``DcpPolicy``, which provides the ledger, the cost cache and its coefficients)
turns it into page-aligned plans ``(peak, sealed, tail_start)`` for d = 2 .. max_degree.
"""

from __future__ import annotations

from sglang_dcp.planner.state import page_up


def waterfill(heights: list[float], lo: list[int], hi: list[int], total: int):
    """Minimise ``max_i (heights[i] + x[i])`` s.t. ``sum x = total``, ``lo <= x <= hi``.

    Returns the continuous ``x`` (level ``L``: ``x_i = clamp(L - heights[i], lo_i, hi_i)``) or
    None when infeasible. O(d log d) over the 2d breakpoints.
    """
    if total < sum(lo) or total > sum(hi):
        return None
    events = []
    for hgt, l, u in zip(heights, lo, hi):
        if u < l:
            return None
        events.append((hgt + l, 1))
        events.append((hgt + u, -1))
    events.sort()
    f = float(sum(lo))
    cur = events[0][0]
    slope = 0
    level = events[-1][0]
    for pos, delta in events:
        nf = f + slope * (pos - cur)
        if nf >= total:
            level = cur + (total - f) / slope if slope else cur
            break
        f, cur = nf, pos
        slope += delta
    return [min(max(level - hgt, l), u) for hgt, l, u in zip(heights, lo, hi)]


class GuestPlans:
    def _try_guests(self, h, order, resv, pfull, min_tail, free_h, base_h):
        """Water-filled plans for d = 2 .. max_degree with guests taken from ``order``."""
        cap, kv, ms, ps, a = self.cap, self.kv, self.min_shard_tokens, self.page, self._a
        guests, excl = [], self._excl
        for g in order:
            if g != h and cap[g] - kv[g] >= ms and g not in excl:
                guests.append(g)
                if len(guests) == self.max_degree - 1:
                    break
        plans = []
        ex = [0.0 if self.bucketed else  # bucketed: the wire is priced per plan (wire_cost.py)
              self.profile.item_exchange_us(self.cluster.same_node(g, h)) for g in guests]
        cost = self.cost
        for d in range(2, len(guests) + 2):
            gs = guests[: d - 1]
            home_extra = sum(ex[: d - 1]) + self._merge * (d - 1)
            bases = [base_h + home_extra] + [cost[g] + self._item + e for g, e in zip(gs, ex)]
            lo = [min_tail] + [ms] * (d - 1)
            hi = [free_h] + [min(cap[g] - kv[g], pfull) for g in gs]
            x = waterfill([c / a for c in bases], lo, hi, resv)
            if x is None:
                continue
            # guests: whole pages, largest first in token order; home keeps the rest as tail
            sizes = [max(ms, int(v) // ps * ps) for v in x[1:]]
            sizes = [min(s, u) for s, u in zip(sizes, hi[1:])]
            tail = resv - sum(sizes)
            for i, u in enumerate(hi[1:]):  # rounding down left the home too much: give the
                if tail <= free_h:  # excess back to guests with room, whole pages at a time
                    break
                add = min((u - sizes[i]) // ps * ps, page_up(tail - free_h, ps))
                sizes[i] += add
                tail -= add
            if tail > free_h or tail < min_tail:
                continue
            sealed, pos = [], 0
            for g, s in zip(gs, sizes):
                sealed.append([g, pos, pos + s])
                pos += s
            peak = bases[0] + a * tail
            for c, s in zip(bases[1:], sizes):
                t = c + a * s
                if t > peak:
                    peak = t
            plans.append((peak, sealed, pos))
        return plans
