"""The Swin variants of the paper: one table of official names, hyperparameters and exact parameter counts.

It is the only one: the YAML configs of these models and scripts/benchmark.py are checked against it
(tests/configs/test_variants.py), and a config that changes a registered model's architecture does not go by its
name (models.build.run_name)."""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .swin import SwinTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """Hyperparameters of one registered model and its parameter count with a 1000-class head."""

    embed_dim: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    window_size: int
    img_size: int
    params: int
    patch_size: int = 4

    def kwargs(self) -> Dict[str, Any]:
        """SwinTransformer keyword arguments of this variant (its architecture; not the classes or drop rates)."""
        return dict(embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads,
                    window_size=self.window_size, img_size=self.img_size, patch_size=self.patch_size)


_T, _S = (2, 2, 6, 2), (2, 2, 18, 2)
ZOO: Dict[str, Variant] = {
    "swin_tiny_patch4_window7_224": Variant(96, _T, (3, 6, 12, 24), 7, 224, 28_288_354),
    "swin_small_patch4_window7_224": Variant(96, _S, (3, 6, 12, 24), 7, 224, 49_606_258),
    "swin_base_patch4_window7_224": Variant(128, _S, (4, 8, 16, 32), 7, 224, 87_768_224),
    "swin_base_patch4_window12_384": Variant(128, _S, (4, 8, 16, 32), 12, 384, 87_903_584),
    "swin_large_patch4_window7_224": Variant(192, _S, (6, 12, 24, 48), 7, 224, 196_532_476),
    "swin_large_patch4_window12_384": Variant(192, _S, (6, 12, 24, 48), 12, 384, 196_735_516),
}


def claimed_variant(name: str, table: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The registered variant a model name claims, or None: the official names with their suffixes
    (swin_tiny_patch4_window7_224_22k, ..._22kto1k_finetune) and timm's tags (....ms_in1k) claim their stem.
    `table`: the variants to look in (default: Swin v1's ZOO)."""
    for key in ZOO if table is None else table:
        if name == key or name.startswith((key + "_", key + ".")):
            return key
    return None


def list_models() -> List[str]:
    """Names of every registered variant."""
    return list(ZOO)


def create_model(name: str, **overrides: Any) -> SwinTransformer:
    """Build a registered variant by its official name; keyword overrides replace table entries."""
    if name not in ZOO:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(ZOO)}")
    return SwinTransformer(**{**ZOO[name].kwargs(), **overrides})
