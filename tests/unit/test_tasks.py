"""Bundled ICL tasks, the data loaders, split_examples and the linear-regression sampler."""
from __future__ import annotations

import csv
import json
import sys
import types

import pytest
import torch

from interp.linreg import RegressionBatch, sample_regression_tasks
from interp.prompts import Template
from interp.tasks import (
    BUNDLED_TASKS,
    Example,
    Task,
    load_csv,
    load_hf_dataset,
    load_jsonl,
    load_task,
    split_examples,
)

MIN_COUNT = {
    "country-capital": 120,
    "present-past": 120,
    "singular-plural": 120,
    "english-french": 120,
    "sentiment": 160,
}


# --------------------------------------------------------------------------------------------
# Bundled tasks
# --------------------------------------------------------------------------------------------


def test_bundled_names():
    assert BUNDLED_TASKS == (
        "country-capital", "present-past", "singular-plural", "english-french", "sentiment"
    )


@pytest.mark.parametrize("name", BUNDLED_TASKS)
def test_bundled_task_loads_and_is_clean(name):
    task = load_task(name)
    assert isinstance(task, Task)
    assert task.name == name
    assert len(task) >= MIN_COUNT[name]
    inputs = [e.input for e in task.examples]
    assert len(set(inputs)) == len(inputs), "duplicate inputs"
    for e in task.examples:
        assert isinstance(e, Example)
        assert isinstance(e.input, str) and e.input and e.input == e.input.strip()
        assert isinstance(e.output, str) and e.output and e.output == e.output.strip()


@pytest.mark.parametrize(
    "name", ["country-capital", "present-past", "singular-plural", "english-french"]
)
def test_word_tasks_are_generation(name):
    task = load_task(name)
    assert task.kind == "generation"
    assert task.label_words is None
    assert task.template == Template()
    assert all(e.label is None for e in task.examples)


def test_english_french_is_lowercase_without_articles():
    for e in load_task("english-french").examples:
        assert e.output == e.output.lower()
        first = e.output.split()[0]
        assert first not in {"le", "la", "les", "un", "une", "des"} or e.output in {"un"}
        assert not e.output.startswith("l'")


def test_sentiment_task():
    task = load_task("sentiment")
    assert task.kind == "classification"
    assert task.label_words == ["negative", "positive"]
    assert task.template == Template(
        input_prefix="Review:", output_prefix="Sentiment:", in_out_sep="\n", demo_sep="\n\n"
    )
    labels = [e.label for e in task.examples]
    assert set(labels) == {0, 1}
    assert labels.count(0) == labels.count(1)
    for e in task.examples:
        assert e.output == task.label_words[e.label]
        assert 5 <= len(e.input.split()) <= 15, e.input


@pytest.mark.parametrize(
    "name, x, y",
    [
        ("country-capital", "France", "Paris"),
        ("country-capital", "Japan", "Tokyo"),
        ("country-capital", "Canada", "Ottawa"),
        ("country-capital", "Australia", "Canberra"),
        ("present-past", "go", "went"),
        ("present-past", "eat", "ate"),
        ("present-past", "walk", "walked"),
        ("present-past", "cut", "cut"),
        ("singular-plural", "mouse", "mice"),
        ("singular-plural", "child", "children"),
        ("singular-plural", "city", "cities"),
        ("singular-plural", "knife", "knives"),
        ("english-french", "dog", "chien"),
        ("english-french", "water", "eau"),
        ("english-french", "red", "rouge"),
        ("english-french", "eat", "manger"),
    ],
)
def test_spot_check_facts(name, x, y):
    mapping = {e.input: e.output for e in load_task(name).examples}
    assert mapping[x] == y


def test_sentiment_spot_check():
    by_text = {e.input: e for e in load_task("sentiment").examples}
    assert by_text["The acting was superb and the story kept me hooked."].output == "positive"
    assert by_text["The acting was wooden and the plot made no sense."].output == "negative"


def test_load_task_unknown_lists_bundled_names():
    with pytest.raises(ValueError) as info:
        load_task("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in BUNDLED_TASKS:
        assert name in msg
    assert "load_jsonl" in msg and "load_csv" in msg


# --------------------------------------------------------------------------------------------
# split_examples
# --------------------------------------------------------------------------------------------


def _examples(n=50):
    return [Example(f"x{i}", f"y{i}") for i in range(n)]


def test_split_examples_deterministic_disjoint_and_seeded():
    ex = _examples()
    pool, queries = split_examples(ex, 10, seed=0)
    pool2, queries2 = split_examples(ex, 10, seed=0)
    assert (pool, queries) == (pool2, queries2)
    assert len(queries) == 10 and len(pool) == 40
    assert not {e.input for e in pool} & {e.input for e in queries}
    assert sorted(pool + queries, key=lambda e: int(e.input[1:])) == ex
    _, queries3 = split_examples(ex, 10, seed=1)
    assert queries3 != queries
    # Not simply the first/last n_queries.
    assert queries != ex[:10] and queries != ex[-10:]


def test_split_examples_does_not_mutate_and_validates():
    ex = _examples(5)
    before = list(ex)
    split_examples(ex, 2, seed=3)
    assert ex == before
    assert split_examples(ex, 0, seed=0)[1] == []
    assert split_examples(ex, 5, seed=0)[0] == []
    with pytest.raises(ValueError, match="n_queries"):
        split_examples(ex, 6, seed=0)
    with pytest.raises(ValueError, match="n_queries"):
        split_examples(ex, -1, seed=0)


# --------------------------------------------------------------------------------------------
# JSONL / CSV loaders
# --------------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


GEN_ROWS = [{"input": "cat", "output": "chat"}, {"input": "dog", "output": "chien"}]
CLS_ROWS = [
    {"text": "great film", "label": 1, "label_name": "good"},
    {"text": "awful film", "label": 0, "label_name": "bad"},
    {"text": "lovely film", "label": 1, "label_name": "good"},
]
PAIR_ROWS = [
    {"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": 2},
    {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
]


@pytest.mark.parametrize("loader, writer, suffix", [
    (load_jsonl, _write_jsonl, ".jsonl"), (load_csv, _write_csv, ".csv"),
])
def test_loader_generation_shape(tmp_path, loader, writer, suffix):
    task = loader(writer(tmp_path / f"words{suffix}", GEN_ROWS))
    assert task.kind == "generation"
    assert task.name == "words"
    assert task.label_words is None
    assert task.examples == [Example("cat", "chat"), Example("dog", "chien")]


@pytest.mark.parametrize("loader, writer, suffix", [
    (load_jsonl, _write_jsonl, ".jsonl"), (load_csv, _write_csv, ".csv"),
])
def test_loader_classification_shape(tmp_path, loader, writer, suffix):
    path = writer(tmp_path / f"reviews{suffix}", CLS_ROWS)
    task = loader(path)
    assert task.kind == "classification"
    assert task.label_words == ["bad", "good"]  # sorted by label index, not by first appearance
    assert [e.label for e in task.examples] == [1, 0, 1]
    assert [e.output for e in task.examples] == ["good", "bad", "good"]
    assert task.examples[0].input == "great film"
    # label_words argument wins over label_name.
    task2 = loader(path, label_words=["negative", "positive"], name="mine")
    assert task2.name == "mine"
    assert [e.output for e in task2.examples] == ["positive", "negative", "positive"]


@pytest.mark.parametrize("loader, writer, suffix", [
    (load_jsonl, _write_jsonl, ".jsonl"), (load_csv, _write_csv, ".csv"),
])
def test_loader_pair_shape(tmp_path, loader, writer, suffix):
    words = ["entailment", "neutral", "contradiction"]
    task = loader(writer(tmp_path / f"nli{suffix}", PAIR_ROWS), label_words=words)
    assert task.kind == "classification"
    assert task.examples[0] == Example("A man sleeps. A man is awake.", "contradiction", 2)
    assert task.examples[1] == Example("A dog runs. An animal moves.", "entailment", 0)


def test_loader_custom_keys_and_template(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"q": " 2+2 ", "a": "4 "}])
    tmpl = Template(input_prefix="In:", output_prefix="Out:")
    task = load_jsonl(path, input_key="q", output_key="a", template=tmpl)
    assert task.examples == [Example("2+2", "4")]
    assert task.template == tmpl


def test_loader_missing_key_errors(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GEN_ROWS[0], {"input": "dog"}])
    with pytest.raises(ValueError, match=r"record 1 has no 'output'.*output_key"):
        load_jsonl(path)
    path = _write_jsonl(tmp_path / "noinput.jsonl", [{"sentence": "hi", "output": "x"}])
    with pytest.raises(ValueError, match="input_key"):
        load_jsonl(path)
    path = _write_jsonl(tmp_path / "noanswer.jsonl", [{"input": "hi"}])
    with pytest.raises(ValueError, match="output_key"):
        load_jsonl(path)
    path = _write_jsonl(tmp_path / "nonames.jsonl", [{"text": "hi", "label": 0}])
    with pytest.raises(ValueError, match="label_words"):
        load_jsonl(path)
    path = _write_csv(tmp_path / "bad.csv", [{"text": "hi", "label": "5", "label_name": "x"}])
    with pytest.raises(ValueError, match="label_words"):
        load_csv(path)  # label 5 with one name: not 0..k-1
    with pytest.raises(ValueError, match="outside"):
        load_csv(path, label_words=["a", "b"])


def test_loader_bad_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        load_jsonl(path)


# --------------------------------------------------------------------------------------------
# Hugging Face loader (no network: ImportError path and a fake `datasets` module)
# --------------------------------------------------------------------------------------------


def test_load_hf_dataset_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_dataset("sst2", "train", text_key="sentence", label_key="label",
                        label_words=["negative", "positive"])


def test_load_hf_dataset_with_fake_module(monkeypatch):
    calls = []

    class FakeDataset(list):
        features = {"label": types.SimpleNamespace(names=["neg", "pos"])}

    def load_dataset(name, *args, split):
        calls.append((name, args, split))
        return FakeDataset([
            {"sentence": "good", "label": 1},
            {"sentence": "bad", "label": 0},
            {"sentence": "fine", "label": 1},
        ])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_hf_dataset("glue", "validation", text_key="sentence", label_key="label",
                           label_words=None, config="sst2", limit=2)
    assert calls == [("glue", ("sst2",), "validation")]
    assert task.kind == "classification"
    assert task.label_words == ["neg", "pos"]
    assert task.examples == [Example("good", "pos", 1), Example("bad", "neg", 0)]


# --------------------------------------------------------------------------------------------
# Linear-regression sampler
# --------------------------------------------------------------------------------------------


def test_regression_shapes_and_dtype():
    b = sample_regression_tasks(4, 7, 3)
    assert isinstance(b, RegressionBatch)
    assert b.x.shape == (4, 7, 3) and b.y.shape == (4, 7) and b.w.shape == (4, 3)
    assert b.x.dtype == b.y.dtype == b.w.dtype == torch.float32
    assert b.noise_std == 0.0
    b64 = sample_regression_tasks(2, 3, 5, dtype=torch.float64)
    assert b64.x.dtype == b64.y.dtype == b64.w.dtype == torch.float64


def test_regression_determinism_by_seed():
    a = sample_regression_tasks(3, 5, 4, noise_std=0.1, seed=7)
    b = sample_regression_tasks(3, 5, 4, noise_std=0.1, seed=7)
    c = sample_regression_tasks(3, 5, 4, noise_std=0.1, seed=8)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.w, b.w)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.w, c.w)


def test_regression_noiseless_targets_are_exact():
    b = sample_regression_tasks(5, 9, 6, seed=1)
    assert torch.equal(b.y, (b.x @ b.w.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(b.y, torch.einsum("tnd,td->tn", b.x, b.w))


def test_regression_noise_is_added_with_the_right_scale():
    clean = sample_regression_tasks(64, 64, 4, seed=2)
    noisy = sample_regression_tasks(64, 64, 4, noise_std=0.5, seed=2)
    assert torch.equal(clean.x, noisy.x) and torch.equal(clean.w, noisy.w)
    resid = noisy.y - clean.y
    assert noisy.noise_std == 0.5
    assert abs(resid.std().item() - 0.5) < 0.03
    assert abs(resid.mean().item()) < 0.03


def test_regression_uniform_range():
    b = sample_regression_tasks(50, 40, 5, x_dist="uniform", x_range=0.5, seed=3)
    assert b.x.min() >= -0.5 and b.x.max() <= 0.5
    # Fills the range (not e.g. U(0, 0.5)).
    assert b.x.min() < -0.45 and b.x.max() > 0.45
    assert abs(b.x.var().item() - 0.5**2 / 3) < 0.005  # var of U(-a, a) is a^2/3


def test_regression_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sample_regression_tasks(8, 16, 4, noise_std=0.3, seed=5)
    sample_regression_tasks(8, 16, 4, x_dist="uniform", seed=6)
    assert torch.equal(torch.get_rng_state(), before)


def test_regression_normal_moments():
    b = sample_regression_tasks(200, 100, 10, seed=4)  # 200k draws of x
    assert abs(b.x.mean().item()) < 0.01
    assert abs(b.x.var().item() - 1.0) < 0.02
    w = sample_regression_tasks(5000, 1, 4, seed=4).w  # 20k draws of w
    assert abs(w.mean().item()) < 0.03
    assert abs(w.var().item() - 1.0) < 0.05


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_tasks=0, n_points=3, d=2), "n_tasks"),
    (dict(n_tasks=2, n_points=-1, d=2), "n_points"),
    (dict(n_tasks=2, n_points=3, d=0), "d must"),
    (dict(n_tasks=2, n_points=3, d=2.0), "d must"),
    (dict(n_tasks=2, n_points=3, d=2, x_dist="gaussian"), "x_dist"),
    (dict(n_tasks=2, n_points=3, d=2, x_range=0), "x_range"),
    (dict(n_tasks=2, n_points=3, d=2, noise_std=-0.1), "noise_std"),
    (dict(n_tasks=2, n_points=3, d=2, dtype=torch.int64), "dtype"),
])
def test_regression_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_regression_tasks(**kwargs)


def _dataset_folder(root, name="toyset"):
    import json as _json

    d = root / "classification" / name
    d.mkdir(parents=True)
    (d / "meta.json").write_text(_json.dumps({"task": name, "label_words": ["b", "g"], "template": {"space_before_text": False}}))
    for split, rows in (("train", range(0, 10)), ("test", range(100, 106))):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in rows:
                f.write(_json.dumps({"text": f"text {i}", "label": i % 2, "label_name": ["negative", "positive"][i % 2]}) + "\n")
    return d


def test_dataset_folder_draws_queries_from_test_and_demos_from_train(tmp_path, char_tokenizer, monkeypatch):
    from interp.prompts import build_icl_batch
    from interp.tasks import load_dataset_dir, load_task

    d = _dataset_folder(tmp_path)
    task = load_dataset_dir(d)
    assert task.label_words == ["b", "g"]  # meta.json's shown words win over label_name
    assert len(task.examples) == 10 and len(task.test_examples) == 6
    batch = build_icl_batch(char_tokenizer, task, k=3, n=4, seed=0)
    train_inputs = {e.input for e in task.examples}
    assert all(q.input.startswith("text 10") for q in batch.queries)
    assert all(d.input in train_inputs for row in batch.demos for d in row)
    with pytest.raises(ValueError, match="pass a smaller n"):
        build_icl_batch(char_tokenizer, task, k=3, n=7, seed=0)
    monkeypatch.setenv("ICL_INTERP_DATA", str(tmp_path))
    assert load_task("toyset").test_examples == task.test_examples
