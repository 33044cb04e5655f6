"""``icl-interp``: the command line over the same functions the notebooks call.

    icl-interp verify --model smollm2-135m          hook faithfulness checks, JSON, exit 1 on failure
    icl-interp accuracy --task present-past --k 0 1 2 4 8 --n 100
    icl-interp kernel --task sentiment --k 4 --n 100 --seed 0 --out out/kernel
    icl-interp icl-vs-gd --task sentiment --k 8 --n 100 --params kv --out out/icl-vs-gd
    icl-interp linreg train --model lsa --d 10 --n-points 11 --steps 1000 --out out/linreg/lsa
    icl-interp linreg analyze --checkpoint lsa-d10-n10 --out out/linreg/lsa-analysis
    icl-interp heads --task sentiment --k 4 --n 8 --out out/heads    every per-head score side by side
    icl-interp compare --models smollm2-135m gemma3-270m --task sentiment --out out/compare
    icl-interp demo                                  the main job on both embedded models

The commands that load a language model take ``--device cuda`` (default cpu) and ``--remote``
(a Hugging Face hub id run through nnsight on NDIF, e.g. ``--model meta-llama/Llama-3.1-8B --remote``).
``linreg analyze --out DIR`` saves each finished part under DIR/parts/; run again with the same
arguments after a crash or kill, it loads them instead of recomputing (:mod:`analyses.resumable`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analyses.report.html import strict_json, write_json_atomic


def _common(p: argparse.ArgumentParser, *, model: bool = True, model_default: str | None = "smollm2-135m") -> None:
    if model:
        p.add_argument("--model", default=model_default, help="embedded name (smollm2-135m, gemma3-270m), local folder or Hugging Face id")
    p.add_argument("--engine", default=None, choices=["transformer-lens", "nnsight"],
                   help="default transformer-lens; nnsight with --remote")
    p.add_argument("--device", default=None, help="torch device for the model: cpu (default), cuda, cuda:1, ...")
    if model:
        p.add_argument("--remote", action="store_true",
                       help="run through nnsight on NDIF (--model must be a Hugging Face hub model id; implies --engine nnsight)")
    p.add_argument("--threads", type=_count(1), default=None, help="torch threads (pin for bit-reproducible runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _count(minimum: int):
    """argparse type: an int >= ``minimum`` (so 0 or a negative count is refused, never ignored)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


TASK_HELP = "bundled task name, a dataset folder (train.jsonl + test.jsonl), a JSONL file, or a name under $ICL_INTERP_DATA"


def _one_task_run(p: argparse.ArgumentParser, *, k: int, n: int) -> None:
    """--task / --k / --n / --seed of the commands that analyse one (task, k, n, seed)."""
    p.add_argument("--task", default="sentiment", help=TASK_HELP)
    p.add_argument("--k", type=_count(1), default=k, help="demonstrations per prompt (at least 1)")
    p.add_argument("--n", type=_count(1), default=n)
    p.add_argument("--seed", type=int, default=0)
    _tokenisation_arg(p)


def _tokenisation_arg(p: argparse.ArgumentParser) -> None:
    from interp.prompts import LABEL_POLICIES, TOKENISATIONS

    p.add_argument("--tokenisation", choices=TOKENISATIONS, default="whole-text",
                   help="how prompts become tokens: the whole text at once as the model reads it (default), "
                        "or each piece on its own (the earlier default, for comparison)")
    p.add_argument("--label-words", default=None,
                   help="comma-separated label words of a classification task, one per class in class order")
    p.add_argument("--label-policy", choices=LABEL_POLICIES, default=None,
                   help="how multi-token label words are scored: their first token, or all their tokens")


def _task(args):
    """The --task with the command line's --tokenisation, --label-words and --label-policy."""
    import dataclasses

    from interp.tasks import resolve_task

    task = resolve_task(args.task)
    changes = {"template": dataclasses.replace(task.template, tokenisation=args.tokenisation)}
    if args.label_words is not None:
        words = [w.strip() for w in args.label_words.split(",")]
        if task.kind != "classification":
            raise ValueError(f"--label-words applies to classification tasks; {task.name!r} is a word task")
        if len(words) != len(task.label_words or []) or not all(words):
            raise ValueError(f"--label-words needs {len(task.label_words or [])} non-empty words (one per class of "
                             f"{task.name!r}: {task.label_words}), got {words}")
        relabel = lambda es: None if es is None else [dataclasses.replace(e, output=words[e.label]) for e in es]  # noqa: E731
        changes.update(label_words=words, examples=relabel(task.examples), test_examples=relabel(task.test_examples))
    if args.label_policy is not None:
        changes["label_policy"] = args.label_policy
    return dataclasses.replace(task, **changes)


def _placement(parser: argparse.ArgumentParser, args) -> None:
    """Check and resolve ``--engine``/``--device``/``--remote`` of the commands that load a language model."""
    if not hasattr(args, "remote"):
        return
    if args.command == "verify" and (args.remote or args.device not in (None, "cpu")):
        parser.error("verify compares both engines on a local CPU model: --remote and --device are not supported there")
    if args.remote:
        from interp.embedded import EMBEDDED_MODELS

        if args.engine == "transformer-lens":
            parser.error("--remote runs through nnsight on NDIF: use --engine nnsight (or leave --engine out)")
        if args.device is not None:
            parser.error("--device places a local model; with --remote the model runs on NDIF's machines")
        if args.model is None or args.model in EMBEDDED_MODELS or Path(args.model).exists():
            parser.error(f"--remote needs a Hugging Face hub model id that NDIF serves (e.g. meta-llama/Llama-3.1-8B), "
                         f"not the embedded or local model {args.model!r}")
    args.engine = args.engine or ("nnsight" if args.remote else "transformer-lens")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            parser.error(f"--device {args.device!r}: {err}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: this torch sees no CUDA device (torch {torch.__version__})")


def _setup(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_verify(args) -> int:
    import torch

    from interp.verify import VERIFY_TEXTS, verify

    _setup(args)
    engines = ("transformer-lens", "nnsight") if args.engines == "both" else (args.engines,)
    dtype = {"float32": None, "float64": torch.float64}[args.dtype]
    texts = args.text or VERIFY_TEXTS
    result = verify(args.model, engines=engines, dtype=dtype, texts=texts)
    print(strict_json(result.to_dict(), indent=2))
    return 0 if result.passed else 1


def cmd_accuracy(args) -> int:
    from analyses.icl_accuracy import icl_accuracy_vs_k
    from interp import load_model

    _setup(args)
    model = load_model(args.model, engine=args.engine, device=args.device, remote=args.remote)
    result = icl_accuracy_vs_k(model, _task(args), ks=args.k, n=args.n, seeds=args.seed, progress=not args.quiet)
    print(result.summary())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "results.json", {**result.to_dict(), "model_info": model.provenance()})
    return 0


def cmd_kernel(args) -> int:
    from analyses.kernel.report import run_kernel_analysis
    from interp import load_model

    _setup(args)
    model = load_model(args.model, engine=args.engine, device=args.device, remote=args.remote)
    results = run_kernel_analysis(model, _task(args), k=args.k, n=args.n, seed=args.seed, out=args.out,
                                  parts=args.parts.split(","), similarity_n=args.similarity_n, probes_n=args.probes_n,
                                  anchors_n=args.anchors_n)
    if "reconstruction" in results:
        sel = results["reconstruction"]["heldout_selection"]
        print(f"best held-out head L{sel['layer']}H{sel['head']}: agreement {sel['heldout_agreement']['accuracy']:.3f}")
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_icl_vs_gd(args) -> int:
    from analyses.gd.presets import paper_config
    from analyses.gd.report import run_icl_vs_gd_analysis
    from interp import load_model

    _setup(args)
    config = paper_config(args.params, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                          loss=args.loss, layer_causal=args.layer_causal or None)
    model = load_model(args.model, engine=args.engine, device=args.device, remote=args.remote)
    results = run_icl_vs_gd_analysis(model, _task(args), k=args.k, n=args.n, seed=args.seed, config=config, orders=args.orders,
                                     orders_n=args.orders_n, record=args.record, out=args.out)
    acc = results["icl_vs_gd"]["accuracy"]
    print(f"accuracy ZS {acc['zs']['accuracy']:.3f} ICL {acc['icl']['accuracy']:.3f} GD {acc['gd']['accuracy']:.3f}; "
          f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_linreg(args) -> int:
    import torch

    from analyses.linreg.report import run_linreg_analysis, run_linreg_train
    from interp.linreg.train import TrainConfig

    torch.set_num_threads(args.threads)  # always pinned: training is bit-reproducible per seed and thread count
    if args.action == "train":
        fields = ("model", "d", "n_points", "n_layers", "n_heads", "d_model", "steps", "batch_size", "lr", "warmup_steps",
                  "schedule", "x_dist", "x_range", "noise_std", "seed", "eval_tasks", "eval_every", "curriculum_dims", "curriculum_points",
                  "curriculum_every")
        config = TrainConfig(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
        metrics = run_linreg_train(config, args.out, progress=not args.quiet, command=" ".join(["icl-interp", *sys.argv[1:]]))
        print(f"query loss {metrics['final']['query_loss']:.4g} (one GD step {metrics['baselines']['gd_query_loss']:.4g}) "
              f"in {metrics['train_seconds']:.1f} s; wrote {args.out}/model.safetensors, results.json, report.html")
        return 0
    parts = [p for p in args.parts.split(",") if p]
    results = run_linreg_analysis(args.checkpoint, args.out, parts=parts, n_tasks=args.n_tasks, seed=args.seed or 0,
                                  progress=not args.quiet)
    if "trained_vs_gd" in results:
        r = results["trained_vs_gd"]
        print(f"loss ratio to one GD step {r['loss_ratio']:.4f}; η {r['eta_effective']:.4g} vs line search {r['gd_eta']:.4g}; "
              f"sensitivity cosine {r['sensitivity_cos']:.4f}")
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_heads(args) -> int:
    from analyses.heads.atlas import parse_scores, run_heads_report
    from interp import load_model

    _setup(args)
    scores = parse_scores(args.scores)  # a bad name fails before the model loads
    model = load_model(args.model, engine=args.engine, device=args.device, remote=args.remote)
    result = run_heads_report(model, _task(args), out=args.out, k=args.k, n=args.n, seed=args.seed, scores=scores,
                              patch_positions=args.patch_positions, progress=not args.quiet, fv_mean_over=args.fv_mean_over,
                              screen_budget=args.screen_budget)
    print(result.summary())
    print("wall time (s): " + ", ".join(f"{name} {s:.1f}" for name, s in result.seconds.items()))
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_compare(args) -> int:
    from analyses.model_comparison import compare_models

    _setup(args)
    result = compare_models(args.models, _task(args), parts=[p for p in args.parts.split(",") if p], ks=args.ks, k=args.k, n=args.n,
                            gd_n=args.gd_n, orders_n=args.orders_n, n_orders=args.n_orders, heads_n=args.heads_n, seed=args.seed,
                            engine=args.engine, device=args.device, progress=not args.quiet, out=args.out)
    print(result.summary())
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_reproduce(args) -> int:
    from analyses.reproduce import LAB_PAPERS
    from analyses.reproduce.run import reproduce, resolve_papers
    from interp import load_model

    _setup(args)
    papers = resolve_papers(args.papers)
    lab_only = all(p in LAB_PAPERS for p in papers)
    model = None if lab_only else load_model(args.model, engine=args.engine, device=args.device, remote=args.remote)
    results = reproduce(papers, model, budget=args.budget, out=args.out, seed=args.seed, progress=not args.quiet)
    for key, r in results.items():
        c = r["counts"]
        print(f"{key}: {c['reproduces']} reproduce, {c['does not reproduce']} do not, {c['not comparable']} not comparable "
              f"({r['seconds']:.0f} s)")
    print(f"wrote {args.out}/<paper>/results.json and report.html" + (f", and {args.out}/report.html" if len(papers) > 1 else ""))
    return 0


def cmd_demo(args) -> int:
    from analyses.demo import DEMO_MODELS, run_demo

    _setup(args)
    if args.model and args.models:
        raise ValueError("pass either --model (one model) or --models (several), not both")
    models = args.models or ([args.model] if args.model else list(DEMO_MODELS))
    run_demo(models=models, engine=args.engine, out=Path(args.out), n=args.n, progress=not args.quiet,
             device=args.device, remote=args.remote, parts=[p for p in args.parts.split(",") if p])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icl-interp", description="Mechanistic interpretability of in-context learning")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verify", help="check that hooks are faithful on a model (JSON; exit 1 on failure)")
    _common(p)
    p.add_argument("--engines", default="both", choices=["both", "transformer-lens", "nnsight"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--text", action="append", help="prompt(s) to verify on (repeatable; default: two built-in ICL prompts)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("accuracy", help="ICL accuracy against the number of demonstrations")
    _common(p)
    p.add_argument("--task", default="present-past")
    p.add_argument("--k", type=_count(0), nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--n", type=_count(1), default=100)
    p.add_argument("--seed", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=None)
    _tokenisation_arg(p)
    p.set_defaults(func=cmd_accuracy)

    p = sub.add_parser("kernel", help="does attention do kernel regression over the demonstrations? (Han et al.; Wang et al.)")
    _common(p)
    _one_task_run(p, k=4, n=100)
    p.add_argument("--out", default="out/kernel")
    p.add_argument("--parts", default="reconstruction,similarity,probes,anchors,selection",
                   help="comma-separated subset of reconstruction,similarity,probes,anchors,selection")
    p.add_argument("--similarity-n", type=_count(1), default=None, help="queries for attention vs similarity (default min(n, 100))")
    p.add_argument("--probes-n", type=_count(1), default=None, help="prompts for the key/value probes (default min(n, 100))")
    p.add_argument("--anchors-n", type=_count(1), default=None, help="queries for the anchors analysis (default min(n, 40))")
    p.set_defaults(func=cmd_kernel)

    p = sub.add_parser("icl-vs-gd", help="is ICL gradient descent? ICL against a fine-tuned copy (Dai et al.; Shen et al.; Deutch et al.)")
    _common(p)
    _one_task_run(p, k=8, n=100)
    p.add_argument("--params", default="kv",
                   help="kv (k_proj+v_proj of every layer, Dai), wv:LAYER (one layer's W_V, Shen), all, or a regex over parameter names")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="default: sgd for kv (Dai), adam otherwise (Shen)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-2 for kv (Dai), 1e-3 otherwise (Shen)")
    p.add_argument("--epochs", type=_count(1), default=None, help="default: 1 for kv (Dai), 20 otherwise (Shen)")
    p.add_argument("--batch-size", type=_count(1), default=None, help="default 1")
    p.add_argument("--loss", choices=["label", "all"], default=None, help="default: all demo tokens for kv (Dai), label token otherwise (Shen)")
    p.add_argument("--layer-causal", action="store_true", help="Deutch et al.'s layer-causal GD")
    p.add_argument("--record", choices=["label", "final"], default=None,
                   help="recorded position: label = the appended first label word (Dai's code; classification default), final = the predicting token")
    p.add_argument("--orders", type=_count(0), default=0, help="order sensitivity over this many demo orders (0: skip)")
    p.add_argument("--orders-n", type=_count(1), default=50, help="queries for the order sensitivity")
    p.add_argument("--out", default="out/icl-vs-gd")
    p.set_defaults(func=cmd_icl_vs_gd)

    p = sub.add_parser("linreg", help="the linear-regression lab: train small in-context regressors, compare with GD, probe them")
    p.add_argument("action", choices=["train", "analyze"])
    p.add_argument("--threads", type=_count(1), default=1, help="torch threads (pinned; default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default="out/linreg")
    g = p.add_argument_group("train")
    g.add_argument("--model", choices=["lsa", "gpt"], default=None, help="lsa: von Oswald's linear self-attention; gpt: Garg's softmax GPT")
    g.add_argument("--d", type=int, default=None)
    g.add_argument("--n-points", type=int, default=None, help="context points + the query (von Oswald's N=10 is 11)")
    for name, typ in (("n-layers", int), ("n-heads", int), ("d-model", int), ("steps", int), ("batch-size", int), ("lr", float),
                      ("warmup-steps", int), ("x-range", float), ("noise-std", float), ("seed", int), ("eval-tasks", int), ("eval-every", int),
                      ("curriculum-dims", int), ("curriculum-points", int), ("curriculum-every", int)):
        g.add_argument(f"--{name}", type=typ, default=None)
    g.add_argument("--schedule", choices=["constant", "cosine"], default=None)
    g.add_argument("--x-dist", choices=["normal", "uniform"], default=None)
    g = p.add_argument_group("analyze")
    g.add_argument("--checkpoint", default="lsa-d10-n10", help="a shipped checkpoint (lsa-d10-n10, gpt-d5-n20) or a folder from `linreg train`")
    g.add_argument("--parts", default="gd,algorithms,probes,kernel", help="comma-separated subset of gd,algorithms,probes,kernel")
    g.add_argument("--n-tasks", type=_count(1), default=2048)
    p.set_defaults(func=cmd_linreg)

    p = sub.add_parser("heads", help="every per-head score side by side: kernel agreement, patching, AIE, induction, dual form")
    _common(p)
    _one_task_run(p, k=4, n=8)
    p.add_argument("--scores", default="default",
                   help="comma-separated subset of kernel,exact_patching,attribution_patching,aie,induction,previous_token,dual_form,"
                        "dual_form_gd (default: all; dual_form_gd fine-tunes a copy of the model on the demos)")
    p.add_argument("--patch-positions", choices=["final", "all"], default="final",
                   help="positions where the head patching replaces z (all: ~20x slower)")
    p.add_argument("--screen-budget", type=_count(1), default=None,
                   help="patch only the N heads AtP* ranks highest exactly (plus a random check of the rest that bounds "
                        "what was missed; Kramar et al. 2024) instead of every head: for models with many heads")
    p.add_argument("--fv-mean-over", choices=["correct", "all"], default="correct",
                   help="clean prompts the AIE's mean head outputs come from: those the model answers correctly "
                        "(Todd et al., default) or all")
    p.add_argument("--out", default="out/heads")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser("compare", help="the same seeded protocol on several models, side by side, with where they disagree")
    _common(p, model=False)
    p.add_argument("--models", nargs="+", required=True, help="two or more models, each as --model accepts (e.g. smollm2-135m gemma3-270m)")
    _one_task_run(p, k=4, n=40)
    p.add_argument("--ks", type=_count(0), nargs="+", default=[0, 1, 2, 4, 8], help="k of the accuracy curve (on --n queries)")
    p.add_argument("--gd-n", type=_count(1), default=16, help="queries of the ICL-vs-GD part")
    p.add_argument("--orders-n", type=_count(1), default=12, help="queries of the order-sensitivity part")
    p.add_argument("--n-orders", type=_count(2), default=3, help="demo orders of the order-sensitivity part")
    p.add_argument("--heads-n", type=_count(1), default=8, help="queries of the head-scores part")
    p.add_argument("--parts", default="accuracy,kernel,icl_vs_gd,orders,heads",
                   help="comma-separated subset of accuracy,kernel,icl_vs_gd,orders,heads")
    p.add_argument("--out", default="out/compare")
    p.set_defaults(func=cmd_compare, remote=False)

    from analyses.reproduce import PAPERS

    p = sub.add_parser("reproduce", help="each paper's protocol on a model, the paper's numbers beside ours, with verdicts",
                       description="papers:\n" + "\n".join(f"  {k:14} {v[1] + ':':8} {v[2]}" for k, v in PAPERS.items())
                       + "\n\nbudgets: smoke (every paper in minutes), small (about an hour), paper (the papers' sizes)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("papers", nargs="+", metavar="PAPER", help="one or more of " + ", ".join(PAPERS) + ", or all")
    p.add_argument("--budget", default="smoke", choices=["smoke", "small", "paper"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/reproduce")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("demo", help="the main job on the embedded models")
    _common(p, model_default=None)
    p.add_argument("--models", nargs="+", default=None,
                   help="the models to run it on (default: both embedded models, smollm2-135m gemma3-270m); --model: just one")
    p.add_argument("--n", type=_count(1), default=24, help="queries per task for the accuracy curve (other parts use n/3)")
    p.add_argument("--parts", default="accuracy,kernel,icl_vs_gd,heads,linreg", help="comma-separated subset of the demo's parts")
    p.add_argument("--out", default="out/demo")
    p.set_defaults(func=cmd_demo)
    return parser


def _check_out(parser: argparse.ArgumentParser, args) -> None:
    """--out must be a folder this process can write, found before any work starts."""
    import os

    out = getattr(args, "out", None)
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        parser.error(f"--out {out} is an existing file: pass a folder (it is created when missing)")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        parser.error(f"--out {out}: {probe} is not a folder this user can write; pick another --out")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _placement(parser, args)
    _check_out(parser, args)
    try:
        return args.func(args)
    except OSError as err:  # connection errors are OSErrors
        if not getattr(args, "remote", False):
            raise
        print(f"icl-interp: --remote run of {args.model} failed: {err}\n--remote needs network access to huggingface.co "
              "(the model's config) and to NDIF, with an API key in $NDIF_API_KEY", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:  # a user error: one line naming the fix, no traceback
        if getattr(args, "debug", False):
            raise
        print(f"icl-interp: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
