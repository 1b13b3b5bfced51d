#!/usr/bin/env bash
# Accuracy against visual tokens on the toy LLaVA, every method, as in the README:
#
#   bash eval_scripts/toy_accuracy.sh [OUT_DIR]      # default OUT_DIR: toy_accuracy
#
# Builds the checkpoint (toy-model), a held-out question set (held-out photos, seed 8,
# 800 questions balanced over the four families), a calibration set for FitPrune (training
# photos, seed 11, 40 questions),
# fits one FitPrune recipe per ratio (FLOPs reduction 1 - ratio), runs `accuracy` on the
# first LIMIT questions in two processes of one thread each (the unpruned model once, every
# method at each ratio) and writes the combined report (OUT_DIR/results.md, results.json,
# accuracy.png). Every step resumes: a rerun skips what is already there, and a larger
# LIMIT only answers the new questions.
#
# Environment: PYTHON (default .venv-transformers/bin/python), WEIGHTS (default: the committed
# toy weights; a file from `python -m llava_freepruner.tools.toy.train --out`), COUNT and QUESTION_SEED
# (default 800 and 8; BALANCED=0 draws families at random: COUNT=200 QUESTION_SEED=7 BALANCED=0 is
# the earlier 200-question set), LIMIT (default: all COUNT; 31 cells at 1-2.6 questions per second
# per process: about 50 minutes per 200 questions on a 2-core CPU),
# BATCH_SIZE (default 1: questions per generate(); the answers are the same at any size, and a
# rerun may change it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-toy_accuracy}"
py="${PYTHON:-.venv-transformers/bin/python}"
count="${COUNT:-800}"
question_seed="${QUESTION_SEED:-8}"
balanced=(); [[ "${BALANCED:-1}" == 1 ]] && balanced=(--balanced)
limit="${LIMIT:-$count}"
batch_size="${BATCH_SIZE:-1}"
ratios="0.5,0.25,0.11"
vision_methods="none,freepruner,random,grid,cls_topk,visionzip"
other_methods="divprune,vispruner,fastv,dart,fitprune"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$out"

[[ -f "$out/model/config.json" ]] || "$py" -m llava_freepruner toy-model --out "$out/model" ${WEIGHTS:+--weights "$WEIGHTS"}
[[ -f "$out/heldout/questions.jsonl" ]] ||
    "$py" -m llava_freepruner toy-questions --out "$out/heldout" --count "$count" --seed "$question_seed" \
        --photos heldout "${balanced[@]}"
[[ -f "$out/calibration/questions.jsonl" ]] ||
    "$py" -m llava_freepruner toy-questions --out "$out/calibration" --count 40 --seed 11 --photos train

fit_recipes() {
    local ratio reduction
    for ratio in 0.5 0.25 0.11; do
        reduction="$("$py" -c "print(round(1 - $ratio, 2))")"
        [[ -f "$out/fitprune_$ratio.json" ]] || "$py" -m llava_freepruner fitprune-fit --model-path "$out/model" \
            --question-file "$out/calibration/questions.jsonl" --image-folder "$out/calibration/images" \
            --reduction "$reduction" --out "$out/fitprune_$ratio.json"
    done
}
recipes="0.5=$out/fitprune_0.5.json,0.25=$out/fitprune_0.25.json,0.11=$out/fitprune_0.11.json"

accuracy() {
    "$py" -m llava_freepruner accuracy --model "$out/model" --questions "$out/heldout/questions.jsonl" \
        --images "$out/heldout/images" --ratios "$ratios" --fitprune-recipe "$recipes" \
        --batch-size "$batch_size" "$@"
}
# Two halves side by side (one thread each; the second fits the FitPrune recipes first),
# then one pass over every cell: all answers are on disk by then, so it only writes the
# combined report.
accuracy --methods "$vision_methods" --limit "$limit" --out "$out" > "$out/first_half.log" 2>&1 &
first=$!
{ fit_recipes && accuracy --methods "$other_methods" --limit "$limit" --out "$out"; } > "$out/second_half.log" 2>&1 ||
    { wait "$first"; echo "toy_accuracy.sh: see $out/second_half.log" >&2; exit 1; }
wait "$first" || { echo "toy_accuracy.sh: see $out/first_half.log" >&2; exit 1; }
accuracy --methods "$vision_methods,$other_methods" --limit "$limit" --out "$out"
