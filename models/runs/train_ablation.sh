#!/usr/bin/env bash
# MAML++ option groups one at a time, at the MAML comparison's budget; two runs at a time, one per core.
# Run from a scratch folder (e.g. runs/). Reconstructed from the model card: the original was hidden by a
# .gitignore rule that matched models/runs/.
set -euo pipefail
common=(--algorithm maml --dataset omniglot-subset --ways 5 --shots 1 --queries 5 --inner-steps 3 --test-steps 5
        --inner-lr 0.4 --meta-batch 16 --iterations 500 --val-every 100 --val-episodes 200 --seed 0 --meta-lr 3e-3)
OMP_NUM_THREADS=1 fewshot-serve train "${common[@]}" --learned-lrs --out omniglot-lslr.safetensors &
OMP_NUM_THREADS=1 fewshot-serve train "${common[@]}" --per-step-norm --out omniglot-bnwb.safetensors &
wait
OMP_NUM_THREADS=1 fewshot-serve train "${common[@]}" --multi-step-loss 50 --first-order-iterations 150 \
  --cosine-meta-lr --out omniglot-schedules.safetensors
compare="$(dirname "$0")/../compare_omniglot.py"
python "$compare" omniglot-lslr.safetensors omniglot-bnwb.safetensors omniglot-schedules.safetensors \
  --names "MAML + learned lrs" "MAML + per-step norms" "MAML + schedules" --settings 5x1 20x1 \
  --output omniglot-maml-plus-plus-ablation
