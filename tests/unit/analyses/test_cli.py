"""The command line: `icl-interp verify` on a local model folder prints JSON and sets the exit
code from the checks."""
import json

import pytest

from analyses import cli
from interp import verify as verify_module


TEXTS = ["--text", "ab cd ef", "--text", "hello"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_verify_passes_and_prints_json(model_dir, capsys):
    code = cli.main(["verify", "--model", model_dir, *TEXTS])
    out = _strict(capsys.readouterr().out)
    assert code == 0 and out["passed"] is True
    names = {(c["name"], c["engine"]) for c in out["checks"]}
    assert ("hooked_vs_plain_logits", "nnsight") in names and ("engines_agree_hook_pattern", "both") in names
    assert all(c["value"] <= c["threshold"] for c in out["checks"])


def test_verify_exit_code_is_1_when_a_check_fails(model_dir, capsys, monkeypatch):
    monkeypatch.setitem(verify_module.THRESHOLDS, "logits", -1.0)  # impossible to meet
    code = cli.main(["verify", "--model", model_dir, "--engines", "transformer-lens", *TEXTS])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["passed"] is False
    failed = [c["name"] for c in out["checks"] if not c["passed"]]
    assert failed == ["hooked_vs_plain_logits"]


def test_kernel_analysis_writes_identical_results_for_the_same_seed(model_dir, tmp_path):
    import torch

    from analyses.kernel.report import run_kernel_analysis
    from interp import load_model
    from interp.prompts import Template
    from interp.tasks import Example, Task

    task = Task("toy", [Example(f"ab{c}{d}", ["x", "y"][i % 2], i % 2) for i, (c, d) in enumerate(zip("cdefghijklmnop", "ponmlkjihgfedc"))],
                kind="classification", label_words=["x", "y"], template=Template(space_before_text=False))
    torch.set_num_threads(1)
    texts = []
    for run in ("a", "b"):
        model = load_model(model_dir)
        run_kernel_analysis(model, task, k=2, n=6, seed=1, out=tmp_path / run)
        texts.append((tmp_path / run / "results.json").read_text())
    assert texts[0] == texts[1]
    res = json.loads(texts[0])
    assert res["seed"] == 1 and len(res["prompts"]["input_ids"]) == 6
    assert len(res["reconstruction"]["agreement"]) == 2 and len(res["reconstruction"]["agreement"][0]) == 4
    assert res["demo_selection"]["random"]["icl_accuracy"] == res["reconstruction"]["model_accuracy"]
    other = run_kernel_analysis(load_model(model_dir), task, k=2, n=6, seed=2)
    assert other["prompts"]["input_ids"] != res["prompts"]["input_ids"]
    html = (tmp_path / "a" / "report.html").read_text()
    import re

    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js inline, nothing fetched


def test_icl_vs_gd_cli_writes_identical_results_for_the_same_seed(model_dir, tmp_path, capsys):
    """`icl-interp icl-vs-gd` on a dataset folder (train pool, test queries): results.json with the
    GD configuration the paper setting implies, the same bytes twice, the report beside it."""
    data = tmp_path / "toy"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"label_words": ["x", "y"], "template": {"space_before_text": False}}))
    for split, rows in (("train", range(0, 12)), ("test", range(12, 18))):
        with open(data / f"{split}.jsonl", "w") as f:
            for i in rows:
                f.write(json.dumps({"text": f"ab{'cdefghijklmnopqrst'[i]}", "label": i % 2, "label_name": ["x", "y"][i % 2]}) + "\n")
    texts = []
    for run in ("a", "b"):
        code = cli.main(["icl-vs-gd", "--model", model_dir, "--task", str(data), "--k", "3", "--n", "4", "--params", "wv:1",
                         "--epochs", "2", "--orders", "2", "--threads", "1", "--out", str(tmp_path / run)])
        assert code == 0
        texts.append((tmp_path / run / "results.json").read_text())
    assert texts[0] == texts[1]
    res = json.loads(texts[0])
    cfg = res["icl_vs_gd"]["config"]
    assert cfg == {"params": "wv:1", "optimizer": "adam", "lr": 1e-3, "epochs": 2, "batch_size": 1, "loss": "label", "layer_causal": False}
    assert len(res["icl_vs_gd"]["fit_losses"]) == 2 * 3  # epochs × demos at batch 1
    assert len(res["icl_vs_gd"]["prompts"]["icl_input_ids"]) == 4 and res["icl_vs_gd"]["model_hash_unchanged"]
    assert set(res["order_sensitivity"]["gd"]) == {"1", "2", "4", "full"}
    assert "plotly" in (tmp_path / "a" / "report.html").read_text()


def _strict(text: str):
    """json.loads that refuses NaN / Infinity (RFC 8259), as a JavaScript or Go client does."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _visible_text(html: str) -> str:
    import re

    return re.sub(r"<script.*?</script>", "", html, flags=re.S)


def test_every_command_writes_strict_json_with_the_protocol_and_no_nan_in_reports(model_dir, tmp_path):
    import re

    words = ["x", "y"]
    data = tmp_path / "toy"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"label_words": words, "template": {"space_before_text": False}}))
    inputs = [f"{a}{b} {c}" for a, b, c in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "mnopqrstuvwxyzabcdef")]
    for split, rows in (("train", inputs[:14]), ("test", inputs[14:])):
        with open(data / f"{split}.jsonl", "w") as f:
            for i, text in enumerate(rows):
                f.write(json.dumps({"text": text, "label": i % 2, "label_name": words[i % 2]}) + "\n")
    common = ["--model", model_dir, "--task", str(data), "--threads", "1", "--quiet"]
    runs = {
        "accuracy": ["accuracy", *common, "--k", "0", "2", "--n", "4"],
        "kernel": ["kernel", *common, "--k", "2", "--n", "6", "--parts", "reconstruction,selection"],
        "icl-vs-gd": ["icl-vs-gd", *common, "--k", "2", "--n", "4"],
        "heads": ["heads", *common, "--k", "2", "--n", "3"],
        "kernel-piecewise": ["kernel", *common, "--k", "2", "--n", "6", "--parts", "reconstruction", "--tokenisation", "piecewise"],
    }
    for name, argv in runs.items():
        out = tmp_path / name
        assert cli.main([*argv, "--out", str(out)]) == 0, name
        res = _strict((out / "results.json").read_text())
        assert res["model_info"]["bos"]["prepend_bos"] is False, name
        if name != "accuracy":
            p = res["protocol"]
            assert p["tokenisation"] == ("piecewise" if name.endswith("piecewise") else "whole-text"), name
            assert p["weights_sha256"] and p["versions"]["torch"] and p["attn_implementation"] == "eager", name
            html = _visible_text((out / "report.html").read_text())
            assert not re.search(r"\bnan\b", html, flags=re.I), name
    # the linear-regression lab's two commands, and verify's JSON on stdout
    lab = tmp_path / "lab"
    assert cli.main(["linreg", "train", "--model", "lsa", "--d", "2", "--n-points", "5", "--steps", "20", "--eval-tasks", "8",
                     "--eval-every", "10", "--quiet", "--out", str(lab)]) == 0
    assert cli.main(["linreg", "analyze", "--checkpoint", str(lab), "--n-tasks", "16", "--quiet", "--out", str(tmp_path / "lab-an")]) == 0
    for out in (lab, tmp_path / "lab-an"):
        _strict((out / "results.json").read_text())
        assert not re.search(r"\bnan\b", _visible_text((out / "report.html").read_text()), flags=re.I), out
    kernel = _strict((tmp_path / "kernel" / "results.json").read_text())
    assert kernel["reconstruction"]["span"] == "block" and kernel["reconstruction_input_label"]["span"] == "input+label"
    assert kernel["protocol"]["span_rules"] == ["block", "input+label"]
