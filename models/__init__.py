"""Swin Transformer models: the network, the variant table, config mapping, weight loading and FLOPs."""
from .build import build_model, run_name
from .flops import count_flops, count_params
from .swin import SwinTransformer
from .weights import LoadReport, WeightsError, load_weights
from .zoo import ZOO, create_model, list_models

__all__ = [
    "SwinTransformer", "build_model", "run_name", "create_model", "list_models", "ZOO",
    "count_flops", "count_params", "load_weights", "LoadReport", "WeightsError",
]
