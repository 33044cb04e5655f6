"""``icl-interp reproduce PAPER|all``: each paper's protocol on any model, the paper's numbers
beside ours, a verdict per finding (:mod:`analyses.reproduce.claims` states the rule).

One module per paper; each has ``KEY``, ``CITATION``, ``BUDGETS`` (``smoke`` / ``small`` /
``paper``: the sizes its protocol runs at) and ``run(model, budget, part, seed) -> PaperResult``,
where ``part(name, compute)`` is a resumable part (:mod:`analyses.resumable`).  The linear-
regression papers (``LAB_PAPERS``) run on the lab's own tiny transformers, not on the language model.
"""
from __future__ import annotations

import importlib

#: paper key → (module, hypothesis it tests, one line on what runs)
PAPERS: dict[str, tuple[str, str, str]] = {
    "han2023": ("analyses.reproduce.han2023", "kernel", "attention map, kernel reconstruction (Table 2), similarity, k/v probes"),
    "wang2023": ("analyses.reproduce.wang2023", "kernel", "label words as anchors: saliency flows, isolation, AUCROC_l, re-weighting"),
    "dai2023": ("analyses.reproduce.dai2023", "gd", "ICL vs fine-tuning: Rec2FTP, SimAOU, SimAM, Kendall on six datasets"),
    "deutch2024": ("analyses.reproduce.deutch2024", "gd", "layer-causal GD and the untrained-model baseline"),
    "shen2023": ("analyses.reproduce.shen2023", "gd", "order sensitivity, the three metrics as k grows, output overlap"),
    "todd2023": ("analyses.reproduce.todd2023", "heads", "function vectors: AIE top heads, zero-shot accuracy with the vector"),
    "hendel2023": ("analyses.reproduce.hendel2023", "heads", "task vectors: accuracy by layer, dev-chosen layer on test"),
    "vonoswald2023": ("analyses.reproduce.vonoswald2023", "linreg", "a trained linear self-attention layer vs one GD step"),
    "akyurek2022": ("analyses.reproduce.akyurek2022", "linreg", "which learner ICL matches: SPD / ILWD to OLS, ridge, GD"),
    "garg2022": ("analyses.reproduce.garg2022", "linreg", "a GPT trained on linear regression vs least squares and baselines"),
}
LAB_PAPERS = ("vonoswald2023", "akyurek2022", "garg2022")


def paper_module(key: str):
    if key not in PAPERS:
        raise ValueError(f"unknown paper {key!r}: choose one of {', '.join(PAPERS)} or 'all'")
    return importlib.import_module(PAPERS[key][0])
