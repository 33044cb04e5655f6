"""`icl-interp reproduce` on the embedded SmolLM2 at the smoke budget: Han et al.'s Table 2 row
shows the paper's 0.797 beside our held-out agreement (the number the analysis computes on the
same seeded prompts) with a verdict, and the index report holds every paper run."""
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DATA = Path(os.environ.get("ICL_INTERP_DATA", Path(__file__).resolve().parents[3] / "shared" / "datasets"))


@pytest.mark.skipif(not (DATA / "classification" / "sst2").exists(), reason="needs ../shared/datasets (SST-2)")
def test_reproduce_han_and_von_oswald_smoke(smollm2, tmp_path, monkeypatch):
    import torch

    from analyses.kernel.reconstruction import kernel_reconstruction
    from analyses.reproduce.han2023 import BUDGETS
    from analyses.reproduce.run import reproduce
    from interp.tasks import resolve_task

    monkeypatch.setenv("ICL_INTERP_DATA", str(DATA))
    torch.set_num_threads(2)
    results = reproduce(["han2023", "vonoswald2023"], smollm2, "smoke", out=tmp_path)
    han = results["han2023"]
    row = next(c for c in han["claims"] if c["source"] == "Table 2, sst2" and "random head" in c["finding"])
    assert "0.797" in row["paper"] and row["paper_setting"]["model"] == "GPT-J"
    assert row["verdict"] in ("reproduces", "does not reproduce") and row["differs"][:2] == ["model", "size"]
    b = BUDGETS["smoke"]
    ref = kernel_reconstruction(smollm2, resolve_task(str(DATA / "classification" / "sst2")), k=b["k"], n=b["n"], seed=0)
    assert row["ours"]["value"] == ref.selection.heldout_agreement["accuracy"]
    assert results["vonoswald2023"]["counts"]["reproduces"] >= 3  # the lab's LSA is one GD step
    index = json.loads((tmp_path / "results.json").read_text())
    assert set(index["papers"]) == {"han2023", "vonoswald2023"}
    text = (tmp_path / "han2023" / "report.html").read_text()
    assert "0.797" in text and "<h2>Provenance</h2>" in text and "Verdict rule" in text
