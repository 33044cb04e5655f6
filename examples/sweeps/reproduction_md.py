"""examples/REPRODUCTION.md from `icl-interp reproduce all` runs, one folder per model:

    icl-interp reproduce all --model smollm2-135m --budget small --out out/reproduce/smollm2-small
    icl-interp reproduce all --model gemma3-270m --budget small --out out/reproduce/gemma3-small
    python examples/sweeps/reproduction_md.py out/reproduce/smollm2-small out/reproduce/gemma3-small > examples/REPRODUCTION.md

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


def main(folders: list[str]) -> str:
    runs = {}
    for f in folders:
        index = json.loads((Path(f) / "results.json").read_text())
        model = index.get("model_info", {}).get("model") or Path(f).name
        runs[model] = {key: json.loads((Path(f) / key / "results.json").read_text()) for key in index["papers"]}
    models = list(runs)
    first = runs[models[0]]
    budget = next(iter(first.values()))["budget"]
    lines = ["# Does ICL do kernel regression or gradient descent in these models?", "",
             f"`icl-interp reproduce all --budget {budget}` on {', '.join(models)} (seed 0). Regenerate with "
             "`python examples/sweeps/reproduction_md.py <run folders>`; every number is in the runs' results.json.", "",
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
        lines += ["", f"## {key}: {r0['citation']}", "", f"Run time: " + ", ".join(f"{m} {runs[m][key]['seconds']:.0f} s" for m in models
                                                                                     if key in runs[m]) + ".", "",
                  "| where | finding | paper (setting) | " + " | ".join(f"{m} (95% CI) → verdict" for m in models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for i, c in enumerate(r0["claims"]):
            ps = c["paper_setting"]
            setting = ", ".join(f"{k} {ps[k]}" for k in ("model", "size", "dataset", "k") if k in ps)
            cells = []
            for m in models:
                cl = runs[m].get(key, {}).get("claims", [])
                o = cl[i] if i < len(cl) and cl[i]["source"] == c["source"] and cl[i]["finding"] == c["finding"] else None
                cells.append(f"{_cell(o.get('ours_vs', o['ours_text']))} → **{o['verdict']}**" if o else "–")
            lines.append(f"| {_cell(c['source'])} | {_cell(c['finding'])} | {_cell(c['paper'])} ({_cell(setting)}) | " + " | ".join(cells) + " |")
        notes = sorted({n for m in models for n in runs[m].get(key, {}).get("notes", [])})
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]))
