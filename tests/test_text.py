from hypothesis import given, settings
from hypothesis import strategies as st

from ecomatch_model.text import Lexicon, Mention, TextEncoder, Vocabulary, words


def test_words_lowercase_split():
    assert words("Nike Men's T-Shirt, NAVY-blue!") == ["nike", "mens", "t", "shirt", "navy", "blue"]


def test_longest_match_wins(lexicon):
    m = lexicon.extract(words("Roadster Men Navy Blue Shirt"))
    assert [(x.kind, x.value) for x in m] == [("gender", "men"), ("colour", "navy blue"), ("article_type", "shirt")]
    assert m[1] == Mention("colour", "navy blue", 2, 4)


def test_surface_forms_one_value(lexicon):
    for title in ("Blue T-Shirt", "Blue Tshirt", "Blue Tee", "blue t-shirts", "Blue Polo T-Shirt"):
        kinds = {(m.kind, m.value) for m in lexicon.extract(words(title))}
        assert ("article_type", "tshirt") in kinds, title


def test_extract_spans_point_at_tokens(lexicon):
    toks = words("Ardent Women Striped Red Cotton Dress")
    for m in lexicon.extract(toks):
        assert lexicon.canonical(m.kind, " ".join(toks[m.start:m.end])) == m.value


def test_canonical_maps_catalogue_columns(lexicon):
    assert lexicon.canonical("article_type", "Tshirts") == "tshirt"
    assert lexicon.canonical("colour", "Navy Blue") == "navy blue"
    assert lexicon.canonical("colour", "Gray") == "grey"
    assert lexicon.canonical("colour", "Plaid") is None


def test_lexicon_grows_from_columns_and_roundtrips(lexicon):
    rows = [{"article_type": "Kaftans", "sub_category": "Topwear"}] * 3 + [{"article_type": "Rare", "sub_category": "X"}]
    grown = lexicon.extended(rows, {"article_type": "article_type"})
    assert "kaftans" in grown.values_of("article_type") and "rare" not in grown.values_of("article_type")
    assert grown.group("article_type", "kaftans") == "topwear"
    assert [(m.kind, m.value) for m in grown.extract(words("Blue Kaftan"))] == [("colour", "blue"), ("article_type", "kaftans")]
    again = Lexicon.from_json(grown.to_json())
    assert again.values == grown.values and again.extract(words("navy kaftan")) == grown.extract(words("navy kaftan"))


def test_vocab_hashes_unknown_words_stably():
    v = Vocabulary(["blue", "shirt"], n_buckets=16)
    assert v.id("blue") == 1 and v.id("shirt") == 2
    oov = v.id("zebrawood")
    assert 3 <= oov < v.size and oov == Vocabulary.from_json(v.to_json()).id("zebrawood")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120))
def test_encoder_shapes_and_masks(title):
    lex = Lexicon.from_seeds()
    enc = TextEncoder(Vocabulary(["blue"], 32), lex, max_len=12, max_attrs=3).encode([title, "Red Navy Blue Tee"])
    assert enc.ids.shape == (2, 12) and enc.attr_mask.shape == (2, 3, 12)
    # Padding is exactly where the mask is off; nothing is dropped up to max_len.
    assert ((enc.ids != 0) == enc.mask).all()
    assert enc.mask[0].sum() == min(12, len(words(title)))
    # Attribute masks cover only real tokens, and only for valid slots.
    assert (enc.attr_mask.sum(-1) > 0).tolist() == enc.attr_valid.tolist()
    assert (enc.attr_mask * ~enc.mask[:, None, :]).sum() == 0
    assert [(m.kind, m.value) for m in enc.mentions[1]] == [("colour", "red"), ("colour", "navy blue"), ("article_type", "tshirt")]


def test_encoder_appends_column_attributes(lexicon):
    enc = TextEncoder(Vocabulary([], 32), lexicon, max_len=10, max_attrs=4).encode(
        ["Red Dress"], [[("colour", "red"), ("pattern", "striped")]])
    assert [(m.kind, m.value, m.start, m.end) for m in enc.mentions[0]] == [
        ("colour", "red", 0, 1), ("article_type", "dress", 1, 2), ("pattern", "striped", 2, 3)]
    assert enc.mask[0].sum() == 3
