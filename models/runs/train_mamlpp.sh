#!/usr/bin/env bash
# MAML++ at the MAML comparison's budget (500 iterations x 16 tasks). Run from a scratch folder (e.g. runs/).
# Reconstructed from the model card: the original was hidden by a .gitignore rule that matched models/runs/.
set -euo pipefail
OMP_NUM_THREADS=1 fewshot-serve train --algorithm maml --dataset omniglot-subset \
  --ways 5 --shots 1 --queries 5 --inner-steps 3 --test-steps 5 --inner-lr 0.4 \
  --meta-batch 16 --iterations 500 --val-every 100 --val-episodes 200 --seed 0 --meta-lr 3e-3 \
  --maml-plus-plus --out omniglot-mamlpp.safetensors
python "$(dirname "$0")/../compare_omniglot.py" omniglot-mamlpp.safetensors --names "MAML++" \
  --settings 5x1 20x1 --output omniglot-maml-plus-plus-ablation
