"""The command line: `icl-interp verify` on a local model folder prints JSON and sets the exit
code from the checks."""
import json

import pytest

from analyses import cli
from interp import verify as verify_module
from tests.conftest import make_char_tokenizer, make_tiny_llama


TEXTS = ["--text", "ab cd ef", "--text", "hello"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    make_tiny_llama().save_pretrained(d)
    make_char_tokenizer().save_pretrained(d)
    return str(d)


def test_verify_passes_and_prints_json(model_dir, capsys):
    code = cli.main(["verify", "--model", model_dir, *TEXTS])
    out = json.loads(capsys.readouterr().out)
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
