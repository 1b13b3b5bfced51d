#!/bin/bash
# Answer and score sqa with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run sqa "$@"
