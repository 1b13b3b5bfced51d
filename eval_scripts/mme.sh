#!/bin/bash
# Answer and score mme with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run mme "$@"
