"""Models: plain ``nn.Module``s built by name through the registry (``create_model``)."""

from hifusion.models import (  # noqa: F401  (import registers the models)
    baselines,
    bleep,
    hifusion,
    hist2st,
    histogene,
    linear_probe,
    triplex,
)
from hifusion.models.encoders import Encoder, create_encoder, list_encoders, register_encoder
from hifusion.models.hifusion import HiFusion, HiFusionOutput
from hifusion.models.layers import ModelOutput
from hifusion.models.loading import load_checkpoint
from hifusion.models.losses import get_loss, hifusion_loss
from hifusion.models.registry import ModelEntry, create_model, list_models, model_entry, register_model

__all__ = [
    "Encoder",
    "HiFusion",
    "HiFusionOutput",
    "ModelEntry",
    "ModelOutput",
    "create_encoder",
    "create_model",
    "get_loss",
    "hifusion_loss",
    "list_encoders",
    "list_models",
    "load_checkpoint",
    "model_entry",
    "register_encoder",
    "register_model",
]
