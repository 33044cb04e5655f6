"""Hendel, Geva & Globerson 2023 — "In-context learning creates task vectors" (EMNLP Findings
2023; code roeehendel/icl_task_vectors).  Protocol (``../shared/references``, §3b;
:mod:`analyses.heads.task_vectors` implements it):

- prompts "example:x->y" joined by "\\n", query "example:x->" (``HENDEL_TEMPLATE``), 5 demos;
- θ(S) at layer L: the last token's hidden state (output of layer L) of [S + dummy query],
  averaged over 2 dummy queries; applied by *replacing* the last token's layer-L state of the
  zero-shot prompt "example:x->";
- the layer with the best accuracy on a dev split, then its accuracy on a test split (different
  queries); baselines zero-shot and regular ICL; accuracy of the first token.

Paper (mean over 18 tasks): GPT-J baseline 0.119, ICL 0.814, task vector 0.679; LLaMA-7B 0.132 /
0.860 / 0.776; best layers GPT-J 12–13 of 28, LLaMA-7B 14 of 32 (relative depth ≈ 0.45).
"""
from __future__ import annotations

import dataclasses

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import our_setting, word_task
from interp.prompts import Template

KEY = "hendel2023"
CITATION = "Hendel et al. 2023, In-context learning creates task vectors"
HENDEL_TEMPLATE = Template(input_prefix="example:", output_prefix="->", in_out_sep="", demo_sep="\n", space_before_text=False)
PAPER_SETTING = {"model": "GPT-J", "size": "6B", "k": 5, "n": "50 dev / 50 test per task"}
TASKS = ("country-capital", "antonym", "present-past", "english-french", "singular-plural", "capitalize")
BUDGETS = {
    "smoke": {"tasks": ("country-capital",), "k": 5, "n_dev": 20, "n_test": 30},
    "small": {"tasks": TASKS, "k": 5, "n_dev": 40, "n_test": 50},
    "paper": {"tasks": TASKS, "k": 5, "n_dev": 50, "n_test": 100},
}


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.heads.task_vectors import task_vector_accuracy_by_layer

    claims, details, figures, notes = [], {}, [], []
    k = budget["k"]
    for name in budget["tasks"]:
        task, note = word_task(name)
        paper_setting = {**PAPER_SETTING, "dataset": name}
        if task is None:
            claims.append(Claim("Table 1", f"task vectors on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        task = dataclasses.replace(task, template=HENDEL_TEMPLATE)
        dev = part(f"dev.{name}", lambda: task_vector_accuracy_by_layer(model, task, k=k, n=budget["n_dev"], seed=seed))
        best = dev.best_layer
        test = part(f"test.{name}", lambda: task_vector_accuracy_by_layer(model, task, k=k, n=budget["n_test"], seed=seed + 1000,
                                                                          layers=[best]))
        details[f"dev.{name}"], details[f"test.{name}"] = dev.to_dict(), test.to_dict()
        setting = our_setting(model, task.name, k, f"{dev.n} dev / {test.n} test", other=f"layer {best} chosen on dev")
        tv = Estimate.of(test.by_layer[best])
        claims.append(Claim(f"Table 1, {task.name}", "the task vector at the dev-chosen layer lifts zero-shot accuracy on test",
                            "mean over tasks: baseline 0.119 → task vector 0.679", paper_setting, tv, setting,
                            against=Estimate.of(test.zero_shot), against_label="zero-shot"))
        claims.append(Claim(f"Table 1, {task.name}", "regular ICL stays above the task vector (the vector keeps most, not all, of ICL)",
                            "ICL 0.814 vs task vector 0.679", paper_setting, Estimate.of(test.icl), setting, against=tv,
                            against_label="task vector"))
        depth = best / max(1, model.n_layers - 1)
        claims.append(Claim(f"Fig. 3, {task.name}", "the best layer sits in the middle of the network (relative depth within "
                            "±0.2 of the paper's ≈0.45)", "GPT-J layers 12–13 of 28; LLaMA-7B 14 of 32", paper_setting,
                            Estimate(depth), setting, kind="value", paper_value=0.45, tolerance=0.2))
        if not figures:
            figures += dev.figures()
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
