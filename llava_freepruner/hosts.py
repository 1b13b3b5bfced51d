"""Names the plugin keys on, shared by the import hook and the core.

Standard library only: the import hook reads this module at interpreter start-up.
"""

# Variables under these prefixes switch the plugin on (and are validated by config).
ENV_PREFIXES = ("FREEPRUNER_", "FITPRUNE_")

# Host module -> backend that patches it, applied right after the module body ran.
HOST_MODULES = {
    "llava": "upstream_llava",
    "transformers.models.llava.modeling_llava": "transformers_llava",
    "transformers.models.llava_next.modeling_llava_next": "transformers_llava",
    "transformers.models.llava_onevision.modeling_llava_onevision": "transformers_video",
    "transformers.models.llava_next_video.modeling_llava_next_video": "transformers_video",
    "transformers.models.video_llava.modeling_video_llava": "transformers_video",
    "transformers.models.qwen2_vl.modeling_qwen2_vl": "transformers_qwen",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": "transformers_qwen",
    "transformers.models.qwen3_vl.modeling_qwen3_vl": "transformers_qwen",
    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe": "transformers_qwen",
    "transformers.models.qwen3_5.modeling_qwen3_5": "transformers_qwen",
    "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe": "transformers_qwen",
}
