"""Todd et al. 2024 — "Function vectors in large language models" (ICLR 2024; code
ericwtodd/function_vectors).  Protocol (``../shared/references``, §3a;
:mod:`analyses.heads.function_vectors` implements it):

- template "Q: x\\nA: y\\n\\n", 10-shot clean prompts the model answers correctly give the mean
  head outputs (input of the output projection, last token);
- AIE(l, h) = mean over label-shuffled 10-shot prompts of p(answer) with head (l, h)'s output at the
  last token replaced by its clean mean, minus p(answer) unpatched;
- the function vector = Σ over the top-10 heads by AIE of W_O(mean output); added to the residual
  stream after layer ≈ L/3 at the last token of zero-shot prompts (and of shuffled-label prompts);
- top-1 accuracy on held-out queries.

Paper: GPT-J 6B (and GPT-NeoX, Llama 2 7B–70B); tasks antonym, capitalize, country-capital,
english-french, present-past, singular-plural; 100 clean / 25 corrupted prompts.  Headline
accuracy tables were not retrievable here; the claims are the paper's qualitative findings (the
vector lifts zero-shot and shuffled-label accuracy), its numbers the universal top heads (GPT-J:
L15H5, L9H14, L12H10, …, early-middle layers).
"""
from __future__ import annotations

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import our_setting, word_task

KEY = "todd2023"
CITATION = "Todd et al. 2024, Function vectors in large language models"
PAPER_SETTING = {"model": "GPT-J", "size": "6B", "k": 10, "n": "100 clean, 25 corrupted"}
TASKS = ("antonym", "capitalize", "country-capital", "english-french", "present-past", "singular-plural")
BUDGETS = {
    "smoke": {"tasks": ("country-capital",), "k": 10, "n_clean": 16, "n_corrupted": 6, "n_eval": 40},
    "small": {"tasks": ("antonym", "country-capital", "english-french", "present-past"), "k": 10, "n_clean": 30, "n_corrupted": 10,
              "n_eval": 60},
    "paper": {"tasks": TASKS, "k": 10, "n_clean": 100, "n_corrupted": 25, "n_eval": 300},
}


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.heads.function_vectors import NoCorrectPrompts, function_vector_analysis

    claims, details, figures, notes = [], {}, [], []
    for name in budget["tasks"]:
        task, note = word_task(name)
        paper_setting = {**PAPER_SETTING, "dataset": name}
        if task is None:
            claims.append(Claim("§3", f"function vector on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        try:
            r = part(f"fv.{name}", lambda: function_vector_analysis(model, task, k=budget["k"], n_clean=budget["n_clean"],
                                                                     n_corrupted=budget["n_corrupted"], n_eval=budget["n_eval"],
                                                                     seed=seed))
        except NoCorrectPrompts as e:
            claims.append(Claim("§3", f"function vector on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=f"no clean prompt answered correctly: {e}"))
            continue
        details[f"fv.{name}"] = r.to_dict()
        setting = our_setting(model, task.name, r.k, r.n_eval, other=f"FV of the top {len(r.top_heads)} heads added after layer "
                              f"{r.edit_layer}; {r.n_mean} clean / {r.n_corrupted} corrupted prompts")
        heads = ", ".join(f"L{l}H{h}" for l, h, _ in r.top_heads[:5])
        claims.append(Claim(f"§3 / Fig. 3, {task.name}", "adding the function vector to zero-shot prompts raises top-1 accuracy",
                            f"large zero-shot gains (GPT-J top heads L15H5, L9H14, L12H10; ours {heads})", paper_setting,
                            Estimate.of(r.zero_shot_with_fv), setting, against=Estimate.of(r.zero_shot), against_label="zero-shot"))
        claims.append(Claim(f"§3, {task.name}", "adding it to label-shuffled 10-shot prompts raises top-1 accuracy",
                            "shuffled-label accuracy recovered", paper_setting, Estimate.of(r.shuffled_with_fv), setting,
                            against=Estimate.of(r.shuffled), against_label="shuffled labels"))
        if not figures:
            figures += r.figures()[:1]
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
