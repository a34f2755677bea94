"""`make plots-check`: render `dvc plots show` offline and screenshot it in headless Chromium.

Writes docs/plots.png (the whole page) so a person can see each chart with its
reference line and labels without opening a browser; fails if the page would
load anything from the network. Run in the repository after `dvc repro`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path("docs/plots.png")


def main() -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("plots-check: error: no Chromium; install it (apt-get install chromium) and rerun", file=sys.stderr)
        return 1
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show"], check=True, capture_output=True)
    page = Path("dvc_plots/index.html")
    remote = re.findall(r'src="(https?://[^"]+)"', page.read_text())
    if remote:
        print(f"plots-check: error: {page} loads {remote[0]}: it would not render offline", file=sys.stderr)
        return 1
    OUT.parent.mkdir(exist_ok=True)
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000",
         "--window-size=1500,2600", f"--screenshot={OUT.resolve()}", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    print(f"wrote {OUT} from {page} (no network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
