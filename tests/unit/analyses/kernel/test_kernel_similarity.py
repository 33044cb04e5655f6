"""Known answers for the similarity correlations and the Nadaraya–Watson baseline."""
import pytest
import torch

from analyses.kernel.similarity import cosine_similarity, nadaraya_watson, pearson_by_head, prediction_similarity


def test_pearson_by_head_known_values():
    sim = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    weights = torch.stack([2 * sim + 1, -sim, torch.ones_like(sim)])  # three "heads"
    r = pearson_by_head(weights, sim)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0) and torch.isnan(r[2])
    noise = torch.tensor([[0.3, -0.1, 0.2], [-0.4, 0.1, 0.0]])
    expected = torch.corrcoef(torch.stack([(sim + noise).flatten(), sim.flatten()]))[0, 1]
    assert pearson_by_head(sim + noise, sim) == pytest.approx(float(expected), abs=1e-6)


def test_prediction_and_cosine_similarity():
    pq = torch.tensor([[0.5, 0.5, 0.0]])
    pd = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    assert prediction_similarity(pq, pd).tolist() == [[0.5, 0.0]]
    h = torch.tensor([[1.0, 0.0]])
    hd = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    assert torch.allclose(cosine_similarity(h, hd), torch.tensor([[1.0, 0.0, -1.0]]))


def test_nadaraya_watson_votes_with_the_nearest_demos():
    hq = torch.tensor([[1.0, 0.0]])
    hd = torch.tensor([[[1.0, 0.1], [0.0, 1.0], [0.0, 1.0]]])  # one close demo of class 0, two far of class 1
    classes = torch.tensor([[0, 1, 1]])
    assert nadaraya_watson(hq, hd, classes, 2, bandwidth=0.05).tolist() == [0]   # narrow kernel: nearest wins
    assert nadaraya_watson(hq, hd, classes, 2, bandwidth=100.0).tolist() == [1]  # wide kernel: majority wins


def test_attention_similarity_qk_matches_independent_capture(char_tokenizer):
    import copy

    from analyses.kernel.reconstruction import kernel_weights
    from analyses.kernel.similarity import attention_similarity
    from interp import Capture, load_model
    from interp.prompts import build_icl_batch
    from interp.prompts import Template
    from interp.tasks import Example, Task
    from tests.conftest import make_tiny_llama

    fm = load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))
    words = ["x", "y"]
    task = Task("toy", [Example(f"ab{c}{d}", words[i % 2], i % 2) for i, (c, d) in enumerate(zip("cdefghijklmnop", "ponmlkjihgfedc"))],
                kind="classification", label_words=words, template=Template(space_before_text=False))
    result = attention_similarity(fm, task, k=3, n=6, seed=1, layer=1, batch_size=4)
    batch = build_icl_batch(fm.tokenizer, task, k=3, n=6, seed=1, padding_side="left")
    with torch.no_grad():
        acts = fm.run(batch, capture=[Capture("attn.hook_pattern", positions="final"), Capture("attn.hook_attn_scores", positions="final")]).acts
    pat = acts["blocks.1.attn.hook_pattern"][:, 2, 0]  # head 2: [row, pos]
    sc = acts["blocks.1.attn.hook_attn_scores"][:, 2, 0]
    a = kernel_weights(pat, [[(s.start, s.end) for s in r.demo_blocks] for r in batch.rows])
    qk = torch.stack([sc[r, [s.start for s in row.demo_labels]] for r, row in enumerate(batch.rows)])
    expected = torch.corrcoef(torch.stack([a.flatten(), qk.flatten()]))[0, 1]
    assert float(result.r_qk[1, 2]) == pytest.approx(float(expected), abs=1e-5)
    assert result.r_prediction.shape == result.r_hidden.shape == (2, 4)


def test_isolated_runs_see_the_text_alone_as_han_runs_it(char_tokenizer):
    """Han et al. §5.3: P(o | x) from the LM run on x alone; checked against plain transformers
    on the tokenizer's ids of each text (left padding must not change a row)."""
    import copy

    from analyses.kernel.similarity import _isolated_runs
    from interp import load_model
    from interp.prompts import Template
    from interp.tasks import Example, Task
    from tests.conftest import make_tiny_llama

    hf = make_tiny_llama(n_layers=2)
    fm = load_model(hf, tokenizer=copy.deepcopy(char_tokenizer))
    task = Task("toy", [Example("ab", "x", 0), Example("cd", "y", 1)], kind="classification", label_words=["x", "y"],
                template=Template(space_before_text=False))
    texts = ["ab cd", "hello there", "x"]
    probs, hidden = _isolated_runs(fm, task, texts, layer=1, isolated="text", seed=0)
    for i, t in enumerate(texts):
        ids = torch.tensor([char_tokenizer.encode(t, add_special_tokens=False)])
        with torch.no_grad():
            out = hf(input_ids=ids, output_hidden_states=True)
        assert torch.allclose(probs[i], torch.softmax(out.logits[0, -1], -1), atol=1e-5)
    zs, _ = _isolated_runs(fm, task, texts, layer=1, isolated="zero-shot", seed=0)
    assert not torch.allclose(zs, probs, atol=1e-4)  # the template changes what the model predicts
