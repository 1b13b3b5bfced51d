"""One-command GPU check: verify and time the plugin on a CUDA machine in minutes.

``bash eval_scripts/gpu_check.sh OUT_DIR`` runs :mod:`.driver` (``python -m
llava_freepruner.tools.gpucheck``): independent sections, each in its own process, under
one time budget, written to ``OUT_DIR/results.json`` and ``OUT_DIR/gpu.md``.
``--cpu-smoke`` runs the same sections on tiny shapes on a CPU.
"""
