"""t2t: train, evaluate and load Tokens-to-Token vision transformers (T2T-ViT).

Importing the package registers every T2T-ViT variant with timm's model registry.
"""
from . import models
from .models import CheckpointError, count_macs, count_params, load_pretrained_weights
from .version import __version__

__all__ = ["models", "CheckpointError", "count_macs", "count_params", "load_pretrained_weights", "__version__"]
