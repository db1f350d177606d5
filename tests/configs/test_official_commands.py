"""Commands copied from the official release work: its config paths and its flags (its launcher form,
`python -m torch.distributed.launch ... --master_port P main.py`, runs in tests/engine/test_run.py)."""
from __future__ import annotations

import logging
import os

import pytest
from yacs.config import CfgNode

from configs import get_config
from main import main
from tests.helpers.processes import REPO

# The official release's Swin v1 config files (configs/swin/ there); each names one shipped config's model.
OFFICIAL_V1 = [
    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384_finetune", "swin_tiny_patch4_window7_224_22k", "swin_small_patch4_window7_224_22k",
    "swin_base_patch4_window7_224_22k", "swin_large_patch4_window7_224_22k",
    "swin_tiny_patch4_window7_224_22kto1k_finetune", "swin_small_patch4_window7_224_22kto1k_finetune",
    "swin_base_patch4_window7_224_22kto1k_finetune", "swin_base_patch4_window12_384_22kto1k_finetune",
    "swin_large_patch4_window7_224_22kto1k_finetune", "swin_large_patch4_window12_384_22kto1k_finetune",
]


def _printed(capsys, *args: str) -> CfgNode:
    assert main([*args, "--print-config"]) == 0
    return CfgNode.load_cfg(capsys.readouterr().out)


@pytest.mark.parametrize("name", OFFICIAL_V1)
def test_official_v1_paths_load_the_shipped_config_of_that_model(name, capsys):
    cfg = _printed(capsys, "--cfg", os.path.join(REPO, "configs", "swin", f"{name}.yaml"))
    assert cfg.MODEL.NAME == name and cfg.MODEL.TYPE == "swin"


def test_official_swinv2_paths_are_the_shipped_files(capsys):
    cfg = _printed(capsys, "--cfg", os.path.join(REPO, "configs", "swinv2", "swinv2_base_patch4_window8_256.yaml"))
    assert (cfg.MODEL.TYPE, cfg.MODEL.NAME, cfg.MODEL.DROP_PATH_RATE) == ("swinv2", "swinv2_base_patch4_window8_256", 0.5)


def test_an_official_path_of_a_model_not_shipped_names_the_nearest(capsys):
    assert main(["--cfg", os.path.join(REPO, "configs", "swin", "swin_tiny_c24_patch4_window8_256.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no shipped config has that model name" in err and "Did you mean" in err


def test_official_flags_are_accepted(capsys):
    cfg = _printed(capsys, "--optim", "sgd", "--fused_window_process", "--fused_layernorm", "--amp-opt-level", "O0")
    assert (cfg.TRAIN.OPTIMIZER.NAME, cfg.FUSED_WINDOW_PROCESS, cfg.FUSED_LAYERNORM, cfg.AMP_ENABLE) == (
        "sgd", True, True, False)
    cfg = _printed(capsys, "--optim", "fused_adam", "--opts", "AMP_ENABLE", "False", "--amp_opt_level", "O1")
    assert (cfg.TRAIN.OPTIMIZER.NAME, cfg.AMP_ENABLE) == ("adamw", True)
    assert main(["--optim", "fused_lamb", "--print-config"]) == 2
    assert "TRAIN.OPTIMIZER.NAME" in capsys.readouterr().err


def test_kernel_flags_are_said_to_have_no_effect(caplog):
    import importlib

    run_module = importlib.import_module("engine.run")
    with caplog.at_level(logging.WARNING):
        run_module._log_official_no_ops(get_config(opts=["FUSED_LAYERNORM", "True"]))
        run_module._log_official_no_ops(get_config())
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["FUSED_LAYERNORM"]
    assert "has no effect here" in caplog.records[0].getMessage()
