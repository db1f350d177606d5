"""The config system: every YAML loads, recipe values equal the reference, BASE, --opts, errors, round trip."""
import glob
import os
import re
import subprocess
import sys

import pytest
from yacs.config import CfgNode

from configs import ConfigError, derive, dump_config, get_config, train_dir, with_inputs_of, with_model_of
from configs.config import Change
from main import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(REPO, "..", "shared", "reference", "recipes.md")
ALL_YAML = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
# the Swin zoo's recipes (reference/recipes.md); baselines and ablations: tests/configs/test_paper_rows.py;
# SwinV2: tests/configs/test_swinv2_configs.py
RECIPE_FILES = [f for f in ALL_YAML if not os.path.basename(f).startswith("_") and "fashion" not in f
                and os.path.basename(os.path.dirname(f)) not in ("baselines", "ablations", "swinv2")]


def _printed_config(path: str, capsys) -> CfgNode:
    assert main(["--cfg", path, "--print-config"]) == 0
    return CfgNode.load_cfg(capsys.readouterr().out)


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def reference():
    if not os.path.isfile(RECIPES):
        pytest.skip(f"reference file {RECIPES} is not present")
    text = open(RECIPES).read()
    archs = {r[0]: r for r in _table(text, "| name | EMBED_DIM")}
    recipes = {r[0]: r for r in _table(text, "| recipe | EPOCHS")}
    return archs, recipes


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: os.path.relpath(p, REPO))
def test_every_yaml_loads(path):
    cfg = get_config(path)
    assert cfg.is_frozen()


def _recipe_row(name: str) -> tuple[str, str]:
    """(recipe row, model letter) for a config's MODEL.NAME."""
    size = re.match(r"swin_(tiny|small|base|large)", name).group(1)[0].upper()
    if name.endswith("_22k"):
        return "IN-22K pretrain (T/S/B/L)", size
    if "22kto1k" in name:
        return "22K -> 1K fine-tune (224 and 384)", size
    if name.endswith("_finetune"):
        return "1K 224 -> 384 fine-tune (B)", size
    return "IN-1K from scratch (T/S/B)", size


def _drop_path(cell: str, size: str) -> float:
    if re.fullmatch(r"[\d.]+", cell):
        return float(cell)
    for part in cell.split(","):
        letters, value = part.strip().rsplit(" ", 1)
        if size in letters.split("/"):
            return float(value)
    raise AssertionError(f"no drop path rate for {size} in {cell!r}")


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_recipe_values_match_reference(path, reference, capsys):
    archs, recipes = reference
    cfg = _printed_config(path, capsys)
    row, size = _recipe_row(cfg.MODEL.NAME)
    _, epochs, warmup, wd, base_lr, warmup_lr, min_lr, dpr = recipes[row]
    assert cfg.TRAIN.EPOCHS == int(epochs) and cfg.TRAIN.WARMUP_EPOCHS == int(warmup)
    assert cfg.TRAIN.WEIGHT_DECAY == float(wd)
    assert (cfg.TRAIN.BASE_LR, cfg.TRAIN.WARMUP_LR, cfg.TRAIN.MIN_LR) == (float(base_lr), float(warmup_lr), float(min_lr))
    assert cfg.MODEL.DROP_PATH_RATE == _drop_path(dpr, size)
    # Architecture: the zoo row with the same family, window and image size.
    family = cfg.MODEL.NAME.split("_patch")[0]
    arch = next(r for n, r in archs.items() if n.startswith(family) and int(r[4]) == cfg.MODEL.SWIN.WINDOW_SIZE)
    assert cfg.MODEL.SWIN.EMBED_DIM == int(arch[1])
    assert cfg.MODEL.SWIN.DEPTHS == [int(x) for x in arch[2].split(",")]
    assert cfg.MODEL.SWIN.NUM_HEADS == [int(x) for x in arch[3].split(",")]
    assert cfg.DATA.IMG_SIZE == int(arch[5])
    assert (cfg.MODEL.SWIN.PATCH_SIZE, cfg.MODEL.SWIN.MLP_RATIO, cfg.MODEL.SWIN.QKV_BIAS) == (4, 4.0, True)
    assert (cfg.MODEL.SWIN.APE, cfg.MODEL.SWIN.PATCH_NORM, cfg.MODEL.DROP_RATE) == (False, True, 0.0)
    # Common to all recipes.
    assert (cfg.TRAIN.OPTIMIZER.NAME, cfg.TRAIN.OPTIMIZER.EPS, list(cfg.TRAIN.OPTIMIZER.BETAS)) == ("adamw", 1e-8, [0.9, 0.999])
    assert (cfg.TRAIN.LR_SCHEDULER.NAME, cfg.TRAIN.LR_SCHEDULER.WARMUP_PREFIX) == ("cosine", True)
    assert (cfg.TRAIN.CLIP_GRAD, cfg.MODEL.LABEL_SMOOTHING, cfg.AMP_ENABLE, cfg.SEED) == (5.0, 0.1, True, 0)
    assert (cfg.AUG.COLOR_JITTER, cfg.AUG.AUTO_AUGMENT, cfg.AUG.REPROB, cfg.AUG.REMODE, cfg.AUG.RECOUNT) == (
        0.4, "rand-m9-mstd0.5-inc1", 0.25, "pixel", 1)
    assert (cfg.AUG.MIXUP, cfg.AUG.CUTMIX, cfg.AUG.CUTMIX_MINMAX, cfg.AUG.MIXUP_PROB) == (0.8, 1.0, None, 1.0)
    assert (cfg.AUG.MIXUP_SWITCH_PROB, cfg.AUG.MIXUP_MODE, cfg.DATA.INTERPOLATION) == (0.5, "batch", "bicubic")
    assert cfg.TEST.CROP == (cfg.DATA.IMG_SIZE != 384)
    # Total batch on 8 GPUs: 4096 for 22K pre-training, 1024 otherwise.
    total = cfg.DATA.BATCH_SIZE * 8 * cfg.TRAIN.ACCUMULATION_STEPS
    assert total == (4096 if row.startswith("IN-22K") else 1024)
    if row.startswith("IN-22K"):
        assert (cfg.DATA.DATASET, cfg.MODEL.NUM_CLASSES) == ("imagenet22K", 21841)


def test_every_zoo_recipe_has_a_file(reference, capsys):
    names = {_printed_config(p, capsys).MODEL.NAME for p in RECIPE_FILES}
    for size in ("tiny", "small", "base", "large"):
        assert f"swin_{size}_patch4_window7_224_22k" in names
        assert f"swin_{size}_patch4_window7_224_22kto1k_finetune" in names
    for size in ("base", "large"):
        assert f"swin_{size}_patch4_window12_384_22kto1k_finetune" in names
    for size in ("tiny", "small", "base"):
        assert f"swin_{size}_patch4_window7_224" in names
    assert "swin_base_patch4_window12_384_finetune" in names


OFFICIAL_TINY = """\
MODEL:
  TYPE: swin
  NAME: swin_tiny_patch4_window7_224
  DROP_PATH_RATE: 0.2
  SWIN:
    EMBED_DIM: 96
    DEPTHS: [ 2, 2, 6, 2 ]
    NUM_HEADS: [ 3, 6, 12, 24 ]
    WINDOW_SIZE: 7
    APE: False
    PATCH_NORM: True
TRAIN:
  WEIGHT_DECAY: 0.05
  BASE_LR: 5e-4
  WARMUP_LR: 5e-7
  MIN_LR: 5e-6
  LR_SCHEDULER:
    NAME: cosine
ENABLE_AMP: False
FUSED_WINDOW_PROCESS: False
"""


def test_official_yaml_resolves_like_ours(tmp_path):
    path = tmp_path / "swin_tiny_patch4_window7_224.yaml"
    path.write_text(OFFICIAL_TINY)
    assert get_config(str(path)) == get_config(os.path.join(REPO, "configs", "swin_tiny.yaml"))


def test_base_inheritance_is_relative_and_ordered(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("TRAIN:\n  EPOCHS: 7\n  WARMUP_EPOCHS: 1\n  BASE_LR: 1e-3\n")
    (tmp_path / "sub" / "b.yaml").write_text("BASE: ['../a.yaml']\nTRAIN:\n  EPOCHS: 9\n")
    cfg = get_config(str(tmp_path / "sub" / "b.yaml"))
    assert (cfg.TRAIN.EPOCHS, cfg.TRAIN.BASE_LR) == (9, 1e-3)


def test_base_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("BASE: ['b.yaml']\n")
    (tmp_path / "b.yaml").write_text("BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match="BASE cycle"):
        get_config(str(tmp_path / "a.yaml"))


def test_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"TAG: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        get_config(str(tmp_path / "evil.yaml"))
    assert not marker.exists()


def test_opts_override_and_types():
    cfg = get_config(None, ["TRAIN.BASE_LR", "1e-3", "MODEL.SWIN.DEPTHS", "[1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2]", "AMP_ENABLE", "False"])
    assert cfg.TRAIN.BASE_LR == 1e-3 and cfg.MODEL.SWIN.DEPTHS == [1, 1] and cfg.AMP_ENABLE is False
    with pytest.raises(ConfigError, match="TRAIN.EPOCHS"):
        get_config(None, ["TRAIN.EPOCHS", "many"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        get_config(None, ["TRAIN.EPOCHS"])


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean TRAIN.BASE_LR"):
        get_config(None, ["TRAIN.BASE_LRR", "1e-3"])
    (tmp_path / "x.yaml").write_text("MODEL:\n  SWIN:\n    WINDOW_SIZ: 7\n")
    with pytest.raises(ConfigError, match="MODEL.SWIN.WINDOW_SIZE"):
        get_config(str(tmp_path / "x.yaml"))


def test_cli_unknown_key_exits_nonzero_naming_the_key():
    proc = subprocess.run([sys.executable, "main.py", "--cfg", "configs/swin_tiny.yaml", "--opts", "TRAIN.BASE_LRR", "1e-3"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "TRAIN.BASE_LR" in proc.stderr and "Traceback" not in proc.stderr


def test_config_is_frozen():
    cfg = get_config(None)
    with pytest.raises(AttributeError):
        cfg.TRAIN.BASE_LR = 1.0


def test_flags_override_opts(capsys):
    cfg = None
    assert main(["--opts", "DATA.BATCH_SIZE", "8", "--batch-size", "16", "--accumulation-steps", "2", "--disable_amp",
                 "--eval", "--resume", "r.pth", "--tag", "t1", "--print-config"]) == 0
    cfg = CfgNode.load_cfg(capsys.readouterr().out)
    assert (cfg.DATA.BATCH_SIZE, cfg.TRAIN.ACCUMULATION_STEPS, cfg.AMP_ENABLE) == (16, 2, False)
    assert (cfg.EVAL_MODE, cfg.MODEL.RESUME, cfg.TAG) == (True, "r.pth", "t1")


def test_print_config_round_trip(tmp_path, capsys):
    args = ["--cfg", os.path.join(REPO, "configs", "swin_base.yaml"), "--batch-size", "32", "--opts", "TRAIN.EPOCHS", "50"]
    assert main(args + ["--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "config.yaml").write_text(printed)
    first = get_config(os.path.join(REPO, "configs", "swin_base.yaml"), ["DATA.BATCH_SIZE", "32", "TRAIN.EPOCHS", "50"])
    again = get_config(str(tmp_path / "config.yaml"))
    assert again == first and dump_config(again) == printed
    # Derived values are computed from the unscaled config both times: no double scaling.
    assert derive(again, world_size=8) == derive(first, world_size=8)
    assert derive(again, world_size=8).base_lr == pytest.approx(5e-4 * 32 * 8 / 512 * 2)


def test_derived_values():
    cfg = get_config(os.path.join(REPO, "configs", "swin_tiny.yaml"))
    d = derive(cfg, world_size=8, num_classes=10)
    assert d.total_batch == 1024 and d.base_lr == pytest.approx(1e-3) and d.min_lr == pytest.approx(1e-5)
    assert d.warmup_lr == pytest.approx(1e-6) and d.num_classes == 10
    assert d.run_dir == os.path.join("output", "swin_tiny_patch4_window7_224", "default")
    assert cfg.TRAIN.BASE_LR == 5e-4  # never written back


def test_warmup_longer_than_training_is_found_by_get_config_with_the_fix():
    with pytest.raises(ConfigError, match=r"TRAIN.WARMUP_EPOCHS 20 >= TRAIN.EPOCHS 2 leaves no cosine decay: lower "
                                          r"TRAIN.WARMUP_EPOCHS \(e.g. --opts TRAIN.WARMUP_EPOCHS 0\)"):
        get_config(None, ["TRAIN.EPOCHS", "2"])
    get_config(None, ["TRAIN.EPOCHS", "2", "EVAL_MODE", "True"])  # nothing is trained: no schedule to check
    get_config(None, ["TRAIN.EPOCHS", "2", "TRAIN.LR_SCHEDULER.NAME", "step"])


def test_a_folder_given_to_cfg_names_a_file_to_use():
    with pytest.raises(ConfigError, match=r"configs is a folder: pass one YAML file in it to --cfg, e.g. .*\.yaml"):
        get_config(os.path.join(REPO, "configs"))


def test_odd_opts_list_only_what_the_user_typed(capsys):
    assert main(["--opts", "TRAIN.EPOCHS", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "odd number of items: ['TRAIN.EPOCHS']" in err and "BATCH_SIZE" not in err


def test_eval_and_throughput_runs_write_into_folders_of_the_training_run():
    train = derive(get_config(None, ["TAG", "r1"]))
    assert train.run_dir == train_dir(get_config(None, ["TAG", "r1"])) == os.path.join(
        "output", "swin_tiny_patch4_window7_224", "r1")
    assert derive(get_config(None, ["TAG", "r1", "EVAL_MODE", "True"])).run_dir == os.path.join(train.run_dir, "eval")
    assert derive(get_config(None, ["TAG", "r1", "THROUGHPUT_MODE", "True"])).run_dir == os.path.join(
        train.run_dir, "throughput")
    assert derive(get_config(None, ["TAG", "r1"]), model_name="swin_custom_x").run_dir == os.path.join(
        "output", "swin_custom_x", "r1")


def test_with_model_of_takes_only_the_model_keys_of_a_saved_config():
    saved = get_config(None, ["MODEL.NAME", "mine", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1]",
                              "MODEL.SWIN.NUM_HEADS", "[1, 2]", "DATA.IMG_SIZE", "32", "MODEL.SWIN.ATTN_IMPL", "eager",
                              "TRAIN.BASE_LR", "1.0", "DATA.BATCH_SIZE", "3"])
    cfg = get_config(None, ["EVAL_MODE", "True"])
    new, changed = with_model_of(cfg, dump_config(saved), "ck.pth")
    assert changed[0] == Change("MODEL.NAME", "swin_tiny_patch4_window7_224", "mine")
    assert [str(c) for c in changed] == [
                       "MODEL.NAME swin_tiny_patch4_window7_224 -> mine", "MODEL.SWIN.DEPTHS [2, 2, 6, 2] -> [1, 1]",
                       "MODEL.SWIN.EMBED_DIM 96 -> 16", "MODEL.SWIN.NUM_HEADS [3, 6, 12, 24] -> [1, 2]",
                       "DATA.IMG_SIZE 224 -> 32"]
    assert new.is_frozen() and new.MODEL.SWIN.ATTN_IMPL == "auto" and new.DATA.BATCH_SIZE == cfg.DATA.BATCH_SIZE
    assert new.TRAIN.BASE_LR == cfg.TRAIN.BASE_LR and new.EVAL_MODE
    assert with_model_of(cfg, dump_config(cfg), "ck.pth") == (cfg, [])
    with pytest.raises(ConfigError, match="Unknown config key MODEL.SWIN.WINDOW_SIZES .from ck.pth."):
        with_model_of(cfg, "MODEL:\n  SWIN:\n    WINDOW_SIZES: 7\n", "ck.pth")


def test_the_saved_inputs_are_taken_only_where_the_config_leaves_them_empty():
    """A timm model's own normalization and crop, filled in and saved at training time, are what its evaluation
    uses (with_inputs_of); a config that sets them on purpose keeps its own; with_model_of leaves them alone."""
    saved = get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224", "DATA.MEAN", "[0.5, 0.5, 0.5]",
                              "DATA.STD", "[0.5, 0.5, 0.5]", "TEST.CROP_PCT", "0.9"])
    empty = get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224", "EVAL_MODE", "True"])
    assert with_model_of(empty, dump_config(saved), "ck.pth") == (empty, [])  # the same model
    new, changed = with_inputs_of(empty, dump_config(saved), "ck.pth")
    assert [str(c) for c in changed] == ["DATA.MEAN [] -> [0.5, 0.5, 0.5]", "DATA.STD [] -> [0.5, 0.5, 0.5]",
                                         "TEST.CROP_PCT 0.0 -> 0.9"]
    assert (list(new.DATA.MEAN), new.TEST.CROP_PCT) == ([0.5, 0.5, 0.5], 0.9)
    chosen = get_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224", "TEST.CROP_PCT", "1.0"])
    new, changed = with_inputs_of(chosen, dump_config(saved), "ck.pth")
    assert new.TEST.CROP_PCT == 1.0 and "TEST.CROP_PCT" not in [c.key for c in changed]


def test_print_config_shows_a_timm_models_own_inputs_as_a_run_uses_them(capsys):
    import timm

    assert main(["--opts", "MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224", "--print-config"]) == 0
    cfg = CfgNode.load_cfg(capsys.readouterr().out)
    own = timm.models.get_pretrained_cfg("vit_base_patch16_224")
    assert list(cfg.DATA.MEAN) == list(own.mean) and cfg.TEST.CROP_PCT == own.crop_pct
    assert main(["--opts", "MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224", "TEST.CROP_PCT", "1.0",
                 "--print-config"]) == 0
    assert CfgNode.load_cfg(capsys.readouterr().out).TEST.CROP_PCT == 1.0
