"""Every random-number decision of the engine in one place: seeding a run and each epoch, and the exact save and
restore of every generator for bitwise resume.

Where randomness comes from during training: drop path, dropout and mixup/cutmix draw from torch's and numpy's
global generators, reseeded at the start of every epoch from (SEED, rank, epoch) (`epoch_seed`), so an epoch's draws
do not depend on how the run got there; data augmentation draws per sample from seeds the sampler hands out
(data/base.py seeds the CPU generators around each sample, in the loader workers or the main process); a
mid-epoch checkpoint stores every rank's generator states (`gather_rng_states`) and a resumed run restores its own.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

from engine.distributed import all_gather_object

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for (SEED, rank, epoch): drop path and mixup draws of that epoch."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def capture_rng_state() -> dict:
    """This process's random-number state (python, numpy, torch CPU, its current CUDA device) as plain data.

    Everything is a list, number or tensor so the checkpoint still loads with weights_only=True.
    """
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # only this rank's own device: with all GPUs visible to every rank, restoring every device's state would
        # let the ranks overwrite each other's generators in whatever order they get there
        state["cuda"] = [torch.cuda.get_rng_state(torch.cuda.current_device())]
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what `capture_rng_state` returned, so the following random numbers repeat exactly."""
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in mt), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    saved_cuda = state.get("cuda")
    if saved_cuda and torch.cuda.is_available():
        device = torch.cuda.current_device()
        # one state: this rank's device; several: an older checkpoint with every visible device, indexed by device
        own = saved_cuda[0] if len(saved_cuda) == 1 else saved_cuda[device] if device < len(saved_cuda) else None
        if own is None:
            log.warning("Checkpoint holds CUDA RNG states for %d devices, none for device %d; it is not restored.",
                        len(saved_cuda), device)
        else:
            torch.cuda.set_rng_state(own.to(torch.uint8), device=device)
    elif saved_cuda:
        log.warning("Checkpoint holds CUDA RNG states but CUDA is not available; they are not restored.")


def gather_rng_states() -> list[dict]:
    """Every rank's RNG state, in rank order (a collective: call it on all ranks)."""
    return all_gather_object(capture_rng_state())
