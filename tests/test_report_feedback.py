"""Reviewers' decisions fed back, end to end in headless Chromium: the report of a scan
opened from file://, every card decided with real mouse clicks (the reviewer confirms the
most severe two thirds, then alternates), the decisions exported as CSV and JSON (downloads
of the page's own Blob, caught by Chromium's download handler, under the page's CSP), then
``ecomatch calibrate --feedback`` on the CSV, and a rescan with the new calibration whose
cut moved as ``verdict.feedback_cut`` says. Chromium is driven over its DevTools pipe
(``--remote-debugging-pipe``: no port, no network). Skipped without chromium."""
from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import write_policy
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixture)
from test_pipeline_scan import sample_shards, scan

from ecomatch_model import cli
from ecomatch_model.feedback import parse_decisions
from ecomatch_model.verdict import feedback_cut

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: .ci/run installs Debian's "
                                                         "chromium before the tests")


class DevTools:
    """Headless Chromium and its DevTools protocol over the pipe (fd 3 in, fd 4 out, messages
    ending in NUL)."""

    def __init__(self, profile: Path):
        to_chrome, from_chrome = os.pipe(), os.pipe()
        # Kept off fds 3 and 4 in this process, so that the child can be given them there.
        self._r, self._w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome[0], from_chrome[1]))
        self._out, self._in = to_chrome[1], from_chrome[0]
        for fd in (to_chrome[0], from_chrome[1]):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(self._r, 3)
            os.dup2(self._w, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=child_fds)
        os.close(self._r), os.close(self._w)
        self._next, self._replies, self.events = 0, {}, queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        [page] = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._in, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                msg = json.loads(m)
                with self._lock:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                        self._lock.notify_all()
                    else:
                        self.events.put(msg)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        with self._lock:
            self._next += 1
            n = self._next
        msg = {"id": n, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        with self._lock:
            assert self._lock.wait_for(lambda: n in self._replies, timeout=60), method
            reply = self._replies.pop(n)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, self.session, **params)

    def wait(self, method: str, timeout: float = 60, **match: Any) -> dict:
        """The next event ``method`` whose params include ``match`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg["method"] == method and all(msg["params"].get(k) == v for k, v in match.items()):
                return msg["params"]

    def js(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse down and up) in the middle of the element."""
        x, y = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                       "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                       "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self._out)


def export(tools: DevTools, button: str, downloads: Path) -> bytes:
    tools.click(button)
    begun = tools.wait("Browser.downloadWillBegin")
    assert begun["url"].startswith("blob:file://") or begun["url"].startswith("blob:null")
    tools.wait("Browser.downloadProgress", guid=begun["guid"], state="completed")
    return (downloads / begun["suggestedFilename"]).read_bytes()


def test_review_export_recalibrate_rescan(tmp_path: Path, model_dir: str):
    out, downloads = tmp_path / "scan", tmp_path / "downloads"
    shards = tmp_path / "in" / "*.parquet"
    sample_shards(tmp_path / "in", 30, 2)
    kinds = json.loads((Path(model_dir) / "lexicon.json").read_text())["kinds"]
    scan_calibration = write_policy(tmp_path / "scan-calibration.json", {"match": 1.5, **{k["kind"]: 1.5 for k in kinds}})
    args = ["--input", str(shards), "--model", model_dir, "--batch-size", "8"]
    assert scan(*args, "--output", str(out), "--calibration", scan_calibration) == 0
    summary = json.loads((out / "summary.json").read_text())
    violations = {r["listing_id"]: r for r in pq.read_table(out / "violations").to_pylist()}
    ranked = sorted(violations, key=lambda i: (-violations[i]["severity"], i))
    assert len(violations) == 30
    # The reviewer: the 20 most severe are real, below them every other one is a false alarm.
    truth = {lid: k < 20 or k % 2 == 0 for k, lid in enumerate(ranked)}

    tools = DevTools(tmp_path / "profile")
    try:
        tools.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
        tools.page("Page.enable")
        tools.page("Page.addScriptToEvaluateOnNewDocument", source=(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"))
        tools.page("Page.navigate", url=(out / "report.html").as_uri())
        tools.wait("Page.loadEventFired")
        ids = tools.js("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.listingId)")
        assert ids == ranked
        for k, lid in enumerate(ids):
            card = f'.card[data-rank="{k + 1}"]'
            if k == 0:                                  # changes its mind: the last decision counts
                tools.click(f'{card} button[data-decision="{"false_alarm" if truth[lid] else "confirmed"}"]')
            tools.click(f'{card} button[data-decision="{"confirmed" if truth[lid] else "false_alarm"}"]')
        undecided = ids[-1]                                 # decided, then taken back
        tools.click(f'.card[data-rank="{len(ids)}"] button[data-decision="confirmed"]')
        if truth[undecided]:
            tools.click(f'.card[data-rank="{len(ids)}"] button[data-decision="confirmed"]')
        else:
            tools.click(f'.card[data-rank="{len(ids)}"] button[data-decision="false_alarm"]')
            tools.click(f'.card[data-rank="{len(ids)}"] button[data-decision="false_alarm"]')
        assert tools.js("document.getElementById('decided').textContent") == f"{len(ids) - 1} decided"
        assert tools.js("document.querySelector('.card[data-rank=\"1\"]').dataset.decision") == \
            ("confirmed" if truth[ids[0]] else "false_alarm")
        csv_bytes = export(tools, "#export-csv", downloads)
        json_bytes = export(tools, "#export-json", downloads)
        assert tools.js("window.__csp") == []               # nothing the page did was blocked by its CSP
    finally:
        tools.close()

    decisions = parse_decisions(csv_bytes, "csv")
    assert decisions == parse_decisions(json_bytes, "json")
    assert [d.listing_id for d in decisions] == ids[:-1]
    sha = summary["calibration"]["sha256"]
    for d in decisions:
        v = violations[d.listing_id]
        assert (d.confirmed, d.severity, d.worst_kind, d.calibration_sha256) == (
            truth[d.listing_id], v["severity"], v["worst_kind"] or "match", sha)

    # Recalibrate from the CSV: the rule, on exactly these decisions, says where the cut goes.
    feedback = tmp_path / "decisions.csv"
    feedback.write_bytes(csv_bytes)
    target = 0.9
    expected_cut, point = feedback_cut([d.severity for d in decisions], [d.confirmed for d in decisions],
                                       summary["calibration"]["cut"], target)
    assert expected_cut > summary["calibration"]["cut"]                               # false alarms move it up
    written = tmp_path / "calibration.json"
    assert cli.main(["calibrate", "--model", model_dir, "--calibration", scan_calibration, "--feedback",
                     str(feedback), "--precision", str(target), "--write", str(written)]) == 0
    policy = json.loads(written.read_text())
    assert policy["cut"] == pytest.approx(expected_cut)
    assert policy["fitted_on"]["feedback"]["file"] == str(feedback)
    assert policy["fitted_on"]["feedback"]["decisions"] == len(decisions)

    again = tmp_path / "rescan"
    assert scan(*args, "--output", str(again), "--calibration", str(written)) == 0
    rescan = json.loads((again / "summary.json").read_text())
    assert rescan["calibration"]["cut"] == pytest.approx(expected_cut)
    assert rescan["calibration"]["feedback"]["file"] == str(feedback)             # which feedback was used
    flagged = {r["listing_id"] for r in pq.read_table(again / "violations").to_pylist()}
    reviewed = {d.listing_id for d in decisions}
    assert flagged == {i for i, v in violations.items() if v["severity"] >= expected_cut}
    assert len(flagged & reviewed) == point["reviewed_at_cut"]
    assert sum(truth[i] for i in flagged & reviewed) / len(flagged & reviewed) >= target
    # Decisions on another calibration are refused, naming both.
    with pytest.raises(SystemExit, match=f"were made on calibration {sha[:12]}, not on {written}"):
        cli.main(["calibrate", "--model", model_dir, "--feedback", str(feedback), "--calibration", str(written),
                  "--write", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
