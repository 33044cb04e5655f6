"""TransformerLens 4 engine: a ``TransformerBridge`` around the transformers model.

TransformerLens names are the site vocabulary, so sites map onto hook points one to one
(``logits`` is ``unembed.hook_out``).  Hooks are added with ``bridge.hooks(...)``, which removes
exactly the hooks it added when the call returns or raises; hooks a user attached stay.

````boot_transformers`` converts the model it is given in place (eager attention, bridge
submodules) and rewrites the tokenizer's special tokens, so a model the user passed in is
deep-copied first and the bridge always gets a copy of the tokenizer: the user's objects keep
behaving as before.  A model with an empty ``config.architectures`` (fresh from a GGUF) gets its
class name there, on the copy.

Attention internals mean the same as on the other engines (what the attention function receives
and computes, :mod:`interp.attention`).  For families whose bridge calls the transformers
attention module itself (GPT-J, OPT, ...), TransformerLens's ``hook_attn_scores`` is the
post-softmax pattern and its knockouts are only warned about; there the copy runs the tapped
attention and these four sites are its tap points.  Where the bridge computes attention itself,
its own hooks are used; on a model without rotary positions ``hook_rot_q/rot_k`` are the
queries/keys attention receives (``hook_q/hook_k``).  A site whose hook does not fire raises.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from interp.attention import set_implementation, tapping, use_tapped
from interp.engines.base import Engine, HookFn, ModelFacts
from interp.sites import Site
from interp.torch_sites import TAP_SITES, tap_callback

_GLOBAL_HOOK_NAMES = {"logits": "unembed.hook_out", "hook_embed": "hook_embed"}


class TransformerLensEngine(Engine):
    name = "transformer-lens"

    def __init__(self, bridge, tokenizer=None, *, owned: bool = False):
        self.bridge = bridge
        cfg = bridge.cfg
        self.tokenizer = tokenizer if tokenizer is not None else bridge.tokenizer
        self.facts = ModelFacts(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            d_head=cfg.d_head,
            d_model=cfg.d_model,
            n_ctx=cfg.n_ctx,
            d_vocab=cfg.d_vocab,
        )
        # only a bridge this engine booted (on its own copy) is switched to the tapped attention;
        # a user's bridge runs as the user built it
        self._attn_modules = self._find_tapped_attention() if owned else None
        self._rotary = any(n.endswith("attn.hook_rot_q") for n in bridge.hook_dict)
        # some bridges compute rotary attention without firing hook_rot_q/k (GPT-NeoX, Phi-3 in
        # TransformerLens 4.3): there rot_q/rot_k are derived from hook_q/hook_k and hook_cos/sin
        self._derive_rotary = self._attn_modules is None and self._rotary
        self.served_by = ("a TransformerLens bridge on a copy of the model" if owned else "the user's TransformerLens bridge") + (
            " (tapped attention)" if self._attn_modules is not None else "")

    @classmethod
    def from_hf(cls, hf_model, tokenizer, *, copy_model: bool = True, name: str = "model") -> "TransformerLensEngine":
        """Boot a bridge around ``hf_model`` (a deep copy unless ``copy_model=False``)."""
        from transformer_lens.model_bridge import TransformerBridge

        model = copy.deepcopy(hf_model) if copy_model else hf_model
        if not getattr(model.config, "architectures", None):
            model.config.architectures = [type(model).__name__]
        # booting also rewrites the tokenizer (padding side, bos/eos/pad tokens): give it a copy
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=model, tokenizer=copy.deepcopy(tokenizer), dtype=next(model.parameters()).dtype
        )
        bridge.eval()
        return cls(bridge, tokenizer, owned=True)

    @classmethod
    def for_bridge(cls, bridge, tokenizer=None) -> "TransformerLensEngine":
        """The engine over a user's bridge: the bridge itself, as the user built it, unless its
        ``hook_attn_scores`` is the post-softmax pattern (the bridge hands attention to the
        transformers module, GPT-J and OPT in TransformerLens 4.3; its knockouts are then only
        warned about).  There a private bridge is booted on a copy of ``bridge.original_model``
        and runs the tapped attention, so scores are pre-softmax and every edit takes effect;
        the user's bridge is left as it is (hooks the user attached to it do not run)."""
        if _scores_are_post_softmax(bridge):
            from interp.plain import plain_twin

            # a plain copy (the bridge's model holds bridge components and hooks tied to it)
            engine = cls.from_hf(plain_twin(bridge.original_model, share_weights=False),
                                 tokenizer if tokenizer is not None else bridge.tokenizer,
                                 copy_model=False, name=getattr(bridge.cfg, "model_name", "bridge"))
            engine.served_by = "a private TransformerLens bridge on a copy of the bridge's model (tapped attention)"
            return engine
        return cls(bridge, tokenizer)

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.bridge.original_model

    def hook_name(self, site: Site) -> str:
        return _GLOBAL_HOOK_NAMES[site.hook] if site.layer is None else site.name

    def _find_tapped_attention(self) -> list | None:
        """The transformers attention module of every layer, when the bridge calls them (then
        the copy is switched to the tapped attention); None when the bridge computes attention
        itself.  Decided by one tiny forward whose tap callbacks count."""
        from interp.architectures import UnsupportedArchitecture, architecture_of
        from interp.plain import _plain_key

        try:
            arch = architecture_of(self.hf_model)
        except UnsupportedArchitecture:  # a family outside the table: TransformerLens's hooks only
            return None
        paths = {arch.path(l, "attn"): l for l in range(self.facts.n_layers)}
        modules = [None] * self.facts.n_layers
        for name, module in self.hf_model.named_modules():
            l = paths.get(_plain_key(name))
            if l is not None and modules[l] is None and type(module).__name__.endswith("Attention"):
                modules[l] = module
        if any(m is None for m in modules):
            return None
        previous = self.hf_model.config._attn_implementation
        use_tapped(self.hf_model)
        seen = set()
        with tapping({id(m): (lambda p, v, l=l: seen.add(l)) for l, m in enumerate(modules)}), torch.no_grad():
            self.bridge(torch.zeros(1, 2, dtype=torch.long, device=next(self.hf_model.parameters()).device))
        if len(seen) == len(modules):
            return modules
        set_implementation(self.hf_model, previous)  # not called: put the implementation back
        return None

    def check_sites(self, sites: Sequence[Site]) -> None:
        from interp.architectures import ARCHITECTURES
        from interp.torch_sites import check_site_exists

        arch = ARCHITECTURES.get(getattr(self.hf_model.config, "model_type", None))
        if arch is not None:
            for s in sites:
                check_site_exists(arch, self.hf_model.config, s)

    def hook_point(self, site: Site) -> str:
        """The bridge hook point that carries ``site``."""
        if site.hook in ("attn.hook_rot_q", "attn.hook_rot_k") and not self._rotary:
            return site.name.replace("hook_rot_", "hook_")
        name = self.hook_name(site)
        if name not in self.bridge.hook_dict:
            raise ValueError(f"{site.name}: TransformerLens's bridge for this model has no hook point {name!r}; use engine='nnsight'")
        return name

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                keep: int | torch.Tensor | None = None) -> torch.Tensor:
        from interp.engines.torch_engine import raise_unfired

        fired: set[str] = set()

        def mark(site, fn):
            def wrapped(t):
                fired.add(site.name)
                return fn(t)
            return wrapped

        fwd_hooks, taps, derived, parts = [], {}, [], {}
        for site, fn in hooks:
            if self._derive_rotary and site.hook in _ROT:  # the hook point, and what to derive it from if it does not fire
                derived.append((site, mark(site, fn)))
                for part in (_ROT[site.hook], "hook_cos", "hook_sin"):
                    name = f"blocks.{site.layer}.attn.{part}"
                    if name not in parts:
                        parts[name] = None
                        fwd_hooks.append((name, _keep(parts, name)))
                fwd_hooks.append((self.hook_point(site), _tl_hook(mark(site, fn))))
            elif self._attn_modules is not None and site.hook in TAP_SITES:
                taps.setdefault(id(self._attn_modules[site.layer]), []).append((TAP_SITES[site.hook], site.hook, mark(site, fn)))
            else:
                fwd_hooks.append((self.hook_point(site), _tl_hook(mark(site, fn))))
        extra = {} if keep is None else {"logits_to_keep": keep}
        with tapping({k: tap_callback(v) for k, v in taps.items()}), self.bridge.hooks(fwd_hooks=fwd_hooks):
            out = self.bridge(input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra)
        for site, fn in derived:
            if site.name not in fired:
                _call_derived(site, fn, parts)
        raise_unfired(hooks, fired, self.name)
        return out

    def W_O(self, layer: int) -> torch.Tensor:
        return self.bridge.blocks[layer].attn.W_O

    def b_O(self, layer: int) -> torch.Tensor | None:
        b = getattr(self.bridge.blocks[layer].attn, "b_O", None)
        return None if b is None or not bool(b.any()) else b


_ROT = {"attn.hook_rot_q": "hook_q", "attn.hook_rot_k": "hook_k"}


def _keep(parts: dict, name: str):
    def hook(tensor, hook):
        parts[name] = tensor.detach()
    return hook


def _call_derived(site: Site, fn, parts: dict) -> None:
    """Rotary q/k from the bridge's q/k [b, p, head, d] and cos/sin [b, p, r] of the same run:
    the first r features rotated as transformers' ``apply_rotary_pos_emb`` does (rotate_half),
    the rest passed through (partial rotary).  Capture only: an edit cannot reach back into a
    run that is over."""
    base = f"blocks.{site.layer}.attn."
    x, cos, sin = (parts.get(base + p) for p in (_ROT[site.hook], "hook_cos", "hook_sin"))
    if x is None or cos is None or sin is None:
        return  # not fired: raise_unfired names the site
    r = cos.shape[-1]
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2:], rot[..., : r // 2]], dim=-1)
    value = torch.cat([rot * cos + half * sin, rest], dim=-1)
    out = fn(value)
    if out is not None and out is not value and not torch.equal(out, value):
        raise ValueError(f"{site.name}: this TransformerLens bridge computes rotary attention without a hook point for it, "
                         "so the engine derives it from hook_q/hook_k and the rotary cos/sin after the run; it can be "
                         "captured but not edited here: use engine='nnsight' to edit it")


def _scores_are_post_softmax(bridge) -> bool:
    """Whether the bridge's ``hook_attn_scores`` carries the pattern.  TransformerLens's base
    ``AttentionBridge.forward`` runs the transformers attention module and fires
    ``hook_attn_scores`` afterwards with the attention weights it returns (post-softmax); the
    subclasses that compute attention themselves override ``forward``.  Read from the bridge's
    classes, not from a probe run: a run would fire the user's own hooks."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    blocks = getattr(bridge, "blocks", None)
    attn = getattr(blocks[0], "attn", None) if blocks is not None and len(blocks) else None
    return attn is not None and type(attn).forward is AttentionBridge.forward


def _tl_hook(fn: HookFn):
    def hook(tensor, hook):  # TransformerLens calls hook(tensor, hook=HookPoint)
        return fn(tensor)

    return hook
