"""``--device`` and ``--remote`` (issue 8): every command that loads a language model passes them to
``load_model``; ``--remote`` implies the nnsight engine and refuses what cannot run on NDIF."""
import pytest

import interp
from analyses import cli

COMMANDS = ["accuracy", "kernel", "icl-vs-gd", "heads", "demo"]


class Loaded(Exception):
    """Raised by the fake load_model: the command got as far as loading, with these arguments."""


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_load_model(model, **kwargs):
        seen.append((model, kwargs))
        raise Loaded

    monkeypatch.setattr(interp, "load_model", fake_load_model)  # the commands import it from interp when they run
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_remote_loads_a_hub_model_through_nnsight(command, calls, tmp_path):
    with pytest.raises(Loaded):
        cli.main([command, "--model", "openai-community/gpt2", "--remote", "--out", str(tmp_path)])
    assert calls == [("openai-community/gpt2", {"engine": "nnsight", "device": None, "remote": True})]


@pytest.mark.parametrize("command", COMMANDS)
def test_device_is_passed_on_and_the_engine_default_is_unchanged(command, calls, tmp_path):
    with pytest.raises(Loaded):
        cli.main([command, "--device", "cpu", "--out", str(tmp_path)])
    assert calls == [("smollm2-135m", {"engine": "transformer-lens", "device": "cpu", "remote": False})]


def test_defaults_and_explicit_nnsight(calls):
    with pytest.raises(Loaded):
        cli.main(["accuracy"])
    with pytest.raises(Loaded):
        cli.main(["accuracy", "--model", "org/model", "--remote", "--engine", "nnsight"])
    assert calls == [("smollm2-135m", {"engine": "transformer-lens", "device": None, "remote": False}),
                     ("org/model", {"engine": "nnsight", "device": None, "remote": True})]


@pytest.mark.parametrize("argv, message", [
    (["accuracy", "--model", "org/model", "--remote", "--engine", "transformer-lens"], "--remote runs through nnsight"),
    (["accuracy", "--remote"], "needs a Hugging Face hub model id"),  # the embedded default model
    (["accuracy", "--model", "org/model", "--remote", "--device", "cpu"], "with --remote the model runs on NDIF"),
    (["accuracy", "--device", "not-a-device"], "--device 'not-a-device'"),
    (["verify", "--remote"], "verify compares both engines"),
])
def test_bad_combinations_fail_clearly_before_loading(argv, message, calls, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert calls == []


def test_a_local_folder_is_not_a_remote_model(calls, capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["accuracy", "--model", str(tmp_path), "--remote"])
    assert "not the embedded or local model" in capsys.readouterr().err


def test_cuda_without_a_gpu_fails_clearly(calls, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        cli.main(["accuracy", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err and calls == []


def test_a_remote_run_without_network_ends_with_a_message_not_a_traceback(monkeypatch, capsys):
    def offline(model, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(interp, "load_model", offline)
    assert cli.main(["accuracy", "--model", "org/model", "--remote"]) == 1
    err = capsys.readouterr().err
    assert "--remote run of org/model failed: We couldn't connect" in err and "NDIF_API_KEY" in err
    with pytest.raises(OSError):  # a local run's OSError is not reworded
        cli.main(["accuracy", "--model", "org/model"])
