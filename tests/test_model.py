import pytest
import torch

from ecomatch_model.checkpoint import build_model
from ecomatch_model.config import get_config
from ecomatch_model.model import count_parameters, prunable_channels, resize_image_input
from ecomatch_model.prune import prune_model
from ecomatch_model.text import TextEncoder


def _batch(ckpt, titles, b=None):
    cfg = ckpt.model.cfg
    enc = TextEncoder(ckpt.vocab, ckpt.lexicon, cfg.text.max_len, cfg.max_attrs).encode(titles)
    torch.manual_seed(1)
    pixels = torch.randn(len(titles), 3, cfg.image.image_size, cfg.image.image_size)
    return pixels, enc, [torch.from_numpy(a) for a in (enc.ids, enc.mask, enc.attr_mask, enc.attr_valid, enc.attr_value)]


TITLES = ["Ardent Men Navy Blue Cotton Striped T-Shirt", "Red Dress", "", "Kestrel Women Casual Shoes"]


def test_towers_and_output_shapes(tiny_ckpt):
    m, cfg = tiny_ckpt.model, tiny_ckpt.model.cfg
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    tokens, pooled = m.image(pixels)
    assert tokens.shape == (4, cfg.image.grid ** 2, cfg.image.width) and pooled.shape == (4, cfg.image.width)
    states, tpooled = m.text(t[0], t[1])
    assert states.shape == (4, cfg.text.max_len, cfg.text.width) and tpooled.shape == (4, cfg.text.width)
    img_c, img_e = m.encode_image(pixels)
    assert img_c.shape[-1] == cfg.image.width // 4 == cfg.embed_dim   # r = 4 compression
    out = m(pixels, *t)
    a, v, g = cfg.max_attrs, cfg.n_values, cfg.image.grid
    assert out.image_embed.shape == out.text_embed.shape == (4, cfg.embed_dim)
    assert torch.allclose(out.image_embed.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out.match.shape == (4,) and out.match.abs().max() <= 1 + 1e-5
    assert out.attr_logits.shape == (4, a, v) and out.attr_score.shape == (4, a)
    assert out.attention.shape == (4, a, g, g)


def test_padded_attributes_are_masked(tiny_ckpt):
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    out = tiny_ckpt.model(pixels, *t)
    valid = torch.from_numpy(enc.attr_valid)
    assert valid[0].sum() == 5 and valid[2].sum() == 0
    # Valid slots: attention is a distribution over the grid; invalid slots are zero.
    sums = out.attention.sum((-1, -2))
    assert torch.allclose(sums[valid], torch.ones(int(valid.sum())), atol=1e-5)
    assert (out.attention[~valid] == 0).all() and (out.attr_score[~valid] == 0).all()
    # Logits outside the mention's kind are -inf; inside they are finite.
    kinds = tiny_ckpt.model.value_kind
    for b, a in valid.nonzero().tolist():
        own_kind = kinds[enc.attr_value[b, a]]
        row = out.attr_logits[b, a]
        assert torch.isinf(row[kinds != own_kind]).all() and torch.isfinite(row[kinds == own_kind]).all()


def test_text_padding_does_not_leak(tiny_ckpt):
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    out = tiny_ckpt.model(pixels, *t)
    ids = t[0].clone()
    real_rows = t[1].any(1, keepdim=True)
    ids[~t[1] & real_rows] = 7  # garbage in padded positions of non-empty titles
    out2 = tiny_ckpt.model(pixels, ids, *t[1:])
    assert torch.allclose(out.text_embed, out2.text_embed, atol=1e-5)
    assert torch.allclose(out.attr_score, out2.attr_score, atol=1e-5)


def test_batch_independence(tiny_ckpt):
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    full = tiny_ckpt.model(pixels, *t)
    one = tiny_ckpt.model(pixels[1:2], *[x[1:2] for x in t])
    assert torch.allclose(full.match[1:2], one.match, atol=1e-5)
    assert torch.allclose(full.attr_score[1:2], one.attr_score, atol=1e-5)


def test_prune_removes_40_percent_and_keeps_api(tiny_ckpt):
    m = tiny_ckpt.model
    pruned = prune_model(m)
    assert prunable_channels(pruned) == pytest.approx(0.6 * prunable_channels(m), abs=len(m.image.blocks) + len(m.text.blocks))
    assert count_parameters(pruned) < count_parameters(m)
    assert pruned.cfg.pruned and pruned.cfg.image.mlp_hidden == [int(h - round(h * 0.4)) for h in m.cfg.image.mlp_hidden]
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    out = pruned(pixels, *t)
    assert out.attr_logits.shape == m(pixels, *t).attr_logits.shape


def test_prune_is_exact_when_removed_channels_are_off(tiny_ckpt):
    m = tiny_ckpt.model
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "gate"):
                off = torch.randperm(mod.gate.numel())[: int(round(0.4 * mod.gate.numel()))]
                mod.gate[off] = 0.0
    pixels, enc, t = _batch(tiny_ckpt, TITLES)
    before = m(pixels, *t)
    after = prune_model(m)(pixels, *t)
    assert torch.allclose(before.match, after.match, atol=1e-5)
    assert torch.allclose(before.attr_score, after.attr_score, atol=1e-5)


def test_paper_config_size_after_pruning(lexicon):
    from ecomatch_model.text import Vocabulary
    cfg = get_config("paper")
    model = build_model(cfg, Vocabulary([], n_buckets=cfg.text.vocab_size - 1), lexicon)
    n = count_parameters(prune_model(model))
    assert abs(n - 38.6e6) / 38.6e6 < 0.10, n


def test_tiny_config_under_two_million(lexicon, vocab):
    assert count_parameters(build_model(get_config("tiny"), vocab, lexicon)) < 2_000_000


def test_config_overrides_for_ablations():
    from ecomatch_model.config import apply_overrides
    cfg = apply_overrides(get_config("base"), ["compression=1", "image.depth=2"])
    assert cfg.embed_dim == cfg.image.width and cfg.image.mlp_hidden == [512, 512]
    assert cfg.name == "base[compression=1,image.depth=2]"
    with pytest.raises(ValueError, match="unknown config field 'image.dropout'"):
        apply_overrides(get_config("base"), ["image.dropout=0.1"])


def test_resize_image_input_keeps_the_weights_and_resamples_positions(tiny_ckpt, tmp_path):
    from ecomatch_model.checkpoint import load_checkpoint, save
    m = tiny_ckpt.model
    with torch.no_grad():                       # a position embedding that is linear in x
        g, d = m.cfg.image.grid, m.cfg.image.width
        ramp = torch.linspace(-1, 1, g).view(1, 1, g, 1).expand(1, g, g, d)
        m.image.pos.copy_(ramp.reshape(1, g * g, d))
    big = resize_image_input(m, 128)            # 96 -> 128 pixels: a 12x12 -> 16x16 grid
    assert big.cfg.image.image_size == 128 and big.cfg.image.grid == 16 and "128" in big.cfg.name
    assert m.cfg.image.image_size == 96 and m.image.pos.shape[1] == 144          # the original is untouched
    pos = big.image.pos.detach().reshape(16, 16, d)
    assert torch.allclose(pos[:, 0], pos[:, 0, :1].expand(16, d)) and pos[0, 0, 0] < pos[0, 8, 0] < pos[0, 15, 0]
    same = {k for k, v in m.state_dict().items() if k != "image.pos" and torch.equal(v, big.state_dict()[k])}
    assert same == set(m.state_dict()) - {"image.pos"}
    _, _, t = _batch(tiny_ckpt, TITLES)
    out = big.eval()(torch.randn(4, 3, 128, 128), *t)
    assert out.attention.shape[-2:] == (16, 16)
    tiny_ckpt.model = big                       # it saves and loads as a model of its own shape
    save(tiny_ckpt, str(tmp_path / "m"))
    back = load_checkpoint(str(tmp_path / "m"))
    assert back.model.cfg.image.image_size == 128 and torch.equal(back.model.image.pos, big.image.pos)
