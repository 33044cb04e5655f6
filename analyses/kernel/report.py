"""``icl-interp kernel``: the kernel-regression test of one model on one task, as files.

Runs the per-head reconstruction with held-out head selection (Han et al. 2023 §5.2, §5.5),
attention vs similarity with the Nadaraya–Watson baseline (§5.3), key/value probes (§5.4), the
label-words-as-anchors analysis (Wang et al. 2023) and random vs most-similar demos on the same
seeded queries, and writes ``results.json`` (model, task, seed, the exact prompts' token ids, every
per-head grid) and a self-contained ``report.html``.  Same arguments and thread count → identical
results.json.  ``parts`` picks a subset; the costly parts (similarity's isolated runs, probes'
full key/value captures, anchors' gradients) take their own, smaller ``n``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analyses.kernel.anchors import anchors_analysis
from analyses.kernel.reconstruction import demo_selection, kernel_reconstructions
from analyses.kernel.similarity import attention_similarity
from analyses.kernel.kv_probes import kv_probes
from analyses.report.html import write_run
from interp.prompts import build_icl_batch
from interp.tasks import Task, resolve_task

PARTS = ("reconstruction", "similarity", "probes", "anchors", "selection")


def run_kernel_analysis(model, task: str | Task, *, k: int = 4, n: int = 100, seed: int = 0, out: str | Path | None = None,
                        parts: Sequence[str] = PARTS, similarity_n: int | None = None, probes_n: int | None = None,
                        anchors_n: int | None = None, progress: bool = False) -> dict:
    """Every part in ``parts`` on ``n`` seeded queries (``similarity_n`` / ``probes_n`` /
    ``anchors_n`` default to min(n, 100) / min(n, 100) / min(n, 40)); returns the results dict."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    task = resolve_task(task)
    prompts = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx)
    from analyses.resumable import model_args, resumable

    run = resumable(out, {"command": "kernel", **model_args(model, task), "k": k, "n": n, "seed": seed, "parts": list(parts),
                          "similarity_n": similarity_n, "probes_n": probes_n, "anchors_n": anchors_n}, progress=progress)
    results = {
        "model": model.name, "engine": model.engine_name, "task": task.name, "k": k, "n": n, "seed": seed, "parts": list(parts),
        "prompts": {"input_ids": prompts.input_ids.tolist(), "attention_mask": prompts.attention_mask.tolist(), "texts": list(prompts.texts)},
    }
    sections = []
    recon = None
    if "reconstruction" in parts or "selection" in parts:
        both = run.part("reconstruction", lambda: kernel_reconstructions(model, task, k=k, n=n, seed=seed, progress=progress,
                                                                          spans=("block", "input+label")))
        recon = both["block"]
        results["reconstruction"] = recon.to_dict()
        results["reconstruction_input_label"] = both["input+label"].to_dict()
        sections.append(("Reconstruction of the ICL prediction from attention (demo span: the block, template words included)",
                         recon.summary(), recon.figures()))
        sections.append(("The same with the demo span = input text + label (template words left out)",
                         both["input+label"].summary(), both["input+label"].figures()))
    if "similarity" in parts:
        sim = run.part("similarity", lambda: attention_similarity(model, task, k=k, n=similarity_n or min(n, 100), seed=seed))
        results["similarity"] = sim.to_dict()
        sections.append(("Attention vs similarity; Nadaraya-Watson baseline", sim.summary(), sim.figures()))
    if "probes" in parts:
        probes = run.part("probes", lambda: kv_probes(model, task, k=k, n=probes_n or min(n, 100), seed=seed))
        results["kv_probes"] = probes.to_dict()
        sections.append(("Key/value probes around the demo label positions", probes.summary(), probes.figures()))
    if "anchors" in parts:
        anchors = run.part("anchors", lambda: anchors_analysis(model, task, k=k, n=anchors_n or min(n, 40), seed=seed))
        results["anchors"] = anchors.to_dict()
        sections.append(("Label words as anchors", anchors.summary(), anchors.figures()))
    if "selection" in parts:
        selection = run.part("selection", lambda: demo_selection(model, task, k=k, n=n, seed=seed, random_result=recon))
        results["demo_selection"] = selection.to_dict()
        sections.append(("Demo selection: random vs most similar", selection.summary(), selection.figures()))
    from interp.protocol import batch_protocol, task_protocol

    protocol = {**task_protocol(task), **batch_protocol(prompts), "kernel_weight": "max", "span_rules": ["block", "input+label"]}
    from analyses.reproduce.claims import verdict_section
    from analyses.reproduce.han2023 import table2_claims
    from analyses.reproduce.wang2023 import anchor_claims

    claims = (table2_claims(model, task, recon) if recon is not None else []) + (anchor_claims(model, task, anchors, seed=seed)
                                                                                 if "anchors" in parts else [])
    if claims:
        sections.insert(0, verdict_section(claims, "Han et al. 2023 (Table 2) and Wang et al. 2023 (Figs. 3–5) on this run"))
    write_run(out, results, f"Attention as kernel regression — {model.name}, {task.name}, k={k}, n={n}, seed {seed}", sections,
              model=model, protocol=protocol)
    return results
