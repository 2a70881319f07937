import io

import numpy as np
import pytest
from PIL import Image

from conftest import threshold_policy

from ecomatch_model import api, load
from ecomatch_model.api import Matcher
from ecomatch_model.checkpoint import save
from ecomatch_model.data import swap_values
from ecomatch_model.preprocess import ImageDecodeError, letterbox, open_image, preprocess, to_uint8


def test_score_bytes_and_pil_agree(tiny_ckpt, tmp_path, red_jpeg):
    save(tiny_ckpt, str(tmp_path / "m"))
    m = load(str(tmp_path / "m"))
    pil = Image.open(io.BytesIO(red_jpeg))
    out = m.score([red_jpeg, pil], ["Ardent Men Red Cotton Shirt", "Ardent Men Red Cotton Shirt"])
    assert len(out) == 2
    a, b = out
    assert a.match == pytest.approx(b.match, abs=1e-4)
    assert [(x.kind, x.value, x.span) for x in a.attributes] == [
        ("gender", "men", (1, 2)), ("colour", "red", (2, 3)), ("material", "cotton", (3, 4)), ("article_type", "shirt", (4, 5))]
    for x in a.attributes:
        assert 0 <= x.score <= 1 and x.attention.shape == (m.cfg.image.grid,) * 2
        assert x.suggestion in m.lexicon.values_of(x.kind) and x.suggestion != x.value
        assert not hasattr(x, "threshold")            # raw scores: the verdict is the policy's
    assert not hasattr(a, "match_threshold") and not hasattr(m, "thresholds")


def test_embeddings_normalised(tiny_ckpt, red_jpeg):
    m = Matcher(tiny_ckpt)
    img = m.embed_images([red_jpeg] * 3)
    txt = m.embed_texts(["red shirt", "blue tee", ""])
    assert img.shape == (3, tiny_ckpt.model.cfg.embed_dim) == txt.shape
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    # The match score is the cosine of these embeddings.
    s = m.score([red_jpeg], ["red shirt"])[0]
    assert s.match == pytest.approx(float(img[0] @ txt[0]), abs=1e-4)


def test_letterbox_keeps_aspect_on_white():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    arr = letterbox(img, 16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8
    assert (arr[:, :4, :] == 255).all() and (arr[:, 12:, :] == 255).all() and (arr[:, 4:12, :] == 0).all()


def test_transparent_png_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(buf, "PNG")
    assert (to_uint8(buf.getvalue(), 8) == 255).all()


def test_bad_images_raise_clear_errors():
    with pytest.raises(ImageDecodeError, match="empty"):
        open_image(b"", 64)
    with pytest.raises(ImageDecodeError, match="cannot identify"):
        open_image(b"not an image", 64)
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="over the cap"):
        open_image(buf.getvalue(), 64, max_pixels=1_000_000)


def test_preprocess_normalises(red_jpeg):
    x = preprocess([red_jpeg], 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype.is_floating_point
    assert x[0, 0, 16, 16] > 1.0 and x[0, 1, 16, 16] < -1.0   # red stays red


def test_unknown_model_name_is_clear():
    with pytest.raises(FileNotFoundError, match="no model at 'nope'"):
        load("nope")


def test_the_swap_search_finds_the_mention_whose_swap_restores_the_match(tiny_ckpt, red_jpeg, monkeypatch):
    monkeypatch.setattr(api, "SWAP_CANDIDATES", 1000)                      # every value (the cap: next test)
    m = Matcher(tiny_ckpt, device="cpu")
    policy = threshold_policy({**{k: 0.0 for k in m.lexicon.kinds}, "match": 0.99})   # only the match can fail
    title = "Ardent Men Red Cotton Shirt"
    img = m.embed_images([red_jpeg])[0]
    other = np.random.default_rng(0).normal(size=img.shape)
    other = (other - (other @ img) * img) / np.linalg.norm(other - (other @ img) * img)   # cosine 0 with the image
    seen: list[str] = []

    def embed(texts, word="blue"):
        assert len(texts) % m.batch_size == 0           # whole batches: one input shape for the CPU kernels
        seen.extend(texts)
        return np.stack([img if word in t.split() else other for t in texts]).astype(np.float32)

    m.embed_texts = embed
    [(s, verdict)] = m.assess([red_jpeg], [title], policy=policy)
    assert policy.needs_swap_search(s)
    # Every mention swapped for every value of another group of its kind, one at a time.
    kinds = [a.kind for a in s.attributes]
    assert len(set(seen)) == sum(len(swap_values(m.lexicon, a.kind, a.value)) for a in s.attributes)
    assert "ardent men blue cotton shirt" in seen and "ardent women red cotton shirt" in seen
    [swap] = m.search_swaps(m.pixels([red_jpeg]), m.encode_texts([title]))
    assert swap.index == kinds.index("colour") and swap.value == "blue" and swap.match == pytest.approx(1.0, abs=1e-5)
    assert 0 <= swap.score <= 1
    assert verdict.violation and verdict.culprit == swap.index and verdict.worst_kind == "colour"

    m.embed_texts = lambda texts: embed(texts, word="no-such-word")   # no single swap restores the match
    [(_, verdict)] = m.assess([red_jpeg], [title], policy=policy)
    assert verdict.culprit is None and verdict.worst_kind == "match"

    # A failing attribute carries the strongest evidence: no swaps are tried.
    strict = threshold_policy({**{k: 0.0 for k in m.lexicon.kinds}, "colour": 1.0, "match": 0.99})
    seen.clear()
    [(_, verdict)] = m.assess([red_jpeg], [title], policy=strict)
    assert verdict.worst_kind == "colour" and not seen


def test_swaps_are_tried_for_the_values_aga_finds_likeliest(tiny_ckpt, red_jpeg, monkeypatch):
    monkeypatch.setattr(api, "SWAP_CANDIDATES", 3)
    m = Matcher(tiny_ckpt, device="cpu")
    title = "Ardent Men Red Cotton Shirt"
    seen: list[str] = []
    m.embed_texts = lambda texts: (seen.extend(texts), np.zeros((len(texts), m.cfg.embed_dim), np.float32))[1]
    enc = m.encode_texts([title])
    [swap] = m.search_swaps(m.pixels([red_jpeg]), enc)
    [s] = m.score([red_jpeg], [title])
    logits = m.forward(m.pixels([red_jpeg]), enc).attr_logits[0]
    j = [a.kind for a in s.attributes].index("colour")
    others = swap_values(m.lexicon, "colour", "red")
    top3 = sorted(others, key=lambda v: -float(logits[j, m.lexicon.value_id[("colour", v)]]))[:3]
    tried = {t[len("ardent men "):-len(" cotton shirt")] for t in seen
             if t.startswith("ardent men ") and t.endswith(" cotton shirt")}
    assert tried == set(top3) and len(set(seen)) == sum(min(3, len(swap_values(m.lexicon, a.kind, a.value)))
                                                         for a in s.attributes)
    assert swap.match == 0.0                                     # cosine 0 everywhere: nothing restores it
