"""``python -m fewshot_serve.train ...``: meta-training, as ``fewshot-serve train``, for ``torchrun``.

    torchrun --nproc-per-node 4 -m fewshot_serve.train --algorithm maml --out model.safetensors
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
