"""ScoreListings: the ModelHandler, fixed-shape batches and RunInference's dead letters."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pipeline_fixtures import ATTRS, fn_api_pipeline, image
from pipeline_fixtures import matcher_fixture, model_dir_fixture  # noqa: F401 (fixtures)

from conftest import threshold_policy

from ecomatch_model.preprocess import ImageDecodeError
from ecomatch_model.scores import ListingScore
from transforms.decode import DecodedListing, ListingDecoder
from transforms.errors import ErrorRecord, exception_message
from transforms.listings import RawListing
from transforms.score import (EcomatchModelHandler, ScoredListing, ScoreListings, SearchSwaps, SwapSearchHandler,
                              stack_batch)

TITLES = ["Ardent Men Red Cotton T-Shirt", "Kestrel Women Navy Blue Dress", "Kestrel Women Dress"]
COLOURS = [(200, 30, 30), (20, 30, 120), (240, 240, 240)]


def decoded_listings(matcher) -> list[DecodedListing]:
    dec = ListingDecoder.from_matcher(matcher, ATTRS)
    return [dec(RawListing("s.parquet", f"id{i}", t, image(colour=c), None, {"base_colour": "Red"} if i == 2 else {}))
            for i, (t, c) in enumerate(zip(TITLES, COLOURS))]


def assert_close(a: ListingScore, b: ListingScore) -> None:
    assert np.isclose(a.match, b.match, atol=1e-5)
    assert [(x.kind, x.value, x.suggestion) for x in a.attributes] == [(x.kind, x.value, x.suggestion) for x in b.attributes]
    assert np.allclose([x.score for x in a.attributes], [x.score for x in b.attributes], atol=1e-5)


def test_stack_batch_pads_to_a_fixed_shape(matcher):
    xs = decoded_listings(matcher)
    b = stack_batch(xs[:2], 4)
    assert b.n == 2
    assert b.pixels.shape == (4, 3, matcher.image_size, matcher.image_size)
    assert b.text.ids.shape == (4, matcher.cfg.text.max_len)
    assert b.text.attr_mask.shape == (4, matcher.cfg.max_attrs, matcher.cfg.text.max_len)
    assert np.array_equal(b.pixels[3], xs[1].pixels) and b.text.mentions[3] == xs[1].mentions


def test_handler_scores_like_the_python_api(matcher, model_dir):
    xs = decoded_listings(matcher)
    handler = EcomatchModelHandler(model_dir, batch_size=8)
    model = handler.load_model()
    results = list(handler.run_inference(xs, model))
    assert [r.example for r in results] == xs
    direct = matcher.score([image(colour=c) for c in COLOURS], TITLES, [[], [], [("colour", "red")]])
    for r, d in zip(results, direct):
        assert_close(r.inference, d)


def test_scores_do_not_depend_on_the_batch(matcher, model_dir):
    xs = decoded_listings(matcher)
    handler = EcomatchModelHandler(model_dir, batch_size=4)
    model = handler.load_model()
    together = [r.inference for r in handler.run_inference(xs, model)]
    alone = [next(iter(handler.run_inference([x], model))).inference for x in xs]
    for a, b in zip(together, alone):
        assert_close(a, b)


def test_handler_batching_and_sharing():
    handler = EcomatchModelHandler("default", batch_size=16)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 16, "max_batch_size": 16}
    assert handler.model_copies() == 1
    shared = EcomatchModelHandler("default", model_copies=2)
    assert shared.share_model_across_processes() and shared.model_copies() == 2


def test_score_listings_outputs_every_listing(matcher, model_dir):
    xs = decoded_listings(matcher)
    handler = EcomatchModelHandler(model_dir, batch_size=2)
    model = handler.load_model()
    expected = {r.example.listing_id: r.inference for r in handler.run_inference(xs, model)}

    def check(actual) -> None:
        got = {s.listing_id: s for s in actual}
        if sorted(got) != sorted(expected):
            raise BeamAssertException(f"listings {sorted(got)} != {sorted(expected)}")
        for lid, s in got.items():
            x = next(x for x in xs if x.listing_id == lid)
            assert (s.source, s.content_hash, s.origins) == (x.source, x.content_hash, x.origins)
            assert_close(s.score, expected[lid])

    with fn_api_pipeline() as p:
        scored, errors = p | beam.Create(xs) | ScoreListings(handler, threshold_policy({"match": -1.0}))
        assert_that(scored, check, label="Scored")
        assert_that(errors, equal_to([]), label="NoErrors")


class BrokenHandler(EcomatchModelHandler):
    """Fails every batch, as a device error would."""

    def run_inference(self, batch, model, inference_args=None):
        raise RuntimeError("device lost")


def test_a_failed_batch_becomes_one_error_per_listing(matcher, model_dir):
    xs = decoded_listings(matcher)
    with fn_api_pipeline() as p:
        scored, errors = p | beam.Create(xs) | ScoreListings(BrokenHandler(model_dir, batch_size=2),
                                                             threshold_policy({"match": -1.0}))
        assert_that(scored, equal_to([]), label="NothingScored")
        assert_that(errors, equal_to([ErrorRecord(x.listing_id, "s.parquet", "score", "RuntimeError", "device lost")
                                      for x in xs]), label="Errors")


def test_search_swaps_runs_only_for_the_listings_the_policy_asks_about(matcher, model_dir):
    xs = decoded_listings(matcher)
    handler = EcomatchModelHandler(model_dir, batch_size=4)
    model = handler.load_model()
    strict = threshold_policy({"match": 1.5})           # every listing fails the match alone: all are searched
    lenient = threshold_policy({"match": -1.5})         # none is a violation: none is searched
    raw = [r.inference for r in handler.run_inference(xs, model)]
    asked = [ScoredListing(x.listing_id, x.source, x.content_hash, list(x.origins), s,
                           decoded=x if strict.needs_swap_search(s) else None) for x, s in zip(xs, raw)]
    assert [a.decoded is not None for a in asked] == [bool(x.mentions) for x in xs]
    expected = dict(zip((x.listing_id for x in xs),
                        matcher.search_swaps(stack_batch(xs, 8).pixels, stack_batch(xs, 8).text, len(xs))))

    def check(actual) -> None:
        got = {s.listing_id: s for s in actual}
        assert sorted(got) == sorted(expected) and all(s.decoded is None for s in got.values())
        for lid, s in got.items():
            want = expected[lid] if next(x for x in xs if x.listing_id == lid).mentions else None
            assert (s.swap is None) == (want is None)
            if want is not None:
                assert (s.swap.index, s.swap.value) == (want.index, want.value)
                assert np.isclose(s.swap.match, want.match, atol=1e-5)

    with fn_api_pipeline() as p:
        out = p | beam.Create(asked) | SearchSwaps(SwapSearchHandler(handler))
        assert_that(out, check)
    assert not any(lenient.needs_swap_search(s) for s in raw)


class BrokenSwapHandler(SwapSearchHandler):
    def run_inference(self, batch, model, inference_args=None):
        raise RuntimeError("device lost")


def test_a_failed_swap_search_keeps_the_listings_without_a_swap(matcher, model_dir):
    xs = decoded_listings(matcher)
    handler = EcomatchModelHandler(model_dir, batch_size=4)
    raw = [r.inference for r in handler.run_inference(xs, handler.load_model())]
    asked = [ScoredListing(x.listing_id, x.source, x.content_hash, list(x.origins), s, decoded=x)
             for x, s in zip(xs, raw)]
    with fn_api_pipeline() as p:
        out = p | beam.Create(asked) | SearchSwaps(BrokenSwapHandler(handler))
        assert_that(out | beam.Map(lambda s: (s.listing_id, s.swap, s.decoded)),
                    equal_to([(x.listing_id, None, None) for x in xs]))


def test_exception_message_takes_the_last_traceback_line():
    tb = ["Traceback (most recent call last):\n", '  File "x.py", line 1\n',
          "ecomatch_model.preprocess.ImageDecodeError: cannot decode image: truncated\n"]
    assert exception_message(ImageDecodeError, "ImageDecodeError('x')", tb) == "cannot decode image: truncated"
    assert exception_message(ValueError, "ValueError('a\\nb')", ["ValueError: a\n", "b\n"]) == "ValueError('a\\nb')"
    assert exception_message(KeyError, "KeyError()", ["KeyError\n"]) == ""
