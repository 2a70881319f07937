"""Training: symmetric contrastive loss with a learned temperature (corrupted titles as
extra hard negatives), plus the attribute-consistency loss that teaches AGA to ground
attributes (true values against values of the same kind swapped in, and with
``image_negatives`` titles against other listings' photos), plus a small L1 on
the channel gates so their magnitude ranks channels for pruning.

Resumable: each epoch ends with a checkpoint and a training state (safetensors + JSON,
nothing pickled) under ``OUT/train_state``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from .checkpoint import Checkpoint, build_model, load_checkpoint, save
from .config import ModelConfig
from .data import Listings, column_attributes, concat_listings, content_split, corrupt_attribute
from .model import DualMatcher, GatedMLP
from .preprocess import decode_images, normalize
from .text import EncodedText, Lexicon, TextEncoder, Vocabulary

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    gate_l1: float = 1e-2
    attr_weight: float = 1.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 20
    stop_after: int | None = None  # end this run after this epoch; --resume continues the schedule
    # Hard negatives: build batches from runs of this many listings sharing an article type
    # (0: plain shuffled batches). Retrieval is judged against candidates of the same
    # sub-category, so training should see such look-alikes side by side.
    group_chunk: int = 0
    # Wall-clock budget in seconds for the epochs (None: no limit). After each epoch the
    # plan shrinks to the epochs that fit at the pace so far, and the learning-rate decay
    # follows the new plan, so a time-boxed run still ends annealed (not bit-reproducible
    # across machines; the planned epochs are in train_log.jsonl).
    time_budget: float | None = None
    # "aga": fine-tune only the attribute-guided attention (its projections and value
    # prototypes); the towers, compressions and matching heads stay frozen, in eval mode, so
    # the global match and retrieval are exactly the starting checkpoint's.
    trainable: str = "all"
    # Weight of the image-swap attribute loss (0: off): each clean title is also attended
    # over the previous listing's image in the batch, and a mentioned value whose kind that
    # listing names with values of other groups only has its score pushed to 0. Corrupted
    # titles teach AGA that one wrong word is wrong against a coherent photo; this teaches
    # it that a coherent title is wrong against another article's photo (the case of a
    # listing whose photo was swapped, where the text alone gives no hint).
    image_negatives: float = 0.0
    # Share of listings whose structured columns (colour, type, gender ...) are appended to
    # the title, each becoming a mention that AGA is supervised on; 1.0 supervises the
    # columns on every image, also where the title does not name them.
    column_fraction: float = 0.5
    # Probability that a corrupted title swaps its colour mention (when it has one) rather
    # than a mention drawn uniformly: colour is the hardest kind to see.
    colour_focus: float = 0.0
    # Weight of the recolour loss (0: off): for up to a quarter of each batch, the photo's
    # hue is rotated by 120-240 degrees (greys, the white background and skin tones stay as
    # they are; only photos whose non-skin chromatic pixels cover a tenth of the frame are
    # used) and the title's chromatic colour mention is pushed to 0 on the recoloured photo, its
    # other mentions to 1: colour negatives made from the photo itself.
    recolour: float = 0.0
    # Probability that a training photo is degraded: downscaled by 0.4-0.9 and back (blur),
    # and, half as often, re-encoded as JPEG at quality 20-80, so that a photo's size and
    # sharpness move the verdict as little as possible.
    degrade: float = 0.0


def degrade(pixels: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """uint8 (B, 3, S, S) with each image blurred (down- and up-scaled) with probability
    ``p`` and JPEG re-encoded with probability ``p / 2``; draws from ``gen`` on the CPU."""
    b, _, s, _ = pixels.shape
    blur = torch.rand(b, generator=gen) < p
    scale = 0.4 + 0.5 * torch.rand(b, generator=gen)
    jpeg = torch.rand(b, generator=gen) < p / 2
    quality = torch.randint(20, 81, (b,), generator=gen)
    if not (blur.any() or jpeg.any()):
        return pixels
    out = pixels.clone()
    for i in torch.nonzero(blur | jpeg).squeeze(1).tolist():
        x = out[i]
        if blur[i]:
            small = max(8, int(s * float(scale[i])))
            y = F.interpolate(x[None].float(), size=(small, small), mode="bilinear", antialias=True,
                              align_corners=False)
            x = F.interpolate(y, size=(s, s), mode="bilinear", align_corners=False)[0].round().clamp(0, 255).to(
                torch.uint8)
        if jpeg[i]:
            buf = io.BytesIO()
            Image.fromarray(x.permute(1, 2, 0).cpu().numpy()).save(buf, format="JPEG", quality=int(quality[i]))
            x = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).to(x.device)
        out[i] = x
    return out


# RGB -> YIQ: a hue rotation turns the (I, Q) chroma plane and keeps luma, so greys, black
# and the white background are left exactly as they are.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _yiq(pixels: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _YIQ.to(pixels.device), pixels.float() / 255)


def skin_tone(pixels: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool: the pixels of uint8 (B, 3, S, S) images whose colour is a skin tone
    (hue within -15..+12 degrees of YIQ's I axis, moderate chroma, not near black). A hue
    rotation leaves them alone: a rotated arm or face (blue skin) is an artefact the model
    would learn to read as the colour mismatch. Brown, tan and beige products fall in this
    band too; they are simply not recoloured."""
    yiq = _yiq(pixels)
    chroma = yiq[:, 1:].norm(dim=1)
    angle = torch.atan2(yiq[:, 2], yiq[:, 1])
    return ((angle > math.radians(-15)) & (angle < math.radians(12)) & (chroma > 0.04) & (chroma < 0.26)
            & (yiq[:, 0] > 0.15))


def chroma_share(pixels: torch.Tensor, level: float = 0.08, skin: bool = True) -> torch.Tensor:
    """(B,) share of each uint8 (B, 3, S, S) image's pixels (every other row and column)
    whose chroma is above ``level``; with ``skin=False`` skin-toned pixels do not count
    (the share of the photo a recolouring can turn)."""
    sub = pixels[:, :, ::2, ::2]
    chromatic = _yiq(sub)[:, 1:].norm(dim=1) > level
    if not skin:
        chromatic &= ~skin_tone(sub)
    return chromatic.float().mean((1, 2))


def rotate_hue(pixels: torch.Tensor, angles: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, S, S) with each image's hue rotated by ``angles`` (B,) radians, except
    where the (B, S, S) bool ``keep`` is set."""
    yiq = _YIQ.to(pixels.device)
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.zeros(len(angles), 3, 3, device=pixels.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = torch.linalg.inv(yiq) @ rot @ yiq                                       # (B, 3, 3)
    y = (torch.einsum("bij,bjhw->bihw", m, pixels.float() / 255) * 255).round().clamp(0, 255).to(torch.uint8)
    return y if keep is None else torch.where(keep.unsqueeze(1), pixels, y)


def recolour_targets(values: torch.Tensor, valid: torch.Tensor, chromatic_value: torch.Tensor,
                     chromatic_image: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows to recolour (at most ``limit``: a colourful photo whose title names a
    chromatic colour) and, for them, (R, A) float targets: 0 for the chromatic colour
    mentions, 1 for the other mentions, NaN for empty slots."""
    wrong = valid & chromatic_value[values]                                      # (B, A)
    rows = torch.nonzero(wrong.any(1) & chromatic_image).squeeze(1)[:limit]
    target = torch.where(wrong[rows], 0.0, 1.0)
    return rows, target.masked_fill(~valid[rows], float("nan"))


def augment(pixels: torch.Tensor, gen: torch.Generator, pad: int, gather: bool | None = None) -> torch.Tensor:
    """Geometric augmentation only (never colour): random flip and shift on a white pad.
    uint8 (B, 3, S, S) -> uint8 (B, 3, S, S), on the tensor's device; the random draws
    come from ``gen`` on the CPU, so a run is the same on any device. The crops are cut
    by one gather (``gather``, the default off the CPU) or by slicing (faster on the CPU)."""
    b, c, s, _ = pixels.shape
    dev = pixels.device
    flip = torch.rand(b, generator=gen) < 0.5
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    pixels = torch.where(flip.to(dev).view(b, 1, 1, 1), pixels.flip(-1), pixels)
    padded = F.pad(pixels, (pad, pad, pad, pad), value=255)
    if not (dev.type != "cpu" if gather is None else gather):
        return torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    ar = torch.arange(s, device=dev)
    rows = (dy.to(dev)[:, None] + ar)[:, None, :, None]          # (B, 1, S, 1)
    cols = (dx.to(dev)[:, None] + ar)[:, None, None, :]          # (B, 1, 1, S)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def batch_order(n: int, batch_size: int, groups: np.ndarray, chunk: int, rng: np.random.Generator) -> np.ndarray:
    """Listing indices for one epoch. With ``chunk`` > 0 the epoch is cut into runs of up
    to ``chunk`` listings of one group (shuffled within the group), and the runs are
    shuffled, so each batch holds several look-alike runs; otherwise a plain permutation."""
    if chunk <= 0:
        return rng.permutation(n)
    runs = []
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        runs += [members[i:i + chunk] for i in range(0, len(members), chunk)]
    return np.concatenate([runs[i] for i in rng.permutation(len(runs))]) if runs else np.arange(0)


def same_content(keys: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, B) bool from (K, B) integer keys: pairs of different listings that share any key
    (an identical title or an identical image): they are not negatives of each other."""
    k = torch.from_numpy(np.ascontiguousarray(keys)).to(device)
    same = (k[:, :, None] == k[:, None, :]).any(0)
    return same & ~torch.eye(k.shape[1], dtype=torch.bool, device=device)


def _tensors(enc: EncodedText, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device) for a in (enc.ids, enc.mask, enc.attr_mask, enc.attr_valid,
                                                          enc.attr_value))


def value_groups(lexicon: Lexicon) -> torch.Tensor:
    """(V,) long: each lexicon value's group, numbered across kinds ((kind, group) pairs)."""
    keys = [(kind, lexicon.group(kind, value)) for kind, value in lexicon.values]
    number = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([number[k] for k in keys], dtype=torch.long)


def image_swap_negatives(values: torch.Tensor, valid: torch.Tensor, partner: torch.Tensor,
                         value_kind: torch.Tensor, value_group: torch.Tensor) -> torch.Tensor:
    """(B, A) bool: the mention slots of listing i that are wrong for listing
    ``partner[i]``'s image, as far as that listing's own mentions tell: it names values of
    the slot's kind, and none of them is in the slot value's group. Where the partner names
    no value of the kind, nothing is known and the slot is left out."""
    pv, pvalid = values[partner], valid[partner]                                   # (B, A')
    same_kind = ((value_kind[values][:, :, None] == value_kind[pv][:, None, :])
                 & pvalid[:, None, :] & valid[:, :, None])                          # (B, A, A')
    same_group = same_kind & (value_group[values][:, :, None] == value_group[pv][:, None, :])
    return valid & same_kind.any(-1) & ~same_group.any(-1)


def losses(model: DualMatcher, pixels: torch.Tensor, clean: EncodedText, corrupt: EncodedText,
           corrupt_slot: np.ndarray, device: torch.device, opts: TrainOptions,
           duplicates: torch.Tensor | None = None, value_group: torch.Tensor | None = None,
           recoloured: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """All training losses for one batch. ``corrupt_slot[i]`` is the attribute slot of
    listing i swapped in ``corrupt`` (-1 when listing i has nothing to swap);
    ``duplicates`` (B, B) marks pairs with the same title or image, kept out of each
    other's negatives; ``value_group`` (V,) (see :func:`value_groups`, on ``device``) is
    needed for ``opts.image_negatives``; ``recoloured`` = (rows, normalized recoloured
    pixels of those rows, targets) from :func:`recolour_targets` for ``opts.recolour``."""
    ids, mask, amask, avalid, avalue = _tensors(clean, device)
    cids, cmask, camask, cavalid, cavalue = _tensors(corrupt, device)
    with torch.no_grad() if opts.trainable == "aga" else contextlib.nullcontext():   # frozen encoders
        img_tokens, img_emb = model.encode_image(pixels)
        txt_states, txt_emb = model.encode_text(ids, mask)
        c_states, c_emb = model.encode_text(cids, cmask)
    b = pixels.shape[0]
    has_corrupt = torch.from_numpy(corrupt_slot >= 0).to(device)

    # Contrastive: image -> [clean texts; corrupted texts of the same batch], text -> images.
    scale = model.contrast_scale.exp().clamp(max=100.0)
    neg = c_emb[has_corrupt]
    logits_i2t = scale * img_emb @ torch.cat([txt_emb, neg]).t()          # (B, B + C)
    logits_t2i = scale * txt_emb @ img_emb.t()                              # (B, B)
    if duplicates is not None:
        logits_i2t = logits_i2t.masked_fill(F.pad(duplicates, (0, logits_i2t.shape[1] - b)), float("-inf"))
        logits_t2i = logits_t2i.masked_fill(duplicates, float("-inf"))
    target = torch.arange(b, device=device)
    contrast = (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2

    # Attribute consistency on clean titles: classify the mentioned value within its kind
    # and push its sigmoid score to 1.
    logits, score, _ = model.attend(img_tokens, txt_states, amask, avalid, avalue)
    valid = avalid.reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1])[valid]
    flat_value = avalue.reshape(-1)[valid]
    own = flat_logits.gather(1, flat_value[:, None]).squeeze(1)
    attr_ce = F.cross_entropy(flat_logits, flat_value) if valid.any() else own.sum() * 0
    pos_bce = F.binary_cross_entropy_with_logits(own, torch.ones_like(own)) if valid.any() else own.sum() * 0

    # Swapped-in values: the corrupted mention's score goes to 0.
    c_logits, _, _ = model.attend(img_tokens, c_states, camask, cavalid, cavalue)
    rows = torch.nonzero(has_corrupt).squeeze(1)
    if len(rows):
        slots = torch.from_numpy(corrupt_slot).to(device)[rows]
        bad = c_logits[rows, slots].gather(1, cavalue[rows, slots][:, None]).squeeze(1)
        neg_bce = F.binary_cross_entropy_with_logits(bad, torch.zeros_like(bad))
    else:
        neg_bce = own.sum() * 0

    # Another listing's image: a mentioned value that listing contradicts goes to 0.
    image_bce = own.sum() * 0
    if opts.image_negatives > 0 and b > 1:
        if value_group is None:
            raise ValueError("image_negatives needs value_group")
        partner = torch.roll(torch.arange(b, device=device), 1)
        wrong = image_swap_negatives(avalue, avalid, partner, model.value_kind, value_group)
        if duplicates is not None:      # an identical image or title: not another listing
            wrong &= ~duplicates[torch.arange(b, device=device), partner].unsqueeze(1)
        if wrong.any():
            x_logits, _, _ = model.attend(img_tokens[partner], txt_states, amask, avalid, avalue)
            x_own = x_logits.gather(2, avalue.unsqueeze(-1)).squeeze(-1)[wrong]
            image_bce = F.binary_cross_entropy_with_logits(x_own, torch.zeros_like(x_own))

    # The same titles over their recoloured photos: the colour mention goes to 0, the rest to 1.
    recolour_bce = own.sum() * 0
    if opts.recolour > 0 and recoloured is not None and len(recoloured[0]):
        rows, px, target = recoloured
        with torch.no_grad() if opts.trainable == "aga" else contextlib.nullcontext():
            r_tokens, _ = model.encode_image(px)
        r_logits, _, _ = model.attend(r_tokens, txt_states[rows], amask[rows], avalid[rows], avalue[rows])
        r_own = r_logits.gather(2, avalue[rows].unsqueeze(-1)).squeeze(-1)
        known = ~target.isnan()
        recolour_bce = F.binary_cross_entropy_with_logits(r_own[known], target[known])

    gates = torch.cat([m.gate.abs() for m in model.modules() if isinstance(m, GatedMLP)])
    total = (contrast + opts.attr_weight * (attr_ce + pos_bce + neg_bce + opts.image_negatives * image_bce
                                            + opts.recolour * recolour_bce)
             + opts.gate_l1 * gates.mean())
    return {"loss": total, "contrast": contrast, "attr_ce": attr_ce, "pos_bce": pos_bce, "neg_bce": neg_bce,
            "image_bce": image_bce, "recolour_bce": recolour_bce}


def corrupt_batch(encoder: TextEncoder, titles: list[str], rng: np.random.Generator,
                  parsed: list[tuple[list[str], list]] | None = None,
                  colour_focus: float = 0.0) -> tuple[EncodedText, np.ndarray]:
    """Each title with one attribute swapped for a value of another group (where possible);
    with probability ``colour_focus`` the colour mention, where the title has one. ``parsed``
    may hold each title's (tokens, mentions), computed once ahead of time."""
    out_titles, slots, new_values = [], [], []
    for k, t in enumerate(titles):
        if parsed is None:
            toks = encoder.tokens(t)
            mentions = encoder.lexicon.extract(toks)[: encoder.max_attrs]
        else:
            toks, mentions = parsed[k]
        hit = None
        if colour_focus > 0 and rng.random() < colour_focus:
            hit = corrupt_attribute(toks, mentions, encoder.lexicon, rng, kind="colour")
        if hit is None:
            hit = corrupt_attribute(toks, mentions, encoder.lexicon, rng)
        out_titles.append(t if hit is None else hit[0])
        slots.append(-1 if hit is None else hit[1])
        new_values.append(None if hit is None else hit[2])
    enc = encoder.encode(out_titles)
    slots_arr = np.asarray(slots)
    # Keep a slot only where re-extraction finds the swapped-in value there (a swap can
    # merge with a neighbouring word or fall past the length limit).
    for i, j in enumerate(slots_arr):
        if j >= 0 and (j >= len(enc.mentions[i]) or enc.mentions[i][j].value != new_values[i]):
            slots_arr[i] = -1
    return enc, slots_arr


def _param_groups(model: DualMatcher, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith("pos") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_state(out: str, opt: torch.optim.Optimizer, epoch: int, step: int) -> None:
    state_dir = os.path.join(out, "train_state")
    os.makedirs(state_dir, exist_ok=True)
    tensors, meta = {}, {"epoch": epoch, "step": step, "params": {}}
    for i, (pid, st) in enumerate(opt.state_dict()["state"].items()):
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                meta["params"].setdefault(str(pid), {})[k] = float(v)
    save_file(tensors, os.path.join(state_dir, "optimizer.safetensors"))
    with open(os.path.join(state_dir, "state.json"), "w") as f:
        json.dump(meta, f)


def _load_state(out: str, opt: torch.optim.Optimizer) -> tuple[int, int]:
    state_dir = os.path.join(out, "train_state")
    with open(os.path.join(state_dir, "state.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(state_dir, "optimizer.safetensors"))
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, scalars in meta["params"].items():
        for k, v in scalars.items():
            state.setdefault(int(pid), {})[k] = torch.tensor(v)
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta["epoch"], meta["step"]


def prepare_text(train: Listings, cfg: ModelConfig, columns: dict[str, str]) -> tuple[Vocabulary, Lexicon]:
    """Lexicon = curated seeds grown from the training rows' columns; vocabulary from titles."""
    lexicon = Lexicon.from_seeds().extended(train.rows(), columns)
    lex_words = {w for forms in lexicon.entries.values() for v, (_, fs) in forms.items()
                 for f in [v, *fs] for w in f.split()}
    n_buckets = 1024 if cfg.text.vocab_size > 4096 else 512
    max_words = max(256, cfg.text.vocab_size - n_buckets - 1 - len(lex_words))
    vocab = Vocabulary.build(train.titles, lex_words, max_words=max_words, n_buckets=n_buckets)
    return vocab, lexicon


def train(listings: Listings, cfg: ModelConfig, out: str, opts: TrainOptions, columns: dict[str, str],
          resume: bool = False, card: str = "", init: Checkpoint | None = None) -> Checkpoint:
    """Train on ``listings`` and write a checkpoint to ``out`` after every epoch. ``init``
    (fine-tuning) starts from that checkpoint's weights, vocabulary and lexicon instead of
    a fresh model; ``cfg`` is then the checkpoint's."""
    torch.manual_seed(opts.seed)
    device = torch.device(opts.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if resume or init is not None:
        ckpt = load_checkpoint(out) if resume else init
        model, vocab, lexicon = ckpt.model, ckpt.vocab, ckpt.lexicon
    else:
        vocab, lexicon = prepare_text(listings, cfg, columns)
        model = build_model(cfg, vocab, lexicon)
    if opts.trainable not in ("all", "aga"):
        raise ValueError(f"trainable must be 'all' or 'aga', got {opts.trainable!r}")
    for p in model.parameters():
        p.requires_grad_(opts.trainable == "all")
    for p in model.aga.parameters():
        p.requires_grad_(True)

    def train_mode() -> None:
        model.train()
        if opts.trainable == "aga":      # frozen BatchNorms keep their running statistics
            model.image.eval(), model.text.eval()

    model.to(device)
    train_mode()
    cfg = model.cfg
    encoder = TextEncoder(vocab, lexicon, cfg.text.max_len, cfg.max_attrs)
    size = cfg.image.image_size
    t0 = time.time()
    pixels_u8, ok = decode_images(listings.images, size)
    titles = [listings.titles[i] for i in ok]
    # Half the listings also carry their structured attribute columns appended to the
    # title, as a scan with --attribute-columns presents them.
    kept = listings.take(ok)
    extras = column_attributes(kept, lexicon, columns)
    with_columns = np.random.default_rng([opts.seed, 7]).random(len(ok)) < opts.column_fraction
    clean_all = encoder.encode(titles, [e if w else [] for e, w in zip(extras, with_columns)])
    # Each title's tokens and mentions, once: the corruptions of every epoch start from them.
    parsed = [(toks, encoder.lexicon.extract(toks)[: encoder.max_attrs]) for toks in map(encoder.tokens, titles)]
    dup_keys = np.stack([np.unique([" ".join(toks) for toks, _ in parsed], return_inverse=True)[1],
                         np.unique([hashlib.sha1(b).digest() for b in kept.images], return_inverse=True)[1]])
    groups = np.asarray(kept.column("article_type"), dtype=object)
    value_group = value_groups(lexicon).to(device)
    on_device = torch.from_numpy(pixels_u8).to(device)
    log.info("decoded %d/%d images at %dpx in %.1fs", len(ok), len(listings), size, time.time() - t0)
    chromatic_image, chromatic_value = colourful(on_device, clean_all, lexicon, model.value_kind)
    chromatic_value = chromatic_value.to(device)

    n = len(titles)
    steps_per_epoch = max(1, n // opts.batch_size)
    planned = opts.epochs
    total_steps = steps_per_epoch * planned
    opt = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.98))
    start_epoch, step = (_load_state(out, opt) if resume else (0, 0))

    def lr_at(s: int) -> float:
        if s < opts.warmup_steps:
            return opts.lr * (s + 1) / opts.warmup_steps
        frac = (s - opts.warmup_steps) / max(1, total_steps - opts.warmup_steps)
        return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    ckpt = Checkpoint(model, vocab, lexicon, None, card)
    log_path = os.path.join(out, "train_log.jsonl")
    os.makedirs(out, exist_ok=True)
    t_train = time.time()
    epoch = start_epoch
    while epoch < min(planned, opts.stop_after or planned):
        rng = np.random.default_rng([opts.seed, epoch])
        gen = torch.Generator().manual_seed(opts.seed * 1000 + epoch)
        order = batch_order(n, opts.batch_size, groups, opts.group_chunk, rng)
        sums: dict[str, float] = {}
        t_epoch, seen = time.time(), 0
        for bi in range(steps_per_epoch):
            idx = np.sort(order[bi * opts.batch_size:(bi + 1) * opts.batch_size])
            batch_titles = [titles[i] for i in idx]
            clean = EncodedText(clean_all.ids[idx], clean_all.mask[idx], clean_all.attr_mask[idx],
                                clean_all.attr_valid[idx], clean_all.attr_value[idx],
                                [clean_all.mentions[i] for i in idx])
            corrupt, slots = corrupt_batch(encoder, batch_titles, rng, [parsed[i] for i in idx], opts.colour_focus)
            raw = augment(on_device[torch.from_numpy(idx).to(device)], gen, pad=max(2, size // 16))
            if opts.degrade > 0:
                raw = degrade(raw, gen, opts.degrade)
            recoloured = None
            if opts.recolour > 0:
                tidx = torch.from_numpy(idx).to(device)
                rows, target = recolour_targets(torch.from_numpy(clean.attr_value).to(device),
                                                torch.from_numpy(clean.attr_valid).to(device), chromatic_value,
                                                chromatic_image[tidx], len(idx) // 4)
                angles = (2 / 3 + 2 / 3 * torch.rand(len(rows), generator=gen)) * math.pi
                recoloured = (rows, normalize(rotate_hue(raw[rows], angles.to(device), keep=skin_tone(raw[rows]))),
                              target)
            px = normalize(raw)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            parts = losses(model, px, clean, corrupt, slots, device, opts, same_content(dup_keys[:, idx], device),
                           value_group, recoloured)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            step += 1
            seen += len(idx)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (bi + 1) % opts.log_every == 0 or bi + 1 == steps_per_epoch:
                rate = seen / max(1e-9, time.time() - t_epoch)
                log.info("epoch %d step %d/%d loss %.4f (contrast %.3f attr_ce %.3f pos %.3f neg %.3f "
                         "image %.3f recolour %.3f) %.0f listings/s", epoch + 1, bi + 1, steps_per_epoch,
                         sums["loss"] / (bi + 1), sums["contrast"] / (bi + 1), sums["attr_ce"] / (bi + 1),
                         sums["pos_bce"] / (bi + 1), sums["neg_bce"] / (bi + 1), sums["image_bce"] / (bi + 1),
                         sums["recolour_bce"] / (bi + 1), rate)
        record = {"epoch": epoch + 1, "planned_epochs": planned, "step": step, "seconds": round(time.time() - t_epoch, 2),
                  "listings_per_s": round(seen / max(1e-9, time.time() - t_epoch), 1),
                  **{k: round(v / steps_per_epoch, 5) for k, v in sums.items()}}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        model.eval()
        save(ckpt, out)
        _save_state(out, opt, epoch + 1, step)
        train_mode()
        epoch += 1
        if opts.time_budget is not None:
            pace = (time.time() - t_train) / (epoch - start_epoch)
            fit = epoch + int(max(0.0, opts.time_budget - (time.time() - t_train)) / pace)
            if fit < planned:
                planned = max(epoch, fit)
                total_steps = steps_per_epoch * planned
                log.info("time budget %.0f s: the plan shrinks to %d epochs", opts.time_budget, planned)
    model.eval()
    return ckpt


def colourful(pixels: torch.Tensor, clean: EncodedText, lexicon: Lexicon, value_kind: torch.Tensor,
              share: float = 0.1, agree: float = 0.5, min_count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Which training photos are colourful (at least ``share`` of their pixels chromatic,
    skin tones not counted: the product, not the model's arm, carries the colour a
    recolouring turns) and which colour values are chromatic, learnt from the data: a colour named (in a
    title or a column) over at least ``min_count`` photos, at least ``agree`` of them
    colourful, other than "multi". Returns ((N,) bool, (V,) bool)."""
    image = torch.cat([chroma_share(pixels[i:i + 2048], skin=False) for i in range(0, len(pixels), 2048)]) >= share
    colour = torch.zeros(len(value_kind), dtype=torch.bool)
    kind = lexicon.kinds.index("colour") if "colour" in lexicon.kinds else -1
    if kind < 0 or not len(pixels):
        return image, colour
    values = torch.from_numpy(clean.attr_value)[torch.from_numpy(clean.attr_valid)]
    rows = torch.from_numpy(clean.attr_valid).nonzero()[:, 0]
    is_colour = value_kind.cpu()[values] == kind
    named = torch.bincount(values[is_colour], minlength=len(value_kind)).float()
    bright = torch.bincount(values[is_colour], weights=image.cpu()[rows[is_colour]].float(),
                            minlength=len(value_kind))
    colour = (named >= min_count) & (bright >= agree * named)
    for i, (k, v) in enumerate(lexicon.values):     # a hue rotation leaves a multicoloured item multicoloured
        if k == "colour" and lexicon.group(k, v) == "multi":
            colour[i] = False
    log.info("chromatic colours: %s (%.0f%% of photos colourful)",
             ", ".join(v for (k, v), c in zip(lexicon.values, colour.tolist()) if c), 100 * image.float().mean())
    return image, colour


def split_for_training(listings: Listings, val_fraction: float, seed: int) -> tuple[Listings, Listings]:
    """Content-based train/validation split of the clean listings."""
    clean = [i for i, k in enumerate(listings.column("mismatch_kind")) if not k]
    base = listings.take(clean)
    tr, va = content_split(base.images, val_fraction, seed)
    return base.take(tr), base.take(va)


def split_by_reference(listings: Listings, reference: Listings, val_fraction: float,
                       seed: int) -> tuple[Listings, Listings]:
    """:func:`split_for_training` decided on ``reference`` (one photo folder): a listing whose
    id the reference holds falls on that id's side, whatever its own photo's bytes (the
    same listing in another folder never straddles the split); the others by content."""
    ref_train, ref_val = split_for_training(reference, val_fraction, seed)
    side = {**{i: False for i in ref_train.ids}, **{i: True for i in ref_val.ids}}
    known = [i for i, lid in enumerate(listings.ids) if lid in side]
    rest_train, rest_val = split_for_training(listings.take([i for i, lid in enumerate(listings.ids)
                                                             if lid not in side]), val_fraction, seed)
    by_ref = listings.take(known)
    val = [i for i, lid in enumerate(by_ref.ids) if side[lid]]
    train = [i for i, lid in enumerate(by_ref.ids) if not side[lid]]
    return (concat_listings([by_ref.take(train), rest_train]), concat_listings([by_ref.take(val), rest_val]))
