#!/usr/bin/env bash
# "None of these": each shipped model's threshold, calibrated on its own training classes for 5% wrongly rejected
# in-task queries at 1 and 5 shots (5-way, 300 episodes each), written into the model file's recipe.
# Run from the repository root with the datasets in ../shared/datasets (or $FEWSHOT_SERVE_DATA); the 2-core
# machine of the cards took about 4 minutes for the photo model (its first 40 photos of each training class) and
# 1-2 minutes for each handwriting model.
set -euo pipefail
for model in photos-efficientnet-lite0 photos-resnet12; do
  fewshot-serve calibrate-unknown "models/$model.safetensors" --images-per-class 40 --out "models/$model.safetensors"
done
for model in omniglot-resnet12 omniglot-conv4 omniglot-conv4-fomaml; do
  fewshot-serve calibrate-unknown "models/$model.safetensors" --out "models/$model.safetensors"
done
