#!/usr/bin/env bash
# The test suite in each supported environment, set up first by install.sh:
#   upstream      .venv                      upstream llava on transformers 4.37.2
#   transformers  .venv-transformers         the newest transformers (5.x)
#   4.57          .venv-transformers-4.57    transformers 4.57.x, the last 4.x
#
#   bash eval_scripts/run_tests.sh [ENV ...] [-- PYTEST_ARGS]   # default: all three
#
# Every environment runs `pytest tests`; each folder's conftest collects what
# that environment can run. Exits non-zero when any environment fails.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

envs=()
while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
[[ ${#envs[@]} -eq 0 ]] && envs=(upstream transformers 4.57)

# Tiny models in several processes on a small machine: one thread each.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# No hub access here; without this a missing file costs ~25 s of retries.
export HF_HUB_OFFLINE=1

failed=()
for env in "${envs[@]}"; do
    case "$env" in
        upstream) venv=.venv; install=() ;;
        transformers) venv=.venv-transformers; install=(--transformers) ;;
        4.57) venv=.venv-transformers-4.57; install=(--transformers=transformers==4.57.6) ;;
        *) echo "run_tests.sh: unknown environment '$env' (accepted: upstream, transformers, 4.57)" >&2; exit 2 ;;
    esac
    echo "=== $env: installing into $venv"
    if ! bash eval_scripts/install.sh "${install[@]}" "$venv"; then
        failed+=("$env (install)")
        continue
    fi
    echo "=== $env: pytest"
    "$venv/bin/python" -m pytest -q tests "$@"
    status=$?
    if [[ $status -eq 5 ]]; then
        echo "run_tests.sh: pytest collected no tests in $env" >&2
    fi
    [[ $status -ne 0 ]] && failed+=("$env")
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "run_tests.sh: failed in: ${failed[*]}" >&2
    exit 1
fi
echo "run_tests.sh: all environments passed (${envs[*]})"
