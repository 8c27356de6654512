"""Shard moves as a GPU sees them, on CPU (issue 23, item 6, move part): ``shipping.ship`` over
SGLang's real allocators and pools (MHA, MLA; paged and unpaged) on two gloo ranks inside
``DeviceGuard``. A host tensor handed to SGLang's allocator (``slots.cpu()`` before) or a host
sync per move raises; what may sync is the two confirmations per batch."""

import json

from sglang_dcp.exchange.spawn import run_ranks

from _move_workers import CONFIGS, MOVE_SYNCS, device_strict_ship_worker


def test_ship_keeps_slots_on_the_device_and_syncs_twice_per_batch(tmp_path):
    out = str(tmp_path / "rank{rank}.json")
    run_ranks(device_strict_ship_worker, 2, out, timeout_s=240)
    home, guest = (json.load(open(out.format(rank=r))) for r in (0, 1))
    for attention, page in CONFIGS:
        key = f"{attention}/{page}"
        h, g = home[key], guest[key]
        assert h["failed"] == g["failed"] == 0, key
        assert h["syncs"] <= MOVE_SYNCS and g["syncs"] <= MOVE_SYNCS, key
        assert h["bytes_equal"] and h["moved"] == [[1, 4, 8], [1, 8, 12]], key
        assert h["freed"] == 8 and g["freed"] == -8, key  # the home's 8 slots went back
        assert g["guest_on_device"], key
        # and back home: the guest's slots return to its allocator, nothing stays there
        assert h["back_failed"] == g["back_failed"] == 0, key
        assert h["back_syncs"] <= MOVE_SYNCS and g["back_syncs"] <= MOVE_SYNCS, key
        assert not g["guest_left"], key
