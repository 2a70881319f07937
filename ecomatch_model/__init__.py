"""ecomatch_model: a lightweight dual transformer that checks listing photos against their
titles, attribute by attribute. Never imports Apache Beam."""
from .api import AttributeScore, ListingScore, Matcher, load
from .config import CONFIGS, ImageConfig, ModelConfig, TextConfig, get_config
from .model import DualMatcher, MatchOutput

__all__ = ["load", "Matcher", "ListingScore", "AttributeScore", "DualMatcher", "MatchOutput", "ModelConfig",
           "ImageConfig", "TextConfig", "CONFIGS", "get_config"]
