"""The issue-17 sweep: the kernel and ICL-vs-GD analyses on both embedded models, side by side.

    python examples/sweeps/two_model_sweep.py --out out/sweep/two-model            # run (resumable)
    python examples/sweeps/two_model_sweep.py --out out/sweep/two-model --summary  # tables only

Per (model, seed, task, k): Han et al.'s kernel reconstruction with held-out head selection
(classification tasks only: on a word task such as country-capital no demo label is the answer,
so a vote over demo labels is undefined) on ``--kernel-n`` queries, and ICL against its GD
counterpart in Dai et al.'s setting (k/v of every layer, SGD) and Shen et al.'s (W_V of the middle
layer, Adam) on ``--gd-n`` queries.  Each run is written by the function its CLI command calls, to
``OUT/<model>/<analysis>-<task>-k<k>-s<seed>/``; finished runs are skipped, so a killed sweep
resumes.  Seeds run outermost (then models), so a partial sweep has every cell of both models at
its first seeds.  sst2 comes
from ``$ICL_INTERP_DATA`` (default ``../shared/datasets``) and is skipped when it is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ANALYSES = ("kernel", "dai", "shen")


def run(args) -> None:
    import torch

    from analyses.gd.icl_vs_gd import reference_runs
    from analyses.gd.presets import paper_config
    from analyses.gd.report import run_icl_vs_gd_analysis
    from analyses.kernel.report import run_kernel_analysis
    from interp.tasks import resolve_task
    from interp import load_model
    from interp.finetune import GDCounterpart

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    loaded = {}
    for seed in args.seeds:
        for name in args.models:
            if name not in loaded:
                model = load_model(name)
                loaded[name] = (model, GDCounterpart(model),
                                {"dai": paper_config("kv"), "shen": paper_config(f"wv:{model.n_layers // 2}")})
            model, gd, configs = loaded[name]
            for task in args.tasks:
                t = resolve_task(task)
                pool = t.test_examples if t.test_examples is not None else t.examples[: len(t.examples) - 30]
                for k in args.k:
                    ref = None
                    for analysis in args.analyses:
                        out = Path(args.out) / name / f"{analysis}-{task}-k{k}-s{seed}"
                        if (out / "results.json").exists() or (analysis == "kernel" and t.kind != "classification"):
                            continue
                        start = time.perf_counter()
                        if analysis == "kernel":
                            run_kernel_analysis(model, t, k=k, n=min(args.kernel_n, len(pool)), seed=seed, out=out, parts=["reconstruction"])
                        else:
                            n = min(args.gd_n, len(pool))
                            ref = ref or reference_runs(model, t, k=k, n=n, seed=seed)
                            run_icl_vs_gd_analysis(model, t, k=k, n=n, seed=seed, config=configs[analysis], out=out, counterpart=gd,
                                                   reference=ref)
                        print(f"{name}/{out.name}: {time.perf_counter() - start:.0f} s", flush=True)


def _ms(xs, digits: int = 3):
    xs = [x for x in xs if x is not None and x == x]
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def _m(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.mean(xs) if xs else float("nan")


def _runs(root: Path, model: str, stem: str, seeds) -> list[dict]:
    paths = [root / model / f"{stem}-s{s}" / "results.json" for s in seeds]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def kernel_table(args) -> str:
    root = Path(args.out)
    lines = ["| task | k | model | seeds | n | ICL acc | best held-out head (per seed) | held-out agreement (95% CI per seed) | random head agreement | "
             "majority / recency agreement | layer of the best head, relative depth |", "|" + "---|" * 11]
    for task in args.tasks:
        for k in args.k:
            for model in args.models:
                runs = [r["reconstruction"] for r in _runs(root, model, f"kernel-{task}-k{k}", args.seeds)]
                if not runs:
                    continue
                sel = [r["heldout_selection"] for r in runs]
                n_layers = len(runs[0]["agreement"])
                b = lambda name: [r["baselines"][name]["agreement"] for r in runs]  # noqa: E731
                lines.append(
                    f"| {task} | {k} | {model} | {len(runs)} | {runs[0]['n']} | {_ms([r['model_accuracy']['accuracy'] for r in runs])} | "
                    + ", ".join(f"L{s['layer']}H{s['head']}" for s in sel) + " | "
                    f"{_ms([s['heldout_agreement']['accuracy'] for s in sel])} ("
                    + "; ".join(f"[{s['heldout_agreement']['ci_low']:.2f}, {s['heldout_agreement']['ci_high']:.2f}]" for s in sel)
                    + f") | {_ms(b('random head (mean over heads)'))} | "
                    f"{_ms(b('majority demo label'))} / {_ms(b('most recent demo label'))} | "
                    + ", ".join(f"{s['layer'] / (n_layers - 1):.2f}" for s in sel) + " |")
    return "\n".join(lines)


def gd_table(args) -> str:
    root = Path(args.out)
    lines = ["| setting | task | k | model | seeds | n | acc ZS / ICL / GD | Rec2FTP % | SimAOU (random) | SimAM ICL–GD (ICL–ZS) | "
             "Kendall (random) | overlap@10 GD (reorder floor) | KL(ICL‖GD) (floor) |", "|" + "---|" * 13]
    for setting in ("dai", "shen"):
        for task in args.tasks:
            for k in args.k:
                for model in args.models:
                    r = [x["icl_vs_gd"] for x in _runs(root, model, f"{setting}-{task}-k{k}", args.seeds)]
                    if not r:
                        continue
                    pl = lambda key: [_m(x["per_layer"][key]) for x in r]  # noqa: E731
                    dist = lambda key: [x["distributions"][key] for x in r]  # noqa: E731
                    acc = " / ".join(_ms([x["accuracy"][side]["accuracy"] for x in r], 2) for side in ("zs", "icl", "gd"))
                    lines.append(
                        f"| {setting} | {task} | {k} | {model} | {len(r)} | {r[0]['n']} | {acc} | {_ms([x['rec2ftp'] for x in r], 1)} | "
                        f"{_ms(pl('simaou'))} ({_ms(pl('simaou_random'))}) | {_ms(pl('simam_gd'))} ({_ms(pl('simam_zs'))}) | "
                        f"{_ms(pl('kendall'))} ({_ms(pl('kendall_random'))}) | {_ms(dist('overlap_gd'))} ({_ms(dist('overlap_reordered'))}) | "
                        f"{_ms(dist('kl_gd'))} ({_ms(dist('kl_reordered'))}) |")
    return "\n".join(lines)


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    os.environ.setdefault("ICL_INTERP_DATA", str(here.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/sweep/two-model")
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    p.add_argument("--tasks", nargs="+", default=["sst2", "sentiment", "country-capital"])
    p.add_argument("--analyses", nargs="+", choices=ANALYSES, default=list(ANALYSES))
    p.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kernel-n", type=int, default=100)
    p.add_argument("--gd-n", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    if not (Path(os.environ["ICL_INTERP_DATA"]) / "classification").exists():
        print("no datasets folder: sst2 skipped")
        args.tasks = [t for t in args.tasks if t != "sst2"]
    if not args.summary:
        run(args)
    print(kernel_table(args))
    print()
    print(gd_table(args))


if __name__ == "__main__":
    main()
