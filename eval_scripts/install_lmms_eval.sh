#!/usr/bin/env bash
# Add lmms-eval to an environment that already runs LLaVA, with only what
# `python -m lmms_eval --model llava_hf` (or `--model llava`) and a local task need:
# no torchvision, no CUDA torch, no wandb. Where torchvision already loads (the video
# environment), also what `--model qwen2_5_vl` / `--model qwen2_vl` need.
#
#   bash eval_scripts/install_lmms_eval.sh VENV_PYTHON     # e.g. .venv-hf/bin/python
#
# The environment must already hold torch, transformers, accelerate, pillow and numpy;
# those (and tokenizers, huggingface-hub) are kept at the versions it has, so the same
# script serves a transformers 5.x environment and upstream llava's 4.37.2 one. Running
# it again does nothing when every requirement below is already met.
#
# lmms-eval goes in with --no-deps: its declared requirements pull torchvision (and with
# it a CUDA torch of several GB), wandb, openai and dozens more that the llava models
# and local tasks never import. What its import chain does need:
#   datasets, evaluate, loguru, sacrebleu, pytz, tenacity   (imported by lmms_eval's core)
#   decord                                                  (imported by models/simple/llava_hf.py)
#   pytablewriter                                           (the results table at the end of a run)
#   filelock < 4                                            (lmms_eval imports filelock._api, gone in 4.x)
#   qwen-vl-utils, only where torchvision loads              (process_vision_info, called by models/simple/
#                                                            qwen2_vl.py, qwen2_5_vl.py and chat/qwen2_5_vl.py;
#                                                            it imports torchvision at the top, and transformers'
#                                                            Qwen-VL processors need torchvision's video half)
# datasets is left to pip within lmms-eval's bound: 5.2.0 needs huggingface-hub >= 1.31,
# which transformers 4.37.2 refuses, where pip then picks an older one.
set -euo pipefail

py="${1:?usage: install_lmms_eval.sh VENV_PYTHON}"
lmms_spec="lmms-eval==0.7.3"
requirements=(
    "datasets>=2.19.0"
    "evaluate==0.4.6"
    "loguru==0.7.3"
    "sacrebleu==2.6.0"
    "pytz==2026.6"
    "tenacity==9.2.1"
    "decord==0.6.0"
    "pytablewriter==1.2.1"
    "filelock<4"
)
if "$py" -I -c "import torchvision" >/dev/null 2>&1; then
    requirements+=("qwen-vl-utils==0.0.14")
fi

"$py" -I -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "install_lmms_eval.sh: $py is not a Python >= 3.10" >&2; exit 1; }

# Exit status 0 when every requirement given as an argument is installed.
all_met() {
    "$py" -I - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement

def met(text):
    requirement = Requirement(text)
    try:
        return requirement.specifier.contains(version(requirement.name), prereleases=True)
    except PackageNotFoundError:
        return False

sys.exit(not all(met(text) for text in sys.argv[1:]))
EOF
}

if all_met "$lmms_spec" "${requirements[@]}"; then
    echo "install_lmms_eval.sh: $lmms_spec and its requirements are already installed"
    exit 0
fi
pip=("$py" -m pip install --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$py" -I -c '
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "transformers", "tokenizers", "accelerate", "huggingface-hub", "numpy"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
' >"$constraints"
"${pip[@]}" -c "$constraints" "${requirements[@]}"
"${pip[@]}" --no-deps "$lmms_spec"
echo "install_lmms_eval.sh: $lmms_spec ready in $("$py" -c 'import sys; print(sys.prefix)')"
