#!/usr/bin/env bash
# The previous default omniglot-conv4.safetensors (MAML++ on the 8-alphabet subset, 1200 iterations; 43 min
# on one core), replaced by omniglot_full.sh.
# Run from a scratch folder (e.g. runs/). Reconstructed from the model card's command: the original
# script was hidden by a .gitignore rule (runs/) that also matched models/runs/.
set -euo pipefail
OMP_NUM_THREADS=1 fewshot-serve train --algorithm maml --dataset omniglot-subset \
  --ways 5 --shots 1 --queries 5 --inner-steps 3 --test-steps 5 --inner-lr 0.4 \
  --meta-batch 16 --iterations 1200 --val-every 100 --val-episodes 200 --seed 0 --meta-lr 3e-3 \
  --maml-plus-plus --out omniglot-conv4.safetensors
