"""examples/REPRODUCTION.md from `icl-interp reproduce all` runs, one folder per model:

    icl-interp reproduce all --model smollm2-135m --budget small --out out/reproduce/smollm2-small
    icl-interp reproduce all --model gemma3-270m --budget small --out out/reproduce/gemma3-small
    python examples/sweeps/reproduction_md.py out/reproduce/smollm2-small out/reproduce/gemma3-small [--note FILE] > examples/REPRODUCTION.md

Per paper, one row per finding: the paper's number, ours on each model with its 95% interval and
the verdict, then a count of verdicts per model.  Everything comes from the runs' results.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from analyses.reproduce import PAPERS
from analyses.reproduce.claims import RULE


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _counterpart(claims: list[dict], reference: list[dict], i: int) -> dict | None:
    """The claim of another model's run matching ``reference[i]``: the same source, the same rank
    among that source's claims (the text may name a model's own head)."""
    source = reference[i]["source"]
    rank = sum(c["source"] == source for c in reference[:i])
    same = [c for c in claims if c["source"] == source]
    return same[rank] if rank < len(same) else None


def _seconds(result: dict) -> str:
    if (result.get("resumed_parts") or {}).get("loaded"):
        return "resumed from saved parts (the wall time of the run that computed them is in its log)"
    return f"{result['seconds']:.0f} s"


def main(folders: list[str], note: str | None = None) -> str:
    runs = {}
    for f in folders:
        index_file = Path(f) / "results.json"
        if index_file.exists():
            index = json.loads(index_file.read_text())
            model, papers = index.get("model_info", {}).get("model") or Path(f).name, index["papers"]
        else:  # a run still going, or stopped: the papers that finished
            papers = [key for key in PAPERS if (Path(f) / key / "results.json").exists()]
            model = json.loads((Path(f) / papers[0] / "results.json").read_text())["model"] if papers else Path(f).name
        runs[model] = {key: json.loads((Path(f) / key / "results.json").read_text()) for key in papers}
    models = list(runs)
    first = runs[models[0]]
    budget = next(iter(first.values()))["budget"]
    lines = ["# Does ICL do kernel regression or gradient descent in these models?", "",
             f"`icl-interp reproduce all --budget {budget}` on {', '.join(models)} (seed 0). Regenerate with "
             "`python examples/sweeps/reproduction_md.py <run folders>`; every number is in the runs' results.json.", "",
             *([note, ""] if note else []),
             f"Verdict rule: {RULE}", "", "## Verdicts per paper", "",
             "| paper | hypothesis | " + " | ".join(f"{m}: reproduce / do not / not comparable" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for key in PAPERS:
        if key not in first:
            continue
        cells = []
        for m in models:
            c = runs[m].get(key, {}).get("counts")
            cells.append(f"{c['reproduces']} / {c['does not reproduce']} / {c['not comparable']}" if c else "–")
        lines.append(f"| {key} | {PAPERS[key][1]} | " + " | ".join(cells) + " |")
    for key in PAPERS:
        if key not in first:
            continue
        r0 = first[key]
        lines += ["", f"## {key}: {r0['citation']}", "", "Run time: " + ", ".join(f"{m} {_seconds(runs[m][key])}" for m in models
                                                                                    if key in runs[m]) + ".", "",
                  "| where | finding | paper (setting) | " + " | ".join(f"{m} (95% CI) → verdict" for m in models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for i, c in enumerate(r0["claims"]):
            ps = c["paper_setting"]
            setting = ", ".join(f"{k} {ps[k]}" for k in ("model", "size", "dataset", "k") if k in ps)
            cells = []
            for m in models:
                o = _counterpart(runs[m].get(key, {}).get("claims", []), r0["claims"], i)
                cells.append(f"{_cell(o.get('ours_vs', o['ours_text']))} → **{o['verdict']}**" if o else "–")
            lines.append(f"| {_cell(c['source'])} | {_cell(c['finding'])} | {_cell(c['paper'])} ({_cell(setting)}) | " + " | ".join(cells) + " |")
        notes = sorted({n for m in models for n in runs[m].get(key, {}).get("notes", [])})
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    args = sys.argv[1:]
    text = None
    if "--note" in args:  # --note FILE: a paragraph on how the runs went, after the opening line
        i = args.index("--note")
        text, args = Path(args[i + 1]).read_text().strip(), args[:i] + args[i + 2:]
    sys.stdout.write(main(args, text))
