#!/bin/bash
# Answer and score seed with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run seed "$@"
