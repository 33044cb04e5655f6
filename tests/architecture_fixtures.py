"""Tiny random models of every family in the architecture table, built offline from their configs:
2 layers, GQA where the family has it, norm weights and biases moved away from their init,
``config.architectures`` set as a checkpoint has it.  ``mistral-sw16`` has a sliding window of
16 and is run on 40-token prompts, so the window is shorter than the prompt; ``phi3-partial``
rotates half of each head's features (``partial_rotary_factor=0.5``, as Phi-3.5/4 do)."""
from __future__ import annotations

import copy

import torch

VOCAB = 80
SEQ = 40


def family_configs(n_ctx: int = 64) -> dict:
    import transformers as T

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=n_ctx, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    gqa = dict(common, num_key_value_heads=2)
    return {
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=n_ctx, bos_token_id=None, eos_token_id=None),
        "gpt_neox": T.GPTNeoXConfig(**common, rotary_pct=0.25),
        "gptj": T.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=n_ctx, rotary_dim=4,
                             bos_token_id=None, eos_token_id=None),
        "opt": T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=n_ctx, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=None, eos_token_id=None),
        "llama": T.LlamaConfig(**gqa),
        "mistral-sw16": T.MistralConfig(**gqa, sliding_window=16),
        "qwen2": T.Qwen2Config(**gqa),
        "qwen3": T.Qwen3Config(**gqa, head_dim=8),
        "gemma2": T.Gemma2Config(**gqa, head_dim=8, sliding_window=16),
        "gemma3": T.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
        "phi3": T.Phi3Config(**gqa),
        "phi3-partial": T.Phi3Config(**gqa, partial_rotary_factor=0.5),
        "olmo2": T.Olmo2Config(**gqa),
    }


FAMILIES = list(family_configs())


def make_family_model(name: str, seed: int = 0, attn_implementation: str = "eager", n_ctx: int = 64):
    import transformers as T

    config = family_configs(n_ctx)[name]
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    model.config.architectures = [type(model).__name__]
    with torch.no_grad():  # norm weights and biases away from 1 / 0
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


# the four ways a model reaches the toolkit
ENGINES = ["nnsight", "transformer-lens", "user-bridge", "user-nnsight"]


def facade(model, engine: str, tokenizer):
    """``load_model`` over what a user of ``engine`` passes in: the transformers model itself
    (``engine=...``), a TransformerBridge the user booted, or an nnsight model the user built
    (both around a copy, as a user's own would be)."""
    from interp.loading import load_model

    if engine == "user-bridge":
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers("tiny", hf_model=copy.deepcopy(model), tokenizer=copy.deepcopy(tokenizer))
        return load_model(bridge, tokenizer=tokenizer)
    if engine == "user-nnsight":
        from nnsight.modeling.transformers import TransformersModel

        return load_model(TransformersModel(copy.deepcopy(model), tokenizer=tokenizer), tokenizer=tokenizer)
    return load_model(model, engine=engine, tokenizer=tokenizer)


def family_batch(seed: int = 0):
    """A left-padded batch of two 40-token rows (ids 2..69)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 70, (2, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    ids[0, :5] = 0
    return ids, mask


def model_fingerprint(model) -> dict:
    """What must not change on a user's model: weights, requires_grad, hooks, attributes,
    training flags, attention implementation."""
    from interp.verify import count_hooks

    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "hooks": count_hooks(model),
        "attrs": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "training": {n: m.training for n, m in model.named_modules()},
        "forward": {n: ("forward" in vars(m)) for n, m in model.named_modules()},
        "attn": model.config._attn_implementation,
    }


def assert_same_fingerprint(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    for key in ("requires_grad", "hooks", "attrs", "training", "forward", "attn"):
        assert before[key] == after[key], key
