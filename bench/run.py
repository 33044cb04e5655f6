"""Side-by-side benchmarks, measured in one process, printed as a JSON table of ratios.

Every row times two things on the same inputs, interleaved (A, B, A, B, ...) so that machine load
hits both alike, and reports the ratio of their medians against a target.  Threads are pinned
(``--threads``, default 1) because thread count changes both speed and the last bits of results.

    python bench/run.py [--threads 1] [--repeats 7] [--only capture_overhead]
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
    return {"row": name, "ratio": round(ratio, 3), "target": target, "meets_target": ok, **detail}


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


BENCHES = {"capture_overhead": bench_capture_overhead}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model)
    reference = plain_twin(model.hf_model)
    rows = []
    for name in args.only or BENCHES:
        rows.append(BENCHES[name](model, reference, args.repeats))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"model": model.name, "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
