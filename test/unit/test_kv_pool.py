"""The per-rank paged KV pool (single process)."""

import pytest

from sglang_dcp.exchange.kv_pool import KVPool, KVPoolFull


def pool(num_pages=6):
    return KVPool(num_layers=1, num_pages=num_pages, page_size=4, num_kv_heads=1, head_dim=2)


def test_allocate_extend_split_join_free():
    p = pool()
    p.allocate(("a", 0), 6)
    assert p.num_free_pages == 3 and len(p.slots(("a", 0))) == 6
    assert all(s >= 4 for s in p.slots(("a", 0)))  # page 0 is the dummy page
    new = p.extend(("a", 0), 3)
    assert len(new) == 3 and p.num_tokens(("a", 0)) == 9 and p.num_free_pages == 2
    before = p.slots(("a", 0))
    right = p.split(("a", 0), 4)
    assert right == ("a", 4) and p.slots(("a", 0)) + p.slots(right) == before
    assert p.slot_map() == {"a": before}
    with pytest.raises(ValueError):
        p.split(("a", 4), 6)  # not page-aligned
    p.join(("a", 0), ("a", 4))
    assert p.keys() == [("a", 0)] and p.slots(("a", 0)) == before
    p.free_request("a")
    assert p.num_free_pages == 5 and p.keys() == []


def test_full_pool_takes_nothing():
    p = pool(3)
    p.allocate(("a", 0), 4)
    with pytest.raises(KVPoolFull):
        p.allocate(("b", 0), 8)
    assert p.num_free_pages == 1 and not p.has(("b", 0))
    p.allocate(("b", 0), 0)  # an empty tail takes no page
    p.extend(("b", 0), 4)
    with pytest.raises(KVPoolFull):
        p.extend(("b", 0), 1)
    assert p.num_tokens(("b", 0)) == 4


def test_a_cut_that_fails_part_way_leaves_the_shard_whole():
    from sglang_dcp.exchange.transfer import ShardMove, _cut

    p = pool()
    p.allocate(("a", 0), 16)
    before = p.slots(("a", 0))
    with pytest.raises(ValueError):  # first split (at 4) works, second (at 6) is not aligned
        _cut(p, ShardMove("a", 0, 1, 4, 6))
    assert p.keys() == [("a", 0)] and p.slots(("a", 0)) == before


def test_key_at_finds_the_shard_holding_a_token():
    p = pool()
    p.allocate(("a", 0), 12)
    right = p.split(("a", 0), 8)
    assert p.key_at("a", 0) == ("a", 0) and p.key_at("a", 7) == ("a", 0)
    assert p.key_at("a", 8) == right and p.key_at("a", 11) == right
    with pytest.raises(KeyError):
        p.key_at("a", 12)
    with pytest.raises(KeyError):
        p.key_at("b", 0)


def test_the_transfer_checksum_sees_slot_order():
    import torch

    from sglang_dcp.exchange.move_staging import checksum

    scratch = torch.zeros(64, dtype=torch.uint8)

    def _checksum(p, slots) -> int:  # what transfer_shards confirms with
        return int(checksum(list(p.k.unbind(0)), list(p.v.unbind(0)), slots, scratch))

    p = pool()
    p.allocate(("a", 0), 8)
    slots = torch.tensor(p.slots(("a", 0)))
    p.k[:, slots] = torch.arange(16, dtype=torch.float32).view(1, 8, 1, 2)
    p.v[:, slots] = torch.arange(16, 32, dtype=torch.float32).view(1, 8, 1, 2)
    assert _checksum(p, slots) == _checksum(p, slots.clone())
    assert _checksum(p, slots) != _checksum(p, slots.flip(0))  # same bytes, other order
    swapped = slots.clone()
    swapped[[2, 3]] = slots[[3, 2]]
    assert _checksum(p, slots) != _checksum(p, swapped)
