#!/bin/bash
# Answer and score textvqa with the current FREEPRUNER_* settings; options: --help.
exec python -m llava_freepruner.tools.evaluation run textvqa "$@"
