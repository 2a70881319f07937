"""Fetching http(s) ``image_uri`` (``transforms/decode.py``, ``transforms/sources.py``):
concurrently within a bundle up to a bound, retried with backoff on 429, 5xx and reset
connections within the listing's deadline, never retried otherwise, and every failure an
error row as before. Every HTTP server here is one the test starts on 127.0.0.1; none
asserts on elapsed time: concurrency is what the server saw."""
from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from pipeline_fixtures import Server, fn_api_pipeline, image, send
from pipeline_fixtures import matcher_fixture  # noqa: F401 (fixtures)

from transforms.decode import DecodeListings, InputLimits, InputTooLargeError, ListingDecoder, UnsupportedImageError
from transforms.errors import ErrorRecord
from transforms.listings import RawListing
from transforms.sources import FetchLimits, ImageFetchError, ImageSourceRefusedError, ImageSources, retry_delay
from transforms.state import KeyedHash

PNG = image("PNG")
# Quick retries, and a deadline none of these tests reaches: the attempts are what ends them.
RETRY = FetchLimits(connect_timeout=2.0, read_timeout=2.0, deadline=20.0, attempts=3, backoff=0.01)


class Slow:
    """A route that answers with ``PNG`` after ``delay`` seconds, noting the most requests
    it was serving at once."""

    def __init__(self, delay: float):
        self.delay, self.in_flight, self.peak = delay, 0, 0
        self._lock = threading.Lock()

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay)      # the slow image server the pool overlaps
            send(PNG)(h)
        finally:
            with self._lock:
                self.in_flight -= 1


def answers(*routes):
    """A route that answers the n-th request with ``routes[n]`` (the last one thereafter)."""
    seen = []

    def route(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.path)
        routes[min(len(seen), len(routes)) - 1](h)
    return route


def hang_up(h: BaseHTTPRequestHandler) -> None:
    """Close the connection without an answer (the client sees it dropped)."""
    h.close_connection = True


def sources_for(server: Server, limits: FetchLimits = RETRY) -> ImageSources:
    return ImageSources.for_scan("x", [server.url + "/"], limits)       # an IP literal admits loopback


def test_http_images_are_fetched_concurrently_up_to_the_bound_and_the_rest_as_before(matcher, tmp_path: Path):
    slow = Slow(0.3)
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    with Server(slow) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=ImageSources.for_scan(
            "x", [server.url + "/", f"{tmp_path}/"], RETRY))
        raws = [RawListing("s.csv", f"h{i}", "Red Shirt", None, f"{server.url}/{i}.png") for i in range(16)]
        raws += [RawListing("s.csv", "inline", "Red Shirt", PNG), RawListing("s.csv", "local", "Red Shirt", None,
                                                                             str(local)),
                 RawListing("s.csv", "refused", "Red Shirt", None, "http://10.9.9.9/a.png"),
                 RawListing("s.csv", "no-title", "", None, f"{server.url}/never.png")]
        with fn_api_pipeline() as p:
            decoded, errors = p | beam.Create(raws) | DecodeListings(decoder, concurrency=4)
            assert_that(decoded | beam.Map(lambda d: d.listing_id),
                        equal_to([f"h{i}" for i in range(16)] + ["inline", "local"]))
            assert_that(errors | beam.Map(lambda e: (e.listing_id, e.stage, e.error_type)),
                        equal_to([("refused", "decode", "ImageSourceRefusedError"),
                                  ("no-title", "decode", "ListingError")]), label="Errors")
    assert 1 < slow.peak <= 4
    assert sorted(server.requests) == sorted(f"/{i}.png" for i in range(16))    # a refused row asks nothing


def test_a_concurrency_of_one_fetches_one_at_a_time(matcher):
    slow = Slow(0.05)
    with Server(slow) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=sources_for(server))
        with fn_api_pipeline() as p:
            decoded, _ = (p | beam.Create([RawListing("s", str(i), "Red Shirt", None, f"{server.url}/{i}.png")
                                           for i in range(4)]) | DecodeListings(decoder, concurrency=1))
            assert_that(decoded | beam.Map(lambda d: d.listing_id), equal_to(["0", "1", "2", "3"]))
    assert slow.peak == 1 and len(server.requests) == 4


def test_a_failed_fetch_is_the_same_error_row_as_before(matcher):
    """The error rows of the pooled fetches read as ``with_exception_handling`` made them."""
    with Server(answers(send(b"", 500))) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=sources_for(server))
        url = f"{server.url}/a.png?X-Goog-Signature=s3cret"
        with fn_api_pipeline() as p:
            _, errors = (p | beam.Create([RawListing("gs://b/s.jsonl", "a", "Red Shirt", None, url)])
                         | DecodeListings(decoder, concurrency=4))
            assert_that(errors, equal_to([ErrorRecord(
                "a", "gs://b/s.jsonl", "decode", "ImageFetchError",
                f"HTTP 500 for {server.url}/a.png?X-Goog-Signature=*** (after 3 attempts)")]))
    assert len(server.requests) == RETRY.attempts           # a permanent 500: the bounded attempts, then the row


def test_the_state_hashes_fetch_concurrently_too(matcher):
    slow = Slow(0.2)
    with Server(slow) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=sources_for(server))
        raws = [RawListing("s", str(i), "Red Shirt", None, f"{server.url}/{i}.png") for i in range(8)]
        raws.append(RawListing("s", "refused", "Red Shirt", None, "http://127.0.0.1:9/x.png"))   # another port
        expected = [(r.listing_id, decoder.listing_hash(r, PNG)) for r in raws[:8]] + [("refused", None)]
        with fn_api_pipeline() as p:
            keyed = p | beam.Create(raws) | beam.ParDo(KeyedHash(decoder, 4))
            assert_that(keyed | beam.Map(lambda kv: (kv[0], kv[1][0])), equal_to(expected))
    assert 1 < slow.peak <= 4


# ---------------------------------------------------------------------------- retries
def test_a_503_then_200_is_fetched_after_a_retry():
    with Server(answers(send(b"busy", 503), send(PNG))) as server:
        assert sources_for(server).fetch(server.url + "/a.png", 1 << 20) == PNG
    assert server.requests == ["/a.png", "/a.png"]


def test_a_reset_connection_is_retried():
    with Server(answers(hang_up, send(PNG))) as server:
        assert sources_for(server).fetch(server.url + "/a.png", 1 << 20) == PNG
    assert len(server.requests) == 2


def test_a_429_waits_as_long_as_retry_after_says():
    # The backoff alone would wait past the deadline; Retry-After's second is what lets it try again.
    limits = FetchLimits(connect_timeout=2.0, read_timeout=2.0, deadline=10.0, attempts=3, backoff=30.0)
    with Server(answers(send(b"", 429, {"Retry-After": "1"}), send(PNG))) as server:
        assert sources_for(server, limits).fetch(server.url + "/a.png", 1 << 20) == PNG
    assert len(server.requests) == 2
    with Server(answers(send(b"", 429, {"Retry-After": "3600"}))) as server:
        with pytest.raises(ImageFetchError, match=r"HTTP 429 for .*/a.png \(after 1 attempt; waiting 3600.0 s for "
                                                  "another would pass the listing's deadline\\)"):
            sources_for(server, limits).fetch(server.url + "/a.png", 1 << 20)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status, error", [(404, FileNotFoundError), (410, FileNotFoundError), (403, ImageFetchError),
                                           (400, ImageFetchError)])
def test_other_4xx_answers_are_not_retried(status: int, error: type):
    with Server(answers(send(b"", status), send(PNG))) as server:
        with pytest.raises(error, match=rf"^HTTP {status} for {server.url}/a.png$"):
            sources_for(server).fetch(server.url + "/a.png", 1 << 20)
    assert len(server.requests) == 1


def test_an_image_over_the_cap_is_cut_short_and_not_retried(matcher):
    def stream(h: BaseHTTPRequestHandler) -> None:      # no Content-Length: the cap is found by reading
        h.send_response(200)
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(b"x" * 1024)
        except OSError:
            pass
    for route, message in [(send(b"x" * 5000), "is 5000 bytes (Content-Length), over 1000 bytes"),
                           (stream, "is over 1000 bytes")]:
        with Server(answers(route, send(PNG))) as server:
            decoder = ListingDecoder.from_matcher(matcher, {}, InputLimits(max_image_bytes=1000), sources_for(server))
            with pytest.raises(InputTooLargeError, match=re.escape(f"image at {server.url}/big.png {message}")):
                decoder.image(RawListing("s", "1", "Red Shirt", None, server.url + "/big.png"))
        assert len(server.requests) == 1


def test_no_retry_for_a_refused_uri_or_what_is_no_image(matcher):
    with Server(answers(send(b"<html>not found</html>"))) as server:
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=sources_for(server))
        with pytest.raises(UnsupportedImageError):
            decoder(RawListing("s", "1", "Red Shirt", None, server.url + "/page"))
        with pytest.raises(ImageSourceRefusedError):
            decoder(RawListing("s", "2", "Red Shirt", None, f"http://127.0.0.2:{server.port}/a.png"))
    assert server.requests == ["/page"]


def test_retry_delays_back_off_with_jitter_or_follow_retry_after():
    limits = FetchLimits(backoff=0.5)
    for retry, base in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        assert base <= retry_delay(retry, None, limits) <= base * 1.1
    assert retry_delay(1, "7", limits) == 7.0 and retry_delay(3, " 0 ", limits) == 0.0
    assert 0.5 <= retry_delay(1, "Wed, 21 Oct 2026 07:28:00 GMT", limits) <= 0.55     # a date: the backoff
