"""Order sensitivity of ICL and of its GD counterpart (Shen et al. 2023, Theorem 1 and Fig. 4).

Equivalent algorithms must be equally sensitive to the order of the demonstrations.  N seeded
orders of the same k demos: ICL gets the reordered prompt, GD is trained on the demos in that
order (batch sizes 1, 2, 4 and the full batch).  For each query the sensitivity is

    S = Σ_v std_orders p(v | query)       (population std over the N orders, summed over the vocabulary)

averaged over queries, with a 95% bootstrap interval that resamples queries and orders together
(the ICL / GD ratio from the same resamples).  Full-batch GD sees one mean gradient per epoch
whatever the order, so its sensitivity is zero by construction: what is measured there is float
noise, reported as such, and the ICL / full-batch ratio is undefined, never printed as a number.
Shen et al. report ICL 3–5× more sensitive than (batch-1) GD; the summary says in words which way
the measured ratio points and whether its interval excludes 1.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from analyses.gd import metrics as gm
from interp.finetune import GDConfig, GDCounterpart, demo_sequences
from interp.prompts import build_icl_batch
from interp.scoring import final_logprobs


FULL_BATCH_UNDEFINED = "undefined: full-batch GD is order-invariant by construction (what is measured is float noise)"


def _icl_probs(model, batch) -> torch.Tensor:
    """Final-position next-token probabilities [n, vocab] of same-demo prompts, reusing the demo
    prefix's keys/values (``model.runner``; full forwards when the rows share no prefix)."""
    from interp.prefix_cache import SharedPrefix, split_shared_prefix

    split = split_shared_prefix(batch)
    if split is not None:
        logits = SharedPrefix(model, split[0]).run(split[1], patterns=False).logits
        return torch.softmax(logits.float(), -1).cpu()
    return final_logprobs(model, batch).exp()


def _resamples(n_orders: int, n: int, reps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``reps`` seeded (orders, queries) index resamples with replacement; a resample of orders
    holds at least two distinct ones (a spread over one order is not defined).  ICL and every GD
    setting are measured on the same resamples, so the ratio's interval is paired."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(reps):
        o = torch.randint(n_orders, (n_orders,), generator=g)
        while n_orders > 1 and len(set(o.tolist())) < 2:
            o = torch.randint(n_orders, (n_orders,), generator=g)
        out.append((o, torch.randint(n, (n,), generator=g)))
    return out


def _replicates(probs: torch.Tensor, resamples) -> list[float]:
    """Mean sensitivity of ``probs`` [orders, n, vocab] on each resample.  The per-query
    sensitivities of one resampled order tuple are computed once over all queries and reused by
    every resample that draws the same tuple (few distinct tuples when there are few orders)."""
    per_query: dict[tuple, torch.Tensor] = {}
    out = []
    for o, q in resamples:
        key = tuple(o.tolist())
        if key not in per_query:
            per_query[key] = gm.order_sensitivity(probs[o])
        out.append(float(per_query[key][q].mean()))
    return out


def _ci(values: list[float]) -> list[float]:
    """95% percentile interval from order statistics, no interpolation (a ratio may be inf)."""
    v = sorted(values)
    i = int(0.025 * (len(v) - 1))
    return [float(v[i]), float(v[-i - 1])]


def seeded_orders(k: int, n_orders: int, seed: int) -> list[list[int]]:
    """The identity followed by ``n_orders − 1`` distinct random permutations (when k! allows)."""
    rng = random.Random(f"orders:{seed}")
    orders, seen = [list(range(k))], {tuple(range(k))}
    for _ in range(100 * n_orders):
        if len(orders) == n_orders:
            break
        p = list(range(k))
        rng.shuffle(p)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            orders.append(p)
    return orders


@dataclass
class OrderSensitivityResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    orders: list[list[int]]
    config: dict
    icl: float  # mean over queries of Σ_v std over orders
    gd: dict  # batch size (str; "full") -> mean sensitivity (for full batch: the float noise measured)
    ratio: dict  # batch size -> ICL / GD, None where undefined (full batch)
    icl_ci: list = None  # 95% bootstrap interval over queries and orders
    gd_ci: dict = None  # batch size -> interval
    ratio_ci: dict = None  # batch size -> interval of ICL / GD, None where undefined
    undefined: dict = None  # batch size -> why its ratio is undefined

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [
            f"Order sensitivity on {self.task} ({self.model}, k={self.k}, n={self.n}, {len(self.orders)} orders, seed {self.seed}; "
            "95% intervals resample queries and orders)",
            f"  ICL: {self.icl:.4f} [{self.icl_ci[0]:.4f}, {self.icl_ci[1]:.4f}]",
        ]
        for b, v in self.gd.items():
            if (self.undefined or {}).get(b):
                lines.append(f"  GD batch {b}: {v:.1g} measured; ICL/GD {self.undefined[b]}")
                continue
            lo, hi = self.ratio_ci[b]
            r = self.ratio[b]
            if r is None:
                lines.append(f"  GD batch {b}: {v:.4g}; ICL/GD undefined: GD's output does not change with the order here")
                continue
            if lo > 1:
                verdict = "ICL is more order-sensitive than GD (as Shen et al. found)"
            elif hi < 1:
                verdict = "GD is more order-sensitive than ICL (the opposite of Shen et al.'s finding)"
            else:
                verdict = "no clear difference (the interval contains 1)"
            lines.append(f"  GD batch {b}: {v:.4g} [{self.gd_ci[b][0]:.4g}, {self.gd_ci[b][1]:.4g}]; ICL/GD {r:.3g} [{lo:.3g}, {hi:.3g}]: {verdict}")
        return "\n".join(lines)

    def figures(self) -> list:
        import plotly.graph_objects as go

        names = ["ICL"] + [f"GD batch {b}" for b in self.gd]
        fig = go.Figure(go.Bar(x=names, y=[self.icl, *self.gd.values()]))
        fig.update_layout(title=f"Order sensitivity (Σ_v std over {len(self.orders)} orders) — {self.task}, {self.model}, k={self.k}",
                          xaxis_title="setting", yaxis_title="sensitivity (mean over queries)")
        return [fig]


def order_sensitivity(model, task="sentiment", *, k: int = 8, n: int = 50, seed: int = 0, n_orders: int = 5,
                      batch_sizes=(1, 2, 4, "full"), config: GDConfig = GDConfig(loss="label", lr=1e-3),
                      counterpart: GDCounterpart | None = None, bootstrap: int = 200) -> OrderSensitivityResult:
    """ICL and GD output distributions under ``n_orders`` orders of one seeded demo set;
    ``bootstrap`` resamples for the intervals."""
    from interp.tasks import load_task

    task = load_task(task) if isinstance(task, str) else task
    tok = model.tokenizer
    orders = seeded_orders(k, n_orders, seed)
    base = build_icl_batch(tok, task, k=k, n=n, seed=seed, same_demos=True, padding_side="left", max_length=model.n_ctx)
    icl = torch.stack([_icl_probs(model, build_icl_batch(tok, task, k=k, n=n, seed=seed, same_demos=True, order=o,
                                                         padding_side="left", max_length=model.n_ctx)) for o in orders])
    zs_b = build_icl_batch(tok, task, k=0, queries=base.queries, pool=[], seed=seed, padding_side="left")
    seqs, predict_at = demo_sequences(tok, task, base.demos[0])
    gd = counterpart or GDCounterpart(model)
    out, gd_ci, ratio, ratio_ci, undefined = {}, {}, {}, {}, {}
    s_icl = float(gm.order_sensitivity(icl).mean())
    resamples = _resamples(icl.shape[0], icl.shape[1], bootstrap, seed)
    icl_reps = _replicates(icl, resamples)
    icl_ci = _ci(icl_reps)
    for b in batch_sizes:
        size = k if b == "full" else int(b)
        cfg = GDConfig(**{**config.to_dict(), "batch_size": size})
        probs = []
        for o in orders:
            gd.fit(seqs, predict_at, cfg, order=o)
            probs.append(final_logprobs(gd.model, zs_b).exp())
        probs = torch.stack(probs)
        key = str(b)
        out[key] = float(gm.order_sensitivity(probs).mean())
        if size >= k:  # one minibatch holds every demo: the order cannot matter
            ratio[key], ratio_ci[key], gd_ci[key], undefined[key] = None, None, None, FULL_BATCH_UNDEFINED
            continue
        gd_reps = _replicates(probs, resamples)
        gd_ci[key] = _ci(gd_reps)
        ratio_ci[key] = _ci([a / b if b > 0 else float("inf") for a, b in zip(icl_reps, gd_reps)])
        ratio[key] = s_icl / out[key] if out[key] > 0 else None
    gd.reset()
    return OrderSensitivityResult(model.name, task.name, k, len(base), seed, orders, config.to_dict(), s_icl, out, ratio,
                                  icl_ci, gd_ci, ratio_ci, undefined)
