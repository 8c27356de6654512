"""Water-filling: spread ``total`` tokens over bins with different base heights (pure Python)."""

from __future__ import annotations


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
