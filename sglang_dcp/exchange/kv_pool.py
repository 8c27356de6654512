"""A per-rank paged KV pool: K and V buffers for every layer, pages allocated per shard.

A shard is keyed by ``(rid, start)`` (its first token); its page table lists pages in token
order. Slot ``page * page_size + offset`` addresses one token in ``k[layer]``/``v[layer]``.
Page 0 is reserved as the dummy page: padded rows of a static batch write their K/V there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ShardKey = tuple[str, int]  # (rid, first token of the shard)


class KVPoolFull(RuntimeError):
    pass


@dataclass(slots=True)
class _Table:
    pages: list[int]
    num_tokens: int


class KVPool:
    """``k: [num_layers, num_slots, num_kv_heads, head_dim]``, ``v: [..., v_head_dim]``."""

    DUMMY_SLOT = 0

    def __init__(
        self,
        *,
        num_layers: int,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is the dummy page), got {num_pages}")
        self.page_size = page_size
        self.num_pages = num_pages
        num_slots = num_pages * page_size
        dv = head_dim if v_head_dim is None else v_head_dim
        kw = dict(dtype=dtype, device=device)
        self.k = torch.zeros(num_layers, num_slots, num_kv_heads, head_dim, **kw)
        self.v = torch.zeros(num_layers, num_slots, num_kv_heads, dv, **kw)
        self._free: list[int] = list(range(num_pages - 1, 0, -1))  # pop() hands out low pages first
        self._tables: dict[ShardKey, _Table] = {}

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def free_pages(self) -> list[int]:
        """Pages no shard holds (checks poison them: a read of one shows)."""
        return list(self._free)

    def keys(self) -> list[ShardKey]:
        return sorted(self._tables)

    def has(self, key: ShardKey) -> bool:
        return key in self._tables

    def num_tokens(self, key: ShardKey) -> int:
        return self._tables[key].num_tokens

    def key_at(self, rid: str, token: int) -> ShardKey:
        """The key of the shard of ``rid`` held here that contains ``token``; KeyError if none."""
        for key in self._tables:
            if key[0] == rid and key[1] <= token < key[1] + self._tables[key].num_tokens:
                return key
        raise KeyError(f"no shard of {rid!r} holds token {token} here")

    def _pages_for(self, n: int) -> int:
        return -(-n // self.page_size)

    def allocate(self, key: ShardKey, num_tokens: int) -> None:
        """Pages for a new shard of ``num_tokens`` tokens; ``KVPoolFull`` (taking nothing)."""
        if key in self._tables:
            raise KeyError(f"shard {key} already allocated")
        need = self._pages_for(num_tokens)
        if need > len(self._free):
            raise KVPoolFull(f"shard {key}: needs {need} pages, {len(self._free)} free")
        self._tables[key] = _Table([self._free.pop() for _ in range(need)], num_tokens)

    def extend(self, key: ShardKey, num_tokens: int = 1) -> list[int]:
        """Grow a (tail) shard by ``num_tokens``; returns the new tokens' slots."""
        t = self._tables[key]
        need = self._pages_for(t.num_tokens + num_tokens) - len(t.pages)
        if need > len(self._free):
            raise KVPoolFull(f"shard {key}: needs {need} more pages, {len(self._free)} free")
        t.pages.extend(self._free.pop() for _ in range(need))
        old = t.num_tokens
        t.num_tokens += num_tokens
        return self.slots(key)[old:]

    def split(self, key: ShardKey, at: int) -> ShardKey:
        """Cut shard ``key`` at token ``at`` (absolute, page-aligned relative to the shard start);
        the part from ``at`` on becomes shard ``(rid, at)``. Metadata only: no KV moves."""
        rid, start = key
        t = self._tables[key]
        off = at - start
        if off <= 0 or off >= t.num_tokens or off % self.page_size:
            raise ValueError(f"cannot split shard {key} of {t.num_tokens} tokens at token {at}")
        n = off // self.page_size
        self._tables[(rid, at)] = _Table(t.pages[n:], t.num_tokens - off)
        t.pages, t.num_tokens = t.pages[:n], off
        return (rid, at)

    def join(self, key: ShardKey, nxt: ShardKey) -> None:
        """Undo ``split``: append shard ``nxt`` (which must start where ``key`` ends) to ``key``."""
        t, u = self._tables[key], self._tables[nxt]
        if nxt[0] != key[0] or nxt[1] != key[1] + t.num_tokens or t.num_tokens % self.page_size:
            raise ValueError(f"cannot join shard {nxt} onto {key}")
        del self._tables[nxt]
        t.pages += u.pages
        t.num_tokens += u.num_tokens

    def free(self, key: ShardKey) -> None:
        t = self._tables.pop(key)
        self._free.extend(reversed(t.pages))

    def free_request(self, rid: str) -> None:
        for key in [k for k in self._tables if k[0] == rid]:
            self.free(key)

    def slots(self, key: ShardKey) -> list[int]:
        t = self._tables[key]
        ps = self.page_size
        return [p * ps + i for p in t.pages for i in range(ps)][: t.num_tokens]

    def slot_map(self) -> dict[str, list[int]]:
        """rid -> all of its slots on this rank, in token order (the route plan's input)."""
        out: dict[str, list[int]] = {}
        for key in sorted(self._tables, key=lambda k: (k[0], k[1])):
            out.setdefault(key[0], []).extend(self.slots(key))
        return out

    def slot_tensor(self, key: ShardKey) -> torch.Tensor:
        return torch.tensor(self.slots(key), dtype=torch.long, device=self.k.device)
