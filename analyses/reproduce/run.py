"""Running papers' protocols and writing their reports: one folder per paper
(``OUT/<paper>/results.json`` + ``report.html``, resumable parts under ``OUT/<paper>/parts``) and,
for several papers, ``OUT/results.json`` + ``OUT/report.html`` with every verdict on one page."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from analyses.reproduce import LAB_PAPERS, PAPERS, paper_module
from analyses.reproduce.claims import RULE, PaperResult
from analyses.reproduce.common import BUDGETS


def resolve_papers(papers: Sequence[str]) -> list[str]:
    """``["all"]`` → every paper; otherwise the named ones, checked (a clear error before any work)."""
    keys = list(PAPERS) if list(papers) == ["all"] else list(papers)
    for key in keys:
        if key not in PAPERS:
            raise ValueError(f"unknown paper {key!r}: choose from {', '.join(PAPERS)}, or all")
    return keys


def _sections(result: PaperResult, seconds: float) -> list:
    from analyses.report.tables import Paragraphs, Table

    c = result.counts()
    head = Table.from_dicts([cl.row() for cl in result.claims], caption=f"{result.citation}: the paper's findings beside ours "
                            f"({c['reproduces']} reproduce, {c['does not reproduce']} do not, {c['not comparable']} not comparable)",
                            sortable=len(result.claims) > 10)
    body = [head, Paragraphs([f"Verdict rule: {RULE}", *result.notes, f"Run time {seconds:.0f} s."])]
    sections = [("Verdicts", body, [])]
    if result.figure_list:
        sections.append(("Figures", None, result.figure_list))
    return sections


def run_paper(key: str, model, budget: str, out: Path | None, seed: int = 0, progress: bool = False) -> dict:
    """One paper at one budget: its claims, written to ``out`` (resumable); returns results.json's dict."""
    from analyses.report.html import write_run
    from analyses.resumable import resumable

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    mod = paper_module(key)
    sizes = mod.BUDGETS[budget]
    lab = key in LAB_PAPERS
    args = {"command": "reproduce", "paper": key, "budget": budget, "sizes": sizes, "seed": seed}
    if not lab:
        from interp.finetune import parameter_hash

        args.update(model=model.name, weights_sha256=parameter_hash(model))
    run = resumable(out, args, progress=progress)
    start = time.perf_counter()
    result = mod.run(None if lab else model, sizes, run.part, seed=seed)
    seconds = time.perf_counter() - start
    result.budget = budget
    data = {"paper": key, "budget": budget, "sizes": sizes, "seed": seed, "seconds": seconds, **result.to_dict(),
            "resumed_parts": run.summary(), "command_line": " ".join(sys.argv)}
    title = f"Reproducing {result.citation} — {result.model}, {budget} budget"
    protocol = {"paper": key, "protocol": (mod.__doc__ or "").strip(), "budget": budget, "sizes": sizes, "seed": seed}
    write_run(out, data, title, _sections(result, seconds), model=None if lab else model, protocol=protocol)
    return data


def reproduce(papers: Sequence[str], model, budget: str = "smoke", out: str | Path | None = "out/reproduce", seed: int = 0,
              progress: bool = False) -> dict:
    """Every paper in ``papers`` (keys or ``["all"]``) on ``model``; with several papers also an
    index report of every verdict.  Returns {paper: results dict}."""
    from analyses.report.html import write_run
    from analyses.report.tables import Paragraphs, Table

    keys = resolve_papers(papers)
    out = Path(out) if out is not None else None
    results = {}
    for key in keys:
        if progress:
            print(f"reproduce: {key} ({budget})", file=sys.stderr, flush=True)
        results[key] = run_paper(key, model, budget, out / key if out else None, seed=seed, progress=progress)
    if len(keys) > 1 and out is not None:
        rows = [{"paper": key, "hypothesis": PAPERS[key][1], "what runs": PAPERS[key][2], "findings": len(r["claims"]),
                 "reproduce": r["counts"]["reproduces"], "do not": r["counts"]["does not reproduce"],
                 "not comparable": r["counts"]["not comparable"], "model": r["model"], "seconds": f"{r['seconds']:.0f}"}
                for key, r in results.items()]
        claims = [{"paper": key, **{k: v for k, v in c_row.items()}} for key, r in results.items() for c_row in _rows(r)]
        sections = [("Summary", [Table.from_dicts(rows, caption="Each paper's findings on this model"),
                                 Paragraphs([f"Verdict rule: {RULE}"])], []),
                    ("Every finding", Table.from_dicts(claims, caption="All findings, sortable by any column", sortable=True), [])]
        data = {"budget": budget, "seed": seed, "papers": {k: {"counts": r["counts"], "seconds": r["seconds"]} for k, r in results.items()},
                "claims": claims, "rule": RULE, "command_line": " ".join(sys.argv)}
        write_run(out, data, f"Reproducing the ICL papers — {getattr(model, 'name', 'lab')}, {budget} budget", sections,
                  model=model, protocol={"papers": keys, "budget": budget, "seed": seed})
    return results


def _rows(r: dict) -> list[dict]:
    """The verdict-table rows of a results dict (as :meth:`Claim.row` makes them)."""
    out = []
    for c in r["claims"]:
        out.append({"source": c["source"], "finding": c["finding"], "paper": c["paper"], "ours (95% CI)": c.get("ours_vs", c["ours_text"]),
                    "differs": ", ".join(c["differs"]) or "nothing", "verdict": c["verdict"], "why": c["reason"]})
    return out
