"""Han, Wang, Zhao & Ji 2023 — "Explaining emergent in-context learning as kernel regression"
(arXiv 2305.12766; TMLR 2025).  Protocol (``../shared/references``, §1; paper text, no public code):

- prompts "Input/Review: x  Output/Sentiment: y" lines; the attention row of the last prompt token;
- §5.1: that row over the demos, each demo input aligned to 30 tokens (:mod:`analyses.kernel.attention_map`);
- §5.2 / §5.5 (Table 2): per head, a_i = max attention over demo i's span, ỹ = argmax_y Σ_i a_i 1[y_i = y],
  agreement with the model's prediction; the head is picked on 70% of the test items (700) and scored
  on the other 30% (300) (:mod:`analyses.kernel.reconstruction`);
- §5.3: Pearson r between a_i and the prediction similarity P(o|x)ᵀP(o|x_i) of the inputs run alone
  (:mod:`analyses.kernel.similarity`);
- §5.4: ridge probes (λ = 0.01) from the value vectors at the label position to y_i and from the key
  vectors to the LM's own prediction on x_i alone (:mod:`analyses.kernel.kv_probes`).

Paper numbers: GPT-J 6B, SST-2 validation: ICL accuracy 0.805, held-out head agreement 0.797,
reconstructed accuracy 0.750; Rotten Tomatoes 0.671 / 0.683 / 0.527; sentence-encoder kernel
regression 0.48–0.52; best heads in layers ~16–21 of 28.  k is not stated in the paper; the
budgets below say ours.
"""
from __future__ import annotations

import math

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import dataset_task, our_setting, wilson

KEY = "han2023"
CITATION = "Han et al. 2023, Explaining emergent in-context learning as kernel regression"
#: dataset folder → (the paper's dataset, its ICL accuracy, head agreement, reconstructed accuracy)
TABLE2 = {"sst2": ("SST-2 validation", 0.805, 0.797, 0.750), "mr": ("Rotten Tomatoes", 0.671, 0.683, 0.527)}
PAPER_SETTING = {"model": "GPT-J", "size": "6B", "k": "not stated", "n": "700 selection / 300 held out"}
BUDGETS = {
    "smoke": {"datasets": ("sst2",), "k": 4, "n": 60, "similarity_n": 16, "probes_n": 24, "map_n": 16, "offsets": (0,)},
    "small": {"datasets": ("sst2", "mr", "cr", "subj", "agnews"), "k": 4, "n": 200, "similarity_n": 40,
              "probes_n": 60, "map_n": 40, "offsets": (-1, 0, 1, 2, 3)},
    "paper": {"datasets": ("sst2", "mr", "cr", "subj", "sst5", "agnews", "trec", "dbpedia", "cb", "rte"), "k": 4, "n": 1000,
              "similarity_n": 200, "probes_n": 300, "map_n": 200, "offsets": (-1, 0, 1, 2, 3)},
}


def _fisher(r: float, pairs: int) -> Estimate:
    """Pearson r with its Fisher-z 95% interval over ``pairs`` (demo, query) pairs."""
    if r is None or not math.isfinite(r) or pairs <= 3:
        return Estimate(float("nan"))
    z, half = math.atanh(max(min(r, 0.999999), -0.999999)), 1.96 / math.sqrt(pairs - 3)
    return Estimate(r, math.tanh(z - half), math.tanh(z + half), pairs)


def table2_claims(model, task, r, dataset: str | None = None) -> list[Claim]:
    """Table 2's findings for one :class:`~analyses.kernel.reconstruction.KernelReconstructionResult`
    (also the verdicts at the top of ``icl-interp kernel``'s report); ``dataset``: the shared
    dataset folder it came from (sst2, mr: the paper's numbers are shown beside ours)."""
    paper_ds, p_icl, p_agree, p_gold = TABLE2.get(dataset or task.name, (task.name, None, None, None))
    paper_setting = {**PAPER_SETTING, "dataset": paper_ds}
    k = r.k
    s = r.selection
    ours = Estimate.of(s.heldout_agreement)
    setting = our_setting(model, task.name, k, f"{s.n_selection} selection / {s.n_heldout} held out")
    rand = r.baselines["random head (mean over heads)"]
    maj = r.baselines["majority demo label"]
    paper_text = (f"{p_agree:.3f} agreement (ICL accuracy {p_icl:.3f}); sentence-encoder KR 0.48–0.52" if p_agree is not None
                  else "reported for SST-2, Rotten Tomatoes and four others; not this dataset")
    claims = [Claim(f"Table 2, {task.name}", "the held-out best head's kernel vote agrees with the model's ICL prediction "
                    "more often than a random head's", paper_text, paper_setting, ours, setting,
                    against=wilson(rand["agreement"], s.n_heldout), against_label="random head"),
              Claim(f"Table 2, {task.name}", "… and more often than the majority label of the demos (a vote without "
                    "attention)", paper_text, paper_setting, ours, setting,
                    against=wilson(maj["agreement"], s.n_heldout), against_label="majority demo label")]
    n_classes = len(task.label_words)
    claims.append(Claim(f"Table 2, {task.name}", "the held-out head's reconstruction predicts the gold label above chance",
                        f"{p_gold:.3f} reconstructed accuracy" if p_gold is not None else "–", paper_setting,
                        Estimate.of(s.heldout_gold_accuracy), setting, against=Estimate.fixed(1 / n_classes),
                        against_label=f"chance (1/{n_classes})"))
    return claims


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.kernel.attention_map import aligned_attention_map
    from analyses.kernel.kv_probes import kv_probes
    from analyses.kernel.reconstruction import kernel_reconstruction
    from analyses.kernel.similarity import attention_similarity

    k = budget["k"]
    claims, details, figures, notes = [], {}, [], []
    for name in budget["datasets"]:
        task, note = dataset_task(name, fallback="sentiment" if name == "sst2" else None)
        if note:
            notes.append(note)
        if task is None:
            paper_setting = {**PAPER_SETTING, "dataset": TABLE2.get(name, (name,))[0]}
            claims.append(Claim("Table 2", f"reconstruction on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        r = part(f"reconstruction.{name}", lambda: kernel_reconstruction(model, task, k=k, n=budget["n"], seed=seed))
        details[f"reconstruction.{name}"] = r.to_dict()
        s = r.selection
        paper_setting = {**PAPER_SETTING, "dataset": TABLE2.get(name, (task.name,))[0]}
        setting = our_setting(model, task.name, k, f"{s.n_selection} selection / {s.n_heldout} held out")
        claims += table2_claims(model, task, r, name)
        if name == budget["datasets"][0]:
            figures += r.figures()[:1]
            L = r.agreement.shape[0]
            third = max(1, L // 3)
            mid = float(r.agreement[third:2 * third].mean())
            early = float(r.agreement[:third].mean())
            claims.append(Claim("§5.2, Fig. 3", "heads in the middle layers reconstruct the output better than heads in the first "
                                "layers (mean agreement over heads, middle third vs first third of the layers)",
                                "best heads in layers ~16–21 of 28", paper_setting, wilson(mid, r.n), setting,
                                against=wilson(early, r.n), against_label="first third"))
            # §5.1: the attention map
            m = part(f"attention_map.{name}", lambda: aligned_attention_map(model, task, k=k, n=budget["map_n"], seed=seed))
            details[f"attention_map.{name}"] = m.to_dict()
            figures += m.figures()
            ex = sum(m.label_excess) / len(m.label_excess)
            ci = m.label_excess_ci
            claims.append(Claim("§5.1, Fig. 2", "the final position attends more to each demo's label token than to the demo's "
                                "input tokens (per token, averaged over layers and heads)", "attention concentrated on each y_i",
                                {**paper_setting, "n": "SST-2 validation, 872"},
                                Estimate(ex, *(ci or (None, None)), m.n), our_setting(model, task.name, k, m.n),
                                against=Estimate.fixed(0.0), against_label="no difference"))
            # §5.3: similarity
            sim = part(f"similarity.{name}", lambda: attention_similarity(model, task, k=k, n=budget["similarity_n"], seed=seed))
            details[f"similarity.{name}"] = sim.to_dict()
            figures += sim.figures()[:1]
            r_head = float(sim.r_prediction[s.layer, s.head])
            claims.append(Claim("§5.3, Fig. 4", f"at the held-out head (L{s.layer}H{s.head}) attention a_i correlates positively "
                                "with the prediction similarity P(o|x)ᵀP(o|x_i) (Fisher-z interval over pairs)",
                                "low absolute r, same heads as Fig. 3", paper_setting, _fisher(r_head, sim.n * k),
                                our_setting(model, task.name, k, sim.n), against=Estimate.fixed(0.0), against_label="r = 0"))
            # §5.4: probes
            pr = part(f"probes.{name}", lambda: kv_probes(model, task, k=k, n=budget["probes_n"], seed=seed,
                                                          offsets=budget["offsets"]))
            details[f"probes.{name}"] = pr.to_dict()
            figures += pr.figures()
            kv = model.kv_head(s.head)
            for which, target in (("values", "the demo label y_i"), ("keys", "the LM's own prediction on x_i alone")):
                sweep = getattr(pr, which).get(0, {})
                setting_p = our_setting(model, task.name, k, pr.n, other=f"layer {s.layer}, kv head {kv} (the held-out head's)")
                finding = (f"a ridge probe on the {which[:-1]} vectors at the label position decodes {target} above its "
                           "shuffled-target control (at the held-out head's layer)")
                if "skipped" in sweep or not sweep:
                    claims.append(Claim("§5.4, Fig. 5", finding, "high accuracy, best at offset 0", paper_setting, Estimate(float("nan")),
                                        setting_p, not_comparable=sweep.get("skipped", "offset 0 not probed")))
                    continue
                cell = lambda g: sweep[g][s.layer][kv]  # noqa: E731
                claims.append(Claim("§5.4, Fig. 5", finding, "high accuracy, best at offset 0", paper_setting,
                                    Estimate(cell("score"), cell("ci_low"), cell("ci_high"), sweep["n_test"]), setting_p,
                                    against=Estimate.fixed(cell("control_shuffled")), against_label="shuffled-target control"))
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
