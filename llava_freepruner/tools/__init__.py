"""The tools around a model: CLI, benchmarks, evaluation, accuracy, the toy LLaVA, the GPU
check, fidelity reports and overlays, the FitPrune fitter."""
