"""Side-by-side benchmarks, measured in one process, printed as a JSON table of ratios.

Every row times two things on the same inputs, interleaved (A, B, A, B, ...) so that machine load
hits both alike, and reports the ratio of their medians against a target.  Threads are pinned
(``--threads``, default 1) because thread count changes both speed and the last bits of results.

    python bench/run.py [--threads 1] [--repeats 7] [--only capture_overhead] [--models smollm2-135m gemma3-270m]

Every row is measured on each of ``--models`` (default: both embedded models).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from interp import Capture, load_model  # noqa: E402
from interp.plain import plain_twin  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(a: Callable, b: Callable, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately ``repeats`` times after a warm-up."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(timed(a)), tb.append(timed(b))
        else:
            tb.append(timed(b)), ta.append(timed(a))
    return statistics.median(ta), statistics.median(tb)


def row(name: str, ratio: float, target: str, ok: bool, **detail) -> dict:
    return {"row": name, "ratio": round(ratio, 3) if ratio >= 0.01 else float(f"{ratio:.2g}"), "target": target, "meets_target": ok, **detail}


def prompt_ids(model, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """A reproducible natural-text prompt of exactly ``n_tokens`` tokens."""
    from interp.tasks import load_task

    task = load_task("sentiment")
    text = " ".join(e.input for e in task.examples)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    assert len(ids) == n_tokens
    return torch.tensor([ids])


def bench_capture_overhead(model, reference, repeats: int) -> dict:
    """Targeted capture (last position's attention row, all heads, all layers + resid_post at all
    layers) through the facade vs a plain transformers forward of the same weights, 200 tokens."""
    ids = prompt_ids(model, 200)
    caps = [Capture("attn.hook_pattern", positions="final"), Capture("hook_resid_post")]

    def plain():
        with torch.no_grad():
            reference(input_ids=ids)

    def captured():
        with torch.no_grad():
            model.run(ids, capture=caps)

    t_plain, t_cap = side_by_side(captured, plain, repeats)
    ratio = t_cap / t_plain
    return row("capture_overhead_200tok", ratio, "<= 1.10", ratio <= 1.10, plain_s=round(t_plain, 4), capture_s=round(t_cap, 4))


def icl_pair(model, n_demos: int = 4):
    """A sentiment ICL prompt (~84 tokens with SmolLM2) and its corrupted twin with every demo
    label flipped; both unpadded, token-aligned."""
    from interp.tasks import load_task

    task = load_task("sentiment")
    demos, query = task.examples[:n_demos], task.examples[n_demos]

    def text(flip: bool) -> str:
        parts = []
        for e in demos:
            label = task.label_words[1 - e.label] if flip else e.output
            parts.append(f"Review: {e.input}\nSentiment: {label}\n\n")
        return "".join(parts) + f"Review: {query.input}\nSentiment:"

    clean, corrupt = (model.tokenizer(text(f), add_special_tokens=False, return_tensors="pt")["input_ids"] for f in (False, True))
    assert clean.shape == corrupt.shape
    words = [model.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in task.label_words]
    gold = words[query.label]
    return clean, corrupt, gold, words[1 - query.label]


def bench_patching(model, reference, repeats: int) -> list[dict]:
    """Exact per-head patching (all positions; final position), the function-vector AIE sweep and
    attribution patching, each against its baseline on the same prompt, model and metric; every
    batched row also reports its max abs difference from the unbatched path (one variant per
    call)."""
    from transformer_lens import patching as tl_patching
    import pandas as pd

    from interp.patching import logit_diff, patch_heads
    from interp.patching.attribution import attribution_patch_heads
    from interp.patching.runner import DecoderRunner

    clean, corrupt, gold, other = icl_pair(model)
    metric = logit_diff([gold], [other])
    bridge = model.bridge
    _, cache = bridge.run_with_cache(clean)
    runner = DecoderRunner(model.hf_model)
    n_heads = model.n_layers * model.n_heads

    def tl_metric(logits):
        return metric(logits[:, -1])

    def timed_value(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    # TransformerLens's patching functions take the clean run's cache, computed before they are
    # called; ours take the same cache (clean_cache=), and the ratio with our own clean run
    # included (clean prompts in, one call) is reported beside it
    rows = []
    with torch.no_grad():
        theirs, t_tl = timed_value(lambda: tl_patching.get_act_patch_attn_head_out_all_pos(bridge, corrupt, cache, tl_metric))
    ours = patch_heads(model, clean, corrupt, metric, runner=runner, clean_cache=cache)
    whole = patch_heads(model, clean, corrupt, metric, runner=runner)
    t_ours, t_whole = side_by_side(lambda: patch_heads(model, clean, corrupt, metric, runner=runner, clean_cache=cache),
                                   lambda: patch_heads(model, clean, corrupt, metric, runner=runner), 2, warmup=0)
    alone = patch_heads(model, clean, corrupt, metric, runner=runner, max_rows=1)
    ratio = t_tl / t_ours
    rows.append(row("head_patching_all_pos_vs_transformer_lens", ratio, ">= 4 (speed-up)", ratio >= 4,
                    tl_s=round(t_tl, 2), ours_s=round(t_ours, 2), ours_with_clean_run_s=round(t_whole, 2),
                    ratio_with_clean_run=round(t_tl / t_whole, 2), max_abs_diff=float((ours.scores - theirs).abs().max()),
                    max_abs_diff_unbatched=float((whole.scores - alone.scores).abs().max()),
                    max_abs_diff_cache_vs_prompts=float((ours.scores - whole.scores).abs().max()),
                    n_tokens=int(clean.shape[1]), n_heads=n_heads))
    exact_all = whole

    final = clean.shape[1] - 1
    index_df = pd.DataFrame([(l, final, h) for l in range(model.n_layers) for h in range(model.n_heads)], columns=["layer", "pos", "head"])
    with torch.no_grad():
        theirs, t_tl = timed_value(lambda: tl_patching.generic_activation_patch(
            bridge, corrupt, cache, tl_metric, tl_patching.layer_pos_head_vector_patch_setter, "z", index_df=index_df))
    t_ours, t_whole = side_by_side(lambda: patch_heads(model, clean, corrupt, metric, positions="final", runner=runner, clean_cache=cache),
                                   lambda: patch_heads(model, clean, corrupt, metric, positions="final", runner=runner), 5)
    ours = patch_heads(model, clean, corrupt, metric, positions="final", runner=runner)
    alone = patch_heads(model, clean, corrupt, metric, positions="final", runner=runner, max_rows=1)
    ratio = t_tl / t_ours
    # float32 GEMMs of one row round differently from larger ones, so one variant per call differs
    # from the batched call in the last bits; in float64 the two agree to 1e-7
    m64 = load_model(model.name, dtype=torch.float64)
    r64 = DecoderRunner(m64.hf_model)
    together64 = patch_heads(m64, clean, corrupt, metric, positions="final", runner=r64)
    alone64 = patch_heads(m64, clean, corrupt, metric, positions="final", runner=r64, max_rows=1)
    del m64, r64
    rows.append(row("head_patching_final_pos_vs_transformer_lens", ratio, ">= 100 (speed-up)", ratio >= 100,
                    tl_s=round(t_tl, 2), ours_s=round(t_ours, 3), ours_with_clean_run_s=round(t_whole, 3),
                    ratio_with_clean_run=round(t_tl / t_whole, 1),
                    max_abs_diff=float((ours.scores.flatten() - theirs.flatten()).abs().max()),
                    max_abs_diff_unbatched=float((ours.scores - alone.scores).abs().max()),
                    max_abs_diff_unbatched_float64=float((together64.scores - alone64.scores).abs().max()),
                    # each float32 path against the float64 sweep: batching does not make the numbers worse
                    max_abs_err_vs_float64_batched=float((ours.scores.double() - together64.scores).abs().max()),
                    max_abs_err_vs_float64_unbatched=float((alone.scores.double() - together64.scores).abs().max()),
                    max_abs_err_vs_float64_transformer_lens=float((theirs.reshape(together64.scores.shape).double()
                                                                   - together64.scores).abs().max()),
                    max_abs_metric=float(ours.scores.abs().max())))

    rows.append(_bench_aie(model, clean, corrupt, gold, runner, timed_value))
    rows += _bench_atp(model, clean, corrupt, metric, exact_all, t_ours_all=rows[0]["ours_s"])

    def one_fwd_bwd():
        logits = model.run(corrupt, grad=True, logits="final").logits
        metric(logits).backward()

    def attribution():
        attribution_patch_heads(model, clean, corrupt, metric)

    t_fb, t_attr = side_by_side(one_fwd_bwd, attribution, max(3, repeats // 2))
    ratio = t_attr / t_fb
    rows.append(row("attribution_patching_vs_forward_backward", ratio, "<= 3", ratio <= 3,
                    forward_backward_s=round(t_fb, 3), attribution_s=round(t_attr, 3)))
    return rows


def _bench_aie(model, clean, corrupt, gold, runner, timed_value) -> dict:
    """Todd et al.'s AIE sweep: a stored z per head (here the clean run's final-position z, as the
    task-mean head output would be) written at the final position of the corrupted prompt, metric
    the gold token's probability; batched variants vs one TransformerLens hooked forward per head."""
    from interp.patching import patch_heads, target_prob

    metric = target_prob([gold])
    z = model.run(clean, capture=["attn.hook_z"], logits="final").acts
    mean_z = torch.stack([z[f"blocks.{l}.attn.hook_z"][0, -1] for l in range(model.n_layers)])  # [layer, head, d_head]
    bridge = model.bridge

    def one_at_a_time():
        out = torch.zeros(model.n_layers, model.n_heads)
        for l in range(model.n_layers):
            for h in range(model.n_heads):
                def hook(t, hook, l=l, h=h):
                    t = t.clone()
                    t[:, -1, h] = mean_z[l, h].to(t.dtype)
                    return t
                with torch.no_grad():
                    logits = bridge.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)])
                out[l, h] = metric(logits[:, -1])
        return out

    theirs, t_base = timed_value(one_at_a_time)
    ours, t_ours = timed_value(lambda: patch_heads(model, None, corrupt, metric, positions="final", values=mean_z, runner=runner))
    alone = patch_heads(model, None, corrupt, metric, positions="final", values=mean_z, runner=runner, max_rows=1)
    ratio = t_base / t_ours
    return row("aie_sweep_vs_one_head_at_a_time", ratio, ">= 20 (speed-up)", ratio >= 20, one_at_a_time_s=round(t_base, 2),
               ours_s=round(t_ours, 3), max_abs_diff=float((ours.scores - theirs).abs().max()),
               max_abs_diff_unbatched=float((ours.scores - alone.scores).abs().max()))


def _bench_atp(model, clean, corrupt, metric, exact, t_ours_all: float) -> list[dict]:
    """AtP and AtP* against exact patching of every head (all positions): Spearman of the screen's
    magnitude with |exact effect|, top-10 recall, and the time of each against the exact sweep.
    For head outputs (hook_z) AtP* is AtP + GradDrop (the QK fix is for queries and keys); for
    queries, AtP* is the QK fix, against exact query patching."""
    from scipy.stats import spearmanr

    from interp.patching import patch_heads
    from interp.patching.attribution import attribution_patch_heads

    def quality(est, ex):
        truth = (ex.scores - ex.corrupted_metric).abs().flatten()
        mag = est.magnitude.flatten()
        k = min(10, truth.numel())
        recall = len(set(torch.topk(truth, k).indices.tolist()) & set(torch.topk(mag, k).indices.tolist())) / k
        return float(spearmanr(mag.numpy(), truth.numpy()).statistic), recall

    rows = []
    t0 = time.perf_counter()
    exact_q = patch_heads(model, clean, corrupt, metric, site="attn.hook_q")
    t_exact_q = time.perf_counter() - t0
    for site, ex, t_ex, variants in (("attn.hook_z", exact, t_ours_all, (("AtP", {}), ("AtP* (GradDrop)", {"grad_drop": True}))),
                                     ("attn.hook_q", exact_q, t_exact_q, (("AtP", {"qk_fix": False}), ("AtP* (QK fix)", {})))):
        for name, kw in variants:
            t0 = time.perf_counter()
            est = attribution_patch_heads(model, clean, corrupt, metric, site=site, **kw)
            t_est = time.perf_counter() - t0
            rho, recall = quality(est, ex)
            rows.append(row(f"{name} {site} vs exact: time ratio", t_est / t_ex, "report", True, spearman=round(rho, 3),
                            top10_recall=recall, screen_s=round(t_est, 2), exact_s=round(t_ex, 2)))
    return rows


def bench_prefix_cache(model, reference, repeats: int) -> dict:
    """One fixed set of k=16 sentiment demos, 32 queries: final-position attention rows of every
    head + logits by full forwards of each prompt vs reusing the demo prefix's key/value cache."""
    from interp.prefix_cache import SharedPrefix, split_shared_prefix
    from interp.prompts import build_icl_batch
    from interp.tasks import load_task

    task = load_task("sentiment")
    batch = build_icl_batch(model.tokenizer, task, k=16, n=32, seed=0, same_demos=True, padding_side="left")
    split = split_shared_prefix(batch)
    assert split is not None  # every row really is prefix + its own suffix
    prefix, suffixes = split
    caps = [Capture("attn.hook_pattern", positions="final")]

    def full():
        for j in range(0, len(batch), 8):
            with torch.no_grad():
                model.run(batch.select(list(range(j, min(j + 8, len(batch))))), capture=caps, logits="final")

    def cached():
        SharedPrefix(model, prefix).run(suffixes, batch_size=8)

    t_full, t_cached = side_by_side(full, cached, max(3, repeats // 2))
    ratio = t_full / t_cached
    return row("prefix_kv_reuse_k16_32_queries", ratio, ">= 5 (speed-up)", ratio >= 5, full_s=round(t_full, 3),
               cached_s=round(t_cached, 3), prefix_tokens=len(prefix))


def _peak_rss_child(kind: str, model_name: str, threads: int, queue) -> None:
    """In a fresh process: load, warm up with a plain forward, then run ``kind`` and report the
    peak resident memory above the warmed-up peak (ru_maxrss never decreases)."""
    import resource

    from interp.prompts import build_icl_batch
    from interp.tasks import load_task

    torch.set_num_threads(threads)
    model = load_model(model_name)
    batch = build_icl_batch(model.tokenizer, load_task("sentiment"), k=16, n=8, seed=0, padding_side="left")
    with torch.no_grad():
        model.run(batch, logits="final")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if kind == "kernel_capture":
            out = model.run(batch, capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
            kept = out.acts.nbytes()
        else:  # a full TransformerLens cache of the same prompts
            _, cache = model.bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}
            kept = sum(storages.values())  # aliased hook names share storage: count each once
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"extra_peak_kib": peak - base, "kept_bytes": kept, "tokens": int(batch.attention_mask.sum())})


def bench_kernel_memory(model, reference, repeats: int) -> dict:
    """Peak memory of the kernel analysis's capture (final-position attention rows of all heads)
    vs a full TransformerLens cache, k=16 sentiment prompts x 8, each in its own process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    res = {}
    for kind in ("kernel_capture", "full_cache"):
        q = ctx.Queue()
        proc = ctx.Process(target=_peak_rss_child, args=(kind, model.name, torch.get_num_threads(), q))
        proc.start()
        res[kind] = q.get()
        proc.join()
    ratio = max(res["kernel_capture"]["extra_peak_kib"], 1) / max(res["full_cache"]["extra_peak_kib"], 1)
    return row("kernel_capture_peak_memory_vs_full_cache_k16", ratio, "< 0.25", ratio < 0.25,
               capture_extra_peak_mib=round(res["kernel_capture"]["extra_peak_kib"] / 1024, 1),
               full_cache_extra_peak_mib=round(res["full_cache"]["extra_peak_kib"] / 1024, 1),
               capture_kept_mib=round(res["kernel_capture"]["kept_bytes"] / 2**20, 2),
               full_cache_kept_mib=round(res["full_cache"]["kept_bytes"] / 2**20, 1), tokens=res["full_cache"]["tokens"])


def bench_gd_counterpart(model, reference, repeats: int) -> dict:
    """One example's GD counterpart in Dai's setting (k=8 SGD steps on every k_proj/v_proj, loss
    on every demo token) plus the three recorded forward passes it needs (ZS, ICL, fine-tuned
    copy on ZS), against one plain ICL forward of the same example."""
    from analyses.gd.icl_vs_gd import run_side
    from analyses.gd.presets import DAI
    from interp.finetune import GDCounterpart, demo_sequences
    from interp.prompts import build_icl_batch
    from interp.tasks import load_task

    task = load_task("sentiment")
    icl = build_icl_batch(model.tokenizer, task, k=8, n=1, seed=0, same_demos=True, padding_side="left")
    zs = build_icl_batch(model.tokenizer, task, k=0, queries=icl.queries, pool=[], padding_side="left")
    seqs, at = demo_sequences(model.tokenizer, task, icl.demos[0])
    start = time.perf_counter()
    gd = GDCounterpart(model)
    copy_s = time.perf_counter() - start
    token = int(icl.label_words.first_token_ids[0])

    def counterpart():
        gd.fit(seqs, at, DAI)
        run_side(model, zs, append=token)
        run_side(model, icl, append=token, rotary_q=True)
        run_side(gd.model, zs, append=token, flat_q=True)

    def plain_icl():
        with torch.no_grad():
            model.run(icl, logits="final")

    t_gd, t_icl = side_by_side(counterpart, plain_icl, max(3, repeats // 2))
    ratio = t_gd / t_icl
    return row("gd_counterpart_per_example_vs_icl_forward_k8", ratio, "<= 20 (cost)", ratio <= 20, seconds_per_example=round(t_gd, 3),
               icl_forward_s=round(t_icl, 3), one_time_copy_s=round(copy_s, 2))


BENCHES = {"capture_overhead": bench_capture_overhead, "patching": bench_patching, "prefix_cache": bench_prefix_cache,
           "kernel_memory": bench_kernel_memory, "gd_counterpart": bench_gd_counterpart}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"],
                        help="every row is measured on each model (default: both embedded models)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    by_model = {}
    for model_name in args.models:
        torch.manual_seed(0)
        model = load_model(model_name)
        reference = plain_twin(model.hf_model)
        rows = by_model.setdefault(model.name, [])
        for name in args.only or BENCHES:
            out = BENCHES[name](model, reference, args.repeats)
            for r in out if isinstance(out, list) else [out]:
                rows.append(r)
                print(json.dumps({"model": model.name, **r}), file=sys.stderr)
        del model, reference
    print(json.dumps({"threads": args.threads, "models": by_model}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
