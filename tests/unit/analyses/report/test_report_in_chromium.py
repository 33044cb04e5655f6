"""report.html in a real browser: headless Chromium (Debian's ``chromium`` package; ``.ci/run``
installs it) opens a report written by ``analyses.report.html`` exactly as the analyses write theirs.

* JavaScript errors: a *probe copy* of the report gets a small script at the very top of <head>
  that records ``error`` events (uncaught exceptions and resources that fail to load),
  ``unhandledrejection`` and ``console.error`` calls, and a script at the end of <body> that waits
  (in Chromium's virtual time) until every plotly div has drawn, then writes a JSON marker into the
  DOM: the errors, the number of plotly divs, how many hold a rendered ``svg.main-svg``, traces
  drawn per figure, axis titles.  ``--dump-dom`` prints the DOM and the test parses the marker.
  Uncaught errors also reach Chromium's stderr log (``--enable-logging=stderr``) as
  ``CONSOLE... "Uncaught ...``; that is checked as well.  The control tests show the probe *can*
  fail: a copy with a deliberate ``throw`` (plus a rejected promise and a console.error) reports all
  three, and a copy without plotly's JavaScript reports a ReferenceError and zero rendered figures.
* Rendering: the unmodified report's own DOM after load holds one ``svg.main-svg`` per figure (at
  least), and a 1200x1600 screenshot of it is decoded (Pillow when importable, else zlib + numpy)
  and must show many colours and a sizeable non-background area; the plotly-less control's
  screenshot must not.
* Offline: no ``<script src=...>`` / stylesheet link in the file, and Chromium runs with DNS
  resolution mapped to nothing, so anything fetched from the network would fail and be reported.

Without a Chromium binary on PATH the tests skip and say why.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SKIP_REASON = "chromium not installed: apt-get install chromium (the CI script does this)"

WINDOW = (1200, 1600)
# Chromium flags: headless, no sandbox (CI containers run as root), no GPU, and nothing that talks
# to the network in the background; DNS resolves nothing, so the page gets no network either.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-component-update",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
    # virtual time: timers and promises run to completion (plotly draws) before the DOM is dumped
    "--virtual-time-budget=10000",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]
PROBE_DEADLINE_MS = 8000  # virtual ms the end-of-body probe waits for plotly; < the budget above
RUN_TIMEOUT_S = 90  # wall-clock limit for one Chromium run (normally 2-5 s)
MARKER_ID = "icl-interp-report-probe"

# At the very top of <head>, before plotly's script: record every error the page raises.
PROBE_HEAD = """<script>(function () {
  var errs = window.__reportProbeErrors = [];
  function str(x) {
    try { return String(x && x.stack ? x.stack : x).slice(0, 500); } catch (e) { return '?'; }
  }
  window.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) {
      errs.push('resource failed to load: <' + t.tagName.toLowerCase() + '> ' + (t.src || t.href || ''));
    } else {
      errs.push('uncaught: ' + e.message + ' (' + e.filename + ':' + e.lineno + ':' + e.colno + ')');
    }
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    errs.push('unhandled rejection: ' + str(e.reason));
  });
  var consoleError = console.error;
  console.error = function () {
    errs.push('console.error: ' + Array.prototype.map.call(arguments, str).join(' '));
    return consoleError.apply(console, arguments);
  };
})();</script>"""

# At the end of <body>: once every plotly div has drawn (or at the deadline), write the marker.
PROBE_TAIL = """<script>(function () {
  var t0 = Date.now();
  function all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function snapshot(done) {
    var divs = all('.plotly-graph-div');
    return {
      done: done,
      figures: divs.length,
      js_plotly_plot: all('.js-plotly-plot').length,
      rendered: divs.filter(function (d) { return d.querySelector('svg.main-svg') !== null; }).length,
      main_svg: all('svg.main-svg').length,
      per_figure: divs.map(function (d) {
        return {data: (d.data || []).length, drawn: all('g.trace, g.hm', d).length,
                main_svg: all('svg.main-svg', d).length};
      }),
      axis_titles: all('.g-xtitle text, .g-ytitle text').map(function (n) { return n.textContent; }),
      plotly_version: window.Plotly ? window.Plotly.version : null,
      errors: window.__reportProbeErrors || ['probe head script did not run'],
      virtual_ms: Date.now() - t0
    };
  }
  function finish(done) {
    var pre = document.createElement('pre');
    pre.id = '%(marker)s';
    pre.style.display = 'none';
    pre.textContent = JSON.stringify(snapshot(done));
    document.body.appendChild(pre);
  }
  function poll() {
    var s = snapshot(false);
    if (s.figures > 0 && s.rendered === s.figures) {
      setTimeout(function () { finish(true); }, 250);  // let late promise rejections surface
    } else if (Date.now() - t0 > %(deadline)d) {
      finish(false);
    } else {
      setTimeout(poll, 50);
    }
  }
  if (document.readyState === 'complete') { poll(); } else { window.addEventListener('load', poll); }
})();</script>""" % {"marker": MARKER_ID, "deadline": PROBE_DEADLINE_MS}

DELIBERATE = """<script>
console.error('deliberate console.error from the control test');
Promise.reject(new Error('deliberate rejection from the control test'));
throw new Error('deliberate failure from the control test');
</script>"""


# ----------------------------------------------------------------------------------------------
# helpers


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def with_probe(report_html: str, extra_tail: str = "") -> str:
    """A copy of the report's HTML with the probe scripts injected (the original is not touched)."""
    head = re.search(r"<head[^>]*>", report_html, re.IGNORECASE)
    assert head, "report has no <head>"
    at = head.end()
    charset = re.match(r"\s*<meta\s+charset=[^>]*>", report_html[at:], re.IGNORECASE)
    if charset:  # keep <meta charset> first
        at += charset.end()
    out = report_html[:at] + PROBE_HEAD + report_html[at:]
    body_end = out.lower().rfind("</body>")
    assert body_end > 0, "report has no </body>"
    return out[:body_end] + extra_tail + PROBE_TAIL + out[body_end:]


def run_chromium(browser: str, page: Path, workdir: Path, *, screenshot: Path | None = None) -> tuple[str, str]:
    """Open ``page`` headless; return (dumped DOM, stderr log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", "--dump-dom"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    cmd.append(page.resolve().as_uri())
    # its own process group, so a hung browser can be killed with all its helper processes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish in {RUN_TIMEOUT_S} s: {' '.join(cmd)}\n{err.decode('utf-8', 'replace')[-3000:]}")
    dom = out.decode("utf-8", "replace")
    log = err.decode("utf-8", "replace")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {' '.join(cmd)}\n{log[-3000:]}"
    return dom, log


def probe_result(dom: str) -> dict:
    m = re.search(rf'<pre id="{MARKER_ID}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    assert m, "the probe wrote no marker: the page's end-of-body script never ran (or the DOM was dumped too early)"
    return json.loads(html.unescape(m.group(1)))


def uncaught_in_log(log: str) -> list[str]:
    """Chromium's stderr log lines for uncaught exceptions / rejections."""
    return [line for line in log.splitlines() if "CONSOLE" in line and '"Uncaught' in line]


class _ExternalRefs(HTMLParser):
    """Tags that would load something from outside the file (script contents are not parsed)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.found.append(f"<script src={a['src']!r}>")
        if tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or "").lower():
            self.found.append(f"<link href={a['href']!r}>")


def external_refs(report_html: str) -> list[str]:
    parser = _ExternalRefs()
    parser.feed(report_html)
    parser.close()
    return parser.found


def png_rgb(path: Path):
    """The PNG as an (h, w, 3) uint8 array: Pillow when importable, else decoded by hand."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert ihdr is not None, "PNG without IHDR"
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG layout {ihdr}"
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, stride + 1)
    img = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        f, line = int(rows[y, 0]), rows[y, 1:]
        if f == 0:  # None
            cur = line.copy()
        elif f == 1:  # Sub: running sum along the row, per channel, mod 256
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif f == 2:  # Up
            cur = line + prev
        elif f in (3, 4):  # Average / Paeth: sequential along the row
            filt, up, out = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = up[i]
                if f == 3:
                    out[i] = (filt[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                    out[i] = (filt[i] + pred) & 0xFF
            cur = np.array(out, np.uint8)
        else:
            raise AssertionError(f"bad PNG filter type {f} in row {y}")
        img[y] = cur
        prev = cur
    return img.reshape(h, w, bpp)[:, :, :3]


def pixel_stats(path: Path) -> dict:
    """Size, number of distinct colours, and the fraction of pixels not of the commonest colour."""
    import numpy as np

    rgb = png_rgb(path)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, counts = np.unique(packed.ravel(), return_counts=True)
    return {
        "size": (rgb.shape[1], rgb.shape[0]),
        "colours": int(colours.size),
        "non_background": 1.0 - counts.max() / packed.size,
    }


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(SKIP_REASON)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report as the analyses write it: write_run with a heatmap, line plots and a bar chart."""
    import plotly.graph_objects as go

    from analyses.report.html import write_run

    heat = go.Figure(go.Heatmap(z=[[0.1 * (i - j) for j in range(12)] for i in range(8)], colorscale="RdBu",
                                zmid=0, colorbar=dict(title="AIE (prob.)")))
    heat.update_layout(title="heatmap", xaxis_title="head", yaxis_title="layer")
    layers = list(range(8))
    line = go.Figure([go.Scatter(x=layers, y=[0.2 + 0.1 * l for l in layers], mode="lines+markers", name="accuracy"),
                      go.Scatter(x=layers, y=[0.25] * len(layers), mode="lines", name="chance", line=dict(dash="dot"))])
    line.update_layout(title="layer sweep", xaxis_title="layer", yaxis_title="accuracy")
    bar = go.Figure([go.Bar(name="ICL accuracy", x=["random", "similar"], y=[0.4, 0.7])])
    bar.update_layout(xaxis_title="demonstrations", yaxis_title="accuracy")

    out = tmp_path_factory.mktemp("report")
    write_run(out, {"aie": heat.data[0].z}, "Browser check <report> & co", [
        ("Heads", "text with <tags> & ampersands", [heat]),
        ("Layers", "", [line, bar]),
    ])
    path = out / "report.html"
    assert path.is_file()
    return path


N_FIGURES = 3
AXIS_TITLES = {"head", "layer", "accuracy", "demonstrations"}


@pytest.fixture(scope="module")
def original_run(chromium, report, tmp_path_factory):
    """The unmodified report: its DOM after load, Chromium's log and a screenshot."""
    work = tmp_path_factory.mktemp("chromium-original")
    shot = work / "screenshot.png"
    dom, log = run_chromium(chromium, report, work, screenshot=shot)
    return dom, log, shot


# ----------------------------------------------------------------------------------------------
# tests


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert external_refs(text) == [], "the report loads something from outside the file (a CDN?)"
    assert text.count('class="plotly-graph-div"') == N_FIGURES
    assert "Plotly.newPlot" in text and len(text) > 1_000_000, "plotly's JavaScript is not embedded"


def test_report_has_no_js_errors_and_every_figure_renders(chromium, report, tmp_path):
    original = report.read_bytes()
    probe = tmp_path / "probe.html"
    probe.write_text(with_probe(report.read_text(encoding="utf-8")), encoding="utf-8")
    dom, log = run_chromium(chromium, probe, tmp_path / "chromium")
    result = probe_result(dom)

    assert result["errors"] == [], f"JavaScript errors in the report: {result['errors']}"
    assert uncaught_in_log(log) == [], f"Chromium logged uncaught errors: {uncaught_in_log(log)}"
    assert result["plotly_version"], "window.Plotly is not defined"
    assert result["figures"] == N_FIGURES >= 1
    assert result["done"], f"not every figure rendered within {PROBE_DEADLINE_MS} virtual ms: {result}"
    assert result["rendered"] == result["js_plotly_plot"] == result["figures"], result
    for i, fig in enumerate(result["per_figure"]):
        assert fig["data"] >= 1 and fig["drawn"] >= fig["data"], f"figure {i} drew {fig['drawn']} of {fig['data']} traces"
    assert AXIS_TITLES <= set(result["axis_titles"]), f"axis titles drawn: {result['axis_titles']}"
    assert report.read_bytes() == original, "the report under test was modified"


def test_unmodified_report_renders_and_screenshot_is_not_blank(original_run):
    dom, log, shot = original_run
    assert uncaught_in_log(log) == [], f"Chromium logged uncaught errors: {uncaught_in_log(log)}"
    # the report's own DOM, no probe injected: every plotly div became a plot with an SVG
    assert dom.count('class="main-svg"') >= N_FIGURES
    assert len(re.findall(r'class="plotly-graph-div js-plotly-plot"', dom)) == N_FIGURES

    assert shot.is_file() and shot.stat().st_size > 0, "chromium wrote no screenshot"
    stats = pixel_stats(shot)
    assert stats["size"] == WINDOW
    # a heatmap, three axes with ticks and lines: many colours, and far more than a few lines of text
    assert stats["colours"] >= 64, f"screenshot looks blank: {stats}"
    assert stats["non_background"] >= 0.05, f"screenshot looks blank: {stats}"


def test_probe_reports_deliberate_errors(chromium, report, tmp_path):
    """Control: the error check can fail. A copy with a deliberate throw, rejection and
    console.error reports all three (and the figures still render)."""
    broken = tmp_path / "broken.html"
    broken.write_text(with_probe(report.read_text(encoding="utf-8"), extra_tail=DELIBERATE), encoding="utf-8")
    dom, log = run_chromium(chromium, broken, tmp_path / "chromium")
    errors = probe_result(dom)["errors"]
    joined = "\n".join(errors)
    assert "uncaught:" in joined and "deliberate failure from the control test" in joined, errors
    assert "unhandled rejection:" in joined and "deliberate rejection" in joined, errors
    assert "console.error: deliberate console.error" in joined, errors
    assert any("deliberate failure" in line for line in uncaught_in_log(log)), "Chromium's log missed the throw"


def test_probe_and_screenshot_detect_a_report_without_plotly(chromium, report, tmp_path):
    """Control: the rendering and screenshot checks can fail. Without plotly's JavaScript no figure
    renders, each newPlot call raises a ReferenceError, and the screenshot is nearly blank."""
    text = report.read_text(encoding="utf-8")
    start = text.index("<script type='text/javascript'>")
    end = text.index("</script>", start) + len("</script>")
    no_plotly = tmp_path / "no-plotly.html"
    no_plotly.write_text(with_probe(text[:start] + text[end:]), encoding="utf-8")
    shot = tmp_path / "no-plotly.png"
    dom, log = run_chromium(chromium, no_plotly, tmp_path / "chromium", screenshot=shot)
    result = probe_result(dom)
    assert result["figures"] == N_FIGURES and result["rendered"] == 0 and not result["done"], result
    assert result["plotly_version"] is None
    assert sum("Plotly is not defined" in e for e in result["errors"]) == N_FIGURES, result["errors"]
    stats = pixel_stats(shot)
    assert stats["non_background"] < 0.05, f"a page without figures should look nearly blank: {stats}"


# ----------------------------------------------------------------------------------------------
# every report kind the commands write, on tiny models: readable HTML and no JavaScript error

KINDS = ("kernel", "icl-vs-gd", "heads", "linreg", "compare", "reproduce", "reproduce-index")


@pytest.fixture(scope="module")
def report_kinds(char_tokenizer, tmp_path_factory, monkeypatch_module) -> dict:
    """kind → report.html written by the function its command calls (tiny models, toy task)."""
    import copy

    import torch

    from analyses.gd.report import run_icl_vs_gd_analysis
    from analyses.heads.atlas import run_heads_report
    from analyses.kernel.report import run_kernel_analysis
    from analyses.linreg.report import run_linreg_analysis
    from analyses.model_comparison import compare_models
    from analyses.reproduce import paper_module
    from analyses.reproduce.run import reproduce
    from interp import load_model
    from interp.finetune import GDConfig
    from tests.conftest import make_tiny_llama, make_toy_task

    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kinds")
    task = make_toy_task()
    models = []
    for s in (0, 1):
        models.append(load_model(make_tiny_llama(seed=s, n_ctx=512), tokenizer=copy.deepcopy(char_tokenizer)))
        models[-1].name = f"tiny-{s}"
    m = models[0]
    run_kernel_analysis(m, task, k=2, n=8, seed=1, out=root / "kernel", similarity_n=4, probes_n=8, anchors_n=4)
    run_icl_vs_gd_analysis(m, task, k=2, n=6, seed=1, orders=2, orders_n=4, out=root / "icl-vs-gd")
    run_heads_report(m, task, out=root / "heads", k=2, n=4, seed=1, gd_config=GDConfig(lr=0.1, loss="all"), fv_mean_over="all")
    run_linreg_analysis("lsa-d10-n10", root / "linreg", n_tasks=256, parts=["gd", "algorithms"])
    compare_models(models, task, ks=(0, 2), k=2, n=8, gd_n=4, orders_n=4, n_orders=2, heads_n=4, seed=1, out=root / "compare")
    han = paper_module("han2023")
    monkeypatch_module.setattr(han, "dataset_task", lambda name, fallback=None: (task, None))
    monkeypatch_module.setitem(han.BUDGETS, "smoke", {"datasets": ("sst2",), "k": 2, "n": 10, "similarity_n": 4, "probes_n": 6,
                                                      "map_n": 4, "offsets": (0,)})
    for key, sizes in (("vonoswald2023", {"n_tasks": 256}), ("akyurek2022", {"ks": (5,), "n_tasks": 64})):
        monkeypatch_module.setitem(paper_module(key).BUDGETS, "smoke", sizes)
    reproduce(["han2023", "vonoswald2023", "akyurek2022"], m, "smoke", out=root / "reproduce")
    paths = {kind: root / kind / "report.html" for kind in KINDS[:-2]}
    paths["reproduce"] = root / "reproduce" / "han2023" / "report.html"
    paths["reproduce-index"] = root / "reproduce" / "report.html"
    return paths


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("kind", KINDS)
def test_report_kind_is_readable(report_kinds, kind):
    """No <pre> holds a Python dict, no "nan" anywhere a reader sees, every figure titled with
    both axis titles (plotly's JSON in the page), a provenance block with the command line."""
    text = report_kinds[kind].read_text(encoding="utf-8")
    for pre in re.findall(r"<pre>(.*?)</pre>", text, flags=re.S):
        body = html.unescape(pre)
        assert not re.search(r"\{\s*['\"][^'\"]+['\"]\s*:", body), f"{kind}: a dict dumped in <pre>: {body[:300]}"
    visible = re.sub(r"<script.*?</script>", "", text, flags=re.S)
    assert not re.search(r"\bnan\b", visible, flags=re.I), f"{kind}: 'nan' in the report"
    assert "<h2>Provenance</h2>" in text and "command line" in text
    for spec in re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"responsive"', text, flags=re.S):
        layout = json.loads(spec[1])
        title = (layout.get("title") or {}).get("text")
        assert title, f"{kind}: a figure without a title"
        for axis in ("xaxis", "yaxis"):
            assert ((layout.get(axis) or {}).get("title") or {}).get("text"), f"{kind}: {title!r} has no {axis} title"


@pytest.mark.parametrize("kind", KINDS)
def test_report_kind_opens_without_javascript_errors(chromium, report_kinds, kind, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(with_probe(report_kinds[kind].read_text(encoding="utf-8")), encoding="utf-8")
    dom, log = run_chromium(chromium, probe, tmp_path / "chromium")
    result = probe_result(dom)
    assert result["errors"] == [], f"{kind}: JavaScript errors: {result['errors']}"
    assert uncaught_in_log(log) == [], f"{kind}: Chromium logged uncaught errors"
    assert result["rendered"] == result["figures"] and (result["done"] or result["figures"] == 0), result
