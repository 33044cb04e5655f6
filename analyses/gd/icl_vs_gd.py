"""Is in-context learning gradient descent in a pretrained LM? (Dai et al. 2023; Shen et al. 2023;
Deutch et al. 2024)

One fixed demo set per seed (Dai's ``train.shuffle(seed)[:k]``), ``n`` test queries, three runs:
ZS (the model, query alone), ICL (the model, demos + query) and GD (a copy fine-tuned on the demos
with :class:`~interp.finetune.GDConfig`, query alone).  Dai's code records the position one after
the prediction: the first label word's token is appended to every prompt (``record="label"``;
``"final"`` records the predicting position itself, the only choice for word tasks).

Metrics (per layer where the papers have them; baselines beside each):

- accuracy ZS / ICL / GD; Rec2FTP = |ZS✗ ∧ GD✓ ∧ ICL✓| / |ZS✗ ∧ GD✓|;
- SimAOU_l = mean cos(ĥ_ICL − ĥ_ZS, ĥ_GD − ĥ_ZS) of the unit-normalised attention-sublayer
  outputs, with the random-update baseline (u ~ U[0,1)^d);
- SimAM_l: cosine of the raw scores q·k/√d over the query-part tokens, ICL vs GD and (baseline,
  "before fine-tuning") ICL vs ZS, and Deutch's update-based cos(A_ICL − A_ZS, A_GD − A_ZS);
- Kendall τ_l between ICL attention to the demo tokens (raw scores summed over heads, softmax) and
  the GD side's training-token attention softmax_t(q_test · q_t), random baseline τ(ICL, U[0,1));
- Token Overlap@10, overlap cosine and KL(ICL‖GD) of the next-token distributions at the
  prediction position, beside the noise floor ICL vs ICL with the demos reordered (Shen et al.);
- the dual form per layer and head: ΔW_ICL q = Σ_t (W_V x'_t)((W_K x'_t)ᵀ q) over the demo tokens,
  with rotary keys and queries and no softmax (Dai's relaxed linear attention), against the change
  the fine-tuned weights make to that head's output at the query, z_GD − z_ZS, and against the
  change ICL actually makes, z_ICL − z_ZS (cosine and norm ratio).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import torch

from analyses.gd.dual_form import compare_updates, dual_form_output
from analyses.gd.presets import DAI
from analyses.gd import metrics as gm
from interp.capture import Capture
from interp.finetune import GDConfig, GDCounterpart, demo_sequences, parameter_hash
from interp.prompts import build_icl_batch
from interp.scoring import accuracy, bootstrap_mean_interval, minibatches

Record = Literal["label", "final"]

@dataclass
class SideRun:
    """One of ZS / ICL / GD on the n queries, at the prediction and the recorded position."""

    logprobs: torch.Tensor  # [n, vocab] next-token log-probabilities at the prediction position
    attn_out: torch.Tensor  # [n, layer, d_model] attention-sublayer output at the recorded position
    z: torch.Tensor  # [n, layer, head, d_head] per-head attention output (before W_O), recorded position
    query_scores: list[torch.Tensor]  # per query [layer, head, t]: raw scores over the query-part tokens
    q_rot: torch.Tensor | None = None  # [n, layer, head, d_head] rotary queries (ICL)
    q_flat: torch.Tensor | None = None  # [n, layer, head·d_head] q/√d_head before rotary (GD, for Kendall)
    demo_scores: torch.Tensor | None = None  # [n, layer, T] raw scores to the demo tokens summed over heads (ICL)


def _append(ids: torch.Tensor, mask: torch.Tensor, token: int | None):
    if token is None:
        return ids, mask
    b = ids.shape[0]
    return torch.cat([ids, torch.full((b, 1), token, dtype=ids.dtype)], 1), torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype)], 1)


def run_side(model, batch, *, append: int | None, demo_columns: list[int] | None = None, rotary_q: bool = False,
             flat_q: bool = False, batch_size: int = 4) -> SideRun:
    """Run ``batch`` (left-padded) with ``append`` (a token id or None) added to every row."""
    lp, ao, zs, qs, qr, qf, ds = [], [], [], [], [], [], []
    for sub in minibatches(batch, batch_size):
        ids, mask = _append(sub.input_ids, sub.attention_mask, append)
        L = ids.shape[1]
        rec, pred = L - 1, (L - 2 if append is not None else L - 1)
        caps = [Capture("hook_attn_out", positions=[rec]), Capture("attn.hook_z", positions=[rec]),
                Capture("attn.hook_attn_scores", positions=[rec])]
        if rotary_q:
            caps.append(Capture("attn.hook_rot_q", positions=[rec]))
        if flat_q:
            caps.append(Capture("attn.hook_q", positions=[rec]))
        with torch.no_grad():
            out = model.run(ids, attention_mask=mask, capture=caps + [Capture("logits", positions=[pred])], logits="final")
        a = out.acts
        lp.append(torch.log_softmax(a["logits"][:, 0].float(), -1).cpu())
        ao.append(a.stack("hook_attn_out")[:, :, 0].transpose(0, 1).float().cpu())
        zs.append(a.stack("attn.hook_z")[:, :, 0].transpose(0, 1).float().cpu())
        scores = a.stack("attn.hook_attn_scores")[:, :, :, 0].float().cpu()  # [layer, b, head, pos]
        for j, r in enumerate(sub.rows):
            qs.append(scores[:, j, :, r.query_block.start:])
        if rotary_q:
            qr.append(a.stack("attn.hook_rot_q")[:, :, 0].transpose(0, 1).float().cpu())
        if flat_q:
            q = a.stack("attn.hook_q")[:, :, 0].transpose(0, 1).float().cpu()  # [b, layer, head, d]
            qf.append(q.flatten(2) / q.shape[-1] ** 0.5)
        if demo_columns is not None:
            cols = [[r.start + c for c in demo_columns] for r in sub.rows]
            ds.append(torch.stack([scores[:, j][:, :, cols[j]].sum(1) for j in range(len(sub.rows))]))
    return SideRun(torch.cat(lp), torch.cat(ao), torch.cat(zs), qs,
                   torch.cat(qr) if rotary_q else None, torch.cat(qf) if flat_q else None,
                   torch.cat(ds) if demo_columns is not None else None)


def run_side_cached(model, batch, *, append: int | None, demo_columns: list[int] | None = None, runner=None,
                    batch_size: int = 16) -> SideRun | None:
    """:func:`run_side` for rows that share one demo prefix (``same_demos=True``), computing the
    prefix's keys/values once (:func:`interp.prefix_cache.run_recorded`); ICL-side fields
    (rotary queries, demo scores) included.  None when the rows do not share the prefix (then
    call :func:`run_side`).  On a family outside the architecture table ``model.runner`` is the
    engine path (full forwards, same numbers)."""
    from interp.prefix_cache import SharedPrefix, run_recorded, split_shared_prefix

    split = split_shared_prefix(batch, append)
    if split is None:
        return None
    prefix, suffixes = split
    runner = runner or model.runner
    rec = [len(x) - 1 for x in suffixes]
    pred = [x - 1 for x in rec] if append is not None else rec
    out = run_recorded(SharedPrefix(model, prefix, runner=runner), suffixes, rec, pred, batch_size=batch_size)
    p = len(prefix)
    return SideRun(
        logprobs=torch.log_softmax(out.logits.float(), -1).cpu(), attn_out=out.attn_out.float().cpu(), z=out.z.float().cpu(),
        query_scores=[sc[:, :, p:].float().cpu() for sc in out.scores], q_rot=out.q_rot.float().cpu(),
        demo_scores=None if demo_columns is None else torch.stack([sc[:, :, demo_columns].sum(1) for sc in out.scores]).float().cpu(),
    )


def _predictions(logprobs: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, correct) from next-token log-probs: label words (classification) or top-1 token."""
    if batch.label_words is not None:
        pred = logprobs[:, batch.label_words.first_token_ids].argmax(-1)
        return pred, pred == batch.gold.cpu()
    pred = logprobs.argmax(-1)
    return pred, pred == batch.target_ids.cpu()


def demo_keys_values(model, icl_batch, demo_columns: list[int]):
    """Rotary keys and values [layer, T, kv_head, d_head] of the demo tokens (shared by every
    row: same demos, position ids counted over real tokens), from the first row alone."""
    row = icl_batch.select([0])
    with torch.no_grad():
        out = model.run(row, capture=[Capture("attn.hook_rot_k"), Capture("attn.hook_v")], logits="final")
    start = row.rows[0].start
    cols = [start + c for c in demo_columns]
    return out.acts.stack("attn.hook_rot_k")[:, 0, cols].float().cpu(), out.acts.stack("attn.hook_v")[:, 0, cols].float().cpu()


def dual_form_comparison(model, icl: SideRun, zs: SideRun, gd: SideRun, keys: torch.Tensor, values: torch.Tensor) -> dict:
    """Per layer and head: ΔW_ICL q (relaxed linear attention over the demo tokens) against
    z_GD − z_ZS and z_ICL − z_ZS; cosines and norm ratios averaged over queries."""
    group = model.n_heads // model.n_kv_heads
    k = keys.repeat_interleave(group, dim=2).permute(0, 2, 1, 3)  # [layer, head, T, d]
    v = values.repeat_interleave(group, dim=2).permute(0, 2, 1, 3)
    n = icl.q_rot.shape[0]
    pred = dual_form_output(k.expand(n, *k.shape), v.expand(n, *v.shape), icl.q_rot)  # [n, layer, head, d]
    out = {}
    for name, actual in (("gd", gd.z - zs.z), ("icl", icl.z - zs.z)):
        c = compare_updates(pred, actual)
        out[f"cosine_{name}"] = c["cosine"].nanmean(0).tolist()  # [layer][head]
        out[f"norm_ratio_{name}"] = c["norm_ratio"].nanmedian(0).values.tolist()
    return out


@dataclass
class IclVsGdResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    config: dict
    record: str
    accuracy: dict
    rec2ftp: float
    per_layer: dict  # name -> [layer] arrays
    distributions: dict  # overlap / OCS / KL, ICL vs GD beside ICL vs ICL reordered
    dual_form: dict  # name -> [layer][head]
    fit_losses: list[float]
    prompts: dict = field(default_factory=dict, repr=False)
    model_hash_unchanged: bool = True
    per_query: dict = field(default_factory=dict, repr=False)  # name -> [query] the metric averaged over layers
    intervals: dict = field(default_factory=dict)  # name -> 95% bootstrap interval over queries of its mean (None: < 2 values)
    rec2ftp_n: int = 0  # Rec2FTP's denominator: the queries GD fixes (ZS wrong, GD right)

    REC2FTP_UNDEFINED = "undefined: GD fixes no example zero-shot gets wrong"

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        if self.rec2ftp != self.rec2ftp:  # NaN: say why instead (strict JSON has no NaN)
            out["rec2ftp"], out["rec2ftp_undefined"] = None, self.REC2FTP_UNDEFINED
        return out

    def summary(self) -> str:
        from analyses.report.html import fmt
        from interp.finetune import describe_gd

        pl = self.per_layer

        def mean(xs):
            xs = [x for x in xs if x is not None and x == x]
            return sum(xs) / len(xs) if xs else float("nan")

        a = self.accuracy
        d = self.distributions
        none = "undefined (no head has a defined value)"
        lines = [
            f"ICL vs GD on {self.task} ({self.model}, k={self.k}, n={self.n}, seed {self.seed}; GD: {describe_gd(self.config)})",
            f"  accuracy ZS {a['zs']['accuracy']:.3f}, ICL {a['icl']['accuracy']:.3f}, GD {a['gd']['accuracy']:.3f}; "
            f"Rec2FTP {fmt(self.rec2ftp, '.1f', self.REC2FTP_UNDEFINED)}{'%' if self.rec2ftp == self.rec2ftp else ''}",
            f"  SimAOU {fmt(mean(pl['simaou']))} (random update {fmt(mean(pl['simaou_random']))})",
            f"  SimAM ICL vs GD {fmt(mean(pl['simam_gd']))} (ICL vs ZS {fmt(mean(pl['simam_zs']))}); update-based "
            f"{fmt(mean(pl['simam_update']), undefined='undefined (every update is float noise)')}",
            f"  Kendall ICL vs GD attention {fmt(mean(pl['kendall']))} (random {fmt(mean(pl['kendall_random']))})",
            f"  Token overlap@10 ICL vs GD {fmt(d['overlap_gd'])} (ICL vs ICL reordered {fmt(d['overlap_reordered'])}); "
            f"overlap cosine {fmt(d['ocs_gd'])} ({fmt(d['ocs_reordered'])}); KL(ICL‖GD) {fmt(d['kl_gd'])} ({fmt(d['kl_reordered'])})",
            f"  dual form: cos(ΔW_ICL q, z_GD − z_ZS) {fmt(mean([mean(r) for r in self.dual_form['cosine_gd']]), undefined=none)}; "
            f"cos(ΔW_ICL q, z_ICL − z_ZS) {fmt(mean([mean(r) for r in self.dual_form['cosine_icl']]), undefined=none)}",
        ]
        return "\n".join(lines)

    def figures(self) -> list:
        import plotly.graph_objects as go

        title = f"{self.task}, {self.model}, k={self.k}, n={self.n}, seed {self.seed}"
        figs = []
        for names, ytitle in ((("simaou", "simaou_random"), "SimAOU (cosine of updates)"),
                              (("simam_gd", "simam_zs", "simam_update"), "SimAM (cosine of raw attention scores)"),
                              (("kendall", "kendall_random"), "Kendall τ")):
            fig = go.Figure([go.Scatter(y=self.per_layer[n], mode="lines+markers", name=n) for n in names])
            fig.update_layout(title=f"ICL vs GD: {ytitle} per layer — {title}", xaxis_title="layer", yaxis_title=ytitle)
            figs.append(fig)
        for name in ("cosine_gd", "cosine_icl"):
            fig = go.Figure(go.Heatmap(z=self.dual_form[name], colorscale="RdBu", zmid=0, colorbar=dict(title="cosine")))
            fig.update_layout(title=f"Dual form: cos(ΔW_ICL q, z_{name[7:].upper()} − z_ZS) — {title}", xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        return figs


@dataclass
class ReferenceRuns:
    """The model's own side, shared by every GD configuration: prompts, ZS / ICL / reordered-ICL
    runs and the demo tokens' keys and values."""

    task: object
    k: int
    seed: int
    record: str
    icl_b: object
    zs_b: object
    re_b: object
    perm: list[int]
    append: int | None
    seqs: list[list[int]]
    predict_at: list[int]
    zs: SideRun
    icl: SideRun
    reo: SideRun
    keys: torch.Tensor
    values: torch.Tensor


def reference_runs(model, task, *, k: int = 8, n: int = 100, seed: int = 0, record: Record | None = None, reorder_n: int = 50,
                   batch_size: int = 4, cached: bool = True) -> ReferenceRuns:
    """One fixed demo set (seeded), n queries: the ZS, ICL and reordered-ICL runs of ``model``;
    ``cached``: the ICL runs reuse the demo prefix's keys/values (same numbers to float error,
    ~10× faster at k=16)."""
    from interp.tasks import load_task

    task = load_task(task) if isinstance(task, str) else task
    record = record or ("label" if task.kind == "classification" else "final")
    if record == "label" and task.kind != "classification":
        raise ValueError("record='label' appends the first label word, which a word task does not have: use record='final'")
    tok = model.tokenizer
    icl_b = build_icl_batch(tok, task, k=k, n=n, seed=seed, same_demos=True, padding_side="left", max_length=model.n_ctx)
    zs_b = build_icl_batch(tok, task, k=0, queries=icl_b.queries, pool=[], seed=seed, padding_side="left")
    perm = list(range(k))
    random.Random(f"reorder:{seed}").shuffle(perm)
    re_b = build_icl_batch(tok, task, k=k, n=n, seed=seed, same_demos=True, order=perm, padding_side="left", max_length=model.n_ctx)
    re_b = re_b.select(list(range(min(reorder_n, len(re_b)))))  # the noise floor needs fewer queries
    append = int(icl_b.label_words.first_token_ids[0]) if record == "label" else None
    # demo-token columns (row coordinates), each demo's block without the separators
    r0 = icl_b.rows[0]
    demo_columns = [p - r0.start for s in r0.demo_blocks for p in range(s.start, s.end)]
    seqs, predict_at = demo_sequences(tok, task, icl_b.demos[0])
    keys, values = demo_keys_values(model, icl_b, demo_columns)
    return ReferenceRuns(
        task=task, k=k, seed=seed, record=record, icl_b=icl_b, zs_b=zs_b, re_b=re_b, perm=perm, append=append,
        seqs=seqs, predict_at=predict_at,
        zs=run_side(model, zs_b, append=append, batch_size=batch_size),
        icl=(cached and run_side_cached(model, icl_b, append=append, demo_columns=demo_columns))
        or run_side(model, icl_b, append=append, demo_columns=demo_columns, rotary_q=True, batch_size=batch_size),
        reo=(cached and run_side_cached(model, re_b, append=append))
        or run_side(model, re_b, append=append, batch_size=batch_size), keys=keys, values=values,
    )


def icl_vs_gd(model, task="sentiment", *, k: int = 8, n: int = 100, seed: int = 0, config: GDConfig = DAI,
              record: Record | None = None, kendall_n: int = 100, reorder_n: int = 50, batch_size: int = 4,
              counterpart: GDCounterpart | None = None, reference: ReferenceRuns | None = None) -> IclVsGdResult:
    """ZS / ICL / GD on the same queries and the metrics of the module docstring.  The noise
    floor (ICL vs ICL reordered) uses the first ``reorder_n`` queries, Kendall the first
    ``kendall_n``.  ``counterpart``: a :class:`GDCounterpart` of ``model`` to reuse across calls;
    ``reference``: :func:`reference_runs` of the same (task, k, n, seed) to reuse across configs."""
    hash_before = parameter_hash(model)
    ref = reference or reference_runs(model, task, k=k, n=n, seed=seed, record=record, reorder_n=reorder_n, batch_size=batch_size)
    if reference is not None and (ref.k, ref.seed, len(ref.icl_b)) != (k, seed, min(n, len(ref.icl_b))):
        raise ValueError("reference was run with another k, n or seed; pass the matching reference_runs(...) or None")
    gd = counterpart or GDCounterpart(model)
    fit = gd.fit(ref.seqs, ref.predict_at, config, record_queries=True)
    ft = run_side(gd.model, ref.zs_b, append=ref.append, flat_q=True, batch_size=batch_size)
    gd.reset()
    zs, icl, reo = ref.zs, ref.icl, ref.reo

    lw = ref.zs_b.label_words
    if lw is not None and lw.policy == "sequence" and any(len(t) > 1 for t in lw.token_ids):
        # multi-token label words under label_policy="sequence": every side scores whole words
        from interp.scoring import label_logprobs

        gold = ref.zs_b.gold.cpu()
        scored = {"zs": label_logprobs(model, ref.zs_b), "icl": label_logprobs(model, ref.icl_b), "gd": label_logprobs(gd.model, ref.zs_b)}
        preds = {name: (lp.argmax(-1), lp.argmax(-1) == gold) for name, lp in scored.items()}
    else:
        preds = {name: _predictions(s.logprobs, ref.zs_b) for name, s in (("zs", zs), ("icl", icl), ("gd", ft))}
    examples = {  # [query, layer]
        "simaou": gm.simaou(icl.attn_out, zs.attn_out, ft.attn_out, per_example=True),
        "simam_gd": gm.simam(icl.query_scores, ft.query_scores, per_example=True),
        "simam_zs": gm.simam(icl.query_scores, zs.query_scores, per_example=True),
        "simam_update": gm.simam(icl.query_scores, ft.query_scores, zs.query_scores, per_example=True),
    }
    examples.update(_kendall(icl, ft, fit, ref.seqs, ref.icl_b, min(kendall_n, len(ref.icl_b)), seed))
    examples["simaou_random"] = gm.simaou_random_baseline(icl.attn_out, zs.attn_out, generator=torch.Generator().manual_seed(seed),
                                                          per_example=True)
    per_layer = {name: (v.nanmean(0) if name in ("simam_update", "kendall", "kendall_random") else v.mean(0)).tolist()
                 for name, v in examples.items()}
    probs = {name: s.logprobs.exp() for name, s in (("icl", icl), ("gd", ft), ("re", reo))}
    m = len(ref.re_b)
    distributions = {
        "overlap_gd": float(gm.token_overlap(probs["icl"], probs["gd"]).mean()),
        "overlap_reordered": float(gm.token_overlap(probs["icl"][:m], probs["re"]).mean()),
        "ocs_gd": float(gm.overlap_cosine(probs["icl"], probs["gd"]).mean()),
        "ocs_reordered": float(gm.overlap_cosine(probs["icl"][:m], probs["re"]).mean()),
        "kl_gd": float(gm.kl_divergence(icl.logprobs, ft.logprobs).mean()),
        "kl_reordered": float(gm.kl_divergence(icl.logprobs[:m], reo.logprobs).mean()),
        "kl_zs": float(gm.kl_divergence(icl.logprobs, zs.logprobs).mean()),
        "reorder_n": m,
        "reorder_permutation": ref.perm,
    }
    # per query: the metric (and its random baseline) averaged over layers (NaN layers left out), and the per-query
    # distribution scores
    per_query = {name: v.float().nanmean(-1).tolist() for name, v in examples.items()}
    per_query.update({"overlap_gd": gm.token_overlap(probs["icl"], probs["gd"]).tolist(), "ocs_gd": gm.overlap_cosine(probs["icl"], probs["gd"]).tolist(),
                      "kl_gd": gm.kl_divergence(icl.logprobs, ft.logprobs).tolist(),
                      # the noise floor, on the first reorder_n queries
                      "overlap_reordered": gm.token_overlap(probs["icl"][:m], probs["re"]).tolist(),
                      "ocs_reordered": gm.overlap_cosine(probs["icl"][:m], probs["re"]).tolist(),
                      "kl_reordered": gm.kl_divergence(icl.logprobs[:m], reo.logprobs).tolist()})
    return IclVsGdResult(
        per_query=per_query, intervals={name: bootstrap_mean_interval(v, seed=seed) for name, v in per_query.items()},
        model=model.name, task=ref.task.name, k=ref.k, n=len(ref.icl_b), seed=ref.seed, config=config.to_dict(), record=ref.record,
        accuracy={name: accuracy(c).to_dict() for name, (_, c) in preds.items()},
        rec2ftp=gm.rec2ftp(preds["zs"][1], preds["gd"][1], preds["icl"][1]),
        rec2ftp_n=int((~preds["zs"][1].bool() & preds["gd"][1].bool()).sum()),
        per_layer=per_layer, distributions=distributions,
        dual_form=dual_form_comparison(model, icl, zs, ft, ref.keys, ref.values), fit_losses=fit.losses,
        prompts={"icl_input_ids": ref.icl_b.input_ids.tolist(), "icl_attention_mask": ref.icl_b.attention_mask.tolist(),
                 "zs_input_ids": ref.zs_b.input_ids.tolist(), "train_sequences": ref.seqs, "appended_token": ref.append},
        model_hash_unchanged=parameter_hash(model) == hash_before,
    )


def _kendall(icl: SideRun, ft: SideRun, fit, seqs, icl_b, n_k: int, seed: int) -> dict:
    """Kendall τ per layer between ICL attention to demo tokens and the GD side's attention to
    the training tokens (aligned: each demo's block = the last |block| tokens of its sequence)."""
    r0 = icl_b.rows[0]
    blocks = [list(range(s.start, s.end)) for s in r0.demo_blocks]
    ids0 = icl_b.input_ids[0]
    aligned = all(ids0[b].tolist() == seqs[i][len(seqs[i]) - len(b):] for i, b in enumerate(blocks))
    n_layers = icl.attn_out.shape[1]
    if not aligned:
        nan = torch.full((1, n_layers), float("nan"), dtype=torch.float64)
        return {"kendall": nan, "kendall_random": nan}
    icl_att = torch.softmax(icl.demo_scores[:n_k], -1)  # [n, layer, T]
    gd_att = torch.stack([
        torch.stack([gm.training_token_attention(ft.q_flat[j, l], torch.cat([q[-len(b):] for q, b in zip(fit.train_queries[l], blocks)]))
                     for l in range(n_layers)]) for j in range(n_k)])
    gen = torch.Generator().manual_seed(seed)
    return {"kendall": gm.kendall_by_layer(icl_att, gd_att, per_example=True),
            "kendall_random": gm.kendall_by_layer(icl_att, torch.rand(icl_att.shape, generator=gen), per_example=True)}
