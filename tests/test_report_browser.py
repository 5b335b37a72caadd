"""The HTML report in a real browser: headless Chromium at 1280 and 800 px, nothing wider than the page.

Skips where Debian's ``chromium`` is absent (``.ci/run`` installs it). A script injected into a copy
of the page measures, after layout, every element outside a scrolling table box; a wide table must
scroll inside its own box and a wide figure must scale down. The same page with the table outside
its box must fail the check, so the check can fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.report_render import Document, Figure, Heading, Paragraph, Table, render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

CHECK = """<script>
const width = document.documentElement.clientWidth;
const bad = [];
for (const el of document.body.querySelectorAll('*')) {
  if (el.closest('.scroll') && !el.classList.contains('scroll')) continue;
  const right = el.getBoundingClientRect().right;
  if (right > width + 1) bad.push(el.tagName + ':' + Math.round(right));
}
document.title = 'CHECK' + JSON.stringify({width: width, page: document.documentElement.scrollWidth, bad: bad});
</script>"""


def _page(tmp_path) -> str:
    wide = pd.DataFrame(
        {f"robustness_column_{i}_top1_pct": np.linspace(10, 90, 4) + i for i in range(30)},
        index=[f"run-{i}" for i in range(4)],
    ).reset_index()
    png = tmp_path / "wide.png"
    Image.new("RGB", (2400, 300), (40, 90, 160)).save(png)
    doc = Document(
        "browser check",
        tmp_path,
        [
            Heading("A wide table"),
            Table("wide", wide, caption="thirty columns"),
            Paragraph("a long path " + "/very_long_folder_name" * 20),
            Figure(png, "a 2400 px wide figure"),
        ],
    )
    return render_html(doc)


def _measure(tmp_path, html: str, width: int, name: str) -> dict:
    page = tmp_path / f"{name}.html"
    page.write_text(html.replace("</body>", CHECK + "</body>"))
    profile = tmp_path / f"profile-{name}"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r"<title>CHECK(.*?)</title>", dom)
    assert found, f"chromium did not run the check: {dom[:300]!r}"
    shot = tmp_path / f"{name}.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 0
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.parametrize("width", [1280, 800])
def test_report_fits_the_window(tmp_path, width):
    result = _measure(tmp_path, _page(tmp_path), width, f"report-{width}")
    assert result["bad"] == [] and result["page"] <= result["width"], result


def test_the_check_catches_a_table_outside_its_box(tmp_path):
    html = _page(tmp_path).replace("<div class='scroll'>", "<div>")
    result = _measure(tmp_path, html, 800, "unboxed")
    assert result["bad"], result
