"""One DP rank's scheduler-side DCP state, built without SGLang's scheduler: a ``RankRuntime``
with ``split`` requests homed here (sealed shards on the other ranks, their tails here), as many
guest items from peers, a decode batch of ``running`` requests and a ``DcpAttnBackend`` over a
pool without layers. What ``bench/step_overhead.py`` times and ``test_device_strict_step.py``
runs under ``DeviceGuard``; ``device_tensors`` are the ones a GPU would hold."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from sglang_dcp import env
from sglang_dcp.sglang import backend, datapath
from sglang_dcp.sglang.entries import GuestEntry, HomeEntry
from sglang_dcp.sglang.layout import KvLayout
from sglang_dcp.sglang.migration import Migrations
from sglang_dcp.sglang.options import DcpOptions
from sglang_dcp.sglang.step import Decoding
from sglang_dcp.types import Placement, Shard


class _Req:
    def __init__(self, rid, idx, placement, length):
        self.rid, self.dcp, self.output_ids = rid, placement, [1]
        self.kv = SimpleNamespace(req_pool_idx=idx, kv_committed_len=length)
        self.seqlen = length
        self.decode_batch_idx = 0  # SGLang raises it for every request in a planned decode

    def finished(self):
        return False


def make_rank(running: int, split: int, *, num_ranks: int = 4, heads: int = 8,
              head_dim: int = 128, length: int = 4096) -> SimpleNamespace:  # fmt: skip
    """Rank 0 of ``num_ranks`` (see the module doc); every request holds ``length`` tokens."""
    W, LEN = num_ranks, length
    os.environ[env.SERVE_OPTIONS_VAR] = DcpOptions(max_degree=W).to_json()
    reqs = running + 1
    r2t = torch.arange(reqs * LEN, dtype=torch.int32).view(reqs, LEN)
    pool = SimpleNamespace(size=reqs * LEN, page_size=64, layer_num=1, start_layer=0)
    runner = SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=r2t, size=running),
                             token_to_kv_pool=pool, device="cpu", dtype=torch.bfloat16)  # fmt: skip
    rt = object.__new__(datapath.RankRuntime)
    rt.rank, rt.num_ranks, rt.capacity, rt.num_steps = 0, W, 16, 0
    rt.ranks_per_node = None  # one node
    rt.releases, rt.home, rt.guests, rt.split_reqs = [], {}, {}, {}
    rt.seen_decode, rt.migrations, rt.page, rt.prev_step = {}, Migrations(0, W), 64, None
    rt.batch_rows, rt.row_pos = {}, {}
    rt.scheduler = SimpleNamespace(req_to_token_pool=runner.req_to_token_pool)
    q = LEN // W
    away = [(r, (r - 1) * q, r * q) for r in range(1, W)]  # sealed shards on ranks 1..W-1
    for i in range(split):
        p = Placement(f"s{i}", 0, (*(Shard(*a) for a in away), Shard(0, (W - 1) * q, LEN)))
        req = _Req(p.rid, i + 1, p, LEN)
        rt.split_reqs[p.rid] = req
        lay = KvLayout.of(p, away, offered=(W - 1) * q)
        rt.home[p.rid] = HomeEntry(req, lay, shipped=True)
    peers, guest_slots = [], []
    for i in range(split):  # guest items: a peer's request with a shard here
        home = 1 + i % (W - 1)
        slots = torch.arange(q) + 7
        guest_slots.append(slots)
        rt.guests[f"g{i}"] = GuestEntry.new(f"g{i}", home, 0, [(0, q)], slots)
        peers.append(Decoding(f"g{i}", home, ((0, 0, q), (home, q, LEN))))
    be = object.__new__(backend.DcpAttnBackend)
    be._init_state(SimpleNamespace(), runner, num_ranks=W, num_q_heads=heads, head_dim=head_dim,
                   v_head_dim=head_dim)  # fmt: skip
    be.init_cuda_graph_state = None
    be._scaling, be._kv_scales = {0: 1.0}, {0: {}}  # no model: the layer constants, given
    be._inner_seq = torch.ones(running, dtype=torch.int32)
    be._num_real = torch.zeros(1, dtype=torch.long)
    mode = SimpleNamespace(is_decode=lambda: True, is_extend=lambda: False)
    unsplit = [SimpleNamespace(rid=f"u{i}") for i in range(running - split)]
    batch = SimpleNamespace(forward_mode=mode, reqs=[*rt.split_reqs.values(), *unsplit])
    fb = SimpleNamespace(
        forward_mode=SimpleNamespace(is_decode_or_idle=lambda: True),
        req_pool_indices=torch.arange(1, running + 1), seq_lens=torch.full((running,), LEN),
        seq_lens_cpu=torch.full((running,), LEN), seq_lens_sum=running * LEN, num_padding=0,
    )  # fmt: skip
    device_tensors = [r2t, be._inner_seq, be._num_real, fb.req_pool_indices, fb.seq_lens,
                      *guest_slots]  # fmt: skip
    return SimpleNamespace(rt=rt, be=be, batch=batch, fb=fb, peers=peers,
                           device_tensors=device_tensors)  # fmt: skip
