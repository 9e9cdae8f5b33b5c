"""The layers hold: serving (load, adapt, classify, the web app) loads no training or data module,
so a server carries none of the dataset loaders, episode samplers or meta-learning code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess that loads two models: not in the quick tier

ROOT = Path(__file__).resolve().parents[1]

SERVE = """
import json, sys
import numpy as np
import fewshot_serve
import fewshot_serve.serving.web_app
rng = np.random.default_rng(0)
for path, runtime in ((sys.argv[1], "torch"), (sys.argv[2], "onnxruntime")):
    model = fewshot_serve.load(path, "cpu", runtime=runtime)
    size = model.preprocessing.image_size
    support = {c: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)] for c in "ab"}
    model.adapt(support).classify([rng.integers(0, 256, (size, size, 3), dtype=np.uint8)])
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_loads_no_training_or_data_module():
    models = ROOT / "models"
    run = subprocess.run([sys.executable, "-c", SERVE, str(models / "omniglot-conv4.safetensors"),
                          str(models / "photos-resnet12.safetensors")],
                         capture_output=True, text=True, cwd=ROOT, env=os.environ, check=True)
    modules = json.loads(run.stdout.strip().splitlines()[-1])
    assert "fewshot_serve.serving.api" in modules and "fewshot_serve.serving.frozen_runtime" in modules
    loaded = [m for m in modules if m.startswith(("fewshot_serve.training", "fewshot_serve.data"))]
    assert loaded == [], f"serving imported {loaded}"
