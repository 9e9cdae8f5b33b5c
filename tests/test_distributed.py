"""Distributed meta-training with torch.distributed: 2 gloo processes on loopback, as torchrun starts them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import directions
from safetensors.torch import load_file

from fewshot_serve.files.model_file import load_model
from fewshot_serve.serving.api import load
from fewshot_serve.training.checkpoint import load_checkpoint
from fewshot_serve.training.distributed import Shard

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

TESTS = Path(__file__).resolve().parent


def torchrun(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *arguments]
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_ranks_compute_the_meta_gradient_of_the_whole_meta_batch(tmp_path):
    torchrun(str(TESTS / "distributed_worker.py"), str(tmp_path / "shared.safetensors"), cwd=tmp_path)
    shared = load_file(str(tmp_path / "shared.safetensors"))
    alone = directions(Shard())
    assert set(shared) == set(alone)
    for key, expected in alone.items():
        torch.testing.assert_close(shared[key], expected, rtol=1e-10, atol=1e-12, msg=key)


def test_shards_split_uneven_meta_batches_without_overlap():
    from test_meta_gradients import random_batch

    batch = random_batch(tasks=5)
    parts = [Shard(rank, 2).tasks(batch) for rank in (0, 1)]
    assert [len(p.x_support) for p in parts] == [3, 2]
    torch.testing.assert_close(parts[1].x_support[0], batch.x_support[1])


def test_a_two_rank_training_run_matches_one_process_and_exports_a_loadable_model(tmp_path, glyph_tree):
    arguments = ["--algorithm", "maml", "--dataset", "folder", "--data-root", str(glyph_tree), "--image-size", "16",
                 "--channels", "1", "--ways", "3", "--queries", "2", "--inner-steps", "2", "--meta-batch", "4",
                 "--iterations", "3", "--val-every", "3", "--val-episodes", "4", "--seed", "5", "--learned-lrs",
                 "--per-step-norm", "--multi-step-loss", "2"]
    done = torchrun("-m", "fewshot_serve.train", *arguments, "--out", str(tmp_path / "two.safetensors"), cwd=tmp_path)
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["model"].endswith("two.safetensors")  # rank 0 only
    alone = subprocess.run([sys.executable, "-m", "fewshot_serve.train", *arguments, "--out",
                            str(tmp_path / "one.safetensors")], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]

    two = load_checkpoint(tmp_path / "two.run" / "checkpoint.safetensors")
    one = load_checkpoint(tmp_path / "one.run" / "checkpoint.safetensors")
    assert two.iteration == one.iteration == 3
    difference = torch.cat([(two.weights[k] - v).abs().flatten() for k, v in one.weights.items()])
    # Float32 sums in another order differ in the last bits. Almost every weight agrees to 1e-5;
    # a few move on nothing but rounding noise (a conv bias, which BatchNorm cancels, has true
    # gradient 0), and Adam scales noise up to whole steps of at most ~meta-lr (1e-3) each.
    assert torch.quantile(difference, 0.95) < 1e-5
    assert difference.max() < 2 * 1e-3 * 3
    network, recipe = load_model(tmp_path / "two.safetensors")
    assert recipe.network["lr_steps"] == 2 and recipe.network["norm_states"] == 3
    assert load(tmp_path / "two.safetensors").recipe.algorithm == "maml"
