"""FLOPs spent on visual tokens inside the language model.

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
