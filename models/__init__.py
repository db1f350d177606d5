"""Swin Transformer models: the network, the variant table, config mapping, weight loading and FLOPs."""
from .build import build_model
from .swin import SwinTransformer
from .zoo import ZOO, create_model, list_models

__all__ = ["SwinTransformer", "build_model", "create_model", "list_models", "ZOO"]
