"""Tiny Swin configs and models, fixed batches and an SGD training context, for in-process engine runs."""
from __future__ import annotations

import torch
from yacs.config import CfgNode

import models
from configs import get_config
from engine.amp import AmpPolicy
from engine.optim import LRSchedule, zero_momentum_buffers
from engine.train import TrainContext

# A Swin with two stages of one block at 32x32: ~19k parameters, milliseconds per step on CPU.
TINY_SWIN = [
    "MODEL.NAME", "swin_tiny_test",
    "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2]",
    "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.PATCH_SIZE", "2", "DATA.IMG_SIZE", "32", "MODEL.NUM_CLASSES", "10",
]
# Everything random off: no dropout, no drop path, no mixup, plain cross-entropy, fp32.
NO_RANDOMNESS = [
    "MODEL.DROP_PATH_RATE", "0.0", "MODEL.DROP_RATE", "0.0", "AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0",
    "MODEL.LABEL_SMOOTHING", "0.0", "AMP_ENABLE", "False", "TRAIN.CLIP_GRAD", "5.0",
]
# A short synthetic run: 32 train / 20 val images, batch 8, 2 epochs.
SHORT_RUN = [
    "DATA.DATASET", "synthetic", "DATA.SYNTHETIC_TRAIN_SIZE", "32", "DATA.SYNTHETIC_VAL_SIZE", "20",
    "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1",
    "PRINT_FREQ", "2", "DEVICE", "cpu",
]

FP32_CPU = AmpPolicy(enabled=False, dtype=torch.bfloat16, device_type="cpu")


def tiny_cfg(*opts: str) -> CfgNode:
    return get_config(None, TINY_SWIN + NO_RANDOMNESS + list(opts))


def tiny_model(seed: int = 0, *opts: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model(tiny_cfg(*opts), torch.device("cpu"))


def fixed_batches(n: int, batch: int, seed: int = 1, classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(classes, (batch,), generator=g))
            for _ in range(n)]


def constant_lr(lr: float) -> LRSchedule:
    return LRSchedule(name="step", base_lr=lr, warmup_lr=0.0, min_lr=0.0, total_steps=10**6, decay_steps=10**6)


def sgd_context(model: torch.nn.Module, lr: float = 0.1, accumulation_steps: int = 1, clip: float | None = 5.0,
                world_size: int = 1, fused: bool = True) -> TrainContext:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, fused=fused)
    zero_momentum_buffers(opt)
    return TrainContext(optimizer=opt, schedule=constant_lr(lr), criterion=torch.nn.CrossEntropyLoss(), amp=FP32_CPU,
                        device=torch.device("cpu"), accumulation_steps=accumulation_steps, clip_grad=clip,
                        print_freq=0, world_size=world_size)
