#!/usr/bin/env bash
# GPU check: verify and time llava_freepruner on a CUDA machine, in calls of at most
# 7 minutes each (install included); writes OUT_DIR/results.json and OUT_DIR/gpu.md.
#
#   bash eval_scripts/gpu_wheels.sh                   # beforehand, where PyPI is reachable
#   bash eval_scripts/gpu_check.sh OUT_DIR            # on the GPU machine, offline: what fits in one call
#   bash eval_scripts/gpu_check.sh --resume OUT_DIR   # the next call: the sections not run yet
#   bash eval_scripts/gpu_check.sh --sections transformers,quant-4bit OUT_DIR   # those sections
#   bash eval_scripts/gpu_check.sh --list-sections    # the sections and their estimated minutes
#   bash eval_scripts/gpu_check.sh --cpu-smoke OUT_DIR   # the same sections, tiny shapes, CPU
#
# --resume and --sections merge into the results.json already in OUT_DIR.
#
# GPU mode installs the wheels of gpu_requirements.txt (upstream llava and its pinned
# transformers) offline into a folder of its own and puts it first on PYTHONPATH for the
# upstream sections; the machine's own transformers serves the transformers backend.
# The smoke mode installs nothing and runs with the current interpreter.
#
# Environment:
#   PYTHON            interpreter (default: python3)
#   GPU_CHECK_WHEELS  wheel folder (default: .gpu_wheels in the repository root)
#   GPU_CHECK_SITE    install folder (default: /tmp/llava_freepruner_gpu_site)
set -euo pipefail

started="$(date +%s.%N)"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

usage() {
    echo "usage: bash eval_scripts/gpu_check.sh [--cpu-smoke] [--sections NAME,... | --resume] OUT_DIR" >&2
    echo "       bash eval_scripts/gpu_check.sh [--cpu-smoke] --list-sections" >&2
    exit 2
}

smoke=()
which=()
out_dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-smoke) smoke=(--cpu-smoke); shift ;;
        --list-sections) cd "$repo_root"; exec env PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}" \
                             "$python" -m llava_freepruner.tools.gpucheck "${smoke[@]}" --list-sections ;;
        --resume) [[ ${#which[@]} -eq 0 ]] || usage; which=(--resume); shift ;;
        --sections) [[ ${#which[@]} -eq 0 && $# -ge 2 && "$2" != -* ]] || usage; which=(--sections "$2"); shift 2 ;;
        -*) usage ;;
        *) [[ -z "$out_dir" ]] || usage; out_dir="$1"; shift ;;
    esac
done
[[ -n "$out_dir" ]] || usage

site_args=()
if [[ ${#smoke[@]} -eq 0 ]]; then
    wheels="${GPU_CHECK_WHEELS:-$repo_root/.gpu_wheels}"
    site="${GPU_CHECK_SITE:-/tmp/llava_freepruner_gpu_site}"
    requirements="$repo_root/eval_scripts/gpu_requirements.txt"
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu_check.sh: no wheels in $wheels; run 'bash eval_scripts/gpu_wheels.sh' where PyPI is reachable first" >&2
        exit 2
    fi
    stamp="$site/.gpu_check_requirements"
    if ! cmp -s "$requirements" "$stamp"; then
        echo "gpu_check.sh: installing $(grep -c '==' "$requirements") packages from $wheels into $site"
        rm -rf "$site"
        "$python" -m pip install --disable-pip-version-check --quiet --no-index --no-deps --no-compile \
            --no-cache-dir --find-links "$wheels" --target "$site" -r "$requirements"
        cp "$requirements" "$stamp"
    fi
    site_args=(--site "$site")
fi

cd "$repo_root"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m llava_freepruner.tools.gpucheck "${smoke[@]}" "${which[@]}" "${site_args[@]}" --started "$started" "$out_dir"
