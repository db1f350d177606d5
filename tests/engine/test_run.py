"""engine.run end to end on tiny synthetic data: the run directory, exact resume, eval-only, throughput,
and a 2-process torchrun launch of main.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

import engine
from configs import get_config
from tests.helpers.engine import SHORT_RUN, TINY_SWIN, tiny_model
from tests.helpers.processes import records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Randomness left on (mixup/cutmix, drop path, label smoothing, bf16 autocast): resume must still be exact.
RUN_OPTS = TINY_SWIN + SHORT_RUN + ["MODEL.DROP_PATH_RATE", "0.1", "MODEL_EMA.ENABLE", "True",
                                    "MODEL_EMA.DECAY", "0.9", "TEST.USE_EMA", "True"]
CKPT_KEYS = {"model", "optimizer", "lr_scheduler", "scaler", "ema", "epoch", "global_step", "max_accuracy", "rng",
             "config", "derived"}


def _run(tmp_path, *opts: str) -> int:
    return engine.run(get_config(None, RUN_OPTS + ["OUTPUT", str(tmp_path)] + list(opts)))


def _check_run_dir(run_dir: str, epochs: int, val_images: int) -> dict:
    names = set(os.listdir(run_dir))
    assert {"config.yaml", "log.txt", "metrics.jsonl", "eval.json", "report.md"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert f"ckpt_epoch_{epochs - 1}.pth" in names
    logged = records(run_dir)
    steps = [r for r in logged if r["kind"] == "step"]
    epochs_rec = [r for r in logged if r["kind"] == "epoch"]
    assert {"epoch", "step", "lr", "loss", "grad_norm", "loss_scale", "img_per_s", "mem_mb", "eta_s"} <= set(steps[0])
    assert [r["epoch"] for r in epochs_rec] == list(range(epochs))
    assert {"train_loss", "val_loss", "top1_acc", "top1_err", "top5_acc", "top5_err"} <= set(epochs_rec[-1])
    with open(os.path.join(run_dir, "eval.json")) as f:
        ev = json.load(f)
    assert ev["num_images"] == val_images
    assert ev["top1_acc"] == pytest.approx(100.0 * ev["correct1"] / val_images)
    assert ev["top1_err"] == pytest.approx(100.0 - ev["top1_acc"]) and 0 <= ev["top5_acc"] <= 100
    assert get_config(os.path.join(run_dir, "config.yaml")).MODEL.SWIN.EMBED_DIM == 16  # feeds back in
    assert "Train: [0/" in open(os.path.join(run_dir, "log.txt")).read()
    return ev


def test_run_then_resume_is_bitwise_exact_then_eval_and_throughput(tmp_path):
    assert _run(tmp_path) == 0
    run_dir = str(tmp_path / "swin_tiny_test" / "default")
    ev = _check_run_dir(run_dir, epochs=2, val_images=20)
    assert "ema_top1_acc" in records(run_dir)[-1] and ev["ema"] is True
    final = torch.load(os.path.join(run_dir, "ckpt_epoch_1.pth"), weights_only=True, map_location="cpu")
    assert CKPT_KEYS <= set(final) and final["epoch"] == 1 and final["global_step"] == 8
    assert final["lr_scheduler"]["step"] == 8 and len(final["rng"]) == 1

    # Stop after epoch 0's checkpoint and relaunch: the new epoch 1 must equal the uninterrupted one bit for bit.
    shutil.move(os.path.join(run_dir, "ckpt_epoch_1.pth"), str(tmp_path / "uninterrupted.pth"))
    assert _run(tmp_path) == 0
    assert "resumed from" in open(os.path.join(run_dir, "log.txt")).read()
    # the first run's records of epoch 1 were dropped when the second run resumed after epoch 0: no step twice
    steps = [r["step"] for r in records(run_dir) if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 8, steps
    assert [r["epoch"] for r in records(run_dir) if r["kind"] == "epoch"] == [0, 1]
    again = torch.load(os.path.join(run_dir, "ckpt_epoch_1.pth"), weights_only=True, map_location="cpu")
    for section in ("model", "ema"):
        for k, v in final[section].items():
            assert torch.equal(again[section][k], v), f"{section}.{k}"
    for pid, s in final["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(again["optimizer"]["state"][pid][k], v), f"optimizer.{pid}.{k}"
    assert again["global_step"] == final["global_step"]

    # The same command again: the run is finished, so nothing is trained, evaluated or rewritten.
    before = (os.path.getmtime(os.path.join(run_dir, "eval.json")), len(records(run_dir)))
    assert _run(tmp_path) == 0
    assert (os.path.getmtime(os.path.join(run_dir, "eval.json")), len(records(run_dir))) == before
    assert "has finished all 2 epochs" in open(os.path.join(run_dir, "log.txt")).read()

    # Evaluate the checkpoint alone: same counts as the run's final report (EMA weights, TEST.USE_EMA), written to
    # the run's eval/ folder, leaving the training run's own files as they were.
    trained = {n: os.path.getmtime(os.path.join(run_dir, n)) for n in ("config.yaml", "eval.json", "log.txt")}
    ckpt = os.path.join(run_dir, "ckpt_epoch_1.pth")
    assert _run(tmp_path, "EVAL_MODE", "True", "MODEL.RESUME", ckpt) == 0
    with open(os.path.join(run_dir, "eval", "eval.json")) as f:
        ev_only = json.load(f)
    assert (ev_only["correct1"], ev_only["correct5"], ev_only["num_images"]) == (
        ev["correct1"], ev["correct5"], ev["num_images"])
    assert not any(n.startswith("ckpt") for n in os.listdir(os.path.join(run_dir, "eval")))
    assert {n: os.path.getmtime(os.path.join(run_dir, n)) for n in trained} == trained
    # ... and with a config of another architecture: the model saved in the checkpoint is evaluated, and the log
    # says which keys it took from the checkpoint
    assert _run(tmp_path, "EVAL_MODE", "True", "MODEL.RESUME", ckpt, "TAG", "other", "MODEL.SWIN.EMBED_DIM", "24",
                "MODEL.NAME", "swin_other") == 0
    other = tmp_path / "swin_tiny_test" / "other" / "eval"
    assert json.load(open(other / "eval.json"))["correct1"] == ev["correct1"]
    log_text = open(other / "log.txt").read()
    assert (f"Checkpoint {ckpt} holds another model than this config's; evaluating it with the model config saved in "
            "it: MODEL.NAME swin_other -> swin_tiny_test, MODEL.SWIN.EMBED_DIM 24 -> 16.") in log_text
    assert get_config(str(other / "config.yaml")).MODEL.SWIN.EMBED_DIM == 16
    # --pretrained takes the config's model as it is, and says how to evaluate the checkpoint's own
    assert _run(tmp_path, "EVAL_MODE", "True", "MODEL.PRETRAINED", ckpt, "TAG", "p", "MODEL.SWIN.EMBED_DIM", "24") == 1
    log_text = open(tmp_path / "swin_tiny_test" / "p" / "eval" / "log.txt").read()
    assert f"{ckpt} is a checkpoint of this project: `--eval --resume {ckpt}` evaluates the model" in log_text
    assert "... and 29 more" in log_text  # the first mis-shaped keys, not all of them

    # --eval without --resume evaluates the newest checkpoint of the training run
    assert _run(tmp_path, "EVAL_MODE", "True") == 0
    assert "ckpt_epoch_1.pth" in json.load(open(os.path.join(run_dir, "eval", "eval.json")))["checkpoint"]

    assert _run(tmp_path, "THROUGHPUT_MODE", "True") == 0
    speed = records(os.path.join(run_dir, "throughput"))
    assert speed[0]["kind"] == "throughput" and speed[0]["img_per_s"] > 0 and speed[0]["batch_size"] == 8
    assert {n: os.path.getmtime(os.path.join(run_dir, n)) for n in trained} == trained


def test_weights_without_a_config_that_do_not_fit_are_a_clear_error(tmp_path, caplog):
    model = tiny_model()
    path = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, path)
    assert _run(tmp_path, "EVAL_MODE", "True", "MODEL.RESUME", path, "MODEL.SWIN.EMBED_DIM", "24") == 1
    assert f"Checkpoint {path} does not fit the model of this config." in caplog.text


def test_eval_without_weights_is_a_clear_error(tmp_path, caplog):
    assert _run(tmp_path, "EVAL_MODE", "True", "TRAIN.AUTO_RESUME", "False") == 1
    assert "EVAL_MODE needs weights" in caplog.text


def test_two_processes_through_the_official_launcher_form(tmp_path):
    """`python -m torch.distributed.launch --nproc_per_node 2 --master_port P main.py ...`, the official release's
    command (it passes --local-rank; the other 2-process tests use torchrun): a 2-epoch run with accumulation."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = TINY_SWIN + SHORT_RUN + ["OUTPUT", str(tmp_path), "TAG", "ddp", "DATA.BATCH_SIZE", "4",
                                    "TRAIN.ACCUMULATION_STEPS", "2", "DATA.SYNTHETIC_VAL_SIZE", "13"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.join(REPO, "main.py"), "--opts", *opts]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # timed out: take the workers down with the launcher
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-5000:]
    run_dir = str(tmp_path / "swin_tiny_test" / "ddp")
    _check_run_dir(run_dir, epochs=2, val_images=13)
    ckpt = torch.load(os.path.join(run_dir, "ckpt_epoch_1.pth"), weights_only=True, map_location="cpu")
    assert len(ckpt["rng"]) == 2 and ckpt["derived"]["world_size"] == 2 and ckpt["derived"]["total_batch"] == 16
    # 32 images / 2 ranks / batch 4 = 4 micro-batches per rank -> 2 updates per epoch
    assert ckpt["global_step"] == 4


def test_finetune_from_pretrained_weights(tmp_path, caplog):
    pretrained = tiny_model(7, "MODEL.NUM_CLASSES", "5")  # another head: finetune re-initialises it
    path = str(tmp_path / "pretrained.pth")
    torch.save({"model": pretrained.state_dict()}, path)
    assert _run(tmp_path, "MODEL.PRETRAINED", path, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
                "DATA.SYNTHETIC_TRAIN_SIZE", "16", "TAG", "ft") == 0
    assert "reinitialized" in caplog.text and "resumed from" not in caplog.text
    ckpt = torch.load(tmp_path / "swin_tiny_test" / "ft" / "ckpt_epoch_0.pth", weights_only=True)
    assert ckpt["model"]["head.weight"].shape == (10, 16 * 2)
    assert ckpt["global_step"] == 2  # a fresh schedule


def test_deterministic_option_runs_and_is_switched_off_after_the_run(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    assert _run(tmp_path, "TRAIN.DETERMINISTIC", "True", "TAG", "a") == 0
    assert _run(tmp_path, "TRAIN.DETERMINISTIC", "True", "TAG", "b") == 0
    assert not torch.are_deterministic_algorithms_enabled()  # process-wide: restored when the run ends
    runs = tmp_path / "swin_tiny_test"
    assert "TRAIN.DETERMINISTIC: deterministic algorithms" in (runs / "a" / "log.txt").read_text()
    a, b = (torch.load(runs / t / "ckpt_epoch_1.pth", weights_only=True, map_location="cpu")["model"] for t in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_eval_of_a_checkpoint_takes_its_inputs_without_calling_it_another_model(monkeypatch):
    """A checkpoint saved with its filled-in inputs (a timm model's own), evaluated with a config that leaves them
    empty: the saved inputs are used, nothing is reported as a model change, and a checkpoint of the same model under
    another name keeps this run's name."""
    import importlib

    from configs import dump_config, get_config

    run_module = importlib.import_module("engine.run")
    saved = get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "other_name", "TEST.CROP_PCT", "0.9",
                              "DATA.MEAN", "[0.5, 0.5, 0.5]", "DATA.STD", "[0.5, 0.5, 0.5]"])
    monkeypatch.setattr(run_module, "_saved_config", lambda path: dump_config(saved))
    cfg = get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "my_name", "EVAL_MODE", "True",
                            "MODEL.RESUME", "ck.pth"])
    evaluated, changed = run_module._model_of_checkpoint_to_evaluate(cfg)
    assert changed == [] and evaluated.MODEL.NAME == "my_name"
    assert (evaluated.TEST.CROP_PCT, list(evaluated.DATA.MEAN)) == (0.9, [0.5, 0.5, 0.5])
