"""Comparison across models (issue 17): the disagreement rule on hand-built values, the intervals
against their closed forms, every per-model number equal to the analysis run on its own, and the
`compare` CLI end to end on two tiny models.  Also the speed-ups that made two models fit the
demo: final-position unembedding of right-padded batches and of the label loss, checked against
plain transformers."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from analyses.model_comparison import ModelRuns, compare_models, compare_runs, verdict
from interp.scoring import bootstrap_mean_interval

from tests.conftest import TOY_INPUTS as INPUTS, TOY_WORDS as WORDS, make_toy_task


@pytest.fixture(scope="module")
def task():
    return make_toy_task()


@pytest.fixture(scope="module")
def models(char_tokenizer):
    from interp import load_model
    from tests.conftest import make_tiny_llama

    torch.set_num_threads(1)
    out = []
    for s in (0, 1):
        out.append(load_model(make_tiny_llama(seed=s, n_ctx=256), tokenizer=copy.deepcopy(char_tokenizer)))
        out[-1].name = f"tiny-{s}"
    return out


def v(value, low=None, high=None):
    return {"value": value, "low": low, "high": high}


def test_the_rule_names_each_pair_whose_intervals_are_disjoint():
    assert verdict({"a": v(0.9, 0.8, 1.0), "b": v(0.5, 0.4, 0.6)}) == "differ: a > b"
    assert verdict({"a": v(0.5, 0.4, 0.6), "b": v(0.9, 0.8, 1.0)}) == "differ: b > a"
    assert verdict({"a": v(0.5, 0.4, 0.7), "b": v(0.8, 0.6, 1.0)}) == "within intervals"  # overlap
    assert verdict({"a": v(0.5, 0.4, 0.6), "b": v(0.6, 0.6, 0.7)}) == "within intervals"  # touching counts as overlap
    assert verdict({"a": v(0.5), "b": v(0.9, 0.8, 1.0)}) == "descriptive (no interval for every model)"
    three = {"a": v(0.1, 0.0, 0.2), "b": v(0.5, 0.4, 0.6), "c": v(0.55, 0.3, 0.7)}
    assert verdict(three) == "differ: b > a; c > a"
    assert verdict({"a": v(0.5, 0.4, 0.6)}) == "one model: nothing to compare"


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_means():
    values = [0.1, 0.5, 0.2, 0.9, float("nan"), 0.4, 0.3]
    got = bootstrap_mean_interval(values, seed=3, resamples=1000)
    finite = torch.tensor([x for x in values if x == x], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(len(finite), (1000, len(finite)), generator=g).numpy()
    means = np.sort(finite.numpy()[idx].mean(-1))
    assert got == [float(means[24]), float(means[975])]
    assert got[0] < float(finite.mean()) < got[1]
    assert bootstrap_mean_interval([0.3]) is None and bootstrap_mean_interval([float("nan"), 1.0]) is None


def test_head_correlation_intervals_are_fisher_z():
    from analyses.model_comparison import _fisher

    r, cells = 0.4, 72
    got = _fisher(r, cells)
    half = 1.96 / math.sqrt(cells - 3)
    assert got["low"] == pytest.approx(math.tanh(math.atanh(r) - half), abs=1e-12)
    assert got["high"] == pytest.approx(math.tanh(math.atanh(r) + half), abs=1e-12)
    assert _fisher(None, cells)["low"] is None


def test_order_sensitivity_replicates_equal_the_direct_formula():
    from analyses.gd import metrics as gm
    from analyses.gd.order_sensitivity import _replicates, _resamples

    probs = torch.rand(3, 9, 50, generator=torch.Generator().manual_seed(0)).softmax(-1)
    resamples = _resamples(3, 9, 200, seed=1)
    direct = [float(gm.order_sensitivity(probs[o][:, q]).mean()) for o, q in resamples]
    assert _replicates(probs, resamples) == direct  # bit for bit


@pytest.fixture(scope="module")
def comparison(models, task, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = compare_models(models, task, ks=(0, 2), k=2, n=8, gd_n=4, orders_n=4, n_orders=3, heads_n=4, seed=1, out=out)
    return result, out


def test_every_number_in_the_comparison_is_the_analysis_run_on_its_own(models, task, comparison):
    from analyses.icl_accuracy import icl_accuracy_vs_k
    from analyses.kernel.reconstruction import kernel_reconstruction

    result, out = comparison
    data = json.loads((out / "results.json").read_text())
    assert data["models"] == ["tiny-0", "tiny-1"]
    for m in models:
        acc = icl_accuracy_vs_k(m, task, ks=(0, 2), n=8, seeds=(1,), progress=False)
        assert data["per_model"][m.name]["accuracy"]["accuracy"] == json.loads(json.dumps(acc.to_dict()))["accuracy"]
        row = next(r for r in result.rows if r.quantity == "accuracy" and r.setting == "k=2")
        assert row.values[m.name]["value"] == acc.accuracy[2]["accuracy"]
        assert row.values[m.name]["low"] == acc.accuracy[2]["ci_low"]
        kr = kernel_reconstruction(m, task, k=2, n=8, seed=1)
        sel = next(r for r in result.rows if r.quantity.startswith("best held-out head: agreement"))
        assert sel.values[m.name]["value"] == kr.selection.heldout_agreement["accuracy"]
        depth = result.profiles[m.name]["depth"]
        assert depth == [0.0, 1.0] and result.profiles[m.name]["best_head_agreement"] == kr.agreement.max(-1).values.tolist()


def test_the_gd_rows_carry_bootstrap_intervals_of_the_per_query_values(comparison):
    result, out = comparison
    data = json.loads((out / "results.json").read_text())
    for m in result.models:
        dai = data["per_model"][m]["icl_vs_gd"]["dai"]
        simaou = dai["per_query"]["simaou"]
        assert len(simaou) == dai["n"]
        # the per-layer means are the per-query values' means over queries (no NaN in SimAOU)
        assert float(np.mean(simaou)) == pytest.approx(float(np.mean(dai["per_layer"]["simaou"])), abs=1e-6)
        assert dai["intervals"]["simaou"] == bootstrap_mean_interval(simaou, seed=1)
        row = next(r for r in result.rows if r.quantity == "SimAOU" and r.setting == "dai")
        assert (row.values[m]["low"], row.values[m]["high"]) == tuple(dai["intervals"]["simaou"])
        assert row.verdict == verdict(row.values)


def test_the_report_states_the_rule_and_every_row_has_a_verdict(comparison):
    import re

    result, out = comparison
    data = json.loads((out / "results.json").read_text())
    assert data["rule"].startswith("two models differ on a row when their 95% intervals are disjoint")
    assert all(r["verdict"] for r in data["rows"])
    sections = {r["section"] for r in data["rows"]}
    assert {"ICL accuracy", "kernel regression (Han et al.)", "ICL vs GD, Dai et al.'s setting", "ICL vs GD, Shen et al.'s setting",
            "order sensitivity (Shen et al.)", "head-score correlations"} <= sections
    html = (out / "report.html").read_text()
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert "Where the models disagree" in visible and not re.search(r"\bnan\b", visible, flags=re.I)
    for fig in result.figures():
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_compare_runs_on_hand_built_results():
    from analyses.icl_accuracy import IclAccuracyResult

    def acc(name, k_correct):
        from interp.scoring import accuracy

        return IclAccuracyResult(model=name, task="t", ks=[0, 4], n=100, seeds=[0],
                                 accuracy={k: accuracy([1] * c + [0] * (100 - c)).to_dict() for k, c in k_correct.items()})
    runs = [ModelRuns("a", 10, accuracy=acc("a", {0: 10, 4: 90})), ModelRuns("b", 20, accuracy=acc("b", {0: 12, 4: 50}))]
    result = compare_runs(runs, "t")
    by_k = {r.setting: r.verdict for r in result.rows}
    assert by_k == {"k=0": "within intervals", "k=4": "differ: a > b"}
    assert [r.setting for r in result.disagreements()] == ["k=4"]
    with pytest.raises(ValueError, match="repeat"):
        compare_runs([runs[0], runs[0]], "t")


def test_compare_refuses_bad_input_before_any_work(task):
    with pytest.raises(ValueError, match="at least two models"):
        compare_models(["smollm2-135m"], task)
    with pytest.raises(ValueError, match="unknown parts"):
        compare_models(["a", "b"], task, parts=["kernal"])
    with pytest.raises(ValueError, match="repeat"):
        compare_models(["a", "a"], task)


def test_two_loaded_models_of_one_class_get_distinct_labels(models, task):
    same = [models[0], models[1]]
    names = [m.name for m in same]
    for m in same:
        m.name = "LlamaForCausalLM"
    try:
        result = compare_models(same, task, parts=["accuracy"], ks=(0,), n=4)
    finally:
        for m, name in zip(same, names):
            m.name = name
    assert result.models == ["LlamaForCausalLM", "LlamaForCausalLM (2)"]


def test_the_compare_cli_runs_two_local_models(tiny_model_dir, tmp_path, capsys):
    from analyses import cli
    from tests.conftest import make_char_tokenizer, make_tiny_llama

    other = tmp_path / "other"
    make_tiny_llama(seed=3).save_pretrained(other)
    make_char_tokenizer().save_pretrained(other)
    data = tmp_path / "toy"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"label_words": WORDS, "template": {"space_before_text": False}}))
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t, "label": i % 2, "label_name": WORDS[i % 2]}) for i, t in enumerate(INPUTS)))
    (data / "test.jsonl").write_text("\n".join(json.dumps({"text": t, "label": i % 2, "label_name": WORDS[i % 2]}) for i, t in enumerate(INPUTS[:8])))
    out = tmp_path / "cmp"
    argv = ["compare", "--models", tiny_model_dir, str(other), "--task", str(data), "--k", "2", "--n", "6",
            "--ks", "0", "2", "--gd-n", "3", "--orders-n", "3", "--heads-n", "3", "--parts", "accuracy,kernel,icl_vs_gd",
            "--quiet", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["models"]) == 2 and set(res["per_model"]) == set(res["models"])
    assert res["protocol"]["compare"]["k"] == 2 and res["protocol"]["compare"]["parts"] == ["accuracy", "kernel", "icl_vs_gd"]
    assert "rows differ beyond the 95% intervals" in capsys.readouterr().out
    assert cli.main(argv) == 0  # the same command again resumes every part
    assert len(json.loads((out / "results.json").read_text())["resumed_parts"]["loaded"]) == 2 * 4


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_final_logits_of_a_right_padded_batch_equal_plain_transformers(family, char_tokenizer):
    """Model.run(logits="final") unembeds only the rows' final positions; the values are the plain
    transformers forward's at those positions."""
    from interp import load_model
    from tests.architecture_fixtures import make_family_model

    hf = make_family_model(family)
    model = load_model(copy.deepcopy(hf), tokenizer=copy.deepcopy(char_tokenizer))
    ids = torch.randint(2, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[1, 7:] = 0
    final = torch.tensor([4, 6, 8])
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits[torch.arange(3), final]
        got = model.run(ids, attention_mask=mask, logits="final").logits
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-5


def test_the_label_loss_on_kept_positions_equals_the_full_vocabulary_loss():
    """GDConfig(loss="label") unembeds only the label positions; the loss is the cross-entropy of
    the full forward at those positions."""
    from interp.finetune import GDConfig, GDCounterpart
    from tests.conftest import make_tiny_llama

    hf = make_tiny_llama()
    from interp import load_model
    from tests.conftest import make_char_tokenizer

    model = load_model(copy.deepcopy(hf), tokenizer=make_char_tokenizer())
    seqs, at = [[5, 6, 7, 8, 9], [10, 11, 12]], [3, 1]
    loss, _ = GDCounterpart(model)._loss(seqs, at, GDConfig(loss="label"), record_queries=False)
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits
    ref = sum(torch.nn.functional.cross_entropy(logits[i, at[i]][None], torch.tensor([seqs[i][at[i] + 1]])) for i in range(2)) / 2
    assert float((loss.detach() - ref).abs()) <= 1e-5
