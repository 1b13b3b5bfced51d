#!/bin/bash
# Answer and score vqav2 with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run vqav2 "$@"
