"""Shard moves in bounded pieces (``exchange/move_staging.py``): the round schedule every rank
derives alike, and the integer checksum over raw bytes."""

import pytest
import torch

from sglang_dcp.exchange.move_staging import checksum, schedule


def test_no_rank_sends_or_receives_more_than_a_chunk_per_round():
    spans = [(0, 0, 1, 10), (1, 1, 0, 7), (2, 0, 2, 5), (3, 2, 1, 1)]
    rounds = schedule(spans, tok_bytes=100, chunk_bytes=350)
    for rnd in rounds:
        for r in range(3):
            assert sum((p.b - p.a) * 100 for p in rnd if p.src == r) <= 350
            assert sum((p.b - p.a) * 100 for p in rnd if p.dst == r) <= 350
    pieces = sorted((p.move, p.a, p.b) for rnd in rounds for p in rnd)
    for i, _, _, n in spans:  # every token of every move exactly once, in pieces of <= 3
        mine = [(a, b) for m, a, b in pieces if m == i]
        assert mine[0][0] == 0 and mine[-1][1] == n and all(b - a <= 3 for a, b in mine)
        assert all(x[1] == y[0] for x, y in zip(mine, mine[1:]))
    assert schedule(spans, tok_bytes=100, chunk_bytes=350) == rounds  # pure


def test_a_token_larger_than_the_chunk_says_which_flag():
    with pytest.raises(ValueError, match="--dcp-transfer-chunk-mb"):
        schedule([(0, 0, 1, 4)], tok_bytes=1000, chunk_bytes=999)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checksum_sees_a_bit_and_the_order_and_not_the_chunk(dtype):
    k = [torch.randn(20, 2, 4).to(dtype) for _ in range(3)]
    v = [torch.randn(20, 2, 4).to(dtype) for _ in range(3)]
    slots = torch.tensor([3, 7, 1, 9, 12])
    big, small = torch.zeros(4096, dtype=torch.uint8), torch.zeros(2 * 16 + 5, dtype=torch.uint8)
    want = checksum(k, v, slots, big)
    assert want.dtype == torch.int64 and want.dim() == 0
    assert torch.equal(checksum(k, v, slots, small), want)  # pieces of 2 tokens: the same
    assert not torch.equal(checksum(k, v, slots.flip(0), big), want)  # another slot order
    k[1].view(torch.uint8)[7, 0, 0] ^= 1  # one bit of one byte of a moved token
    assert not torch.equal(checksum(k, v, slots, big), want)
