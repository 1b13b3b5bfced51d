"""What runs inside a model at inference: the hosts' patches, the capture, the vision methods,
the LLM-side runtime and the sequence bookkeeping."""
