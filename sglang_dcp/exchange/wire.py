"""Every wire format of the DCP data path, in one place. Pure Python (no torch).

1. **Per-layer exchange messages** (``buffers.py``, ``static.py``): per peer, a 16-byte header
   (int32 x4: ``HDR_COUNT`` rows, ``HDR_TAG`` step tag, two reserved) in front of the rows::

       q message:   | hdr | q rows [capacity, num_heads, head_dim] |                 (act dtype)
       out message: | hdr | o rows [capacity, num_heads, v_head_dim] | lse [capacity, num_heads] |

   Bytes per guest item per layer (``item_bytes``): q out + (o, lse) back; the KV cache dtype
   does not enter (FP8 KV changes what each rank reads, not what travels).

   - GQA: ``head_dim = v_head_dim`` = the model's head dim (Qwen3-235B: 64 query heads x 128).
   - MLA (SGLang's absorbed path): ``head_dim = kv_lora_rank + qk_rope_head_dim``,
     ``v_head_dim = kv_lora_rank`` (DeepSeek-V3: 128 heads x 576 out, 512 back).

   The shipped cost profiles derive ``exchange_us_per_item`` from these byte counts
   (``test/unit/test_exchange_bytes.py`` checks each one).

   **Buckets.** ``capacity`` above is the step's *bucket*, not the engine's maximum: the
   all-to-alls have equal splits (a captured CUDA graph freezes them), so every step uses the
   smallest of ``capacity_buckets(max)`` that holds its busiest peer pair (the same on every
   rank: it comes from the step plan), one graph variant per bucket. **Scopes**: on a server of
   several nodes, a step in which no split request has a shard off its home's node runs both
   all-to-alls among each node's ranks only (``scope_peers``, ``node_ranks``; a graph variant per
   bucket and scope). ``step_wire_bytes`` counts what such a step ships against what its items
   need; the server's ``StaticExchange`` and the benchmarks use it.

2. **Shard-move messages** (``transfer.py``): one int64 state record per move
   (``MOVE_SRC_OK``, ``MOVE_DST_OK``, ``MOVE_CHECKSUM``: an integer sum over the raw bytes,
   ``move_staging.checksum``), all-gathered; then rounds of uneven byte all-to-alls of at most
   ``--dcp-transfer-chunk-mb`` per rank and direction (``move_staging.schedule``), whose
   per-peer payload is, for each piece of each move to that peer in move order, every layer's
   K of the piece's tokens (``[layers, tokens, kv_heads, head_dim]``) followed by every layer's
   V; then one int64 pair per move (matched, the receiver's checksum), all-gathered.

3. **Step news records** (``sglang/header.py``, ``datapath.py``): a rank's ``RankNews`` as a flat
   list of int64 words, no pickling, gathered only in steps where some rank has news::

       header:    [one count per section (NEWS_SECTIONS), n_shards, n_rids, n_string_words]
       sections, in NEWS_SECTIONS order, one fixed-size record each:
         moves:     [rid, src, dst, start, end]         (and ``after``, the same)
         releases:  [rid]
         decoding:  [rid, home, first_shard, n_shards]  (``extending``: + start, end)
       shards:    n_shards x [rank, start, end]
       rids:      n_rids x [byte_offset, byte_length]   (rid fields above index this table)
       strings:   the rids' UTF-8 bytes, 8 per word (little-endian), zero-padded

   Its length travels in SGLang's own per-step gather next to the news flag, so the gather of
   the records is one fixed-size collective with no size exchange.
"""

from __future__ import annotations

LSE_BYTES = 4  # fp32

# 1. exchange message header
DEFAULT_CAPACITY = 16  # queries per peer pair per round (--dcp-max-guest-items)
HEADER_BYTES = 16  # int32 x4
HDR_COUNT, HDR_TAG = 0, 1  # int32 fields of the header (2 and 3 reserved, zero)

# 2. shard-move state record (float64 per move)
MOVE_SRC_OK, MOVE_DST_OK, MOVE_CHECKSUM = 0, 1, 2
MOVE_STATE_WIDTH = 3


def item_bytes(*, num_q_heads: int, head_dim: int, v_head_dim: int, elem_bytes: int = 2) -> int:
    """Bytes per guest item per layer: q out + (o, lse) back."""
    return num_q_heads * ((head_dim + v_head_dim) * elem_bytes + LSE_BYTES)


def mla_item_bytes(
    num_q_heads: int, *, kv_lora_rank: int = 512, qk_rope_head_dim: int = 64, elem_bytes: int = 2
) -> int:
    """``item_bytes`` of MLA's absorbed exchange (defaults: DeepSeek-V3 / Kimi-K2 latent)."""
    return item_bytes(
        num_q_heads=num_q_heads, head_dim=kv_lora_rank + qk_rope_head_dim,
        v_head_dim=kv_lora_rank, elem_bytes=elem_bytes,
    )  # fmt: skip


def gqa_item_bytes(num_q_heads: int, head_dim: int, *, elem_bytes: int = 2) -> int:
    """``item_bytes`` of GQA/MHA (per-head K and V of ``head_dim``)."""
    return item_bytes(
        num_q_heads=num_q_heads, head_dim=head_dim, v_head_dim=head_dim, elem_bytes=elem_bytes
    )


# ---- 3. step news records ---------------------------------------------------------------------

# (section, kind, extra ints): "move" records are (rid, src, dst, start, end), "rid" records a
# rid, "layout" records (rid, home, shards, *extra) with shards ((rank, start, end), ...)
NEWS_SECTIONS = (
    ("moves", "move", 0),  # shard moves before this step's forward
    ("releases", "rid", 0),  # requests whose KV was released at home
    ("decoding", "layout", 0),  # split requests decoded this step
    ("extending", "layout", 2),  # prefill chunks of split requests: + (start, end)
    ("after", "move", 0),  # moves right after this step's forward (prefill pieces)
)
NEWS_HEADER = len(NEWS_SECTIONS) + 3  # + n_shards, n_rids, n_string_words
_WIDTH = {"move": 5, "rid": 1, "layout": 4}
_SHARD, _RID = 3, 2


def encode_news(news: dict[str, list]) -> list[int]:
    """A rank's news (``{section: records}``, see ``NEWS_SECTIONS``; missing sections are
    empty) as int64 words."""
    rids: dict[str, int] = {}

    def rid_index(rid: str) -> int:
        if rid not in rids:
            rids[rid] = len(rids)
        return rids[rid]

    counts, body, shard_words = [], [], []
    for name, kind, extra in NEWS_SECTIONS:
        recs = news.get(name, ())
        counts.append(len(recs))
        for rec in recs:
            if kind == "move":
                rid, src, dst, start, end = rec
                body += (rid_index(rid), src, dst, start, end)
            elif kind == "rid":
                body.append(rid_index(rec))
            else:
                rid, home, shards, *more = rec
                if len(more) != extra:
                    raise ValueError(f"news {name!r}: {rec!r} needs {extra} extra fields")
                body += (rid_index(rid), home, len(shard_words) // _SHARD, len(shards), *more)
                for r, a, b in shards:
                    shard_words += (r, a, b)
    table: list[int] = []
    raw = [rid.encode() for rid in rids]
    pos = 0
    for b in raw:
        table += (pos, len(b))
        pos += len(b)
    blob = b"".join(raw)
    blob += bytes(-len(blob) % 8)
    strings = [int.from_bytes(blob[i : i + 8], "little", signed=True) for i in range(0, len(blob), 8)]
    header = [*counts, len(shard_words) // _SHARD, len(rids), len(strings)]
    return header + body + shard_words + table + strings


def decode_news(words) -> dict[str, list]:
    """``encode_news``'s inverse (``words``: a sequence of ints, trailing padding ignored; all
    zeros is empty news): ``{section: records}`` for every section, records as tuples."""
    head = [int(x) for x in words[:NEWS_HEADER]]
    if len(head) < NEWS_HEADER or min(head) < 0:
        raise ValueError(f"news record: bad header {head}")
    *counts, n_sh, n_rids, n_str = head
    size = NEWS_HEADER + _SHARD * n_sh + _RID * n_rids + n_str
    size += sum(c * (_WIDTH[kind] + extra) for c, (_, kind, extra) in zip(counts, NEWS_SECTIONS))
    if len(words) < size:
        raise ValueError(f"news record: {len(words)} words, the header says {size}")
    vals = [int(x) for x in words[:size]]
    sh_at = size - n_str - _RID * n_rids - _SHARD * n_sh
    rid_at = sh_at + _SHARD * n_sh
    blob = b"".join(v.to_bytes(8, "little", signed=True) for v in vals[size - n_str : size])
    names = []
    for i in range(n_rids):
        off, ln = vals[rid_at + _RID * i : rid_at + _RID * (i + 1)]
        names.append(blob[off : off + ln].decode())
    out: dict[str, list] = {}
    pos = NEWS_HEADER
    for c, (name, kind, extra) in zip(counts, NEWS_SECTIONS):
        recs = out[name] = []
        w = _WIDTH[kind] + extra
        for i in range(c):
            rec = vals[pos + w * i : pos + w * (i + 1)]
            if kind == "move":
                recs.append((names[rec[0]], *rec[1:]))
            elif kind == "rid":
                recs.append(names[rec[0]])
            else:
                rid, home, first, n, *more = rec
                shards = tuple(
                    tuple(vals[sh_at + _SHARD * j : sh_at + _SHARD * (j + 1)])
                    for j in range(first, first + n)
                )
                recs.append((names[rid], home, shards, *more))
        pos += w * c
    return out


# 1b. bucketed capacity: what a step's exchange ships


def capacity_buckets(capacity: int) -> tuple[int, ...]:
    """Per-peer item buckets up to ``capacity``, ascending: the powers of two below it, and it."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    out, c = [], 1
    while c < capacity:
        out.append(c)
        c *= 2
    return (*out, capacity)


def bucket_for(pair_items: int, capacity: int) -> int:
    """The smallest bucket holding ``pair_items`` queries per peer pair; ``capacity`` when they
    do not fit one round (the step then runs in rounds of ``capacity``)."""
    return next((c for c in capacity_buckets(capacity) if c >= pair_items), capacity)


def padded_items(num_ranks: int, busiest_pair: int, capacity: int, *,
                 peers: int | None = None) -> int:  # fmt: skip
    """Query rows each rank ships to its peers per layer (and the result rows it ships back) in
    a step whose busiest peer pair carries ``busiest_pair`` queries: every peer gets one bucket
    per round, whatever it needs. ``peers``: how many ranks each rank exchanges with (default
    every other rank; a node-scoped step, ``scope_peers``, only its node's). What the server's
    exchange moves, and what the simulator charges each rank's exchange for (0: nothing is
    split, no exchange)."""
    if busiest_pair <= 0:
        return 0
    rounds = -(-busiest_pair // capacity)
    return rounds * (num_ranks - 1 if peers is None else peers) * bucket_for(busiest_pair,
                                                                              capacity)


def scope_peers(num_ranks: int, ranks_per_node: int, *, cross: bool) -> int:
    """Peers of the busiest rank in a step's exchange. **Scopes**: a step where every split
    request's shards share its home's node (``cross`` false) exchanges within each node only
    (the ``node`` scope: every rank ships its node's other ranks, over NVLink); one where some
    pair crosses nodes exchanges with every rank (``all``). The scope, like the bucket, is the
    same on every rank (it comes from the step plan); nodes are ``ranks_per_node`` consecutive
    ranks, the last one possibly smaller."""
    if cross or ranks_per_node >= num_ranks:
        return num_ranks - 1
    return ranks_per_node - 1


def node_ranks(rank: int, num_ranks: int, ranks_per_node: int) -> tuple[int, ...]:
    """The ranks of ``rank``'s node (``rank`` included): a node-scoped step's peers."""
    first = rank - rank % ranks_per_node
    return tuple(range(first, min(first + ranks_per_node, num_ranks)))


def _round16(n: int) -> int:
    return -(-n // 16) * 16


def message_bytes(*, bucket: int, q_row_bytes: int, o_row_bytes: int, lse_row_bytes: int
                  ) -> tuple[int, int]:  # fmt: skip
    """Bytes of one peer's q message and out message at ``bucket`` rows (header included)."""
    q = HEADER_BYTES + _round16(bucket * q_row_bytes)
    out = HEADER_BYTES + _round16(bucket * o_row_bytes) + _round16(bucket * lse_row_bytes)
    return q, out


def step_wire_bytes(pair_items, *, capacity: int, q_row_bytes: int, o_row_bytes: int,
                    lse_row_bytes: int, ranks_per_node: int | None = None) -> dict:  # fmt: skip
    """Bytes one layer's exchange puts on the wire in a step, over all ranks, both directions.

    ``pair_items[h][r]``: queries home ``h`` sends to rank ``r`` this step (``W x W``). Each rank
    sends each peer one message per direction at the step's bucket (its own never crosses the
    wire): every other rank, or with ``ranks_per_node`` and no pair across nodes only its node's
    (``scope_peers``; ``scope`` says which); rounds (pairs over ``capacity``) ship ``capacity``
    rows each round.
    Returns ``wire_bytes`` (what the collectives ship), ``item_bytes`` (the items' own rows plus
    one header per message that carries items), ``bucket``, ``rounds`` and
    ``busiest_rank_wire_bytes`` (the largest one rank sends)."""
    W = len(pair_items)
    busiest = max((n for h in range(W) for r, n in enumerate(pair_items[h]) if r != h), default=0)
    rounds = max(1, -(-busiest // capacity))
    bucket = bucket_for(busiest, capacity)
    q_msg, out_msg = message_bytes(bucket=bucket, q_row_bytes=q_row_bytes,
                                   o_row_bytes=o_row_bytes, lse_row_bytes=lse_row_bytes)  # fmt: skip
    rpn = ranks_per_node or W
    cross = any(n and h // rpn != r // rpn
                for h in range(W) for r, n in enumerate(pair_items[h]))  # fmt: skip
    peers = scope_peers(W, rpn, cross=cross)
    per_rank = padded_items(W, busiest, capacity, peers=peers) // bucket * (q_msg + out_msg)
    row = q_row_bytes + o_row_bytes + lse_row_bytes
    used = sum(n * row + 2 * HEADER_BYTES * (-(-n // capacity))
               for h in range(W) for r, n in enumerate(pair_items[h]) if r != h and n)  # fmt: skip
    return {"wire_bytes": per_rank * W, "item_bytes": used, "bucket": bucket, "rounds": rounds,
            "busiest_rank_wire_bytes": per_rank,
            "scope": "all" if peers == W - 1 else "node"}  # fmt: skip
