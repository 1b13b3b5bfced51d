"""``fitprune-fit`` on a checkpoint folder: upstream LLaVA or a transformers class, told
apart by its config.json, loaded, and fitted by :mod:`.fit` or :mod:`.transformers_fit`."""

import os
import time

import torch

from .fit import TRANSFORMERS, check_targets, checkpoint_kind, fit_loaded, read_questions, refuse_applied_plugin
from .rules import rounds_for
from .transformers_fit import fit_checkpoint


def fit_recipe(model_path, question_file, image_folder, reduction, out, **options):
    """Fit the recipe of the smallest tolerance alpha that removes ``reduction`` of the
    visual-token FLOPs, write it to ``out`` (JSON) and return it; ``options`` as for
    :func:`fit_recipes`."""
    return fit_recipes(model_path, question_file, image_folder, [(reduction, out)], **options)[0]


def fit_recipes(model_path, question_file, image_folder, targets, samples=None, conv_mode=None,
                device="cpu", progress=True, model_base=None, tolerance=0.01):
    """One recipe per ``(reduction, out)`` of ``targets``, each written to its ``out`` as soon
    as it is fitted; the model is loaded, and every sample encoded, once for all of them.

    ``model_path``: an upstream LLaVA checkpoint (``conv_mode``, default ``llava_v1``, and
    ``model_base`` apply) or a transformers LLaVA / LLaVA-NeXT / Qwen-VL checkpoint (its
    processor's chat template builds the prompt)."""
    targets = check_targets(targets)
    rounds_for(tolerance)
    started = time.time()
    model_path = os.path.expanduser(model_path)
    kind = checkpoint_kind(model_path)
    if kind == TRANSFORMERS:
        given = [name for name, value in (("conv_mode (--conv-mode)", conv_mode),
                                          ("model_base (--model-base)", model_base)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to upstream LLaVA checkpoints only; {model_path} is a "
                             "transformers checkpoint, whose prompt comes from its processor's chat template")
    questions = read_questions(question_file, image_folder, samples)
    refuse_applied_plugin()
    if kind == TRANSFORMERS:
        return fit_checkpoint(model_path, questions, question_file, image_folder, targets, device,
                              progress, tolerance, started)

    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    model_name = get_model_name_from_path(model_path)
    conv_mode = conv_mode or "llava_v1"
    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, model_base, model_name,
                                                                 device_map=device, device=device)
    if model.get_vision_tower() is None:
        raise ValueError(f"model {model_path} has no vision tower: no image reaches its prompt")
    if torch.device(device).type == "cpu":
        model = model.float()  # fp16 matmuls on CPU are slow and the statistics want fp32
    model.eval()
    return fit_loaded(model, tokenizer, image_processor, model_name, questions, question_file, image_folder,
                      targets, conv_mode, progress, tolerance, started, {"model_path": model_path})
