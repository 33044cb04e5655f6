"""The head-attribution report (analyses.heads.atlas) on the tiny GQA Llama: every grid it puts
side by side is the one the individual analysis returns on the same inputs, bit for bit; the
correlations, rankings, JSON and figures are well-formed; the CLI writes the report."""
import copy
import dataclasses
import json

import pytest
import torch

from analyses.heads.atlas import ALL_SCORES, DEFAULT_SCORES, head_scores, parse_scores, spearman
from interp.finetune import GDConfig
from interp.prompts import Template, build_icl_batch
from interp.tasks import Example, Task

from tests.conftest import TOY_INPUTS as INPUTS, TOY_WORDS as WORDS, make_toy_task
K, N, SEED = 2, 4, 1
GD = GDConfig(lr=0.1, loss="all")


@pytest.fixture(scope="module")
def task():
    return make_toy_task()


@pytest.fixture(scope="module")
def model(char_tokenizer):
    from interp import load_model
    from tests.conftest import make_tiny_llama

    torch.set_num_threads(1)
    return load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))


@pytest.fixture(scope="module")
def result(model, task):
    # the default set: every score; a random tiny model answers no clean prompt, so the AIE's mean
    # head outputs come from all prompts (Todd et al.'s filter would leave none)
    return head_scores(model, task, k=K, n=N, seed=SEED, gd_config=GD, fv_mean_over="all")


def test_every_grid_equals_the_individual_analysis(model, task, result):
    from analyses.heads.function_vectors import function_vector_analysis
    from analyses.heads.attribution import head_attribution
    from analyses.gd.icl_vs_gd import icl_vs_gd
    from analyses.heads.induction import induction_scores
    from analyses.kernel.reconstruction import kernel_reconstruction

    assert list(result.scores) == list(ALL_SCORES)
    ha = head_attribution(model, task, k=K, n=N, seed=SEED, positions="final")  # the report patches the final position by default
    # the AIE runs on the task viewed as a word task: the same tokens, targets = label words' first tokens
    word_task = dataclasses.replace(task, kind="generation", label_words=None)
    a, b = (build_icl_batch(model.tokenizer, t, k=K, n=N, seed=SEED, labels="shuffled") for t in (task, word_task))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.target_ids, b.target_ids)
    fv = function_vector_analysis(model, word_task, k=K, n_clean=N, n_corrupted=N, n_eval=N, n_top_heads=8, seed=SEED, mean_over="all")
    ind = induction_scores(model, n_repeat=min(50, model.n_ctx // 2), n_sequences=8, seed=SEED)
    dual = icl_vs_gd(model, task, k=K, n=N, seed=SEED, config=GD).dual_form
    expected = {
        "kernel": kernel_reconstruction(model, task, k=K, n=N, seed=SEED).agreement.tolist(),
        "exact_patching": (ha.exact.scores - ha.exact.corrupted_metric).tolist(),
        "attribution_patching": (ha.attribution.scores - ha.attribution.corrupted_metric).tolist(),
        "aie": fv.aie.tolist(),
        "induction": ind.induction.tolist(),
        "previous_token": ind.previous_token.tolist(),
        "dual_form": dual["cosine_icl"],
        "dual_form_gd": dual["cosine_gd"],
    }
    for name, grid in expected.items():
        assert result.scores[name] == grid, name
        assert len(grid) == model.n_layers and len(grid[0]) == model.n_heads
    # without dual_form_gd the ICL-side dual form skips the fine-tuning and is the same; patching every position
    some = head_scores(model, task, k=K, n=N, seed=SEED, scores=["dual_form", "exact_patching"], patch_positions="all")
    assert some.scores["dual_form"] == expected["dual_form"]
    ha_all = head_attribution(model, task, k=K, n=N, seed=SEED)
    assert some.scores["exact_patching"] == (ha_all.exact.scores - ha_all.exact.corrupted_metric).tolist()
    assert some.scores["exact_patching"] != expected["exact_patching"]
    assert DEFAULT_SCORES == ALL_SCORES


def test_correlations_rankings_and_json(result):
    names = list(result.scores)
    for a in names:
        grid = torch.tensor(result.scores[a])
        if grid.unique().numel() > 1:
            assert result.correlations[a][a] == pytest.approx(1.0)
        for b in names:
            assert result.correlations[a][b] == result.correlations[b][a]
    g = torch.arange(8.0).reshape(2, 4)
    assert spearman(g, g ** 3) == pytest.approx(1.0) and spearman(g, -g) == pytest.approx(-1.0)
    assert spearman(g, torch.zeros(2, 4)) is None  # undefined on a constant grid
    for name in names:
        values = [r["value"] for r in result.ranking(name, 10)]
        assert len(values) == 8 and values == sorted(values, reverse=True)
        mags = [abs(r["value"]) for r in result.ranking(name, 5, by="abs")]
        assert mags == sorted(mags, reverse=True)
        top = result.ranking(name, 1)[0]
        assert result.scores[name][top["layer"]][top["head"]] == top["value"] == max(max(r) for r in result.scores[name])
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["scores"]["aie"] == result.scores["aie"] and d["k"] == K and d["seed"] == SEED
    ex = result.example
    assert len(ex["tokens"]) == len(ex["token_ids"]) and "".join(ex["tokens"]) == ex["text"]
    for h in ex["heads"]:
        assert len(h["attention"]) == len(ex["tokens"]) and sum(h["attention"]) == pytest.approx(1.0, abs=1e-5)
    assert {n for h in ex["heads"] for n in h["top_by"]} == set(names)


def test_figures_have_axis_titles_units_and_setting(result):
    figs = result.figures()
    assert len(figs) == len(result.scores) + 2  # one heatmap per score, correlations, example attention
    for fig in figs:
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert fig.data[0].colorbar.title.text
        assert all(s in fig.layout.title.text for s in ("k=2", "n=4", "seed 1", "toy"))
    assert [f.layout.xaxis.title.text for f in figs[:len(result.scores)]] == ["head"] * len(result.scores)
    assert {f.layout.yaxis.title.text for f in figs[:len(result.scores)]} == {"layer"}


def test_bad_score_name_lists_the_valid_ones(model, task):
    with pytest.raises(ValueError, match="valid scores are kernel, exact_patching, attribution_patching, aie"):
        head_scores(model, task, k=K, n=N, scores="kernel,bogus")
    assert parse_scores("all") == ALL_SCORES and parse_scores(None) is None and parse_scores("aie, induction") == ("aie", "induction")


def test_cli_writes_results_and_report(tmp_path, capsys):
    from analyses import cli
    from tests.conftest import make_char_tokenizer, make_tiny_llama

    model_dir = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(model_dir)
    make_char_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "toy"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"label_words": WORDS, "template": {"space_before_text": False}}))
    for split, rows in (("train", INPUTS[:14]), ("test", INPUTS[14:])):
        with open(data / f"{split}.jsonl", "w") as f:
            for i, text in enumerate(rows):
                f.write(json.dumps({"text": text, "label": i % 2, "label_name": WORDS[i % 2]}) + "\n")
    out = tmp_path / "out"
    code = cli.main(["heads", "--model", str(model_dir), "--task", str(data), "--k", "2", "--n", "3", "--seed", "0",
                     "--scores", "kernel,exact_patching,aie,induction,dual_form", "--threads", "1", "--quiet", "--fv-mean-over", "all",
                     "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["scores"]) == ["kernel", "exact_patching", "aie", "induction", "dual_form"]
    assert res["n_layers"] == 2 and len(res["scores"]["aie"][0]) == 4 and len(res["rankings"]["kernel"]) == 8
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "Ranked heads" in html
    assert "L" in capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["heads", "--model", str(model_dir), "--task", str(data), "--scores", "nope", "--out", str(out)]) == 2
    assert "valid scores are" in capsys.readouterr().err  # one line, before the model loads


def test_word_task_default_skips_the_label_word_scores(model):
    words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx", "yz", "ba", "dc", "fe"]
    word_task = Task("reverse", [Example(w, w[::-1]) for w in words], template=Template(input_prefix="q:", output_prefix="a:"))
    r = head_scores(model, word_task, k=2, n=3, seed=0, fv_mean_over="all")
    assert list(r.scores) == ["aie", "induction", "previous_token", "dual_form", "dual_form_gd"]
    assert set(r.skipped) == {"kernel", "exact_patching", "attribution_patching"} and "classification" in r.skipped["kernel"]
    assert "skipped" in r.summary()


def test_aie_is_skipped_with_the_reason_when_no_clean_prompt_is_answered(model, task):
    r = head_scores(model, task, k=K, n=N, seed=SEED, scores=["kernel", "aie"])  # Todd et al.'s filter, the default
    assert list(r.scores) == ["kernel"] and "answers none" in r.skipped["aie"]


def test_a_screened_atlas_patches_only_the_top_of_the_atp_star_screen_exactly(model, task):
    """--screen-budget: the exact grid holds exact patching's value at the screen's top heads and
    its random check, NaN elsewhere; the summary states the bound on what was missed."""
    import math

    from analyses.heads.attribution import head_attribution

    full = head_attribution(model, task, k=K, n=N, seed=SEED, positions="final")
    screened = head_scores(model, task, k=K, n=N, seed=SEED, scores=["exact_patching", "attribution_patching"], screen_budget=3)
    grid = torch.tensor(screened.scores["exact_patching"], dtype=torch.float64)
    want = (full.exact.scores - full.exact.corrupted_metric).double()
    verified = ~grid.isnan()
    screen = screened.details["patching"]["screen"]
    assert int(verified.sum()) == 3 + len(screen["checked"])  # (8 heads: the check covers the other 5)
    assert [list(c) for c in screen["top"]] == screen["top"] and all(verified[l, h] for l, h in screen["top"])
    assert float((grid[verified] - want[verified]).abs().max()) <= 1e-5
    assert "Clopper" in screen["summary"] and not math.isnan(screen["fraction_bound"])
