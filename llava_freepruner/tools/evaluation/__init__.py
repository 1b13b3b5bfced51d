"""Evaluation harness: upstream LLaVA benchmarks, sweeps and sharded runs.

Submodules are imported on demand; nothing here imports torch or llava at
package import time.
"""
