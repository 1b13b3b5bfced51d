"""Visual-token budgets in the language model: per-layer deletion schedules,
how a schedule scales to another token count, and the FLOPs it spends.

Shared by the decoder-side runtime (``llm``) and FitPrune (``fitprune``), which
both depend on this module and never on each other's internals.

Per decoder layer, with ``n_in`` visual tokens entering the layer and ``n_out``
leaving it (tokens deleted at a layer still take part in its attention):
``6 n_in d^2 + 4 n_in^2 d`` (Q/K/V projections and attention) plus
``2 n_out d^2 + 6 n_out d m`` (output projection and MLP). Without deletions this is
the paper's ``8 n d^2 + 4 n^2 d + 6 n d m``; with the recipes' deletions it reproduces
the published reductions of the official LLaVA-1.5-7B recipes.
"""


def layer_flops(n_in, n_out, hidden_size, intermediate_size):
    d, m = hidden_size, intermediate_size
    return 6 * n_in * d * d + 4 * n_in * n_in * d + 2 * n_out * d * d + 6 * n_out * d * m


def visual_counts(num_visual_tokens, deletions):
    """Visual tokens entering and leaving each layer for a per-layer deletion list."""
    alive, entering, leaving = num_visual_tokens, [], []
    for k in deletions:
        entering.append(alive)
        alive -= k
        leaving.append(alive)
    return entering, leaving


def visual_flops(entering, leaving, hidden_size, intermediate_size):
    return sum(layer_flops(i, o, hidden_size, intermediate_size) for i, o in zip(entering, leaving))


def reduction_from_counts(entering, leaving, hidden_size, intermediate_size):
    """Fraction of the unpruned visual-token FLOPs removed, from per-layer counts."""
    if not entering or entering[0] == 0:
        return 0.0
    full = len(entering) * layer_flops(entering[0], entering[0], hidden_size, intermediate_size)
    return 1.0 - visual_flops(entering, leaving, hidden_size, intermediate_size) / full


def flops_reduction(num_visual_tokens, deletions, hidden_size, intermediate_size):
    """Fraction of the unpruned visual-token FLOPs that a deletion schedule removes."""
    entering, leaving = visual_counts(num_visual_tokens, deletions)
    return reduction_from_counts(entering, leaving, hidden_size, intermediate_size)


def scale_deletions(recipe, num_visual_tokens):
    """Deletions for a prompt with another visual-token count, and a note saying so.

    ``recipe`` needs ``name``, ``num_visual_tokens`` and ``deletions`` (a FitPrune
    :class:`~llava_freepruner.runtime.fitprune.recipes.Recipe`).

    Scales the cumulative schedule (tokens deleted up to each layer) and rounds it, so
    the fraction of tokens alive after every layer follows the recipe. Returns
    ``(deletions, note)``; ``note`` is None when no scaling was needed.
    """
    if num_visual_tokens == recipe.num_visual_tokens:
        return list(recipe.deletions), None
    factor = num_visual_tokens / recipe.num_visual_tokens
    scaled, done, cumulative = [], 0, 0
    for k in recipe.deletions:
        cumulative += k
        target = min(num_visual_tokens, int(cumulative * factor + 0.5))
        scaled.append(target - done)
        done = target
    note = (f"FitPrune: recipe {recipe.name} was fitted for {recipe.num_visual_tokens} visual tokens; "
            f"scaled to {num_visual_tokens} (x{factor:.4g})")
    return scaled, note
