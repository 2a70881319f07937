"""The lightweight dual transformer with attribute-guided attention (AGA).

ITransformer (conv stem + transformer blocks over patches) and TTransformer (transformer
over token embeddings) produce token features; both are compressed from width d to d/r
(r = ``ModelConfig.compression``); AGA uses each attribute mention's token states as a
query over the image tokens. Every MLP hidden unit carries a learnable gate whose magnitude
is its importance; :func:`ecomatch_model.prune.prune_model` removes the least important
units physically.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ImageConfig, ModelConfig, TextConfig


class GatedMLP(nn.Module):
    """(…, D) -> (…, D). Hidden units are scaled by ``gate``, the pruning importance."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gate = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)) * self.gate)


class Attention(nn.Module):
    """Multi-head self-attention. x: (B, N, D), key_mask: (B, N) bool, True = attend."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3D) -> (3, B, H, N, D/H)
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, H, N, D/H) -> (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GatedMLP(dim, hidden)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride < kernel else 0,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.GELU())


def weight_memory_format(weight: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D weight held in NHWC, else ``torch.contiguous_format``."""
    nhwc = weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


class ITransformer(nn.Module):
    """Image tower. pixels (B, 3, S, S) -> tokens (B, G*G, D), pooled (B, D)."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        c = cfg.stem_channels
        # Two stride-2 3x3 convs, then a patchifying conv for the remaining stride.
        self.stem = nn.Sequential(_conv_bn(3, c, 3, 2), _conv_bn(c, 2 * c, 3, 2),
                                  nn.Conv2d(2 * c, cfg.width, cfg.patch // 4, cfg.patch // 4))
        self.pos = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, h) for h in cfg.mlp_hidden)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The pixels take the stem's memory format (NHWC once :func:`align_for_gpu` has
        # converted its weights), so the first convolution needs no layout change of its own.
        x = self.stem(pixels.contiguous(memory_format=weight_memory_format(self.stem[0][0].weight)))  # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, D, G, G) -> (B, G*G, D)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, x.mean(dim=1)                    # (B, N, D) -> (B, D)


def pool_weights(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool token mask; an all-padding row (empty title) keeps position 0 so that
    attention and pooling stay defined."""
    out = mask.clone()
    out[:, 0] |= ~mask.any(dim=1)
    return out


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, L) bool -> (B, D) mean over the masked positions."""
    w = mask.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class TTransformer(nn.Module):
    """Text tower. ids (B, L), mask (B, L) bool -> states (B, L, D), pooled (B, D)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, h) for h in cfg.mlp_hidden)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        # An all-padding row (empty title) attends to itself so softmax stays finite.
        key_mask = pool_weights(mask)
        for blk in self.blocks:
            x = blk(x, key_mask)
        x = self.norm(x)
        return x, masked_mean(x, pool_weights(mask))  # (B, L, D) -> (B, D)


class AttributeGuidedAttention(nn.Module):
    """AGA: attribute mentions attend over image tokens.

    queries (B, A, E), image tokens (B, N, E), valid (B, A) bool ->
    grounded (B, A, E), attention (B, A, N) averaged over heads (zero where invalid),
    value logits (B, A, V) against every lexicon value (masked to the mention's kind).
    """

    def __init__(self, dim: int, heads: int, n_values: int, n_kinds: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.values = nn.Embedding(n_values, dim)
        self.kind_bias = nn.Parameter(torch.zeros(n_kinds))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, queries: torch.Tensor, img: torch.Tensor, valid: torch.Tensor,
                value_kind: torch.Tensor, query_kind: torch.Tensor):
        b, a, e = queries.shape
        n, h = img.shape[1], self.heads
        q = self.q(self.norm_q(queries)).view(b, a, h, e // h).transpose(1, 2)       # (B, H, A, E/H)
        k, v = self.kv(self.norm_kv(img)).view(b, n, 2, h, e // h).permute(2, 0, 3, 1, 4)  # (B, H, N, E/H)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // h), dim=-1)  # (B, H, A, N)
        grounded = self.out((attn @ v).transpose(1, 2).reshape(b, a, e))          # (B, A, E)
        attn_map = attn.mean(dim=1) * valid.unsqueeze(-1)                          # (B, A, N)
        g = F.normalize(grounded, dim=-1)
        protos = F.normalize(self.values.weight, dim=-1)                          # (V, E)
        logits = self.logit_scale.exp() * (g @ protos.t())                         # (B, A, V)
        logits = logits + self.kind_bias[value_kind]                               # per-kind offset
        same_kind = value_kind.view(1, 1, -1) == query_kind.unsqueeze(-1)          # (B, A, V)
        logits = logits.masked_fill(~same_kind, float("-inf"))
        return grounded, attn_map, logits


@dataclass
class MatchOutput:
    """Everything scoring needs, for a batch of B listings with A attribute slots.

    image_embed, text_embed: (B, E) L2-normalised; match: (B,) cosine similarity;
    attr_logits: (B, A, V) value logits (-inf outside the mention's kind);
    attr_score: (B, A) sigmoid consistency of the mentioned value (0 where invalid);
    attention: (B, A, G, G) attention maps over the image grid.
    """

    image_embed: torch.Tensor
    text_embed: torch.Tensor
    match: torch.Tensor
    attr_logits: torch.Tensor
    attr_score: torch.Tensor
    attention: torch.Tensor


class DualMatcher(nn.Module):
    """The full model: ``forward(pixels, ids, mask, attr_mask, attr_valid, attr_value)``.

    pixels (B, 3, S, S) float; ids, mask (B, L); attr_mask (B, A, L) float with 1 on each
    mention's tokens; attr_valid (B, A) bool; attr_value (B, A) long global value ids.
    ``value_kind`` (V,) maps each lexicon value to its kind index.
    """

    def __init__(self, cfg: ModelConfig, value_kind: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        e = cfg.embed_dim
        self.image = ITransformer(cfg.image)
        self.text = TTransformer(cfg.text)
        self.img_compress = nn.Linear(cfg.image.width, e)    # d -> d/r
        self.txt_compress = nn.Linear(cfg.text.width, e)     # d -> d/r
        self.img_head = nn.Linear(e, e)
        self.txt_head = nn.Linear(e, e)
        self.aga = AttributeGuidedAttention(e, cfg.aga_heads, cfg.n_values, cfg.n_kinds)
        self.contrast_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        vk = value_kind if value_kind is not None else torch.zeros(cfg.n_values, dtype=torch.long)
        self.register_buffer("value_kind", vk.clone().long(), persistent=False)  # derived from the lexicon
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.trunc_normal_(self.image.pos, std=0.02)
        nn.init.trunc_normal_(self.text.pos, std=0.02)
        nn.init.normal_(self.aga.values.weight, std=1.0)

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, S, S) -> compressed tokens (B, N, E), normalised embedding (B, E)."""
        tokens, pooled = self.image(pixels.to(self.image.pos.dtype))   # towers may be held in bf16
        tokens = self.img_compress(tokens.to(self.img_compress.weight.dtype))  # (B, N, D) -> (B, N, E)
        return tokens, F.normalize(self.img_head(tokens.mean(1)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, L) -> compressed states (B, L, E), normalised embedding (B, E)."""
        states, _ = self.text(ids, mask)
        states = self.txt_compress(states.to(self.txt_compress.weight.dtype))  # (B, L, D) -> (B, L, E)
        pooled = masked_mean(states, pool_weights(mask))          # (B, L, E) -> (B, E)
        return states, F.normalize(self.txt_head(pooled), dim=-1)

    def attend(self, img_tokens: torch.Tensor, txt_states: torch.Tensor, attr_mask: torch.Tensor,
               attr_valid: torch.Tensor, attr_value: torch.Tensor):
        """AGA over already-encoded towers; returns (attr_logits, attr_score, attention)."""
        counts = attr_mask.sum(-1, keepdim=True).clamp(min=1.0)             # (B, A, 1)
        queries = (attr_mask @ txt_states) / counts                          # (B, A, L) @ (B, L, E) -> (B, A, E)
        query_kind = self.value_kind[attr_value]                             # (B, A)
        _, attn, logits = self.aga(queries, img_tokens, attr_valid, self.value_kind, query_kind)
        own = logits.gather(-1, attr_value.unsqueeze(-1)).squeeze(-1)       # (B, A, V) -> (B, A)
        score = torch.sigmoid(own) * attr_valid
        g = self.cfg.image.grid
        return logits, score, attn.view(*attn.shape[:2], g, g)              # (B, A, N) -> (B, A, G, G)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                attr_mask: torch.Tensor, attr_valid: torch.Tensor, attr_value: torch.Tensor) -> MatchOutput:
        img_tokens, img_emb = self.encode_image(pixels)
        txt_states, txt_emb = self.encode_text(ids, mask)
        logits, score, attn = self.attend(img_tokens, txt_states, attr_mask, attr_valid, attr_value)
        match = (img_emb * txt_emb).sum(-1)
        return MatchOutput(img_emb, txt_emb, match, logits, score, attn)


def towers_to(model: DualMatcher, dtype: torch.dtype) -> DualMatcher:
    """Hold the image and text towers (nearly all of the FLOPs) in ``dtype``, their
    activations too; AGA and the heads stay float32. In place; returns ``model``."""
    model.image.to(dtype)
    model.text.to(dtype)
    return model


@torch.no_grad()
def pad_hidden(model: DualMatcher, multiple: int = 8) -> DualMatcher:
    """Zero-pad every MLP's hidden width up to a multiple of ``multiple``. Exact: a padded
    unit has zero input weights and bias, so GELU gives 0, and zero output weights. Pruning
    leaves widths such as 1229, whose rows are not 16-byte aligned in bf16, which keeps
    matrix products off the tensor cores' fastest kernels. In place; returns ``model``."""
    for m in model.modules():
        if isinstance(m, GatedMLP):
            hidden = m.gate.numel()
            extra = -hidden % multiple
            if not extra:
                continue
            fc1, fc2 = m.fc1, m.fc2
            m.fc1 = nn.Linear(fc1.in_features, hidden + extra).to(fc1.weight.device, fc1.weight.dtype)
            m.fc2 = nn.Linear(hidden + extra, fc2.out_features).to(fc2.weight.device, fc2.weight.dtype)
            m.fc1.weight.zero_()[:hidden] = fc1.weight
            m.fc1.bias.zero_()[:hidden] = fc1.bias
            m.fc2.weight.zero_()[:, :hidden] = fc2.weight
            m.fc2.bias.copy_(fc2.bias)
            m.gate = nn.Parameter(torch.cat([m.gate, m.gate.new_ones(extra)]), requires_grad=m.gate.requires_grad)
    return model


def resize_image_input(model: DualMatcher, image_size: int) -> DualMatcher:
    """A copy of a trained ``model`` that reads ``image_size`` photos: every weight is kept
    (the stem is convolutional, the blocks see tokens) except the image tower's position
    embeddings, resampled bicubically to the new grid. A start for fine-tuning at a sharper
    input, not a model to score with as it is."""
    data = model.cfg.to_json()
    data["image"]["image_size"] = image_size
    if image_size != model.cfg.image.image_size:
        data["name"] = f"{model.cfg.name}[image_size={image_size}]"
    cfg = ModelConfig.from_json(data)
    out = copy.deepcopy(model)
    out.cfg = cfg
    g, g2, d = model.cfg.image.grid, cfg.image.grid, model.cfg.image.width
    pos = model.image.pos.detach().reshape(1, g, g, d).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(g2, g2), mode="bicubic", align_corners=False)
    out.image.pos = nn.Parameter(pos.permute(0, 2, 3, 1).reshape(1, g2 * g2, d).contiguous())
    return out


def align_for_gpu(model: DualMatcher) -> DualMatcher:
    """The layout changes :func:`for_inference` makes on CUDA: MLP widths padded to
    multiples of 8 (:func:`pad_hidden`) and the stem's convolutions in NHWC, which cuDNN runs
    faster than NCHW. Exact up to float rounding; runs on any device. In place; returns ``model``."""
    pad_hidden(model, 8)
    model.image.stem.to(memory_format=torch.channels_last)
    return model


def for_inference(model: DualMatcher, device: torch.device | str, precision: str = "fp32") -> DualMatcher:
    """A copy of ``model`` made for scoring on ``device``: eval mode, towers in bf16 for
    ``precision="bf16-weights"``, and on CUDA :func:`align_for_gpu`'s layout. Same scores as
    ``model`` up to float rounding. The copy is made where ``model`` is, then moved. (Folding
    the stem's BatchNorms into the convolutions was left out: under bf16 weights it made the
    scores differ more from fp32's; measurements in bench/RESULTS.md.)"""
    device = torch.device(device)
    out = copy.deepcopy(model).eval()
    if precision == "bf16-weights":
        towers_to(out, torch.bfloat16)
    if device.type == "cuda":
        align_for_gpu(out)
    return out.to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_channels(model: nn.Module) -> int:
    return sum(m.gate.numel() for m in model.modules() if isinstance(m, GatedMLP))
