"""Load, validate and freeze the configuration; compute the values derived from it.

`get_config` reads a YAML file (following `BASE:` includes relative to the including file), applies
`KEY VALUE` overrides and returns a frozen yacs CfgNode. Values that depend on the run (scaled learning
rates, number of classes, run directory) are never written back: `derive` returns them as a `Derived`.
"""
from __future__ import annotations

import ast
import difflib
import glob
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN

from configs.defaults import get_defaults


class ConfigError(ValueError):
    """A configuration the user wrote cannot be used; the message says which key or file and why."""


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CN):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _unknown_key(key: str, valid: CN, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(valid), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else " Run `python main.py --print-config` to list every key."
    return ConfigError(f"Unknown config key {key} (from {source}).{hint}")


def _read_yaml(path: str, stack: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Return [(file, mapping), ...] in merge order: the BASE files first (depth first), then `path`."""
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(stack + (path,))
        raise ConfigError(f"BASE cycle in config files: {chain}. Remove one of the includes.")
    if os.path.isdir(path):
        yamls = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
        hint = f", e.g. {os.path.join(path, yamls[0])}" if yamls else ""
        raise ConfigError(f"Config file {path} is a folder: pass one YAML file in it to --cfg{hint}.")
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}. Pass an existing YAML file to --cfg.")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML (only plain YAML, no Python tags): {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, not {type(data).__name__}.")
    out: list[tuple[str, dict]] = []
    for base in data.pop("BASE", None) or []:
        if base:
            out.extend(_read_yaml(os.path.join(os.path.dirname(path), base), stack + (path,)))
    out.append((path, data))
    return out


def _merge(cfg: CN, data: dict, source: str, prefix: str = "") -> None:
    """Merge a nested mapping into cfg, checking keys and coercing types like yacs, with clear errors."""
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            raise _unknown_key(full, get_defaults(), source)
        if isinstance(cfg[k], CN):
            if not isinstance(v, dict):
                raise ConfigError(f"Config key {full} (from {source}) is a section; give it a mapping, not {v!r}.")
            _merge(cfg[k], v, source, full + ".")
        else:
            cfg[k] = _coerce(full, cfg[k], v, source)


def _coerce(key: str, default: Any, value: Any, source: str) -> Any:
    if isinstance(value, str) and not isinstance(default, str):
        try:  # "1e-8" from YAML, "[2, 2]" or "True" from the command line
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if default is None or value is None:
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise _type_error(key, default, value, source)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if not isinstance(value, type(default)):
        raise _type_error(key, default, value, source)
    return value


def _type_error(key: str, default: Any, value: Any, source: str) -> ConfigError:
    return ConfigError(
        f"Config key {key} (from {source}) expects {type(default).__name__} like {default!r}, "
        f"got {type(value).__name__} {value!r}."
    )


def _opts_to_dict(opts: Sequence[str]) -> dict:
    if len(opts) % 2:
        raise ConfigError(f"--opts needs KEY VALUE pairs; got an odd number of items: {list(opts)}")
    nested: dict = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--opts key {key} goes through a value, not a section.")
        node[leaf] = value
    return nested


CONFIGS_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve_config_path(path: str) -> str:
    """`path`, or for an official release's path that is not a file here (configs/swin/<name>.yaml,
    configs/swinv2/<name>.yaml) the shipped config whose MODEL.NAME is <name>: the official file names are model
    names, and each recipe exists once, under configs/ (configs/README.md)."""
    if os.path.isfile(path):
        return path
    folder, name = os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(path)
    if folder not in ("swin", "swinv2") or not name.endswith(".yaml"):
        return path  # _read_yaml reports it
    by_name = {}
    for shipped in sorted(glob.glob(os.path.join(CONFIGS_DIR, "**", "*.yaml"), recursive=True)):
        with open(shipped, encoding="utf-8") as f:
            model = (yaml.safe_load(f) or {}).get("MODEL") or {}
        if isinstance(model, dict) and model.get("NAME"):
            by_name.setdefault(model["NAME"], shipped)
    found = by_name.get(name[: -len(".yaml")])
    if found is None:
        close = difflib.get_close_matches(name[: -len(".yaml")], list(by_name), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Config file not found: {path}, and no shipped config has that model name.{hint}")
    return found


def get_config(cfg_file: str | None = None, opts: Iterable[str] | None = None) -> CN:
    """Defaults <- cfg_file (with its BASE files) <- opts; validated and frozen. An official release's config path
    resolves to the shipped config of that model (resolve_config_path)."""
    cfg = get_defaults()
    if cfg_file:
        cfg_file = resolve_config_path(cfg_file)
        for path, data in _read_yaml(cfg_file, ()):
            _merge(cfg, data, path)
    opts = list(opts or [])
    if opts:
        for key in opts[0::2]:
            if key.upper() == "BASE":
                raise ConfigError("BASE cannot be set with --opts; use --cfg.")
        _merge(cfg, _opts_to_dict(opts), "--opts")
    _validate(cfg)
    cfg.freeze()
    return cfg


def _validate(cfg: CN) -> None:
    choices = {
        "DATA.DATASET": ("imagenet", "imagenet22K", "fashion_mnist", "synthetic"),
        "DATA.CACHE_MODE": ("no", "part", "full"),
        "DATA.ON_CORRUPT": ("error", "skip"),
        "MODEL.TYPE": ("swin", "swinv2", "pvt", "timm"),
        "MODEL.SWIN.ATTN_IMPL": ("auto", "eager", "sdpa"),
        "MODEL.SWINV2.ATTN_IMPL": ("auto", "eager", "sdpa"),
        "TRAIN.LR_SCHEDULER.NAME": ("cosine", "step", "multistep"),
        "TRAIN.OPTIMIZER.NAME": ("adamw", "sgd"),
        "AUG.MIXUP_MODE": ("batch", "pair", "elem"),
        "AMP_DTYPE": ("auto", "bfloat16", "float16"),
    }
    for key, allowed in choices.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value not in allowed:
            raise ConfigError(f"Config key {key} is {value!r}; choose one of {', '.join(allowed)}.")
    if cfg.TRAIN.ACCUMULATION_STEPS < 1:
        raise ConfigError(f"TRAIN.ACCUMULATION_STEPS must be >= 1, got {cfg.TRAIN.ACCUMULATION_STEPS}.")
    if cfg.DATA.BATCH_SIZE < 1:
        raise ConfigError(f"DATA.BATCH_SIZE must be >= 1, got {cfg.DATA.BATCH_SIZE}.")
    if cfg.AMP_OPT_LEVEL:
        raise ConfigError("AMP_OPT_LEVEL (apex) is not supported; remove it and use AMP_ENABLE / AMP_DTYPE.")
    if cfg.TRAIN.LAYER_DECAY != 1.0:
        raise ConfigError("TRAIN.LAYER_DECAY other than 1.0 is not supported by Swin v1 training; set it to 1.0.")
    sched = cfg.TRAIN.LR_SCHEDULER
    training = not (cfg.EVAL_MODE or cfg.THROUGHPUT_MODE)
    if training and sched.NAME == "cosine" and cfg.TRAIN.EPOCHS <= (cfg.TRAIN.WARMUP_EPOCHS if sched.WARMUP_PREFIX else 0):
        raise ConfigError(
            f"TRAIN.WARMUP_EPOCHS {cfg.TRAIN.WARMUP_EPOCHS:g} >= TRAIN.EPOCHS {cfg.TRAIN.EPOCHS} leaves no cosine decay: "
            f"lower TRAIN.WARMUP_EPOCHS (e.g. --opts TRAIN.WARMUP_EPOCHS {max(cfg.TRAIN.EPOCHS // 10, 0)}) or raise "
            "TRAIN.EPOCHS."
        )
    for key in ("MEAN", "STD"):
        value = list(cfg.DATA[key])
        if value and (len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)
                      or (key == "STD" and min(value) <= 0)):
            raise ConfigError(f"DATA.{key} must be three numbers (R, G, B, on the 0-1 scale{', > 0' if key == 'STD' else ''}) "
                              f"or empty for the model's own, got {value}.")
    if not 0.0 <= cfg.AUG.HFLIP <= 1.0:
        raise ConfigError(f"AUG.HFLIP is a probability, in [0, 1] (0: no flips), got {cfg.AUG.HFLIP}.")
    if not 0.0 <= cfg.TEST.CROP_PCT <= 1.0:
        raise ConfigError(f"TEST.CROP_PCT is the center-crop fraction, in (0, 1] (0: the model's own), got "
                          f"{cfg.TEST.CROP_PCT}.")
    if cfg.EVAL_FREQ < 0:
        raise ConfigError(f"EVAL_FREQ must be >= 0 (evaluate every N epochs; 0: only after the last), got {cfg.EVAL_FREQ}.")
    if cfg.TRAIN.TIME_BUDGET < 0:
        raise ConfigError(f"TRAIN.TIME_BUDGET is in minutes and must be >= 0 (0: off), got {cfg.TRAIN.TIME_BUDGET}.")
    for node in ("SWIN", "SWINV2"):
        arch = cfg.MODEL[node]
        if len(arch.DEPTHS) != len(arch.NUM_HEADS):
            raise ConfigError(f"MODEL.{node}.DEPTHS {arch.DEPTHS} and MODEL.{node}.NUM_HEADS {arch.NUM_HEADS} must "
                              "have one entry per stage.")
    v2 = cfg.MODEL.SWINV2
    if cfg.MODEL.TYPE == "swinv2" and len(v2.PRETRAINED_WINDOW_SIZES) != len(v2.DEPTHS):
        raise ConfigError(f"MODEL.SWINV2.PRETRAINED_WINDOW_SIZES {v2.PRETRAINED_WINDOW_SIZES} needs one entry per "
                          f"stage ({len(v2.DEPTHS)}); 0 where the weights come from no other window size.")


# The keys that make a model what it is (MODEL.SWIN.ATTN_IMPL only picks a kernel).
MODEL_KEYS = ("MODEL.TYPE", "MODEL.NAME", "MODEL.SWIN", "MODEL.SWINV2", "DATA.IMG_SIZE")
# The inputs the model was trained on; an evaluation takes them from the checkpoint only where the config leaves them
# empty (the model's own), since a config may choose another normalization or crop on purpose.
INPUT_KEYS = ("DATA.MEAN", "DATA.STD", "TEST.CROP_PCT")


@dataclass(frozen=True)
class Change:
    """One key a saved config changed: printed as "MODEL.SWIN.EMBED_DIM 96 -> 16"."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {self.old} -> {self.new}"


def with_model_of(cfg: CN, saved_yaml: str, source: str) -> tuple[CN, list[Change]]:
    """`cfg` with the model keys of a saved config (a checkpoint's 'config' entry, `source` names it) and the keys
    that changed; `cfg` itself when none did."""
    return _adopt(cfg, saved_yaml, source, MODEL_KEYS)


def with_inputs_of(cfg: CN, saved_yaml: str, source: str) -> tuple[CN, list[Change]]:
    """`cfg` with a saved config's input normalization and crop (INPUT_KEYS) where `cfg` leaves them empty (a timm
    model's own, filled in when it trained), and the keys that changed."""
    return _adopt(cfg, saved_yaml, source, tuple(k for k in INPUT_KEYS if not _get(cfg, k)))


def _adopt(cfg: CN, saved_yaml: str, source: str, keys: tuple) -> tuple[CN, list[Change]]:
    try:
        saved = yaml.safe_load(saved_yaml) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"The config saved in {source} is not valid YAML: {e}") from None
    picked: dict = {}
    for key in keys:
        section, leaf = key.split(".")
        if isinstance(saved.get(section), dict) and leaf in saved[section]:
            picked.setdefault(section, {})[leaf] = saved[section][leaf]
    if isinstance(picked.get("MODEL", {}).get("SWIN"), dict):
        picked["MODEL"]["SWIN"].pop("ATTN_IMPL", None)
    model = get_defaults()
    _merge(model, picked, source)  # checked and coerced like any config
    new = cfg.clone()
    new.defrost()
    changed = []
    for key in _leaf_keys(picked):
        mine, theirs = _get(cfg, key), _get(model, key)
        if mine != theirs:
            changed.append(Change(key, mine, theirs))
            _set(new, key, theirs)
    new.freeze()
    return (new, changed) if changed else (cfg, [])


def _leaf_keys(nested: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in nested.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _get(node: CN, key: str) -> Any:
    for part in key.split("."):
        node = node[part]
    return node


def _set(node: CN, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def dump_config(cfg: CN) -> str:
    """The resolved config as YAML: what --print-config prints and what config.yaml in a run holds."""
    return cfg.dump(sort_keys=True)


@dataclass(frozen=True)
class Derived:
    """Values computed from the config and the run; logged and saved, never written into the config."""

    world_size: int  # number of processes
    total_batch: int  # images per optimizer update: BATCH_SIZE x world_size x ACCUMULATION_STEPS
    base_lr: float  # TRAIN.BASE_LR x BATCH_SIZE x world_size / 512 x ACCUMULATION_STEPS
    warmup_lr: float  # TRAIN.WARMUP_LR scaled the same way
    min_lr: float  # TRAIN.MIN_LR scaled the same way
    num_classes: int  # classifier outputs (from the data when known)
    model_name: str  # the name the run goes by: MODEL.NAME unless that claims a variant the config changed
    run_dir: str  # <OUTPUT>/<model_name>/<TAG>, and its eval/ or throughput/ folder for those modes

    def as_dict(self) -> dict:
        return asdict(self)


def scale_lr(value: float, batch_size: int, world_size: int, accumulation_steps: int) -> float:
    """The official linear scaling rule: per-512 value -> value for this total batch."""
    return value * batch_size * world_size / 512.0 * accumulation_steps


def derive(cfg: CN, world_size: int = 1, num_classes: int | None = None, model_name: str | None = None) -> Derived:
    """Compute the derived values for a run with `world_size` processes. `model_name`: the name the run goes by
    (engine passes models.run_name's; default MODEL.NAME).

    Evaluation-only and throughput runs write into the eval/ and throughput/ folders of the run directory the
    same config trains in, so they never replace a training run's config.yaml, log or eval.json, and `--eval`
    without `--resume` still finds that run's newest checkpoint (`train_dir`)."""
    bs, acc = cfg.DATA.BATCH_SIZE, cfg.TRAIN.ACCUMULATION_STEPS
    name = model_name or cfg.MODEL.NAME
    run_dir = train_dir(cfg, name)
    mode = "throughput" if cfg.THROUGHPUT_MODE else "eval" if cfg.EVAL_MODE else ""
    return Derived(
        world_size=world_size,
        total_batch=bs * world_size * acc,
        base_lr=scale_lr(cfg.TRAIN.BASE_LR, bs, world_size, acc),
        warmup_lr=scale_lr(cfg.TRAIN.WARMUP_LR, bs, world_size, acc),
        min_lr=scale_lr(cfg.TRAIN.MIN_LR, bs, world_size, acc),
        num_classes=cfg.MODEL.NUM_CLASSES if num_classes is None else num_classes,
        model_name=name,
        run_dir=os.path.join(run_dir, mode) if mode else run_dir,
    )


def train_dir(cfg: CN, model_name: str | None = None) -> str:
    """<OUTPUT>/<model name>/<TAG>: where the config's training run writes its checkpoints."""
    return os.path.join(cfg.OUTPUT, model_name or cfg.MODEL.NAME, cfg.TAG)
