"""Shared fixtures: a tiny random GQA Llama with a character tokenizer (unit tests) and the
embedded SmolLM2 (integration tests, loaded once per session)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'\n-")


def make_char_tokenizer():
    """A character-level fast tokenizer built offline (pad id 0, unk id 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    # round-trip through disk so the tokenizer looks like a loaded one (TransformerLens reads
    # init_kwargs["name_or_path"])
    import tempfile
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        fast.save_pretrained(d)
        return AutoTokenizer.from_pretrained(d)


def make_tiny_llama(seed: int = 0, vocab_size: int = len(CHARS) + 2, attn_implementation: str = "eager", n_layers: int = 2,
                    n_ctx: int = 64):
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_ctx,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).eval()
    return model


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture()
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Llama and the character tokenizer saved as a local model folder (for the CLI)."""
    d = tmp_path_factory.mktemp("tiny")
    make_tiny_llama().save_pretrained(d)
    make_char_tokenizer().save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer, from the embedded model's converted copy."""
    pytest.importorskip("gguf")
    from interp.embedded import load_embedded

    try:
        _, tok = load_embedded()
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
    return tok


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2 behind the TransformerLens engine (shared, do not edit weights)."""
    from interp import load_model

    try:
        return load_model("smollm2-135m")
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (bit-reproducible training), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: The toy two-class task of the analysis tests: 21 four-letter inputs, labels "x" / "y" alternating.
TOY_WORDS = ["x", "y"]
TOY_INPUTS = [f"{a}{b} {c}{d}" for a, b, c, d in zip("abcdefghijklmnopqrstu", "bcdefghijklmnopqrstuv", "mnopqrstuvwxyzabcdefg",
                                                     "qrstuvwxyzabcdefghijk")]


def make_toy_task():
    """The toy classification task (character tokenizer friendly: no space before the text)."""
    from interp.prompts import Template
    from interp.tasks import Example, Task

    return Task("toy", [Example(t, TOY_WORDS[i % 2], i % 2) for i, t in enumerate(TOY_INPUTS)], kind="classification",
                label_words=TOY_WORDS, template=Template(space_before_text=False))
