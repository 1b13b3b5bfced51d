#!/usr/bin/env bash
# The test suite in each supported environment, set up first by install.sh:
#   upstream      .venv                      upstream llava on transformers 4.37.2
#   transformers  .venv-transformers         the newest transformers (5.x)
#   4.57          .venv-transformers-4.57    transformers 4.57.x, the last 4.x
#   video         .venv-video                the newest transformers with torchvision (torch 2.14.1),
#                                            for its video processors, and lmms-eval
#
#   bash eval_scripts/run_tests.sh [ENV ...] [-- PYTEST_ARGS]   # default: all four
#
# The first three run `pytest tests`; each folder's conftest collects what that
# environment can run. `video` runs `pytest tests/video_processors` only: the tests that
# need torchvision (everything else there runs in `transformers` already). Exits non-zero
# when any environment fails.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

envs=()
while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
[[ ${#envs[@]} -eq 0 ]] && envs=(upstream transformers 4.57 video)

# Tiny models in several processes on a small machine: one thread each, and one pytest
# worker per core (TEST_WORKERS; at most 4 by default: each holds its own tiny models).
# A file's tests stay together in one worker, in order, sharing its module fixtures.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)"     # nproc obeys OMP_*
workers="${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
# No hub access here; without this a missing file costs ~25 s of retries.
export HF_HUB_OFFLINE=1

failed=()
for env in "${envs[@]}"; do
    case "$env" in
        upstream) venv=.venv; install=(); tests=tests ;;
        transformers) venv=.venv-transformers; install=(--transformers); tests=tests ;;
        4.57) venv=.venv-transformers-4.57; install=(--transformers=transformers==4.57.6); tests=tests ;;
        video) venv=.venv-video; install=(--video); tests=tests/video_processors ;;
        *) echo "run_tests.sh: unknown environment '$env' (accepted: upstream, transformers, 4.57, video)" >&2; exit 2 ;;
    esac
    echo "=== $env: installing into $venv"
    if ! bash eval_scripts/install.sh "${install[@]}" "$venv"; then
        failed+=("$env (install)")
        continue
    fi
    echo "=== $env: pytest $tests"
    "$venv/bin/python" -m pytest -q -n "$workers" --dist loadfile --durations=10 "$tests" "$@"
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
