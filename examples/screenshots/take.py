"""Screenshots of the top of reports, with headless Chromium (offline, like the report tests).

    python examples/screenshots/take.py NAME=path/to/report.html [NAME=...]

writes ``examples/screenshots/NAME.png`` (1200 x 1100, the report's first screen) for each."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-extensions", "--no-first-run",
         "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
         "--window-size=1200,1100"]


def main(argv: list[str]) -> int:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    here = Path(__file__).resolve().parent
    for arg in argv:
        name, _, path = arg.partition("=")
        out = here / f"{name}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", Path(path).resolve().as_uri()],
                           check=True, capture_output=True, timeout=120)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
