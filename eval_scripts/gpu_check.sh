#!/usr/bin/env bash
# One-command GPU check: verify and time llava_freepruner on a CUDA machine in under
# 8 minutes; writes OUT_DIR/results.json and OUT_DIR/gpu.md.
#
#   bash eval_scripts/gpu_wheels.sh                   # beforehand, where PyPI is reachable
#   bash eval_scripts/gpu_check.sh OUT_DIR            # on the GPU machine, offline
#   bash eval_scripts/gpu_check.sh --cpu-smoke OUT_DIR   # the same sections, tiny shapes, CPU
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
    echo "usage: bash eval_scripts/gpu_check.sh [--cpu-smoke] OUT_DIR" >&2
    exit 2
}

smoke=()
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    smoke=(--cpu-smoke)
    shift
fi
[[ $# -eq 1 && "$1" != -* ]] || usage
out_dir="$1"

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
exec "$python" -m llava_freepruner.gpucheck "${smoke[@]}" "${site_args[@]}" --started "$started" "$out_dir"
