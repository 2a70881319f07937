"""report.html in a real browser: headless Chromium renders the report of a sample_data/
scan (with hostile titles and a broken image added), runs the page's script under its
Content-Security-Policy, loads the heatmaps, applies a filter from the URL, and runs
nothing from the titles. Skipped when chromium is not installed (CI installs it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_pipeline_scan import SAMPLE, needs_sample, scan
from test_report_html import PageParser

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: .ci/run installs Debian's "
                                                          "chromium before the tests"), needs_sample]

SCRIPT_TITLE = '<script>document.title="pwned"</script> '
IMG_TITLE = ' "><img src=x onerror="document.body.setAttribute(\'data-pwned\', \'1\')">'


def hostile_copy(root: Path) -> dict[str, str]:
    """sample_data/ copied under ``root`` with two planted colour mismatches given hostile
    titles and one listing with a broken image added; returns {listing_id: title} of the
    hostile ones."""
    hostile: dict[str, str] = {}
    root.mkdir()
    for k, shard in enumerate(sorted(SAMPLE.glob("*.parquet"))):
        rows = pq.read_table(shard).to_pylist()
        planted = [r for r in rows if r["mismatch_kind"] == "colour"][:1]
        for r, (before, after) in zip(planted, [(SCRIPT_TITLE, ""), ("", IMG_TITLE)][k:k + 1]):
            r["title"] = before + r["title"] + after
            hostile[r["listing_id"]] = r["title"]
        if k == 0:
            rows.append({**rows[0], "listing_id": "broken-1", "image": b"\xff\xd8\xff not a jpeg"})
        pq.write_table(pa.Table.from_pylist(rows, pq.read_schema(shard)), root / shard.name)
    assert len(hostile) == 2
    return hostile


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """The report, summary and hostile titles of a scan of the hostile sample copy."""
    root = tmp_path_factory.mktemp("browser")
    hostile = hostile_copy(root / "in")
    assert scan("--input", str(root / "in" / "*.parquet"), "--output", str(root / "out")) == 0
    return root / "out" / "report.html", json.loads((root / "out" / "summary.json").read_text()), hostile


def chromium(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium on ``url`` (no network, a fresh profile); its stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_report_renders_with_heatmaps_and_runs_nothing_from_titles(scanned, tmp_path: Path):
    report, summary, hostile = scanned
    c = summary["counts"]
    assert c["errors"] == 1 and c["violations"] <= 200
    dom = chromium(report.as_uri(), tmp_path / "profile", "--dump-dom")
    doc = PageParser(dom)

    cards = doc.find("article")
    assert len(cards) == c["violations"] and not [a for a in cards if "hidden" in a]
    severities = [float(a["data-severity"]) for a in cards]
    assert severities == sorted(severities, reverse=True)
    [body] = doc.find("body")
    images = doc.find("img")
    assert body["data-images-checked"] == str(len(images)) and body["data-kind"] == ""   # the script ran
    heatmaps = [a for a in images if a["alt"].startswith("where it looked for")]
    assert heatmaps and all(int(a["data-natural-width"]) > 0 for a in images)         # every image decoded
    assert re.search(r'<span id="shown"[^>]*>(\d+) shown</span>', dom).group(1) == str(c["violations"])
    assert len(doc.find("tr", **{"class": "error-type"})) == 1

    # The hostile titles are on their cards as text; nothing in them ran.
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == f"ecomatch report: {c['violations']} violations"
    assert not [a for _, a in doc.elements if "data-pwned" in a] and not doc.find("img", src="x")
    text = "".join(doc.text)
    for title in hostile.values():
        assert title in text


def test_filter_and_sort_from_the_url(scanned, tmp_path: Path):
    report, summary, _ = scanned
    dom = chromium(report.as_uri() + "#kind=colour&sort=asc", tmp_path / "profile", "--dump-dom")
    doc = PageParser(dom)
    visible = [a for a in doc.find("article") if "hidden" not in a]
    n = summary["counts"]["violations_per_kind"]["colour"]
    assert n > 0 and len(visible) == n and {a["data-kind"] for a in visible} == {"colour"}
    severities = [float(a["data-severity"]) for a in visible]
    assert severities == sorted(severities)
    assert doc.find("body")[0]["data-kind"] == "colour" and doc.find("body")[0]["data-sort"] == "asc"
    assert re.search(r'<span id="shown"[^>]*>(\d+) shown</span>', dom).group(1) == str(n)


def test_screenshot(scanned, tmp_path: Path):
    report, _, _ = scanned
    shot = tmp_path / "report.png"
    chromium(report.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400",
             "--hide-scrollbars")
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2400)
        assert len(picture.convert("RGB").getcolors(1 << 20) or []) > 1000       # a rendered page, not a blank one
