"""Comparison across models: the same seeded protocol on each model, the results side by side.

Shen et al. (2023) find that ICL and gradient descent behave inconsistently "as a function of
datasets, models, and the number of demonstrations"; Han et al. (2023) repeat their kernel analyses
on several models.  :func:`compare_models` runs, on every model given (any model
:func:`interp.load_model` accepts), the same task with the same seeds and sizes:

- ICL accuracy against k (:func:`analyses.icl_accuracy.icl_accuracy_vs_k`; Wilson intervals);
- Han et al.'s kernel reconstruction: the best head chosen on a selection split and scored on
  held-out queries (Wilson interval) against the baselines (majority / most recent demo label, the
  mean head), and the layer profile of agreement on a relative depth axis, layer / (L − 1), so
  models of different depth line up (:func:`analyses.kernel.reconstruction.kernel_reconstruction`);
- ICL against its GD counterpart in Dai et al.'s setting (k/v of every layer, SGD, one epoch) and
  Shen et al.'s (W_V of the middle layer, Adam): accuracy ZS / ICL / GD, Rec2FTP, SimAOU, SimAM,
  Kendall τ, token overlap@10, KL(ICL‖GD), each metric with a 95% bootstrap interval over queries
  (:func:`analyses.gd.icl_vs_gd.icl_vs_gd`);
- order sensitivity of ICL and of GD with batch size 1, and their ratio (Shen et al.; bootstrap
  intervals over queries and orders, :func:`analyses.gd.order_sensitivity.order_sensitivity`);
- the Spearman correlations between per-head scores (:func:`analyses.heads.atlas.head_scores`),
  with Fisher-z intervals, z = atanh(r) ± 1.96 / √(cells − 3) — approximate, because the cells of
  one model's head grid are not independent samples.

Rule for "the models disagree" (every row): two models differ on a quantity when their 95%
intervals are disjoint; the row names each such pair and which is higher.  Overlapping intervals
are reported as "within intervals" (not as evidence that the models are the same), and a row
where a model has no interval is descriptive only.  :func:`compare_runs` builds the comparison from
results already computed (the demo passes its per-model parts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

PARTS = ("accuracy", "kernel", "icl_vs_gd", "orders", "heads")
GD_SETTINGS = ("dai", "shen")
HEAD_SCORES = ("kernel", "exact_patching", "attribution_patching", "induction", "previous_token", "dual_form")
# (field of IclVsGdResult.intervals, label) for the GD rows
GD_METRICS = (("simaou", "SimAOU"), ("simam_gd", "SimAM ICL–GD"), ("kendall", "Kendall τ ICL–GD attention"),
              ("overlap_gd", "token overlap@10 ICL–GD"), ("kl_gd", "KL(ICL‖GD)"))


@dataclass
class ModelRuns:
    """One model's results under the shared protocol; a part not run is None (or empty)."""

    name: str
    n_layers: int
    accuracy: object = None  # IclAccuracyResult
    kernel: object = None  # KernelReconstructionResult
    gd: dict = field(default_factory=dict)  # setting -> IclVsGdResult
    orders: object = None  # OrderSensitivityResult
    heads: object = None  # HeadScoresResult


def _value(value, low=None, high=None, note: str | None = None) -> dict:
    out = {"value": value, "low": low, "high": high}
    if note:
        out["note"] = note
    return out


def _wilson(acc: dict) -> dict:
    return _value(acc["accuracy"], acc["ci_low"], acc["ci_high"])


def verdict(values: dict[str, dict]) -> str:
    """The rule of the module docstring: the pairs of models whose 95% intervals are disjoint."""
    if len(values) < 2:
        return "one model: nothing to compare"
    if any(v["low"] is None or v["high"] is None for v in values.values()):
        return "descriptive (no interval for every model)"
    pairs = []
    for (a, va), (b, vb) in combinations(values.items(), 2):
        if va["low"] > vb["high"]:
            pairs.append(f"{a} > {b}")
        elif vb["low"] > va["high"]:
            pairs.append(f"{b} > {a}")
    return "differ: " + "; ".join(pairs) if pairs else "within intervals"


@dataclass
class Row:
    section: str
    quantity: str
    setting: str
    values: dict  # model -> {"value", "low", "high"[, "note"]}
    verdict: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _fisher(r: float | None, cells: int) -> dict:
    if r is None or r != r or cells <= 3:
        return _value(r)
    z, half = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1.96 / math.sqrt(cells - 3)
    return _value(r, math.tanh(z - half), math.tanh(z + half))


def _rows(runs: Sequence[ModelRuns]) -> list[Row]:
    rows: list[Row] = []

    def add(section, quantity, setting, get):
        values = {}
        for r in runs:
            v = get(r)
            if v is not None:
                values[r.name] = v
        if values:
            rows.append(Row(section, quantity, setting, values, verdict(values)))

    with_acc = [r for r in runs if r.accuracy is not None]
    for k in (with_acc[0].accuracy.ks if with_acc else []):
        add("ICL accuracy", "accuracy", f"k={k}", lambda r, k=k: _wilson(r.accuracy.accuracy[k]) if r.accuracy and k in r.accuracy.accuracy else None)

    def kernel(get):
        return lambda r: get(r.kernel) if r.kernel is not None else None

    add("kernel regression (Han et al.)", "model ICL accuracy", "kernel prompts", kernel(lambda kr: _wilson(kr.model_accuracy)))
    add("kernel regression (Han et al.)", "best held-out head: agreement with the model", "selection / held-out split",
        kernel(lambda kr: {**_wilson(kr.selection.heldout_agreement),
                           "note": f"L{kr.selection.layer}H{kr.selection.head}; "
                                   + ("above every baseline" if kr.selection.heldout_agreement["ci_low"] > max(b["agreement"] for b in kr.baselines.values())
                                      else "not above every baseline")}))
    add("kernel regression (Han et al.)", "best held-out head: gold accuracy", "selection / held-out split",
        kernel(lambda kr: _wilson(kr.selection.heldout_gold_accuracy)))
    for name in ("random head (mean over heads)", "majority demo label", "most recent demo label"):
        add("kernel regression (Han et al.)", f"baseline agreement: {name}", "all prompts",
            kernel(lambda kr, name=name: _value(kr.baselines[name]["agreement"])))
    add("kernel regression (Han et al.)", "relative depth of the best held-out head", "layer / (L − 1)",
        lambda r: _value(round(r.kernel.selection.layer / max(1, r.n_layers - 1), 3)) if r.kernel is not None else None)

    for setting in GD_SETTINGS:
        def gd(get, setting=setting):
            return lambda r: get(r.gd[setting]) if setting in r.gd else None

        label = {"dai": "ICL vs GD, Dai et al.'s setting", "shen": "ICL vs GD, Shen et al.'s setting"}[setting]
        for side in ("zs", "icl", "gd"):
            add(label, f"accuracy {side.upper()}", setting, gd(lambda x, side=side: _wilson(x.accuracy[side])))
        add(label, "Rec2FTP %", setting, gd(lambda x: _value(None if x.rec2ftp != x.rec2ftp else x.rec2ftp,
                                                             note=None if x.rec2ftp == x.rec2ftp else x.REC2FTP_UNDEFINED)))
        for key, name in GD_METRICS:
            def metric(x, key=key):
                vals = [v for v in x.per_query.get(key, []) if v == v]
                if not vals:
                    return _value(None, note="undefined")
                ci = x.intervals.get(key)
                return _value(sum(vals) / len(vals), *(ci or (None, None)))
            add(label, name, setting, gd(metric))

    def orders(get):
        return lambda r: get(r.orders) if r.orders is not None else None

    add("order sensitivity (Shen et al.)", "ICL: Σ_v std over orders", "mean over queries", orders(lambda o: _value(o.icl, *o.icl_ci)))
    add("order sensitivity (Shen et al.)", "GD, batch 1", "mean over queries",
        orders(lambda o: _value(o.gd["1"], *o.gd_ci["1"]) if "1" in o.gd else None))
    add("order sensitivity (Shen et al.)", "ratio ICL / GD batch 1", "> 1: ICL more order-sensitive",
        orders(lambda o: _value(o.ratio["1"], *(o.ratio_ci["1"] or (None, None))) if o.ratio.get("1") is not None else None))

    with_heads = [r for r in runs if r.heads is not None]
    if with_heads:
        common = [s for s in with_heads[0].heads.scores if all(s in r.heads.scores for r in with_heads)]
        for a, b in combinations(common, 2):
            add("head-score correlations", f"Spearman({a}, {b})", "over layer × head cells",
                lambda r, a=a, b=b: _fisher(r.heads.correlations.get(a, {}).get(b), r.heads.n_layers * r.heads.n_heads) if r.heads else None)
    return rows


@dataclass
class ModelComparison:
    models: list[str]
    task: str
    protocol: dict
    rows: list[Row]
    curves: dict  # model -> {"k": [...], "accuracy": [...], "low": [...], "high": [...]}
    profiles: dict  # model -> {"depth": [...], "best_head_agreement": [...], "mean_head_agreement": [...]}

    def disagreements(self) -> list[Row]:
        return [r for r in self.rows if r.verdict.startswith("differ")]

    def to_dict(self) -> dict:
        return {"models": self.models, "task": self.task, "protocol": self.protocol, "rule": RULE,
                "rows": [r.to_dict() for r in self.rows], "curves": self.curves, "profiles": self.profiles,
                "n_disagreements": len(self.disagreements())}

    def table(self):
        """Every row as one sortable HTML table: section, quantity, setting, each model's value
        [95% interval], and the verdict."""
        from analyses.report.html import fmt
        from analyses.report.tables import Table

        def cell(v):
            if v is None:
                return "–"
            text = fmt(v["value"], ".3g")
            if v["low"] is not None and v["high"] is not None:
                text += f" [{fmt(v['low'], '.3g')}, {fmt(v['high'], '.3g')}]"
            return text + (f" ({v['note']})" if v.get("note") else "")

        rows = [{"section": r.section, "quantity": r.quantity, "setting": r.setting, **{m: cell(r.values.get(m)) for m in self.models},
                 "where they differ": r.verdict} for r in self.rows]
        return Table(["section", "quantity", "setting", *self.models, "where they differ"], rows,
                     caption=f"{len(self.rows)} rows, {len(self.disagreements())} differ beyond the 95% intervals", sortable=True)

    def summary(self) -> str:
        d = self.disagreements()
        head = (f"Comparison of {', '.join(self.models)} on {self.task} (seed {self.protocol.get('seed')}): "
                f"{len(d)} of {len(self.rows)} rows differ beyond the 95% intervals")
        return "\n".join([head, *(f"  {r.section}: {r.quantity} [{r.setting}] — {r.verdict}" for r in d)])

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        if self.curves:
            fig = go.Figure()
            for m, c in self.curves.items():
                fig.add_trace(go.Scatter(x=c["k"], y=c["accuracy"], mode="lines+markers", name=m,
                                         error_y=dict(type="data", symmetric=False, array=[h - a for a, h in zip(c["accuracy"], c["high"])],
                                                      arrayminus=[a - lo for a, lo in zip(c["accuracy"], c["low"])])))
            fig.update_layout(title=f"ICL accuracy vs k, by model — {self.task}", xaxis_title="number of demonstrations k",
                              yaxis_title="accuracy (fraction correct, 95% Wilson CI)", yaxis_range=[0, 1])
            figs.append(fig)
        if self.profiles:
            fig = go.Figure()
            for m, p in self.profiles.items():
                fig.add_trace(go.Scatter(x=p["depth"], y=p["best_head_agreement"], mode="lines+markers", name=f"{m}: best head of the layer"))
                fig.add_trace(go.Scatter(x=p["depth"], y=p["mean_head_agreement"], mode="lines", line=dict(dash="dot"),
                                         name=f"{m}: mean over the layer's heads"))
            fig.update_layout(title=f"Kernel reconstruction: agreement with the model's prediction by relative depth — {self.task}",
                              xaxis_title="relative depth, layer / (L − 1)", yaxis_title="agreement (fraction of prompts)", yaxis_range=[0, 1])
            figs.append(fig)
        rows = [r for r in self.rows if r.section.startswith("ICL vs GD") and not r.quantity.startswith(("accuracy", "Rec2FTP"))]
        if rows:
            fig = go.Figure()
            for m in self.models:
                vals = [r.values.get(m) or _value(None) for r in rows]
                fig.add_trace(go.Bar(name=m, x=[f"{r.quantity} ({r.setting})" for r in rows], y=[v["value"] for v in vals],
                                     error_y=dict(type="data", symmetric=False,
                                                  array=[(v["high"] - v["value"]) if v["high"] is not None else 0 for v in vals],
                                                  arrayminus=[(v["value"] - v["low"]) if v["low"] is not None else 0 for v in vals])))
            fig.update_layout(barmode="group", title=f"ICL vs GD metrics by model (95% bootstrap intervals) — {self.task}",
                              xaxis_title="metric (setting)", yaxis_title="value (cosine, τ, overlap fraction or nats)")
            figs.append(fig)
        return figs


RULE = ("two models differ on a row when their 95% intervals are disjoint; overlapping intervals are 'within intervals'; "
        "a row where a model has no interval is descriptive")


def _curve(acc) -> dict:
    ks = list(acc.ks)
    return {"k": ks, "accuracy": [acc.accuracy[k]["accuracy"] for k in ks], "low": [acc.accuracy[k]["ci_low"] for k in ks],
            "high": [acc.accuracy[k]["ci_high"] for k in ks]}


def _profile(kr, n_layers: int) -> dict:
    agree = kr.agreement
    return {"depth": [round(l / max(1, n_layers - 1), 4) for l in range(n_layers)],
            "best_head_agreement": agree.max(-1).values.tolist(), "mean_head_agreement": agree.mean(-1).tolist()}


def compare_runs(runs: Sequence[ModelRuns], task: str, protocol: dict | None = None) -> ModelComparison:
    """The comparison of already computed per-model results (same task, k, n and seed)."""
    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"model names repeat in {[r.name for r in runs]}: compare distinct models")
    return ModelComparison(
        models=[r.name for r in runs], task=task, protocol=dict(protocol or {}), rows=_rows(runs),
        curves={r.name: _curve(r.accuracy) for r in runs if r.accuracy is not None},
        profiles={r.name: _profile(r.kernel, r.n_layers) for r in runs if r.kernel is not None})


def model_runs(model, task, *, parts: Sequence[str] = PARTS, ks: Sequence[int] = (0, 1, 2, 4, 8), k: int = 4, n: int = 40,
               gd_n: int = 16, orders_n: int = 12, n_orders: int = 3, heads_n: int = 8, seed: int = 0, progress: bool = False,
               run=None, label: str | None = None) -> ModelRuns:
    """Every part of ``parts`` on one loaded model (the protocol of :func:`compare_models`);
    ``run``: a :class:`analyses.resumable.ResumableRun` whose parts are saved as they finish;
    ``label``: the model's name in the comparison (default ``model.name``)."""
    from analyses.resumable import NoResume

    run = run or NoResume()
    label = label or model.name
    tag = label.replace("/", "_")
    out = ModelRuns(name=label, n_layers=model.n_layers)
    if "accuracy" in parts:
        from analyses.icl_accuracy import icl_accuracy_vs_k

        out.accuracy = run.part(f"{tag}.accuracy", lambda: icl_accuracy_vs_k(model, task, ks=ks, n=n, seeds=(seed,), progress=progress))
    if "kernel" in parts and task.kind == "classification":
        from analyses.kernel.reconstruction import kernel_reconstruction

        out.kernel = run.part(f"{tag}.kernel", lambda: kernel_reconstruction(model, task, k=k, n=n, seed=seed, progress=progress))
    if "icl_vs_gd" in parts or "orders" in parts:
        from analyses.gd.icl_vs_gd import icl_vs_gd, reference_runs
        from analyses.gd.presets import DAI, paper_config
        from analyses.gd.order_sensitivity import order_sensitivity
        from interp.finetune import GDCounterpart

        gd = GDCounterpart(model)
        if "icl_vs_gd" in parts:
            ref = []  # computed once, only when a setting is not loaded from a saved part
            configs = {"dai": DAI, "shen": paper_config(f"wv:{model.n_layers // 2}")}
            for setting in GD_SETTINGS:
                def compute(setting=setting):
                    ref or ref.append(reference_runs(model, task, k=k, n=gd_n, seed=seed, reorder_n=gd_n))
                    return icl_vs_gd(model, task, k=k, n=gd_n, seed=seed, config=configs[setting], counterpart=gd, reference=ref[0])
                out.gd[setting] = run.part(f"{tag}.gd_{setting}", compute)
        if "orders" in parts:
            out.orders = run.part(f"{tag}.orders", lambda: order_sensitivity(model, task, k=k, n=orders_n, seed=seed, n_orders=n_orders,
                                                                            batch_sizes=(1, "full"), counterpart=gd))
    if "heads" in parts:
        from analyses.heads.atlas import head_scores

        from analyses.heads.atlas import LABEL_WORD_SCORES, label_word_scores_blocked

        blocked = label_word_scores_blocked(model, task, k, heads_n, seed)
        scores = tuple(s for s in HEAD_SCORES if blocked is None or s not in LABEL_WORD_SCORES)
        out.heads = run.part(f"{tag}.heads", lambda: head_scores(model, task, k=k, n=heads_n, seed=seed, scores=scores, progress=progress))
    return out


def compare_models(models: Sequence, task="sentiment", *, parts: Sequence[str] = PARTS, ks: Sequence[int] = (0, 1, 2, 4, 8), k: int = 4,
                   n: int = 40, gd_n: int = 16, orders_n: int = 12, n_orders: int = 3, heads_n: int = 8, seed: int = 0,
                   engine: str = "transformer-lens", device: str | None = None, progress: bool = False,
                   out=None) -> ModelComparison:
    """The same seeded protocol on each of ``models`` (names or loaded models), side by side.

    ``ks``/``n``: the accuracy curve; ``k``: demos for the kernel, ICL-vs-GD, orders and heads parts
    (``n``, ``gd_n``, ``orders_n`` × ``n_orders`` orders, ``heads_n`` queries).  Models given by
    name are loaded one at a time and released.  ``out``: write results.json and report.html
    there, saving each (model, part) as it finishes so a killed run resumes."""
    from interp.tasks import resolve_task
    from analyses.resumable import NoResume, ResumableRun
    from interp import load_model
    from interp.protocol import model_protocol

    if len(models) < 2:
        raise ValueError(f"compare needs at least two models, got {list(models)}")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    task = resolve_task(task)
    given = [m for m in models if isinstance(m, str)]
    if len(set(given)) != len(given):
        raise ValueError(f"model names repeat in {given}: compare distinct models")
    names = []  # loaded models of one class share a name: number them
    for m in models:
        name = m if isinstance(m, str) else str(getattr(m, "name", type(m).__name__))
        names.append(name if name not in names else f"{name} ({sum(n.split(' (')[0] == name for n in names) + 1})")
    protocol = {"task": task.name, "parts": list(parts), "ks": list(ks), "k": k, "n": n, "gd_n": gd_n, "orders_n": orders_n,
                "n_orders": n_orders, "heads_n": heads_n, "seed": seed, "engine": engine, "gd_settings": list(GD_SETTINGS),
                "head_scores": list(HEAD_SCORES), "rule": RULE}
    run = ResumableRun(out, {"command": "compare", "models": names, **protocol}, progress=progress) if out is not None else NoResume()
    runs, infos, protocols = [], {}, {}
    for m, name in zip(models, names):
        model = load_model(m, engine=engine, device=device) if isinstance(m, str) else m
        runs.append(model_runs(model, task, parts=parts, ks=ks, k=k, n=n, gd_n=gd_n, orders_n=orders_n, n_orders=n_orders,
                               heads_n=heads_n, seed=seed, progress=progress, run=run, label=name))
        infos[name], protocols[name] = model.provenance(), model_protocol(model)
        del model
    result = compare_runs(runs, task.name, protocol)
    if out is not None:
        write_comparison(out, result, runs, infos, protocols, resumed=run.summary())
    return result


def write_comparison(out, result: ModelComparison, runs: Sequence[ModelRuns], infos: dict | None = None, protocols: dict | None = None,
                     resumed: dict | None = None) -> None:
    """results.json (the comparison, each model's own results, model_info and protocol per model)
    and report.html."""
    from analyses.report.html import add_licence_notices, write_run

    per_model = {}
    for r in runs:
        per_model[r.name] = {name: getattr(r, name).to_dict() for name in ("accuracy", "kernel", "orders", "heads") if getattr(r, name) is not None}
        per_model[r.name]["icl_vs_gd"] = {s: x.to_dict() for s, x in r.gd.items()}
    data = {**result.to_dict(), "per_model": per_model, "model_info": infos or {}, "resumed_parts": resumed or {},
            "protocol": {"compare": result.protocol, "models": protocols or {}}}
    from analyses.report.tables import Paragraphs

    sections = [("Where the models disagree", [result.summary(), Paragraphs(["Rule: " + RULE])], []),
                ("Every row, side by side", result.table(), result.figures())]
    add_licence_notices(data, sections, result.models)
    write_run(out, data, f"icl-interp compare — {', '.join(result.models)} on {result.task}", sections)
