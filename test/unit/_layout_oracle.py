"""The reference layout of one route round in an exchange's fixed positions, computed in plain
Python from the route (a test oracle for ``StaticExchange.load``; the server has one loader)."""

from types import SimpleNamespace

import torch

from sglang_dcp.exchange.wire import HDR_COUNT, HDR_TAG


def reference_layout(route, shape, *, tag: int = 0) -> SimpleNamespace:
    """What the static buffers must hold for ``route`` (one round that fits ``shape``):
    ``send_index``, ``kv_indptr``, ``kv_indices`` (``[num_kv]``), ``merge_index``,
    ``seg_indptr``, ``q_send_hdr``/``r_send_hdr`` ``[W, 4]``."""
    W, C, B = shape.num_ranks, shape.capacity, shape.max_local
    assert route.batch_size <= B and max(route.max_send, route.max_recv) <= C
    send_index = torch.zeros(W * C, dtype=torch.long)
    for p, rows in enumerate(route.send):
        send_index[p * C : p * C + len(rows)] = torch.tensor(rows, dtype=torch.long)
    lens = [0] * shape.num_items
    chunks = []
    if route.has_local:
        for i, s in enumerate(route.local_slots):
            lens[i] = len(s)
            chunks.append(list(s))
    for p, items in enumerate(route.recv):
        for j, g in enumerate(items):
            lens[B + p * C + j] = len(g.slots)
            chunks.append(list(g.slots))
    indptr = [0]
    for n in lens:
        indptr.append(indptr[-1] + n)
    merge, seg = [], [0]
    for i in range(B):
        if i < route.batch_size:
            for m in route.merge[i]:
                merge.append(i if m.rank == route.rank else B + m.rank * C + m.index)
        seg.append(len(merge))
    merge.extend([0] * (shape.num_items - len(merge)))  # the trash segment
    seg.append(shape.num_items)
    hdr = []
    for counts in ([len(s) for s in route.send], [len(r) for r in route.recv]):
        h = torch.zeros(W, 4, dtype=torch.int32)
        h[:, HDR_COUNT] = torch.tensor(counts, dtype=torch.int32)
        h[:, HDR_TAG] = tag
        hdr.append(h)
    return SimpleNamespace(
        send_index=send_index,
        kv_indptr=torch.tensor(indptr, dtype=torch.int32),
        kv_indices=torch.tensor([s for c in chunks for s in c], dtype=torch.long),
        merge_index=torch.tensor(merge, dtype=torch.long),
        seg_indptr=torch.tensor(seg, dtype=torch.long),
        q_send_hdr=hdr[0],
        r_send_hdr=hdr[1],
    )
