"""A training run killed with SIGKILL at a random moment resumes to the uninterrupted run's weights."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

ITERATIONS = 40


def train_command(glyph_tree, out, *extra):
    return [sys.executable, "-m", "fewshot_serve.cli", "train", "--algorithm", "maml", "--dataset", "folder",
            "--data-root", str(glyph_tree), "--image-size", "16", "--channels", "1", "--ways", "3", "--queries", "2",
            "--meta-batch", "4", "--iterations", str(ITERATIONS), "--val-every", "10", "--val-episodes", "5",
            "--checkpoint-every", "3", "--seed", "11", "--out", str(out), *extra]


def run(command):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in every process
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_sigkilled_run_resumes_bit_identically(tmp_path, glyph_tree):
    straight = tmp_path / "straight.safetensors"
    assert run(train_command(glyph_tree, straight)).returncode == 0

    crashed = tmp_path / "crashed.safetensors"
    checkpoint = crashed.with_suffix(".run") / "checkpoint.safetensors"
    process = subprocess.Popen(train_command(glyph_tree, crashed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in the middle of training, maybe mid-write
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = load_checkpoint(checkpoint).iteration  # loads: never half-written
    assert 0 < killed_at < ITERATIONS
    load_model(crashed)  # the model exported with that checkpoint loads too

    resumed = run(train_command(glyph_tree, crashed, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(straight.with_suffix(".run") / "checkpoint.safetensors")
    b = load_checkpoint(checkpoint)
    assert b.iteration == ITERATIONS
    for key in a.weights:
        assert torch.equal(a.weights[key], b.weights[key]), key
    (network_a, _), (network_b, _) = load_model(straight), load_model(crashed)
    for key, value in network_a.state_dict().items():
        assert torch.equal(value, network_b.state_dict()[key]), key
