"""The numpy backend's models: digits classifiers in versions that differ in cost and accuracy."""

from real.models.digits import VERSIONS, DigitsModel, cache_dir, load_model, test_split

__all__ = ["VERSIONS", "DigitsModel", "cache_dir", "load_model", "test_split"]
