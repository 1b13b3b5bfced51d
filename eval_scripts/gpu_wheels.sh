#!/usr/bin/env bash
# Download the wheels the GPU check installs offline (run where PyPI is reachable).
#
#   bash eval_scripts/gpu_wheels.sh [WHEEL_DIR]     # default: .gpu_wheels in the repository root
#
# Wheels for CPython 3.12 on manylinux x86_64 (the GPU machine), pinned in
# eval_scripts/gpu_requirements.txt, without dependencies. At most 60 MiB in all.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.gpu_wheels}"
python="${PYTHON:-python3}"
limit_mib=60

mkdir -p "$dest"
"$python" -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 \
    -d "$dest" -r "$repo_root/eval_scripts/gpu_requirements.txt"

total=0
for wheel in "$dest"/*.whl; do
    bytes=$(stat -c %s "$wheel")
    total=$((total + bytes))
    awk -v b="$bytes" -v n="$(basename "$wheel")" 'BEGIN { printf "%8.2f MiB  %s\n", b / 1048576, n }'
done
awk -v b="$total" -v l="$limit_mib" 'BEGIN { printf "%8.2f MiB  in all (limit %d MiB)\n", b / 1048576, l }'
if ((total > limit_mib * 1048576)); then
    echo "gpu_wheels.sh: $dest holds more than $limit_mib MiB; remove wheels not in gpu_requirements.txt" >&2
    exit 1
fi
