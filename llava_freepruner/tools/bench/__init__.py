"""``python -m llava_freepruner bench``: what pruning buys in time, FLOPs and memory.

archs     published LLaVA configurations, as data (random-weight runs)
host      per backend: the model parts the bench hooks, and who builds the model
model     the model under test and its inputs (upstream llava; what backends share)
hf_model  the same for transformers' LLaVA classes
probe     timing hooks and a token clock around ``model.generate``
oracle    the zero-cost selection every method is compared with
flops     analytical prefill FLOPs
memory    per-configuration peak memory
capture_memory  how the attention capture's memory grows with tokens
runner    methods x ratios, medians, comparisons
report    results.json, results.md, time_vs_tokens.png
"""
