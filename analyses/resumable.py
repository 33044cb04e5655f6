"""Resumable runs: the parts of a long run are saved as they finish, so a run that is killed
(``kill -9``, a lost node, a full disk) and started again with the same arguments picks up where it
stopped instead of recomputing what was already done.

Layout, under the run's output folder ``OUT``::

    OUT/parts/args.json           the arguments of the run (JSON); a restart must pass the same ones
    OUT/parts/{name}.safetensors  the result of each finished part (:mod:`analyses.safe_parts`)
    OUT/parts/digests.json        the SHA-256 of each part as written; a part that no longer matches is recomputed
    OUT/results.json              written at the end, as before (``report.write_json_atomic``)

Usage::

    run = ResumableRun(out, {"checkpoint": name, "n_tasks": n_tasks, "seed": seed})
    r = run.part("gd", lambda: trained_vs_gd(model, n_tasks=n_tasks, seed=seed))
    results["resumed_parts"] = run.summary()   # {"loaded": [...], "computed": [...]}

What a part returns (the analyses' result dataclasses, tensors, numbers, lists, dicts) is saved
without pickle: the structure as JSON in a safetensors file's header, the tensors in its body.  A
results folder someone hands you therefore never runs code when it is resumed; a file that is not
what this module writes is refused and the part computed again.  Pickled parts of earlier versions
(``{name}.pkl``) are never loaded.  A loaded part is the same object a fresh one would be:
``to_dict()`` and ``figures()`` work after a resume.  Every file is written to a temporary file in
the same folder and renamed over the target (``os.replace``), so a kill at any moment leaves either
the old file, the new one, or none — never half of one; a stray temporary file from a killed write
is ignored and removed on the next start.

``args`` must identify everything the parts depend on (model, data sizes, seeds ...).  If
``OUT/parts/args.json`` exists with different arguments, :class:`ResumableRun` raises
``ValueError`` rather than mixing results of two runs: pick a new output folder or delete the old.
Saved parts are keyed by the arguments, not by the code: after changing an analysis, delete
``OUT/parts`` (or use a new folder) to recompute it.  A run that completed is also reloaded whole
when started again into the same folder.

Testing aid: with the environment variable ``ICL_INTERP_PART_DELAY`` set to a number of seconds, the
run sleeps that long after saving each computed part, which gives a test a deterministic window to
kill the process between parts (``tests/unit/analyses/test_kill_resume.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

PART_DELAY_ENV = "ICL_INTERP_PART_DELAY"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NoResume:
    """The :class:`ResumableRun` interface when there is no output folder: every part computed."""

    def __init__(self):
        self.loaded: list[str] = []
        self.computed: list[str] = []

    def part(self, name: str, compute: Callable[[], T]) -> T:
        self.computed.append(name)
        return compute()

    def summary(self) -> dict:
        return {"loaded": [], "computed": list(self.computed)}


def resumable(out, args: dict, *, progress: bool = False):
    """A :class:`ResumableRun` under ``out``, or :class:`NoResume` when ``out`` is None."""
    return NoResume() if out is None else ResumableRun(out, args, progress=progress)


def model_args(model, task) -> dict:
    """What identifies the model and the task in a run's arguments: name, a digest of the weights,
    the task's name, size and template."""
    from dataclasses import asdict

    from interp.finetune import parameter_hash

    return {"model": model.name, "weights_sha256": parameter_hash(model), "task": task.name,
            "task_examples": len(task.examples), "task_test_examples": len(task.test_examples or []),
            "template": asdict(task.template)}


class ResumableRun:
    """Parts of one run saved as they finish under ``OUT/parts/``; a restarted run with the same
    arguments loads them instead of recomputing.

    ``loaded`` and ``computed`` list the parts loaded from disk and computed in this invocation.
    """

    def __init__(self, out: str | os.PathLike, args: dict, *, progress: bool = False):
        self.dir = Path(out) / "parts"
        self.args = json.loads(json.dumps(args))  # as it reads back from disk (tuples → lists ...)
        self.progress = progress
        self.loaded: list[str] = []
        self.computed: list[str] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        for pattern in (".*.safetensors-*", ".digests.json-*"):  # temporary files of a write that was killed
            for stray in self.dir.glob(pattern):
                stray.unlink(missing_ok=True)
        args_file = self.dir / "args.json"
        if args_file.exists():
            try:
                saved = json.loads(args_file.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"{args_file} is not valid JSON ({err}): the results folder is damaged or not one this toolkit "
                                 f"wrote; pick a new --out folder, or delete {self.dir} to start afresh") from None
            if saved != self.args:
                changed = sorted(k for k in saved.keys() | self.args.keys() if saved.get(k) != self.args.get(k))
                raise ValueError(
                    f"{Path(out)} holds the saved parts of a run with different arguments (differing: {', '.join(changed)}); "
                    f"pick a new --out folder, or delete {self.dir} to start this run afresh")
        else:
            _write_atomic(args_file, json.dumps(self.args, indent=2).encode())

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def part(self, name: str, compute: Callable[[], T]) -> T:
        """The result of part ``name``: loaded from ``OUT/parts/{name}.safetensors`` when a
        previous invocation finished it, else ``compute()``, saved atomically before it is
        returned."""
        from analyses.safe_parts import dumps, loads

        path = self.path(name)
        if (self.dir / f"{name}.pkl").exists():
            warnings.warn(f"{self.dir / (name + '.pkl')} is a pickled part of an earlier version: pickles are never loaded "
                          "(loading one can run code); computing the part again", stacklevel=2)
        if path.exists():
            blob = path.read_bytes()
            recorded = self._digests().get(name)
            try:
                if recorded is not None and hashlib.sha256(blob).hexdigest() != recorded:
                    raise ValueError("it does not match the digest recorded when it was saved (changed since)")
                value = loads(blob)
            except Exception as err:  # tampered, corrupt, or the result class changed since it was saved
                warnings.warn(f"could not load the saved part {path} ({err}); computing it again", stacklevel=2)
            else:
                self.loaded.append(name)
                self._say(f"part {name}: loaded from {path}")
                return value
        self._say(f"part {name}: computing")
        value = compute()
        blob = dumps(value)
        _write_atomic(path, blob)
        _write_atomic(self.dir / "digests.json",
                      json.dumps({**self._digests(), name: hashlib.sha256(blob).hexdigest()}, indent=2, sort_keys=True).encode())
        self.computed.append(name)
        self._say(f"part {name}: saved to {path}")
        delay = float(os.environ.get(PART_DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        return value

    def _digests(self) -> dict:
        """SHA-256 of every saved part, as recorded when it was written (``parts/digests.json``)."""
        path = self.dir / "digests.json"
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def summary(self) -> dict:
        """``{"loaded": [...], "computed": [...]}``: the parts of this invocation, for results.json."""
        return {"loaded": list(self.loaded), "computed": list(self.computed)}

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)
