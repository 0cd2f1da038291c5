"""One run on several processes: ``torchrun --nproc-per-node N --no-python bench run ...``.

torchrun starts N copies of ``bench run`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a
rendezvous in the environment; ``session()`` joins them into one process group (NCCL on GPUs, one
GPU per process; gloo on CPU). What makes N processes train the model one process trains with the
same global batch:

* ``train.batch_size`` stays the **global** batch; each step, rank r takes its ``1/N`` slice of the
  global batch the one-process sampler would draw (``ShardedBatches``), and every clip's random
  augmentation is drawn from its own seed, not from the order in which a process happens to read it;
* only the trainable parameters are in ``DistributedDataParallel`` (the frozen CLIP is neither
  broadcast nor reduced): gradients are averaged, which for a per-batch mean loss over equal
  slices is the gradient of the global batch (a loss divided by the number of attributes instead,
  ``train.loss_normalize = "attributes"``, is scaled by N to be so: ``WeightedBCE``);
* the head's BatchNorm computes its statistics over the global batch (``GlobalBatchNorm1d``, on CPU
  and GPU alike), so its output and running statistics are those of one process;
* evaluation is sharded by clip and gathered in order before the metrics;
* rank 0 alone writes checkpoints, results and logs, and takes the run's lock; every rank resumes
  from the same checkpoint.

Not shared across processes: stochastic depth and dropout draws inside the model (each rank draws
for its own clips, as in any data-parallel training), so with those on, N processes train a model
of the same distribution, not bit for bit the same one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vtfpar.errors import UserError
from vtfpar.seeding import cpu_draws


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``world == 1`` for a plain ``bench run``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_env() -> Ranks:
    """The ranks torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without them. Several need
    the rendezvous address torchrun sets too (``MASTER_ADDR``, ``MASTER_PORT``)."""
    start = "start several processes with torchrun --nproc-per-node N --no-python bench run ..."
    try:
        ranks = Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                      int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError(f"RANK / WORLD_SIZE / LOCAL_RANK are not integers: {start}") from None
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world or ranks.local_rank < 0:
        raise UserError(f"RANK {ranks.rank}, WORLD_SIZE {ranks.world}, LOCAL_RANK {ranks.local_rank}: a world of at "
                        f"least 1 process, ranks from 0 to WORLD_SIZE - 1 and a local rank of 0 or more are needed; "
                        f"{start}, or unset them for one process")
    if ranks.world > 1:  # the rendezvous torchrun sets up; left-over RANK / WORLD_SIZE alone would fail deep in torch
        addr, port = os.environ.get("MASTER_ADDR", "").strip(), os.environ.get("MASTER_PORT", "").strip()
        if not addr or not port:
            unset = " and ".join(n for n, v in (("MASTER_ADDR", addr), ("MASTER_PORT", port)) if not v)
            raise UserError(f"WORLD_SIZE {ranks.world} but {unset} not set: {start}, or unset RANK and WORLD_SIZE for "
                            "one process")
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise UserError(f"MASTER_PORT {port!r} is not a port (1 to 65535): {start}, or unset RANK and WORLD_SIZE "
                            "for one process")
    return ranks


@contextlib.contextmanager
def session(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The process group of a multi-process run for its lifetime (nothing for one process)."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Rank r of a CUDA run trains on ``cuda:<LOCAL_RANK>`` (one GPU per process)."""
    if ranks.distributed and device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {ranks.local_rank} but this node has {torch.cuda.device_count()} GPUs: start "
                            "at most one process per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", ranks.local_rank)
    return device


def model_draws_seed(seed: int, ranks: Ranks) -> int:
    """The seed of the draws made inside the model (stochastic depth, dropout) on this rank: ``seed`` on rank 0,
    so one process draws as it always has, and one of its own on every other rank, so that each process draws
    independently for its own clips (one seed for all would give rank r's k-th clip rank 0's k-th mask). The ranks'
    seeds differ in their low 32 bits, the only ones torch's CPU generator (a Mersenne Twister) is seeded with: an
    odd multiplier makes ``rank * 0x9E3779B1`` distinct modulo 2^32 for every rank."""
    return seed + ranks.rank * 0x9E3779B1


def local_batch(global_batch: int, ranks: Ranks) -> int:
    if global_batch % ranks.world:
        raise UserError(f"train.batch_size {global_batch} is the global batch and must split evenly over "
                        f"{ranks.world} processes: choose a multiple of {ranks.world}")
    return global_batch // ranks.world


class ShardedBatches(torch.utils.data.Sampler):
    """Batches of ``(index, seed)`` for this rank: each epoch one seeded permutation of the training set
    cut into global batches (the last partial one dropped when there is more than one batch), one seed
    per position, and rank r's slice ``[r b, (r + 1) b)`` of every global batch of ``N b`` clips.

    With one rank this is the whole global batch: the same clips, in the same order, with the same
    augmentation seeds whatever the number of processes or loader workers."""

    def __init__(self, size: int, global_batch: int, generator: torch.Generator, ranks: Ranks):
        super().__init__()
        self.size, self.global_batch, self.generator, self.ranks = size, global_batch, generator, ranks
        self.local = local_batch(global_batch, ranks)
        if ranks.distributed and size < global_batch:
            raise UserError(f"the training split has {size} clips, fewer than one global batch of {global_batch} "
                            f"over {ranks.world} processes: lower train.batch_size")

    def __len__(self) -> int:
        return self.size // self.global_batch if self.size > self.global_batch else 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=self.generator).tolist()
        for b in range(len(self)):
            start = b * self.global_batch
            end = min(start + self.global_batch, self.size)
            lo = start + self.ranks.rank * self.local  # one rank: the whole global batch
            yield [(order[i], seeds[i]) for i in range(lo, min(lo + self.local, end))]


class SeededItems(torch.utils.data.Dataset):
    """``dataset[i]`` drawn with torch's random generator seeded by the sampler's per-clip seed; the
    caller's generator state is left as it was, and the CUDA generators are not touched (so a process's other
    draws, such as drop path on a GPU, do not depend on whether items load in it or in workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with cpu_draws(seed):
            return self.dataset[index]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` on ``[B, C]`` whose training statistics are those of the global batch: sums over
    all ranks' clips (differentiable all-reduce), so outputs, gradients and running statistics are what
    one process with the whole batch computes. Same parameters and buffers as ``BatchNorm1d``; in eval
    mode, or with ``synchronise`` off (a measurement on one rank), it is ``BatchNorm1d``."""

    synchronise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.synchronise and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        count = torch.tensor([float(x.shape[0])], device=x.device)
        total = all_reduce(torch.cat([xf.sum(0), count]))
        n = total[-1]
        mean = total[:-1] / n
        var = all_reduce((xf - mean).pow(2).sum(0)) / n  # two passes: the numerics of one process
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def globalise_batch_norms(model: nn.Module) -> None:
    """Every ``BatchNorm1d`` of ``model`` becomes a ``GlobalBatchNorm1d`` with the same state."""
    for module in model.modules():
        if type(module) is nn.BatchNorm1d:
            module.__class__ = GlobalBatchNorm1d


@contextlib.contextmanager
def local_statistics() -> Iterator[None]:
    """Batch norms use this process's batch only (a measurement on rank 0 while the others wait)."""
    GlobalBatchNorm1d.synchronise = False
    try:
        yield
    finally:
        GlobalBatchNorm1d.synchronise = True


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` over its trainable parameters only."""
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers() if not n.startswith("head.")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def shard(indices: Sequence[int], ranks: Ranks) -> list[int]:
    """Rank r's share of ``indices`` for evaluation: every N-th from r."""
    return list(indices)[ranks.rank::ranks.world]


def gather_rows(rows, ranks: Ranks) -> list:
    """Every rank's ``rows`` (picklable), in rank order; for one process, ``[rows]``."""
    if not ranks.distributed:
        return [rows]
    out: list = [None] * ranks.world
    dist.all_gather_object(out, rows)
    return out


def broadcast_object(obj, ranks: Ranks):
    """Rank 0's ``obj`` (picklable) on every rank; for one process, ``obj``."""
    if not ranks.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.distributed:
        dist.all_reduce(t)
    return t


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
