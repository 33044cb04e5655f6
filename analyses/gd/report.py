"""``icl-interp icl-vs-gd``: ICL against its GD counterpart on one model and task, as files.

Runs :func:`analyses.gd.icl_vs_gd.icl_vs_gd` (accuracy, Rec2FTP, SimAOU, SimAM, Kendall, overlap/KL,
dual form) and, with ``orders > 0``, :func:`analyses.gd.order_sensitivity.order_sensitivity`; writes
``results.json`` (per-layer arrays, the exact prompts' token ids, the GD configuration, the fit
losses) and a self-contained ``report.html``.  Same arguments and thread count → same results.json.
"""
from __future__ import annotations

from pathlib import Path

from analyses.gd.icl_vs_gd import ReferenceRuns, icl_vs_gd
from interp.tasks import resolve_task
from analyses.gd.order_sensitivity import order_sensitivity
from analyses.gd.presets import paper_config
from analyses.report.html import write_run
from interp.finetune import GDConfig, GDCounterpart


def run_icl_vs_gd_analysis(model, task, *, k: int = 8, n: int = 100, seed: int = 0, config: GDConfig | None = None,
                           orders: int = 0, orders_n: int = 50, record: str | None = None, out: str | Path | None = None,
                           counterpart: GDCounterpart | None = None, reference: ReferenceRuns | None = None) -> dict:
    """:func:`icl_vs_gd` (+ order sensitivity when ``orders > 0``) written to ``out``;
    ``counterpart`` / ``reference`` are reused when given (several GD settings, one model side)."""
    from analyses.resumable import model_args, resumable

    task = resolve_task(task)
    config = config or paper_config("kv")
    run = resumable(out, {"command": "icl-vs-gd", **model_args(model, task), "k": k, "n": n, "seed": seed, "config": config.to_dict(),
                          "record": record, "orders": orders, "orders_n": orders_n})
    gd = counterpart
    if gd is None:
        gd = GDCounterpart(model)
    result = run.part("icl_vs_gd", lambda: icl_vs_gd(model, task, k=k, n=n, seed=seed, config=config, record=record, counterpart=gd,
                                                     reference=reference))
    results = {"model": model.name, "engine": model.engine_name, "task": task.name, "k": k, "n": result.n, "seed": seed,
               "icl_vs_gd": result.to_dict()}
    sections = [("ICL vs its GD counterpart", result.summary(), result.figures())]
    if orders > 0:
        sens = run.part("order_sensitivity", lambda: order_sensitivity(model, task, k=k, n=min(orders_n, n), seed=seed, n_orders=orders,
                                                                       config=GDConfig(**{**config.to_dict(), "batch_size": 1}),
                                                                       counterpart=gd))
        results["order_sensitivity"] = sens.to_dict()
        sections.append(("Order sensitivity (Shen et al.)", sens.summary(), sens.figures()))
    from interp.protocol import task_protocol, template_protocol

    protocol = {**template_protocol(task.template, "left"), **task_protocol(task), "gd_config": config.to_dict(), "record": result.record,
                "order_sensitivity_orders": orders}
    from analyses.reproduce.claims import verdict_section
    from analyses.reproduce.common import our_setting
    from analyses.reproduce.dai2023 import PAPER_SETTING, gd_claims
    from interp.finetune import describe_gd

    claims = gd_claims(result, {**PAPER_SETTING, "dataset": "six datasets"},
                       our_setting(model, task.name, result.k, result.n, other=describe_gd(config)), "Dai et al. Tables 1–5", {})
    sections.insert(0, verdict_section(claims, "Dai et al. 2023's findings on this run"))
    write_run(out, results, f"Is ICL gradient descent? — {model.name}, {task.name}, k={k}, n={result.n}, seed {seed}", sections,
              model=model, protocol=protocol)
    return results
