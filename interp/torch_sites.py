"""Sites as plain PyTorch hooks on a transformers model, read from the architecture table.

:func:`site_hooks` turns (site, fn) pairs — fn gets the activation in the TransformerLens layout
of :mod:`interp.sites` and returns None (read) or a replacement — into torch forward hooks on the
modules :mod:`interp.architectures` names, plus tap callbacks inside :mod:`interp.attention` for
the attention internals.  The model must run the tapped attention (:func:`interp.attention.use_tapped`),
which only the project's own plain twins do.

What each site is (the meaning the README states for every engine):

- ``hook_embed``: the token-embedding module's output (Gemma: already scaled by √d_model);
- ``hook_resid_pre`` / ``hook_resid_post``: the decoder layer's input / output;
- ``attn.hook_q/k/v``: the projections' outputs split per head (fused q/k/v split as the family does);
- ``attn.hook_rot_q/rot_k``, ``hook_attn_scores``, ``hook_pattern``: what attention receives and
  computes (after q/k norms and rotary; scores pre-softmax with softcap and mask);
- ``attn.hook_z``: the output projection's input, per head;
- ``hook_attn_out`` / ``hook_mlp_out``: what the sublayer adds to the residual stream (the output
  of the post-norm where the family has one);
- ``hook_resid_mid``: resid_pre + attn_out (sequential blocks only); written by changing what
  attention adds, so the MLP input and the carried residual both see the new value;
- ``logits``: the model's output logits (after final softcapping).

:class:`HookSet` removes every handle when its block exits, also when the forward raises, and
records which sites fired.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from interp.attention import tapping
from interp.sites import Site

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
TAP_SITES = {"attn.hook_rot_q": "rot_q", "attn.hook_rot_k": "rot_k", "attn.hook_attn_scores": "scores", "attn.hook_pattern": "pattern"}


class ParallelBlockError(ValueError):
    pass


def check_site_exists(arch, config, site: Site) -> None:
    """Raise when ``site`` has no meaning on this family (resid_mid in a parallel block)."""
    if site.hook == "hook_resid_mid" and arch.is_parallel(config):
        raise ParallelBlockError(
            f"{site.name}: {arch.name} runs attention and the MLP in parallel on the same input, so there is no residual "
            "stream between them; use hook_resid_pre (their common input), hook_attn_out or hook_mlp_out"
        )


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


class HookSet:
    """Installs hooks for (site, fn) pairs; use as a context manager."""

    def __init__(self, model: torch.nn.Module, arch, n_heads: int, n_kv_heads: int, d_head: int,
                 hooks: Sequence[tuple[Site, HookFn]]):
        self.model, self.arch = model, arch
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head
        self.hooks = list(hooks)
        self.fired: set[str] = set()
        for site, _ in self.hooks:
            check_site_exists(arch, model.config, site)

    def _mark(self, site: Site, fn: HookFn) -> HookFn:
        def wrapped(t):
            self.fired.add(site.name)
            return fn(t)
        return wrapped

    @contextmanager
    def installed(self):
        handles = []
        taps: dict[int, list] = {}
        mids = []
        try:
            for site, fn in self.hooks:
                fn = self._mark(site, fn)
                if site.hook in TAP_SITES:
                    attn = self.arch.sub(self.model, site.layer, "attn")
                    taps.setdefault(id(attn), []).append((TAP_SITES[site.hook], site.hook, fn))
                elif site.hook == "hook_resid_mid":
                    mids.append((site, fn))
                else:
                    handles += self._register(site, fn)
            for site, fn in mids:  # after the others: sees resid_pre after its edits
                handles += self._register_mid(site, fn)
            with tapping({k: tap_callback(v) for k, v in taps.items()}):
                yield self
        finally:
            for h in handles:
                h.remove()

    # --- one site ------------------------------------------------------------------------------
    def _register(self, site: Site, fn: HookFn) -> list:
        arch, m, hook = self.arch, self.model, site.hook
        if site.layer is None:
            if hook == "hook_embed":
                return [arch.top(m, "embed").register_forward_hook(lambda mod, a, out: fn(out))]
            if hook == "logits":
                def on_logits(mod, args, out):
                    new = fn(out.logits)
                    if new is not None:
                        out["logits"] = new
                    return out
                return [m.register_forward_hook(on_logits)]
            raise ValueError(f"no torch hook for {site.name}")
        layer = arch.layer(m, site.layer)
        if hook == "hook_resid_pre":
            def pre(mod, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                new = fn(hidden)
                if new is None:
                    return None
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
            return [layer.register_forward_pre_hook(pre, with_kwargs=True)]
        if hook == "hook_resid_post":
            def post(mod, args, out):
                new = fn(_first(out))
                return None if new is None else _replace_first(out, new)
            return [layer.register_forward_hook(post)]
        if hook in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
            return [self._register_qkv(site, fn)]
        if hook == "attn.hook_z":
            def z_pre(mod, args):
                z = args[0]
                new = fn(z.view(*z.shape[:-1], self.n_heads, self.d_head))
                return None if new is None else (new.reshape(z.shape), *args[1:])
            return [arch.sub(m, site.layer, "o").register_forward_pre_hook(z_pre)]
        if hook == "hook_attn_out":
            return [self._out_module(site.layer, "attn").register_forward_hook(_first_output_hook(fn))]
        if hook == "hook_mlp_out":
            shape = {}
            keep = layer.register_forward_pre_hook(
                lambda mod, args, kwargs: shape.__setitem__("bp", (args[0] if args else kwargs["hidden_states"]).shape[:2]),
                with_kwargs=True)
            return [keep, self._out_module(site.layer, "mlp").register_forward_hook(_first_output_hook(fn, shape))]
        raise ValueError(f"no torch hook for {site.name}")

    def _out_module(self, layer: int, sublayer: str) -> torch.nn.Module:
        post = self.arch.sub(self.model, layer, "post_attn_norm" if sublayer == "attn" else "post_mlp_norm")
        return post if post is not None else self.arch.sub(self.model, layer, sublayer)

    def _register_qkv(self, site: Site, fn: HookFn):
        arch, m = self.arch, self.model
        which = site.hook[-1]  # q, k or v
        heads = self.n_heads if which == "q" else self.n_kv_heads
        if arch.qkv is None:
            def on_proj(mod, args, out):
                new = fn(out.view(*out.shape[:-1], heads, self.d_head))
                return None if new is None else new.reshape(out.shape)
            return arch.sub(m, site.layer, which).register_forward_hook(on_proj)

        def on_fused(mod, args, out):
            parts = list(arch.split_qkv(out, self.n_heads, self.n_kv_heads, self.d_head))
            i = "qkv".index(which)
            new = fn(parts[i])
            if new is None:
                return None
            parts[i] = new
            return arch.join_qkv(*parts).reshape(out.shape)
        return arch.sub(m, site.layer, "qkv").register_forward_hook(on_fused)

    def _register_mid(self, site: Site, fn: HookFn) -> list:
        seen = {}
        layer = self.arch.layer(self.model, site.layer)

        def keep_pre(mod, args, kwargs):
            seen["pre"] = args[0] if args else kwargs["hidden_states"]

        def on_attn_out(mod, args, out):
            pre, attn_out = seen["pre"], _first(out)
            new = fn(pre + attn_out)
            return None if new is None else _replace_first(out, new - pre)

        return [layer.register_forward_pre_hook(keep_pre, with_kwargs=True),
                self._out_module(site.layer, "attn").register_forward_hook(on_attn_out)]


def _first_output_hook(fn: HookFn, shape: dict | None = None):
    """Hook on a sublayer's output module; ``shape`` (OPT's MLP runs on [batch * pos, d]) holds
    the [batch, pos] to view a flattened output as."""
    def hook(mod, args, out):
        value = _first(out)
        flat = shape is not None and value.ndim == 2
        if flat:
            value = value.view(*shape["bp"], -1)
        new = fn(value)
        if new is None:
            return None
        return _replace_first(out, new.reshape(_first(out).shape) if flat else new)
    return hook


def tap_callback(entries):
    """One tap callback for an attention module: converts to TransformerLens layout and back."""
    def callback(point, value):
        changed = False
        for p, hook, fn in entries:
            if p != point:
                continue
            tl = value.transpose(1, 2) if p in ("rot_q", "rot_k") else value  # [b, head, q, d] -> [b, q, head, d]
            new = fn(tl)
            if new is not None:
                value = new.transpose(1, 2) if p in ("rot_q", "rot_k") else new
                changed = True
        return value if changed else None
    return callback


def installed(model, arch, facts, hooks: Sequence[tuple[Site, HookFn]]):
    """Context manager: the hooks are live inside, removed on exit (also on error); it yields
    the :class:`HookSet`, whose ``fired`` names the sites that ran."""
    return HookSet(model, arch, facts.n_heads, facts.n_kv_heads, facts.d_head, hooks).installed()
