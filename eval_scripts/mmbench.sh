#!/bin/bash
# Answer and score mmbench with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run mmbench "$@"
