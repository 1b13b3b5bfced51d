"""``python -m llava_freepruner accuracy``: answer accuracy of a transformers LLaVA
checkpoint under each pruning method and ratio, through plain ``generate()``."""
