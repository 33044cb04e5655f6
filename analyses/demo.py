"""The main job on the embedded models: what ``make demo`` / ``icl-interp demo`` runs.

Every analysis of the toolkit once, small enough for a 2-core CPU in a few minutes, with no
network, each part calling the same function as its own CLI command and notebook, on each model
(by default both embedded ones, SmolLM2-135M-Instruct and Gemma 3 270M):

1. ``accuracy``  ICL accuracy against k on two bundled tasks (:mod:`analyses.icl_accuracy`);
2. ``kernel``    the attention-as-kernel reconstruction head map and the best head chosen on a
   selection split, scored on held-out queries (Han et al.; :mod:`analyses.kernel.reconstruction`);
3. ``icl_vs_gd`` ICL against its GD counterpart in Dai et al.'s setting (k/v of every layer, SGD)
   and Shen et al.'s (W_V of the middle layer, Adam; fewer epochs than the paper's 20 here), and
   the order sensitivity of ICL vs GD (:mod:`analyses.gd.icl_vs_gd`, :mod:`analyses.gd.order_sensitivity`);
4. ``heads``     the head-attribution ranking: kernel agreement, exact and attribution patching,
   induction / previous-token and dual-form scores side by side (:mod:`analyses.heads.atlas`);
5. ``linreg``    the linear-regression lab's GD check on its shipped checkpoints
   (:mod:`analyses.linreg.gd_check`, :mod:`analyses.linreg.algorithms`), once;
6. the comparison across the models, the report's last section (:mod:`analyses.model_comparison`).

Parts are saved under ``out/parts/`` as they finish (:class:`analyses.resumable.ResumableRun`):
a killed demo started again with the same arguments resumes.  ``out/results.json`` (atomic) holds
every number shown in ``out/report.html``.  The sizes below (n queries per part) are the demo's,
far below what a claim needs; the sweeps in ``examples/sweeps/`` run the real sizes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from analyses.report.html import add_licence_notices, write_run
from analyses.resumable import ResumableRun

DEMO_MODELS = ("smollm2-135m", "gemma3-270m")
DEMO_TASKS = ("country-capital", "sentiment")
DEMO_KS = (0, 1, 2, 4, 8)
PARTS = ("accuracy", "kernel", "icl_vs_gd", "heads", "linreg")
HEAD_SCORES = ("kernel", "exact_patching", "attribution_patching", "induction", "previous_token", "dual_form")


def _timed(seconds: dict, name: str, fn):
    def run():
        t = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t, 1)
        return out
    return run


def _accuracy(model, n, seed, progress):
    from analyses.icl_accuracy import icl_accuracy_vs_k

    return {t: icl_accuracy_vs_k(model, t, ks=DEMO_KS, n=n, seeds=(seed,), progress=progress) for t in DEMO_TASKS}


def _icl_vs_gd(model, n, seed, progress):
    from analyses.gd.icl_vs_gd import icl_vs_gd, reference_runs
    from analyses.gd.presets import DAI, paper_config
    from analyses.gd.order_sensitivity import order_sensitivity
    from interp.finetune import GDCounterpart

    from tqdm.auto import tqdm

    steps = tqdm(total=4, desc="ICL vs GD", disable=not progress)
    gd = GDCounterpart(model)
    ref = reference_runs(model, "sentiment", k=4, n=n, seed=seed, reorder_n=n)
    steps.update()
    out = {"dai": icl_vs_gd(model, "sentiment", k=4, n=n, seed=seed, config=DAI, counterpart=gd, reference=ref)}
    steps.update()
    out["shen"] = icl_vs_gd(model, "sentiment", k=4, n=n, seed=seed, config=paper_config(f"wv:{model.n_layers // 2}", epochs=5),
                            counterpart=gd, reference=ref)
    steps.update()
    out["orders"] = order_sensitivity(model, "sentiment", k=4, n=max(4, n // 2), seed=seed, n_orders=3, batch_sizes=(1, "full"),
                                      counterpart=gd)
    steps.update()
    steps.close()
    return out


def _linreg(seed):
    from analyses.linreg.algorithms import which_algorithm
    from analyses.linreg.gd_check import trained_vs_gd
    from interp.linreg.checkpoints import load_shipped

    lsa = load_shipped("lsa-d10-n10")[0]
    gpt = load_shipped("gpt-d5-n20")[0]
    return {"lsa": trained_vs_gd(lsa, ood_scales=(0.5, 1.0, 2.0)),
            "gpt": which_algorithm({"softmax GPT": gpt}, 5, list(range(5, 11)), n_tasks=96, seed=seed, learners=("ols", "gd", "knn"))}


def _linreg_text(r: dict) -> str:
    lsa, gpt = r["lsa"], r["gpt"]
    ks = gpt.k
    err = gpt.model_error["softmax GPT"]["mean"]
    lines = [f"one-layer LSA (d=10, N=10): loss {lsa.loss['trained']:.4f} vs one GD step {lsa.loss['gd']:.4f} "
             f"(ratio {lsa.loss_ratio:.4f}); effective η {lsa.eta_effective:.3f} vs line search {lsa.gd_eta:.3f}; "
             f"sensitivity cosine {lsa.sensitivity_cos:.4f}",
             "softmax GPT (d=5): normalised error (ŷ−y)²/d at k = " + ", ".join(str(k) for k in ks)]
    for name, vals in [("GPT", err), *((n, v["mean"]) for n, v in gpt.learner_error.items())]:
        lines.append(f"  {name:16s}" + " ".join(f"{x:8.4f}" for x in vals))
    return "\n".join(lines)


def _linreg_blocks(r: dict) -> list:
    """The lab's numbers for the report: the LSA line as text, the GPT's error curve as a table."""
    from analyses.report.tables import Table

    gpt = r["gpt"]
    rows = [[name, *(f"{x:.4f}" for x in vals)] for name, vals in
            [("GPT", gpt.model_error["softmax GPT"]["mean"]), *((n, v["mean"]) for n, v in gpt.learner_error.items())]]
    return [_linreg_text(r).split("\n")[0],
            Table(["predictor", *(f"k={k}" for k in gpt.k)], rows, caption="softmax GPT (d=5): normalised error (ŷ−y)²/d")]


def _model_parts(model, run, parts, n, seed, progress, seconds) -> tuple[dict, list, object]:
    """The per-model parts of the demo on one loaded model: (data, report sections, ModelRuns)."""
    from analyses.model_comparison import ModelRuns

    tag = model.name.replace("/", "_")
    setting = f"{model.name}, seed {seed}"
    sections, data = [], {}
    runs = ModelRuns(name=model.name, n_layers=model.n_layers)
    secs = seconds.setdefault(model.name, {})
    if "accuracy" in parts:
        acc = run.part(f"{tag}.accuracy", _timed(secs, "accuracy", lambda: _accuracy(model, n, seed, progress)))
        table = format_table(acc)
        print(table)
        data["icl_accuracy"] = {t: r.to_dict() for t, r in acc.items()}
        runs.accuracy = acc["sentiment"]
        sections.append((f"ICL accuracy vs k — {setting}", accuracy_table(acc), [f for r in acc.values() for f in r.figures()]))
    if "kernel" in parts:
        from analyses.kernel.reconstruction import kernel_reconstruction

        kr = run.part(f"{tag}.kernel", _timed(secs, "kernel", lambda: kernel_reconstruction(model, "sentiment", k=4, n=n, seed=seed,
                                                                                            progress=progress)))
        print(kr.summary())
        data["kernel"] = kr.to_dict()
        runs.kernel = kr
        sections.append((f"Attention as kernel regression (Han et al.) — {setting}", kr.summary(), kr.figures()[:1]))
    if "icl_vs_gd" in parts:
        gd = run.part(f"{tag}.icl_vs_gd", _timed(secs, "icl_vs_gd", lambda: _icl_vs_gd(model, max(4, n // 3), seed, progress)))
        text = "\n\n".join([gd["dai"].summary(), gd["shen"].summary(), gd["orders"].summary()])
        print(text)
        data["icl_vs_gd"] = {name: r.to_dict() for name, r in gd.items()}
        runs.gd, runs.orders = {"dai": gd["dai"], "shen": gd["shen"]}, gd["orders"]
        sections.append((f"Is ICL gradient descent? Dai et al.'s setting, Shen et al.'s, and order sensitivity — {setting}", text,
                         [gd["dai"].figures()[0], *gd["orders"].figures()]))
    if "heads" in parts:
        from analyses.heads.atlas import head_scores

        hs = run.part(f"{tag}.heads", _timed(secs, "heads", lambda: head_scores(model, "sentiment", k=4, n=max(4, n // 3), seed=seed,
                                                                                scores=HEAD_SCORES, progress=progress)))
        print(hs.rankings_text(top=5))
        data["heads"] = hs.to_dict()
        runs.heads = hs
        sections.append((f"Head attribution: every per-head score side by side — {setting}",
                         [hs.rankings_table(top=5), hs.correlations_table()], [hs.atlas_figure(), *hs.figures()]))
    return data, sections, runs


def run_demo(models: Sequence[str] = DEMO_MODELS, engine: str = "transformer-lens", out: Path = Path("out/demo"), n: int = 24,
             seed: int = 0, progress: bool = True, device: str | None = None, remote: bool = False,
             parts: Sequence[str] = PARTS) -> dict:
    """Run the demo ``parts`` on each of ``models`` into ``out``; returns what results.json holds.

    ``models``: embedded names by default (both), or any models :func:`interp.load_model` accepts;
    with two or more, the report ends with their comparison (:mod:`analyses.model_comparison`:
    where they disagree beyond the 95% intervals).  ``n``: queries per task for the accuracy curve
    (the other parts use n/2 to n/3); ``device`` places each model (cpu by default, cuda, ...);
    ``remote`` runs a hub model through nnsight on NDIF (``engine="nnsight"``); both go to
    :func:`interp.load_model`.  Models are loaded one at a time.
    """
    from analyses.model_comparison import compare_runs
    from interp import load_model
    from interp.protocol import model_protocol
    from interp.prompts import Template

    models = [models] if isinstance(models, str) else list(models)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown demo parts {unknown}; choose from {list(PARTS)}")
    if not models or len(set(models)) != len(models):
        raise ValueError(f"the demo needs one or more distinct models, got {models}")
    start = time.time()
    run = ResumableRun(out, {"models": models, "engine": engine, "n": n, "seed": seed, "device": device, "remote": remote},
                       progress=progress)
    seconds: dict = {}
    sections, data = [], {"models": models, "engine": engine, "seed": seed, "n": n, "per_model": {}}
    infos, protocols, all_runs = {}, {}, []
    for name in models:
        model = load_model(name, engine=engine, device=device, remote=remote)
        per_model, model_sections, runs = _model_parts(model, run, parts, n, seed, progress, seconds)
        data["per_model"][model.name] = per_model
        sections.extend(model_sections)
        all_runs.append(runs)
        infos[model.name], protocols[model.name] = model.provenance(), model_protocol(model)
        del model
    if "linreg" in parts:
        lr = run.part("linreg", _timed(seconds, "linreg", lambda: _linreg(seed)))
        text = _linreg_text(lr)
        print(text)
        data["linreg"] = {name: r.to_dict() for name, r in lr.items()}
        sections.append(("Linear-regression lab: trained transformers against gradient descent", _linreg_blocks(lr),
                         [lr["lsa"].figures()[0], lr["gpt"].figures()[-1]]))
    if len(all_runs) > 1 and {"accuracy", "kernel", "icl_vs_gd", "heads"} & set(parts):
        comparison = compare_runs(all_runs, "sentiment", {"seed": seed, "k": 4, "note": "the demo's own parts, sentiment, side by side"})
        print(comparison.summary())
        data["comparison"] = comparison.to_dict()
        sections.append((f"Comparison across models: {', '.join(comparison.models)} (last section)",
                         [comparison.summary(), comparison.table()], comparison.figures()))
    add_licence_notices(data, sections, models)
    data["resumed_parts"] = run.summary()
    data["seconds"] = {"total": round(time.time() - start, 1), **seconds}
    data["model_info"] = infos
    data["protocol"] = {"models": protocols, "parts": list(parts), "tokenisation": Template().tokenisation,
                        "note": "each part's prompts use its task's template (see the part's own fields)"}
    write_run(out, data, f"icl-interp demo — {', '.join(models)}", sections)
    print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'report.html'} ({data['seconds']['total']} s)")
    return data


def accuracy_table(results: dict):
    """ICL accuracy per task and k with Wilson intervals, as an HTML table."""
    from analyses.report.tables import Table

    first = next(iter(results.values()))
    rows = [[task] + [f"{r.accuracy[k]['accuracy']:.2f} [{r.accuracy[k]['ci_low']:.2f}, {r.accuracy[k]['ci_high']:.2f}]" for k in first.ks]
            for task, r in results.items()]
    return Table(["task", *(f"k={k}" for k in first.ks)], rows,
                 caption=f"ICL accuracy (95% Wilson interval), n={first.n} queries per task")


def format_table(results: dict) -> str:
    ks = next(iter(results.values())).ks
    header = "task".ljust(18) + "".join(f"k={k}".rjust(20) for k in ks)
    lines = [f"ICL accuracy (95% Wilson CI), n={next(iter(results.values())).n} queries per task", header]
    for task, r in results.items():
        cells = "".join(f"{r.accuracy[k]['accuracy']:.2f} [{r.accuracy[k]['ci_low']:.2f}, {r.accuracy[k]['ci_high']:.2f}]".rjust(20) for k in ks)
        lines.append(task.ljust(18) + cells)
    return "\n".join(lines)
