"""Decoder-side visual-token pruning for Llama, Mistral and Qwen2 decoders, and the
language models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

``attach(model, policy)`` wraps the decoder's forward and each decoder layer's forward
of a model instance (on transformers 4.37 also each attention's rotary embedding;
on Qwen3-VL the decoder's deepstack step); ``detach(model)`` undoes it. What differs
between decoders and transformers versions lives in :mod:`.decoders`.
``begin_prefill(model, spans)`` arms the next forward with query length > 1:

- layers before the first deletion run untouched (the model's own attention and mask);
- at a layer where the policy deletes tokens, the statistic it asks for is computed
  from that layer's queries and keys, the deleted tokens take part in the layer's
  attention (their keys and values stay in this layer's cache) and skip its output
  projection, its MLP and every later layer;
- later layers run their own attention on the shorter sequence with the survivors'
  original position ids (and rotary tables) and a mask built from the survivors'
  original positions; each layer's KV cache holds the tokens that entered it, so
  per-layer cache lengths differ (layer 0 holds the whole prompt);
- M-RoPE decoders (Qwen-VL): the rotary tables the model computed for the whole
  prompt are gathered for the survivors, so every token keeps its (t, h, w) angles;
  Qwen3-VL's deepstack rows, added to the visual positions after its first layers,
  follow the survivors (a deleted token's row is not added);
- after the last layer the sequence is scattered back to its full length (a deleted
  token keeps the hidden state it had when it was dropped), so logits keep the shape
  of an unpruned forward;
- decode steps prune nothing: each layer attends to what its own cache holds, with
  the original position numbering.

Samples of a batch rank their own tokens. When they delete different numbers,
shorter sequences are filled at the end with masked filler slots.

Nothing is read back from the device, in prefill or in decode steps: how many tokens
each sample deletes at each layer is known on the host from the policy's schedule and
the visual spans, so shapes are host integers and which tokens go is device tensors
(a policy whose counts depend on the statistic returns indices instead). DART reads
back where its pivots sit, once per prefill.
"""

import functools
import inspect
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..budget import reduction_from_counts
from . import dart, decoders
from .attention import attention_to_columns, rotate
from .device import upload
from .policies import LAST_QUERY, SELF_CROSS

_ATTR = "_freepruner_llm_runtime"
VISUAL, TEXT_QUERY = 1, 2


@dataclass
class PrefillRecord:
    """What one pruned prefill did. Per-sample lists are in batch order."""

    visual_in: List[List[int]]  # per sample, visual tokens taking part in each layer's attention
    visual_out: List[List[int]]  # per sample, visual tokens leaving each layer
    seq_len: List[int]  # per layer, (padded) sequence length entering the layer
    flops_reduction: List[float]  # per sample, estimated visual-token FLOPs removed
    notes: List[str] = field(default_factory=list)
    # (layer, original positions of the slots leaving it) per deleting layer, and the
    # token kinds: device tensors, read only when drop_layer is asked for
    deletions: list = field(default_factory=list, repr=False)
    kind: Optional[torch.Tensor] = field(default=None, repr=False)

    @functools.cached_property
    def drop_layer(self) -> List[List[int]]:
        """Per sample and visual token (in sequence order): the layer that deleted it, or -1."""
        if self.kind is None:
            return [[] for _ in self.visual_in]
        kind = self.kind.cpu()
        batch, length = kind.shape
        layer_of = torch.full((batch, length), -1, dtype=torch.long)
        alive = torch.ones(batch, length + 1, dtype=torch.bool)
        for layer, slots in self.deletions:
            slots = slots.cpu()
            now = torch.zeros_like(alive).scatter_(1, torch.where(slots >= 0, slots, length), True)
            layer_of[(alive & ~now)[:, :length]] = layer
            alive = now
        return [row[kinds == VISUAL].tolist() for row, kinds in zip(layer_of, kind)]


def attach(model, policy):
    """Install the pruning runtime on ``model`` (replacing any previous policy)."""
    decoder = decoders.find_decoder(model)
    runtime = getattr(model, _ATTR, None)
    policy.check_model(len(decoder.layers))
    if runtime is None:
        runtime = _Runtime(model, decoder, policy)
        setattr(model, _ATTR, runtime)
    runtime.policy = policy
    return runtime


def detach(model):
    """Remove the runtime; the model behaves exactly as before :func:`attach`."""
    runtime = getattr(model, _ATTR, None)
    if runtime is not None:
        runtime.uninstall()
        delattr(model, _ATTR)


def is_attached(model):
    return getattr(model, _ATTR, None) is not None


def begin_prefill(model, spans):
    """Arm pruning for the next forward with query length > 1.

    ``spans``: per sample, the ``[start, end)`` spans of visual tokens in the
    spliced sequence (see :func:`llava_freepruner.runtime.llm.spans.visual_spans`).
    """
    runtime = getattr(model, _ATTR, None)
    if runtime is None:
        raise RuntimeError("begin_prefill: no pruning runtime on this model; call attach(model, policy) first")
    runtime.pending = [[(int(s), int(e)) for s, e in sample] for sample in spans]


def last_record(model):
    """The :class:`PrefillRecord` of the latest armed prefill, or None."""
    runtime = getattr(model, _ATTR, None)
    return None if runtime is None else runtime.record


class _Runtime:
    def __init__(self, model, decoder, policy):
        self.model, self.decoder, self.policy = model, decoder, policy
        self.convention = decoders.calling_convention(decoder)
        self.window = decoders.sliding_window(decoder.config)
        self.pending = None
        self.state = None
        self.record = None
        self._decoder_signature = inspect.signature(decoder.forward)
        self._var_keyword = next((p.name for p in self._decoder_signature.parameters.values()
                                  if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        self._restore = []
        try:
            self._wrap(decoder, self._decoder_forward)
            for idx, layer in enumerate(decoder.layers):
                self._wrap(layer, functools.partial(self._layer_forward, idx, layer))
            for rotary in self.convention.rotary_modules(decoder):
                handle = rotary.register_forward_pre_hook(self._rotary_pre_hook, with_kwargs=True)
                self._restore.append(handle.remove)
            if callable(getattr(decoder, "_deepstack_process", None)):      # Qwen3-VL
                self._wrap(decoder, self._deepstack, "_deepstack_process")
        except BaseException:
            self.uninstall()        # a decoder it cannot drive is left as it was
            raise

    def _wrap(self, module, wrapper, name="forward"):
        had_own = name in module.__dict__
        previous = module.__dict__.get(name)
        original = getattr(module, name)
        installed = functools.partial(wrapper, original)
        setattr(module, name, installed)

        def restore():
            if module.__dict__.get(name) is not installed:
                return  # wrapped again on top (a backend): that wrapper calls ours, which now passes through
            if had_own:
                setattr(module, name, previous)
            else:
                delattr(module, name)
        self._restore.append(restore)

    def uninstall(self):
        for restore in reversed(self._restore):
            restore()
        self._restore = []
        if self.state is not None:
            self.state.release()
        self.state = None
        self.pending = None

    # -- decoder forward: decides prefill / decode / untouched --------------------------

    def _arguments(self, args, kwargs):
        bound = dict(self._decoder_signature.bind(*args, **kwargs).arguments)
        bound.update(bound.pop(self._var_keyword, None) or {})
        return bound

    def _check_window(self, length):
        if self.window is not None and length > self.window:
            raise ValueError(f"decoder-side pruning cannot follow a sliding attention window: "
                             f"{type(self.decoder).__name__} attends within sliding_window={self.window} tokens and "
                             f"this sequence reaches {length}; supported: sequences up to the window, "
                             f"or models with sliding_window None")

    def _decoder_forward(self, original, *args, **kwargs):
        bound = self._arguments(args, kwargs)
        source = bound.get("inputs_embeds")
        if source is None:
            source = bound.get("input_ids")
        batch, q_len = source.shape[:2]
        cache = decoders.cache_argument(bound)
        past_len = decoders.cache_length(cache)
        mask2d = bound.get("attention_mask")
        spans, self.pending = self.pending, None
        state = self.state
        if q_len > 1 and not past_len:
            self.record = None  # a new sequence: the previous record no longer applies
        if spans is not None and q_len > 1:
            if past_len:
                raise RuntimeError("decoder-side pruning needs an empty KV cache at prefill; "
                                   f"the cache already holds {past_len} tokens")
            decoders.check_cache(cache)
            if state is not None:
                state.release()
            state = _Prefill.start(self, spans, batch, q_len, mask2d, source)
            if state is None:
                self.record = _text_only_record(batch, len(self.decoder.layers), q_len)
            else:
                self._check_window(q_len)
        elif state is not None and state.finished and past_len >= state.length:
            self._check_window(past_len + q_len)
            state.begin_decode(past_len, q_len, mask2d)
        else:
            state = None
        self.state = state
        if state is None or state.finished:
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            self.record = state.finish()
            if not state.pruned:
                self.state = None

    # -- per layer -----------------------------------------------------------------------

    def _layer_forward(self, layer_idx, layer, original, hidden_states, *args, **kwargs):
        state = self.state
        if state is None:
            return original(hidden_states, *args, **kwargs)
        if args:
            raise RuntimeError("decoder-side pruning expects decoder layers to be called with keyword arguments")
        if state.finished:
            return original(hidden_states, **state.decode_kwargs(layer_idx, kwargs, hidden_states.dtype))
        kwargs = state.prefill_kwargs(layer_idx, kwargs, hidden_states.dtype)
        statistic = self.policy.statistic(layer_idx)
        if statistic is None:
            outputs = original(hidden_states, **kwargs)
            state.keep_layer()
        else:
            outputs = _pruning_layer_forward(self.convention, layer, layer_idx, state, self.policy, statistic,
                                             hidden_states, kwargs)
        if layer_idx == len(self.decoder.layers) - 1 and state.pruned:
            full = state.restore_full_length(decoders.hidden_states_of(outputs))
            outputs = decoders.with_hidden_states(outputs, full)
        return outputs

    def _deepstack(self, original, hidden_states, visual_pos_masks, visual_embeds):
        """Qwen3-VL adds one deepstack row per visual position of the prompt to the output of its
        first layers; once tokens are deleted, the survivors' rows go to the slots they sit in."""
        state = self.state
        if state is None or state.finished or state.slots is None or state.restored:
            return original(hidden_states, visual_pos_masks, visual_embeds)
        return state.add_deepstack(hidden_states, visual_pos_masks, visual_embeds)

    def _rotary_pre_hook(self, module, args, kwargs):
        # with a pruned cache a layer holds fewer keys than the highest position id
        state = self.state
        if state is None or not state.pruned or "seq_len" not in kwargs:
            return None
        kwargs["seq_len"] = max(kwargs["seq_len"] or 0, state.rope_len)
        return args, kwargs


class _Prefill:
    """Bookkeeping of one prefill and the decode steps that follow it.

    Host integers: per sample, the visual tokens alive (``counts``) and the slots that
    are not fillers (``real``); the policy's schedule. Device tensors: the original
    position of every slot (``slots``, -1 for fillers) and what each position holds.
    """

    @classmethod
    def start(cls, runtime, spans, batch, length, mask2d, source):
        if len(spans) != batch:
            if batch % max(1, len(spans)):
                raise ValueError(f"begin_prefill got spans for {len(spans)} samples, the forward has batch {batch}")
            repeat = batch // len(spans)
            spans = [sample for sample in spans for _ in range(repeat)]
        for b, sample in enumerate(spans):
            for start, end in sample:
                if not 0 <= start < end <= length:
                    raise ValueError(f"sample {b}: visual span [{start}, {end}) lies outside the "
                                     f"spliced sequence of length {length}")
        if mask2d is not None and (not isinstance(mask2d, torch.Tensor) or mask2d.shape != (batch, length)):
            shape = tuple(mask2d.shape) if isinstance(mask2d, torch.Tensor) else type(mask2d).__name__
            raise ValueError(f"decoder-side pruning needs the prefill's attention_mask as a 2-D (batch, length) = "
                             f"{(batch, length)} tensor or None; got {shape}")
        if not any(spans):
            return None
        return cls(runtime, spans, batch, length, mask2d, source.device)

    def __init__(self, runtime, spans, batch, length, mask2d, device):
        self.runtime = runtime
        self.batch, self.length, self.device = batch, length, device
        self.num_layers = len(runtime.decoder.layers)
        self.key_ok = (mask2d.bool() if mask2d is not None else torch.ones(batch, length, dtype=torch.bool,
                                                                           device=device))
        self.counts = [sum(e - s for s, e in sample) for sample in spans]
        self.real = [length] * batch
        # tokens from the first image on that are not visual, at most (the text query rows)
        self.text_width = max(length - min(s for s, _ in sample) - n for sample, n in zip(spans, self.counts) if sample)
        policy = runtime.policy
        self.notes = policy.begin(list(self.counts))
        schedule = policy.schedule(self.num_layers)
        self.schedule = None if schedule is None else _clamped(schedule, self.counts)
        # one copy to the device: what each position holds, and the schedule (built as lists: no op per sample)
        per_sample = zip(*self.schedule) if schedule is not None else [()] * batch
        table = upload(torch.tensor([_kinds_row(sample, length) + list(deletions)
                                     for sample, deletions in zip(spans, per_sample)], dtype=torch.long), device)
        self.kind = table[:, :length] * self.key_ok
        self.scheduled = table[:, length:]  # (batch, layers)
        self.visual_in, self.visual_out, self.seq_len = [], [], []
        # the current sequence, (batch, S) each: original positions (-1 for fillers; None = all),
        # what each slot holds, and which slots are keys (not padding nor filler)
        self.slots = None
        self.kinds, self.keys_ok = self.kind, self.key_ok
        self.layer_keys = [None] * self.num_layers    # keys_ok entering each layer once pruned
        self.layer_fillers = [False] * self.num_layers
        self.deletions = []
        self.parked = None
        self.pruned = False
        self.restored = False    # the last layer scattered the sequence back to its full length
        self.finished = False
        self.rope_len = length
        self._positions = None
        self._prefill_mask = None
        self._prompt_masks = {}   # per distinct keys_ok of the layers: the additive mask of the prompt's keys
        self.keys = None   # the k_proj output of the policy's key layer, once it ran
        key_layer = policy.key_layer()
        self._capture = None if key_layer is None else \
            runtime.decoder.layers[key_layer].self_attn.k_proj.register_forward_hook(self._keep_keys)

    def _keep_keys(self, module, args, output):
        self.keys = output

    def release(self):
        """Drop what only the prefill needed (a hook, parked states)."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self.keys = None
        self.parked = None
        self._prefill_mask = None
        self._positions = None

    # -- prefill ---------------------------------------------------------------------------

    def prefill_kwargs(self, layer_idx, kwargs, dtype):
        self.layer_keys[layer_idx] = None if self.slots is None else self.keys_ok
        self.layer_fillers[layer_idx] = self.has_fillers
        self.seq_len.append(self.length if self.slots is None else self.slots.shape[1])
        self.visual_in.append(list(self.counts))
        if self.slots is None:
            return kwargs
        kwargs = dict(kwargs)
        if self._positions is None:
            index = self.slots.clamp(min=0)
            self._positions = self.runtime.convention.gather_positions(kwargs, index)
            if kwargs.get("position_ids") is not None:
                self._positions["position_ids"] = kwargs["position_ids"].expand(self.batch, -1).gather(1, index)
        kwargs.update(self._positions)
        if kwargs.get("attention_mask") is not None or self.has_fillers:
            if self._prefill_mask is None:
                # padding and filler rows see themselves, so no row is empty
                allowed = self.allowed(self.slots) | torch.eye(self.slots.shape[1], dtype=torch.bool,
                                                               device=self.device)
                self._prefill_mask = _additive(allowed, dtype)[:, None]
            kwargs["attention_mask"] = self._prefill_mask
        else:
            kwargs["attention_mask"] = None
        return kwargs

    def keep_layer(self):
        self.visual_out.append(list(self.counts))

    @property
    def has_fillers(self):
        return self.slots is not None and len(set(self.real)) > 1

    def current_slots(self):
        if self.slots is not None:
            return self.slots
        return torch.arange(self.length, device=self.device).expand(self.batch, -1)

    def allowed(self, query_positions):
        """(batch, Q, S) bool: the keys of the current sequence that queries at these original
        positions (batch, Q) see: causal by original position, not padding nor filler."""
        return self.keys_ok[:, None, :] & (self.current_slots()[:, None, :] <= query_positions[:, :, None])

    def chosen(self, layer_idx, choice, valid):
        """The policy's choice as a (batch, V) bool over the visual columns, and per sample
        how many it deletes (host ints)."""
        if not isinstance(choice, torch.Tensor):
            drop = torch.zeros_like(valid)
            for b, indices in enumerate(choice):
                drop[b, indices.to(drop.device)] = True
            return drop, [int(indices.numel()) for indices in choice]
        if self.schedule is None:
            raise TypeError(f"{type(self.runtime.policy).__name__}.choose returned scores but the policy "
                            f"has no schedule; return indices, or counts from schedule()")
        deleted = self.schedule[layer_idx]
        most = max(deleted)
        order = torch.argsort(choice.masked_fill(~valid, float("inf")), dim=1, stable=True)[:, :most]
        taken = torch.arange(most, device=order.device) < self.scheduled[:, layer_idx, None]
        return torch.zeros_like(valid).scatter_(1, order, taken), deleted

    def apply_deletions(self, layer_idx, drop, deleted, hidden_states):
        """``drop``: (batch, S) bool over the current slots, ``deleted`` its per-sample
        counts. Returns the current positions of the slots that stay (fillers after them)."""
        slots = self.current_slots()
        if not any(deleted):
            self.visual_out.append(list(self.counts))
            return torch.arange(slots.shape[1], device=self.device).expand(self.batch, -1)
        self.real = [n - k for n, k in zip(self.real, deleted)]
        order = torch.argsort(drop.to(torch.int8), dim=1, stable=True)[:, :max(self.real)]
        gone = drop.gather(1, order)    # dropped slots sorted past the survivors become fillers
        new_slots = slots.gather(1, order).masked_fill(gone, -1)
        self.kinds = self.kinds.gather(1, order).masked_fill(gone, 0)
        self.keys_ok = self.keys_ok.gather(1, order).masked_fill(gone, False)
        if self.parked is None:   # one spare row takes the writes of slots that are not parked
            self.parked = hidden_states.new_zeros(self.batch, self.length + 1, hidden_states.shape[-1])
        self._scatter(self.parked, torch.where(drop, slots, self.length), hidden_states)
        self.counts = [n - k for n, k in zip(self.counts, deleted)]
        self.visual_out.append(list(self.counts))
        self.deletions.append((layer_idx, new_slots))
        self.slots = new_slots
        self.pruned = True
        self._positions = None
        self._prefill_mask = None
        return order

    @staticmethod
    def _scatter(target, positions, rows):
        target.scatter_(1, positions[:, :, None].expand(-1, -1, rows.shape[-1]), rows)

    def restore_full_length(self, hidden_states):
        self._scatter(self.parked, torch.where(self.slots >= 0, self.slots, self.length), hidden_states)
        self.restored = True
        return self.parked[:, :self.length]

    def add_deepstack(self, hidden_states, visual_pos_masks, visual_embeds):
        """``hidden_states`` (batch, S) of the current slots plus each visual slot's deepstack row:
        ``visual_pos_masks`` (batch, length) marks the prompt's visual positions, ``visual_embeds``
        holds one row per marked position in row-major order. Gathers only: no read-back."""
        mask = visual_pos_masks.to(hidden_states.device)
        index = self.slots.clamp(min=0)
        rank = (mask.flatten().cumsum(0) - 1).view_as(mask).gather(1, index)
        here = mask.gather(1, index) & (self.slots >= 0)
        rows = visual_embeds.to(hidden_states.device, hidden_states.dtype).index_select(
            0, rank.clamp(min=0).flatten()).view_as(hidden_states)
        return torch.where(here[:, :, None], hidden_states + rows, hidden_states)

    def finish(self):
        self.finished = True
        self.release()
        config = self.runtime.decoder.config
        visual_in = [list(per_sample) for per_sample in zip(*self.visual_in)] or [[] for _ in range(self.batch)]
        visual_out = [list(per_sample) for per_sample in zip(*self.visual_out)] or [[] for _ in range(self.batch)]
        reductions = [reduction_from_counts(i, o, config.hidden_size, config.intermediate_size)
                      for i, o in zip(visual_in, visual_out)]
        return PrefillRecord(visual_in, visual_out, list(self.seq_len), reductions, list(self.notes),
                             list(self.deletions), self.kind)

    # -- decode ----------------------------------------------------------------------------

    def begin_decode(self, past_len, q_len, mask2d):
        self.rope_len = past_len + q_len
        self._decode = (past_len, q_len, mask2d)
        self._decode_masks = {}
        self._new_keys_mask = None

    def decode_kwargs(self, layer_idx, kwargs, dtype):
        keys_ok = self.layer_keys[layer_idx]
        if keys_ok is None:
            return kwargs
        past_len, q_len, mask2d = self._decode
        # without a mask, SDPA would align a multi-token query causally to the first keys
        if kwargs.get("attention_mask") is None and not self.layer_fillers[layer_idx] and q_len == 1:
            return kwargs
        key = id(keys_ok)
        if key not in self._decode_masks:
            if key not in self._prompt_masks:
                self._prompt_masks[key] = _additive(keys_ok, dtype)[:, None]
            if self._new_keys_mask is None:
                self._new_keys_mask = self._mask_of_new_keys(past_len, q_len, mask2d, dtype)
            prompt = self._prompt_masks[key].expand(-1, q_len, -1)
            self._decode_masks[key] = torch.cat([prompt, self._new_keys_mask], dim=-1)[:, None]
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = self._decode_masks[key]
        return kwargs

    def _mask_of_new_keys(self, past_len, q_len, mask2d, dtype):
        """(batch, q_len, keys after the prompt) additive: causal, and the caller's mask."""
        keys = torch.arange(self.length, past_len + q_len, device=self.device)
        allowed = keys[None, :] <= torch.arange(past_len, past_len + q_len, device=self.device)[:, None]
        allowed = allowed.expand(self.batch, -1, -1)
        if mask2d is not None:
            allowed = allowed & mask2d[:, None, self.length:].bool()
        return _additive(allowed, dtype)


def _additive(allowed, dtype):
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                       torch.finfo(dtype).min)


def _kinds_row(spans, length):
    """What each position of one sample holds: VISUAL in its spans, TEXT_QUERY after its
    first span, 0 elsewhere."""
    row = [0] * length
    if spans:
        first = min(start for start, _ in spans)
        row[first:] = [TEXT_QUERY] * (length - first)
    for start, end in spans:
        row[start:end] = [VISUAL] * (end - start)
    return row


def _clamped(schedule, counts):
    """Per layer, per sample deletions, none beyond the tokens still alive."""
    alive, out = list(counts), []
    for per_sample in schedule:
        row = [max(0, min(int(k), n)) for k, n in zip(per_sample, alive)]
        alive = [n - k for n, k in zip(alive, row)]
        out.append(row)
    return out


def _text_only_record(batch, num_layers, length):
    zeros = [[0] * num_layers for _ in range(batch)]
    return PrefillRecord(zeros, [list(z) for z in zeros], [length] * num_layers, [0.0] * batch)


def _positions_of(kinds, kind, width):
    """(batch, width) positions holding ``kind`` in sequence order, and which are real
    (a sample with fewer gets other positions after its own)."""
    order = torch.argsort((kinds != kind).to(torch.int8), dim=1, stable=True)[:, :width]
    return order, kinds.gather(1, order) == kind


def _take(x, index):
    """x (batch, seq, dim), index (batch, R) -> (batch, R, dim)."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[-1]))


def _gather_rows(x, index):
    """x (batch, heads, seq, dim), index (batch, R) -> (batch, heads, R, dim)."""
    return x.gather(2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))


def _layer_statistics(state, statistic, query, key, slots, kinds, columns, valid):
    """The statistic the policy asked for, batched: (batch, V) tensors over ``columns``."""
    if statistic == SELF_CROSS:
        text, text_valid = _positions_of(kinds, TEXT_QUERY, state.text_width)
        rows = torch.cat([columns, text], dim=1)
        allowed = state.allowed(slots.gather(1, rows))
        probs = attention_to_columns(_gather_rows(query, rows), key, allowed, columns, "max")
        # rows that are padding may have seen no key at all: zero them before the means
        probs = probs.masked_fill(~torch.cat([valid, text_valid], dim=1)[:, :, None], 0.0)
        width = columns.shape[1]
        return {"self": probs[:, :width].sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp(min=1),
                "cross": probs[:, width:].sum(dim=1) / text_valid.sum(dim=1, keepdim=True).clamp(min=1)}
    if statistic == LAST_QUERY:
        positions = torch.arange(slots.shape[1], device=slots.device).expand_as(slots)
        last = torch.where(state.keys_ok, positions, -1).amax(dim=1, keepdim=True)
        allowed = state.allowed(slots.gather(1, last))
        return {"last": attention_to_columns(_gather_rows(query, last), key, allowed, columns, "mean")[:, 0]}
    raise ValueError(f"unknown statistic {statistic!r}; accepted: {SELF_CROSS}, {LAST_QUERY}, {dart.DART_INPUTS}")


def _dart_statistics(state, layer_idx, hidden_states, cos, sin, slots, kinds, columns, valid):
    """What DART reads from the previous layer, batched over ``columns`` and the text tokens."""
    if state.keys is None or state.keys.shape[:2] != hidden_states.shape[:2]:
        raise RuntimeError(f"DART at layer {layer_idx} needs the unpruned keys of layer {layer_idx - 1}")
    decoder = state.runtime.decoder
    key_l1 = dart.key_norms(decoder.layers[layer_idx - 1].self_attn, state.keys, cos, sin)
    text, text_valid = _positions_of(kinds, TEXT_QUERY, state.text_width)
    first = state.key_ok.to(torch.int8).argmax(dim=1, keepdim=True)   # positions count from the first real token
    positions = slots - first
    rows = torch.cat([columns, text], dim=1)
    normed = decoder.norm(_take(hidden_states, rows))
    width = columns.shape[1]
    return {"key_l1_visual": key_l1.gather(1, columns), "key_l1_text": key_l1.gather(1, text),
            "normed_visual": normed[:, :width], "normed_text": normed[:, width:],
            "visual_pos": positions.gather(1, columns), "text_pos": positions.gather(1, text),
            "visual_valid": valid, "text_valid": text_valid}


def _pruning_layer_forward(convention, layer, layer_idx, state, policy, statistic, hidden_states, kwargs):
    """One decoder layer that computes the policy's statistic and deletes tokens."""
    attn = layer.self_attn
    batch, seq, _ = hidden_states.shape
    cache = decoders.cache_argument(kwargs)
    residual = hidden_states
    x = layer.input_layernorm(hidden_states)
    shape = (batch, seq, -1, attn.head_dim)
    query, key = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
    q_norm, k_norm = decoders.head_norms(attn)
    if q_norm is not None:
        query, key = q_norm(query), k_norm(key)
    query, key = query.transpose(1, 2), key.transpose(1, 2)
    value = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = convention.cos_sin(attn, kwargs, value, max(seq, state.rope_len))
    query, key = rotate(query, cos, sin), rotate(key, cos, sin)
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)

    slots = state.current_slots()
    kinds = state.kinds
    columns, valid = _positions_of(kinds, VISUAL, max(state.counts))
    if statistic == dart.DART_INPUTS:
        stats = _dart_statistics(state, layer_idx, hidden_states, cos, sin, slots, kinds, columns, valid)
    else:
        stats = _layer_statistics(state, statistic, query, key, slots, kinds, columns, valid)
    drop_columns, deleted = state.chosen(layer_idx, policy.choose(layer_idx, stats, list(state.counts)), valid)
    drop = torch.zeros(batch, seq, dtype=torch.bool, device=hidden_states.device).scatter_(1, columns, drop_columns)
    kept_positions = state.apply_deletions(layer_idx, drop, deleted, residual)

    # every row attends as in the model's own layer (its mask, or causal); then survivors only:
    # output projection, residual, MLP (filler rows carry a dropped token's row, masked later)
    mask = kwargs.get("attention_mask")
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None)
    out = out.transpose(1, 2).reshape(batch, seq, -1)
    hidden = _take(residual, kept_positions) + attn.o_proj(_take(out, kept_positions))
    mlp = layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = hidden + (mlp[0] if isinstance(mlp, tuple) else mlp)      # 4.57's MoE blocks add router logits
    return convention.layer_output(hidden, cache, kwargs)
