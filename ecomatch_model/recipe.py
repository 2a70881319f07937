"""Training recipes: one flat TOML file of ``ecomatch train`` values per training stage.

A recipe's keys are the long options of ``ecomatch train`` with ``_`` for ``-`` (``data``,
``config``, ``epochs``, ``batch_size``, ``lr``, ``init``, ``image_negatives``,
``synthetic_seeds`` ...), plus a free ``description``. Relative ``data`` globs are read under
the trainer's ``--data-root``. Options given on the command line override single values.
Unknown keys and values of the wrong type are refused with one line naming the file and the
key, so a typo never trains silently with a default.
"""
from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Mapping, Sequence

from .data import Listings, concat_listings, read_listings
from .sample import write_sample

class RecipeError(ValueError):
    """A recipe file that cannot be read, or holds an unknown key or a mistyped value."""


@dataclass(frozen=True)
class Field:
    """What a recipe key may hold: ``kind`` (str, int or float), a list of them, and the
    allowed values (``choices``) where the option has some."""

    kind: type
    is_list: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        name = {str: "a string", int: "an integer", float: "a number"}[self.kind]
        return f"a list of {name.split(' ', 1)[1]}s" if self.is_list else name


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):         # TOML true/false is never a count or a rate
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def check(values: Mapping[str, Any], fields: Mapping[str, Field], where: str) -> dict[str, Any]:
    """``values`` checked against ``fields``; ints given for numbers become floats."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        spec = fields.get(key)
        if spec is None:
            raise RecipeError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(fields))})")
        items = value if spec.is_list else [value]
        if (spec.is_list and not isinstance(value, list)) or not all(_fits(v, spec.kind) for v in items):
            raise RecipeError(f"{where}: {key!r} must be {spec.describe()}, got {value!r}")
        if spec.choices is not None and any(v not in spec.choices for v in items):
            raise RecipeError(f"{where}: {key!r} must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
        items = [float(v) if spec.kind is float else v for v in items]
        out[key] = items if spec.is_list else items[0]
    return out


def read_recipe(path: str, fields: Mapping[str, Field]) -> dict[str, Any]:
    """The checked values of the TOML recipe at ``path``."""
    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise RecipeError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise RecipeError(f"{path}: {nested[0]!r}: a recipe is flat (no tables)")
    return check(values, fields, path)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):           # a JSON string is a TOML basic string, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)               # repr: inf, nan and 1e-05 are TOML too
    raise TypeError(f"no TOML form for {value!r}")


def dump_recipe(values: Mapping[str, Any], comment: str = "") -> str:
    """A flat TOML recipe holding ``values`` (``None``, an unset value, is left out)."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)


def data_globs(globs: Sequence[str], root: str) -> list[str]:
    """A recipe's data globs, the relative ones under ``root``; absolute paths and URLs as given."""
    return [g if "://" in g or os.path.isabs(g) else os.path.join(root, g) for g in globs]


def _render(args: tuple[str, int, int]) -> str:
    out, n, seed = args
    write_sample(out, n=n, seed=seed, mismatch_rate=0.0, shards=1)
    return out


def synthetic_listings(seeds: Sequence[int], n: int, workers: int | None = None) -> Listings:
    """``n`` clean synthetic listings per seed, one seed after another, exactly as
    ``ecomatch make-sample --n N --seed S --mismatch-rate 0 --shards 1`` writes them; rendered
    in parallel processes into a temporary directory and read back."""
    if not seeds or n <= 0:
        return Listings([], [], [], {})
    with tempfile.TemporaryDirectory(prefix="ecomatch-synthetic-") as tmp:
        jobs = [(os.path.join(tmp, str(seed)), n, seed) for seed in seeds]
        workers = min(len(jobs), workers or os.cpu_count() or 1)
        if workers > 1:                  # spawn: the parent already holds torch's threads
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                dirs = list(pool.map(_render, jobs))
        else:
            dirs = [_render(job) for job in jobs]
        return concat_listings([read_listings(os.path.join(d, "*.parquet")) for d in dirs])
