"""Issue 16: no input is silently misread, and every bad input gets one clear error naming the
fix, before the expensive work starts (measured as a careless user would meet them)."""
import copy
import json
import threading

import pytest
import torch

from analyses import cli
from interp import AddVector, Capture, Patch, load_model
from tests.conftest import make_char_tokenizer, make_tiny_llama


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny():
    return load_model(make_tiny_llama(n_layers=2), tokenizer=make_char_tokenizer())


def _toy_folder(path, words=("x", "y"), labels=None):
    path.mkdir()
    (path / "meta.json").write_text(json.dumps({"template": {"space_before_text": False}}))
    inputs = [f"{a}{b} {c}" for a, b, c in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "mnopqrstuvwxyzabcdef")]
    labels = labels or [i % 2 for i in range(len(inputs))]
    for split, rows in (("train", range(14)), ("test", range(14, 20))):
        with open(path / f"{split}.jsonl", "w") as f:
            for i in rows:
                f.write(json.dumps({"text": inputs[i], "label": labels[i], "label_name": words[labels[i]]}) + "\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (["kernel", "--k", "0"], "at least 1"),
    (["heads", "--k", "0"], "at least 1"),
    (["icl-vs-gd", "--k", "0"], "at least 1"),
    (["kernel", "--similarity-n", "0"], "at least 1"),
    (["kernel", "--threads", "0"], "at least 1"),
    (["accuracy", "--n", "-3"], "at least 1"),
])
def test_counts_that_mean_nothing_are_refused_by_the_parser(argv, message, model_dir, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([*argv, "--model", model_dir])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(model_dir, tmp_path, capsys):
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["kernel", "--model", model_dir, "--out", str(a_file)])
    assert "is an existing file" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root can write anywhere
        with pytest.raises(SystemExit):
            cli.main(["kernel", "--model", model_dir, "--out", str(locked / "sub")])
        assert "not a folder this user can write" in capsys.readouterr().err


def test_a_user_error_is_one_line_with_exit_code_2(model_dir, tmp_path, capsys):
    data = _toy_folder(tmp_path / "toy")
    code = cli.main(["icl-vs-gd", "--model", model_dir, "--task", str(data), "--k", "2", "--n", "3", "--lr", "inf",
                     "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "lr must be a finite number" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_label_words_and_classes_are_checked(tmp_path):
    from interp.tasks import load_dataset_dir

    with pytest.raises(ValueError, match="empty or only whitespace"):
        load_dataset_dir(_toy_folder(tmp_path / "blank", words=("x", "  ")))
    with pytest.raises(ValueError, match="at least two classes"):
        load_dataset_dir(_toy_folder(tmp_path / "one", labels=[0] * 20))


def test_task_names_are_never_silently_redirected(tmp_path, monkeypatch):
    from interp.tasks import resolve_task

    monkeypatch.chdir(tmp_path)
    _toy_folder(tmp_path / "sentiment")
    with pytest.raises(ValueError, match="both a bundled task and a folder.*./sentiment"):
        resolve_task("sentiment")
    assert resolve_task("./sentiment").label_words == ["x", "y"]  # the local folder, asked for explicitly
    (tmp_path / "antonyms.json").write_text(json.dumps([{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]))
    task = resolve_task("antonyms.json")  # the shared word tasks' format: one JSON list
    assert task.kind == "generation" and [e.output for e in task.examples] == ["cold", "down"]


def test_api_misuse_gets_errors_naming_the_fix(tiny):
    ids = torch.tensor([[3, 4, 5, 6]])
    with pytest.raises(ValueError, match="no head axis"):
        tiny.run(ids, capture=[Capture("hook_resid_post", heads=[0])])
    with pytest.raises(ValueError, match="width 7 but the site is 32 wide"):
        tiny.run(ids, edits=[AddVector("hook_resid_post", torch.ones(7), layers=0)])
    with pytest.raises(ValueError, match="hold no 'blocks.1.hook_resid_pre'"):
        tiny.run(ids, edits=[Patch("hook_resid_pre", {"blocks.0.hook_resid_pre": torch.zeros(1, 4, 32)})])
    with pytest.raises(ValueError, match="empty text"):
        tiny.run("")
    with pytest.raises(ValueError, match=r"run\(\[\]\)"):
        tiny.run([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.run(torch.tensor([[3, tiny.d_vocab + 5]]))


def test_a_damaged_args_file_is_a_clear_error(tmp_path):
    from analyses.resumable import ResumableRun

    ResumableRun(tmp_path, {"seed": 0})
    (tmp_path / "parts" / "args.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*new --out"):
        ResumableRun(tmp_path, {"seed": 0})


def test_concurrent_writers_of_one_report_all_succeed(tmp_path):
    from analyses.report.html import write_report

    errors = []

    def write(i):
        try:
            write_report(tmp_path / "report.html", f"run {i}", [("s", f"text {i}", [])])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and "run " in (tmp_path / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left behind


def test_a_diverging_gd_fit_stops_with_the_reason(tiny):
    from interp.finetune import GDConfig, GDCounterpart

    gd = GDCounterpart(copy.copy(tiny))
    with pytest.raises(ValueError, match="lr must be a finite number"):
        GDConfig(lr=float("inf"))
    with pytest.raises(ValueError, match="diverged"):
        gd.fit([[3, 4, 5, 6, 7]], [2], GDConfig(params="all", lr=1e30, epochs=3, loss="all"))


def test_label_flags_task_source_and_one_class_demo_sets_are_recorded(model_dir, tmp_path):
    from analyses.kernel.reconstruction import kernel_reconstruction
    from interp.tasks import resolve_task

    data = _toy_folder(tmp_path / "toy")
    out = tmp_path / "k"
    assert cli.main(["kernel", "--model", model_dir, "--task", str(data), "--k", "1", "--n", "6", "--parts", "reconstruction",
                     "--label-words", "p,q", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    p = res["protocol"]
    assert p["task_source"] == f"folder:{data.resolve()}" and len(p["task_sha256"]) == 64
    assert res["reconstruction"]["baselines"] and "p" in json.dumps(res["prompts"]["texts"])  # the prompts show the new words
    # k=1: every prompt's demo set is one class, which the result and its summary say
    r = kernel_reconstruction(load_model(make_tiny_llama(n_layers=2), tokenizer=make_char_tokenizer()), resolve_task(str(data)),
                              k=1, n=6, seed=0)
    assert r.setting["one_class_prompts"] == 6 and "one class only" in r.summary()
    assert cli.main(["kernel", "--model", model_dir, "--task", str(data), "--label-words", "p", "--out", str(out)]) == 2


def test_concurrent_writers_of_one_results_json_all_succeed(tmp_path):
    from analyses.report.html import write_json_atomic

    errors = []

    def write(i):
        try:
            write_json_atomic(tmp_path / "results.json", {"run": i, "values": list(range(200))})
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads((tmp_path / "results.json").read_text())["values"] == list(range(200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_label_policy_flag_reaches_the_prompts(model_dir, tmp_path, capsys):
    """Multi-token label words: the error names --label-policy, and with it the command runs and
    records the policy."""
    data = _toy_folder(tmp_path / "toy")
    common = ["kernel", "--model", model_dir, "--task", str(data), "--k", "2", "--n", "6", "--parts", "reconstruction",
              "--label-words", "xa,yb", "--quiet", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert cli.main(common) == 2
    err = capsys.readouterr().err
    assert 'label_policy="sequence"' in err and "Traceback" not in err
    assert cli.main([*common, "--label-policy", "sequence"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["protocol"]["label_policy"] == "sequence"


def test_provenance_and_protocol_need_no_local_weights(tiny):
    """An NDIF-served model has meta weights: the protocol says the digest is unknown instead of
    failing after the run, and provenance names the runner without building one."""
    from types import SimpleNamespace

    from interp.protocol import model_protocol

    with torch.device("meta"):
        meta = make_tiny_llama(n_layers=2)
    p = model_protocol(SimpleNamespace(hf_model=meta, bos_policy={"prepend_bos": False}))
    assert p["weights_sha256"] is None and p["dtype"] == "float32"
    fresh = load_model(make_tiny_llama(n_layers=2), tokenizer=make_char_tokenizer())
    assert "fast path" in fresh.provenance()["runner"] and getattr(fresh, "_runner", None) is None
