"""Run a decoder from layer L, on all positions or only on the last ones, reusing cached state.

Activation patching changes nothing below the patched layer, and nothing at positions before the
first patched position (attention is causal).  So a patched run can start from the corrupted
run's residual stream at layer L, and when only the final position is patched, it can run that one
position through layers L..N-1, reading every earlier position's keys and values from the
corrupted run's cache.  TransformerLens's ``start_at_layer`` still executes blocks 0..L-1.

The runner works on the plain-PyTorch engine's twin (:mod:`interp.engines.torch_engine`: same
weight tensors, tapped eager attention) and runs *transformers' own forward* of that twin, with
the layers below L swapped for pass-throughs and layer L's input replaced by the given residual.
So every family in :mod:`interp.architectures` gets its own masks (sliding windows per layer),
positions (learned, rotary, per-layer rotary bases), norms, softcapping and parallel blocks
exactly as its full forward computes them; a test checks equality with full forwards on all of
them.  The cached prefix is a transformers ``DynamicCache`` whose layers return
prefix + new keys/values without storing them, so one prefix serves any number of runs.

Edits inside a run are any sites of :mod:`interp.sites` at layers ≥ L, as (layer, hook, fn)
triples, applied by :mod:`interp.torch_sites` and removed when the call returns or raises.

Three more savings, each exact for what the call returns: ``run_from(..., active=)`` runs a layer
on its first rows only (variants stacked by start layer, :mod:`interp.patching.variants`); with
``last_only`` the last layer's MLP runs on the last row only; and :meth:`DecoderRunner.states`
starts the clean run at the first token where it differs from the corrupted one.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from interp.attention import clear_prefix, stash_prefix
from interp.model import position_ids_from_mask
from interp.sites import BLOCK_HOOKS, Site
from interp.torch_sites import TAP_SITES, installed

EditFn = Callable[[torch.Tensor], torch.Tensor]
RUNNER_SITES = tuple(BLOCK_HOOKS)


class _PrefixLayer(DynamicLayer):
    """A cache layer holding a fixed prefix: ``update`` hands the prefix to the tapped attention
    (:func:`interp.attention.stash_prefix`), returns the new states and stores nothing; variants
    stacked along the batch all read the one prefix, never repeated."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        # the tapped attention (every twin's) reads the prefix before the new states itself
        stash_prefix(self.keys, self.values)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]


@dataclass
class PrefixKV:
    """Keys/values of the first P positions at every layer, [batch, kv_head, P, d_head] each
    (keys as attention consumes them: after k-norm and rotary).  :meth:`cache` gives the
    transformers cache object a run reads them from."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def cache(self) -> DynamicCache:
        """A fresh cache over these keys/values."""
        cache = DynamicCache()
        cache.layers = [_PrefixLayer(k, v) for k, v in zip(self.keys, self.values)]
        return cache

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def expand(self, batch: int) -> "PrefixKV":
        """The same prefix for ``batch`` rows (a one-row prefix broadcast, no copy)."""
        return PrefixKV([k.expand(batch, -1, -1, -1) for k in self.keys], [v.expand(batch, -1, -1, -1) for v in self.values])


@dataclass
class CorruptedState:
    """What patched runs reuse from one unpatched run: the residual stream entering every layer
    [layer, batch, pos, d_model], every layer's keys/values, and the final position's logits
    [batch, 1, vocab] (``logits[:, -1]``; [batch, 1, len(columns)] when made with ``columns``)."""

    resid_pre: torch.Tensor
    resid_final: torch.Tensor  # the residual leaving the last layer (before the final norm)
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def prefix(self, length: int) -> PrefixKV:
        return PrefixKV([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])


class _Skip(torch.nn.Module):
    """Stands in for a decoder layer below the start layer: returns its input unchanged."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        for attr in ("attention_type", "layer_idx"):
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _pass_through_rows(layer: torch.nn.Module, n: int, rows: int) -> list:
    """Hooks that run ``layer`` on its first ``n`` of ``rows`` batch rows only and pass the rest
    through unchanged: every input with ``rows`` rows along dim 0 (hidden states, 4-d masks,
    position ids and rotary tables; not 1-d ones such as ``cache_position``) is cut to its first
    ``n``, and the rest of the hidden states are appended to the layer's output."""
    kept = {}

    def cut(x):
        if isinstance(x, torch.Tensor):
            return x[:n] if x.ndim >= 2 and x.shape[0] == rows else x
        if isinstance(x, (tuple, list)):
            return type(x)(cut(y) for y in x)
        return x

    def pre(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept["rest"] = hidden[n:]
        return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

    def post(mod, args, out):
        first = out[0] if isinstance(out, tuple) else out
        new = torch.cat([first, kept.pop("rest").to(first.dtype)])
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return [layer.register_forward_pre_hook(pre, with_kwargs=True), layer.register_forward_hook(post)]


class RunnerBase:
    """What both runners derive from ``corrupted_state`` and ``run_from`` (this module's
    :class:`DecoderRunner`, :class:`interp.patching.engine_runner.EngineRunner`)."""

    n_layers: int
    # run_from's ``active`` saves work (rows pass through the layers below their own start)
    runs_active_rows = False

    def resid_post(self, state, layer: int) -> torch.Tensor:
        """The residual leaving ``layer`` in ``state``: [batch, pos, d_model]."""
        return state.resid_pre[layer + 1] if layer + 1 < self.n_layers else state.resid_final

    @torch.no_grad()
    def run_with_final_resid(self, state, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Final-position logits [batch, vocab] when the residual leaving ``layer`` at the last
        position (left padding) is set to ``resid`` [batch, d_model]; only that position is
        recomputed, through layers ``layer + 1``.. (task vectors, function vectors)."""
        t = state.attention_mask.shape[1]
        logits = self.run_from(
            layer + 1, resid[:, None].to(state.resid_pre.dtype), state.attention_mask, state.position_ids[:, -1:],
            prefix=state.prefix(t - 1), last_only=True,
        )
        return logits[:, -1]

    @staticmethod
    def _check_edit_layers(edits, layer: int) -> None:
        for l, _, _ in edits:
            if l < layer:
                raise ValueError(f"edit at layer {l} cannot apply to a run that starts at layer {layer}")


class DecoderRunner(RunnerBase):
    """Fast paths over the plain-PyTorch engine's twin of a model (see the module docstring).
    Built once per :class:`~interp.model.Model` (``model.runner``)."""

    path = "fast"
    runs_active_rows = True
    description = ("fast path: transformers' forward of a plain eager twin (shared weights), layers below the patched one "
                   "passed through, earlier positions' keys/values cached")

    def __init__(self, model):
        from interp.engines.torch_engine import TorchEngine

        engine = model if isinstance(model, TorchEngine) else TorchEngine(getattr(model, "hf_model", model))
        self.engine = engine
        self.twin, self.arch, self.facts = engine.twin, engine.arch, engine.facts
        self.layers = self.arch.layer_list(self.twin)
        self.n_layers = len(self.layers)
        self.n_heads, self.d_head = self.facts.n_heads, self.facts.d_head

    @torch.no_grad()
    def corrupted_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, columns: torch.Tensor | None = None) -> CorruptedState:
        """One full forward that records what patched runs start from; ``columns``: its final
        logits only at these vocabulary ids ([batch, 1, len(columns)])."""
        return self._state(input_ids, attention_mask, 0, (), columns)[0]

    @torch.no_grad()
    def states(self, clean_ids: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               capture: Sequence[str] = (), columns: torch.Tensor | None = None,
               ) -> tuple[CorruptedState, torch.Tensor, dict[str, torch.Tensor]]:
        """The corrupted run's state, the clean run's final-position logits [batch, vocab] (only
        ``columns`` when given) and its activations at ``capture`` (full site names, e.g.
        ``blocks.3.attn.hook_z``; [batch, pos, ...] each).

        Before the first position where the two prompts differ every activation is the same in
        both runs (attention is causal): the clean run starts there, reading the corrupted run's
        keys/values and activations before it.  When they differ from the first position (or a
        site is not [batch, pos, ...]), both run in one batched forward, clean rows first."""
        from interp.sites import parse_site

        n = len(self.layers)
        differ = (clean_ids != input_ids).any(0).nonzero()
        first = min(int(differ.min()) if len(differ) else input_ids.shape[1], input_ids.shape[1] - 1)
        sites = [parse_site(name, n) for name in capture]
        if first == 0 or any(site.layer is None or site.hook in TAP_SITES for site in sites):
            return self._state(torch.cat([clean_ids, input_ids]), attention_mask.repeat(2, 1), clean_ids.shape[0], capture, columns)
        state, _, before = self._state(input_ids, attention_mask, 0, capture, columns)
        after = {}
        grabs = [(site.layer, site.hook, lambda t, name=name: after.__setitem__(name, t)) for name, site in zip(capture, sites)]
        logits = self._forward({"input_ids": clean_ids[:, first:]}, (clean_ids.shape[0], clean_ids.shape[1] - first), attention_mask,
                               state.position_ids[:, first:], state.prefix(first), grabs, True, columns)
        acts = {name: torch.cat([before[name][:, :first], after[name].to(before[name].dtype)], 1) for name in capture}
        return state, logits[:, -1], acts

    def _state(self, input_ids, attention_mask, n_clean: int, capture, columns=None):
        """Rows ``n_clean:`` give the state; rows ``:n_clean`` their final logits and ``capture``
        (the state's rows give ``capture`` when ``n_clean`` is 0)."""
        from interp.sites import parse_site

        position_ids = position_ids_from_mask(attention_mask)
        n, b = len(self.layers), n_clean
        resid, acts = {}, {}
        hooks = [(Site(l, "hook_resid_pre"), lambda t, l=l: resid.__setitem__(l, t[b:])) for l in range(n)]
        hooks.append((Site(n - 1, "hook_resid_post"), lambda t: resid.__setitem__(n, t[b:])))
        hooks += [(parse_site(name, n), lambda t, name=name: acts.__setitem__(name, t[:b] if b else t)) for name in capture]
        cache = DynamicCache()
        unembed = nullcontext() if columns is None else self.arch.swapped_top(
            self.twin, "unembed", ColumnUnembed(self.arch.top(self.twin, "unembed"), columns))
        with unembed, installed(self.twin, self.arch, self.facts, hooks):
            out = self.twin(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=True, logits_to_keep=1)
        keys = [cache.layers[i].keys[b:] for i in range(n)]
        values = [cache.layers[i].values[b:] for i in range(n)]
        resid_pre = torch.stack([resid[l] for l in range(n)])
        state = CorruptedState(resid_pre, resid[n], keys, values, out.logits[b:], attention_mask[b:], position_ids[b:])
        return state, out.logits[:b, -1], acts

    def run_from(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        prefix: PrefixKV | None = None,
        edits: Sequence[tuple[int, str, EditFn]] = (),
        last_only: bool = False,
        columns: torch.Tensor | None = None,
        active: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits of running ``hidden`` [batch, q, d_model] (the residual entering ``layer``)
        through layers ``layer``.. and the head.

        ``position_ids`` [batch, q] are the absolute positions of the q rows; ``attention_mask``
        [batch, P + q] covers the prefix and the rows; ``prefix`` holds the keys/values of the
        first P positions.  ``edits``: (layer, hook, fn) with hook any block site of
        :mod:`interp.sites` at a layer ≥ ``layer``.  ``last_only``: unembed only the last row and
        return [batch, 1, vocab].  ``columns`` (with ``last_only``): unembed only these vocabulary
        ids and return [batch, 1, len(columns)] (a metric that reads two logits does not pay for
        the whole vocabulary).  ``active[l]`` (one entry per layer of the model): only the first
        ``active[l]`` rows run layer l, the others pass through it unchanged (rows that a later
        edit overwrites anyway, as the variants of :mod:`interp.patching.variants` that start
        higher up); None runs every row through every layer.
        """
        self._check_edit_layers(edits, layer)
        check_columns(columns, last_only)
        if layer == len(self.layers):  # past the last layer: the final norm and the unembedding
            self._check_mask(hidden.shape[:2], attention_mask, prefix)
            return self.head(hidden[:, -1:] if last_only else hidden, columns)

        def set_input(module, args, kwargs):
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        originals = list(self.layers)
        handles = [originals[layer].register_forward_pre_hook(set_input, with_kwargs=True)]
        if active is not None:  # after set_input, before any edit's hooks: the edits see the running rows
            rows = hidden.shape[0]
            handles += [h for l in range(layer, len(originals)) if active[l] < rows
                        for h in _pass_through_rows(originals[l], int(active[l]), rows)]
        try:
            for i in range(layer):
                self.layers[i] = _Skip(originals[i])
            dummy = torch.zeros(*hidden.shape[:2], self.facts.d_model, dtype=hidden.dtype, device=hidden.device)
            return self._forward({"inputs_embeds": dummy}, hidden.shape[:2], attention_mask, position_ids, prefix, edits, last_only,
                                 columns)
        finally:
            for h in handles:
                h.remove()
            for i in range(layer):
                self.layers[i] = originals[i]

    def head(self, resid: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of a residual leaving the last layer: final norm, unembedding (only
        ``columns`` when given), final softcap."""
        unembed = self.arch.top(self.twin, "unembed")
        if columns is not None:
            unembed = ColumnUnembed(unembed, columns)
        logits = unembed(self.arch.top(self.twin, "final_norm")(resid))
        cap = self.arch.softcaps(self.twin.config)[1]
        return torch.tanh(logits / cap) * cap if cap else logits

    def run_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
                   prefix: PrefixKV | None = None, edits: Sequence[tuple[int, str, EditFn]] = (), last_only: bool = False,
                   at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of token rows ``input_ids`` [batch, q] after ``prefix`` (the model's own
        embeddings, learned positions included); arguments as in :meth:`run_from`.  ``at``
        [batch]: unembed only row b's position ``at[b]`` (right-padded rows end at different
        positions) and return [batch, 1, vocab]."""
        if at is None:
            return self._forward({"input_ids": input_ids}, input_ids.shape, attention_mask, position_ids, prefix, edits, last_only)
        if last_only:
            raise ValueError("run_tokens takes last_only or at, not both")
        at = torch.as_tensor(at, dtype=torch.long, device=input_ids.device)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)

        def pick(mod, args, kwargs):  # the unembedding's input [batch, q, d] -> [batch, 1, d]
            x = args[0] if args else kwargs["input"]
            x = x[rows, at][:, None]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "input": x})

        handle = self.arch.top(self.twin, "unembed").register_forward_pre_hook(pick, with_kwargs=True)
        try:
            return self._forward({"input_ids": input_ids}, input_ids.shape, attention_mask, position_ids, prefix, edits, False)
        finally:
            handle.remove()

    @staticmethod
    def _check_mask(rows_shape, attention_mask, prefix) -> None:
        batch, q_len = rows_shape
        p_len = prefix.length if prefix is not None else 0
        if attention_mask.shape != (batch, p_len + q_len):
            raise ValueError(f"attention_mask must be [batch, prefix + rows] = {(batch, p_len + q_len)}, got {tuple(attention_mask.shape)}")

    def _forward(self, inputs: dict, rows_shape, attention_mask, position_ids, prefix, edits, last_only, columns=None) -> torch.Tensor:
        """transformers' forward of the twin over the rows, after ``prefix``, with ``edits``
        (and only ``columns`` of the unembedding, swapped in for this call)."""
        self._check_mask(rows_shape, attention_mask, prefix)
        cache = prefix.cache() if prefix is not None else DynamicCache()
        hooks = [(Site(l, hook), fn) for l, hook, fn in edits]
        extra = {"logits_to_keep": 1} if last_only else {}
        unembed = nullcontext() if columns is None else self.arch.swapped_top(
            self.twin, "unembed", ColumnUnembed(self.arch.top(self.twin, "unembed"), columns))
        trim = self._last_mlp_on_last_row(rows_shape[1], edits) if last_only else []
        clear_prefix()
        try:
            with unembed, installed(self.twin, self.arch, self.facts, hooks):
                out = self.twin(**inputs, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True, **extra)
        finally:
            clear_prefix()
            for h in trim:
                h.remove()
        return out.logits

    def _last_mlp_on_last_row(self, q_len: int, edits) -> list:
        """When only the last row's logits are wanted, the last layer's MLP need not run on the
        other rows (nothing above it reads them): hooks that run it on the last row only and give
        zeros elsewhere.  Not when an edit writes the last layer's MLP output or residual (it
        would see the zeros), nor where the MLP is not one module (OPT's fc1 / fc2)."""
        last = self.n_layers - 1
        if q_len < 2 or self.arch.mlp_in is not None or any(l == last and h in ("hook_mlp_out", "hook_resid_post") for l, h, _ in edits):
            return []
        mlp = self.arch.sub(self.twin, last, "mlp")

        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x = x[:, -1:]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        def post(mod, args, out):
            full = out.new_zeros(out.shape[0], q_len, *out.shape[2:])
            full[:, -1:] = out
            return full

        return [mlp.register_forward_pre_hook(pre, with_kwargs=True), mlp.register_forward_hook(post)]


class ColumnUnembed(torch.nn.Module):
    """The unembedding restricted to some vocabulary ids: ``x @ W[columns].T (+ b[columns])``."""

    def __init__(self, unembed: torch.nn.Module, columns: torch.Tensor):
        super().__init__()
        cols = torch.as_tensor(columns, dtype=torch.long, device=unembed.weight.device)
        self.weight = unembed.weight[cols]
        bias = getattr(unembed, "bias", None)
        self.bias = None if bias is None else bias[cols]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def check_columns(columns, last_only: bool) -> None:
    if columns is not None and not last_only:
        raise ValueError("columns= unembeds the final position only: pass last_only=True")
