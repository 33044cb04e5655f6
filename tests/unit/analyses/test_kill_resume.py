"""Long runs (issue 8): a ``linreg analyze`` run killed with SIGKILL after its first part was saved,
then started again with the same arguments, loads that part instead of recomputing it and ends with
the numbers of an uninterrupted run; plus :class:`analyses.resumable.ResumableRun` on its own."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyses.report.html import strict_json
from analyses.resumable import PART_DELAY_ENV, ResumableRun
from analyses.safe_parts import UnsafePart, dumps, loads

ROOT = Path(__file__).resolve().parents[3]
ANALYZE = ["linreg", "analyze", "--checkpoint", "lsa-d10-n10", "--parts", "gd,algorithms,probes", "--n-tasks", "1024",
           "--threads", "1"]


def _cli(out: Path, delay: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(PART_DELAY_ENV, None)
    if delay is not None:
        env[PART_DELAY_ENV] = str(delay)  # sleep after each saved part: a deterministic window to kill in
    return subprocess.Popen([sys.executable, "-m", "analyses.cli", *ANALYZE, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{stdout}\n{stderr}"
    return stderr


def _without_resume_record(results: dict) -> dict:
    """Without the record of what was resumed and the command line (its --out differs)."""
    return {k: v for k, v in results.items() if k not in ("resumed_parts", "command_line")}


def _assert_same_numbers(a, b, where="results"):
    """Equal structure, strings and ints; floats equal to 1e-12 relative.  (which_algorithm's ILWD is
    not bit-identical across processes even without resuming — fresh runs differ in the last ulp,
    from memory-alignment-dependent float64 kernels — so exact equality would test the platform.)"""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same_numbers(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_killed_run_resumes_without_recomputing_finished_parts(tmp_path):
    out, ref = tmp_path / "run", tmp_path / "uninterrupted"
    reference = _cli(ref)  # the same command, never interrupted, runs beside the one we kill
    victim = _cli(out, delay=600)
    try:
        gd, algorithms = out / "parts" / "gd.safetensors", out / "parts" / "algorithms.safetensors"
        deadline = time.monotonic() + 300
        while not gd.exists():
            assert victim.poll() is None, f"the run ended before saving gd:\n{victim.communicate()[1]}"
            assert time.monotonic() < deadline, "gd.safetensors never appeared"
            time.sleep(0.05)
        assert not algorithms.exists()  # it sleeps 600 s after saving gd: we kill it between parts
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        assert victim.returncode == -signal.SIGKILL

        # what the killed run left: gd saved whole, nothing half-written
        assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text())
        assert sorted(p.name for p in (out / "parts").iterdir()) == ["args.json", "digests.json", "gd.safetensors"]
        before = gd.stat()
        gd_bytes = gd.read_bytes()
        digest = hashlib.sha256(gd_bytes).hexdigest()
        assert type(loads(gd_bytes)).__name__ == "TrainedVsGDResult"

        stderr = _finish(_cli(out))  # the same command again, to completion
        after = gd.stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        assert hashlib.sha256(gd.read_bytes()).hexdigest() == digest  # gd.safetensors was not rewritten
        assert "part gd: loaded" in stderr and "part gd: computing" not in stderr
        results = json.loads((out / "results.json").read_text())
        assert results["resumed_parts"] == {"loaded": ["gd"], "computed": ["algorithms", "probes"]}
        assert sorted(p.name for p in (out / "parts").iterdir()) == ["algorithms.safetensors", "args.json", "digests.json", "gd.safetensors", "probes.safetensors"]
        assert (out / "report.html").exists()
        assert results["trained_vs_gd"] == json.loads(strict_json(loads(gd_bytes).to_dict()))  # gd's numbers: the saved ones

        _finish(reference)
        expected = json.loads((ref / "results.json").read_text())
        assert expected["resumed_parts"] == {"loaded": [], "computed": ["gd", "algorithms", "probes"]}
        _assert_same_numbers(_without_resume_record(results), _without_resume_record(expected))
    finally:
        for proc in (victim, reference):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# ResumableRun on its own

def test_a_part_is_computed_once_then_loaded(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": [1.5, 2.5]}

    run = ResumableRun(tmp_path, {"seed": 0, "ks": (1, 2)})
    assert run.part("a", compute) == {"value": [1.5, 2.5]}
    assert run.computed == ["a"] and run.loaded == []
    again = ResumableRun(tmp_path, {"seed": 0, "ks": [1, 2]})  # same arguments (a tuple reads back as a list)
    assert again.part("a", compute) == {"value": [1.5, 2.5]}
    assert again.part("b", lambda: 3) == 3
    assert len(calls) == 1
    assert again.summary() == {"loaded": ["a"], "computed": ["b"]}
    assert json.loads((tmp_path / "parts" / "args.json").read_text()) == {"seed": 0, "ks": [1, 2]}


def test_result_objects_survive_a_resume(tmp_path):
    from analyses.linreg.report import run_linreg_analysis

    first = run_linreg_analysis("lsa-d10-n10", tmp_path, parts=["probes"], n_tasks=64)
    second = run_linreg_analysis("lsa-d10-n10", tmp_path, parts=["probes"], n_tasks=64)
    assert first["resumed_parts"] == {"loaded": [], "computed": ["probes"]}
    assert second["resumed_parts"] == {"loaded": ["probes"], "computed": []}
    assert _without_resume_record(first) == _without_resume_record(second)
    p, s = loads((tmp_path / "parts" / "probes.safetensors").read_bytes())
    assert p.figures() and s.figures()  # the analysis objects themselves, not just their numbers
    assert "resumed_parts" not in run_linreg_analysis("lsa-d10-n10", None, parts=["probes"], n_tasks=64)


def test_different_arguments_are_refused(tmp_path):
    ResumableRun(tmp_path, {"seed": 0, "n_tasks": 10}).part("a", lambda: 1)
    with pytest.raises(ValueError, match=r"different arguments \(differing: seed\).*new --out"):
        ResumableRun(tmp_path, {"seed": 1, "n_tasks": 10})
    assert ResumableRun(tmp_path, {"seed": 0, "n_tasks": 10}).part("a", lambda: 2) == 1  # untouched


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    run = ResumableRun(tmp_path, {})
    run.part("good", lambda: [1, 2, 3])
    with pytest.raises(Exception):
        run.part("bad", lambda: (lambda: None))  # a function is not a result: the save is refused
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["args.json", "digests.json", "good.safetensors"]
    (tmp_path / "parts" / ".good.safetensors-stray").write_bytes(b"half")  # what a write killed mid-way leaves
    assert ResumableRun(tmp_path, {}).part("good", lambda: None) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["args.json", "digests.json", "good.safetensors"]


def test_a_part_that_no_longer_loads_is_computed_again(tmp_path):
    run = ResumableRun(tmp_path, {})
    (tmp_path / "parts" / "a.safetensors").write_bytes(b"not a part")
    with pytest.warns(UserWarning, match="computing it again"):
        assert run.part("a", lambda: 7) == 7
    assert run.computed == ["a"] and ResumableRun(tmp_path, {}).part("a", lambda: 8) == 7


# a results folder someone hands you never runs code (issue 16)

class _Payload:
    """A pickle that writes a marker file when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_pickled_part_is_never_loaded(tmp_path):
    import pickle

    marker = tmp_path / "marker"
    parts = tmp_path / "run" / "parts"
    ResumableRun(tmp_path / "run", {}).part("a", lambda: 1)
    (parts / "a.safetensors").unlink()
    (parts / "a.pkl").write_bytes(pickle.dumps(_Payload(marker)))  # an old-format part with a payload
    with pytest.warns(UserWarning, match="pickles are never loaded"):
        assert ResumableRun(tmp_path / "run", {}).part("a", lambda: 2) == 2
    assert not marker.exists()


def test_a_tampered_part_naming_a_foreign_class_is_refused(tmp_path):
    import json as _json
    import struct

    from safetensors.torch import save

    evil = {"__dataclass__": "subprocess:Popen", "fields": {"args": ["touch", str(tmp_path / "marker")]}}
    blob = save({}, metadata={"format": "icl-interp part 1", "value": _json.dumps(evil)})
    with pytest.raises(UnsafePart, match="only the project's own result classes"):
        loads(blob)
    for bad in (b"", b"\x00" * 8, struct.pack("<Q", 5) + b"nope!", save({}, metadata={"format": "other", "value": "1"})):
        with pytest.raises(UnsafePart):
            loads(bad)
    assert not (tmp_path / "marker").exists()


def test_parts_round_trip_results_tensors_and_special_floats():
    import dataclasses

    import torch

    from analyses.kernel.reconstruction import HeldOutSelection

    sel = HeldOutSelection(layer=3, head=1, selection_agreement=0.5, heldout_agreement={"accuracy": float("nan")},
                           heldout_gold_accuracy={"accuracy": 1.0}, n_selection=7, n_heldout=3)
    value = {"sel": sel, "grid": torch.arange(6.0).reshape(2, 3), "pair": (1, float("-inf")), 2: [None, True, "x"]}
    back = loads(dumps(value))
    assert isinstance(back["sel"], HeldOutSelection) and back["sel"].layer == 3
    assert math.isnan(back["sel"].heldout_agreement["accuracy"]) and back["pair"] == (1, float("-inf"))
    assert torch.equal(back["grid"], value["grid"]) and back[2] == [None, True, "x"]
    assert dataclasses.asdict(back["sel"])["heldout_gold_accuracy"] == {"accuracy": 1.0}
    with pytest.raises(TypeError, match="cannot save"):
        dumps({"f": print})


def test_kernel_icl_vs_gd_and_heads_resume_their_finished_parts(tmp_path, monkeypatch, char_tokenizer):
    """A second start into the same folder loads every finished part: the analyses are not
    called again (here they would raise) and results.json is byte-identical (the heads report
    apart from its wall times)."""
    import copy

    import analyses.heads.atlas as heads_module
    import analyses.gd.report as gd_module
    import analyses.kernel.report as kernel_module
    from interp import load_model
    from interp.finetune import GDConfig
    from interp.prompts import Template
    from interp.tasks import Example, Task
    from tests.conftest import make_tiny_llama

    words = ["x", "y"]
    inputs = [f"{a}{b} {c}" for a, b, c in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "mnopqrstuvwxyzabcdef")]
    task = Task("toy", [Example(t, words[i % 2], i % 2) for i, t in enumerate(inputs)], kind="classification",
                label_words=words, template=Template(space_before_text=False))
    model = load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))
    cfg = GDConfig(lr=0.1, loss="all")

    def runs():
        kernel_module.run_kernel_analysis(model, task, k=2, n=6, seed=0, out=tmp_path / "kernel", parts=["reconstruction", "selection"])
        gd_module.run_icl_vs_gd_analysis(model, task, k=2, n=4, seed=0, config=cfg, orders=2, orders_n=3, out=tmp_path / "gd")
        heads_module.run_heads_report(model, task, out=tmp_path / "heads", k=2, n=3, seed=0, scores=["kernel", "exact_patching"])

    runs()
    first = {name: (tmp_path / name / "results.json").read_bytes() for name in ("kernel", "gd", "heads")}

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a part that was saved")

    for module, names in ((kernel_module, ("kernel_reconstructions", "demo_selection")), (gd_module, ("icl_vs_gd", "order_sensitivity"))):
        for name in names:
            monkeypatch.setattr(module, name, boom)
    import analyses.heads.attribution
    import analyses.kernel.reconstruction
    monkeypatch.setattr(analyses.kernel.reconstruction, "kernel_reconstruction", boom)
    monkeypatch.setattr(analyses.heads.attribution, "head_attribution", boom)
    runs()
    for name, data in first.items():
        if name == "heads":  # it records wall times: equal apart from them
            strip = lambda d: {k: v for k, v in json.loads(d).items() if k != "seconds"}  # noqa: E731
            assert strip((tmp_path / name / "results.json").read_bytes()) == strip(data)
        else:
            assert (tmp_path / name / "results.json").read_bytes() == data, name


def test_a_part_that_no_longer_matches_its_digest_is_named_and_recomputed(tmp_path):
    from analyses.safe_parts import dumps

    ResumableRun(tmp_path, {}).part("a", lambda: {"accuracy": 0.5})
    (tmp_path / "parts" / "a.safetensors").write_bytes(dumps({"accuracy": 0.99}))  # a believable fake
    with pytest.warns(UserWarning, match=r"a.safetensors.*does not match the digest"):
        assert ResumableRun(tmp_path, {}).part("a", lambda: {"accuracy": 0.5}) == {"accuracy": 0.5}


def _toy_dataset(folder: Path) -> Path:
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"label_words": ["x", "y"], "template": {"space_before_text": False}}))
    inputs = [f"{a}{b} {c}" for a, b, c in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "mnopqrstuvwxyzabcdef")]
    for split, rows in (("train", range(14)), ("test", range(14, 20))):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in rows:
                f.write(json.dumps({"text": inputs[i], "label": i % 2, "label_name": "xy"[i % 2]}) + "\n")
    return folder


LONG_COMMANDS = {
    "kernel": (["kernel", "--k", "2", "--n", "6", "--parts", "reconstruction,selection"], "reconstruction", "selection"),
    "icl-vs-gd": (["icl-vs-gd", "--k", "2", "--n", "4", "--orders", "2", "--orders-n", "3"], "icl_vs_gd", "order_sensitivity"),
    "heads": (["heads", "--k", "2", "--n", "3", "--scores", "kernel,exact_patching"], "kernel", "exact_patching+attribution_patching"),
}


@pytest.mark.parametrize("command", sorted(LONG_COMMANDS))
def test_each_long_command_killed_between_parts_resumes(command, tmp_path, tiny_model_dir):
    """kill -9 after the first part is saved; the same command again loads it (bytes unchanged),
    computes the rest, and ends with the numbers of an uninterrupted run."""
    argv, first, second = LONG_COMMANDS[command]
    data = _toy_dataset(tmp_path / "toy")
    base = [sys.executable, "-m", "analyses.cli", *argv, "--model", tiny_model_dir, "--task", str(data), "--threads", "1"]

    def start(out, delay=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop(PART_DELAY_ENV, None)
        if delay is not None:
            env[PART_DELAY_ENV] = str(delay)
        return subprocess.Popen([*base, "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    out, ref = tmp_path / "run", tmp_path / "uninterrupted"
    victim = start(out, delay=600)
    try:
        saved = out / "parts" / f"{first}.safetensors"
        deadline = time.monotonic() + 300
        while not saved.exists():
            assert victim.poll() is None, f"the run ended before saving {first}:\n{victim.communicate()[1]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        assert not (out / "parts" / f"{second}.safetensors").exists()
        digest = hashlib.sha256(saved.read_bytes()).hexdigest()
        stderr = _finish(start(out))
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest  # loaded, not rewritten
        assert (out / "parts" / f"{second}.safetensors").exists()
        _finish(start(ref))
        got, want = (json.loads((d / "results.json").read_text()) for d in (out, ref))
        for d in (got, want):
            d.pop("seconds", None), d.pop("command_line")  # wall times, and --out differs
        _assert_same_numbers(got, want)
        assert "Traceback" not in stderr
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
