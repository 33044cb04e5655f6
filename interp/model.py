"""The model facade: one object over a causal LM, whichever engine runs it.

``Model.run(inputs, capture=..., edits=..., grad=...)`` is the one verb analyses use.  Inputs are
an :class:`~interp.prompts.IclBatch`, token ids (+ attention mask) or strings.  Captures return only
what was asked (:mod:`interp.capture`); edits apply for this call only (:mod:`interp.edits`).
Left padding is handled by explicit position ids (cumsum of the mask), so a padded row gives the
same numbers as the row alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from interp.capture import Activations, Capture, as_capture, capture_hooks
from interp.edits import Edit, EditContext
from interp.engines.base import Engine
from interp.sites import resolve_positions


@dataclass
class RunResult:
    """Logits ([batch, pos, vocab], or [batch, vocab] at the final positions) and captures."""

    logits: torch.Tensor
    acts: Activations = field(default_factory=Activations)
    final_positions: torch.Tensor | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.acts[name]


class Model:
    """A causal LM behind one engine (``transformer-lens`` or ``nnsight``).

    Facts: ``n_layers``, ``n_heads``, ``n_kv_heads``, ``d_head``, ``d_model``, ``n_ctx``,
    ``d_vocab``; ``tokenizer``; ``kv_head(h)`` maps a query head onto its key/value head (GQA).
    The wrapped objects stay reachable for your own code: ``hf_model``, ``bridge`` (TransformerLens
    engine) and ``nnsight`` (nnsight engine).
    """

    def __init__(self, engine: Engine, *, name: str = "model", tokenizer=None):
        self.engine = engine
        self.name = name
        self.tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
        f = engine.facts
        self.n_layers, self.n_heads, self.n_kv_heads = f.n_layers, f.n_heads, f.n_kv_heads
        self.d_head, self.d_model, self.n_ctx, self.d_vocab = f.d_head, f.d_model, f.n_ctx, f.d_vocab

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, engine={self.engine.name!r}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"n_kv_heads={self.n_kv_heads}, d_head={self.d_head}, d_model={self.d_model})"
        )

    # --- facts and wrapped objects ------------------------------------------------------------
    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.engine.hf_model

    @property
    def bridge(self):
        return getattr(self.engine, "bridge", None)

    @property
    def nnsight(self):
        return getattr(self.engine, "nn", None)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def runner(self):
        """The fast paths (:class:`~interp.patching.runner.DecoderRunner`: start at layer L, reuse
        cached keys/values, batch patched variants), built once, on a plain twin sharing this
        model's weights.  For a family the architecture table does not describe, the same
        interface over full forwards of the engine (:class:`~interp.patching.engine_runner.EngineRunner`):
        slower, same numbers.  ``runner.path`` says which ("fast" / "engine")."""
        if getattr(self, "_runner", None) is None:
            from interp.architectures import UnsupportedArchitecture
            from interp.patching.runner import DecoderRunner

            try:
                self._runner = DecoderRunner(self.hf_model)
            except UnsupportedArchitecture:
                from interp.patching.engine_runner import EngineRunner

                self._runner = EngineRunner(self)
        return self._runner

    @property
    def bos_policy(self) -> dict:
        """The BOS rule prompts are built with (:func:`interp.prompts.bos_to_prepend`): a BOS
        token is prepended when this model's tokenizer prepends one by default."""
        from interp.prompts import bos_to_prepend

        bos = bos_to_prepend(self.tokenizer) if self.tokenizer is not None else None
        return {"prepend_bos": bos is not None, "bos_token_id": bos,
                "rule": "BOS prepended when the tokenizer adds it by default (tokenizer('a') starts with it)"}

    def provenance(self) -> dict:
        """What every results.json records about the model: name, engine and what serves it,
        the architecture entry, the BOS policy, and the path the fast analyses run on."""
        from interp.architectures import ARCHITECTURES

        config = getattr(self.hf_model, "config", None)
        arch = ARCHITECTURES.get(getattr(config, "model_type", None))
        return {
            "model": self.name, "engine": self.engine_name,
            "served_by": getattr(self.engine, "served_by", None),
            "architecture": arch.record(config) if arch is not None else {"family": None, "model_type": getattr(config, "model_type", None)},
            "bos": self.bos_policy,
            "runner": self._runner_description(arch),
        }

    def _runner_description(self, arch) -> str:
        """Which runner serves (or would serve) the fast paths, without building one."""
        from interp.patching.engine_runner import EngineRunner
        from interp.patching.runner import DecoderRunner

        built = getattr(self, "_runner", None)
        if built is not None:
            return built.description
        return (DecoderRunner if arch is not None else EngineRunner).description

    def kv_head(self, head: int) -> int:
        """Key/value head that query head ``head`` reads (GQA: heads share kv in groups)."""
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head {head} out of range 0..{self.n_heads - 1}")
        return head // (self.n_heads // self.n_kv_heads)

    def W_O(self, layer: int) -> torch.Tensor:
        return self.engine.W_O(layer)

    # --- tokenisation ------------------------------------------------------------------------
    def encode(self, texts: str | Sequence[str], padding_side: Literal["left", "right"] = "right"):
        """Token ids and attention mask of ``texts`` (no special tokens added)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass tokenizer= to load_model")
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return pad_ids(ids, self.pad_token_id, padding_side)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        return pad if pad is not None else (getattr(tok, "eos_token_id", None) or 0)

    # --- the one verb -----------------------------------------------------------------------
    def run(
        self,
        inputs,
        *,
        capture: Sequence[Capture | str] = (),
        edits: Sequence[Edit] = (),
        grad: bool = False,
        attention_mask: torch.Tensor | None = None,
        logits: Literal["all", "final"] = "all",
    ) -> RunResult:
        """Forward pass with captures and edits.

        ``inputs``: IclBatch, LongTensor [batch, pos] (with ``attention_mask``), str or list of
        str.  ``grad=True`` keeps the autograd graph (captures are not detached).  ``logits=
        "final"`` returns only each row's final-position logits [batch, vocab].
        """
        input_ids, attention_mask, final = self._inputs(inputs, attention_mask)
        batch, seq_len = input_ids.shape[:2]
        if seq_len > self.n_ctx:
            raise ValueError(
                f"prompt of {seq_len} tokens is longer than the context window of {self.n_ctx}: use fewer "
                "demonstrations (k), shorter inputs, or a model with a longer context"
            )
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = position_ids_from_mask(attention_mask)
        store = Activations()
        ctx = EditContext(self.engine.facts, batch, seq_len, final)
        hooks = []
        for edit in edits:
            hooks += edit.hooks(ctx)
        for spec in map(as_capture, capture):
            pos = resolve_positions(spec.positions, batch, seq_len, final)
            hooks += capture_hooks(spec, engine=self.engine, store=store, pos_index=pos, n_layers=self.n_layers, keep_graph=grad)
        self.engine.check_sites([site for site, _ in hooks])
        # logits="final": unembed only the rows' final positions (the vocabulary projection is ~20%
        # of a SmolLM2 forward, ~70% of a Gemma 3 one with its 262k vocabulary) unless a hook reads
        # the logits; a left-padded batch ends every row at the last position.
        keep = None
        if logits == "final" and not any(site.hook == "logits" for site, _ in hooks):
            keep = 1 if bool((final == seq_len - 1).all()) else torch.unique(final)
        with torch.set_grad_enabled(grad):
            out = self.engine.forward(input_ids, attention_mask, position_ids, hooks, store, keep=keep)
        if logits == "final":
            column = final if keep is None else (torch.zeros_like(final) if isinstance(keep, int) else torch.searchsorted(keep, final))
            out = out[torch.arange(batch, device=out.device), column.to(out.device)]
        return RunResult(logits=out, acts=store, final_positions=final)

    def gradients(
        self,
        inputs,
        sites: Sequence[str],
        metric,
        *,
        attention_mask: torch.Tensor | None = None,
        edits: Sequence[Edit] = (),
    ) -> "GradientResult":
        """Activations at ``sites`` (full names) and the gradient of ``metric(final logits)``
        with respect to each, from one forward and one backward.

        A zero tensor that requires grad is added at every site (value unchanged), so the
        gradient is taken where the activation really flows, whatever the engine does around its
        hook points."""
        taps = [_GradTap(site) for site in sites]
        out = self.run(inputs, edits=[*edits, *taps], attention_mask=attention_mask, grad=True, logits="final")
        value = metric(out.logits)
        grads = torch.autograd.grad(value, [t.delta for t in taps], allow_unused=True)
        grads = [torch.zeros_like(t.delta) if g is None else g for t, g in zip(taps, grads)]  # no path: zero
        return GradientResult(
            value=float(value.detach()),
            acts=Activations({t.site: t.value for t in taps}),
            grads=Activations({t.site: g.detach() for t, g in zip(taps, grads)}),
            logits=out.logits.detach(),
        )

    def _inputs(self, inputs, attention_mask):
        if hasattr(inputs, "input_ids") and hasattr(inputs, "final_positions"):  # IclBatch
            return inputs.input_ids, inputs.attention_mask, inputs.final_positions().cpu()
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            raise ValueError("run([]): no inputs; pass a string, a list of strings, token ids or an IclBatch")
        if isinstance(inputs, (str, list, tuple)) and (isinstance(inputs, str) or isinstance(inputs[0], str)):
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            if any(not t for t in texts):
                raise ValueError("run(''): an empty text has no tokens to run; pass text with at least one character")
            input_ids, attention_mask = self.encode(inputs)
        elif isinstance(inputs, torch.Tensor) and inputs.is_floating_point():  # real-vector tokens [batch, pos, d_in]
            input_ids = inputs if inputs.ndim == 3 else inputs.unsqueeze(0)
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape[:2], dtype=torch.long)
            if attention_mask.shape != input_ids.shape[:2]:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match inputs {tuple(input_ids.shape[:2])}")
            return input_ids, attention_mask, final_positions(attention_mask.cpu())
        elif isinstance(inputs, torch.Tensor):
            input_ids = inputs if inputs.ndim == 2 else inputs.unsqueeze(0)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        else:
            raise TypeError(f"inputs must be an IclBatch, token ids or text, not {type(inputs).__name__}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
        if input_ids.numel() == 0:
            raise ValueError("run: the token ids are empty; pass at least one token")
        bad = (input_ids < 0) | (input_ids >= self.d_vocab)
        if self.engine.name != "hooked-module" and bool(bad.any()):
            raise ValueError(f"token ids {sorted(set(input_ids[bad].tolist()))[:5]} are outside the vocabulary 0..{self.d_vocab - 1}: "
                             "encode text with this model's tokenizer (model.encode)")
        return input_ids, attention_mask, final_positions(attention_mask.cpu())


@dataclass
class GradientResult:
    """``metric`` value, activations and d metric / d activation at each requested site."""

    value: float
    acts: Activations
    grads: Activations
    logits: torch.Tensor


class _GradTap(Edit):
    """Adds a zero leaf at ``site`` and keeps it, so autograd can differentiate with respect to
    the activation that actually flows on."""

    def __init__(self, site: str):
        self.site = site
        self.delta: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def hooks(self, ctx):
        from interp.sites import parse_site

        target = parse_site(self.site, ctx.facts.n_layers)
        if target.hook == "attn.hook_result":
            raise ValueError("gradients: use attn.hook_z (hook_result is derived and read-only)")

        def fn(t):
            self.value = t.detach().clone()
            self.delta = torch.zeros_like(t, requires_grad=True)
            return t + self.delta

        return [(target, fn)]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every token counted over real tokens only (cumsum(mask) − 1, pads at 0), so a
    left-padded row gets the same positions as the row alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def final_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in every row (works for left and right padding)."""
    seq_len = attention_mask.shape[1]
    pos = torch.arange(seq_len).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, -1).max(-1).values


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "right"):
    """Pad lists of ids to one length: (input_ids, attention_mask) LongTensors."""
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, sl] = torch.tensor(row, dtype=torch.long)
        mask[i, sl] = 1
    return input_ids, mask
