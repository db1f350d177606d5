"""Parameter and FLOP counts in the paper's convention (FLOPs = multiply-adds of matmuls and convolutions)."""
import logging
from typing import Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .attention import forced_kernel

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, img_size: Union[int, Tuple[int, int]], in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass on a single in_chans x H x W image.

    Counts every matmul and convolution, including the attention products (run with the eager kernel so
    they are visible whatever kernel the model normally uses); norms, softmax and activations are not
    counted, as in the paper's GFLOPs. SwinV2's position-bias MLP (cpb_mlp) is not counted either: it reads no
    input (one table per window size, the same for every image), and the official table leaves it out.
    Works on a model on the meta device (no compute at all).
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, forced_kernel("eager"):
            model(torch.zeros(1, in_chans, h, w, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    input_free = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith("cpb_mlp"))
    return (counter.get_total_flops() - input_free) // 2  # FlopCounterMode counts 2 per multiply-add
