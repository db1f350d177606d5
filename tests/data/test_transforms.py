"""Transforms match the official Swin build_transform; mixup matches timm; the posterize fix."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from configs import ConfigError, get_config
from data import DataError, build_mixup, build_transform
from data.transforms import posterize_any_bits


@pytest.fixture(scope="module")
def tiny_cfg():
    return get_config("configs/swin_tiny.yaml")


def test_train_transform_is_the_official_one(tiny_cfg, caplog):
    with caplog.at_level(logging.WARNING):
        t = build_transform(True, tiny_cfg)
    assert sum("COLOR_JITTER" in r.getMessage() for r in caplog.records) == 1
    official = create_transform(input_size=224, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, re_mode="pixel", re_count=1, interpolation="bicubic")
    assert repr(t) == repr(official)
    kinds = [type(x) for x in t.transforms]
    assert kinds[:3] == [RandomResizedCropAndInterpolation, T.RandomHorizontalFlip, RandAugment]
    assert not any(isinstance(x, T.ColorJitter) for x in t.transforms)  # dropped while RandAugment is on
    crop = t.transforms[0]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and str(crop.interpolation).endswith("BICUBIC")
    norm = next(x for x in t.transforms if isinstance(x, T.Normalize))
    assert tuple(norm.mean) == IMAGENET_DEFAULT_MEAN and tuple(norm.std) == IMAGENET_DEFAULT_STD
    er = t.transforms[-1]
    assert isinstance(er, RandomErasing) and er.probability == 0.25 and er.mode == "pixel" and er.max_count == 1


def test_eval_transform_is_the_official_one(tiny_cfg):
    t = build_transform(False, tiny_cfg)
    assert repr(t) == repr(T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]))
    nocrop = get_config("configs/swin_tiny.yaml", ["TEST.CROP", "False", "DATA.IMG_SIZE", "384"])
    assert repr(build_transform(False, nocrop).transforms[0]) == repr(
        T.Resize((384, 384), interpolation=T.InterpolationMode.BICUBIC))


def test_jitter_without_randaugment_and_small_images():
    cfg = get_config(opts=["AUG.AUTO_AUGMENT", "none", "AUG.COLOR_JITTER", "0.3", "DATA.IMG_SIZE", "32"])
    t = build_transform(True, cfg)
    assert isinstance(t.transforms[0], T.RandomCrop) and t.transforms[0].padding == 4
    assert any(isinstance(x, T.ColorJitter) for x in t.transforms)
    assert not any(isinstance(x, RandAugment) for x in t.transforms)
    assert not any(isinstance(x, T.ColorJitter) for x in build_transform(
        True, get_config(opts=["AUG.AUTO_AUGMENT", "none", "AUG.COLOR_JITTER", "0.0"])).transforms)
    ev = build_transform(False, cfg)
    assert [type(x) for x in ev.transforms] == [T.CenterCrop, T.ToTensor, T.Normalize]  # no resize (official)
    gray28 = Image.fromarray(np.zeros((28, 28), np.uint8)).convert("RGB")
    assert ev(gray28).shape == (3, 32, 32) and t(gray28).shape == (3, 32, 32)


def test_posterize_zero_bits_is_black_not_an_error():
    img = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(posterize_any_bits(img, 0)).max() == 0
    assert np.asarray(posterize_any_bits(img, 1)).max() == 128
    cfg = get_config(opts=["AUG.AUTO_AUGMENT", "rand-m10-n2-inc1", "DATA.IMG_SIZE", "40"])
    t = build_transform(True, cfg)
    for op in next(x for x in t.transforms if isinstance(x, RandAugment)).ops:
        if op.name == "PosterizeIncreasing":
            op.prob = 1.0
            assert np.asarray(op(img)).max() == 0  # magnitude 10 -> 0 bits kept


def test_mixup_targets_and_config():
    cfg = get_config(opts=["DATA.BATCH_SIZE", "6", "MODEL.NUM_CLASSES", "5"])
    m = build_mixup(cfg, 5)
    assert (m.mixup_alpha, m.cutmix_alpha, m.mix_prob, m.switch_prob, m.mode, m.label_smoothing, m.num_classes) == (
        0.8, 1.0, 1.0, 0.5, "batch", 0.1, 5)
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(4):
        xm, ym = m(x.clone(), y)
        assert ym.shape == (6, 5) and torch.allclose(ym.sum(1), torch.ones(6)) and (ym >= 0).all()
    off = get_config(opts=["AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0"])
    assert build_mixup(off, 5) is None
    minmax = get_config(opts=["AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0", "AUG.CUTMIX_MINMAX", "[0.2, 0.8]"])
    assert build_mixup(minmax, 5).cutmix_minmax == (0.2, 0.8)
    with pytest.raises(DataError, match="BATCH_SIZE is 7.*even"):
        build_mixup(get_config(opts=["DATA.BATCH_SIZE", "7"]), 5)


def test_small_image_crop_padding_is_configurable():
    img = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).convert("RGB")
    official = build_transform(True, get_config(None, ["DATA.IMG_SIZE", "28", "AUG.AUTO_AUGMENT", "none", "AUG.REPROB", "0.0"]))
    assert official.transforms[0].padding == 4
    flips_only = build_transform(True, get_config(None, ["DATA.IMG_SIZE", "28", "AUG.AUTO_AUGMENT", "none", "AUG.REPROB", "0.0",
                                                          "AUG.SMALL_CROP_PADDING", "0", "AUG.COLOR_JITTER", "0.0"]))
    plain = build_transform(False, get_config(None, ["DATA.IMG_SIZE", "28"]))(img)
    for _ in range(8):  # without padding the crop is the whole image: the output is the image or its mirror
        out = flips_only(img)
        assert torch.equal(out, plain) or torch.equal(out, plain.flip(-1))
    # AUG.HFLIP (timm's --hflip): never or always mirrored
    plain_opts = ["DATA.IMG_SIZE", "28", "AUG.AUTO_AUGMENT", "none", "AUG.REPROB", "0.0", "AUG.SMALL_CROP_PADDING", "0",
                  "AUG.COLOR_JITTER", "0.0"]
    never = build_transform(True, get_config(None, plain_opts + ["AUG.HFLIP", "0.0"]))
    always = build_transform(True, get_config(None, plain_opts + ["AUG.HFLIP", "1.0"]))
    for _ in range(4):
        assert torch.equal(never(img), plain) and torch.equal(always(img), plain.flip(-1))
    with pytest.raises(ConfigError, match="AUG.HFLIP is a probability"):
        get_config(None, ["AUG.HFLIP", "1.5"])


def test_normalization_and_test_crop_follow_the_config():
    cfg = get_config(opts=["DATA.MEAN", "[0.5, 0.5, 0.5]", "DATA.STD", "[0.5, 0.5, 0.5]", "TEST.CROP_PCT", "0.95"])
    for is_train in (True, False):
        norm = [t for t in build_transform(is_train, cfg).transforms if isinstance(t, T.Normalize)]
        assert [tuple(n.mean) for n in norm] == [(0.5, 0.5, 0.5)] and tuple(norm[0].std) == (0.5, 0.5, 0.5)
    resize = build_transform(False, cfg).transforms[0]
    assert resize.size == int(224 / 0.95)  # 235, timm's crop_pct 0.95
    default = build_transform(False, get_config())
    assert default.transforms[0].size == 256 and tuple(default.transforms[-1].mean) == IMAGENET_DEFAULT_MEAN


def test_normalization_values_are_checked():
    with pytest.raises(Exception, match=r"DATA.STD must be three numbers .*> 0"):
        get_config(opts=["DATA.STD", "[0.2, 0.2, 0.0]"])
    with pytest.raises(Exception, match=r"TEST.CROP_PCT is the center-crop fraction"):
        get_config(opts=["TEST.CROP_PCT", "1.5"])
