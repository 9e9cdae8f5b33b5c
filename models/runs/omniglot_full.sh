#!/usr/bin/env bash
# The shipped handwriting model, omniglot-conv4.safetensors: MAML++ on Omniglot's whole background
# set (30 alphabets; 18 train, 4 validation, 8 test with --split-seed 0), one core. Then its held-out
# numbers for the model card. Run from a scratch folder (e.g. runs/).
set -euo pipefail
export OMP_NUM_THREADS=1
fewshot-serve train --algorithm maml --dataset omniglot \
  --ways 5 --shots 1 --queries 5 --inner-steps 3 --test-steps 5 --inner-lr 0.4 \
  --meta-batch 16 --iterations 2000 --val-every 200 --val-episodes 200 --seed 0 --meta-lr 3e-3 \
  --maml-plus-plus --out omniglot-conv4.safetensors
python "$(dirname "$0")/../compare_omniglot.py" omniglot-conv4.safetensors --names "MAML++ (shipped)" \
  --settings 5x1 5x5 20x1 20x5 --output omniglot-full-shipped
