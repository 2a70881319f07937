"""report.html: the writer on synthetic scan outputs (escaping, bounded size, exact counts,
streaming) and the scan writing it."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hostile import corrupt_page
from PIL import Image
from pipeline_fixtures import image, listings_table, matcher_fixture, mixed_rows, model_dir_fixture  # noqa: F401
from test_pipeline_scan import sample_shards, scan
from conftest import calibration_summary, write_policy

from ecomatch_model.api import Matcher
from transforms.decode import ListingDecoder
from transforms.listings import to_raw_listing
from transforms.html_report import CSP, MAX_TEXT, errors_html, severity_histogram, title_html, write_report
from transforms.reports import (ERRORS_SCHEMA, SCORES_SCHEMA, VIOLATIONS_SCHEMA, ScanInfo, clear_outputs,
                                write_summary)

HOSTILE = "<script>document.title='pwned'</script> Red \"><img src=x onerror=alert(1)> Cotton Shirt"
N_VIOLATIONS, N_OK, TOP = 1500, 1500, 30
ERROR_COUNTS = {"ImageDecodeError": 30, "UnsupportedImageError": 8, "ListingError": 2}


class PageParser(HTMLParser):
    """The elements (tag, attributes) and the text of a page, in document order."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, Any]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, Any]]:
        """Attributes of every ``tag`` element whose attributes include ``attrs``."""
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def noise_png(rng: np.random.Generator, size: int = 400) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def violation_row(i: int, severity: float) -> dict[str, Any]:
    kind = ("colour", "pattern", "match")[i % 3]
    finding = {"colour": [{"kind": "colour", "value": "red", "score": 0.1, "p_contradicted": 0.9,
                           "suggested_value": "navy blue", "suggested_score": 0.8}],
               "pattern": [{"kind": "pattern", "value": "striped", "score": 0.2, "p_contradicted": 0.8,
                            "suggested_value": None, "suggested_score": None}],
               "match": []}[kind]
    return {"listing_id": f"L{i:04d}", "severity": severity, "match_score": -0.3, "worst_kind": kind,
            "reasons": [f"reason {i} <b>bold</b>"], "attributes": finding}


def write_shards(directory: Path, rows: list[dict], schema: pa.Schema, shards: int) -> list[str]:
    directory.mkdir(parents=True)
    step = -(-len(rows) // shards)
    paths = []
    for k in range(shards):
        path = directory / f"part-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k * step:(k + 1) * step], schema), path, row_group_size=100)
        paths.append(str(path))
    return paths


def fake_scan(tmp: Path, matcher: Matcher) -> tuple[Path, list[str], list[dict], dict[str, int]]:
    """Outputs of a scan of N_VIOLATIONS + N_OK listings and errors under tmp/out, written
    without Beam, and input shards holding the TOP most severe violations among decoys;
    returns the prefix, the input files, the top violation rows (most severe first) and the
    ranks of the special ones: a long hostile title, a colour from a column, one
    missing from the input and one whose image is broken."""
    rng = np.random.default_rng(0)
    severities = rng.permutation(np.linspace(0.5001, 0.999, N_VIOLATIONS))
    violations = [violation_row(i, float(s)) for i, s in enumerate(severities)]
    scores = [{"listing_id": v["listing_id"], "verdict": "violation", "severity": v["severity"],
               "match_score": -0.3, "worst_kind": v["worst_kind"], "content_hash": "h"} for v in violations]
    scores += [{"listing_id": f"K{i:04d}", "verdict": "ok", "severity": 0.2, "match_score": 0.5,
                "worst_kind": None, "content_hash": "h"} for i in range(N_OK)]
    errors = [{"listing_id": f"E{t}{i}", "source": "in.parquet", "stage": "decode", "error_type": t,
               "message": f"bad <img src=x onerror=alert({i})>"} for t, n in ERROR_COUNTS.items() for i in range(n)]
    top = sorted(violations, key=lambda v: -v["severity"])[:TOP]
    colour = [k for k, v in enumerate(top) if v["worst_kind"] == "colour"]
    other = [k for k in range(TOP) if k not in colour[:2]]
    roles = {"hostile": colour[0], "column": colour[1], "missing": other[3], "broken": other[5]}
    listings = [{"listing_id": f"D{i:04d}", "title": "Decoy Blue Shirt", "image": image()} for i in range(300)]
    for k, v in enumerate(top):
        title = f"Kestrel Women Red Striped Dress {k}"
        row = {"listing_id": v["listing_id"], "title": title, "image": noise_png(rng)}
        if k == roles["hostile"]:
            row["title"] = HOSTILE + " <img src=x onerror=alert(3)>" * 100      # 3k characters
        if k == roles["column"]:
            row.update(title="Kestrel Women Striped Dress", base_colour="Red")
        if k == roles["broken"]:
            row["image"] = b"\xff\xd8\xff broken"
        if k != roles["missing"]:
            listings.insert(10 * k, row)
    # scores/ records what the scan hashed, as the report checks it (transforms.decode.content_hash).
    decoder = ListingDecoder.from_matcher(matcher, {"base_colour": "colour"})
    hashes = {r["listing_id"]: decoder.listing_hash(to_raw_listing(("in", r), ["base_colour"]), r["image"])
              for r in listings}
    for r in scores:
        r["content_hash"] = hashes.get(r["listing_id"], "h")
    out = tmp / "out"
    paths = {name: write_shards(out / name, rows, schema, 3)
             for name, rows, schema in (("scores", scores, SCORES_SCHEMA), ("errors", errors, ERRORS_SCHEMA),
                                        ("violations", violations, VIOLATIONS_SCHEMA))}
    events = {"read": len(scores) + len(errors), "scored": len(scores), "ok": N_OK, "violation": N_VIOLATIONS,
              "errors": len(errors), **{f"kind:{k}": N_VIOLATIONS // 3 for k in ("colour", "pattern", "match")},
              **{f"error:{t}": n for t, n in ERROR_COUNTS.items()}}
    info = ScanInfo("in/*.parquet", 2, str(out), "tiny", matcher.sha256, calibration_summary({"match": 0.1, "colour": 0.4}),
                    matcher.lexicon.kinds, "FnApiRunner")
    write_summary(events, info, paths["scores"], paths["violations"], paths["errors"])
    files = [str(tmp / "in" / f"in-{k}.parquet") for k in range(2)]
    (tmp / "in").mkdir()
    for k, path in enumerate(files):
        pq.write_table(listings_table(listings[k::2]), path, row_group_size=50)
    # First, a shard whose second row group cannot be read (a scan with --skip-bad-files goes on).
    files.insert(0, corrupt_page(listings_table(listings[:4]), tmp / "in" / "corrupt.parquet"))
    return out, files, top, roles


def test_report_is_escaped_bounded_exact_and_built_from_the_outputs(tmp_path: Path, matcher, caplog):
    prefix, files, top, roles = fake_scan(tmp_path, matcher)
    decoder = ListingDecoder.from_matcher(matcher, {"base_colour": "colour"})
    path = write_report(str(prefix), matcher, matcher.policy, decoder, files, ["listing_id", "title", "image", "base_colour"],
                        TOP)
    assert f"row group 2 of {files[0]} cannot be read" in caplog.text
    page_bytes = Path(path).read_bytes()
    page = page_bytes.decode("utf-8")
    doc = PageParser(page)

    # The TOP most severe violations, most severe first, one card each.
    cards = doc.find("article")
    assert [c["data-severity"] for c in cards] == [repr(v["severity"]) for v in top]
    assert [c["data-kind"] for c in cards] == [v["worst_kind"] for v in top]
    assert re.findall(r'<span class="mono">(L\d{4})</span>', page) == [v["listing_id"] for v in top]

    # Safety: one script (the page's own, allowed by its hash), no event-handler attribute,
    # no image but re-encoded JPEG thumbnails, and hostile text shown as text.
    assert len(doc.find("script")) == 1 and doc.find("script")[0] == {}
    script = page.split("<script>")[1].split("</script>")[0]
    style = page.split("<style>")[1].split("</style>")[0]
    for source in (script, style):
        assert "\r" not in source          # a browser reads CR LF as LF, and the hash would no longer match
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in CSP
    assert doc.find("meta", **{"http-equiv": "Content-Security-Policy"}) == [
        {"http-equiv": "Content-Security-Policy", "content": CSP}]
    assert not [(t, k) for t, a in doc.elements for k in a if k.startswith("on")]
    images = doc.find("img")
    assert images
    for img in images:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/jpeg;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 128
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; <mark>Red</mark> &quot;&gt;&lt;img" in page
    hostile_text = "".join(doc.text)
    assert HOSTILE in hostile_text and "<img src=x onerror=alert(2)>" in hostile_text     # title, error message

    # Cards: heatmaps for failing attributes, column-sourced ones not marked in the title,
    # and a reason when the listing cannot be shown.
    card_html = page.split('<article class="card"')[1:]
    assert "<mark>" not in card_html[roles["column"]] and "(base_colour)" in card_html[roles["column"]]
    missing, broken = card_html[roles["missing"]], card_html[roles["broken"]]
    assert "listing not found in the input shards" in missing and "<img" not in missing
    assert "cannot decode the listing again: ImageDecodeError" in broken and "<img" not in broken
    for k, html_k in enumerate(card_html):
        if k not in (roles["missing"], roles["broken"]):   # photo, and a heatmap unless only the match failed
            assert html_k.count("<img") == (1 if top[k]["worst_kind"] == "match" else 2), k

    # Bounded: 30 cards of long titles and 400 px noise photos stay small (the thumbnails
    # are of the tiny model's 96 px input, two per card at most here).
    assert len(page_bytes) < 30 * 10_000 + 60_000
    titles = [html.unescape(re.sub(r"</?mark>", "", t)) for t in re.findall(r'<h3 class="title">(.*?)</h3>', page)]
    assert len(titles) == TOP - 2 and max(len(t) for t in titles) == MAX_TEXT + 1       # cut, with an ellipsis

    # Exact counts.
    for name, n in (("read", N_VIOLATIONS + N_OK + 40), ("violations", N_VIOLATIONS), ("errors", 40), ("ok", N_OK)):
        assert f'id="count-{name}"><b>{n}</b>' in page
    top_kinds = {k: sum(v["worst_kind"] == k for v in top) for k in ("colour", "pattern", "match")}
    for kind, n in top_kinds.items():
        assert f'<option value="{kind}">{kind} ({n} of 500)</option>' in page
    error_rows = page.split('<tr class="error-type">')[1:]
    assert [re.match(r"<td><b>(\w+)</b></td><td>(\d+)</td>", r).groups() for r in error_rows] == \
        [(t, str(n)) for t, n in ERROR_COUNTS.items()]
    assert [r.count("<li>") for r in error_rows] == [3, 3, 2]


def test_title_html_marks_spans_on_the_title_as_written_and_escapes_the_rest():
    title = "<b>Navy  Blue</b> Men's \"T-Shirt\""
    assert title_html(title, [(1, 3), (5, 7)]) == \
        "&lt;b&gt;<mark>Navy  Blue</mark>&lt;/b&gt; Men&#x27;s &quot;<mark>T-Shirt</mark>&quot;"
    assert title_html(title, [(9, 10)]) == title_html(title, [])            # a span past the title's words
    assert title_html("Red " * 100, [(0, 1)], limit=10) == "<mark>Red</mark> Red Re\u2026"


def test_control_characters_never_reach_the_page_raw():
    """NUL, ESC and the other C0/C1 controls in ids, titles and messages are shown as \\xNN."""
    hostile = "ctl\x00\x1b[31m escape\x07\x7f\x85\r\n"
    shown = "ctl\\x00\\x1b[31m escape\\x07\\x7f\\x85\\x0d\\x0a"
    page = errors_html({"ListingError": 1}, {"ListingError": [
        {"listing_id": hostile, "stage": "decode", "source": hostile, "message": hostile}]})
    page += title_html(f"Red {hostile} Shirt", [(0, 1)])
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", page) and page.count(shown) == 4
    assert title_html("<b>Red</b>\x00", []) == "&lt;b&gt;Red&lt;/b&gt;\\x00"


def test_severity_histogram_counts_every_scored_listing_in_its_bin(tmp_path: Path):
    rows = [{"listing_id": str(i), "verdict": "ok", "severity": s, "match_score": 0.0, "worst_kind": None,
             "content_hash": ""} for i, s in enumerate([0.0, 0.04, 0.5, 0.51, 0.99, 1.0, float("nan")])]
    paths = write_shards(tmp_path / "scores", rows, SCORES_SCHEMA, 2)
    expected = [0] * 20
    for b in (0, 0, 10, 10, 19, 19):
        expected[b] += 1
    assert severity_histogram(paths) == expected


def test_rerun_clears_a_previous_report(tmp_path: Path):
    (tmp_path / "report.html").write_text("stale")
    (tmp_path / "keep.txt").write_text("not ours")
    clear_outputs(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_scan_writes_the_report_with_report_top_cards(tmp_path: Path, model_dir, capsys):
    sample_shards(tmp_path / "in", 8, 1)
    pq.write_table(listings_table(mixed_rows(tmp_path)), tmp_path / "in" / "mixed.parquet")
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    all_fail = write_policy(tmp_path / "t.json", {"match": 1.5, **{k["kind"]: 1.5 for k in kinds}})
    out = tmp_path / "out"
    assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir,
                "--calibration", all_fail, "--report-top", "2", "--image-uri-prefix", str(tmp_path / "images")) == 0
    assert f"report:     {out}/report.html" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["violations"] == 11
    violations = pq.read_table(out / "violations").to_pylist()
    expected = sorted(violations, key=lambda v: (-v["severity"], v["listing_id"]))[:2]
    doc = PageParser((out / "report.html").read_text())
    assert [c["id"] for c in doc.find("article")] == ["v1", "v2"]
    page = (out / "report.html").read_text()
    assert re.findall(r'<span class="mono">([^<]+)</span></div><div class="muted mono">', page) == \
        [v["listing_id"] for v in expected]
    assert {a["alt"] for a in doc.find("img")} >= {"photo as the model saw it"}
    assert '<td><b>ImageDecodeError</b></td><td>1</td>' in page and '<td><b>ListingError</b></td><td>1</td>' in page
    assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir,
                "--report-top", "-1") == 2


def test_the_report_never_shows_an_image_other_than_the_one_scored(tmp_path: Path, model_dir):
    """The report fetches an image_uri once more (under the scan's allow-list) and shows it only
    when the listing hashes as the scan recorded: a server that answers the report with another
    picture than it gave the scan gets a 'changed since the scan' card, not that picture."""
    from hostile import ImageServer
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    all_fail = write_policy(tmp_path / "t.json", {"match": 1.5, **{k["kind"]: 1.5 for k in kinds}})
    with ImageServer(image("PNG", (200, 30, 30))) as server:
        served = []
        real = server._http.RequestHandlerClass.do_GET

        def flip(handler):                  # the first answer is red, every later one blue
            served.append(handler.path)
            real(handler)
            server.body = image("PNG", (20, 40, 200))
        server._http.RequestHandlerClass.do_GET = flip
        (tmp_path / "in").mkdir()
        rows = [{"listing_id": "swap", "title": "Ardent Men Red Cotton T-Shirt",
                 "image_uri": f"{server.url}/img/a.png"}]
        pq.write_table(listings_table(rows), tmp_path / "in" / "a.parquet")
        out = tmp_path / "out"
        assert scan("--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--model", model_dir,
                    "--calibration", all_fail, "--report-top", "1", "--image-uri-prefix", f"{server.url}/img/") == 0
    page = (out / "report.html").read_text()
    [card] = page.split('<article class="card"')[1:]
    assert "the listing changed since the scan" in card and "<img" not in card
    assert served == ["/img/a.png", "/img/a.png"]          # one fetch by the scan, one by the report
