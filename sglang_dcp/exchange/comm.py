"""The ``Communicator``: the few collectives the exchange and the KV transfer need.

The process group is passed in, never fetched from a global, so SGLang's own DP-attention group
(or a gloo group in tests) can be used as is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.distributed as dist


# torch 2.13 deprecates all_gather_into_tensor in favour of all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Communicator(ABC):
    """Collectives over ``world_size`` ranks; every rank calls every method in the same order."""

    rank: int
    world_size: int

    @abstractmethod
    def all_to_all_single(
        self,
        out: torch.Tensor,
        inp: torch.Tensor,
        out_splits: Sequence[int] | None = None,
        in_splits: Sequence[int] | None = None,
    ) -> None:
        """Dim-0 all-to-all. ``None`` splits: equal chunks (the static, graph-safe form)."""

    def all_to_all_peers(self, out: torch.Tensor, inp: torch.Tensor,
                         peers: Sequence[int]) -> None:  # fmt: skip
        """The equal-chunk all-to-all among ``peers`` only (this rank's node, ``wire.scope_
        peers``): chunk ``p`` of ``inp`` goes to peer ``p`` and peer ``p``'s lands in chunk ``p``
        of ``out``; the other chunks of ``out`` are not written and nothing crosses to the other
        ranks. Every rank of ``peers`` calls it with the same ``peers`` (the ranks of other nodes
        call it with theirs). Graph-safe where ``all_to_all_single`` is."""
        raise NotImplementedError(f"{type(self).__name__} has no node-scoped all-to-all")

    @abstractmethod
    def all_gather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        """``out: [world_size * n, ...]`` = the ranks' ``inp: [n, ...]`` concatenated in rank
        order (the dim-0 form; gloo rejects a stacked ``[world_size, n, ...]`` output)."""

    @abstractmethod
    def barrier(self) -> None: ...


def _own_chunk(out: torch.Tensor, inp: torch.Tensor, rank: int) -> None:
    out[rank].copy_(inp[rank])  # what the full all-to-all does with the rank's own chunk


class TorchDistCommunicator(Communicator):
    """``torch.distributed`` over an explicit group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_to_all_peers(self, out, inp, peers) -> None:
        _own_chunk(out, inp, self.rank)
        ops = []
        for p in peers:
            if p != self.rank:
                g = dist.get_global_rank(self.group, p)
                ops += [dist.P2POp(dist.isend, inp[p], g, self.group),
                        dist.P2POp(dist.irecv, out[p], g, self.group)]
        if ops:
            for w in dist.batch_isend_irecv(ops):
                w.wait()

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        dist.all_to_all_single(
            out,
            inp,
            output_split_sizes=None if out_splits is None else list(out_splits),
            input_split_sizes=None if in_splits is None else list(in_splits),
            group=self.group,
        )

    def all_gather(self, out, inp) -> None:
        _all_gather_single(out, inp, group=self.group)

    def barrier(self) -> None:
        dist.barrier(group=self.group)


class GroupCommunicator(TorchDistCommunicator):
    """The exchange over SGLang's ``GroupCoordinator`` (duck-typed: ``all_to_all_single(out,
    inp)``, ``device_group``): its equal-chunk all-to-all goes through pynccl on GPU, which a
    CUDA graph can capture, and torch.distributed on the device group (gloo) on CPU. Uneven
    splits (the KV transfer) and the rest use the device group directly."""

    def __init__(self, coordinator) -> None:
        super().__init__(coordinator.device_group)
        self.coordinator = coordinator

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        if out_splits is None and in_splits is None:
            if out.is_cuda:  # SGLang's registered op (CUDA only): pynccl, capturable
                self.coordinator.all_to_all_single(out, inp)
            else:  # what that op runs, on the device group (gloo)
                self.coordinator._all_to_all_single(out, inp)
        else:
            super().all_to_all_single(out, inp, out_splits, in_splits)

    def all_to_all_peers(self, out, inp, peers) -> None:
        nccl = getattr(self.coordinator, "pynccl_comm", None)
        if not (out.is_cuda and nccl is not None and not nccl.disabled):
            return super().all_to_all_peers(out, inp, peers)
        # pynccl's grouped send/recv, as its all_to_all_single (capturable), to the peers only
        _own_chunk(out, inp, self.rank)
        nccl.group_start()
        for p in peers:
            if p != self.rank:
                nccl.send(inp[p], p)
                nccl.recv(out[p], p)
        nccl.group_end()


class LocalCommunicator(Communicator):
    """A single rank talking to itself (local-only baselines and unit tests)."""

    rank = 0
    world_size = 1

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        out.copy_(inp)

    def all_to_all_peers(self, out, inp, peers) -> None:
        out.copy_(inp)

    def all_gather(self, out, inp) -> None:
        out.copy_(inp)

    def barrier(self) -> None:
        pass


class HostStagedCommunicator(Communicator):
    """Several ranks sharing one GPU: device tensors go through host copies around a CPU
    (gloo) communicator. For checks on a one-GPU machine only (NCCL refuses two ranks on one
    device); it synchronises on every call and cannot be captured in a CUDA graph."""

    def __init__(self, inner: Communicator) -> None:
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        host_out = torch.empty(out.shape, dtype=out.dtype)
        self.inner.all_to_all_single(host_out, inp.cpu(), out_splits, in_splits)
        out.copy_(host_out)

    def all_to_all_peers(self, out, inp, peers) -> None:
        host_out = out.cpu()  # the chunks of other nodes keep what they held
        self.inner.all_to_all_peers(host_out, inp.cpu(), peers)
        out.copy_(host_out)

    def all_gather(self, out, inp) -> None:
        host_out = torch.empty(out.shape, dtype=out.dtype)
        self.inner.all_gather(host_out, inp.cpu())
        out.copy_(host_out)

    def barrier(self) -> None:
        self.inner.barrier()
