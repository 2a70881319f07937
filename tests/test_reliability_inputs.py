"""Hostile input, one listing at a time: every corpus row through the decoder, the caps
(pixels, bytes, characters), bombs refused before any pixel is decoded, the memory one
element may take, and credentials masked in messages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import BAD_FILES, ImageServer, SilentServer, corpus_prefixes, gif_bomb, hostile_rows, png_bomb
from PIL import ImageFile
from pipeline_fixtures import image
from pipeline_fixtures import matcher_fixture  # noqa: F401 (fixtures)
from test_pipeline_decode import raw

from ecomatch_model.preprocess import ImageDecodeError, ImageTooLargeError, to_uint8
from transforms.decode import InputLimits, InputTooLargeError, ListingDecoder
from transforms.errors import redact
from transforms.listings import RawListing
from transforms.sources import FetchLimits, ImageSources

TESTS = Path(__file__).resolve().parent
MEMORY_BOUND = 1 << 30      # what decoding one image at the default pixel cap may take (docs/RELIABILITY.md)


def test_the_corpus_has_at_least_25_kinds(tmp_path: Path):
    kinds = {c.kind for c in hostile_rows(tmp_path, "http://127.0.0.1:9")} | set(BAD_FILES) | {"zero-rows"}
    assert len(kinds) >= 25, sorted(kinds)


def test_every_hostile_row_is_decoded_or_refused_precisely(matcher, tmp_path: Path):
    shapes = {}
    with ImageServer(image()) as server, SilentServer() as silent:
        sources = ImageSources.for_scan("", corpus_prefixes(tmp_path, server.url, silent.url), FetchLimits.within(2))
        decoder = ListingDecoder.from_matcher(matcher, {}, sources=sources)
        for case in hostile_rows(tmp_path, server.url, silent.url):
            if case.error_type is None:
                out = decoder(raw(case.row))
                shapes[case.kind] = [a.shape for a in (out.pixels, out.ids, out.mask, out.attr_mask, out.attr_valid)]
                continue
            with pytest.raises(Exception) as err:
                decoder(raw(case.row))
            assert (type(err.value).__name__, case.message in redact(str(err.value))) == (case.error_type, True), \
                (case.kind, str(err.value)[:300])
    # After decoding every listing is the same size, whatever its input (1x1, 20000x20, a 1 MB title...).
    assert len({str(s) for s in shapes.values()}) == 1 and len(shapes) >= 10, shapes


def test_bombs_are_refused_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError, match="AssertionError: pixels decoded"):   # the trap works...
        to_uint8(image("PNG"), 32)
    for bomb in (png_bomb(), gif_bomb()):                                             # ...and bombs never reach it
        with pytest.raises(ImageTooLargeError):
            to_uint8(bomb, 32)


def test_each_cap_refuses_just_over_it_with_a_precise_error(matcher, tmp_path: Path):
    jpeg = image("JPEG", size=(10, 10))
    (tmp_path / "i.jpg").write_bytes(jpeg)
    limits = InputLimits(max_image_bytes=len(jpeg), max_title_chars=10, max_pixels=100)
    sources = ImageSources.for_scan(str(tmp_path / "*.parquet"))
    decode = ListingDecoder.from_matcher(matcher, {}, limits, sources)
    decode(RawListing("s", "1", "Red Shirts", jpeg))                                  # every cap met exactly
    decode(RawListing("s", "1", "Red Shirts", None, str(tmp_path / "i.jpg")))
    refused = [
        (RawListing("s", "1", "Red Shirts!", jpeg), InputTooLargeError, "title is 11 characters, over 10"),
        (RawListing("s", "1", "Red Shirt", jpeg + b"\0"), InputTooLargeError,
         f"image is {len(jpeg) + 1} bytes, over {len(jpeg)} bytes"),
        (RawListing("s", "1", "Red Shirt", image("JPEG", size=(10, 11))), ImageTooLargeError,
         "image has 10x11 pixels, over the cap of 100"),
    ]
    for row, error, message in refused:
        with pytest.raises(error) as err:
            decode(row)
        assert str(err.value) == message
    with pytest.raises(InputTooLargeError, match=f"image at .*i.jpg is over {len(jpeg) - 1} bytes"):
        ListingDecoder.from_matcher(matcher, {}, InputLimits(max_image_bytes=len(jpeg) - 1), sources)(
            RawListing("s", "1", "Red Shirt", None, str(tmp_path / "i.jpg")))


MEMORY_CHILD = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from hostile import png_stream
from ecomatch_model.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, to_uint8

def address_space() -> int:
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024

side = int(DEFAULT_MAX_PIXELS ** 0.5)        # the largest square under the cap, in the costliest modes
worst = {"16-bit grey": png_stream(side, side, 16, 0, bytes(2 * side)),
         "RGBA": png_stream(side, side, 8, 6, bytes(4 * side))}
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (address_space() + int(sys.argv[2]), hard))
for name, data in worst.items():
    print("decoded", name, to_uint8(data, 96).shape, flush=True)
resource.setrlimit(resource.RLIMIT_AS, (address_space() + (64 << 20), hard))   # the limit is real:
try:
    to_uint8(worst["16-bit grey"], 96)
except (MemoryError, ImageDecodeError) as exc:
    print("refused under 64 MB:", type(exc).__name__, exc)
"""


def test_one_image_at_the_pixel_cap_decodes_within_the_memory_bound():
    """Each image the cap admits, in the costliest pixel modes, decodes in a process whose
    address space may grow by at most MEMORY_BOUND; the same image fails with 64 MB."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(TESTS), str(MEMORY_BOUND)], capture_output=True,
                         text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == ["decoded 16-bit grey", "decoded RGBA"], \
        out.stdout + out.stderr[-2000:]
    assert lines[2].startswith("refused under 64 MB:") and "MemoryError" in lines[2], out.stdout


def test_hostile_pixels_are_letterboxed_not_stretched():
    """The 20000x20 strip keeps its aspect: one row of blue across the middle of white."""
    px = to_uint8(image("JPEG", (0, 0, 255), size=(20000, 20)), 32)
    blue_rows = ((px[2] > 200) & (px[0] < 60)).any(axis=1)
    assert px.shape == (3, 32, 32) and np.flatnonzero(blue_rows).tolist() == [15] and (px[:, 0, :] == 255).all()


@pytest.mark.parametrize("text, masked", [
    ("https://seller:pa55@img.example.com/a.jpg", "https://***@img.example.com/a.jpg"),
    ("'gs://b/a.jpg?X-Goog-Signature=abc&X-Goog-Credential=me%2Fx&w=2'",
     "'gs://b/a.jpg?X-Goog-Signature=***&X-Goog-Credential=***&w=2'"),
    ("s3://b/a.jpg?X-Amz-Security-Token=t0k&sig=s1g", "s3://b/a.jpg?X-Amz-Security-Token=***&sig=***"),
    ("https://h/a.jpg?api_key=k3y&size=large", "https://h/a.jpg?api_key=***&size=large"),
    ("[Errno 2] No such file or directory: '/img/a.jpg'", "[Errno 2] No such file or directory: '/img/a.jpg'"),
    # the whole user-info, whatever it holds
    ("http://alice:s3cr@tPW@host/x.jpg", "http://***@host/x.jpg"),
    ("http://alice:pa/ss@host/x.jpg", "http://***@host/x.jpg"),
    ("http://alice:p?ss#w@host/x.jpg", "http://***@host/x.jpg"),
    ("https://token-only@host/x.jpg", "https://***@host/x.jpg"),
    ("cannot read 'ftp://u:p@h/a.jpg': timeout", "cannot read 'ftp://***@h/a.jpg': timeout"),
    # query and fragment values whose names look secret
    ("https://h/a.jpg#access_token=eyJ0&token_type=bearer&expires_in=3600",
     "https://h/a.jpg#access_token=***&token_type=***&expires_in=3600"),
    ("https://h/a.jpg?sessionid=abc123&w=2", "https://h/a.jpg?sessionid=***&w=2"),
    ("https://h/cb?code=4/0AY0e&state=xyz", "https://h/cb?code=***&state=xyz"),
    ("https://h/a?session=s1&sid=s2&auth=s3&Authorization=s4",
     "https://h/a?session=***&sid=***&auth=***&Authorization=***"),
    ("https://h/a?password=p&passwd=p&pwd=p&client_secret=s",
     "https://h/a?password=***&passwd=***&pwd=***&client_secret=***"),
    ("https://h/a?key=k&apikey=k&api-key=k&refresh_token=t",
     "https://h/a?key=***&apikey=***&api-key=***&refresh_token=***"),
    # signed URLs
    ("https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4&X-Goog-Credential=sa%40p&X-Goog-Signature=9f8e",
     "https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4&X-Goog-Credential=***&X-Goog-Signature=***"),
    ("https://b.s3.amazonaws.com/o.jpg?X-Amz-Credential=AKIA&X-Amz-Signature=abc&X-Amz-Security-Token=t&X-Amz-Date=1",
     "https://b.s3.amazonaws.com/o.jpg?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&X-Amz-Date=1"),
    ("https://a.blob.core.windows.net/c/o.jpg?sv=2021&sig=ab%2Bc&se=2026",
     "https://a.blob.core.windows.net/c/o.jpg?sv=2021&sig=***&se=2026"),
    ("https://d.cloudfront.net/o.jpg?Expires=1&Signature=abc&Key-Pair-Id=K1&Policy=eyJ",
     "https://d.cloudfront.net/o.jpg?Expires=1&Signature=***&Key-Pair-Id=***&Policy=***"),
    # left alone
    ("gs://b/shirt@2x.png", "gs://b/shirt@2x.png"),
    ("https://[::1]:8080/a.jpg?w=100&h=100", "https://[::1]:8080/a.jpg?w=100&h=100"),
    ("https://h:8080/@shop/a.jpg", "https://h:8080/@shop/a.jpg"),
])
def test_redact_masks_every_credential(text, masked):
    assert redact(text) == masked
