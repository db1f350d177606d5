"""Data-test helpers: tiny CPU configs, tiny ImageNet-layout image folders, and scripts/*.py loaded as modules."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

from configs import get_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package), to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_cfg(**over):
    """A tiny CPU config; keyword keys use '__' for '.', e.g. DATA__IMG_SIZE=32."""
    opts = {"DATA.NUM_WORKERS": 0, "DATA.BATCH_SIZE": 4, "DATA.IMG_SIZE": 32, "MODEL.NUM_CLASSES": 3}
    opts.update({k.replace("__", "."): v for k, v in over.items()})
    flat = []
    for k, v in opts.items():
        flat += [k, v if isinstance(v, str) else repr(v)]
    return get_config(opts=flat)


def write_folder(root, classes=("n02", "n01", "n03"), per_class=(5, 2), size=(40, 30)) -> str:
    """root/train/<cls>/<i>.JPEG (per_class[0] each) and root/val/<cls>/<i>.JPEG (per_class[1] each)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f"{c}_{i}.JPEG"), quality=90)
    return str(root)
