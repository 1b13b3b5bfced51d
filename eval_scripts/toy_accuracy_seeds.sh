#!/usr/bin/env bash
# The toy accuracy grid on both trained seeds, and their comparison:
#
#   bash eval_scripts/toy_accuracy_seeds.sh
#
# toy_accuracy/ (the committed weights, seed 0) and toy_accuracy_seed1/ (trained_seed1.safetensors,
# the same recipe with --seed 1) are answered by eval_scripts/toy_accuracy.sh, each resuming where
# it stopped; then `accuracy-seeds` writes toy_accuracy_seeds/seeds.md, seeds.json and seeds.png: each cell
# per seed and the mean, the paired and pooled differences against freePruner, whether each
# method's rank holds, and the best method per budget. The same environment variables as
# toy_accuracy.sh apply (but WEIGHTS, which this script sets).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-.venv-transformers/bin/python}"
WEIGHTS= bash eval_scripts/toy_accuracy.sh toy_accuracy
WEIGHTS=llava_freepruner/tools/toy/trained_seed1.safetensors bash eval_scripts/toy_accuracy.sh toy_accuracy_seed1
"$py" -m llava_freepruner accuracy-seeds --run "seed 0=toy_accuracy" --run "seed 1=toy_accuracy_seed1" \
    --out toy_accuracy_seeds
