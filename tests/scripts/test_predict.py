"""scripts/predict.py: top-k classes of images from a checkpoint, with class names."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import models
from configs import dump_config, get_config
from data import build_transform
from data.images import decode_rgb
from engine.checkpoint import save_checkpoint
from scripts import predict
from tests.helpers.processes import write_malicious_checkpoint

TINY = ["MODEL.NAME", "swin_micro", "DATA.IMG_SIZE", "32", "MODEL.SWIN.EMBED_DIM", "8", "MODEL.SWIN.DEPTHS",
        "[1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2]", "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.DROP_PATH_RATE", "0.0"]


def _images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return [os.path.join(folder, f"{i}.png") for i in range(n)]


def _checkpoint(tmp_path, opts, ema=False):
    cfg = get_config(None, TINY + opts)
    torch.manual_seed(0)
    model = models.build_model(cfg).eval()
    state = {"model": model.state_dict(), "config": dump_config(cfg)}
    if ema:
        ema_model = models.build_model(cfg).eval()  # other random weights
        state["ema"] = ema_model.state_dict()
        model = ema_model
    path = str(tmp_path / "ckpt_epoch_0.pth")
    save_checkpoint(path, state)
    return cfg, model, path


def _expected(cfg, model, files, k):
    t = build_transform(False, cfg)
    x = torch.stack([t(decode_rgb(f, f)) for f in files])
    with torch.no_grad():
        p, i = model(x).softmax(1).topk(k, dim=1)
    return i.tolist(), p.tolist()


def _parse(out):
    """{file: [(index, percent, label)]} from predict's output."""
    result, current = {}, None
    for line in out.splitlines():
        if not line.startswith("  "):
            current = result.setdefault(line, [])
        else:
            rank_pct, rest = line.strip().split("%  ", 1)
            label, idx = rest.rsplit(" [", 1)
            current.append((int(idx[:-1]), float(rank_pct.split()[1]), label))
    return result


@pytest.mark.parametrize("ema", [False, True])
def test_folder_class_names_and_saved_config(tmp_path, capsys, ema):
    data = tmp_path / "ds"
    for name in ("cat", "dog", "eel"):
        (data / "train" / name).mkdir(parents=True)
    cfg, model, ckpt = _checkpoint(tmp_path, ["MODEL.NUM_CLASSES", "3", "DATA.DATA_PATH", str(data)], ema=ema)
    files = _images(str(tmp_path / "imgs"), 3)
    args = ["--resume", ckpt, str(tmp_path / "imgs"), "--topk", "2", "--device", "cpu"] + (["--ema"] if ema else [])
    assert predict.main(args) == 0
    got = _parse(capsys.readouterr().out)
    idx, prob = _expected(cfg, model, files, 2)
    assert list(got) == files
    for f, i, p in zip(files, idx, prob):
        assert [g[0] for g in got[f]] == i
        assert [g[1] for g in got[f]] == pytest.approx([100 * q for q in p], abs=0.006)
        assert [g[2] for g in got[f]] == [["cat", "dog", "eel"][j] for j in i]


def test_imagenet_names_from_timm_with_cfg_file(tmp_path, capsys):
    cfg, model, ckpt = _checkpoint(tmp_path, ["MODEL.NUM_CLASSES", "1000"])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(dump_config(cfg))
    files = _images(str(tmp_path / "imgs"), 1)
    assert predict.main(["--cfg", str(cfg_file), "--resume", ckpt, files[0], "--device", "cpu"]) == 0
    got = _parse(capsys.readouterr().out)[files[0]]
    idx, _ = _expected(cfg, model, files, 5)
    assert [g[0] for g in got] == idx[0]
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert [g[2] for g in got] == [info.index_to_description(i) for i in idx[0]]
    assert info.index_to_description(0) == "tench, Tinca tinca"


def test_indices_without_names(tmp_path, capsys):
    cfg, model, ckpt = _checkpoint(tmp_path, ["MODEL.NUM_CLASSES", "4", "DATA.DATA_PATH", str(tmp_path / "none")])
    files = _images(str(tmp_path / "imgs"), 1)
    assert predict.main(["--resume", ckpt, files[0], "--device", "cpu", "--topk", "9"]) == 0
    got = _parse(capsys.readouterr().out)[files[0]]
    assert len(got) == 4 and [g[2] for g in got] == [f"class {g[0]}" for g in got]
    assert sum(g[1] for g in got) == pytest.approx(100.0, abs=0.02)


def test_errors_name_the_file(tmp_path, capsys):
    _, _, ckpt = _checkpoint(tmp_path, ["MODEL.NUM_CLASSES", "3"])
    bad = tmp_path / "imgs" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = _images(str(tmp_path / "imgs"), 2)
    # an unreadable image among good ones: named with its error, the others still classified, exit code 1
    assert predict.main(["--resume", ckpt, good[0], str(bad), good[1], "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "1 of 3 images could not be read" in captured.err
    out = captured.out.splitlines()
    assert out[out.index(str(bad)) + 1].startswith("  error: ") and "broken.png" in out[out.index(str(bad)) + 1]
    assert all(out[out.index(g) + 1].startswith("  1. ") for g in good)
    assert predict.main(["--resume", ckpt, str(tmp_path / "nothing.jpg"), "--device", "cpu"]) == 2
    assert "nothing.jpg is neither" in capsys.readouterr().err
    assert predict.main(["--resume", str(tmp_path / "gone.pth"), str(bad), "--device", "cpu"]) == 2
    assert "gone.pth does not exist" in capsys.readouterr().err
    official = str(tmp_path / "official.pth")
    torch.save({"model": torch.load(ckpt, weights_only=True)["model"]}, official)
    assert predict.main(["--resume", official, str(bad), "--device", "cpu"]) == 2
    assert "official.pth holds no config" in capsys.readouterr().err
    assert predict.main(["--resume", ckpt, str(bad), "--ema", "--device", "cpu"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err
    assert predict.main(["--resume", ckpt, str(bad), "--device", "cpu", "--opts", "MODEL.SWIN.EMBED_DIM", "16"]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_malicious_checkpoint_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = str(tmp_path / "evil.pth")
    write_malicious_checkpoint(evil, marker)
    files = _images(str(tmp_path / "imgs"), 1)
    assert predict.main(["--resume", evil, files[0], "--device", "cpu"]) == 2
    assert "evil.pth" in capsys.readouterr().err
    assert not marker.exists()


def test_a_timm_model_gets_its_own_normalization_and_crop(tmp_path, capsys, monkeypatch):
    """A timm model's weights file with a --cfg that leaves DATA.MEAN/STD and TEST.CROP_PCT empty: the images are
    prepared as those weights were trained (ViT's mean and std 0.5, crop 0.9), as a run's evaluation does."""
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), tmp_path / "vit.pth")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(dump_config(get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "vit_tiny_patch16_224"])))
    seen = []
    monkeypatch.setattr(predict, "build_transform", lambda train, cfg: seen.append(cfg) or build_transform(train, cfg))
    files = _images(str(tmp_path / "imgs"), 1)
    assert predict.main(["--cfg", str(cfg_file), "--resume", str(tmp_path / "vit.pth"), files[0], "--device", "cpu"]) == 0
    own = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
    assert list(seen[0].DATA.MEAN) == list(own.mean) == [0.5, 0.5, 0.5] and seen[0].TEST.CROP_PCT == own.crop_pct


def test_with_cfg_the_checkpoints_inputs_fill_what_it_leaves_empty(tmp_path, monkeypatch):
    _, _, ckpt = _checkpoint(tmp_path, ["TEST.CROP_PCT", "0.9", "DATA.MEAN", "[0.5, 0.5, 0.5]"])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(dump_config(get_config(None, TINY + ["DATA.MEAN", "[0.4, 0.4, 0.4]"])))  # its own mean
    seen = []
    monkeypatch.setattr(predict, "build_transform", lambda train, cfg: seen.append(cfg) or build_transform(train, cfg))
    files = _images(str(tmp_path / "imgs"), 1)
    assert predict.main(["--cfg", str(cfg_file), "--resume", ckpt, files[0], "--device", "cpu"]) == 0
    assert seen[0].TEST.CROP_PCT == 0.9 and list(seen[0].DATA.MEAN) == [0.4, 0.4, 0.4]
