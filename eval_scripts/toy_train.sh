#!/usr/bin/env bash
# Train the toy LLaVA's projector and LoRA adapters as committed
# (llava_freepruner/tools/toy/trained.safetensors, log in llava_freepruner/tools/toy/train.log):
#
#   bash eval_scripts/toy_train.sh          # PYTHON (default .venv-transformers/bin/python)
#
# One run from a fresh projector and zero adapters: 2,800 scenes of the training photos
# (seed 0), 1,400 steps of two scenes, the 'exists' and 'count' families' loss weighted
# twice, a cosine schedule ending at 50 minutes at the latest. Every 12 minutes and at the
# end it writes the weights and scores 100 held-out questions (held-out photos, seed 1).
# About 55 minutes on an idle 2-core CPU (DINOv2 features of the scenes: about 4 of them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
"${PYTHON:-.venv-transformers/bin/python}" -m llava_freepruner.tools.toy.train --seed 0 --scenes 2800 \
    --family-weights exists=2,count=2 --limit-minutes 50 --checkpoint-minutes 12
