"""Real HTML tables for the reports: escaped cells, a caption, optionally sortable by clicking a
column header (a few lines of inline JavaScript, no library, so the report stays one offline file)."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

#: Sorting script: numbers sort numerically (the leading number of a cell such as "0.71 [0.6, 0.8]"),
#: everything else as text; a second click reverses.
SORT_SCRIPT = """<script>
function iclSort(th){const t=th.closest('table'),b=t.tBodies[0],i=[...th.parentNode.children].indexOf(th);
const asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
const key=r=>{const s=r.children[i].textContent.trim(),m=s.match(/^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?/i);return m?parseFloat(m[0]):s;};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);const r=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));
return asc?r:-r;}).forEach(r=>b.appendChild(r));}
</script>"""

STYLE = ("table.icl{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em;width:100%}"
         "table.icl th,table.icl td{border:1px solid #ccc;padding:0.3em 0.5em;text-align:left;vertical-align:top}"
         "table.icl th{background:#f0f0f0}table.icl th.sortable{cursor:pointer}"
         "table.icl caption{caption-side:top;text-align:left;font-weight:bold;padding:0.3em 0}"
         "td.v-reproduces{background:#e3f4e3}td.v-does-not-reproduce{background:#fbe3e3}td.v-not-comparable{background:#eee}"
         "dl.prov{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em}dl.prov dt{font-weight:bold}dl.prov dd{margin:0}")


@dataclass
class Table:
    """``rows`` are dicts (column → value) or sequences in ``columns`` order; values are shown
    with ``str`` (None as an en dash).  A column named ``verdict`` colours its cells."""

    columns: Sequence[str]
    rows: Sequence
    caption: str | None = None
    sortable: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dicts(cls, rows: Sequence[dict], caption: str | None = None, sortable: bool | None = None) -> "Table":
        columns = list(dict.fromkeys(c for r in rows for c in r))
        return cls(columns, rows, caption, len(rows) > 10 if sortable is None else sortable)

    def _cells(self, row) -> list:
        return [row.get(c) for c in self.columns] if isinstance(row, dict) else list(row)

    def html(self) -> str:
        cls = " class='sortable' onclick='iclSort(this)'" if self.sortable else ""
        out = ["<table class='icl'>"]
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th{cls}>{html.escape(str(c))}</th>" for c in self.columns) + "</tr></thead><tbody>")
        for row in self.rows:
            tds = []
            for col, v in zip(self.columns, self._cells(row)):
                text = "–" if v is None else str(v)
                attr = f" class='v-{text.replace(' ', '-')}'" if col == "verdict" else ""
                tds.append(f"<td{attr}>{html.escape(text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
        out += [f"<p class='note'>{html.escape(n)}</p>" for n in self.notes]
        return "".join(out)


@dataclass
class Provenance:
    """The block that says where a report's numbers come from: term → value pairs."""

    items: dict

    def html(self) -> str:
        return "<dl class='prov'>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                                            for k, v in self.items.items()) + "</dl>"


@dataclass
class Paragraphs:
    """Plain prose (one <p> per item), for text that is not a table and not console output."""

    items: Sequence[str]

    def html(self) -> str:
        return "".join(f"<p>{html.escape(t)}</p>" for t in self.items)
