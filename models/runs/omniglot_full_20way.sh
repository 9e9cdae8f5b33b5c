#!/usr/bin/env bash
# Fine-tune the MAML++ handwriting model (omniglot_full.sh's output) on 20-way 1-shot tasks, keeping
# its learned learning rates and per-step norms (--init), one core. Then choose between it and its
# start on the *validation* alphabets, and score the chosen one on the test alphabets.
# Run from a scratch folder (e.g. runs/) after omniglot_full.sh.
set -euo pipefail
export OMP_NUM_THREADS=1
START=${1:-omniglot-conv4.safetensors}
fewshot-serve train --algorithm maml --dataset omniglot --init "$START" \
  --ways 20 --shots 1 --queries 5 --inner-steps 3 --test-steps 5 --inner-lr 0.4 --learned-lrs --per-step-norm \
  --cosine-meta-lr --meta-lr 1e-3 --meta-batch 8 --iterations 1800 --val-every 150 --val-episodes 150 --seed 1 \
  --out omniglot-conv4-20way.safetensors
for model in "$START" omniglot-conv4-20way.safetensors; do
  for setting in "20 1" "5 1"; do
    set -- $setting
    fewshot-serve evaluate "$model" --split val --ways "$1" --shots "$2" --episodes 300 | tail -1
  done
done
