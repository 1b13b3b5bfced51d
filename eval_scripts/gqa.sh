#!/bin/bash
# Answer and score gqa with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run gqa "$@"
