"""Self-contained HTML reports: plotly figures with plotly's JavaScript embedded from the installed
package (no CDN), so the file opens offline; a results.json beside it holds every number shown."""
from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence


def json_safe(obj):
    """Tuples → lists, NaN / ±inf → None (JSON has neither), tensors → lists, keys → str, recursively."""
    import math

    import torch

    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def fmt(value, spec: str = ".3f", undefined: str = "undefined") -> str:
    """``value`` formatted with ``spec``, or ``undefined`` (a reason) when it is None, NaN or
    infinite: a report never prints "nan"."""
    import math

    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return undefined
    return format(value, spec)


def strict_json(data, **kwargs) -> str:
    """RFC 8259 JSON of ``data``: NaN and ±inf become null (:func:`json_safe`), and a value that
    would still not be JSON raises instead of writing ``NaN``."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def write_json_atomic(path: Path, data) -> None:
    """Write strict JSON (:func:`strict_json`) to ``path`` via a temporary file and rename:
    never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = strict_json(data, indent=2, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
    os.replace(tmp, path)


def _body(block) -> str:
    """One block of a section: text (console-style summary) in <pre>; a :mod:`analyses.report.tables`
    object (``Table``, ``Provenance``, ``Paragraphs``) as its HTML; a list of blocks in order."""
    if not block:
        return ""
    if isinstance(block, str):
        return f"<pre>{html.escape(block)}</pre>"
    if isinstance(block, (list, tuple)):
        return "".join(_body(b) for b in block)
    return block.html()


def write_report(path: Path, title: str, sections: Sequence[tuple[str, object, Sequence]]) -> None:
    """Write an HTML report: ``sections`` are (heading, body, plotly figures); a body is text
    (shown preformatted), a table / provenance / paragraphs block, or a list of them."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    from analyses.report.tables import SORT_SCRIPT, STYLE

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}pre{background:#f6f6f6;padding:1em;"
        "white-space:pre-wrap;overflow-wrap:anywhere}" + STYLE + "</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>{SORT_SCRIPT}</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, body, figures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_body(body))
        for fig in figures:
            parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False))
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # one per writer: concurrent writers never collide
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_licence_notices(data: dict, sections: list, models) -> None:
    """The licence notices of the embedded ``models`` (:func:`interp.embedded.notice`), if any:
    as ``data["notices"]`` and as the report's first section, where the models are named."""
    import textwrap

    from interp.embedded import notice

    notices = sorted({t for t in (notice(m) for m in models) if t})
    if notices:
        data["notices"] = notices
        sections.insert(0, ("Licences of the models", "\n".join(textwrap.fill(t, 100) for t in notices), []))


def write_run(out: str | os.PathLike | None, results: dict, title: str, sections: Sequence[tuple[str, str, Sequence]],
              model=None, protocol: dict | None = None) -> None:
    """``out/results.json`` (atomic, strict JSON) and ``out/report.html`` of one analysis run;
    nothing when ``out`` is None.  With ``model`` (a :class:`~interp.model.Model`), results.json
    also records ``model_info`` (engine, architecture, BOS policy, runner: ``Model.provenance``)
    and ``protocol`` (:mod:`interp.protocol`: the model's part, then ``protocol``, the prompts'
    and the analysis's own choices)."""
    if out is None:
        return
    import sys

    from interp.protocol import package_versions

    if model is not None and hasattr(model, "provenance"):
        from interp.protocol import model_protocol

        results = {**results, "model_info": model.provenance(), "protocol": {**model_protocol(model), **(protocol or {})}}
    elif protocol:
        results = {**results, "protocol": {"versions": package_versions(), **protocol}}
    results = dict(results)
    argv = list(sys.argv) or [""]
    if Path(argv[0]).name in ("icl-interp", "cli.py", "__main__.py"):
        argv[0] = "icl-interp"
    results.setdefault("command_line", " ".join(argv))
    out = Path(out)
    write_json_atomic(out / "results.json", results)
    write_report(out / "report.html", title, [*sections, ("Provenance", provenance_block(results), [])])


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dict → [("a.b", "value")], lists shown comma-separated, None as an en dash."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += _flat(v, key + ".")
        elif isinstance(v, (list, tuple)):
            rows.append((key, ", ".join("–" if x is None else str(x) for x in v) if len(v) <= 40 else f"{len(v)} values (in results.json)"))
        else:
            rows.append((key, "–" if v is None else str(v)))
    return rows


def provenance_block(results: dict) -> list:
    """Where a report's numbers come from: command line, model, weights hash, engine, seed and
    versions as a definition list, then every protocol entry in a table."""
    from analyses.report.tables import Provenance, Table

    protocol = dict(results.get("protocol") or {})
    info = results.get("model_info") or {}
    versions = protocol.pop("versions", None) or {}
    items = {"command line": results.get("command_line", "–"), "model": info.get("model", results.get("model", "–")),
             "weights SHA-256": protocol.pop("weights_sha256", "–"), "engine": info.get("engine", results.get("engine", "–")),
             "seed": results.get("seed", protocol.get("seed", "–")),
             "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "–"}
    blocks = [Provenance(items)]
    rows = _flat(protocol)
    if rows:
        blocks.append(Table(["protocol entry", "value"], rows, caption="Protocol (also in results.json)", sortable=len(rows) > 10))
    return blocks
