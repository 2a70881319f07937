"""``PREFIX/report.html``: one self-contained page a trust-and-safety reviewer can open and
act on, written by the scan's last step, :class:`WriteHtmlReport`, on a worker once every
shard and ``summary.json`` are final: on every runner alike, Dataflow included (the
launcher of a template launch returns before the job runs, so nothing may be left for it).

It is built from the scan's written outputs, never from the scan's memory:

- ``summary.json``: counts, violations per kind, model, calibration and operating point,
  time and throughput;
- ``scores/*.parquet``, severity column only, streamed: the severity histogram;
- ``violations/*.parquet``, streamed through a heap of the top N by severity: the cards;
- the input shards, read by the scan's own reader (``transforms.listings.read_row_group``):
  per row group only ``listing_id`` is read, and only the row groups holding one of the N
  listings are read in full; those listings are decoded (an ``image_uri`` fetched once more,
  under the scan's allow-list and deadline, and shown only when the listing's
  ``content_hash`` is the one ``scores/`` recorded) and re-scored with the model (exactly as
  the scan did) for their image, attention maps and title spans, and the layout of
  ``violations/`` stays as it is; the verdict policy
  (``ecomatch_model.verdict``, the scan's own) states each check's probability;
- ``errors/*.parquet``, streamed until every error type has a few examples.

Its size is bounded whatever the scan's size: N cards at most, at most
:data:`MAX_HEATMAPS` + 1 re-encoded JPEG thumbnails of at most :data:`THUMB_PX` pixels per
card, every piece of listing text cut to :data:`MAX_TEXT` characters, a few error examples
per type. Safety: all listing text is HTML-escaped; images are decoded and re-encoded by
Pillow, never passed through; a Content-Security-Policy allows no requests but ``data:``
images, and only the page's own style and script (by hash).

Reviewers decide each card (confirm / false alarm) and export the decisions as CSV or JSON
for ``ecomatch calibrate --feedback`` (``ecomatch_model.feedback``): the page's script makes
a Blob and downloads it through an ``<a download>`` click. That needs no change to the CSP:
a download is a navigation, which ``default-src 'none'`` does not govern (checked in
Chromium from ``file://``, tests/test_report_feedback.py).
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from ecomatch_model.api import Matcher, load
from ecomatch_model.explain import overlay_heatmap, pixels_image
from ecomatch_model.scores import ListingScore
from ecomatch_model.text import word_offsets
from ecomatch_model.verdict import MATCH, Policy
from PIL import Image

from .decode import DecodedListing, ListingDecoder
from .errors import redact
from .listings import (InputSchemaError, RawListing, RowGroup, UnreadableInputError, file_row_groups,
                       read_row_group)
from .reports import ERRORS, REPORT, SCORES, VIOLATIONS, check_owner, read_summary
from .score import ListingScorer, stack_batch

log = logging.getLogger(__name__)

DEFAULT_TOP = 200
THUMB_PX = 128          # longer side of every picture in the page
JPEG_QUALITY = 80
MAX_HEATMAPS = 3        # per card: the findings, blamed one first
MAX_TEXT = 300          # characters of any one piece of listing text (title, id, message)
MAX_REASONS = 8
ERROR_EXAMPLES = 3
MAX_ERROR_TYPES = 50
HIST_BINS = 20

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header,section{max-width:1200px;margin:0 auto;padding:12px 20px}
header{background:#1d2b3a;color:#fff;max-width:none}
h1{font-size:20px;margin:4px 0}h2{font-size:17px;margin:16px 0 8px}
.muted{color:#667}.mono{font-family:ui-monospace,monospace;font-size:12px}
.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{background:#fff;border-radius:6px;padding:8px 14px;min-width:90px;box-shadow:0 1px 2px #0002}
.stat b{display:block;font-size:20px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.panel{background:#fff;border-radius:6px;padding:10px 14px;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse}td,th{padding:3px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #e3e5e8}
.controls{position:sticky;top:0;background:#f4f5f7;padding:8px 0;z-index:1}
.cards{display:flex;flex-direction:column;gap:10px}
.card{display:grid;grid-template-columns:auto 1fr;gap:14px;background:#fff;border-radius:6px;padding:12px;
box-shadow:0 1px 2px #0002;border-left:6px solid #c62828}
.card[hidden]{display:none}
.pics{display:flex;gap:8px}
figure{margin:0;text-align:center;font-size:11px;color:#556;max-width:128px}
figure img{width:128px;height:128px;image-rendering:auto;border:1px solid #ccd;display:block}
.title{font-size:16px;margin:0 0 4px;overflow-wrap:anywhere}
mark{background:#ffd54f;padding:0 2px;border-radius:2px}
.sev{font-weight:bold;color:#c62828}
.attrs td{font-size:13px}.fail{color:#c62828;font-weight:bold}
ul{margin:6px 0;padding-left:18px}
.decide button{margin:6px 6px 0 0;padding:3px 10px;border:1px solid #99a;border-radius:4px;background:#fff;cursor:pointer}
.card[data-decision=confirmed]{border-left-color:#6a1b9a}.card[data-decision=false_alarm]{border-left-color:#2e7d32}
.decide button[aria-pressed=true]{background:#1d2b3a;color:#fff}
"""

SCRIPT = """
(function () {
  "use strict";
  var list = document.getElementById("cards");
  var kindSel = document.getElementById("kind");
  var sortSel = document.getElementById("sort");
  var shown = document.getElementById("shown");
  var cards = Array.prototype.slice.call(list.querySelectorAll(".card"));
  function params() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var i = part.indexOf("=");
      if (i > 0) out[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
    });
    return out;
  }
  function hasOption(sel, value) {
    return Array.prototype.some.call(sel.options, function (o) { return o.value === value; });
  }
  function apply() {
    var kind = kindSel.value, asc = sortSel.value === "asc", n = 0;
    cards.sort(function (a, b) {
      var d = Number(a.dataset.severity) - Number(b.dataset.severity) ||
              Number(b.dataset.rank) - Number(a.dataset.rank);
      return asc ? d : -d;
    });
    cards.forEach(function (card) {
      card.hidden = kind !== "" && card.dataset.kind !== kind;
      if (!card.hidden) n += 1;
      list.appendChild(card);
    });
    shown.textContent = n + " shown";
    document.body.dataset.kind = kind;
    document.body.dataset.sort = sortSel.value;
  }
  function fromHash() {
    var p = params();
    kindSel.value = hasOption(kindSel, p.kind) ? p.kind : "";
    sortSel.value = p.sort === "asc" ? "asc" : "desc";
    apply();
  }
  function toHash() {
    location.hash = "kind=" + encodeURIComponent(kindSel.value) + "&sort=" + sortSel.value;
  }
  // Reviewers' decisions: one per listing (a second click on the same button takes it back),
  // exported as CSV or JSON for `ecomatch calibrate --feedback FILE` by a download of a Blob
  // this script makes: no server, and nothing is sent anywhere.
  var decisions = {};
  var decided = document.getElementById("decided");
  var sha = document.body.dataset.calibrationSha256;
  var FIELDS = ["listing_id", "decision", "worst_kind", "severity", "calibration_sha256"];
  function decide(card, decision) {
    var id = card.dataset.listingId;
    var undo = decisions[id] && decisions[id].decision === decision;
    if (undo) { delete decisions[id]; card.removeAttribute("data-decision"); }
    else {
      decisions[id] = {listing_id: id, decision: decision, worst_kind: card.dataset.kind,
                       severity: Number(card.dataset.severity), calibration_sha256: sha, rank: Number(card.dataset.rank)};
      card.dataset.decision = decision;
    }
    Array.prototype.forEach.call(card.querySelectorAll("button[data-decision]"), function (b) {
      b.setAttribute("aria-pressed", String(!undo && b.dataset.decision === decision));
    });
    decided.textContent = Object.keys(decisions).length + " decided";
  }
  function rows() {
    return Object.keys(decisions).map(function (id) { return decisions[id]; })
      .sort(function (a, b) { return a.rank - b.rank; })
      .map(function (d) { var r = {}; FIELDS.forEach(function (f) { r[f] = d[f]; }); return r; });
  }
  function csvField(v) {
    var s = String(v);
    return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function download(name, type, text) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], {type: type}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
  }
  list.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-decision]");
    if (b) decide(b.closest(".card"), b.dataset.decision);
  });
  document.getElementById("export-csv").addEventListener("click", function () {
    download("ecomatch-decisions.csv", "text/csv", [FIELDS.join(",")].concat(rows().map(function (r) {
      return FIELDS.map(function (f) { return csvField(r[f]); }).join(",");
    })).join("\\r\\n") + "\\r\\n");
  });
  document.getElementById("export-json").addEventListener("click", function () {
    download("ecomatch-decisions.json", "application/json",
             JSON.stringify({format: "ecomatch-decisions/1", decisions: rows()}, null, 1) + "\\n");
  });
  kindSel.addEventListener("change", toHash);
  sortSel.addEventListener("change", toHash);
  window.addEventListener("hashchange", fromHash);
  window.addEventListener("load", function () {
    Array.prototype.forEach.call(document.images, function (img) {
      img.dataset.naturalWidth = String(img.naturalWidth);
    });
    document.body.dataset.imagesChecked = String(document.images.length);
  });
  fromHash();
})();
"""


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CSP = (f"default-src 'none'; img-src data:; style-src {_sha256_source(STYLE)}; "
       f"script-src {_sha256_source(SCRIPT)}; base-uri 'none'; form-action 'none'")


# ---------------------------------------------------------------------------- reading the outputs
def parquet_row_groups(path: str) -> Iterator[tuple[pq.ParquetFile, int]]:
    """(open file, row group index) for each row group of one of the scan's output shards
    (local or any Beam filesystem), so callers read one row group at a time. Input shards
    are read by :func:`listings_with_ids` instead."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            yield pf, g


def read_rows(paths: Sequence[str], columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of Parquet files, ``columns`` only, one row group in memory at a time."""
    for path in paths:
        for pf, g in parquet_row_groups(path):
            yield from pf.read_row_group(g, columns=list(columns)).to_pylist()


def top_violations(paths: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The ``n`` most severe rows of ``violations/`` shards, most severe first (ties by
    listing_id). A first pass reads only the severity column and keeps the positions of the
    ``n`` best; a second reads just the row groups holding them."""
    best: list[tuple[float, int, int, int]] = []        # (severity, shard, row group, row)
    for s, path in enumerate(paths):
        for pf, g in parquet_row_groups(path):
            severity = pf.read_row_group(g, columns=["severity"]).column(0).to_numpy(zero_copy_only=False)
            keep = np.argsort(-severity, kind="stable")[:n]
            best = heapq.nlargest(n, best + [(float(severity[i]), s, g, int(i)) for i in keep], key=lambda t: t[0])
    wanted: dict[tuple[int, int], list[int]] = {}
    for _, s, g, i in best:
        wanted.setdefault((s, g), []).append(i)
    rows: list[dict[str, Any]] = []
    for s, path in enumerate(paths):
        for pf, g in parquet_row_groups(path):
            if (s, g) in wanted:
                rows += pf.read_row_group(g).take(pa.array(wanted[(s, g)])).to_pylist()
    return sorted(rows, key=lambda r: (-r["severity"], r["listing_id"] or ""))


def severity_histogram(paths: Sequence[str], bins: int = HIST_BINS) -> list[int]:
    """Counts of scored listings' severities in ``bins`` equal bins over [0, 1]."""
    counts = np.zeros(bins, np.int64)
    for path in paths:
        for pf, g in parquet_row_groups(path):
            values = pf.read_row_group(g, columns=["severity"]).column(0).to_numpy(zero_copy_only=False)
            counts += np.histogram(values[np.isfinite(values)], bins=bins, range=(0.0, 1.0))[0]
    return counts.tolist()


def error_examples(paths: Sequence[str], counts: Mapping[str, int], k: int = ERROR_EXAMPLES) -> dict[str, list[dict]]:
    """Up to ``k`` example rows of each error type in ``counts`` (type -> rows of that type),
    streaming ``errors/`` shards only until every type has its examples."""
    out: dict[str, list[dict]] = {t: [] for t in counts}
    for row in read_rows(paths, ["listing_id", "source", "stage", "error_type", "message"]):
        bucket = out.get(row["error_type"])
        if bucket is not None and len(bucket) < k:
            bucket.append(row)
        if all(len(b) >= min(k, counts[t]) for t, b in out.items()):
            break
    return out


@dataclass
class Evidence:
    """A top violation's listing as decoded and re-scored for its card."""

    title: str
    decoded: DecodedListing
    score: ListingScore


def listings_with_ids(files: Sequence[str], columns: Sequence[str], attribute_columns: Sequence[str],
                      ids: pa.Array, input_format: str = "auto") -> Iterator[RawListing]:
    """The input rows whose listing_id is in ``ids``, a row group (or text block) at a time,
    read by the scan's own reader (``transforms.listings``: the same columns, the same row
    groups and blocks). A file, row group or block that cannot be read has none: the scan
    reported it in ``errors/`` (``--skip-bad-files``), or failed."""
    for path in files:
        try:
            groups = file_row_groups(path, attribute_columns, input_format)
        except (InputSchemaError, UnreadableInputError) as exc:
            log.warning("report: %s; skipped", redact(str(exc)))
            continue
        for group in groups:
            try:
                yield from read_row_group(group, columns, attribute_columns, ids)
            except UnreadableInputError as exc:
                log.warning("report: %s %d of %s cannot be read (%s); skipped",
                            "row group" if isinstance(group, RowGroup) else "block", group.index + 1,
                            redact(group.path), type(exc.__cause__).__name__)


CHANGED = "the listing changed since the scan: its image or text is not what was scored"


def violation_hashes(paths: Sequence[str], ids: set[str]) -> dict[str, set[str]]:
    """The ``content_hash`` of every violation in ``scores/`` shards whose id is in ``ids``."""
    out: dict[str, set[str]] = {}
    for row in read_rows(paths, ["listing_id", "verdict", "content_hash"]):
        if row["listing_id"] in ids and row["verdict"] == "violation":
            out.setdefault(row["listing_id"], set()).add(row["content_hash"])
    return out


def find_listings(files: Sequence[str], columns: Sequence[str], attribute_columns: Sequence[str],
                  ids: set[str], decoder: ListingDecoder, hashes: Mapping[str, set[str]] | None = None,
                  input_format: str = "auto") -> dict[str, tuple[str, DecodedListing] | str]:
    """The listings ``ids`` as (title, decoded listing) from the input shards, or why one
    cannot be shown. Each row's image is fetched once, and, where ``hashes`` (id -> the
    ``content_hash`` values the scan recorded) knows the id, shown only when the row hashes
    as the scan saw it: a source that now serves another image is :data:`CHANGED`, never a
    picture the model did not score. Reading stops once every id is found."""
    found: dict[str, tuple[str, DecodedListing] | str] = {}
    if not ids:
        return found
    for raw in listings_with_ids(files, columns, attribute_columns, pa.array(sorted(ids), pa.string()), input_format):
        if not isinstance(found.get(raw.listing_id, ""), str):
            continue                        # shown already (a duplicate id)
        try:
            decoder.check_text(raw)
            data = decoder.image(raw)
            wanted = (hashes or {}).get(raw.listing_id)
            if wanted is not None and decoder.listing_hash(raw, data) not in wanted:
                found.setdefault(raw.listing_id, CHANGED)
                continue
            found[raw.listing_id] = (raw.title, decoder.decode(raw, data))
        except Exception as exc:  # the input changed since the scan, or a source went away
            # The type only: a message may quote an image_uri, credentials and all.
            found.setdefault(raw.listing_id, f"cannot decode the listing again: {type(exc).__name__}")
        if len(found) == len(ids) and not any(isinstance(v, str) for v in found.values()):
            break                           # the rest of the input is not read
    return found


def explain_listings(found: Mapping[str, tuple[str, DecodedListing] | str], matcher: Matcher
                     ) -> dict[str, Evidence | str]:
    """Re-score decoded listings in batches, as the scan's ``ListingScorer`` does."""
    decoded = [(lid, v) for lid, v in found.items() if not isinstance(v, str)]
    out: dict[str, Evidence | str] = {lid: v for lid, v in found.items() if isinstance(v, str)}
    scorer = ListingScorer(matcher)
    for s in range(0, len(decoded), matcher.batch_size):
        chunk = decoded[s:s + matcher.batch_size]
        scores = scorer.score(stack_batch([d for _, (_, d) in chunk], len(chunk)))
        out.update({lid: Evidence(title, d, score) for (lid, (title, d)), score in zip(chunk, scores)})
    return out


# ---------------------------------------------------------------------------- HTML pieces
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` HTML-escaped (quotes included), with control characters (NUL, ESC, CR, ...)
    shown as ``\\xNN`` instead of being written raw into the page."""
    return html.escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), quote=True)


def esc(value: Any, limit: int = MAX_TEXT) -> str:
    """Any value as :func:`visible` text, cut to ``limit`` characters."""
    text = "" if value is None else str(value)
    return visible(text[:limit] + ("\u2026" if len(text) > limit else ""))


def data_uri(image: Image.Image) -> str:
    """A picture re-encoded as a small JPEG ``data:`` URI (at most THUMB_PX on a side)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_PX, THUMB_PX), Image.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def title_html(title: str, spans: Sequence[tuple[int, int]], limit: int = MAX_TEXT) -> str:
    """The title as written, escaped and cut to ``limit`` characters, with the words of
    each token span (over ``ecomatch_model.text.words(title)``) in ``<mark>``."""
    shown, pos, parts = title[:limit], 0, []
    offsets = word_offsets(shown)           # token k of the shown part is token k of the title
    marks = sorted({(offsets[s][0], offsets[e - 1][1]) for s, e in spans if 0 <= s < e <= len(offsets)})
    for a, b in marks:
        if a < pos:                         # overlapping spans: the first one wins
            continue
        parts += [visible(shown[pos:a]), "<mark>", visible(shown[a:b]), "</mark>"]
        pos = b
    parts.append(visible(shown[pos:]))
    return "".join(parts) + ("\u2026" if len(title) > limit else "")


def meter_svg(score: float, threshold: float, low: float = 0.0, high: float = 1.0, width: int = 110,
              invert: bool = False) -> str:
    """A score bar on [low, high] with a tick at the threshold, red when below it (``invert``:
    when at or above it, as for a probability of a contradiction against the verdict cut)."""
    def x(v: float) -> float:
        return round(width * min(max((v - low) / (high - low), 0.0), 1.0), 1)

    colour = "#c62828" if (score >= threshold if invert else score < threshold) else "#2e7d32"
    return (f'<svg width="{width}" height="10" role="img" aria-label="score {score:.2f}, threshold {threshold:.2f}">'
            f'<rect width="{width}" height="10" fill="#e3e5e8"/><rect width="{x(score)}" height="10" fill="{colour}"/>'
            f'<rect x="{max(x(threshold) - 1, 0)}" width="2" height="10" fill="#111"/></svg>')


def bar_chart_svg(counts: Mapping[str, int], width: int = 420) -> str:
    """Horizontal bars, one per key, labelled with the key and the count."""
    top, label_w, row_h = max([*counts.values(), 1]), 110, 22
    bar_w = width - label_w - 50
    parts = [f'<svg width="{width}" height="{row_h * len(counts) + 4}" role="img" aria-label="violations per kind">']
    for i, (key, n) in enumerate(counts.items()):
        y, w = i * row_h + 2, round(bar_w * n / top, 1)
        parts.append(f'<text x="0" y="{y + 15}" font-size="13">{esc(key)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="14" fill="#c62828">'
                     f'<title>{esc(key)}: {n}</title></rect>'
                     f'<text x="{label_w + w + 6}" y="{y + 15}" font-size="13">{n}</text>')
    return "".join(parts) + "</svg>"


def histogram_svg(bins: Sequence[int], cut: float, width: int = 420, height: int = 150) -> str:
    """Equal bins of p_violation over [0, 1] as vertical bars on a square-root scale (so that
    a few violations show beside many ok listings); bins above the verdict ``cut`` in red, a
    line at the cut, the count of each bin in its tooltip."""
    k, top, plot_h = len(bins), max([*bins, 1]), height - 22
    bw = width / max(k, 1)
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="severity histogram">']
    for i, n in enumerate(bins):
        h = round(plot_h * (n / top) ** 0.5, 1)
        colour = "#c62828" if (i + 1) / k > cut else "#78909c"
        parts.append(f'<rect x="{i * bw + 1:.1f}" y="{plot_h - h}" width="{bw - 2:.1f}" height="{h}" fill="{colour}">'
                     f'<title>p_violation {i / k:.2f}-{(i + 1) / k:.2f}: {n}</title></rect>')
    x = round(width * min(max(cut, 0.0), 1.0), 1)
    parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{plot_h}" stroke="#111" stroke-dasharray="3"/>'
                 f'<text x="0" y="{height - 6}" font-size="12">0</text>'
                 f'<text x="{min(x + 4, width - 90)}" y="{height - 6}" font-size="12">cut {cut:.3f}</text>'
                 f'<text x="{width - 14}" y="{height - 6}" font-size="12">1</text>')
    return "".join(parts) + "</svg>"


def _attribute_index(score: ListingScore, kind: str, value: str) -> int | None:
    return next((j for j, a in enumerate(score.attributes) if (a.kind, a.value) == (kind, value)), None)


def _score_note(score: float | None) -> str:
    return "" if score is None else f" ({score:.2f})"


def card_html(rank: int, row: Mapping[str, Any], evidence: Evidence | str | None, policy: Policy,
              carry_columns: Sequence[str] = ()) -> str:
    """One violation's card: photo and heatmaps of its findings (the blamed attribute first),
    the title with their words marked, each finding's score and probability of a
    contradiction and the model's suggested value, the global match, the reasons, the
    listing's source, image_uri and carried columns, and the confirm / false-alarm buttons."""
    kind = row["worst_kind"] or MATCH
    findings = row["attributes"] or []
    pics: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    origins: dict[tuple[str, str], str] = {}
    if isinstance(evidence, Evidence):
        view = pixels_image(evidence.decoded.pixels)
        pics.append((data_uri(view), "photo as the model saw it"))
        for f in findings:
            j = _attribute_index(evidence.score, f["kind"], f["value"])
            if j is None:
                continue
            a, origin = evidence.score.attributes[j], evidence.decoded.origins[j]
            origins[(f["kind"], f["value"])] = origin
            spans += [a.span] if origin == "title" else []
            if len(pics) <= MAX_HEATMAPS:
                pics.append((data_uri(overlay_heatmap(view, a.attention)), f"where it looked for {f['kind']} "
                                                                           f"\u201c{f['value']}\u201d"))
        title = f'<h3 class="title">{title_html(evidence.title, spans)}</h3>'
    else:
        title = f'<h3 class="title muted">{esc(evidence or "listing not found in the input shards")}</h3>'
    where = [row.get("source") or (evidence.decoded.source if isinstance(evidence, Evidence) else None),
             row.get("image_uri")]
    source = "".join(f'<div class="muted mono">{esc(w)}</div>' for w in where if w)
    source += "".join(f'<div class="carried"><span class="muted">{esc(c)}</span> {esc(row.get(c) or "-")}</div>'
                      for c in carry_columns)
    figures = "".join(f'<figure><img src="{uri}" alt="{esc(caption)}" width="{THUMB_PX}" height="{THUMB_PX}">'
                      f'<figcaption>{esc(caption)}</figcaption></figure>' for uri, caption in pics)
    attr_rows = "".join(
        f'<tr><td>{esc(f["kind"])}</td><td>{esc(f["value"])} <span class="muted">'
        f'({esc(origins.get((f["kind"], f["value"]), "title or column"))})</span></td>'
        f'<td>{f["score"]:.3f}</td><td>{meter_svg(f["p_contradicted"], policy.cut, invert=True)} '
        f'<span class="{"fail" if f["p_contradicted"] >= policy.cut else ""}">{f["p_contradicted"]:.3f}</span></td>'
        f'<td>{esc(f["suggested_value"] or "-")}{_score_note(f["suggested_score"])}</td></tr>' for f in findings)
    match = row["match_score"]
    match_p = policy.probability(policy.check_log_lr(MATCH, match))
    attr_rows += (f'<tr><td>match</td><td class="muted">image vs whole title</td><td>{match:.3f}</td><td>'
                  f'{meter_svg(match_p, policy.cut, invert=True)} <span class="{"fail" if match_p >= policy.cut else ""}">'
                  f'{match_p:.3f}</span></td><td></td></tr>')
    reasons = "".join(f"<li>{esc(r)}</li>" for r in (row["reasons"] or [])[:MAX_REASONS])
    return (f'<article class="card" id="v{rank}" data-rank="{rank}" data-kind="{esc(kind)}" '
            f'data-listing-id="{html.escape(str(row["listing_id"]), quote=True)}" '
            f'data-severity="{row["severity"]!r}"><div class="pics">{figures}</div><div>{title}'
            f'<div><span class="sev">p_violation {row["severity"]:.3f}</span> &middot; blamed: <b>{esc(kind)}</b> '
            f'&middot; #{rank} &middot; <span class="mono">{esc(row["listing_id"])}</span></div>{source}'
            f'<table class="attrs"><tr><th>kind</th><th>listing says</th><th>raw score</th>'
            f'<th>probability of a contradiction</th><th>model suggests</th></tr>{attr_rows}</table>'
            f'<ul>{reasons}</ul><div class="decide"><button type="button" data-decision="confirmed" '
            f'aria-pressed="false">confirm</button><button type="button" data-decision="false_alarm" '
            f'aria-pressed="false">false alarm</button></div></div></article>')


def operating_point_html(calibration: Mapping[str, Any]) -> str:
    """The operating point in words: the cut, how it was chosen, and what it is expected to
    give (precision and recall at the stated prevalence, false-positive rate)."""
    op = calibration.get("operating_point", {})
    rule = (f"chosen for expected precision {float(op['precision']):.2f}" if "precision" in op else
            f"chosen for a review budget of {op['review_budget_per_10k']} flags per 10,000 listings"
            if "review_budget_per_10k" in op else "")
    def num(key: str) -> str:
        v = op.get(key)
        return f"{float(v):.3f}" if isinstance(v, (int, float)) else "?"
    return (f'<div id="operating-point">violation when p_violation &ge; <b>{float(calibration["cut"]):.4f}</b> '
            f'{esc(rule)} at prevalence {float(calibration["prevalence"]):g}; expected precision '
            f'<b>{num("expected_precision")}</b>, recall <b>{num("expected_recall")}</b>, false-positive rate '
            f'<b>{num("false_positive_rate")}</b> on the calibration listings (source: '
            f'{esc(calibration.get("source", "?"))})</div>')


def summary_html(summary: Mapping[str, Any], histogram: Sequence[int]) -> str:
    """Counts, violations per kind, the p_violation histogram, model, operating point, time."""
    c = summary["counts"]
    stats = [("read", "read", c["read"]), ("scored", "scored", c["scored"]), ("ok", "ok", c["ok"]),
             ("violations", "violations", c["violations"]), ("errors", "errors", c["errors"]),
             ("seconds", "seconds", f'{summary["seconds"]:.1f}'),
             ("throughput", "listings / s", f'{summary["listings_per_second"]:.1f}')]
    calibration = summary["calibration"]
    model = summary["model"]
    return ('<section id="summary"><h2>Summary</h2><div class="stats">'
            + "".join(f'<div class="stat" id="count-{key}"><b>{esc(v)}</b>{label}</div>' for key, label, v in stats)
            + '</div><div class="charts"><div class="panel"><h2>Violations per kind</h2>'
            + bar_chart_svg(c["violations_per_kind"])
            + '</div><div class="panel"><h2>p_violation of every scored listing</h2>'
            '<div class="muted">listings per bin, square-root scale</div>'
            + histogram_svg(histogram, float(calibration["cut"]))
            + f'</div><div class="panel"><h2>Model and operating point</h2><div>model <b>{esc(model["name"])}</b></div>'
            f'<div class="mono">sha256 {esc(model["sha256"])}</div>{operating_point_html(calibration)}</div>'
            f'<div class="panel"><h2>Run</h2><table>'
            f'<tr><td>input</td><td class="mono">{esc(summary["input"]["pattern"])} '
            f'({summary["input"]["files"]} files)</td></tr>'
            f'<tr><td>output</td><td class="mono">{esc(summary["output"])}</td></tr>'
            f'<tr><td>runner</td><td>{esc(summary["runner"])}</td></tr>'
            f'<tr><td>started</td><td>{esc(summary["started_at"])}</td></tr>'
            f'<tr><td>finished</td><td>{esc(summary["finished_at"])}</td></tr></table></div></div></section>')


def sellers_html(sellers: Mapping[str, Any] | None) -> str:
    """The sellers with the most violations (``summary.json``'s ``sellers``), when a seller column was carried."""
    if not sellers:
        return ""
    rows = "".join(f'<tr class="seller"><td class="mono">{esc(r["seller"])}</td><td>{int(r["violations"])}</td>'
                   f'<td>{int(r["scored"])}</td><td>{float(r["share"]):.1%}</td></tr>' for r in sellers["top"])
    return (f'<section id="sellers"><h2>Sellers with the most violations</h2><p class="muted">'
            f'{int(sellers["with_violations"])} sellers (column <span class="mono">{esc(sellers["column"])}</span>) '
            f'have at least one violation; the {len(sellers["top"])} with the most:</p><table><tr><th>seller</th>'
            f'<th>violations</th><th>scored listings</th><th>share</th></tr>{rows}</table></section>')


def errors_html(per_type: Mapping[str, int], examples: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Error types by count, each with a few example listings and messages."""
    if not per_type:
        return '<section id="errors"><h2>Errors</h2><p>No errors: every listing read was scored.</p></section>'
    ranked = sorted(per_type.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = "".join(
        f'<tr class="error-type"><td><b>{esc(t)}</b></td><td>{n}</td><td><ul>'
        + "".join(f'<li><span class="mono">{esc(e["listing_id"])}</span> ({esc(e["stage"])}, '
                  f'<span class="mono">{esc(e["source"])}</span>): {esc(e["message"])}</li>'
                  for e in examples.get(t, []))
        + "</ul></td></tr>" for t, n in ranked[:MAX_ERROR_TYPES])
    more = (f"<p>{len(ranked) - MAX_ERROR_TYPES} more error types in errors/.</p>"
            if len(ranked) > MAX_ERROR_TYPES else "")
    return (f'<section id="errors"><h2>Errors</h2><table><tr><th>error type</th><th>listings</th>'
            f'<th>examples</th></tr>{rows}</table>{more}</section>')


def render_report(summary: Mapping[str, Any], histogram: Sequence[int], rows: Sequence[Mapping[str, Any]],
                  evidence: Mapping[str, Evidence | str], examples: Mapping[str, Sequence[Mapping[str, Any]]],
                  top_n: int, policy: Policy) -> str:
    """The whole page."""
    c = summary["counts"]
    in_report: dict[str, int] = {}
    for r in rows:
        in_report[r["worst_kind"] or MATCH] = in_report.get(r["worst_kind"] or MATCH, 0) + 1
    options = "".join(f'<option value="{esc(k)}">{esc(k)} ({in_report.get(k, 0)} of {n})</option>'
                      for k, n in c["violations_per_kind"].items() if n or in_report.get(k))
    carry = list(summary.get("carry_columns") or [])
    cards = "".join(card_html(i + 1, r, evidence.get(r["listing_id"]), policy, carry) for i, r in enumerate(rows))
    sha = esc(summary["calibration"].get("sha256", ""))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="referrer" content="no-referrer">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>ecomatch report: {c["violations"]} violations</title><style>{STYLE}</style></head>'
            f'<body data-calibration-sha256="{sha}">'
            f'<header><h1>ecomatch violation report</h1><div>{esc(summary["input"]["pattern"])} &middot; '
            f'finished {esc(summary["finished_at"])}</div></header>'
            + summary_html(summary, histogram) + sellers_html(summary.get("sellers"))
            + f'<section id="violations"><h2>Violations: the {len(rows)} likeliest of {c["violations"]}</h2>'
            f'<p class="muted">At most {top_n} per report (<span class="mono">--report-top</span>); all of them '
            f'are in <span class="mono">violations/</span>. Heatmaps show where the model looked for each '
            f'finding on the image it saw (red = most attention).</p>'
            f'<div class="controls"><label>kind <select id="kind"><option value="">all kinds ({len(rows)})</option>'
            f'{options}</select></label> <label>order <select id="sort">'
            f'<option value="desc">most likely first</option><option value="asc">least likely first</option>'
            f'</select></label> <span id="shown" class="muted">{len(rows)} shown</span> &middot; '
            f'<span id="decided" class="muted">0 decided</span> <button type="button" id="export-csv">export '
            f'decisions (CSV)</button> <button type="button" id="export-json">export decisions (JSON)</button></div>'
            f'<div class="cards" id="cards">{cards}</div></section>'
            + errors_html(c["errors_per_type"], examples)
            + f"<script>{SCRIPT}</script></body></html>\n")


def write_report(prefix: str, matcher: Matcher, policy: Policy, decoder: ListingDecoder, files: Sequence[str],
                 columns: Sequence[str], top_n: int = DEFAULT_TOP, input_format: str = "auto") -> str:
    """Write ``report.html`` under ``prefix`` from the scan's outputs there (``summary.json``
    must be final) and the input ``files`` (read ``columns``, in ``--input-format``); returns its path. ``matcher``,
    ``policy`` and ``decoder`` must be the scan's model, calibration and attribute columns."""
    summary = read_summary(prefix)
    shards = {name: [FileSystems.join(prefix, p) for p in summary["files"][name]]
              for name in (SCORES, VIOLATIONS, ERRORS)}
    rows = top_violations(shards[VIOLATIONS], top_n)
    log.info("report: the %d likeliest of %d violations; reading their listings again from %d input file(s)",
             len(rows), summary["counts"]["violations"], len(files))
    ids = {r["listing_id"] for r in rows}
    found = find_listings(files, columns, list(decoder.attribute_columns), ids, decoder,
                          violation_hashes(shards[SCORES], ids), input_format)
    log.info("report: re-scoring %d listings for their attention heatmaps, then writing %s",
             sum(isinstance(v, tuple) for v in found.values()), FileSystems.join(prefix, REPORT))
    page = render_report(summary, severity_histogram(shards[SCORES]), rows, explain_listings(found, matcher),
                         error_examples(shards[ERRORS], summary["counts"]["errors_per_type"]), top_n, policy)
    path = FileSystems.join(prefix, REPORT)
    with FileSystems.create(path, mime_type="text/html") as f:
        f.write(page.encode("utf-8"))
    log.info("wrote %s (%d violation cards, %d bytes)", path, len(rows), len(page.encode("utf-8")))
    return path


class _ReportFn(beam.DoFn):
    """Holds the scan's model (loaded once, in ``setup``, on the CPU as the launcher loads it)
    and writes ``report.html`` when the one ``summary.json`` element arrives; outputs its path."""

    def __init__(self, prefix: str, model: str, policy: Policy, decoder: ListingDecoder,
                 files: Sequence[str], columns: Sequence[str], top_n: int, input_format: str = "auto"):
        self._prefix, self._model, self._policy = prefix, model, policy
        self._decoder, self._files, self._columns, self._top_n = decoder, list(files), list(columns), top_n
        self._input_format = input_format
        self._matcher: Matcher | None = None

    def setup(self) -> None:
        self._matcher = load(self._model, device="cpu")

    def process(self, summary: Mapping[str, Any]) -> Iterator[str]:
        # The element only says that summary.json is written; the page is built from the files,
        # and only while they are this run's (another scan may have claimed the prefix since).
        if summary.get("run_id"):
            check_owner(self._prefix, summary["run_id"])
        yield write_report(self._prefix, self._matcher, self._policy, self._decoder, self._files, self._columns,
                           self._top_n, self._input_format)


class WriteHtmlReport(beam.PTransform):
    """The one ``summary.json`` dict that ``WriteReports`` outputs -> ``report.html`` under
    ``prefix``, written by a worker once every shard and ``summary.json`` are final (the
    element exists only then); returns a PCollection of its path. ``model`` (name, path or
    URL, loaded again on the worker as the model handler does) and ``policy`` are the scan's; ``decoder``, the input ``files`` and ``columns`` are the scan's too.
    A retried attempt writes the same page again."""

    def __init__(self, prefix: str, model: str, policy: Policy, decoder: ListingDecoder,
                 files: Sequence[str], columns: Sequence[str], top_n: int = DEFAULT_TOP, input_format: str = "auto"):
        super().__init__()
        self._fn = _ReportFn(prefix, model, policy, decoder, files, columns, top_n, input_format)

    def expand(self, summary: beam.PCollection[dict]) -> beam.PCollection[str]:
        return summary | "WriteHtml" >> beam.ParDo(self._fn)
