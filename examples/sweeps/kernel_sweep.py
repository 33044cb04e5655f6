"""The issue-5 acceptance sweep: the kernel-regression test on SmolLM2 over tasks × k × seeds.

    python examples/sweeps/kernel_sweep.py --out out/sweep/kernel            # run (resumable)
    python examples/sweeps/kernel_sweep.py --out out/sweep/kernel --summary  # table only

Per (task, k, seed): the reconstruction with held-out head selection on ``--n`` test queries
(a task with no test split, like the bundled sentiment, keeps 30 examples as the pool);
for ``--extras-seed`` also similarity / probes / anchors / demo selection on ``--extras-n``
queries.  Each run is written with the same function the ``icl-interp kernel`` CLI calls, to
``OUT/<task>-k<k>-s<seed>[-extras]/``; finished runs are skipped, so a killed sweep resumes.
sst2 and agnews come from ``$ICL_INTERP_DATA`` (default ``../shared/datasets``) and are skipped
when it is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def run(args) -> None:
    import torch

    from analyses.kernel.report import run_kernel_analysis
    from interp.tasks import resolve_task
    from interp import load_model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    for task in args.tasks:
        t = resolve_task(task)
        # a task without a test split keeps >= 30 examples as the demo pool (bundled sentiment has 170)
        n = args.n if t.test_examples is not None else min(args.n, len(t.examples) - 30)
        for k in args.k:
            for seed in args.seeds:
                jobs = [(f"{task}-k{k}-s{seed}", dict(n=n, parts=["reconstruction"]))]
                if seed == args.extras_seed:
                    jobs.append((f"{task}-k{k}-s{seed}-extras", dict(n=args.extras_n, parts=["similarity", "probes", "anchors", "selection"],
                                                                    anchors_n=args.anchors_n)))
                for name, kw in jobs:
                    out = Path(args.out) / name
                    if (out / "results.json").exists():
                        continue
                    print("running", name, flush=True)
                    run_kernel_analysis(model, task, k=k, seed=seed, out=out, **kw)


def _mean_sd(xs):
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def summary(args) -> str:
    root = Path(args.out)
    lines = ["| task | k | seeds | ICL acc | best head (sel.) | held-out agreement [CI] | held-out gold acc [CI] | majority agr/acc | recency agr/acc | random head agr/acc | layers of the top-5 heads (all seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        for k in args.k:
            runs = [json.loads((root / f"{task}-k{k}-s{s}" / "results.json").read_text())["reconstruction"]
                    for s in args.seeds if (root / f"{task}-k{k}-s{s}" / "results.json").exists()]
            if not runs:
                continue
            acc = [r["model_accuracy"]["accuracy"] for r in runs]
            sel = [r["heldout_selection"] for r in runs]
            heads = ", ".join(f"L{s['layer']}H{s['head']}" for s in sel)
            ci = lambda d: f"{d['accuracy']:.3f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"
            agr = "; ".join(ci(s["heldout_agreement"]) for s in sel)
            gold = "; ".join(ci(s["heldout_gold_accuracy"]) for s in sel)
            base = lambda name: _mean_sd([r["baselines"][name]["agreement"] for r in runs]) + " / " + _mean_sd([r["baselines"][name]["gold_accuracy"] for r in runs])
            layer_list = ",".join(str(l) for l in sorted({l for r in runs for l, _, _ in r["top_heads"]}))  # top-5 heads, all seeds
            lines.append(f"| {task} | {k} | {len(runs)} | {_mean_sd(acc)} | {heads} | {agr} | {gold} | {base('majority demo label')} | "
                         f"{base('most recent demo label')} | {base('random head (mean over heads)')} | {layer_list} |")
    lines += ["", "| task | k | NW acc / agreement | model acc | max r (prediction sim) | max r (hidden cos) | max r (q·k) | S_wp / S_pq normalised (first third→last third of layers) | label loyalty: isolate labels first 5 / last 5 layers / random words first 5 | max AUCROC (layer) | selection: random vs similar ICL acc |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        for k in args.k:
            p = root / f"{task}-k{k}-s{args.extras_seed}-extras" / "results.json"
            if not p.exists():
                continue
            r = json.loads(p.read_text())
            sim, anc, ds = r["similarity"], r["anchors"], r["demo_selection"]
            mx = lambda g: max(v for row in g for v in row if v is not None)
            tot = [a + b + c for a, b, c in zip(anc["s_wp"], anc["s_pq"], anc["s_ww"])]
            fl = {key: [v / t if t else 0.0 for v, t in zip(anc[key], tot)] for key in ("s_wp", "s_pq")}
            third = max(1, len(tot) // 3)
            flows = (f"{statistics.mean(fl['s_wp'][:third]):.2f}→{statistics.mean(fl['s_wp'][-third:]):.2f} / "
                     f"{statistics.mean(fl['s_pq'][:third]):.2f}→{statistics.mean(fl['s_pq'][-third:]):.2f}")
            iso = anc["isolation"]
            loy = lambda where, kind: f"{iso[where][kind]['label_loyalty']:.2f}" if kind in iso.get(where, {}) else "–"
            loyalty = f"{loy('first', 'label')} / {loy('last', 'label')} / {loy('first', 'random')}"
            auc = [a if a is not None and a == a else -1.0 for a in anc["auroc"]]
            best = max(range(len(auc)), key=auc.__getitem__)
            lines.append(f"| {task} | {k} | {sim['nw_accuracy']['accuracy']:.3f} / {sim['nw_agreement']:.3f} | {sim['model_accuracy']['accuracy']:.3f} | "
                         f"{mx(sim['r_prediction']):.3f} | {mx(sim['r_hidden']):.3f} | {mx(sim['r_qk']):.3f} | {flows} | "
                         f"{loyalty} | {auc[best]:.2f} (L{best}) | "
                         f"{ds['random']['icl_accuracy']['accuracy']:.3f} vs {ds['similar']['icl_accuracy']['accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    os.environ.setdefault("ICL_INTERP_DATA", str(here.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/sweep/kernel")
    p.add_argument("--tasks", nargs="+", default=["sentiment", "sst2", "agnews"])
    p.add_argument("--k", type=int, nargs="+", default=[4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--extras-seed", type=int, default=0)
    p.add_argument("--extras-n", type=int, default=60)
    p.add_argument("--anchors-n", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    if not (Path(os.environ["ICL_INTERP_DATA"]) / "classification").exists():
        print("no datasets folder: sst2/agnews skipped")
        args.tasks = [t for t in args.tasks if t not in ("sst2", "agnews")]
    if not args.summary:
        run(args)
    print(summary(args))


if __name__ == "__main__":
    main()
