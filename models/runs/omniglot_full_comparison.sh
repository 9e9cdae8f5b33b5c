#!/usr/bin/env bash
# MAML vs FOMAML vs Reptile on Omniglot's whole background set, 500 iterations x 16 tasks each, one
# core each; Reptile trained as Nichol et al. train it (5 shots per training class and 5 inner steps,
# 10 steps at test). Then all three on the same held-out episodes. Run from a scratch folder (e.g. runs/).
set -euo pipefail
export OMP_NUM_THREADS=1
common=(--dataset omniglot --ways 5 --queries 5 --inner-lr 0.4 --meta-batch 16 --iterations 500
        --val-every 100 --val-episodes 200 --seed 0)
fewshot-serve train --algorithm maml "${common[@]}" --shots 1 --inner-steps 3 --test-steps 5 --meta-lr 3e-3 \
  --out omniglot-maml.safetensors
fewshot-serve train --algorithm fomaml "${common[@]}" --shots 1 --inner-steps 3 --test-steps 5 --meta-lr 3e-3 \
  --out omniglot-fomaml.safetensors
fewshot-serve train --algorithm reptile "${common[@]}" --shots 5 --inner-steps 5 --test-steps 10 \
  --out omniglot-reptile.safetensors
python "$(dirname "$0")/../compare_omniglot.py" omniglot-maml.safetensors omniglot-fomaml.safetensors \
  omniglot-reptile.safetensors --settings 5x1 20x1 --output omniglot-full-comparison
