"""A small trained LLaVA for measuring accuracy offline: grounded questions on
coloured shapes pasted on real photos, DINOv2 ViT-S/14 + SmolLM2-135M-Instruct
joined by a projector trained here (``python -m llava_freepruner.tools.toy.train``)."""
