"""``icl-interp heads``: every per-head score of one model on one task, side by side.

For every (layer, head) the report puts together the scores the other analyses compute — it
calls them, it does not recompute them its own way:

==========================  ===============================================================  =====================================
score                       what (analysis it comes from)                                    unit
==========================  ===============================================================  =====================================
``kernel``                  agreement of the attention-as-kernel vote with the model's ICL   fraction of queries
                            prediction (:func:`analyses.kernel.reconstruction.kernel_reconstruction`)
``exact_patching``          effect of patching the head's clean z into the flipped-label      Δ label logit difference (logits)
                            prompts, patched − corrupted (:func:`analyses.heads.attribution.head_attribution`)
``attribution_patching``    the same effect, linearised (attribution patching, same call)     Δ label logit difference (logits)
``aie``                     average indirect effect of the head's mean output on shuffled-   Δ probability of the answer token
                            label prompts (:func:`analyses.heads.function_vectors.function_vector_analysis`)
``induction``               prefix-matching score on repeated random tokens                   attention (fraction)
                            (:func:`analyses.heads.induction.induction_scores`)
``previous_token``          attention to the previous token, same sequences                   attention (fraction)
``dual_form``               cos(ΔW_ICL q, z_ICL − z_ZS): the relaxed-linear-attention dual   cosine
                            form over the demo tokens against the change ICL makes to the
                            head's output (:func:`analyses.gd.icl_vs_gd.reference_runs` +
                            :func:`analyses.gd.icl_vs_gd.dual_form_comparison`; no fine-tuning)
``dual_form_gd``            cos(ΔW_ICL q, z_GD − z_ZS), Dai et al.'s comparison with a copy   cosine
                            fine-tuned on the demos (:func:`analyses.gd.icl_vs_gd.icl_vs_gd`,
                            Dai's setting: k_proj/v_proj, SGD lr 1e-2, batch 1, one epoch);
                            costs a second copy of the weights and k training steps (~9 s on
                            SmolLM2 at k=4, n=8): leave it out with ``scores=`` if memory is short
==========================  ===============================================================  =====================================

Each analysis keeps its own protocol (its prompts, its corruption), all with the same task, k, n
and seed.  The patching replaces each head's z at the final position by default
(``patch_positions="final"``, ~40 s on SmolLM2 at k=4, n=8 on one thread); ``"all"`` patches every
position, as :func:`~analyses.heads.attribution.head_attribution` does by default, and costs ~20×
more (every position from the patched layer on is recomputed).  On a classification task the AIE runs on the task viewed as a word task (answer = the
label word's first token), the prompts being token-identical.  On a word task the default set
leaves out the scores that need label words (``kernel`` and both patchings), saying so in
``skipped``.  Beside the grids: Spearman correlations between every pair of scores over the
layer × head cells, ranked tables, and the final position's attention of the top head of each
score over one example prompt.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from analyses.report.html import json_safe, write_run

ALL_SCORES = ("kernel", "exact_patching", "attribution_patching", "aie", "induction", "previous_token", "dual_form", "dual_form_gd")
#: the default set: every score (``dual_form_gd`` fine-tunes a copy, cheap at SmolLM2's size)
DEFAULT_SCORES = ALL_SCORES
#: scores that need a classification task with single-token label words
LABEL_WORD_SCORES = ("kernel", "exact_patching", "attribution_patching")

UNITS = {
    "kernel": "fraction of queries",
    "exact_patching": "Δ label logit diff (logits)",
    "attribution_patching": "Δ label logit diff (logits, linear estimate)",
    "aie": "Δ P(answer token)",
    "induction": "attention (fraction)",
    "previous_token": "attention (fraction)",
    "dual_form": "cosine",
    "dual_form_gd": "cosine",
}
DESCRIPTIONS = {
    "kernel": "kernel-regression reconstruction: agreement of the attention-weighted vote over demo labels with the model's ICL prediction",
    "exact_patching": "exact activation patching (clean → demo labels flipped), effect patched − corrupted",
    "attribution_patching": "attribution patching (linear approximation of the same effect)",
    "aie": "average indirect effect of the head's mean output on shuffled-label prompts (function vectors)",
    "induction": "induction (prefix-matching) score on repeated random tokens",
    "previous_token": "previous-token score on repeated random tokens",
    "dual_form": "dual-form cosine cos(ΔW_ICL q, z_ICL − z_ZS) (relaxed linear attention over the demos vs the ICL change)",
    "dual_form_gd": "dual-form cosine cos(ΔW_ICL q, z_GD − z_ZS) against a copy fine-tuned on the demos (Dai et al.)",
}


def parse_scores(scores: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Score names from a sequence or a comma-separated string; ``"all"`` = :data:`ALL_SCORES`,
    ``None`` / ``"default"`` = None (the default set).  ValueError on an unknown name."""
    if scores is None:
        return None
    if isinstance(scores, str):
        if scores.strip() in ("default", ""):
            return None
        if scores.strip() == "all":
            return ALL_SCORES
        scores = [s.strip() for s in scores.split(",") if s.strip()]
    names = tuple(dict.fromkeys(s.replace("-", "_") for s in scores))
    unknown = [s for s in names if s not in ALL_SCORES]
    if unknown:
        raise ValueError(f"unknown score name(s) {unknown}; valid scores are {', '.join(ALL_SCORES)} (or 'all')")
    if not names:
        raise ValueError(f"no scores asked for; valid scores are {', '.join(ALL_SCORES)} (or 'all')")
    return names


def spearman(a, b) -> float | None:
    """Spearman ρ of two grids over their cells (cells NaN in either are left out); None where
    it is undefined (a constant grid, fewer than 3 cells)."""
    from scipy.stats import spearmanr

    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    ok = ~(x.isnan() | y.isnan())
    x, y = x[ok], y[ok]
    if len(x) < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return None
    rho = float(spearmanr(x.numpy(), y.numpy()).statistic)
    return None if math.isnan(rho) else rho


@dataclass
class HeadScoresResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    n_layers: int
    n_heads: int
    scores: dict[str, list[list[float]]]  # name -> [layer][head]
    correlations: dict[str, dict[str, float | None]]  # Spearman over the layer × head cells
    example: dict  # {"text", "tokens", "heads": [{"layer", "head", "top_by", "attention"}]}
    details: dict = field(default_factory=dict)  # per-analysis numbers beside the grids
    skipped: dict[str, str] = field(default_factory=dict)  # score -> why it was left out
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per analysis (the only non-reproducible numbers)

    @property
    def setting(self) -> str:
        return f"{self.model}, {self.task}, k={self.k}, n={self.n}, seed {self.seed}"

    def ranking(self, name: str, top: int = 10, by: Literal["value", "abs"] = "value") -> list[dict]:
        """The ``top`` heads by score ``name``, largest first (``by="abs"``: largest magnitude),
        as {"layer", "head", "value"}; NaN cells last.  Ties keep the lower (layer, head) first."""
        from interp.grids import top_cells

        if name not in self.scores:
            raise ValueError(f"no score {name!r} in this result; it has {', '.join(self.scores)}")
        grid = torch.tensor(self.scores[name], dtype=torch.float64)
        key = grid.abs() if by == "abs" else grid.clone()
        key[key.isnan()] = -math.inf
        return [{"layer": l, "head": h, "value": v} for l, h, v in top_cells(grid, top, key=key)]

    def rankings_text(self, top: int = 10) -> str:
        lines = []
        for name in self.scores:
            lines.append(f"{name} — {DESCRIPTIONS[name]} [{UNITS[name]}]")
            lines.append(f"  {'rank':>4}  {'head':>8}  {'value':>10}")
            for i, r in enumerate(self.ranking(name, top), 1):
                lines.append(f"  {i:>4}  {'L%dH%d' % (r['layer'], r['head']):>8}  {r['value']:>10.4f}")
            lines.append("")
        return "\n".join(lines).rstrip()

    def rankings_table(self, top: int = 10):
        """The top heads per score as one sortable HTML table (score, unit, rank, head, value)."""
        from analyses.report.tables import Table

        rows = [{"score": name, "unit": UNITS[name], "rank": i, "head": f"L{r['layer']}H{r['head']}",
                 "value": "undefined" if r["value"] is None or r["value"] != r["value"] else f"{r['value']:.4f}"}
                for name in self.scores for i, r in enumerate(self.ranking(name, top), 1)]
        return Table.from_dicts(rows, caption=f"Top {top} heads per score", sortable=True)

    def correlations_table(self):
        """Spearman ρ between the scores over the layer × head cells, as an HTML table."""
        from analyses.report.tables import Table

        names = list(self.scores)
        rows = [[a] + ["–" if self.correlations[a][b] is None else f"{self.correlations[a][b]:.3f}" for b in names] for a in names]
        return Table(["score"] + names, rows, caption="Spearman correlation between the per-head scores")

    def atlas_figure(self):
        """One interactive layer × head heatmap: a menu picks the score shown, and hovering a
        head shows every score of that head."""
        import plotly.graph_objects as go

        names = list(self.scores)

        def cell(name, l, h):
            v = self.scores[name][l][h]
            return "–" if v is None or v != v else f"{v:.4f}"

        text = [["<br>".join(f"{name}: {cell(name, l, h)} {UNITS[name]}" for name in names) for h in range(self.n_heads)]
                for l in range(self.n_layers)]
        fig = go.Figure(go.Heatmap(z=self.scores[names[0]], text=text, colorscale="Viridis", colorbar=dict(title=UNITS[names[0]]),
                                   hovertemplate="layer %{y}, head %{x}<br>%{text}<extra></extra>"))
        fig.update_layout(
            title=f"Head atlas: every score of every head (hover a cell; the menu picks the colour)<br><sub>{self.setting}</sub>",
            xaxis_title="head", yaxis_title="layer",
            updatemenus=[dict(buttons=[dict(label=name, method="restyle",
                                            args=[{"z": [self.scores[name]], "colorbar.title.text": UNITS[name]}]) for name in names],
                              direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")])
        return fig

    def summary(self) -> str:
        from interp.finetune import describe_gd

        lines = [f"Per-head scores on {self.task} ({self.model}, k={self.k}, n={self.n}, seed {self.seed}; "
                 f"{self.n_layers} layers × {self.n_heads} heads)"]
        for name in self.scores:
            top = self.ranking(name, 3)
            lines.append(f"  {name:<21} top: " + ", ".join(f"L{r['layer']}H{r['head']} {r['value']:.4f}" for r in top)
                         + f"  [{UNITS[name]}]")
        for name, why in self.skipped.items():
            lines.append(f"  {name:<21} skipped: {why}")
        d = self.details
        if "kernel" in d:
            lines.append(f"  kernel: model ICL accuracy {d['kernel']['model_accuracy']['accuracy']:.3f} on the {d['kernel']['n']} queries")
        if "patching" in d:
            p = d["patching"]
            lines.append(f"  patching ({p['positions']} positions): label logit diff clean {p['clean_metric']:.3f}, demo labels flipped "
                         f"{p['corrupted_metric']:.3f}; Spearman(exact, attribution) {p['spearman_exact_vs_attribution']:.3f}")
        if "aie" in d:
            a = d["aie"]
            lines.append(f"  aie: {a['n_corrupted']} shuffled-label prompts; clean ICL accuracy {a['clean_icl']['accuracy']:.3f}, zero-shot "
                         f"{a['zero_shot']['accuracy']:.3f} -> {a['zero_shot_with_fv']['accuracy']:.3f} with the function vector at layer {a['edit_layer']}")
        if "dual_form_gd" in d:
            lines.append(f"  dual_form_gd: GD copy fine-tuned with {describe_gd(d['dual_form_gd']['config'])}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return json_safe({
            "model": self.model, "task": self.task, "k": self.k, "n": self.n, "seed": self.seed,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "units": {s: UNITS[s] for s in self.scores},
            "descriptions": {s: DESCRIPTIONS[s] for s in self.scores}, "scores": self.scores,
            "rankings": {s: self.ranking(s, 10) for s in self.scores}, "correlations": self.correlations,
            "example": self.example, "details": self.details, "skipped": self.skipped, "seconds": self.seconds,
        })

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for name, grid in self.scores.items():
            signed = name not in ("kernel", "induction", "previous_token")
            heat = dict(colorscale="RdBu", zmid=0) if signed else dict(colorscale="Viridis", zmin=0, zmax=1)
            fig = go.Figure(go.Heatmap(z=grid, colorbar=dict(title=UNITS[name]), **heat,
                                       hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>"))
            fig.update_layout(title=f"{name}: {DESCRIPTIONS[name]}<br><sub>{self.setting}</sub>",
                              xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        names = list(self.scores)
        if len(names) > 1:
            z = [[self.correlations[a][b] for b in names] for a in names]
            text = [["—" if v is None else f"{v:.2f}" for v in row] for row in z]
            fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", text=text,
                                       texttemplate="%{text}", colorbar=dict(title="Spearman ρ")))
            fig.update_layout(title=f"Spearman correlation between the per-head scores over the {self.n_layers}×{self.n_heads} "
                                    f"layer × head cells<br><sub>{self.setting}</sub>",
                              xaxis_title="score", yaxis_title="score", yaxis_autorange="reversed")
            figs.append(fig)
        heads = self.example.get("heads") or []
        if heads:
            tokens = self.example["tokens"]
            labels = [f"L{h['layer']}H{h['head']} (top: {', '.join(h['top_by'])})" for h in heads]
            fig = go.Figure(go.Heatmap(z=[h["attention"] for h in heads], x=list(range(len(tokens))), y=labels,
                                       colorscale="Viridis", zmin=0, colorbar=dict(title="attention weight (fraction)"),
                                       customdata=[[repr(t) for t in tokens]] * len(heads),
                                       hovertemplate="%{y}<br>token %{x} %{customdata}: %{z:.4f}<extra></extra>"))
            fig.update_layout(title=f"Top heads' attention from the final position over an example prompt<br><sub>{self.setting}</sub>",
                              xaxis=dict(title="key token of the example prompt (position)", tickmode="array",
                                         tickvals=list(range(len(tokens))), ticktext=[t.replace("\n", "⏎") for t in tokens],
                                         tickangle=-60),
                              yaxis_title="head (the score it ranks first under)", height=max(350, 60 + 45 * len(heads)))
            figs.append(fig)
        return figs


def _generation_view(task):
    """A classification task as a word task (the answer is the label word), for the AIE: the
    prompts are token-identical, targets are the label words' first tokens."""
    if task.kind != "classification":
        return task
    return dataclasses.replace(task, kind="generation", label_words=None)


def label_word_scores_blocked(model, task, k: int, n: int, seed: int) -> str | None:
    """Why the label-word scores cannot run on ``task`` (None when they can)."""
    if task.kind != "classification":
        return "needs a classification task (label words); this is a word task"
    from interp.prompts import build_icl_batch

    batch = build_icl_batch(model.tokenizer, task, k=k, n=min(n, 2), seed=seed, padding_side="left")
    if any(len(t) != 1 for t in batch.label_words.token_ids):
        return "the demo-label flip of the patching needs single-token label words"
    return None


def example_attention(model, task, heads: dict[tuple[int, int], list[str]], *, k: int, n: int, seed: int) -> dict:
    """Final-position attention rows of ``heads`` ({(layer, head): [scores it tops]}) over the
    first prompt of the seeded k-shot batch (the prompts the patching uses), without padding."""
    from interp.capture import Capture
    from interp.prompts import build_icl_batch

    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx)
    ids = batch.input_ids[0][batch.attention_mask[0].bool()]
    with torch.no_grad():
        out = model.run(ids[None], capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
    rows = out.acts.stack("attn.hook_pattern")[:, 0, :, 0].float().cpu()  # [layer, head, key]
    return {
        "text": batch.texts[0], "token_ids": ids.tolist(),
        "tokens": [model.tokenizer.decode([int(i)]) for i in ids],
        "heads": [{"layer": l, "head": h, "top_by": names, "attention": rows[l, h].tolist()} for (l, h), names in heads.items()],
    }


def head_scores(model, task="sentiment", *, k: int = 4, n: int = 8, seed: int = 0, scores: str | Sequence[str] | None = None,
                patch_positions: str = "final", screen_budget: int | None = None, induction_repeat: int = 50,
                induction_sequences: int = 8, gd_config=None, progress: bool = False, fv_mean_over: str = "correct", run=None) -> HeadScoresResult:
    """Every score in ``scores`` (default :data:`DEFAULT_SCORES`, i.e. all, less the label-word
    scores on a word task) for every head, from the analyses named in the module docstring, on ``task``
    with ``k`` demos, ``n`` queries and ``seed``.  ``patch_positions``: positions the exact and
    attribution patching replace ("final", the default, or "all": ~20× slower); ``screen_budget``:
    patch exactly only the top heads of an AtP* screen (NaN for the others; see
    :func:`analyses.heads.attribution.head_attribution`); ``induction_repeat`` / ``induction_sequences``:
    the repeated-random-token sequences (the length is capped to fit the context);
    ``gd_config``: the fine-tuning of ``dual_form_gd`` (default Dai et al.'s, lr 1e-2);
    ``fv_mean_over``: the clean prompts the AIE's mean head outputs come from ("correct", Todd et
    al.'s protocol, or "all"); when the model answers none correctly the AIE is skipped, with why;
    ``run``: a :class:`analyses.resumable.ResumableRun` that saves each analysis as it finishes."""
    from interp.tasks import resolve_task

    names = parse_scores(scores)
    task = resolve_task(task)
    skipped: dict[str, str] = {}
    if names is None:
        names = DEFAULT_SCORES
        why = label_word_scores_blocked(model, task, k, n, seed)
        if why is not None:
            skipped = {s: why for s in LABEL_WORD_SCORES}
            names = tuple(s for s in names if s not in LABEL_WORD_SCORES)
    grids: dict[str, list[list[float]]] = {}
    details: dict = {}
    seconds: dict[str, float] = {}

    def timed(label, fn):
        t0 = time.perf_counter()
        out = fn() if run is None else run.part(label, fn)
        seconds[label] = round(time.perf_counter() - t0, 3)
        return out

    if "kernel" in names:
        from analyses.kernel.reconstruction import kernel_reconstruction

        r = timed("kernel", lambda: kernel_reconstruction(model, task, k=k, n=n, seed=seed, progress=progress))
        grids["kernel"] = r.agreement.tolist()
        details["kernel"] = {"gold_accuracy": r.gold_accuracy.tolist(), "model_accuracy": r.model_accuracy, "baselines": r.baselines,
                             "heldout_selection": r.selection.to_dict(), "weight": r.weight, "n": r.n}
    if "exact_patching" in names or "attribution_patching" in names:
        from analyses.heads.attribution import head_attribution

        r = timed("exact_patching+attribution_patching",
                  lambda: head_attribution(model, task, k=k, n=n, seed=seed, positions=patch_positions, progress=progress,
                                           screen_budget=screen_budget))
        for name, res in (("exact_patching", r.exact), ("attribution_patching", r.attribution)):
            if name in names:
                grids[name] = (res.scores - res.corrupted_metric).tolist()
        details["patching"] = {"positions": patch_positions, "metric": "gold label logit − mean of the other label logits, final position",
                               "clean_metric": r.exact.clean_metric, "corrupted_metric": r.exact.corrupted_metric,
                               "spearman_exact_vs_attribution": r.spearman, "screen": r.screen}
    r = None
    if "aie" in names:
        from analyses.heads.function_vectors import NoCorrectPrompts, function_vector_analysis

        try:
            r = timed("aie", lambda: function_vector_analysis(model, _generation_view(task), k=k, n_clean=n, n_corrupted=n, n_eval=n,
                                                              n_top_heads=min(10, model.n_layers * model.n_heads), seed=seed,
                                                              mean_over=fv_mean_over))
        except NoCorrectPrompts as err:
            skipped["aie"] = f"undefined: {err}"
            names = tuple(s for s in names if s != "aie")
    if r is not None:
        grids["aie"] = r.aie.tolist()
        details["aie"] = {"n_clean": r.n_clean, "n_corrupted": r.n_corrupted, "n_eval": r.n_eval, "edit_layer": r.edit_layer,
                          "clean_icl": r.clean_icl, "zero_shot": r.zero_shot, "zero_shot_with_fv": r.zero_shot_with_fv,
                          "shuffled": r.shuffled, "shuffled_with_fv": r.shuffled_with_fv, "fv_norm": r.fv_norm,
                          "fv_heads": [list(t) for t in r.top_heads], "mean_over": r.mean_over, "n_mean": r.n_mean}
    if "induction" in names or "previous_token" in names:
        from analyses.heads.induction import induction_scores

        n_repeat = max(2, min(induction_repeat, model.n_ctx // 2))
        r = timed("induction+previous_token", lambda: induction_scores(model, n_repeat=n_repeat, n_sequences=induction_sequences, seed=seed))
        for name, grid in (("induction", r.induction), ("previous_token", r.previous_token)):
            if name in names:
                grids[name] = grid.tolist()
        details["induction"] = {"n_repeat": n_repeat, "n_sequences": induction_sequences}
    if "dual_form" in names or "dual_form_gd" in names:
        from analyses.gd.icl_vs_gd import dual_form_comparison, icl_vs_gd, reference_runs
        from analyses.gd.presets import DAI

        ref = timed("dual_form", lambda: reference_runs(model, task, k=k, n=n, seed=seed, reorder_n=1))
        if "dual_form_gd" in names:
            config = gd_config or DAI
            r = timed("dual_form_gd", lambda: icl_vs_gd(model, task, k=k, n=n, seed=seed, config=config, reference=ref))
            dual = r.dual_form
            details["dual_form_gd"] = {"config": r.config, "fit_losses": r.fit_losses, "accuracy": r.accuracy,
                                       "norm_ratio_gd": dual["norm_ratio_gd"], "model_hash_unchanged": r.model_hash_unchanged}
        else:  # the ICL side only: z_GD is not needed for cos(ΔW q, z_ICL − z_ZS)
            t0 = time.perf_counter()
            dual = dual_form_comparison(model, ref.icl, ref.zs, ref.zs, ref.keys, ref.values)
            seconds["dual_form"] = round(seconds["dual_form"] + time.perf_counter() - t0, 3)
        if "dual_form" in names:
            grids["dual_form"] = dual["cosine_icl"]
        if "dual_form_gd" in names:
            grids["dual_form_gd"] = dual["cosine_gd"]
        details["dual_form"] = {"record": ref.record, "n": len(ref.icl_b), "same_demos": True, "norm_ratio_icl": dual["norm_ratio_icl"]}

    grids = {s: grids[s] for s in ALL_SCORES if s in grids}  # a fixed order
    correlations: dict[str, dict[str, float | None]] = {a: {} for a in grids}
    for i, a in enumerate(grids):  # each pair once, so the matrix is exactly symmetric
        for b in list(grids)[i:]:
            correlations[a][b] = correlations[b][a] = spearman(grids[a], grids[b])
    correlations = {a: {b: correlations[a][b] for b in grids} for a in grids}
    top: dict[tuple[int, int], list[str]] = {}
    for name, grid in grids.items():
        g = torch.tensor(grid, dtype=torch.float64)
        g[g.isnan()] = -math.inf
        flat = int(torch.argmax(g.flatten()))
        top.setdefault(divmod(flat, g.shape[1]), []).append(name)
    example = timed("example", lambda: example_attention(model, task, top, k=k, n=n, seed=seed)) if top else {}
    return HeadScoresResult(model.name, task.name, k, n, seed, model.n_layers, model.n_heads, grids, correlations, example,
                            details, skipped, seconds)


def run_heads_report(model, task="sentiment", *, out: str | Path | None, k: int = 4, n: int = 8, seed: int = 0,
                     scores: str | Sequence[str] | None = None, top: int = 10, progress: bool = False, **kwargs) -> HeadScoresResult:
    """:func:`head_scores` written to ``out``: ``results.json`` (every grid, ranking,
    correlation and attention row shown) and a self-contained ``report.html``."""
    from interp.tasks import resolve_task
    from interp.protocol import task_protocol, template_protocol

    from analyses.report.tables import Table
    from analyses.resumable import model_args, resumable

    task = resolve_task(task)
    run = resumable(out, {"command": "heads", **model_args(model, task), "k": k, "n": n, "seed": seed,
                          "scores": list(parse_scores(scores) or []),
                          **{key: (v.to_dict() if hasattr(v, "to_dict") else v) for key, v in sorted(kwargs.items())}})
    result = head_scores(model, task, k=k, n=n, seed=seed, scores=scores, progress=progress, run=run, **kwargs)
    results = {"engine": model.engine_name, **result.to_dict()}
    results["rankings"] = {s: result.ranking(s, top) for s in result.scores}
    figs = result.figures()
    n_scores = len(result.scores)
    sections = [
        ("Summary", result.summary() + "\n\nwall time (s): " + ", ".join(f"{a} {b:.1f}" for a, b in result.seconds.items()), []),
        ("Head atlas", None, [result.atlas_figure()]),
        (f"Ranked heads (top {top} per score)", result.rankings_table(top), []),
        ("Per-head scores (layer × head)", Table(["score", "what it measures", "unit"],
                                                [[s, DESCRIPTIONS[s], UNITS[s]] for s in result.scores]), figs[:n_scores]),
        ("Correlation between the scores (Spearman over heads)", result.correlations_table() if n_scores > 1 else None,
         figs[n_scores:n_scores + (n_scores > 1)]),
        ("Top heads' attention on an example prompt", result.example.get("text", ""), figs[n_scores + (n_scores > 1):]),
    ]
    write_run(out, results, f"Per-head scores — {result.setting}", sections, model=model,
              protocol={**template_protocol(task.template), **task_protocol(task), "scores": list(result.scores)})
    return result
