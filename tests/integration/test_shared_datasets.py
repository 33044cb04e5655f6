"""Validation on the real datasets in ../shared/datasets (or $ICL_INTERP_DATA); skipped cleanly
when the folder is absent — the package itself never needs it."""
import json
import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("ICL_INTERP_DATA", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
needs_data = pytest.mark.skipif(not (ROOT / "classification" / "sst2").exists(),
                                reason=f"no datasets folder at {ROOT} (set ICL_INTERP_DATA to use one)")


@needs_data
@pytest.mark.parametrize("name", ["sst2", "agnews", "cb"])
def test_dataset_folders_load_with_their_meta(name):
    from interp.tasks import load_dataset_dir

    folder = ROOT / "classification" / name
    meta = json.loads((folder / "meta.json").read_text())
    task = load_dataset_dir(folder)
    assert len(task.examples) == meta["rows"]["train"] and len(task.test_examples) == meta["rows"]["test"]
    assert task.label_words == meta["label_words"]
    counts = {str(c): sum(e.label == c for e in task.test_examples) for c in range(len(task.label_words))}
    assert counts == meta["label_counts"]["test"]


@needs_data
def test_kernel_reconstruction_on_sst2_scores_like_plain_scoring(smollm2):
    """The reconstruction's model accuracy on real test queries equals plain scoring of the same
    prompts (demos from train, queries from test)."""
    from analyses.kernel.reconstruction import kernel_reconstruction
    from interp.prompts import build_icl_batch
    from interp.scoring import score_batch
    from interp.tasks import load_dataset_dir

    task = load_dataset_dir(ROOT / "classification" / "sst2")
    r = kernel_reconstruction(smollm2, task, k=2, n=8, seed=0)
    batch = build_icl_batch(smollm2.tokenizer, task, k=2, n=8, seed=0, padding_side="left")
    assert {q.input for q in batch.queries} <= {e.input for e in task.test_examples}
    assert r.model_accuracy["correct"] == int(score_batch(smollm2, batch)["correct"].sum())
