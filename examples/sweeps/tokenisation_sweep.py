"""The issue-15 sweep: ICL accuracy under whole-text vs piecewise tokenisation, and the kernel
reconstruction under the two span rules (block vs input + label), on SmolLM2.

    python examples/sweeps/tokenisation_sweep.py --out out/sweep/tokenisation            # run (resumable)
    python examples/sweeps/tokenisation_sweep.py --out out/sweep/tokenisation --summary  # table only

One :func:`analyses.kernel.reconstruction.kernel_reconstructions` call per (task, tokenisation, seed)
gives the model's ICL accuracy (with its Wilson interval) and the per-head agreement under both
span rules from the same attention rows.  sst2 comes from ``$ICL_INTERP_DATA`` (default
``../shared/datasets``) and is skipped when absent; the bundled sentiment task has 170 examples,
so its n is capped at 140 (30 kept as the demo pool).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path


def run(args) -> None:
    import torch

    from analyses.kernel.reconstruction import kernel_reconstructions
    from interp.tasks import resolve_task
    from analyses.report.html import write_json_atomic
    from interp import load_model

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    for task_name in args.tasks:
        try:
            task = resolve_task(task_name)
        except (ValueError, FileNotFoundError) as err:
            print(f"skipping {task_name}: {err}")
            continue
        n = args.n if task.test_examples is not None else min(args.n, len(task.examples) - 30)
        for tokenisation in ("whole-text", "piecewise"):
            t = dataclasses.replace(task, template=dataclasses.replace(task.template, tokenisation=tokenisation))
            for seed in args.seeds:
                path = Path(args.out) / f"{task_name}-{tokenisation}-k{args.k}-s{seed}.json"
                if path.exists():
                    continue
                print("running", path.name, flush=True)
                both = kernel_reconstructions(model, t, k=args.k, n=n, seed=seed, spans=("block", "input+label"))
                write_json_atomic(path, {rule: r.to_dict() for rule, r in both.items()})


def summary(args) -> None:
    rows = {}
    for path in sorted(Path(args.out).glob("*.json")):
        task, rest = path.stem.split("-", 1)
        tokenisation = "whole-text" if rest.startswith("whole-text") else "piecewise"
        rows.setdefault((task, tokenisation), []).append(json.loads(path.read_text()))
    ms = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"  # noqa: E731
    print("| task | tokenisation | seeds | n | ICL accuracy | block: best held-out agreement | input+label: best held-out agreement | "
          "block / input+label: mean head agreement | max per-head change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (task, tokenisation), runs in sorted(rows.items()):
        acc = [r["block"]["model_accuracy"]["accuracy"] for r in runs]
        held = {rule: [r[rule]["heldout_selection"]["heldout_agreement"]["accuracy"] for r in runs] for rule in ("block", "input+label")}
        mean_agree = {rule: [statistics.mean(v for row in r[rule]["agreement"] for v in row) for r in runs] for rule in ("block", "input+label")}
        change = max(abs(a - b) for r in runs for ra, rb in zip(r["block"]["agreement"], r["input+label"]["agreement"]) for a, b in zip(ra, rb))
        print(f"| {task} | {tokenisation} | {len(runs)} | {runs[0]['block']['n']} | {ms(acc)} | {ms(held['block'])} | {ms(held['input+label'])} | "
              f"{ms(mean_agree['block'])} / {ms(mean_agree['input+label'])} | {change:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/sweep/tokenisation")
    p.add_argument("--tasks", nargs="+", default=["sentiment", "sst2"])
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("ICL_INTERP_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "datasets"))
    if not args.summary:
        run(args)
    summary(args)


if __name__ == "__main__":
    main()
