"""ICL prompt building: exact spans on four tokenizers, padding, seeds, labels, errors."""
from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tokenizer_fixtures

import tokenizer_fixtures as tf  # noqa: E402

from interp.prompts import (  # noqa: E402
    IclBatch,
    LabelWords,
    Template,
    adds_dummy_prefix,
    build_icl_batch,
    most_similar_first,
    tokenize_piece,
)
from interp.tasks import Example, Task  # noqa: E402

# --------------------------------------------------------------------------------------------
# Tasks (characters all inside tf.CHARS)
# --------------------------------------------------------------------------------------------

SENTENCES = [
    ("the movie was great and I loved it.", 1), ("a terrible film, truly awful.", 0),
    ("the food was good and the service kind.", 1), ("boring plot and bad acting.", 0),
    ("wonderful music, great book!", 1), ("the service was slow and rude.", 0),
    ("I loved this film.", 1), ("I hated the plot.", 0), ("good acting and a great plot.", 1),
    ("awful food, terrible service.", 0), ("a kind and wonderful movie.", 1),
    ("the music was boring.", 0),
]
WORDS = ["negative", "positive"]
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Chile", "Santiago"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Cuba", "Havana"),
]
REVIEW = Template(input_prefix="Review:", output_prefix="Sentiment:", in_out_sep="\n", demo_sep="\n\n")


def cls_task() -> Task:
    return Task("toy-sentiment", [Example(x, WORDS[y], y) for x, y in SENTENCES],
                kind="classification", label_words=list(WORDS), template=REVIEW)


def gen_task() -> Task:
    return Task("toy-capitals", [Example(x, y) for x, y in CAPITALS], kind="generation")


TASKS = {"classification": cls_task, "generation": gen_task}
ALL_TEXTS = [x for x, _ in SENTENCES] + [f"{a} {b}" for a, b in CAPITALS]

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

TOKENIZERS = ["smollm2", "byte-bpe", "sentencepiece", "char"]


@pytest.fixture(scope="module")
def all_tokenizers(tmp_path_factory):
    return {
        "smollm2": tf.smollm2_tokenizer(),
        "byte-bpe": tf.byte_bpe_tokenizer(ALL_TEXTS),
        "sentencepiece": tf.sentencepiece_tokenizer(tmp_path_factory.mktemp("spm"), ALL_TEXTS),
        "char": tf.char_tokenizer(),
    }


@pytest.fixture(params=TOKENIZERS)
def tok(request, all_tokenizers):
    t = all_tokenizers[request.param]
    if t is None:
        pytest.skip(f"{tf.SMOLLM2_PACKAGE} (SmolLM2 GGUF) is not installed")
    return t


@pytest.fixture()
def char_tok(all_tokenizers):
    return all_tokenizers["char"]


@pytest.fixture()
def bpe_tok(all_tokenizers):
    return all_tokenizers["byte-bpe"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def dec(tok, ids) -> str:
    return tok.decode([int(i) for i in ids])


def lstrip(text: str) -> str:
    """Text without its leading space (the template's space before x and y)."""
    return text[1:] if text.startswith(" ") else text


def span_ids(batch: IclBatch, b: int, span) -> list[int]:
    return batch.input_ids[b, span.start: span.end].tolist()


def real_ids(batch: IclBatch, b: int) -> list[int]:
    return batch.input_ids[b][batch.attention_mask[b].bool()].tolist()


def pieces(template: Template, demos, query) -> list[str]:
    """The prompt pieces, written out independently of the implementation."""
    sp = " " if template.space_before_text else ""
    out = []
    for d in demos:
        out += [template.input_prefix, sp + d.input, template.in_out_sep, template.output_prefix,
                sp + d.output, template.demo_sep]
    return out + [template.input_prefix, sp + query.input, template.in_out_sep,
                  template.output_prefix]


def bos_ids(tok) -> list[int]:
    ids = tok("a")["input_ids"]
    return [tok.bos_token_id] if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else []


def build(tok, kind="classification", **kw) -> IclBatch:
    kw.setdefault("k", 3)
    kw.setdefault("n", 4)
    if kind == "classification":
        kw.setdefault("label_policy", "sequence")
    return build_icl_batch(tok, TASKS[kind](), **kw)


# --------------------------------------------------------------------------------------------
# Tokenisation of pieces
# --------------------------------------------------------------------------------------------


def test_dummy_prefix_detected_only_for_sentencepiece(all_tokenizers):
    assert adds_dummy_prefix(all_tokenizers["sentencepiece"])
    assert not adds_dummy_prefix(all_tokenizers["byte-bpe"])
    assert not adds_dummy_prefix(all_tokenizers["char"])
    if all_tokenizers["smollm2"] is not None:
        assert not adds_dummy_prefix(all_tokenizers["smollm2"])


def test_tokenize_piece_strips_the_dummy_prefix(all_tokenizers):
    sp = all_tokenizers["sentencepiece"]
    raw = sp.encode("Review:", add_special_tokens=False)
    assert sp.convert_ids_to_tokens(raw)[0].startswith("\u2581")  # the dummy prefix
    ids = tokenize_piece(sp, "Review:")
    assert not sp.convert_ids_to_tokens(ids)[0].startswith("\u2581")
    assert dec(sp, ids) == "Review:"
    # A piece with a real leading space keeps its word boundary.
    assert sp.convert_ids_to_tokens(tokenize_piece(sp, " positive"))[0].startswith("\u2581")
    assert tokenize_piece(sp, "\n") == sp.convert_tokens_to_ids(["<0x0A>"])
    assert tokenize_piece(sp, "") == []


def test_tokenize_piece_is_plain_encoding_for_byte_level(bpe_tok):
    for text in ["Review:", " positive", "\n\n", " the movie was great."]:
        assert tokenize_piece(bpe_tok, text) == bpe_tok.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------------------------
# Spans
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenisation", ["whole-text", "piecewise"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_spans_decode_to_their_texts(tok, side, kind, tokenisation):
    batch = build(tok, kind, padding_side=side, tokenisation=tokenisation)
    tpl = batch.template
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    B, T = batch.input_ids.shape
    assert len(batch) == B == 4 and batch.k == 3
    assert T == max(r.length for r in batch.rows)
    for b, (row, demos, query) in enumerate(zip(batch.rows, batch.demos, batch.queries)):
        # padding and mask
        start = row.pad if side == "left" else 0
        assert row.pad == T - row.length
        expect_mask = torch.zeros(T, dtype=torch.long)
        expect_mask[start: start + row.length] = 1
        assert torch.equal(batch.attention_mask[b], expect_mask)
        assert (batch.input_ids[b][expect_mask == 0] == pad_id).all()
        assert row.final == start + row.length - 1 == row.query_block.end - 1
        assert row.final == int(torch.nonzero(batch.attention_mask[b]).max())
        # whole-text: the tokenizer's own ids for the prompt text; piecewise: the concatenation
        # of the separately tokenised pieces (+ BOS either way)
        parts = pieces(tpl, demos, query)
        if tokenisation == "whole-text":
            expected = bos_ids(tok) + tok.encode("".join(parts), add_special_tokens=False)
            assert batch.straddles == [0] * len(batch)
        else:
            expected = bos_ids(tok) + [i for p in parts for i in tokenize_piece(tok, p)]
        assert real_ids(batch, b) == expected
        assert batch.texts[b] == "".join(parts)
        if bos_ids(tok):
            assert row.bos is not None and span_ids(batch, b, row.bos) == bos_ids(tok)
            assert row.bos.start == start
        else:
            assert row.bos is None
        # every span decodes to its text (only the leading space may differ: sentencepiece
        # decoders drop it; a trailing separator inside a span would show)
        for span, d in zip(row.demo_inputs, demos):
            assert lstrip(dec(tok, span_ids(batch, b, span))) == d.input
        for span, d in zip(row.demo_labels, demos):
            assert lstrip(dec(tok, span_ids(batch, b, span))) == d.output
        for span, x, y in zip(row.demo_blocks, row.input_prefixes, row.demo_labels):
            assert (span.start, span.end) == (x.start, y.end)
        for span, d in zip(row.demo_blocks, demos):
            want = f"{tpl.input_prefix} {d.input}{tpl.in_out_sep}{tpl.output_prefix} {d.output}"
            assert dec(tok, span_ids(batch, b, span)) == want
        assert len(row.input_prefixes) == len(row.output_prefixes) == batch.k + 1
        for span in row.input_prefixes:
            assert dec(tok, span_ids(batch, b, span)) == tpl.input_prefix
        for span in row.output_prefixes:
            assert dec(tok, span_ids(batch, b, span)) == tpl.output_prefix
        seps = [tpl.in_out_sep, tpl.demo_sep] * batch.k + [tpl.in_out_sep]
        assert [dec(tok, span_ids(batch, b, s)) for s in row.separators] == seps
        assert lstrip(dec(tok, span_ids(batch, b, row.query_input))) == query.input
        want_q = f"{tpl.input_prefix} {query.input}{tpl.in_out_sep}{tpl.output_prefix}"
        assert dec(tok, span_ids(batch, b, row.query_block)) == want_q
        assert row.query_block.start == row.input_prefixes[-1].start
        # targets: first token of " " + answer
        assert int(batch.target_ids[b]) == tokenize_piece(tok, " " + query.output)[0]
    if kind == "classification":
        assert batch.gold.tolist() == [q.label for q in batch.queries]
        assert batch.label_words.words == [" negative", " positive"]
    else:
        assert batch.gold is None and batch.label_words is None


def test_left_and_right_padding_give_the_same_rows(tok):
    left = build(tok, padding_side="left")
    right = build(tok, padding_side="right")
    assert left.demos == right.demos and left.queries == right.queries
    for b in range(len(left)):
        assert real_ids(left, b) == real_ids(right, b)
        assert left.rows[b].shifted(-left.rows[b].pad) == right.rows[b]
    assert (left.final_positions() == left.input_ids.shape[1] - 1).all()
    # position ids ignore left padding
    pos = left.position_ids()
    for b, row in enumerate(left.rows):
        assert pos[b, row.pad: row.pad + row.length].tolist() == list(range(row.length))


@pytest.mark.parametrize("side", ["left", "right"])
def test_label_and_final_positions_point_at_the_right_tokens(tok, side):
    batch = build(tok, padding_side=side)
    first, last = batch.label_positions("first"), batch.label_positions("last")
    assert first.shape == last.shape == (len(batch), batch.k)
    final = batch.final_positions()
    for b, demos in enumerate(batch.demos):
        for j, d in enumerate(demos):
            ids = tokenize_piece(tok, " " + d.output)
            assert int(batch.input_ids[b, first[b, j]]) == ids[0]
            assert int(batch.input_ids[b, last[b, j]]) == ids[-1]
            assert int(last[b, j]) - int(first[b, j]) == len(ids) - 1
        assert int(batch.input_ids[b, final[b]]) == tokenize_piece(tok, batch.template.output_prefix)[-1]
        assert int(batch.attention_mask[b, final[b]]) == 1
        if int(final[b]) + 1 < batch.input_ids.shape[1]:
            assert int(batch.attention_mask[b, final[b] + 1]) == 0


def test_zero_shot_has_no_demo_spans(bpe_tok):
    batch = build(bpe_tok, k=0)
    assert batch.label_positions().shape == (4, 0)
    for row in batch.rows:
        assert row.demo_labels == [] and len(row.input_prefixes) == 1


def test_instructions_come_first(bpe_tok):
    tpl = Template(instructions="Classify the review.")
    batch = build(bpe_tok, template=tpl, k=2)
    row = batch.rows[0]
    assert dec(bpe_tok, span_ids(batch, 0, row.instructions)) == "Classify the review."
    assert dec(bpe_tok, span_ids(batch, 0, row.separators[0])) == "\n\n"
    assert batch.texts[0].startswith("Classify the review.\n\nQ: ")


# --------------------------------------------------------------------------------------------
# Seeds and demo selection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_same_seed_same_batch_different_seed_different_demos(bpe_tok, kind):
    state = random.getstate()
    a, b = build(bpe_tok, kind, seed=3), build(bpe_tok, kind, seed=3)
    assert random.getstate() == state  # the global RNG is never used
    assert torch.equal(a.input_ids, b.input_ids) and a.demos == b.demos and a.rows == b.rows
    c = build(bpe_tok, kind, seed=4)
    assert c.demos != a.demos


@pytest.mark.parametrize("seed", range(5))
def test_queries_never_among_their_own_demos(bpe_tok, seed):
    for kind in TASKS:
        batch = build(bpe_tok, kind, seed=seed, k=6, n=6)
        for q, demos in zip(batch.queries, batch.demos):
            assert q.input not in {d.input for d in demos}
        # explicit queries drawn from the pool itself
        task = TASKS[kind]()
        batch = build_icl_batch(bpe_tok, task, k=6, queries=task.examples[:5], seed=seed,
                                label_policy="sequence")
        for q, demos in zip(batch.queries, batch.demos):
            assert q.input not in {d.input for d in demos}


def test_same_demos_shares_demo_tokens(bpe_tok):
    batch = build(bpe_tok, same_demos=True, padding_side="left")
    assert all(d == batch.demos[0] for d in batch.demos)
    prefixes = [batch.input_ids[b, r.start: r.query_block.start].tolist() for b, r in enumerate(batch.rows)]
    assert all(p == prefixes[0] for p in prefixes)
    queries = {q.input for q in batch.queries}
    assert not queries & {d.input for d in batch.demos[0]}
    assert build(bpe_tok).demos[0] != build(bpe_tok).demos[1]  # the default samples per row


def test_most_similar_first_puts_the_most_similar_demo_last(bpe_tok):
    pool = [Example("dogs run fast", "x"), Example("the cat sat on a mat", "y"),
            Example("a cat", "z"), Example("music and food", "w")]
    query = Example("the cat sat on the mat", "q")
    task = Task("sim", pool + [query])
    batch = build_icl_batch(bpe_tok, task, k=3, queries=[query], pool=pool,
                            select=most_similar_first())
    assert [d.input for d in batch.demos[0]] == ["dogs run fast", "a cat", "the cat sat on a mat"]
    by_len = most_similar_first(lambda a, b: -abs(len(a) - len(b)))
    batch = build_icl_batch(bpe_tok, task, k=2, queries=[query], pool=pool, select=by_len)
    assert batch.demos[0][-1].input == "the cat sat on a mat"


# --------------------------------------------------------------------------------------------
# Labels and order
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_shuffled_labels_keep_the_multiset(bpe_tok, kind):
    gold = build(bpe_tok, kind, k=6, n=4, seed=1)
    shuf = build(bpe_tok, kind, k=6, n=4, seed=1, labels="shuffled")
    changed = False
    for g, s in zip(gold.demos, shuf.demos):
        assert [d.input for d in g] == [d.input for d in s]
        assert Counter(d.output for d in g) == Counter(d.output for d in s)
        changed |= [d.output for d in g] != [d.output for d in s]
        for d in s:
            if kind == "classification":
                assert d.output == WORDS[d.label]
    assert changed


def test_random_labels_come_from_the_label_words(bpe_tok):
    gold = build(bpe_tok, k=6, n=4, seed=2)
    rand = build(bpe_tok, k=6, n=4, seed=2, labels="random")
    outputs = [d.output for row in rand.demos for d in row]
    assert set(outputs) <= set(WORDS)
    assert all(d.output == WORDS[d.label] for row in rand.demos for d in row)
    assert outputs != [d.output for row in gold.demos for d in row]
    # generation: outputs of other pool examples
    rand = build(bpe_tok, "generation", k=6, n=4, seed=2, labels="random")
    capitals = {y for _, y in CAPITALS}
    assert all(d.output in capitals for row in rand.demos for d in row)
    truth = dict(CAPITALS)
    assert any(d.output != truth[d.input] for row in rand.demos for d in row)
    # the labels shown are the ones in the prompt
    for b, row in enumerate(rand.demos):
        for span, d in zip(rand.rows[b].demo_labels, row):
            assert dec(bpe_tok, span_ids(rand, b, span)) == " " + d.output


def test_label_words_override(bpe_tok):
    batch = build(bpe_tok, label_words=["bad", "good"])
    assert batch.label_words.words == [" bad", " good"]
    assert all(d.output == ["bad", "good"][d.label] for row in batch.demos for d in row)
    assert [int(t) for t in batch.target_ids] == [
        tokenize_piece(bpe_tok, [" bad", " good"][q.label])[0] for q in batch.queries]


def test_order_permutes_the_demos(bpe_tok):
    gold = build(bpe_tok, k=3, seed=5, labels="shuffled")
    perm = build(bpe_tok, k=3, seed=5, labels="shuffled", order=[2, 0, 1])
    for g, p in zip(gold.demos, perm.demos):
        assert p == [g[2], g[0], g[1]]
    with pytest.raises(ValueError, match="permutation"):
        build(bpe_tok, k=3, order=[0, 0, 1])


# --------------------------------------------------------------------------------------------
# Label words and errors
# --------------------------------------------------------------------------------------------


def test_label_words_single_token_default_policy(all_tokenizers):
    for name in ("smollm2", "byte-bpe", "sentencepiece"):
        t = all_tokenizers[name]
        if t is None:
            continue
        lw = LabelWords.from_words(t, WORDS)
        assert lw.policy == "first-token" and lw.words == [" negative", " positive"]
        assert lw.first_token_ids.tolist() == [tokenize_piece(t, " " + w)[0] for w in WORDS]
        assert lw.first_token_ids.dtype == torch.long


def test_unknown_label_word_is_an_error(char_tok):
    with pytest.raises(ValueError, match=r"'caf\\u00e9'|café") as err:
        LabelWords.from_words(char_tok, ["good", "café"], policy="sequence")
    assert "another label word" in str(err.value)
    with pytest.raises(ValueError, match="café"):
        build(char_tok, label_words=["good", "café"])


def test_multi_token_label_without_policy_is_an_error(char_tok):
    with pytest.raises(ValueError, match="label_policy") as err:
        build(char_tok, label_policy=None)
    assert "' negative'" in str(err.value) and "9 tokens" in str(err.value)
    assert "first-token" in str(err.value) and "sequence" in str(err.value)
    batch = build(char_tok, label_policy="sequence")
    assert batch.label_words.policy == "sequence"
    assert [len(t) for t in batch.label_words.token_ids] == [9, 9]


def test_shared_first_token_is_an_error(char_tok):
    # " negative" and " positive" both start with the space token
    with pytest.raises(ValueError, match="same first token"):
        build(char_tok, label_policy="first-token")


def test_max_length_exceeded_is_an_error(bpe_tok):
    longest = max(r.length for r in build(bpe_tok).rows)
    build(bpe_tok, max_length=longest)
    with pytest.raises(ValueError, match=rf"{longest} tokens.*max_length={longest - 1}") as err:
        build(bpe_tok, max_length=longest - 1)
    assert "fewer demonstrations" in str(err.value)


def test_other_argument_errors(bpe_tok):
    with pytest.raises(ValueError, match="n="):
        build_icl_batch(bpe_tok, cls_task(), k=2)
    with pytest.raises(ValueError, match="smaller k"):
        build(bpe_tok, k=20)
    with pytest.raises(ValueError, match="padding_side"):
        build(bpe_tok, padding_side="middle")


# --------------------------------------------------------------------------------------------
# select / to_dict
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_select_repads_and_keeps_spans(tok, side):
    batch = build(tok, "generation", padding_side=side, n=4)
    shortest = min(range(4), key=lambda b: batch.rows[b].length)
    sub = batch.select([shortest, 0])
    assert len(sub) == 2 and sub.input_ids.shape[1] == max(batch.rows[shortest].length, batch.rows[0].length)
    for new, old in enumerate([shortest, 0]):
        assert real_ids(sub, new) == real_ids(batch, old)
        assert sub.demos[new] == batch.demos[old] and sub.queries[new] == batch.queries[old]
        for s_new, s_old in zip(sub.rows[new].demo_labels + [sub.rows[new].query_input],
                                batch.rows[old].demo_labels + [batch.rows[old].query_input]):
            assert span_ids(sub, new, s_new) == span_ids(batch, old, s_old)
        assert int(sub.input_ids[new, sub.final_positions()[new]]) == int(
            batch.input_ids[old, batch.final_positions()[old]])
    assert sub.target_ids.tolist() == [int(batch.target_ids[shortest]), int(batch.target_ids[0])]
    single = batch.select([shortest])
    assert single.attention_mask.all() and single.rows[0].pad == 0


def test_to_dict_round_trips(bpe_tok):
    for kind, side in [("classification", "left"), ("generation", "right")]:
        batch = build(bpe_tok, kind, padding_side=side)
        data = json.loads(json.dumps(batch.to_dict()))
        back = IclBatch.from_dict(data)
        assert torch.equal(back.input_ids, batch.input_ids)
        assert torch.equal(back.attention_mask, batch.attention_mask)
        assert back.rows == batch.rows and back.demos == batch.demos and back.queries == batch.queries
        assert torch.equal(back.target_ids, batch.target_ids)
        assert back.template == batch.template and back.texts == batch.texts
        assert (back.gold is None) == (batch.gold is None)
        if batch.label_words is not None:
            assert back.label_words == batch.label_words
            assert torch.equal(back.gold, batch.gold)
        assert data["rows"][0]["query_input"] == [batch.rows[0].query_input.start, batch.rows[0].query_input.end]
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids)


def test_a_token_straddling_two_pieces_belongs_to_the_piece_it_starts_in(bpe_tok):
    """Byte-level BPE joins letters across the boundary of the input " walk" and an output
    prefix "ed:": one token " walked" straddles the two pieces.  It belongs to " walk" (where it
    starts), "ed:" keeps the ":", and the batch counts one straddle."""
    from interp.prompts import _whole_text_spans

    pieces = ["Q:", " walk", "ed:", " ran", "\n\n"]
    ids, spans, straddles = _whole_text_spans(bpe_tok, pieces)
    assert ids == bpe_tok.encode("".join(pieces), add_special_tokens=False)
    walked = bpe_tok.encode(" walked", add_special_tokens=False)
    assert len(walked) == 1 and walked[0] in ids  # the merged token exists
    at = ids.index(walked[0])
    assert spans[1] == type(spans[1])(at, at + 1)  # owned by " walk", where it starts
    assert straddles == 1
    assert bpe_tok.decode(ids[spans[2].start:spans[2].end]) == ":"  # "ed:" keeps only what starts in it
    assert [s.end for s in spans] == [s.start for s in spans[1:]] + [len(ids)]  # spans tile the row
