import json

import numpy as np
import pytest
import torch

from ecomatch_model.checkpoint import load_checkpoint
from ecomatch_model.config import get_config
from ecomatch_model.data import Listings, concat_listings, content_split, corrupt_attribute, swap_values
from ecomatch_model.preprocess import decode_images, normalize
from ecomatch_model.sample import make_listings
from ecomatch_model.text import TextEncoder, words
from ecomatch_model.train import (TrainOptions, augment, batch_order, chroma_share, colourful, corrupt_batch, degrade,
                                  image_swap_negatives, losses, recolour_targets, rotate_hue, same_content, skin_tone,
                                  split_by_reference, train, value_groups)

COLUMNS = {"base_colour": "colour", "article_type": "article_type"}


@pytest.fixture(scope="module")
def listings() -> Listings:
    t = make_listings(160, seed=5, mismatch_rate=0.0, size=64)
    return Listings(t.column("listing_id").to_pylist(), t.column("title").to_pylist(), t.column("image").to_pylist(),
                    {c: t.column(c).to_pylist() for c in ("base_colour", "article_type", "sub_category")})


def _log(path):
    return [json.loads(line) for line in open(path / "train_log.jsonl")]


def test_tiny_training_loss_falls_and_resume_is_exact(listings, tmp_path):
    opts = TrainOptions(epochs=5, batch_size=32, lr=2e-3, warmup_steps=5, log_every=1000)
    train(listings, get_config("tiny"), str(tmp_path / "a"), opts, COLUMNS)
    log = _log(tmp_path / "a")
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert log[-1]["loss"] < 0.85 * log[0]["loss"], log
    assert all(r["listings_per_s"] > 0 for r in log)

    # Two epochs, then resume to five: the same weights as five epochs straight.
    train(listings, get_config("tiny"), str(tmp_path / "b"), TrainOptions(**{**opts.__dict__, "stop_after": 2}), COLUMNS)
    assert [r["epoch"] for r in _log(tmp_path / "b")] == [1, 2]
    train(listings, get_config("tiny"), str(tmp_path / "b"), opts, COLUMNS, resume=True)
    assert [r["epoch"] for r in _log(tmp_path / "b")] == [1, 2, 3, 4, 5]
    a = load_checkpoint(str(tmp_path / "a")).model.state_dict()
    b = load_checkpoint(str(tmp_path / "b")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augment_never_changes_colour():
    gen = torch.Generator().manual_seed(0)
    px = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    px[:, 0] = 200  # a red square filling the frame
    out = augment(px, gen, pad=2)
    colours = {tuple(out[b, :, y, x].tolist()) for b in range(4) for y in range(16) for x in range(16)}
    assert colours <= {(200, 0, 0), (255, 255, 255)}   # the item's colour, or the white pad
    assert (200, 0, 0) in colours


def test_content_split_keeps_duplicates_together():
    imgs = [b"a", b"b", b"a", b"c"] * 50
    tr, va = content_split(imgs, 0.3, seed=1)
    assert len(tr) + len(va) == 200 and len(va) > 0 and len(tr) > 0
    side = {}
    for i in va:
        side.setdefault(imgs[i], "val")
    assert not any(imgs[i] in side for i in tr)


def test_corruption_swaps_to_another_group(lexicon):
    rng = np.random.default_rng(0)
    toks = words("Ardent Men Navy Blue Cotton T-Shirt")
    mentions = lexicon.extract(toks)
    for _ in range(30):
        title, j, new = corrupt_attribute(toks, mentions, lexicon, rng, kind="colour")
        assert mentions[j].kind == "colour"
        assert lexicon.group("colour", new) != "blue" and new in title
        assert "navy" not in title
    assert "blue" not in swap_values(lexicon, "colour", "navy blue")


@pytest.mark.parametrize("gather", [False, True])
def test_augment_is_a_flip_and_a_shift_on_white(gather):
    gen = torch.Generator().manual_seed(3)
    px = torch.randint(0, 255, (6, 3, 12, 12), dtype=torch.uint8)
    out = augment(px, gen, pad=2, gather=gather)
    # Replay the draws and cut each crop by hand.
    gen = torch.Generator().manual_seed(3)
    flip = torch.rand(6, generator=gen) < 0.5
    dx = torch.randint(0, 5, (6,), generator=gen)
    dy = torch.randint(0, 5, (6,), generator=gen)
    for i in range(6):
        src = px[i].flip(-1) if flip[i] else px[i]
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2), value=255)
        assert torch.equal(out[i], padded[:, dy[i]:dy[i] + 12, dx[i]:dx[i] + 12])


def test_batch_order_groups_runs_of_one_article_type():
    groups = np.array(["shirt"] * 70 + ["shoe"] * 50 + ["watch"] * 9, dtype=object)
    order = batch_order(len(groups), 32, groups, 16, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(groups)))    # every listing once per epoch
    # Cut back into runs at group changes: no run is longer than the chunk.
    runs, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or groups[order[k]] != groups[order[k - 1]]:
            runs.append(k - start)
            start = k
    assert max(runs) <= 16 * 2          # two neighbouring runs of one group can touch
    assert np.mean(runs) > 8            # mostly runs, not a plain shuffle
    plain = batch_order(len(groups), 32, groups, 0, np.random.default_rng(0))
    assert sorted(plain.tolist()) == list(range(len(groups)))


def test_same_content_marks_duplicate_titles_and_images_not_the_diagonal():
    keys = np.array([[0, 1, 0, 2], [5, 6, 7, 6]])      # titles 0 and 2 equal; images 1 and 3 equal
    same = same_content(keys, torch.device("cpu"))
    expect = torch.zeros(4, 4, dtype=torch.bool)
    expect[0, 2] = expect[2, 0] = expect[1, 3] = expect[3, 1] = True
    assert torch.equal(same, expect)


def test_concat_listings_fills_missing_columns():
    a = Listings(["a"], ["A t"], [b"1"], {"base_colour": ["Red"]})
    b = Listings(["b", "c"], ["B t", "C t"], [b"2", b"3"], {"pattern": ["striped", "solid"]})
    both = concat_listings([a, b])
    assert both.ids == ["a", "b", "c"] and both.images == [b"1", b"2", b"3"]
    assert both.column("base_colour") == ["Red", "", ""] and both.column("pattern") == ["", "striped", "solid"]


def test_hard_negative_batches_train(listings, tmp_path):
    opts = TrainOptions(epochs=2, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000, group_chunk=8)
    train(listings, get_config("tiny"), str(tmp_path / "g"), opts, COLUMNS)
    log = _log(tmp_path / "g")
    assert [r["epoch"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)


def test_time_budget_shrinks_the_plan(listings, tmp_path):
    opts = TrainOptions(epochs=50, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000, time_budget=0.0)
    train(listings, get_config("tiny"), str(tmp_path / "t"), opts, COLUMNS)
    log = _log(tmp_path / "t")
    # No time at all: the plan shrinks to the one epoch already run.
    assert [r["epoch"] for r in log] == [1] and log[0]["planned_epochs"] == 50


def test_fine_tune_starts_from_the_checkpoint(listings, tmp_path):
    opts = TrainOptions(epochs=1, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000)
    train(listings, get_config("tiny"), str(tmp_path / "first"), opts, COLUMNS)
    first = load_checkpoint(str(tmp_path / "first"))
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    # The config passed is ignored: the checkpoint's model, vocabulary and lexicon go on.
    train(listings.take(range(64)), get_config("base"), str(tmp_path / "tuned"), opts, COLUMNS, init=first)
    tuned = load_checkpoint(str(tmp_path / "tuned"))
    assert tuned.model.cfg == first.model.cfg
    assert tuned.vocab.to_json() == first.vocab.to_json() and tuned.lexicon.to_json() == first.lexicon.to_json()
    after = tuned.model.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_aga_only_fine_tune_changes_aga_and_nothing_else(listings, tmp_path):
    opts = TrainOptions(epochs=1, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000)
    train(listings, get_config("tiny"), str(tmp_path / "first"), opts, COLUMNS)
    first = load_checkpoint(str(tmp_path / "first"))
    before = {k: v.clone() for k, v in first.model.state_dict().items()}   # BatchNorm statistics too
    aga_opts = TrainOptions(**{**opts.__dict__, "epochs": 2, "trainable": "aga"})
    train(listings, get_config("tiny"), str(tmp_path / "aga"), aga_opts, COLUMNS, init=first)
    after = load_checkpoint(str(tmp_path / "aga")).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("aga.") for k in changed), sorted(changed)
    assert "aga.values.weight" in changed
    log = _log(tmp_path / "aga")
    assert [r["epoch"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    with pytest.raises(ValueError, match="trainable"):
        train(listings, get_config("tiny"), str(tmp_path / "x"), TrainOptions(trainable="heads"), COLUMNS, init=first)


def test_image_swap_negatives_mark_only_values_the_other_listing_contradicts(lexicon):
    vid = lexicon.value_id
    kind_of = torch.tensor([lexicon.kinds.index(k) for k, _ in lexicon.values])
    rows = [[("colour", "blue"), ("article_type", "tshirt")],
            [("colour", "red")],
            [("colour", "navy blue"), ("article_type", "shorts")],
            [("colour", "red"), ("article_type", "shirt")]]
    values = torch.zeros(4, 2, dtype=torch.long)
    valid = torch.zeros(4, 2, dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, kv in enumerate(row):
            values[i, j], valid[i, j] = vid[kv], True
    partner = torch.tensor([2, 0, 1, 0])
    got = image_swap_negatives(values, valid, partner, kind_of, value_groups(lexicon))
    assert got.tolist() == [
        [False, True],    # blue against navy blue (one group): not wrong; T-shirt against shorts: wrong
        [True, False],    # red against blue: wrong; the empty slot never
        [True, False],    # navy blue against red: wrong; the partner names no article type: unknown
        [True, False],    # red against blue: wrong; shirt against T-shirt (both topwear): not wrong
    ]


def test_image_swap_loss_trains_aga_and_is_logged(listings, tmp_path):
    cfg = get_config("tiny")
    first_opts = TrainOptions(epochs=1, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000)
    train(listings, cfg, str(tmp_path / "off"), first_opts, COLUMNS)
    assert all(r["image_bce"] == 0 for r in _log(tmp_path / "off"))
    ckpt = load_checkpoint(str(tmp_path / "off"))
    model, lexicon = ckpt.model, ckpt.lexicon
    enc = TextEncoder(ckpt.vocab, lexicon, cfg.text.max_len, cfg.max_attrs)
    px, _ = decode_images(listings.images[:32], cfg.image.image_size)
    titles = listings.titles[:32]
    clean = enc.encode(titles)
    corrupt, slots = corrupt_batch(enc, titles, np.random.default_rng(0))
    on = TrainOptions(image_negatives=1.0)
    with pytest.raises(ValueError, match="value_group"):
        losses(model, normalize(torch.from_numpy(px)), clean, corrupt, slots, torch.device("cpu"), on)
    model.train()
    parts = losses(model, normalize(torch.from_numpy(px)), clean, corrupt, slots, torch.device("cpu"), on,
                   value_group=value_groups(lexicon))
    assert parts["image_bce"] > 0
    model.zero_grad()
    parts["image_bce"].backward()
    assert model.aga.q.weight.grad.abs().sum() > 0 and model.aga.values.weight.grad.abs().sum() > 0
    # Switched on in a run, it is part of the loss and logged.
    train(listings, cfg, str(tmp_path / "on"), TrainOptions(**{**first_opts.__dict__, "image_negatives": 1.0}),
          COLUMNS, init=ckpt)
    assert all(r["image_bce"] > 0 and np.isfinite(r["loss"]) for r in _log(tmp_path / "on"))


def _square(rgb, size=16):
    """A square of one colour on a white frame, uint8 (1, 3, S, S)."""
    px = torch.full((1, 3, size, size), 255, dtype=torch.uint8)
    px[0, :, 4:12, 4:12] = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
    return px


def test_rotate_hue_turns_colours_and_keeps_greys_and_white():
    red = _square((200, 30, 30))
    out = rotate_hue(red, torch.tensor([np.pi]))
    r, g, b = out[0, :, 8, 8].tolist()
    assert b > r and g > r, (r, g, b)                     # red turned to a cyan-like colour
    assert out[0, :, 0, 0].tolist() == [255, 255, 255]    # the white frame is untouched
    grey = _square((90, 90, 90))
    assert torch.equal(rotate_hue(grey, torch.tensor([2.0])), grey)
    assert torch.equal(rotate_hue(red, torch.tensor([0.0])), red)


def test_chroma_share_tells_colourful_photos_from_grey_ones():
    shares = chroma_share(torch.cat([_square((200, 30, 30)), _square((60, 60, 60)), _square((255, 255, 255))]))
    assert shares[0] == pytest.approx(0.25) and shares[1] == 0 and shares[2] == 0


# Skin tones from light to dark, and product colours that must still be turned.
SKIN = [(255, 224, 196), (241, 194, 170), (224, 172, 140), (198, 134, 66), (141, 85, 36), (90, 56, 37)]
TURNED = [(200, 30, 30), (128, 0, 0), (255, 105, 180), (255, 140, 0), (220, 180, 40), (0, 0, 128), (30, 160, 60)]


def test_skin_tone_marks_skin_and_not_saturated_product_colours():
    assert all(skin_tone(_square(rgb))[0, 8, 8] for rgb in SKIN)
    assert not any(skin_tone(_square(rgb))[0, 8, 8] for rgb in TURNED)
    assert not skin_tone(_square((255, 255, 255))).any() and not skin_tone(_square((90, 90, 90))).any()


def test_rotate_hue_keeps_the_masked_pixels():
    px = _square((200, 30, 30))
    px[0, :, 4:8, 4:12] = torch.tensor(SKIN[2], dtype=torch.uint8).view(3, 1)[:, :, None]   # an arm over the dress
    out = rotate_hue(px, torch.tensor([np.pi]), keep=skin_tone(px))
    assert torch.equal(out[0, :, 4:8], px[0, :, 4:8])          # the skin is as it was
    r, g, b = out[0, :, 10, 8].tolist()
    assert b > r and g > r, (r, g, b)                          # the red below it is turned


def test_chroma_share_without_skin_counts_only_the_product():
    px = torch.cat([_square(SKIN[1]), _square((200, 30, 30))])
    assert chroma_share(px).tolist() == pytest.approx([0.25, 0.25])
    assert chroma_share(px, skin=False).tolist() == pytest.approx([0.0, 0.25])


def test_degrade_blurs_and_reencodes_only_when_drawn():
    px = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    px[:, :, ::2] = 255                                    # stripes: any blur changes them
    assert torch.equal(degrade(px, torch.Generator().manual_seed(0), 0.0), px)
    out = degrade(px, torch.Generator().manual_seed(0), 1.0)
    assert out.shape == px.shape and out.dtype == torch.uint8
    assert all(not torch.equal(out[i], px[i]) for i in range(8))
    assert torch.equal(px[:, :, ::2], torch.full_like(px[:, :, ::2], 255))   # the input is not changed in place


def test_recolour_targets_push_only_chromatic_colour_mentions(lexicon):
    vid = lexicon.value_id
    rows = [[("colour", "red"), ("article_type", "tshirt")],   # colourful photo, chromatic colour: recoloured
            [("colour", "black"), ("article_type", "shirt")],  # black is not chromatic: left alone
            [("colour", "blue")],                              # chromatic, but a grey photo: left alone
            [("article_type", "shorts")]]                      # no colour named
    values = torch.zeros(4, 3, dtype=torch.long)
    valid = torch.zeros(4, 3, dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, kv in enumerate(row):
            values[i, j], valid[i, j] = vid[kv], True
    chromatic = torch.zeros(len(lexicon.values), dtype=torch.bool)
    chromatic[vid[("colour", "red")]] = chromatic[vid[("colour", "blue")]] = True
    image = torch.tensor([True, True, False, True])
    got_rows, target = recolour_targets(values, valid, chromatic, image, limit=4)
    assert got_rows.tolist() == [0]
    assert target[0, :2].tolist() == [0.0, 1.0] and target[0, 2].isnan()
    assert len(recolour_targets(values, valid, chromatic, image, limit=0)[0]) == 0


def test_colourful_learns_which_colour_names_are_chromatic(lexicon, vocab):
    enc = TextEncoder(vocab, lexicon, 16, 4)
    titles = ["Men Red Shirt"] * 25 + ["Men Black Shirt"] * 25 + ["Men Green Shirt"] * 5
    px = torch.cat([_square((200, 30, 30))] * 25 + [_square((20, 20, 20))] * 25 + [_square((30, 200, 30))] * 5)
    kinds = torch.tensor([lexicon.kinds.index(k) for k, _ in lexicon.values])
    image, colour = colourful(px, enc.encode(titles), lexicon, kinds)
    assert image.tolist() == [True] * 25 + [False] * 25 + [True] * 5
    chromatic = {v for (k, v), c in zip(lexicon.values, colour.tolist()) if c}
    assert chromatic == {"red"}                 # green: too few photos to tell


def test_colour_focus_corrupts_the_colour_mention(lexicon, vocab):
    enc = TextEncoder(vocab, lexicon, 16, 4)
    titles = ["Ardent Men Navy Blue Cotton T-Shirt"] * 40
    mentions = enc.encode(titles[:1]).mentions[0]

    def swapped_kinds(focus: float) -> set[str]:
        _, slots = corrupt_batch(enc, titles, np.random.default_rng(0), colour_focus=focus)
        assert (slots >= 0).all()
        return {mentions[j].kind for j in slots}

    assert swapped_kinds(1.0) == {"colour"}
    assert len(swapped_kinds(0.0)) > 1


def test_split_by_reference_keeps_a_listing_on_its_reference_side():
    def make(prefix, ids):
        return Listings(list(ids), ["t"] * len(ids), [f"{prefix}{i}".encode() for i in ids])
    ids = [str(i) for i in range(200)]
    small, large = make("small", ids), make("large", ids[:120])
    extra = make("synthetic", ["s" + str(i) for i in range(50)])
    train_set, val_set = split_by_reference(concat_listings([small, large, extra]), small, 0.2, 0)
    ref_train, ref_val = (set(x.ids) for x in split_by_reference(small, small, 0.2, 0))
    val_ids, train_ids = set(val_set.ids), set(train_set.ids)
    assert not val_ids & train_ids
    assert {i for i in val_ids if not i.startswith("s")} == ref_val & set(ids)
    assert {i for i in train_ids if not i.startswith("s")} == ref_train
    assert len(train_set) + len(val_set) == 370 and any(i.startswith("s") for i in val_ids)
    # Photos differ between the folders, so by content alone the same id would straddle.
    content_train, content_val = content_split(large.images, 0.2, 0)
    assert {large.ids[i] for i in content_val} != ref_val & set(large.ids)


def test_recolour_column_and_degrade_options_train_and_log(listings, tmp_path):
    opts = TrainOptions(epochs=1, batch_size=32, lr=2e-3, warmup_steps=2, log_every=1000, column_fraction=1.0,
                        colour_focus=0.5, recolour=1.0, degrade=0.5)
    train(listings, get_config("tiny"), str(tmp_path / "on"), opts, COLUMNS)
    log = _log(tmp_path / "on")
    assert all(np.isfinite(r["loss"]) and r["recolour_bce"] > 0 for r in log)
    train(listings, get_config("tiny"), str(tmp_path / "off"), TrainOptions(epochs=1, batch_size=32, lr=2e-3,
                                                                            warmup_steps=2, log_every=1000), COLUMNS)
    assert all(r["recolour_bce"] == 0 for r in _log(tmp_path / "off"))
