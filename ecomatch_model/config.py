"""Model configuration: one dataclass per tower plus a top-level config, and the registry
of named variants (tiny, base, paper).

A checkpoint's ``config.json`` is ``ModelConfig.to_json()``; loading rebuilds it with
``ModelConfig.from_json``, which refuses unknown keys, and every config checks the type and
bounds of each field, with a one-line ``ValueError`` naming the key (``image.patch is 0,
expected an integer in [4, 256]``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping


# Bounds (inclusive) of every numeric field, far beyond any sane model and far below what
# would exhaust a worker: a value outside them is a broken or hostile config.json.
_INT_BOUNDS = {"image_size": (8, 1024), "patch": (4, 256), "stem_channels": (1, 4096), "width": (1, 8192),
               "depth": (1, 64), "heads": (1, 128), "mlp_hidden": (1, 65536), "vocab_size": (2, 1 << 20),
               "max_len": (1, 4096), "compression": (1, 1024), "aga_heads": (1, 128), "max_attrs": (1, 64),
               "n_values": (1, 1 << 20), "n_kinds": (1, 4096)}


def _check_int(key: str, value: Any) -> int:
    """``value`` if it is an integer within ``_INT_BOUNDS`` of its field; else ValueError naming ``key``."""
    lo, hi = _INT_BOUNDS[key.rsplit(".", 1)[-1].split("[")[0]]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{key} is {value!r}, expected an integer in [{lo}, {hi}]")
    return value


def _check_fields(obj: Any, where: str) -> None:
    """Type and bounds of every int field of a tower or model config (``mlp_hidden`` apart)."""
    for f in fields(obj):
        if f.name in _INT_BOUNDS and f.name != "mlp_hidden":
            _check_int(f"{where}{f.name}", getattr(obj, f.name))


def _hidden_list(hidden: int | list[int], depth: int, where: str = "") -> list[int]:
    if isinstance(hidden, list):
        return [_check_int(f"{where}mlp_hidden[{i}]", h) for i, h in enumerate(hidden)]
    return [_check_int(f"{where}mlp_hidden", hidden)] * depth


@dataclass
class ImageConfig:
    """ITransformer: conv stem with total stride ``patch``, then ``depth`` blocks."""

    image_size: int = 64
    patch: int = 8
    stem_channels: int = 32
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_hidden: list[int] | int = 256

    def __post_init__(self) -> None:
        _check_fields(self, "image.")
        self.mlp_hidden = _hidden_list(self.mlp_hidden, self.depth, "image.")
        if self.image_size % self.patch or self.patch < 4 or self.patch & (self.patch - 1):
            raise ValueError("image.image_size must be a multiple of image.patch, a power of two >= 4")
        if len(self.mlp_hidden) != self.depth or self.width % self.heads:
            raise ValueError("image.mlp_hidden needs one width per block; image.width must divide by image.heads")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


@dataclass
class TextConfig:
    """TTransformer over ``max_len`` tokens; ``vocab_size`` includes padding and buckets."""

    vocab_size: int = 2048
    max_len: int = 24
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_hidden: list[int] | int = 256

    def __post_init__(self) -> None:
        _check_fields(self, "text.")
        self.mlp_hidden = _hidden_list(self.mlp_hidden, self.depth, "text.")
        if len(self.mlp_hidden) != self.depth or self.width % self.heads:
            raise ValueError("text.mlp_hidden needs one width per block; text.width must divide by text.heads")


@dataclass
class ModelConfig:
    """The dual transformer with attribute-guided attention.

    ``compression`` is the ratio r: image and text features are projected from the image
    tower width d to ``d // compression`` before AGA and the matching head.
    ``n_values`` / ``n_kinds`` come from the lexicon the model is trained with.
    """

    name: str = "tiny"
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    compression: int = 4
    aga_heads: int = 2
    max_attrs: int = 6
    n_values: int = 128
    n_kinds: int = 5
    prune_ratio: float = 0.4
    pruned: bool = False

    @property
    def embed_dim(self) -> int:
        return self.image.width // self.compression

    def __post_init__(self) -> None:
        for key, tower in (("image", ImageConfig), ("text", TextConfig)):
            value = getattr(self, key)
            if isinstance(value, Mapping):
                setattr(self, key, _strict(tower, value))
            elif not isinstance(value, tower):
                raise ValueError(f"{key} is {value!r}, expected an object of {tower.__name__} keys")
        _check_fields(self, "")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 200:
            raise ValueError(f"name is {self.name!r:.60}, expected a string of 1 to 200 characters")
        if isinstance(self.prune_ratio, bool) or not isinstance(self.prune_ratio, (int, float)) \
                or not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio is {self.prune_ratio!r}, expected a number in [0, 1)")
        if not isinstance(self.pruned, bool):
            raise ValueError(f"pruned is {self.pruned!r}, expected true or false")
        if self.compression > self.image.width:
            raise ValueError(f"compression is {self.compression}, expected at most image.width ({self.image.width})")
        if self.embed_dim % self.aga_heads:
            raise ValueError("embed_dim (image width / compression) must divide by aga_heads")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ModelConfig":
        return _strict(cls, data)


def _strict(cls: type, data: Mapping[str, Any]):
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} is {data!r:.60}, expected a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys in config: {', '.join(unknown)}")
    return cls(**data)


CONFIGS: dict[str, Callable[[], ModelConfig]] = {}


def register(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    CONFIGS[fn.__name__] = fn
    return fn


@register
def tiny() -> ModelConfig:
    """Tests and the bundled synthetic-data model: under 2M parameters, 96x96 input."""
    return ModelConfig(name="tiny",
                       image=ImageConfig(image_size=96, patch=8, stem_channels=24, width=128,
                                         depth=2, heads=4, mlp_hidden=256),
                       text=TextConfig(vocab_size=2048, max_len=24, width=128, depth=2, heads=4,
                                       mlp_hidden=256),
                       compression=4, aga_heads=2)


@register
def base() -> ModelConfig:
    """The default CPU-friendly model for real catalogue photos: 80x80 input."""
    return ModelConfig(name="base",
                       image=ImageConfig(image_size=80, patch=8, stem_channels=32, width=192,
                                         depth=4, heads=6, mlp_hidden=512),
                       text=TextConfig(vocab_size=9216, max_len=24, width=192, depth=3, heads=6,
                                       mlp_hidden=512),
                       compression=4, aga_heads=4)


@register
def paper() -> ModelConfig:
    """The published design's size: 224x224 input, 38.6M parameters after 40% pruning."""
    return ModelConfig(name="paper",
                       image=ImageConfig(image_size=224, patch=16, stem_channels=64, width=512,
                                         depth=8, heads=8, mlp_hidden=2048),
                       text=TextConfig(vocab_size=8192, max_len=32, width=512, depth=6, heads=8,
                                       mlp_hidden=2048),
                       compression=4, aga_heads=8)


def get_config(name: str) -> ModelConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]()


def apply_overrides(cfg: ModelConfig, overrides: list[str]) -> ModelConfig:
    """``["compression=1", "image.depth=2"]`` applied to a config (for ablations); the
    result is re-validated and its name records the change."""
    data = cfg.to_json()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad override {item!r}: expected KEY=VALUE")
        *path, leaf = key.split(".")
        target = data
        for part in path:
            target = target[part]
        if leaf not in target:
            raise ValueError(f"unknown config field {key!r}")
        target[leaf] = json.loads(raw)
        if leaf == "depth":
            target["mlp_hidden"] = target["mlp_hidden"][0]
    if overrides:
        data["name"] = f"{cfg.name}[{','.join(overrides)}]"
    return ModelConfig.from_json(data)
