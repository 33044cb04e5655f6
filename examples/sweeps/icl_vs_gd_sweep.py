"""The issue-6 acceptance sweep: ICL against its GD counterpart on SmolLM2 over tasks × k × seeds,
in Dai et al.'s setting (k/v of every layer) and Shen et al.'s (W_V of one middle layer).

    python examples/sweeps/icl_vs_gd_sweep.py --out out/sweep/icl-vs-gd            # run (resumable)
    python examples/sweeps/icl_vs_gd_sweep.py --out out/sweep/icl-vs-gd --summary  # table only

Each run is written by the function the ``icl-interp icl-vs-gd`` CLI calls, to
``OUT/<setting>-<task>-k<k>-s<seed>/``; finished runs are skipped, so a killed sweep resumes.
Order sensitivity runs for ``--orders-seed`` and the Dai setting only (batch sizes 1, 2, 4, full).  sst2 / agnews / cb come from
``$ICL_INTERP_DATA`` (default ``../shared/datasets``) and are skipped when it is absent; cb has
56 test items, so its n is 56.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def settings(n_layers: int) -> dict:
    """dai / shen: the papers' settings; lcgd: Dai's with Deutch et al.'s layer-causal GD; untrained:
    Dai's setting on Deutch et al.'s untrained baseline (embeddings, norms and unembedding kept,
    attention and MLPs re-initialised), ICL side included."""
    from analyses.gd.presets import paper_config

    return {"dai": paper_config("kv"), "shen": paper_config(f"wv:{n_layers // 2}"),
            "lcgd": paper_config("kv", layer_causal=True), "untrained": paper_config("kv")}


def run(args) -> None:
    import torch

    from analyses.gd.icl_vs_gd import reference_runs
    from analyses.gd.report import run_icl_vs_gd_analysis
    from interp.finetune import GDCounterpart
    from interp.tasks import resolve_task
    from interp import load_model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    trained = load_model("smollm2-135m")
    configs = settings(trained.n_layers)
    gd = {"trained": GDCounterpart(trained)}
    models = {"trained": trained}
    for seed in args.seeds:
        for task in args.tasks:
            t = resolve_task(task)
            pool = t.test_examples if t.test_examples is not None else t.examples[: len(t.examples) - 30]
            n = min(args.n, len(pool))
            for k in args.k:
                refs = {}  # the model side (ZS / ICL / reordered), shared by the GD settings of one model
                for name in args.settings:
                    out = Path(args.out) / f"{name}-{task}-k{k}-s{seed}"
                    if (out / "results.json").exists():
                        continue
                    print("running", out.name, flush=True)
                    which = "untrained" if name == "untrained" else "trained"
                    if which not in models:
                        from interp.random_init import DEUTCH_KEEP, random_init_like

                        models[which] = random_init_like(trained, seed=0, keep=DEUTCH_KEEP)
                        gd[which] = GDCounterpart(models[which])
                    model = models[which]
                    refs[which] = refs.get(which) or reference_runs(model, t, k=k, n=n, seed=seed)
                    run_icl_vs_gd_analysis(model, t, k=k, n=n, seed=seed, config=configs[name], out=out, counterpart=gd[which],
                                           reference=refs[which],
                                           orders=args.orders if (seed == args.orders_seed and name == "dai") else 0, orders_n=args.orders_n)


def _m(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.mean(xs) if xs else float("nan")


def _ms(xs):
    xs = [x for x in xs if x is not None and x == x]
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def summary(args) -> str:
    root = Path(args.out)
    head = ("| setting | task | k | seeds | n | acc ZS / ICL / GD | Rec2FTP % | SimAOU (random) | SimAM ICL–GD (ICL–ZS) | update SimAM | "
            "Kendall (random) | overlap@10 GD (reorder floor) | OCS GD (floor) | KL(ICL‖GD) (floor) | dual cos GD / ICL | order sens. ICL / GD b1 / GD full |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in args.settings:
        for task in args.tasks:
            for k in args.k:
                runs = []
                for s in args.seeds:
                    p = root / f"{name}-{task}-k{k}-s{s}" / "results.json"
                    if p.exists():
                        runs.append(json.loads(p.read_text()))
                if not runs:
                    continue
                r = [x["icl_vs_gd"] for x in runs]
                acc = " / ".join(_ms([x["accuracy"][side]["accuracy"] for x in r]) for side in ("zs", "icl", "gd"))
                pl = lambda key: [_m(x["per_layer"][key]) for x in r]  # noqa: E731
                dist = lambda key: [x["distributions"][key] for x in r]  # noqa: E731
                dual = lambda key: [_m([_m(row) for row in x["dual_form"][key]]) for x in r]  # noqa: E731
                sens = next((x["order_sensitivity"] for x in runs if "order_sensitivity" in x), None)
                sens_txt = (f"{sens['icl']:.3f} / {sens['gd']['1']:.3g} / {sens['gd']['full']:.2g}" if sens else "–")
                lines.append(
                    f"| {name} | {task} | {k} | {len(r)} | {r[0]['n']} | {acc} | {_ms([x['rec2ftp'] for x in r])} | "
                    f"{_ms(pl('simaou'))} ({_ms(pl('simaou_random'))}) | {_ms(pl('simam_gd'))} ({_ms(pl('simam_zs'))}) | {_ms(pl('simam_update'))} | "
                    f"{_ms(pl('kendall'))} ({_ms(pl('kendall_random'))}) | {_ms(dist('overlap_gd'))} ({_ms(dist('overlap_reordered'))}) | "
                    f"{_ms(dist('ocs_gd'))} ({_ms(dist('ocs_reordered'))}) | {_ms(dist('kl_gd'))} ({_ms(dist('kl_reordered'))}) | "
                    f"{_ms(dual('cosine_gd'))} / {_ms(dual('cosine_icl'))} | {sens_txt} |")
    return "\n".join(lines)


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    os.environ.setdefault("ICL_INTERP_DATA", str(here.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/sweep/icl-vs-gd")
    p.add_argument("--tasks", nargs="+", default=["sentiment", "country-capital", "sst2", "agnews", "cb"])
    p.add_argument("--settings", nargs="+", default=["dai", "shen"])
    p.add_argument("--k", type=int, nargs="+", default=[8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--orders", type=int, default=5)
    p.add_argument("--orders-n", type=int, default=20)
    p.add_argument("--orders-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    if not (Path(os.environ["ICL_INTERP_DATA"]) / "classification").exists():
        print("no datasets folder: sst2/agnews/cb skipped")
        args.tasks = [t for t in args.tasks if t not in ("sst2", "agnews", "cb")]
    if not args.summary:
        run(args)
    print(summary(args))


if __name__ == "__main__":
    main()
