"""The gradient-descent counterpart of ICL: fine-tune a private copy of the model on the demos.

Settings the papers use, all reachable through :class:`GDConfig`:

- Dai et al. 2023 (LMOps ``understand_icl``): train every ``k_proj`` and ``v_proj`` (``params="kv"``)
  with plain SGD, batch 1, one epoch over the k demos in prompt order (k steps), LM loss on every
  token of each demo sequence (``loss="all"``, mean token NLL):
  θ ← θ − η ∇_θ (1/|T_i|) Σ_{t∈T_i} −log p_θ(x_{t+1} | x_≤t).
- Shen et al. 2023: cross-entropy on the label token over the full vocabulary (``loss="label"``),
  the whole model (``"all"``) or W_V of one layer (``params="wv:LAYER"``), SGD or Adam, many epochs.
- Deutch et al. 2024, layer-causal GD (``layer_causal=True``): every layer's output goes through
  the final norm and the unembedding, L = Σ_l CE(unembed(norm(h_l))), and each layer's input is
  detached, so layer l is trained only by its own intermediate prediction.

A demo's training sequence is the zero-shot prompt of that demo followed by its answer tokens
(``input_prefix x in_out_sep output_prefix y``): the tokens of the demo's block in the ICL prompt.

:class:`GDCounterpart` holds the copy: a :class:`~interp.model.Model` on its own weights (the
user's model is never touched) plus a plain transformers twin sharing those weights, which is
what the optimizer steps.  :meth:`GDCounterpart.fit` trains from the original weights every time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from interp.plain import plain_twin


def describe_gd(config) -> str:
    """A :class:`GDConfig` (or its ``to_dict()``) in words, for reports: "k_proj+v_proj, SGD lr
    0.01, 1 epoch, batch 1, loss on every demo token"."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    params = {"kv": "k_proj+v_proj of every layer", "all": "every parameter"}.get(c["params"], c["params"])
    if str(c["params"]).startswith("wv:"):
        params = f"W_V of layer {c['params'][3:]}"
    loss = "every demo token" if c["loss"] == "all" else "the label token"
    epochs = f"{c['epochs']} epoch" + ("s" if c["epochs"] != 1 else "")
    return (f"{params}, {c['optimizer'].upper() if c['optimizer'] == 'sgd' else 'Adam'} lr {c['lr']:g}, {epochs}, batch "
            f"{c['batch_size']}, loss on {loss}" + (", layer-causal" if c.get("layer_causal") else ""))


@dataclass(frozen=True)
class GDConfig:
    """How the copy is fine-tuned (see the module docstring for the papers' settings)."""

    params: str = "kv"  # "kv" | "wv:LAYER" | "all" | a regular expression over parameter names
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 1
    loss: Literal["label", "all"] = "label"
    layer_causal: bool = False

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.loss not in ("label", "all"):
            raise ValueError(f"loss must be 'label' (the answer token) or 'all' (every demo token), got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        import math

        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def select_parameters(names: Sequence[str], spec: str, arch=None) -> list[str]:
    """The parameter names ``spec`` trains: ``"kv"`` (every key and value projection's weight and
    bias, Dai), ``"wv:L"`` (layer L's value projection, Shen), ``"all"``, or a regular expression
    (``re.search``).  Module paths come from ``arch`` (:mod:`interp.architectures`; Llama's when
    None)."""
    if arch is None:
        from interp.architectures import ARCHITECTURES

        arch = ARCHITECTURES["llama"]
    if spec == "kv":
        chosen = arch.kv_parameter_names(names)
    elif spec == "all":
        chosen = list(names)
    elif spec.startswith("wv:"):
        layer = spec[3:]
        if not layer.isdigit():
            raise ValueError(f"params={spec!r}: write wv:LAYER with an integer layer, e.g. wv:15")
        chosen = arch.kv_parameter_names(names, layer=int(layer))
    else:
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ValueError(f"params={spec!r} is neither kv, wv:LAYER, all nor a valid regular expression ({e})") from None
        chosen = [n for n in names if pattern.search(n)]
    if not chosen:
        raise ValueError(f"params={spec!r} matches no parameter; names look like {list(names)[:3]}")
    return chosen


@dataclass
class FitRecord:
    """What one fine-tuning run did: per-step losses, the order and the trained names.
    ``train_queries[l][i]`` is layer l's scaled query vectors q/√d_head (all heads concatenated)
    at every token of demo i during its last training forward (Dai's FT-side attention keys)."""

    losses: list[float]
    order: list[int]
    trained: list[str]
    train_queries: list[list[torch.Tensor]] = field(default_factory=list, repr=False)


def demo_sequences(tokenizer, task, demos) -> tuple[list[list[int]], list[int]]:
    """Each demo's training tokens (its zero-shot prompt + answer tokens) and the index of the
    position that predicts the answer's first token."""
    from interp.prompts import build_icl_batch, tokenize_piece

    batch = build_icl_batch(tokenizer, task, k=0, queries=list(demos), pool=[], padding_side="right")
    template = batch.template
    seqs, predict_at = [], []
    for i, d in enumerate(demos):
        r = batch.rows[i]
        prompt = batch.input_ids[i, r.start: r.start + r.length].tolist()
        answer = tokenize_piece(tokenizer, (" " if template.space_before_text else "") + d.output)
        seqs.append(prompt + answer)
        predict_at.append(len(prompt) - 1)
    return seqs, predict_at


def clone_model(model):
    """A :class:`Model` on an independent copy of ``model``'s weights, same engine."""
    from interp.model import Model

    from interp.engines.torch_engine import TorchEngine

    hf_copy = plain_twin(model.hf_model, share_weights=False)
    # the plain-PyTorch engine: its twin shares the copy's parameter tensors, so what fit()
    # writes is what runs (a TransformerLens bridge splits fused q/k/v into its own copies)
    return Model(TorchEngine(hf_copy, model.tokenizer), name=f"{model.name} (GD copy)", tokenizer=model.tokenizer)


class GDCounterpart:
    """A private copy of ``model`` that :meth:`fit` fine-tunes (always from the original
    weights) and that runs through the same facade as the original (``.model``)."""

    def __init__(self, model):
        self.original_name = model.name
        self.model = clone_model(model)
        self.twin = plain_twin(self.model.hf_model)  # shares the copy's parameter tensors
        from interp.architectures import architecture_of

        self.arch = architecture_of(self.twin)
        self.names = [n for n, _ in self.twin.named_parameters()]
        self._saved: dict[str, torch.Tensor] = {}
        for p in self.twin.parameters():
            p.requires_grad_(False)

    def reset(self) -> None:
        """Put the trained parameters back to the original weights."""
        params = dict(self.twin.named_parameters())
        with torch.no_grad():
            for n, v in self._saved.items():
                params[n].copy_(v)
        self._saved = {}

    def fit(self, sequences: Sequence[Sequence[int]], predict_at: Sequence[int], config: GDConfig,
            order: Sequence[int] | None = None, record_queries: bool = False) -> FitRecord:
        """Fine-tune on ``sequences`` (one per demo) in ``order`` (default as given), ``config.epochs``
        passes of minibatches of ``config.batch_size`` consecutive demos."""
        self.reset()
        order = list(range(len(sequences))) if order is None else [int(i) for i in order]
        if sorted(order) != list(range(len(sequences))):
            raise ValueError(f"order must be a permutation of 0..{len(sequences) - 1}, got {order}")
        params = dict(self.twin.named_parameters())
        trained = select_parameters(self.names, config.params, self.arch)
        self._saved = {n: params[n].detach().clone() for n in trained}
        masks = self._fused_masks(trained, config.params)
        grad_hooks = []
        for n in trained:
            params[n].requires_grad_(True)
        opt = (torch.optim.SGD([params[n] for n in trained], lr=config.lr) if config.optimizer == "sgd"
               else torch.optim.Adam([params[n] for n in trained], lr=config.lr))
        losses: list[float] = []
        n_layers = len(self.arch.layer_list(self.twin))
        queries: list[list[torch.Tensor | None]] = [[None] * len(sequences) for _ in range(n_layers)]
        try:
            grad_hooks += [params[n].register_hook(lambda g, m=m: g * m.to(g.device, g.dtype)) for n, m in masks.items()]
            self.twin.train(False)
            for _ in range(config.epochs):
                for start in range(0, len(order), config.batch_size):
                    idx = order[start: start + config.batch_size]
                    loss, q = self._loss([sequences[i] for i in idx], [predict_at[i] for i in idx], config, record_queries)
                    if not bool(torch.isfinite(loss)):
                        raise ValueError(f"the fine-tuning loss became {float(loss.detach())} at step {len(losses) + 1} (lr={config.lr}): "
                                         "the GD counterpart diverged; use a smaller lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                    for l, per_row in enumerate(q):
                        for j, i in enumerate(idx):
                            queries[l][i] = per_row[j]
        finally:
            for h in grad_hooks:
                h.remove()
            for n in trained:
                params[n].requires_grad_(False)
                params[n].grad = None
        return FitRecord(losses, order, trained, queries if record_queries else [])

    def _fused_masks(self, trained: Sequence[str], spec: str) -> dict[str, torch.Tensor]:
        """For ``kv`` / ``wv:L`` on a family with one fused q/k/v projection: a 0/1 mask per fused
        parameter that keeps only the key and value (or value) output features' gradient, so the
        query part stays as it was (Dai et al. train W_K and W_V only)."""
        arch = self.arch
        if arch.qkv is None or not (spec == "kv" or spec.startswith("wv:")):
            return {}
        rows = arch.fused_rows(self.twin.config, ("k", "v") if spec == "kv" else ("v",)).float()
        params = dict(self.twin.named_parameters())
        masks = {}
        for n in trained:
            p = params[n]
            if p.ndim == 1:
                masks[n] = rows
            elif arch.conv1d:  # Conv1D weight [in, out]
                masks[n] = rows[None, :].expand_as(p)
            else:  # Linear weight [out, in]
                masks[n] = rows[:, None].expand_as(p)
        return masks

    def _loss(self, seqs, predict_at, config: GDConfig, record_queries: bool):
        twin = self.twin
        device = next(twin.parameters()).device
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        # which positions are scored and against which next token
        weights = torch.zeros(len(seqs), width, device=device)
        for i, s in enumerate(seqs):
            if config.loss == "label":
                weights[i, predict_at[i]] = 1.0
            else:
                weights[i, : len(s) - 1] = 1.0 / (len(s) - 1)
        targets = torch.roll(ids, -1, dims=1)
        arch = self.arch
        layers = arch.layer_list(twin)
        handles, hidden, qs = [], [], [[] for _ in layers]
        d_head = getattr(twin.config, "head_dim", None) or twin.config.hidden_size // twin.config.num_attention_heads
        try:
            if config.layer_causal:
                def detach_input(module, args, kwargs):
                    if args:
                        return (args[0].detach(), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}

                def keep_output(module, args, out):
                    hidden.append(out[0] if isinstance(out, tuple) else out)
                for layer in layers:
                    handles.append(layer.register_forward_pre_hook(detach_input, with_kwargs=True))
                    handles.append(layer.register_forward_hook(keep_output))
            if record_queries:
                n_heads = twin.config.num_attention_heads
                n_kv = getattr(twin.config, "num_key_value_heads", None) or n_heads
                for l in range(len(layers)):
                    def keep_q(module, args, out, l=l):
                        if arch.q is None:  # the query part of the fused projection
                            out = arch.split_qkv(out, n_heads, n_kv, d_head)[0].flatten(2)
                        qs[l] = [(out[i, : len(s)] / d_head ** 0.5).detach().cpu() for i, s in enumerate(seqs)]
                    handles.append(arch.sub(twin, l, "q" if arch.q is not None else "qkv").register_forward_hook(keep_q))
            # the label loss scores a few positions: unembed only those (a large vocabulary makes
            # the full projection the bulk of the step)
            keep = torch.unique(torch.tensor(list(predict_at), device=device)) if config.loss == "label" and not config.layer_causal else None
            out = twin(input_ids=ids, attention_mask=mask, **({} if keep is None else {"logits_to_keep": keep}))
            if keep is not None:
                targets, weights = targets[:, keep], weights[:, keep]
        finally:
            for h in handles:
                h.remove()
        if config.layer_causal:
            norm, unembed = arch.top(twin, "final_norm"), arch.top(twin, "unembed")
            cap = arch.softcaps(twin.config)[1]
            logits_per_layer = [unembed(norm(h)) for h in hidden]
            if cap:
                logits_per_layer = [torch.tanh(lg / cap) * cap for lg in logits_per_layer]
        else:
            logits_per_layer = [out.logits]
        loss = sum(_weighted_ce(lg, targets, weights, len(seqs)) for lg in logits_per_layer)
        return loss, (qs if record_queries else [])


def _weighted_ce(logits, targets, weights, n_rows):
    """Σ over rows of the weighted token NLL, averaged over the rows of the minibatch."""
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # [b, pos]
    return (nll * weights).sum() / n_rows


def parameter_hash(model) -> str:
    """SHA-256 over every parameter's bytes in name order: equal hashes = bit-identical weights.
    Names are the transformers ones whatever wraps the model (a bridge's aliases count once), so
    the same weights hash alike on every engine."""
    import hashlib

    h = hashlib.sha256()
    hf = model.hf_model if hasattr(model, "hf_model") else model
    if hasattr(hf, "config") and hasattr(hf.config, "model_type"):  # a transformers model, maybe bridge-converted
        from interp.plain import plain_twin

        hf = plain_twin(hf)  # the transformers names over the same tensors
    for name, p in sorted(hf.state_dict(keep_vars=False).items()):
        h.update(name.encode())
        p = p.detach().cpu().contiguous().reshape(-1)  # flat: a 0-d tensor has no last dim to view as bytes
        h.update(p.view(torch.uint8).numpy() if p.dtype != torch.bool else p.numpy())  # the buffer itself, not a copy
    return h.hexdigest()


__all__ = ["GDConfig", "GDCounterpart", "FitRecord", "select_parameters", "demo_sequences", "clone_model", "parameter_hash"]
