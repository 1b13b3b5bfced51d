#!/bin/bash
# methods x ratios x benchmarks -> results.csv/.md and plot.png; options: --help.
exec python -m llava_freepruner.tools.evaluation sweep "$@"
