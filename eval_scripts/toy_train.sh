#!/usr/bin/env bash
# Train the toy LLaVA's projector and LoRA adapters as committed
# (llava_freepruner/toy/trained.safetensors, log in llava_freepruner/toy/train.log):
#
#   bash eval_scripts/toy_train.sh          # PYTHON (default .venv-transformers/bin/python)
#
# Stage 1: 2,000 scenes of the training photos (seed 0), one pass, from a fresh projector.
# Stage 2: 1,000 new scenes (seed 1) from stage 1's weights at half the learning rate, the
# 'exists' family's loss weighted twice (the family stage 1 had learnt least).
# Stage 3: 800 new scenes (seed 2), 'exists' and 'count' weighted twice, 12 minutes.
# Every stage scores the same 100 held-out questions (held-out photos, seed 1) when it
# checkpoints. About 73 minutes on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-.venv-transformers/bin/python}"
weights=llava_freepruner/toy/trained.safetensors
"$py" -m llava_freepruner.toy.train --seed 0 --scenes 2000
"$py" -m llava_freepruner.toy.train --resume "$weights" --seed 1 --scenes 1000 --ground-steps 0 \
    --lr-projector 1e-3 --lr-lora 1e-3 --warmup 10 --limit-minutes 18 --family-weights exists=2
"$py" -m llava_freepruner.toy.train --resume "$weights" --seed 2 --scenes 800 --ground-steps 0 \
    --lr-projector 1e-3 --lr-lora 1e-3 --warmup 10 --limit-minutes 12 --checkpoint-minutes 6 \
    --family-weights exists=2,count=2
