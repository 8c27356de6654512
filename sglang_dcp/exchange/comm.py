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

    @abstractmethod
    def all_gather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        """``out: [world_size * n, ...]`` = the ranks' ``inp: [n, ...]`` concatenated in rank
        order (the dim-0 form; gloo rejects a stacked ``[world_size, n, ...]`` output)."""

    @abstractmethod
    def barrier(self) -> None: ...


class TorchDistCommunicator(Communicator):
    """``torch.distributed`` over an explicit group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

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


class LocalCommunicator(Communicator):
    """A single rank talking to itself (local-only baselines and unit tests)."""

    rank = 0
    world_size = 1

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
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

    def all_gather(self, out, inp) -> None:
        host_out = torch.empty(out.shape, dtype=out.dtype)
        self.inner.all_gather(host_out, inp.cpu())
        out.copy_(host_out)

    def barrier(self) -> None:
        self.inner.barrier()
