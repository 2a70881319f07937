"""DecodeListings: validation, image fetch and decode, tokenization, content hash."""
from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pipeline_fixtures import ATTRS, fn_api_pipeline, image, mixed_rows
from pipeline_fixtures import matcher_fixture  # noqa: F401 (fixtures)

from ecomatch_model.preprocess import to_uint8
from ecomatch_model.text import Mention
from transforms.decode import (DecodeListings, ListingDecoder, ListingError, UnsupportedImageError, content_hash,
                               image_bytes, image_format)
from transforms.errors import ErrorRecord
from transforms.listings import RawListing
from transforms.sources import ImageSourceRefusedError, ImageSources


def raw(row: dict, source: str = "s.parquet") -> RawListing:
    return RawListing(source, row.get("listing_id"), row.get("title"), row.get("image"), row.get("image_uri"),
                      {c: row[c] for c in ATTRS if row.get(c)})


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_image_format_accepts_the_contract_formats(fmt):
    assert image_format(image(fmt)) == fmt


def test_image_format_refuses_others():
    with pytest.raises(UnsupportedImageError, match="unsupported image format .*expected JPEG, PNG, WebP or GIF"):
        image_format(image("BMP"))


def test_image_bytes_prefers_inline_then_uri(tmp_path: Path):
    path = tmp_path / "x.png"
    path.write_bytes(b"from-file")
    here = ImageSources.for_scan(str(tmp_path / "*.parquet"))
    assert image_bytes(RawListing("s", "1", "t", b"inline", str(path))) == b"inline"
    assert image_bytes(RawListing("s", "1", "t", b"", str(path)), sources=here) == b"from-file"
    with pytest.raises(ListingError, match="over 4 bytes"):
        image_bytes(RawListing("s", "1", "t", None, str(path)), max_bytes=4, sources=here)
    with pytest.raises(ListingError, match="'image' and 'image_uri' are both empty"):
        image_bytes(RawListing("s", "1", "t", None, ""))
    with pytest.raises(FileNotFoundError):
        image_bytes(RawListing("s", "1", "t", None, str(tmp_path / "missing.png")), sources=here)
    with pytest.raises(ImageSourceRefusedError, match="outside the allowed prefixes"):   # by default nothing is fetched
        image_bytes(RawListing("s", "1", "t", None, str(path)))


def test_content_hash_covers_every_input():
    base = content_hash("m", "Red Shirt", [("colour", "red")], b"img")
    assert base == content_hash("m", "Red Shirt", [("colour", "red")], b"img")
    variants = [content_hash("n", "Red Shirt", [("colour", "red")], b"img"),
                content_hash("m", "Red Shirts", [("colour", "red")], b"img"),
                content_hash("m", "Red Shirt", [], b"img"),
                content_hash("m", "Red Shirt", [("colour", "red")], b"imh"),
                content_hash("m", "Red Shirtimg", [("colour", "red")], b"")]
    assert len({base, *variants}) == 6


def test_decoder_marks_column_attributes(matcher):
    dec = ListingDecoder.from_matcher(matcher, ATTRS)
    jpeg = image()
    out = dec(RawListing("s", "c", "Kestrel Women Dress", jpeg, None,
                         {"base_colour": "Navy Blue", "article_type": "Unknown Thing"}))
    n_title = len(matcher.text_encoder.tokens("Kestrel Women Dress"))
    assert out.mentions == [Mention("gender", "women", 1, 2), Mention("article_type", "dress", 2, 3),
                            Mention("colour", "navy blue", n_title, n_title + 2)]
    assert out.origins == ["title", "title", "base_colour"]
    assert np.array_equal(out.pixels, to_uint8(jpeg, matcher.image_size))
    assert out.content_hash == content_hash(matcher.sha256, "Kestrel Women Dress", [("colour", "navy blue")], jpeg)
    assert out.ids.shape == (matcher.cfg.text.max_len,)
    assert out.attr_mask.shape == (matcher.cfg.max_attrs, matcher.cfg.text.max_len)


@pytest.mark.parametrize("row, error", [
    ({"listing_id": "", "title": "t", "image": b"x"}, "listing_id is empty"),
    ({"listing_id": "1", "title": "  ", "image": b"x"}, "title is empty"),
])
def test_decoder_refuses_incomplete_rows(matcher, row, error):
    with pytest.raises(ListingError, match=error):
        ListingDecoder.from_matcher(matcher, ATTRS)(raw(row))


def _decoded_key(d) -> tuple:
    return (d.listing_id, d.source, d.content_hash, d.pixels.tobytes(), d.ids.tolist(), d.mask.tolist(),
            d.attr_mask.tolist(), d.attr_valid.tolist(), d.attr_value.tolist(), tuple(d.mentions), tuple(d.origins))


def test_decode_listings_splits_good_and_bad_rows(matcher, tmp_path: Path):
    rows = mixed_rows(tmp_path)
    enc = matcher.text_encoder
    expected = []
    for row, attrs, origins in [(rows[0], [("colour", "red")], None), (rows[1], [("article_type", "dress")], None),
                                (rows[2], [("colour", "navy blue")], "base_colour")]:
        data = row.get("image") or Path(row["image_uri"]).read_bytes()
        e = enc.encode([row["title"]], [attrs])
        mentions = e.mentions[0]
        expected.append((row["listing_id"], "s.parquet", content_hash(matcher.sha256, row["title"], attrs, data),
                         to_uint8(data, matcher.image_size).tobytes(), e.ids[0].tolist(), e.mask[0].tolist(),
                         e.attr_mask[0].tolist(), e.attr_valid[0].tolist(), e.attr_value[0].tolist(), tuple(mentions),
                         tuple("title" if origins is None or m.kind != "colour" else origins for m in mentions)))

    def check_errors(actual: list[ErrorRecord]) -> None:
        got = sorted(actual, key=lambda e: str(e.listing_id))
        want = [ErrorRecord(None, "s.parquet", "decode", "ListingError", "listing_id is empty"),
                ("d", "s.parquet", "decode", "ImageDecodeError", "cannot identify image"),
                ErrorRecord("e", "s.parquet", "decode", "UnsupportedImageError",
                            f"unsupported image format (leading bytes {image('BMP')[:12].hex()}); expected JPEG, "
                            "PNG, WebP or GIF")]
        fields = [(e.listing_id, e.source, e.stage, e.error_type, e.message) for e in got]
        if (len(got) != 3 or got[0] != want[0] or got[2] != want[2] or fields[1][:4] != want[1][:4]
                or not fields[1][4].startswith(want[1][4])):
            raise BeamAssertException(f"errors {got} != {want}")

    with fn_api_pipeline() as p:
        decoded, errors = (p | beam.Create([raw(r) for r in rows])
                           | DecodeListings(ListingDecoder.from_matcher(
                               matcher, ATTRS, sources=ImageSources.for_scan(str(tmp_path / "*.parquet")))))
        assert_that(decoded | beam.Map(_decoded_key), equal_to(expected), label="Decoded")
        assert_that(errors, check_errors, label="Errors")
