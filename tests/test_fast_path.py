"""The inference fast path, as far as the CPU can check it: bf16 autocast against fp32,
uint8 pixels normalised on the device, the compile switch, the handler's options, the layout
``for_inference`` gives the model on CUDA, and the batched JPEG decode (``decode_batch``)
against the Pillow path it stands in for."""
from __future__ import annotations

import copy
import inspect
import io

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_fixtures import ATTRS
from pipeline_fixtures import matcher_fixture, model_dir_fixture  # noqa: F401 (fixtures)

from ecomatch_model import api
from ecomatch_model.api import CPU_BATCH_SIZE, GPU_BATCH_SIZE, Matcher, to_device
from ecomatch_model.model import align_for_gpu, for_inference
from ecomatch_model.preprocess import (ImageDecodeError, ImageTooLargeError, decode_batch, draft_factor,
                                       jpeg_header, normalize, preprocess, to_uint8)
from ecomatch_model.prune import prune_model
from ecomatch_model.sample import render_image
from ecomatch_model.text import TextEncoder
from transforms.decode import ListingDecoder
from transforms.listings import RawListing
from transforms.score import EcomatchModelHandler, ListingScorer, stack_batch

TITLES = ["Ardent Men Red Cotton T-Shirt", "Kestrel Women Navy Blue Dress", "Kestrel Women Striped Dress",
          "Ardent Men Black Jeans"]
# bf16 keeps 8 bits of mantissa: scores in [0, 1] and cosines in [-1, 1] move by a few 1e-3
# through the tiny model; 0.03 is ten times what was seen and far below any threshold gap.
BF16_TOL = 0.03


def photo(w: int, h: int, seed: int = 0, **save) -> bytes:
    """A rendered product photo (stripes, edges: harder on resampling than a flat colour)."""
    img = render_image("tshirt", "blue", "striped", np.random.default_rng(seed), size=128).resize((w, h))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png(w: int = 50, h: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), (10, 200, 30, 128)).save(buf, "PNG")
    return buf.getvalue()


def pillow_decoder(data: list, device: torch.device) -> list:
    """A stand-in for torchvision's batched decoder: full-resolution Pillow decode, (3, H, W)."""
    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB"))
                             .transpose(2, 0, 1).copy()).to(device) for t in data]


def flat(scores) -> np.ndarray:
    return np.array([[s.match] + [a.score for a in s.attributes] for s in scores], dtype=object)


def score_values(scores) -> np.ndarray:
    return np.concatenate([[s.match, *[a.score for a in s.attributes]] for s in scores]).astype(np.float64)


# ---------------------------------------------------------------------- Matcher fast path
def test_cpu_defaults_are_the_old_path(tiny_ckpt):
    m = Matcher(tiny_ckpt, device="cpu")
    assert (m.batch_size, m.precision, m._compiled) == (CPU_BATCH_SIZE, "fp32", None)
    assert Matcher(tiny_ckpt, device="cpu", batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="precision"):
        Matcher(tiny_ckpt, device="cpu", precision="fp16")


def test_uint8_pixels_normalised_on_the_device_give_identical_fp32_outputs(tiny_ckpt):
    m = Matcher(tiny_ckpt, device="cpu")
    images = [photo(60, 80, i) for i in range(3)]
    enc = m.encode_texts(TITLES[:3])
    raw = torch.from_numpy(np.stack([to_uint8(x, m.image_size) for x in images]))
    a, b = m.forward(normalize(raw), enc), m.forward(raw, enc)
    for field in ("image_embed", "text_embed", "match", "attr_logits", "attr_score", "attention"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    moved = to_device([raw, enc.ids], torch.device("cpu"))
    assert torch.equal(moved[0], raw) and np.array_equal(moved[1].numpy(), enc.ids)


def test_bf16_autocast_scores_are_float32_and_close_to_fp32(tiny_ckpt):
    images = [photo(60, 80, i) for i in range(4)]
    attrs = [[], [("colour", "red")], [], [("pattern", "striped")]]
    fp32 = Matcher(tiny_ckpt, device="cpu")
    ref = fp32.score(images, TITLES, attrs)
    bf16 = Matcher(tiny_ckpt, device="cpu", precision="bf16")
    got = bf16.score(images, TITLES, attrs)
    out = bf16.forward(bf16.pixels(images), bf16.encode_texts(TITLES, attrs))
    assert all(t.dtype == torch.float32 for t in (out.match, out.attr_score, out.attr_logits, out.attention))
    assert [[(a.kind, a.value) for a in s.attributes] for s in got] == [[(a.kind, a.value) for a in s.attributes]
                                                                          for s in ref]
    diff = np.abs(score_values(got) - score_values(ref))
    assert 0 < diff.max() < BF16_TOL      # bf16 did run (scores moved), and stayed close


def test_compile_switch_runs_the_forward_through_torch_compile(tiny_ckpt, monkeypatch):
    calls = []

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, *args):
            calls.append(len(args))
            return self.inner(*args)

    monkeypatch.setattr(api.torch, "compile", Compiled)
    images = [photo(60, 80, i) for i in range(2)]
    ref = Matcher(tiny_ckpt, device="cpu").score(images, TITLES[:2])
    got = Matcher(tiny_ckpt, device="cpu", compile=True).score(images, TITLES[:2])
    assert calls == [6]
    assert np.array_equal(score_values(got), score_values(ref))


# ---------------------------------------------------------------------- for_inference's one path
def model_inputs(ckpt, n: int = 4) -> list[torch.Tensor]:
    cfg = ckpt.model.cfg
    enc = TextEncoder(ckpt.vocab, ckpt.lexicon, cfg.text.max_len, cfg.max_attrs).encode(TITLES[:n])
    raw = np.stack([to_uint8(photo(60, 80, i), cfg.image.image_size) for i in range(n)])
    return [normalize(torch.from_numpy(raw)),
            *[torch.from_numpy(a) for a in (enc.ids, enc.mask, enc.attr_mask, enc.attr_valid, enc.attr_value)]]


def stem_input_is_nhwc(model, inputs) -> bool:
    seen = []
    hook = model.image.stem[0][0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        model(*inputs)
    hook.remove()
    x = seen[0]
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_the_cuda_layout_is_exact_on_the_cpu(tiny_ckpt):
    """align_for_gpu is all for_inference changes on CUDA: aligned MLP widths and an NHWC stem."""
    m = prune_model(copy.deepcopy(tiny_ckpt.model).eval())
    blocks = lambda model: [*model.image.blocks, *model.text.blocks]   # noqa: E731
    assert [b.mlp.fc1.out_features for b in blocks(m)] == [154] * 4    # pruned: unaligned
    inputs = model_inputs(tiny_ckpt)
    with torch.no_grad():
        ref = m(*inputs)
    fast = align_for_gpu(copy.deepcopy(m))
    assert [b.mlp.fc1.out_features for b in blocks(fast)] == [160] * 4
    assert [b.mlp.fc1.out_features for b in blocks(align_for_gpu(copy.deepcopy(fast)))] == [160] * 4   # once only
    with torch.no_grad():
        assert all((b.mlp.fc1.weight[154:] == 0).all() and (b.mlp.fc1.bias[154:] == 0).all()
                   and (b.mlp.fc2.weight[:, 154:] == 0).all() for b in blocks(fast))
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
               for c in fast.image.stem.modules() if isinstance(c, torch.nn.Conv2d))
    assert stem_input_is_nhwc(fast, inputs) and not stem_input_is_nhwc(m, inputs)
    with torch.no_grad():
        got = fast(*inputs)
    for name in ("image_embed", "text_embed", "match", "attr_logits", "attr_score", "attention"):
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=2e-5), name
    assert torch.equal(got.attr_logits.isinf(), ref.attr_logits.isinf())


def test_for_inference_has_one_path_and_on_the_cpu_only_copies(tiny_ckpt):
    assert list(inspect.signature(for_inference).parameters) == ["model", "device", "precision"]
    m = prune_model(copy.deepcopy(tiny_ckpt.model).eval())
    inputs = model_inputs(tiny_ckpt)
    cpu = for_inference(m, "cpu")
    assert cpu is not m and cpu.image.blocks[0].mlp.fc1.out_features == 154
    assert not stem_input_is_nhwc(cpu, inputs)
    with torch.no_grad():
        assert torch.equal(cpu(*inputs).attr_score, m(*inputs).attr_score)


# ---------------------------------------------------------------------- the ModelHandler
def decoded(matcher):
    dec = ListingDecoder.from_matcher(matcher, ATTRS)
    return [dec(RawListing("s.parquet", f"id{i}", t, photo(60, 80, i), None, {}))
            for i, t in enumerate(TITLES)]


def test_handler_scores_uint8_batches_exactly_as_before(matcher):
    batch = stack_batch(decoded(matcher), 8)
    before = matcher.results(matcher.forward(normalize(torch.from_numpy(batch.pixels)), batch.text),
                             batch.text)[: batch.n]
    now = ListingScorer(matcher).score(batch)
    assert np.array_equal(score_values(now), score_values(before))


def test_handler_options_reach_the_matcher(matcher, model_dir):
    xs = decoded(matcher)
    plain = EcomatchModelHandler(model_dir)
    assert plain.batch_elements_kwargs()["max_batch_size"] == CPU_BATCH_SIZE and not plain.share_model_across_processes()
    fast = EcomatchModelHandler(model_dir, batch_size=4, device="cpu", precision="bf16")
    scorer = fast.load_model()
    assert (scorer.matcher.precision, scorer.matcher.batch_size, scorer.matcher.device.type) == ("bf16", 4, "cpu")
    ref = [r.inference for r in plain.run_inference(xs, plain.load_model())]
    got = [r.inference for r in fast.run_inference(xs, scorer)]
    diff = np.abs(score_values(got) - score_values(ref))
    assert 0 < diff.max() < BF16_TOL


def test_a_cuda_handler_sizes_batches_for_the_gpu_and_shares_one_model():
    h = EcomatchModelHandler("default", device="cuda")        # built on a launcher without a GPU
    assert h.batch_elements_kwargs() == {"min_batch_size": GPU_BATCH_SIZE, "max_batch_size": GPU_BATCH_SIZE}
    assert h.share_model_across_processes() and h.model_copies() == 1
    assert EcomatchModelHandler("default", batch_size=128, device="cuda").batch_elements_kwargs()["max_batch_size"] == 128


# ---------------------------------------------------------------------- batched decode
def test_jpeg_header_reads_what_routes_an_image():
    assert jpeg_header(photo(90, 120)) == (90, 120, 3, True, 1)
    assert jpeg_header(photo(90, 120, progressive=True)).baseline is False
    exif = Image.Exif()
    exif[0x0112] = 6
    assert jpeg_header(photo(90, 120, exif=exif)).orientation == 6
    buf = io.BytesIO()
    Image.new("CMYK", (30, 20)).save(buf, "JPEG")
    assert jpeg_header(buf.getvalue()).components == 4
    assert jpeg_header(png()) is None and jpeg_header(b"\xff\xd8\xff\xe0garbage") is None


@pytest.mark.parametrize("w,h,size", [(800, 800, 80), (224, 224, 80), (60, 80, 80), (800, 600, 224)])
def test_draft_factor_is_pillows(w, h, size):
    img = Image.open(io.BytesIO(photo(w, h)))
    img.draft("RGB", (size, size))
    f = draft_factor(w, h, size)
    assert img.size == (-(-w // f), -(-h // f))


@pytest.mark.parametrize("w,h,size", [(60, 80, 80), (224, 224, 80), (224, 224, 224), (800, 600, 224), (90, 120, 96)])
def test_batched_decode_matches_pillow_within_resampling(w, h, size):
    images = [photo(w, h, i) for i in range(3)]
    got = decode_batch(images, size, "cpu", decoder=pillow_decoder).numpy().astype(int)
    ref = np.stack([to_uint8(x, size) for x in images]).astype(int)
    assert got.shape == ref.shape == (3, 3, size, size)
    diff = np.abs(got - ref)
    # Same decoder, so only the resampling differs: box for DCT scaling, torch's antialiased
    # bilinear for Pillow's. Measured: mean <= 0.8, max 16 on stripe edges at 224 -> 80.
    assert diff.mean() < 1.5 and diff.max() <= 32


def test_batched_decode_scores_like_the_pillow_path(tiny_ckpt):
    images = [photo(224, 224, i) for i in range(4)]
    m = Matcher(tiny_ckpt, device="cpu")
    enc = m.encode_texts(TITLES)
    ref = m.results(m.forward(preprocess(images, m.image_size), enc), enc)
    got = m.results(m.forward(decode_batch(images, m.image_size, "cpu", decoder=pillow_decoder), enc), enc)
    assert np.abs(score_values(got) - score_values(ref)).max() < 0.02


def test_fallback_is_exactly_pillow():
    images = [photo(60, 80, 0), png(), photo(90, 120, 1, progressive=True), photo(224, 224, 2)]
    ref = np.stack([to_uint8(x, 80) for x in images])
    assert np.array_equal(decode_batch(images, 80, "cpu", decoder=False).numpy(), ref)      # no decoder

    def broken(data, device):
        raise RuntimeError("nvjpeg says no")
    assert np.array_equal(decode_batch(images, 80, "cpu", decoder=broken).numpy(), ref)     # decoder fails

    def one_at_a_time(data, device):
        if len(data) > 1:
            raise RuntimeError("batch refused")
        return pillow_decoder(data, device)
    assert np.array_equal(decode_batch(images, 80, "cpu", decoder=one_at_a_time).numpy(),
                          decode_batch(images, 80, "cpu", decoder=pillow_decoder).numpy())

    seen = []

    def recording(data, device):
        seen.append(len(data))
        return pillow_decoder(data, device)
    got = decode_batch(images, 80, "cpu", decoder=recording).numpy()
    assert seen == [2]                                         # the two baseline JPEGs, in one batch
    for i in (1, 2):                                           # PNG and progressive JPEG: Pillow's result
        assert np.array_equal(got[i], ref[i])


def test_batched_decode_refuses_what_the_cpu_path_refuses():
    with pytest.raises(ImageDecodeError):
        decode_batch([photo(60, 80), b"\xff\xd8\xff\xe0 not really a jpeg"], 80, "cpu", decoder=pillow_decoder)
    with pytest.raises(ImageTooLargeError):
        decode_batch([photo(800, 600)], 80, "cpu", max_pixels=100_000, decoder=pillow_decoder)


def test_torchvision_decode_matches_pillow():
    pytest.importorskip("torchvision", reason="torchvision is optional; the GPU machine has it")
    from ecomatch_model.preprocess import torchvision_jpeg_decoder
    if torchvision_jpeg_decoder() is None:
        pytest.skip("torchvision.io cannot be imported with this torch")
    for w, h, size in [(60, 80, 80), (224, 224, 224), (800, 600, 224)]:
        images = [photo(w, h, i) for i in range(3)]
        got = decode_batch(images, size, "cpu").numpy().astype(int)
        ref = np.stack([to_uint8(x, size) for x in images]).astype(int)
        assert np.abs(got - ref).mean() < 2.0, (w, h, size)   # libjpeg builds and IDCTs may differ by a level


def test_bf16_weights_hold_the_towers_in_bf16_and_score_close_to_fp32(tiny_ckpt):
    images = [photo(60, 80, i) for i in range(4)]
    attrs = [[], [("colour", "red")], [], [("pattern", "striped")]]
    ref = Matcher(tiny_ckpt, device="cpu").score(images, TITLES, attrs)
    m = Matcher(tiny_ckpt, device="cpu", precision="bf16-weights")
    assert {p.dtype for p in m.model.image.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.model.text.parameters()} == {torch.bfloat16}
    assert m.model.aga.q.weight.dtype == torch.float32
    assert {p.dtype for p in tiny_ckpt.model.parameters()} == {torch.float32}   # the checkpoint is untouched
    got = m.score(images, TITLES, attrs)
    out = m.forward(m.pixels(images), m.encode_texts(TITLES, attrs))
    assert all(t.dtype == torch.float32 for t in (out.match, out.attr_score, out.attr_logits, out.attention))
    diff = np.abs(score_values(got) - score_values(ref))
    assert 0 < diff.max() < BF16_TOL


def test_min_factor_keeps_photos_seen_at_their_own_size_on_pillow():
    small, large = photo(60, 80, 0), photo(224, 224, 1)     # 1x and 2x an 80x80 input
    seen = []

    def recording(data, device):
        seen.append(len(data))
        return pillow_decoder(data, device)
    got = decode_batch([small, large, small], 80, "cpu", decoder=recording, min_factor=2).numpy()
    assert seen == [1]                                      # only the 224x224 photo went to the decoder
    assert np.array_equal(got[0], to_uint8(small, 80)) and np.array_equal(got[2], to_uint8(small, 80))
    seen.clear()
    decode_batch([small, large], 80, "cpu", decoder=recording)  # min_factor=1: both
    assert seen == [2]
    assert Matcher.__init__.__kwdefaults__["gpu_decode"] is None   # None: on for CUDA, off on the CPU


def test_gpu_decode_is_off_on_the_cpu(tiny_ckpt):
    assert Matcher(tiny_ckpt, device="cpu").gpu_decode is False
