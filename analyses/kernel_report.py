"""``icl-interp kernel``: the kernel-regression test of one model on one task, as files.

Runs the per-head reconstruction with held-out head selection, attention vs similarity with the
Nadaraya–Watson baseline, the label-words-as-anchors analysis and random vs most-similar demos on
the same seeded queries, and
writes ``results.json`` (model, task, seed, the exact prompts' token ids, every per-head grid)
and a self-contained ``report.html``.  Same arguments and thread count → identical results.json.
"""
from __future__ import annotations

from pathlib import Path

from analyses.anchors import anchors_analysis
from analyses.kernel_regression import demo_selection, kernel_reconstruction
from analyses.kernel_similarity import attention_similarity
from analyses.report import write_json_atomic, write_report
from interp.prompts import build_icl_batch
from interp.tasks import Task, load_jsonl, load_task


def resolve_task(task: str | Task) -> Task:
    """A bundled task name, or a path to a JSONL file (text/label or input/output records)."""
    if isinstance(task, Task):
        return task
    if task.endswith(".jsonl") or Path(task).exists():
        return load_jsonl(task)
    return load_task(task)


def run_kernel_analysis(model, task: str | Task, *, k: int = 4, n: int = 100, seed: int = 0, out: str | Path | None = None,
                        anchors_n: int | None = None) -> dict:
    task = resolve_task(task)
    prompts = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx)
    recon = kernel_reconstruction(model, task, k=k, n=n, seed=seed)
    sim = attention_similarity(model, task, k=k, n=n, seed=seed)
    anchors = anchors_analysis(model, task, k=k, n=anchors_n or min(n, 40), seed=seed)
    selection = demo_selection(model, task, k=k, n=n, seed=seed)
    results = {
        "model": model.name, "engine": model.engine_name, "task": task.name, "k": k, "n": n, "seed": seed,
        "prompts": {"input_ids": prompts.input_ids.tolist(), "attention_mask": prompts.attention_mask.tolist(), "texts": list(prompts.texts)},
        "reconstruction": recon.to_dict(), "similarity": sim.to_dict(), "anchors": anchors.to_dict(),
        "demo_selection": selection.to_dict(),
    }
    if out is not None:
        out = Path(out)
        write_json_atomic(out / "results.json", results)
        write_report(out / "report.html", f"Attention as kernel regression — {model.name}, {task.name}, k={k}, n={n}, seed {seed}", [
            ("Reconstruction of the ICL prediction from attention", recon.summary(), recon.figures()),
            ("Attention vs similarity; Nadaraya-Watson baseline", sim.summary(), sim.figures()),
            ("Label words as anchors", anchors.summary(), anchors.figures()),
            ("Demo selection: random vs most similar", selection.summary(), selection.figures()),
        ])
    return results
