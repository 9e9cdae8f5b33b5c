#!/usr/bin/env bash
# MAML vs FOMAML vs Reptile, same budget (500 iterations x 16 tasks), each alone on one core; then the
# comparison on the held-out alphabets. Run from a scratch folder (e.g. runs/). Reconstructed from the
# model card: the original script was hidden by a .gitignore rule (runs/) that also matched models/runs/.
set -euo pipefail
common=(--dataset omniglot-subset --ways 5 --shots 1 --queries 5 --inner-steps 3 --test-steps 5 --inner-lr 0.4
        --meta-batch 16 --iterations 500 --val-every 100 --val-episodes 200 --seed 0)
OMP_NUM_THREADS=1 fewshot-serve train --algorithm maml "${common[@]}" --meta-lr 3e-3 --out omniglot-maml.safetensors
OMP_NUM_THREADS=1 fewshot-serve train --algorithm fomaml "${common[@]}" --meta-lr 3e-3 --out omniglot-fomaml.safetensors
OMP_NUM_THREADS=1 fewshot-serve train --algorithm reptile "${common[@]}" --out omniglot-reptile.safetensors
python "$(dirname "$0")/../compare_omniglot.py" omniglot-maml.safetensors omniglot-fomaml.safetensors \
  omniglot-reptile.safetensors
