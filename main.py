"""Train or evaluate a Swin Transformer: `python main.py --cfg configs/swin_tiny.yaml --data-path DIR`.

Runs as one plain process or under torchrun (`torchrun --nproc_per_node=8 main.py ...`) unchanged. This file
only turns the command line into a frozen config and hands it to `engine.run`.
"""
from __future__ import annotations

import argparse
import sys

from configs import ConfigError, dump_config, get_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("Swin Transformer training and evaluation", allow_abbrev=False)
    p.add_argument("--cfg", metavar="FILE", help="YAML config file (defaults: Swin-T ImageNet-1K recipe)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="override config keys: KEY VALUE ...")
    p.add_argument("--batch-size", type=int, help="images per process per micro-step (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="data set root (DATA.DATA_PATH)")
    p.add_argument("--zip", action="store_true", help="read the zipped ImageNet layout (DATA.ZIP_MODE)")
    p.add_argument("--cache-mode", choices=["no", "part", "full"],
                   help="zip and parquet layouts held in memory (DATA.CACHE_MODE)")
    p.add_argument("--pretrained", help="weights to fine-tune from or evaluate (MODEL.PRETRAINED)")
    p.add_argument("--resume", help="checkpoint to resume from or evaluate (MODEL.RESUME)")
    p.add_argument("--accumulation-steps", type=int, help="micro-steps per update (TRAIN.ACCUMULATION_STEPS)")
    p.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing (TRAIN.USE_CHECKPOINT)")
    p.add_argument("--disable_amp", "--disable-amp", action="store_true", help="no mixed precision (AMP_ENABLE)")
    p.add_argument("--output", help="root of run directories (OUTPUT)")
    p.add_argument("--tag", help="run name (TAG)")
    p.add_argument("--eval", action="store_true", help="evaluate only (EVAL_MODE)")
    p.add_argument("--throughput", action="store_true", help="measure inference throughput only (THROUGHPUT_MODE)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (DEVICE)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--optim", help="optimizer (TRAIN.OPTIMIZER.NAME): adamw or sgd; the official fused_adam is adamw "
                   "(fused kernels are used wherever torch has them)")
    # Official flags of CUDA/apex kernels this project does not use: accepted, logged as having no effect.
    p.add_argument("--fused_window_process", "--fused-window-process", action="store_true",
                   help="official fused window-shift CUDA kernel: no effect here (FUSED_WINDOW_PROCESS)")
    p.add_argument("--fused_layernorm", "--fused-layernorm", action="store_true",
                   help="official apex fused LayerNorm: no effect here (FUSED_LAYERNORM)")
    p.add_argument("--amp-opt-level", "--amp_opt_level", choices=["O0", "O1", "O2"],
                   help="official apex level (deprecated there too): O0 trains in float32 like --disable_amp; O1 and "
                        "O2 mean mixed precision, which torch autocast gives (AMP_ENABLE, AMP_DTYPE)")
    # Accepted for compatibility with torch.distributed.launch; the rank comes from the environment.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# Flag -> config key; flags are applied after --opts, as in the official release.
FLAG_KEYS = {
    "batch_size": "DATA.BATCH_SIZE",
    "data_path": "DATA.DATA_PATH",
    "cache_mode": "DATA.CACHE_MODE",
    "pretrained": "MODEL.PRETRAINED",
    "resume": "MODEL.RESUME",
    "accumulation_steps": "TRAIN.ACCUMULATION_STEPS",
    "output": "OUTPUT",
    "tag": "TAG",
    "device": "DEVICE",
}
SWITCH_KEYS = {  # store_true flag -> (key, value when given)
    "zip": ("DATA.ZIP_MODE", True),
    "use_checkpoint": ("TRAIN.USE_CHECKPOINT", True),
    "disable_amp": ("AMP_ENABLE", False),
    "eval": ("EVAL_MODE", True),
    "throughput": ("THROUGHPUT_MODE", True),
    "fused_window_process": ("FUSED_WINDOW_PROCESS", True),
    "fused_layernorm": ("FUSED_LAYERNORM", True),
}
OPTIMIZER_ALIASES = {"fused_adam": "adamw", "fused_adamw": "adamw"}  # official names of the same update rule


def flag_opts(args: argparse.Namespace) -> list[str]:
    """The command-line flags as KEY VALUE overrides."""
    opts: list[str] = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            opts += [key, str(value)]
    for flag, (key, value) in SWITCH_KEYS.items():
        if getattr(args, flag):
            opts += [key, str(value)]
    if args.optim is not None:
        opts += ["TRAIN.OPTIMIZER.NAME", OPTIMIZER_ALIASES.get(args.optim.lower(), args.optim.lower())]
    if args.amp_opt_level is not None:
        opts += ["AMP_ENABLE", str(args.amp_opt_level != "O0")]
    return opts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if len(args.opts) % 2:  # checked before the flags' own KEY VALUE pairs are appended
            raise ConfigError(f"--opts needs KEY VALUE pairs; got an odd number of items: {list(args.opts)}")
        cfg = get_config(args.cfg, list(args.opts) + flag_opts(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        if cfg.MODEL.TYPE == "timm":  # its own normalization and crop where the config leaves them empty, as a run
            from models.build import with_own_input_config

            cfg, _ = with_own_input_config(cfg)
        print(dump_config(cfg), end="")
        return 0
    from engine import run  # imported late: --help and --print-config need no torch start-up

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
