"""models/zoo.py's ZOO is the one table of the registered variants: every shipped YAML file of a registered model
builds exactly that architecture, and scripts/benchmark.py builds all implementations from it."""
from __future__ import annotations

import glob
import importlib.util
import os

import pytest

from configs import get_config
from models import ZOO, count_params, create_model, run_name
from models.zoo import claimed_variant

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAMLS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
               if not os.path.basename(p).startswith("_"))


def test_every_registered_variant_has_a_config():
    names = {get_config(p).MODEL.NAME for p in YAMLS}
    claimed = {claimed_variant(n) for n in names} - {None}
    assert claimed == set(ZOO)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "configs")))
def test_a_config_of_a_registered_model_builds_exactly_its_architecture(path):
    cfg = get_config(path)
    name, changes = run_name(cfg)
    assert changes == [] and name == cfg.MODEL.NAME  # MODEL.SWIN.* and DATA.IMG_SIZE equal the table's
    variant = claimed_variant(cfg.MODEL.NAME)
    if variant is not None:
        assert cfg.MODEL.SWIN.PATCH_SIZE == ZOO[variant].patch_size and cfg.DATA.IMG_SIZE == ZOO[variant].img_size


def test_a_changed_config_is_caught():
    tampered = get_config(os.path.join(REPO, "configs", "swin_small.yaml"), ["MODEL.SWIN.DEPTHS", "[2, 2, 6, 2]"])
    assert run_name(tampered)[1] == [
        "MODEL.SWIN.DEPTHS [2, 2, 6, 2] (swin_small_patch4_window7_224 has [2, 2, 18, 2])"]


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", os.path.join(REPO, "scripts", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_builds_every_implementation_from_the_table():
    benchmark = _benchmark()
    for name in ZOO:
        assert benchmark.arch_of(name) == {**ZOO[name].kwargs(), "num_classes": 1000}
    name = "swin_tiny_patch4_window7_224"
    arch = benchmark.arch_of(name)
    for impl in ("ours", "timm", "torchvision"):  # the same architecture in every implementation
        assert count_params(benchmark.build(impl, arch, "cpu")) == ZOO[name].params == count_params(create_model(name))
