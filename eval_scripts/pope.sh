#!/bin/bash
# Answer and score pope with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run pope "$@"
