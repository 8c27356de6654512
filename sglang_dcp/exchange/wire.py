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

2. **Shard-move messages** (``transfer.py``): one float64 state record per move
   (``MOVE_SRC_OK``, ``MOVE_DST_OK``, ``MOVE_CHECKSUM``), all-gathered; then one uneven byte
   all-to-all whose per-peer payload is, for each move to that peer in move order, every layer's
   K of the range (``[layers, tokens, kv_heads, head_dim]``) followed by every layer's V; then
   one float64 confirm per move (1 = the receiver's checksum matched).

3. **Step news records** (``sglang/header.py``, ``datapath.py``): a rank's ``RankNews`` as a flat
   list of int64 words, no pickling, gathered only in steps where some rank has news::

       header:    [n_moves, n_releases, n_decoding, n_shards, n_rids, n_string_words]
       moves:     n_moves x [rid, src, dst, start, end]
       releases:  n_releases x [rid]
       decoding:  n_decoding x [rid, home, first_shard, n_shards]
       shards:    n_shards x [rank, start, end]
       rids:      n_rids x [byte_offset, byte_length]   (rid fields above index this table)
       strings:   the rids' UTF-8 bytes, 8 per word (little-endian), zero-padded

   Its length travels in SGLang's own per-step gather next to the news flag, so the gather of
   the records is one fixed-size collective with no size exchange.
"""

from __future__ import annotations

LSE_BYTES = 4  # fp32

# 1. exchange message header
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

NEWS_HEADER = 6
_MOVE, _DECODING, _SHARD, _RID = 5, 4, 3, 2


def encode_news(moves, releases, decoding) -> list[int]:
    """A rank's news as int64 words. ``moves``: (rid, src, dst, start, end); ``releases``: rids;
    ``decoding``: (rid, home, shards) with shards ((rank, start, end), ...)."""
    rids: dict[str, int] = {}

    def rid_index(rid: str) -> int:
        if rid not in rids:
            rids[rid] = len(rids)
        return rids[rid]

    body: list[int] = []
    for rid, src, dst, start, end in moves:
        body += (rid_index(rid), src, dst, start, end)
    for rid in releases:
        body.append(rid_index(rid))
    shard_words: list[int] = []
    for rid, home, shards in decoding:
        body += (rid_index(rid), home, len(shard_words) // _SHARD, len(shards))
        for r, a, b in shards:
            shard_words += (r, a, b)
    raw = [rid.encode() for rid in rids]
    table: list[int] = []
    pos = 0
    for b in raw:
        table += (pos, len(b))
        pos += len(b)
    blob = b"".join(raw)
    blob += bytes(-len(blob) % 8)
    strings = [int.from_bytes(blob[i : i + 8], "little", signed=True) for i in range(0, len(blob), 8)]
    header = [len(moves), len(releases), len(decoding), len(shard_words) // _SHARD, len(rids),
              len(strings)]  # fmt: skip
    return header + body + shard_words + table + strings


def decode_news(words) -> tuple[list, list, list]:
    """``encode_news``'s inverse (``words``: a sequence of ints, trailing padding ignored);
    returns (moves, releases, decoding) in the same forms."""
    w = [int(x) for x in words[:NEWS_HEADER]]
    if len(w) < NEWS_HEADER or min(w) < 0:
        raise ValueError(f"news record: bad header {w}")
    n_moves, n_rel, n_dec, n_sh, n_rids, n_str = w
    size = NEWS_HEADER + _MOVE * n_moves + n_rel + _DECODING * n_dec + _SHARD * n_sh
    size += _RID * n_rids + n_str
    if len(words) < size:
        raise ValueError(f"news record: {len(words)} words, the header says {size}")
    vals = [int(x) for x in words[:size]]
    pos = NEWS_HEADER
    moves_at, pos = pos, pos + _MOVE * n_moves
    rel_at, pos = pos, pos + n_rel
    dec_at, pos = pos, pos + _DECODING * n_dec
    sh_at, pos = pos, pos + _SHARD * n_sh
    rid_at, pos = pos, pos + _RID * n_rids
    blob = b"".join(v.to_bytes(8, "little", signed=True) for v in vals[pos : pos + n_str])
    names = []
    for i in range(n_rids):
        off, ln = vals[rid_at + _RID * i : rid_at + _RID * (i + 1)]
        names.append(blob[off : off + ln].decode())
    moves = []
    for i in range(n_moves):
        rid, src, dst, start, end = vals[moves_at + _MOVE * i : moves_at + _MOVE * (i + 1)]
        moves.append((names[rid], src, dst, start, end))
    releases = [names[vals[rel_at + i]] for i in range(n_rel)]
    decoding = []
    for i in range(n_dec):
        rid, home, first, n = vals[dec_at + _DECODING * i : dec_at + _DECODING * (i + 1)]
        shards = tuple(
            tuple(vals[sh_at + _SHARD * j : sh_at + _SHARD * (j + 1)]) for j in range(first, first + n)
        )
        decoding.append((names[rid], home, shards))
    return moves, releases, decoding
