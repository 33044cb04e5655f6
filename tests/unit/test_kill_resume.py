"""Long runs (issue 8): a ``linreg analyze`` run killed with SIGKILL after its first part was saved,
then started again with the same arguments, loads that part instead of recomputing it and ends with
the numbers of an uninterrupted run; plus :class:`analyses.resumable.ResumableRun` on its own."""
import hashlib
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyses.resumable import PART_DELAY_ENV, ResumableRun

ROOT = Path(__file__).resolve().parents[2]
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
    return {k: v for k, v in results.items() if k != "resumed_parts"}


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
        gd, algorithms = out / "parts" / "gd.pkl", out / "parts" / "algorithms.pkl"
        deadline = time.monotonic() + 300
        while not gd.exists():
            assert victim.poll() is None, f"the run ended before saving gd:\n{victim.communicate()[1]}"
            assert time.monotonic() < deadline, "gd.pkl never appeared"
            time.sleep(0.05)
        assert not algorithms.exists()  # it sleeps 600 s after saving gd: we kill it between parts
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        assert victim.returncode == -signal.SIGKILL

        # what the killed run left: gd saved whole, nothing half-written
        assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text())
        assert sorted(p.name for p in (out / "parts").iterdir()) == ["args.json", "gd.pkl"]
        before = gd.stat()
        gd_bytes = gd.read_bytes()
        digest = hashlib.sha256(gd_bytes).hexdigest()
        assert type(pickle.loads(gd_bytes)).__name__ == "TrainedVsGDResult"

        stderr = _finish(_cli(out))  # the same command again, to completion
        after = gd.stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        assert hashlib.sha256(gd.read_bytes()).hexdigest() == digest  # gd.pkl was not rewritten
        assert "part gd: loaded" in stderr and "part gd: computing" not in stderr
        results = json.loads((out / "results.json").read_text())
        assert results["resumed_parts"] == {"loaded": ["gd"], "computed": ["algorithms", "probes"]}
        assert sorted(p.name for p in (out / "parts").iterdir()) == ["algorithms.pkl", "args.json", "gd.pkl", "probes.pkl"]
        assert (out / "report.html").exists()
        assert results["trained_vs_gd"] == json.loads(json.dumps(pickle.loads(gd_bytes).to_dict()))  # gd's numbers: the saved ones

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
    from analyses.linreg_report import run_linreg_analysis

    first = run_linreg_analysis("lsa-d10-n10", tmp_path, parts=["probes"], n_tasks=64)
    second = run_linreg_analysis("lsa-d10-n10", tmp_path, parts=["probes"], n_tasks=64)
    assert first["resumed_parts"] == {"loaded": [], "computed": ["probes"]}
    assert second["resumed_parts"] == {"loaded": ["probes"], "computed": []}
    assert _without_resume_record(first) == _without_resume_record(second)
    p, s = pickle.loads((tmp_path / "parts" / "probes.pkl").read_bytes())
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
        run.part("bad", lambda: (lambda: None))  # a lambda cannot be pickled: the write fails
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["args.json", "good.pkl"]
    (tmp_path / "parts" / ".good.pkl-stray").write_bytes(b"half")  # what a write killed mid-way leaves
    assert ResumableRun(tmp_path, {}).part("good", lambda: None) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["args.json", "good.pkl"]


def test_a_part_that_no_longer_loads_is_computed_again(tmp_path):
    run = ResumableRun(tmp_path, {})
    (tmp_path / "parts" / "a.pkl").write_bytes(b"not a pickle")
    with pytest.warns(UserWarning, match="computing it again"):
        assert run.part("a", lambda: 7) == 7
    assert run.computed == ["a"] and ResumableRun(tmp_path, {}).part("a", lambda: 8) == 7
