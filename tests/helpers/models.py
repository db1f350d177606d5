"""Model-test helpers: a small SwinTransformer config and a parameter perturbation that makes parity checks bite."""
import torch
from torch import nn


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Randomise the parameters the default init leaves constant (norms, biases, bias tables) so parity can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "bias_table" in name or "pos_embed" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def tiny_kwargs(**overrides) -> dict:
    """A small SwinTransformer config that still has shifted masks in 2 stages, no padding, 4 stages."""
    kw = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4,
              num_classes=10, drop_path_rate=0.0)
    kw.update(overrides)
    return kw
