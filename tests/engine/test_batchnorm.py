"""BatchNorm under DDP: the ranks' running statistics are averaged before every evaluation and save, so that a
convolutional baseline evaluates the same on 1 and on 2 processes."""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import average_batchnorm_statistics
from tests.helpers.processes import RUN_OPTS, main_cmd, run, run_dir


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.LayerNorm(4), torch.nn.BatchNorm1d(2))
        with torch.no_grad():
            model[0].running_mean.fill_(rank + 1.0)  # rank 0: 1, rank 1: 2
            model[0].running_var.fill_(4.0 * (rank + 1))
            model[2].running_mean.copy_(torch.tensor([rank * 10.0, -1.0]))
        n = average_batchnorm_statistics(model)
        torch.save({"n": n, "state": model.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_statistics_become_the_mean_over_ranks(tmp_path):
    # forked, not spawned: the workers need no second import of torch
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert outs[0]["n"] == outs[1]["n"] == 2  # the two BatchNorm layers, not the LayerNorm
    for out in outs:
        s = out["state"]
        assert torch.equal(s["0.running_mean"], torch.full((3,), 1.5))
        assert torch.equal(s["0.running_var"], torch.full((3,), 6.0))
        assert torch.equal(s["2.running_mean"], torch.tensor([5.0, -1.0]))
        assert torch.equal(s["1.weight"], torch.ones(4))  # parameters untouched
    assert average_batchnorm_statistics(torch.nn.BatchNorm2d(3)) == 0  # one process: nothing to do


BN_MODEL = ["MODEL.TYPE", "timm", "MODEL.NAME", "test_resnet", "MODEL_EMA.ENABLE", "False", "TRAIN.EPOCHS", "1",
            "TRAIN.WARMUP_EPOCHS", "0",
            "DATA.SYNTHETIC_TRAIN_SIZE", "32", "DATA.SYNTHETIC_VAL_SIZE", "13"]


def test_a_batchnorm_model_evaluates_the_same_on_two_processes_and_on_one(tmp_path):
    out = str(tmp_path)
    done = run(main_cmd(out, *BN_MODEL, procs=2))
    assert done.returncode == 0, done.stdout + done.stderr
    directory = run_dir(out).replace("swin_tiny_test", "test_resnet")
    two = json.load(open(os.path.join(directory, "eval.json")))
    ckpt = os.path.join(directory, "ckpt_epoch_0.pth")
    import engine  # one process: run in this one (no interpreter start-up)
    from configs import get_config

    assert engine.run(get_config(None, RUN_OPTS + BN_MODEL + ["EVAL_MODE", "True", "MODEL.RESUME", ckpt,
                                                              "OUTPUT", out])) == 0
    one = json.load(open(os.path.join(directory, "eval", "eval.json")))
    assert one["num_images"] == two["num_images"] == 13
    assert one["top1_acc"] == two["top1_acc"] and one["top5_acc"] == two["top5_acc"]
    assert abs(one["loss"] - two["loss"]) <= 1e-5 * abs(one["loss"]), (one["loss"], two["loss"])


def test_sync_batchnorm_converts_on_cuda_and_is_one_clear_error_on_cpu():
    import importlib

    import pytest

    from configs import ConfigError, get_config
    from engine.distributed import DistInfo

    run_module = importlib.import_module("engine.run")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    on = get_config(opts=["MODEL.SYNC_BN", "True"])
    cuda = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0))
    converted = run_module._with_sync_batchnorm(model, on, cuda)  # module surgery only: no CUDA work
    assert isinstance(converted[1], torch.nn.SyncBatchNorm) and converted[1].weight is model[1].weight
    cpu = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="MODEL.SYNC_BN needs CUDA devices .* set it False"):
        run_module._with_sync_batchnorm(model, on, cpu)
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert run_module._with_sync_batchnorm(model, on, one) is model  # one process: nothing to synchronise
    assert run_module._with_sync_batchnorm(model, get_config(), cpu) is model  # off by default
    assert run_module._with_sync_batchnorm(model, get_config(opts=["MODEL.SYNC_BN", "True", "EVAL_MODE", "True"]),
                                           cpu) is model  # evaluation only: nothing to synchronise


def test_sync_batchnorm_keeps_the_activation_of_timm_norm_act_layers():
    """timm's BatchNormAct2d (norm + activation in one layer) must stay norm + activation: torch's converter would
    drop the activation."""
    import importlib

    import timm

    from configs import get_config
    from engine.distributed import DistInfo

    run_module = importlib.import_module("engine.run")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    cuda = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0))
    converted = run_module._with_sync_batchnorm(model, get_config(opts=["MODEL.SYNC_BN", "True"]), cuda).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    with torch.no_grad():  # eval mode: SyncBatchNorm uses its running statistics, no process group needed
        assert torch.equal(converted(x), before)
