"""Run by tests/test_distributed.py under torchrun: one rank's share of a meta-batch's update.

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT.safetensors

Rank 0 writes the all-reduced MAML++ meta-gradient and Reptile displacement of a fixed 5-task
meta-batch (shared 3 + 2) to OUT, for comparison with one process computing the whole batch.
"""

import sys

import torch
from safetensors.torch import save_file
from test_maml_plus_plus import INNER, tiny_maml_plus_plus
from test_meta_gradients import random_batch, tiny_conv4

from fewshot_serve.training.distributed import join_from_environment, leave_process_group, sharded_direction
from fewshot_serve.training.meta_learning import Annealing, MetaLearner

TASKS = 5


def directions(shard):
    """Name -> tensor: the MAML++ meta-gradient, the Reptile displacement, their losses and metrics."""
    batch = random_batch(tasks=TASKS)
    out = {}
    cases = (("maml++", tiny_maml_plus_plus(), "maml", Annealing(multi_step_loss_iterations=10)),
             ("reptile", tiny_conv4(), "reptile", Annealing()))
    for name, network, algorithm, annealing in cases:
        learner = MetaLearner(network, algorithm, INNER, 1.0, 10, vectorize=False, annealing=annealing)
        direction, loss, metric = sharded_direction(learner, batch, 2, shard)
        out.update({f"{name}/{k}": v.detach() for k, v in direction.items()})
        out[f"{name}/loss"], out[f"{name}/metric"] = loss.detach().reshape(1), metric.detach().reshape(1)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    shard, _ = join_from_environment(cuda=False)
    assert shard.world == 2, "run me with torchrun --nproc-per-node 2"
    result = directions(shard)
    if shard.is_main:
        save_file({k: v.contiguous() for k, v in result.items()}, sys.argv[1])
    leave_process_group(finished=True)
