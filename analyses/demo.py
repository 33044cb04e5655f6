"""The main job on the embedded model: what ``make demo`` runs.

Now: ICL accuracy against k on bundled tasks (two word tasks and the sentiment task), printed as
a table and written to ``out/demo/results.json`` and ``out/demo/report.html``.  Later analyses
(kernel regression, ICL vs GD, head attribution, the linear-regression lab) join it.
"""
from __future__ import annotations

import time
from pathlib import Path

from analyses.icl_accuracy import icl_accuracy_vs_k
from analyses.report import write_json_atomic, write_report
from interp import load_model

DEMO_TASKS = ("present-past", "country-capital", "sentiment")
DEMO_KS = (0, 1, 2, 4, 8)


def run_demo(model_name: str = "smollm2-135m", engine: str = "transformer-lens", out: Path = Path("out/demo"), n: int = 40,
             seed: int = 0, progress: bool = True, device: str | None = None, remote: bool = False) -> dict:
    """``device`` places the model (cpu by default, cuda, ...); ``remote`` runs a hub model through
    nnsight on NDIF (``engine="nnsight"``); both go to :func:`interp.load_model`."""
    start = time.time()
    model = load_model(model_name, engine=engine, device=device, remote=remote)
    results = {}
    for task in DEMO_TASKS:
        results[task] = icl_accuracy_vs_k(model, task, ks=DEMO_KS, n=n, seeds=(seed,), progress=progress)
    table = format_table(results)
    print(table)
    data = {"model": model.name, "engine": engine, "seed": seed, "n": n, "icl_accuracy": {t: r.to_dict() for t, r in results.items()},
            "seconds": round(time.time() - start, 1)}
    out = Path(out)
    write_json_atomic(out / "results.json", data)
    write_report(out / "report.html", f"icl-interp demo — {model.name}",
                 [("ICL accuracy vs k", table, [f for r in results.values() for f in r.figures()])])
    print(f"wrote {out / 'results.json'} and {out / 'report.html'} ({data['seconds']} s)")
    return data


def format_table(results: dict) -> str:
    ks = next(iter(results.values())).ks
    header = "task".ljust(18) + "".join(f"k={k}".rjust(20) for k in ks)
    lines = [f"ICL accuracy (95% Wilson CI), n={next(iter(results.values())).n} queries per task", header]
    for task, r in results.items():
        cells = "".join(f"{r.accuracy[k]['accuracy']:.2f} [{r.accuracy[k]['ci_low']:.2f}, {r.accuracy[k]['ci_high']:.2f}]".rjust(20) for k in ks)
        lines.append(task.ljust(18) + cells)
    return "\n".join(lines)
