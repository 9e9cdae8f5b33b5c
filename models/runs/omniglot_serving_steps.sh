#!/usr/bin/env bash
# The handwriting model's serving step count, chosen on the VALIDATION alphabets after training
# (omniglot_full_longer.sh's file, trained with 3 inner steps and served with 5 until then).
# MAML++'s last learned learning rate and norm row carry on past the trained steps, so serving may take
# more. 300 episodes per cell, the same episodes for every step count; one core, ~35 minutes.
# Run from a scratch folder (e.g. runs/) holding omniglot-conv4-longer.safetensors.
set -euo pipefail
export OMP_NUM_THREADS=1
here="$(cd "$(dirname "$0")" && pwd)"
MODEL=${1:-omniglot-conv4-longer.safetensors}
for setting in "5 1" "5 5" "20 1" "20 5"; do
  read -r ways shots <<< "$setting"
  for steps in 5 10 20; do
    fewshot-serve evaluate "$MODEL" --split val --ways "$ways" --shots "$shots" --episodes 300 --steps "$steps" | tail -1
  done
done
# 20 steps was best or tied in every setting: the shipped file serves with 20 (same weights).
fewshot-serve set-steps "$MODEL" --test-steps 20 --out omniglot-conv4-20.safetensors
# Only after that choice: the held-out test alphabets, on the same episodes as the model card's other rows.
python "$here/../compare_omniglot.py" omniglot-conv4-20.safetensors \
  --names "MAML++, 6,000 iterations, 20 serving steps (shipped)" --settings 5x1 5x5 20x1 20x5 \
  --output omniglot-full-shipped
cp omniglot-conv4-20.safetensors "$here/../omniglot-conv4.safetensors"
