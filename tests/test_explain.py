"""ecomatch_model.explain: title word offsets, the heatmap overlay, and ``ecomatch explain``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pipeline_fixtures import model_dir_fixture  # noqa: F401 (fixtures)

from ecomatch_model import cli
from ecomatch_model.explain import heat_colours, mention_words, overlay_heatmap
from ecomatch_model.text import word_offsets
from ecomatch_model.text import words


@pytest.mark.parametrize("title", [
    "Ardent Men's Navy Blue T-Shirt", "  <b>Red</b> \"Dress\" ", "a''b 'c' __d__ x1", "İstanbul ΣΑΣ blue",
    "", "'''", "Café crème-brûlée ½ Shirt",
])
def test_word_offsets_cover_exactly_the_tokens_of_words(title):
    offsets = word_offsets(title)
    assert [w for a, b in offsets for w in words(title[a:b])] == words(title)
    assert all(len(words(title[a:b])) == 1 for a, b in offsets)
    assert offsets == sorted(offsets) and all(a < b for a, b in offsets)


def test_mention_words_are_the_title_as_written_or_none_past_its_tokens():
    title = "Ardent Men's NAVY   blue T-Shirt"
    assert mention_words(title, (2, 4)) == "NAVY   blue"
    assert mention_words(title, (1, 2)) == "Men's"
    assert mention_words(title, (6, 7)) is None           # a column value appended after the title


def test_overlay_tints_the_hottest_cell_and_leaves_cold_cells_and_empty_maps_alone():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    attention = np.zeros((4, 4), np.float32)
    attention[0, 3] = 1.0                                   # top-right cell only
    out = np.asarray(overlay_heatmap(image, attention, alpha=0.6), dtype=np.float32)
    assert out.shape == (64, 64, 3)
    hot = 0.4 * 255 + 0.6 * heat_colours(np.array(1.0))
    np.testing.assert_allclose(out[4, 60], hot, atol=1.5)   # inside the hot cell, away from its edges
    np.testing.assert_array_equal(out[60, 4], [255, 255, 255])
    assert np.asarray(overlay_heatmap(image, np.zeros((4, 4)))).tolist() == np.asarray(image).tolist()


def test_explain_command_draws_one_panel_per_attribute(tmp_path: Path, model_dir, red_jpeg, capsys):
    (tmp_path / "shirt.jpg").write_bytes(red_jpeg)
    out = tmp_path / "explain.png"
    title = "Ardent Men Navy Blue Cotton T-Shirt"
    assert cli.main(["explain", "--model", model_dir, "--image", str(tmp_path / "shirt.jpg"), "--title", title,
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("p_violation ") and printed[-1] == f"written to {out}"
    kinds = [line.split(":")[0].strip() for line in printed[1:-1] if not line.startswith("  - ")]
    assert sorted(kinds) == ["article_type", "colour", "gender", "material"]
    assert 'title: "Navy Blue"' in next(line for line in printed if line.strip().startswith("colour"))
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width == 12 + 5 * (176 + 12)   # image + 4 attribute panels


def test_explain_command_refuses_a_file_that_is_not_an_image(tmp_path: Path, model_dir, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    assert cli.main(["explain", "--model", model_dir, "--image", str(tmp_path / "notes.txt"), "--title", "Red Shirt",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot identify image format" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
