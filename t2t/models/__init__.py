"""The T2T-ViT family, registered with timm on import.

The optional float32 CPU backend is not imported here: `from t2t.models import cpu; cpu.accelerate(model)`.
"""
from .layers import TokenPerformer, TokenTransformer, sinusoid_table
from .t2t_vit import MODEL_ARCHS, T2TModule, T2TViT
from .t2t_vit_variants import VARIANTS, T2TViTBlocks, T2TViTDense  # registers t2t_vit_14_se, t2t_vit_dense, t2t_vit_16_ghost
from .weights import (
    CheckpointError,
    checkpoint_filter_fn,
    extract_state_dict,
    load_pretrained_weights,
    read_checkpoint,
    resize_pos_embed,
)
from .t2t_vit_teacher import DISTILLED_ARCHS, T2TViTDistilled, T2TViTTokenLabel, create_token_label_model
from .complexity import count_macs, count_params

__all__ = [
    "MODEL_ARCHS", "T2TModule", "T2TViT", "TokenPerformer", "TokenTransformer", "sinusoid_table",
    "T2TViTBlocks", "T2TViTDense", "VARIANTS",
    "CheckpointError", "checkpoint_filter_fn", "extract_state_dict", "load_pretrained_weights",
    "read_checkpoint", "resize_pos_embed", "count_macs", "count_params",
    "DISTILLED_ARCHS", "T2TViTDistilled", "T2TViTTokenLabel", "create_token_label_model",
]
