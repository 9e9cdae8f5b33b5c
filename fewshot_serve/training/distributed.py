"""Meta-training across processes with ``torch.distributed``: each rank adapts a share of every meta-batch.

Under ``torchrun`` every rank samples the *same* meta-batch (same seed, same generator), adapts
the tasks ``rank, rank + P, ...`` of it, and the ranks all-reduce their task-weighted meta-
gradients (or Reptile displacements). Every rank then holds the meta-gradient of the whole
meta-batch, applies the same optimizer step, and keeps identical meta-parameters without ever
broadcasting them, so a P-rank run follows the one-process run with the whole meta-batch to
float tolerance. Only rank 0 validates and writes files. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.episodes import TaskBatch
from ..inner_loop import Params
from .meta_learning import MetaLearner


@dataclass(frozen=True)
class Shard:
    """This process's place among the meta-training processes (one process: the defaults)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_share(self, tasks: int) -> None:
        """Refuse a meta-batch of ``tasks`` that leaves some process without a task."""
        if tasks < self.world:
            raise ValueError(f"a meta-batch of {tasks} tasks cannot be shared by {self.world} processes")

    def tasks(self, batch: TaskBatch) -> TaskBatch:
        """This rank's tasks of ``batch``: every ``world``-th task from task ``rank``."""
        part = slice(self.rank, None, self.world)
        return TaskBatch(batch.x_support[part], batch.y_support[part], batch.x_query[part], batch.y_query[part],
                         batch.ways)


def join_from_environment(cuda: bool) -> tuple[Shard, bool]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns this process's shard and whether this call created the group (and so should
    destroy it). Without ``WORLD_SIZE`` > 1 in the environment it is a single-process run.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard(), False
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    shard = Shard(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.set_device(shard.local_rank)
    return shard, created


def leave_process_group(finished: bool) -> None:
    """Destroy the process group; after a barrier when every rank ``finished`` its work.

    A gloo rank that tears down its connections while a peer is still busy (rank 0 writing the
    model, say) can abort at interpreter exit ("terminate called without an active exception";
    1 run in 5 measured with 2 ranks). Meeting first makes the teardown simultaneous. After an
    error the barrier is skipped: the other ranks may never arrive.
    """
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def sharded_direction(
    learner: MetaLearner, batch: TaskBatch, iteration: int, shard: Shard
) -> tuple[Params, Tensor, Tensor]:
    """The whole meta-batch's update direction, mean query loss and metric, computed by all ranks.

    Each rank's mean over its tasks is weighted by its share of the tasks before the sum, so
    uneven shares (7 tasks on 2 ranks) still give the plain mean over all tasks.
    """
    if shard.world == 1:
        return learner.update_direction(batch, iteration)
    total = batch.x_support.shape[0]
    shard.check_share(total)
    local = shard.tasks(batch)
    direction, loss, metric = learner.update_direction(local, iteration)
    share = local.x_support.shape[0] / total
    keys = list(direction)
    flat = torch.cat([direction[k].flatten() for k in keys] + [loss.view(1), metric.view(1)]) * share
    dist.all_reduce(flat)
    parts = flat.split([direction[k].numel() for k in keys] + [1, 1])
    reduced = {k: part.view_as(direction[k]) for k, part in zip(keys, parts)}
    return reduced, parts[-2][0].to(loss.dtype), parts[-1][0].to(metric.dtype)


def sharded_step(learner: MetaLearner, batch: TaskBatch, iteration: int, shard: Shard) -> tuple[float, float]:
    """One outer update of the whole meta-batch, shared by the ranks; returns mean loss and metric."""
    direction, loss, metric = sharded_direction(learner, batch, iteration, shard)
    learner.apply(direction, iteration)
    return float(loss), float(metric)
