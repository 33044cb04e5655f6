"""``icl-interp linreg train|analyze``: the linear-regression lab as files.

- :func:`run_linreg_train` trains one model (:func:`interp.linreg.train.train`, seed and thread
  count pinned) and writes the checkpoint (``model.safetensors``, ``config.json``,
  ``metrics.json``) plus ``results.json`` and ``report.html`` (training curve against the zero,
  one-step-GD and OLS losses).
- :func:`run_linreg_analysis` runs the analyses on a checkpoint — trained vs one-step GD
  (:mod:`analyses.linreg.gd_check`), which algorithm (:mod:`analyses.linreg.algorithms`), implicit
  weights and GD steps per layer (:mod:`analyses.linreg.probes`) and, for the softmax GPT, attention
  as a kernel (:mod:`analyses.linreg.kernel`) — and writes ``results.json`` and ``report.html``.
  With ``out``, each part is saved under ``out/parts/`` as it finishes (:mod:`analyses.resumable`):
  a killed run started again with the same arguments loads the finished parts instead of
  recomputing them; ``results["resumed_parts"]`` says which parts were loaded and which computed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analyses.report.html import write_run

PARTS = ("gd", "algorithms", "probes", "kernel")


def _training_figure(config, metrics: dict):
    import plotly.graph_objects as go

    steps = [c["step"] for c in metrics["curve"]]
    fig = go.Figure(go.Scatter(x=steps, y=[c["eval_query_loss"] for c in metrics["curve"]], mode="lines", name="model"))
    for key, name in (("zero_query_loss", "zero predictor"), ("gd_query_loss", "one GD step (best η)"), ("ols_query_loss", "OLS")):
        fig.add_hline(y=max(metrics["baselines"][key], 1e-12), line_dash="dash", annotation_text=name)
    fig.update_layout(title=f"Training: {config.model} d={config.d}, {config.n_points} points, seed {config.seed} — "
                            f"query loss on {config.eval_tasks} eval tasks", xaxis_title="step",
                      yaxis_title="0.5 · mean (ŷ_q − y_q)²", yaxis_type="log")
    return fig


def run_linreg_train(config, out: str | Path, progress: bool = False, command: str | None = None) -> dict:
    """Train per ``config`` (a :class:`~interp.linreg.train.TrainConfig`) and write the checkpoint
    and report into ``out``; returns the metrics (with ``command``, when given, recorded in them)."""
    from interp.linreg.train import save_checkpoint, train

    model, metrics = train(config, progress=progress)
    if command:
        metrics["command"] = command
    save_checkpoint(model, config, metrics, out)
    b = metrics["baselines"]
    text = (f"final query loss {metrics['final']['query_loss']:.4g} (one GD step, η={b['gd_eta']:.3g}: {b['gd_query_loss']:.4g}; "
            f"OLS {b['ols_query_loss']:.3g}; zero {b['zero_query_loss']:.4g}); {config.steps} steps in "
            f"{metrics['train_seconds']:.1f} s on {metrics['threads']} thread(s)")
    write_run(out, {"train_config": config.to_dict(), "metrics": metrics}, "Linear-regression lab: training",
              [("Training", text, [_training_figure(config, metrics)])])
    return metrics


def _load(checkpoint):
    from interp.linreg.checkpoints import SHIPPED, load_shipped
    from interp.linreg.train import load_checkpoint

    if not isinstance(checkpoint, (str, Path)):
        return checkpoint, str(type(checkpoint).__name__)
    if str(checkpoint) in SHIPPED:
        return load_shipped(str(checkpoint))[0], str(checkpoint)
    return load_checkpoint(checkpoint)[0], str(checkpoint)


def _weights_sha256(model) -> str:
    """A digest of a model's weights (:func:`interp.finetune.parameter_hash`): a resumed run must be
    on the same model; a plain predict function, allowed in ``depth_models``, is named by its
    qualified name instead."""
    from interp.finetune import parameter_hash

    if not hasattr(model, "state_dict"):
        return f"function {getattr(model, '__qualname__', type(model).__name__)}"
    return parameter_hash(model)


def run_linreg_analysis(checkpoint, out: str | Path | None = None, *, parts: Sequence[str] = PARTS, n_tasks: int = 2048,
                        seed: int = 0, k_values: Sequence[int] | None = None, depth_models: dict | None = None,
                        progress: bool = False) -> dict:
    """The lab's analyses on ``checkpoint`` (a shipped name, a checkpoint folder, or a model).

    ``k_values`` (context sizes for the which-algorithm curves) default to 1 … N; that part uses at
    most 512 tasks (each is probed at 32+ fresh queries for the implicit weights);
    ``depth_models`` (name → model) adds models of other depths to the which-algorithm comparison.
    With ``out``, finished parts are saved under ``out/parts/`` and reused by a restarted run with
    the same arguments (a run with other arguments into the same ``out`` raises ``ValueError``).
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    model, name = _load(checkpoint)
    cfg = model.cfg
    results: dict = {"checkpoint": name, "model": cfg.to_dict(), "n_tasks": n_tasks, "seed": seed}
    sections = []
    run = None
    if out is not None:
        from analyses.resumable import ResumableRun

        run = ResumableRun(out, {"checkpoint": name, "model": cfg.to_dict(), "weights_sha256": _weights_sha256(model),
                                 "n_tasks": n_tasks, "seed": seed, "k_values": list(k_values) if k_values else None,
                                 "depth_models": {k: _weights_sha256(m) for k, m in (depth_models or {}).items()}},
                           progress=progress)
    part = run.part if run else (lambda _name, compute: compute())
    if "gd" in parts:
        from analyses.linreg.gd_check import trained_vs_gd

        r = part("gd", lambda: trained_vs_gd(model, n_tasks=max(n_tasks, 10_000) if cfg.kind == "lsa" else n_tasks,
                                             seed=5 if cfg.kind == "lsa" else seed))
        results["trained_vs_gd"] = r.to_dict()
        r_gd = r
        sections.append(("Trained model vs one GD step", (
            f"loss: trained {r.loss['trained']:.4g}, one GD step {r.loss['gd']:.4g} (ratio {r.loss_ratio:.4f}), OLS {r.loss['ols']:.3g}, "
            f"zero {r.loss['zero']:.4g}\nline-search η {r.gd_eta:.4g}; effective η of the model {r.eta_effective:.4g} "
            f"({100 * r.eta_relative_error:.2f}% off)\nmean |ŷ_TF − ŷ_GD| {r.preds_diff:.4g}; sensitivity cosine {r.sensitivity_cos:.4f}, "
            f"L2 {r.sensitivity_l2:.4g}"), r.figures()))
    if "algorithms" in parts:
        from analyses.linreg.algorithms import which_algorithm
        from interp.linreg.train import training_distribution

        n_ctx = cfg.n_points - 1
        ks = list(k_values) if k_values else list(range(1, n_ctx + 1))
        models = {f"{cfg.kind} ({cfg.n_layers} layer{'s' * (cfg.n_layers > 1)})": model, **(depth_models or {})}
        x_dist, x_range = training_distribution(model) or ("normal", 1.0)
        r = part("algorithms", lambda: which_algorithm(models, cfg.d, ks, n_tasks=min(n_tasks, 512), seed=seed,
                                                       x_dist=x_dist, x_range=x_range))
        results["which_algorithm"] = r.to_dict()
        sections.append(("Which learning algorithm? (Akyürek et al.; Garg et al.)", _best_match_text(r), r.figures()))
    if "probes" in parts:
        from analyses.linreg.probes import gd_steps_matched, implicit_weight_probes

        p, s = part("probes", lambda: (implicit_weight_probes(model, cfg.d, n_tasks=n_tasks, seed=seed),
                                       gd_steps_matched(model, cfg.d, n_tasks=n_tasks, seed=seed)))
        results["implicit_weights"] = p.to_dict()
        results["gd_steps_matched"] = s.to_dict()
        last = p.layer_names[-1]
        text = "\n".join(f"R² at layer {last}, query position — {t}: {p.r2(t)[-1]:.3f} (random-init control {p.r2(t, control=True)[-1]:.3f})"
                         for t in ("w", "Xty", "w_ols", "y_gd"))
        text += f"\nbest-matching number of GD steps per layer: {s.best_steps}"
        sections.append(("Implicit weights in the activations", text, [*p.figures(), *s.figures()]))
    if "kernel" in parts and cfg.kind == "gpt":
        from analyses.linreg.kernel import attention_kernel

        r = part("kernel", lambda: attention_kernel(model, n_tasks=n_tasks, seed=seed))
        results["attention_kernel"] = r.to_dict()
        l, h = r.best_head
        sections.append(("Attention as a kernel over the context x-tokens", (
            f"best head L{l}H{h}: r(scores, x_q·x_i) = {r.r_dot[l][h]:.3f}, β = {r.beta[l][h]:.3g}\n"
            f"error (ŷ−y)²/d: model {r.error['model']:.4g}, Nadaraya–Watson with that kernel {r.error['nadaraya_watson']:.4g}, "
            f"attention vote {r.error['attention_vote']:.4g}\nagreement with the model (Pearson r): NW {r.agreement['nadaraya_watson']:.3f}, "
            f"vote {r.agreement['attention_vote']:.3f}"), r.figures()))
    if run is not None:
        results["resumed_parts"] = run.summary()
    if "trained_vs_gd" in results:
        from analyses.reproduce.claims import verdict_section
        from analyses.reproduce.vonoswald2023 import gd_check_claims

        sections.insert(0, verdict_section(gd_check_claims(r_gd, name), "von Oswald et al. 2023's findings on this model"))
    write_run(out, results, f"Linear-regression lab: {name}", sections)
    return results


def _best_match_text(r) -> str:
    lines = []
    for name, by_k in r.to_dict()["best_match"].items():
        lines.append(f"{name}: closest reference learner (lowest SPD) per number of context points k — "
                     + ", ".join(f"k={k}: {v}" for k, v in by_k.items()))
    return "\n".join(lines)
