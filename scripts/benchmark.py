"""Speed of this project's Swin against timm's and torchvision's, measured side by side in one process.

    python scripts/benchmark.py --device cpu [--model swin_tiny_patch4_window7_224] [--batch 8] [--save]
    python scripts/benchmark.py --device cuda --model swin_base_patch4_window7_224 --compile --json out.json
    python scripts/benchmark.py --device cpu --model swinv2_tiny_patch4_window8_256   # SwinV2: the same, v2 classes

Settings: train step (forward + cross-entropy + backward + AdamW step) and inference (eval, no_grad), each in
fp32 and under bf16 autocast, with the same batch, threads and drop-path rate for every implementation. Within
a setting the implementations take turns (the order rotates each round) so that load from other processes hits
them alike; img/s comes from the median of all timed iterations after warm-up. Also reported: the activation
memory per image (bytes autograd saves for backward, each storage once, parameters excluded) of a model with and
without gradient checkpointing, and on CUDA the peak memory of each setting above the resident weights.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import models  # noqa: E402
from models.swinv2 import SWINV2_ZOO, SwinTransformerV2  # noqa: E402
from engine.report import device_name  # noqa: E402
from models.build import resolve_attn_impl  # noqa: E402
from models.cpu import cpu_bf16_native, cpu_capability  # noqa: E402

SETTINGS = ("train_fp32", "train_bf16", "infer_fp32", "infer_bf16")
IMPLS = ("ours", "ours_eager", "ours_sdpa", "ours_compiled", "timm", "torchvision")


# a test-sized architecture (not a paper model) so the whole benchmark runs in seconds
TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=32, patch_size=4, num_classes=10)
# the same shape as SwinV2 (an architecture that names its pretrained windows is a SwinV2 one)
TINY_V2 = dict(TINY, pretrained_window_sizes=(0, 0))


def is_v2(arch: Dict[str, Any]) -> bool:
    return "pretrained_window_sizes" in arch


def arch_of(name: str) -> Dict[str, Any]:
    """The keyword arguments all three implementations are built with: a registered model's architecture from
    models.ZOO (short forms like "base" allowed) or SwinV2's (full names) with 1000 classes, or "tiny" / "tiny_v2"."""
    if name in ("tiny", "tiny_v2"):
        return dict(TINY if name == "tiny" else TINY_V2)
    if name in SWINV2_ZOO:
        return {**SWINV2_ZOO[name].kwargs(), "num_classes": 1000}
    full = [n for n in models.list_models() if n == name or n.split("_")[1] == name]
    if not full:
        raise SystemExit(f"error: unknown --model {name!r}; use tiny, tiny_v2 or one of "
                         f"{', '.join(models.list_models() + list(SWINV2_ZOO))}")
    return {**models.ZOO[full[0]].kwargs(), "num_classes": 1000}


def build(impl: str, arch: Dict[str, Any], device: torch.device, drop_path: float = 0.1,
          use_checkpoint: bool = False) -> nn.Module:
    """One implementation of `arch` (Swin, or SwinV2 when it names pretrained windows) on `device`, in train mode."""
    if is_v2(arch):
        model = _build_v2(impl, arch, drop_path, use_checkpoint)
    elif impl.startswith("ours"):
        kind = {"ours_eager": "eager", "ours_sdpa": "sdpa"}.get(impl, resolve_attn_impl("auto", device))
        model = models.SwinTransformer(**arch, drop_path_rate=drop_path, use_checkpoint=use_checkpoint,
                                       attn_impl=kind)
    elif impl == "timm":
        import timm

        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, drop_path_rate=drop_path,
                                  **arch)
    elif impl == "torchvision":
        from torchvision.models.swin_transformer import SwinTransformer

        # built from the class: the swin_t/s/b builders fix stochastic_depth_prob, which must match the others
        model = SwinTransformer([arch["patch_size"]] * 2, arch["embed_dim"], list(arch["depths"]),
                                list(arch["num_heads"]), [arch["window_size"]] * 2, stochastic_depth_prob=drop_path,
                                num_classes=arch["num_classes"])
    else:
        raise SystemExit(f"error: unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    model = model.to(device).train()
    return torch.compile(model) if impl == "ours_compiled" else model


def _build_v2(impl: str, arch: Dict[str, Any], drop_path: float, use_checkpoint: bool) -> nn.Module:
    if impl in ("ours", "ours_compiled"):
        return SwinTransformerV2(**arch, drop_path_rate=drop_path, use_checkpoint=use_checkpoint)
    if impl == "timm":
        from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmV2

        return TimmV2(drop_path_rate=drop_path, **arch)
    if impl == "torchvision":
        from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

        # torchvision's continuous position bias always uses the current window (no pretrained_window_sizes)
        return SwinTransformer([arch["patch_size"]] * 2, arch["embed_dim"], list(arch["depths"]),
                               list(arch["num_heads"]), [arch["window_size"]] * 2, stochastic_depth_prob=drop_path,
                               num_classes=arch["num_classes"], block=SwinTransformerBlockV2,
                               downsample_layer=PatchMergingV2)
    raise SystemExit(f"error: implementation {impl!r} has no SwinV2 form; choose ours, ours_compiled, timm or "
                     "torchvision")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU); benchmarks only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, setting: str, arch: Dict[str, Any], batch: int, device: torch.device) -> Callable[[], None]:
    """A closure running one iteration of `setting` (e.g. "train_bf16") on a fixed random batch."""
    train, bf16 = setting.startswith("train"), setting.endswith("bf16")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, arch["img_size"], arch["img_size"], generator=g).to(device)
    y = torch.randint(arch["num_classes"], (batch,), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if not train:
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast:
                model(x)
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as engine/optim.py, on CPU and CUDA

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int, iters: int,
                     repeats: int) -> Dict[str, dict]:
    """Seconds per iteration of each step, taking turns: `repeats` rounds of `iters` timed iterations each,
    the order rotated every round, after `warmup` untimed iterations each. On CUDA also the peak memory
    allocated during the step above what was allocated before it."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
        synchronize(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}  # process CPU time: less sensitive to other load
    peak: Dict[str, int] = {n: 0 for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            for _ in range(iters):
                t, c = time.perf_counter(), time.process_time()
                steps[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device) - before)
    out = {}
    for name in names:
        sec = statistics.median(times[name])
        out[name] = {"sec_per_iter": sec, "times": [round(t, 5) for t in times[name]],
                     "cpu_sec_per_iter": statistics.median(cpu[name])}
        if device.type == "cuda":
            out[name]["peak_step_mib"] = round(peak[name] / 2**20, 1)
    return out


# CPU kernels that do the matrix products (linear layers, attention products, the patch-embedding convolution)
MATRIX_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
              "aten::convolution_backward", "mkldnn::_linear_pointwise")


def matmul_ceiling(step: Callable[[], None], iters: int = 2) -> Dict[str, float]:
    """Profile a CPU step: the share of its time spent in matrix kernels, and 1 / share, the most an
    implementation doing the same matrix products at the same kernel speed could gain over it (every
    other op -- norms, activations, softmax, copies, the optimizer -- taking no time at all)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matrix = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_OPS)
    share = matrix / total if total else float("nan")
    return {"matmul_share": round(share, 4), "ceiling": round(1 / share, 3) if share else float("inf")}


class SavedTensorCounter:
    """Bytes autograd saves for backward while active: every storage counted once, whatever the number of
    tensors viewing it; storages of `exclude` (parameters, buffers) left out."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: Dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # the hook keeps `t` alive with the graph, so no address is reused while counting
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if storage.nbytes() and ptr not in self.exclude:
            self.storages[ptr] = max(self.storages.get(ptr, 0), storage.nbytes())
        return t

    @property
    def nbytes(self) -> int:
        """Total bytes of the distinct storages saved so far."""
        return sum(self.storages.values())

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def activation_memory(arch: Dict[str, Any], batch: int, device: torch.device) -> Dict[str, float]:
    """Bytes saved for backward per image by our model in train mode (fp32), without and with checkpointing."""
    out: Dict[str, float] = {}
    x = torch.randn(batch, 3, arch["img_size"], arch["img_size"], device=device)
    for key, ckpt in (("no_checkpoint", False), ("checkpoint", True)):
        torch.manual_seed(0)
        model = build("ours", arch, device, use_checkpoint=ckpt)
        with SavedTensorCounter(list(model.parameters()) + list(model.buffers())) as counter:
            out_ = model(x)
        out[key] = counter.nbytes / batch
        del out_, model
    out["reduction"] = 1.0 - out["checkpoint"] / out["no_checkpoint"]
    return out


def default_impls(device: torch.device, compile_: bool, arch: Dict[str, Any]) -> List[str]:
    """ours / timm / torchvision; on CUDA also the other attention kernel (Swin v1) and, if asked, ours compiled."""
    impls = ["ours", "timm", "torchvision"]
    if device.type == "cuda" and not is_v2(arch):
        other = "ours_eager" if resolve_attn_impl("auto", device) == "sdpa" else "ours_sdpa"
        impls.insert(1, other)
    if compile_:
        impls.insert(1, "ours_compiled")
    return impls


def run(args: argparse.Namespace) -> dict:
    """Run every setting and the memory measurement; the JSON-ready result."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    arch = arch_of(args.model)
    impls = args.impls or default_impls(device, args.compile, arch)
    result: dict = {
        "model": args.model, "arch": arch, "device": device.type, "device_name": device_name(device),
        "torch": torch.__version__, "batch": args.batch, "threads": torch.get_num_threads(), "iters": args.iters,
        "repeats": args.repeats, "warmup": args.warmup, "drop_path": 0.1, "optimizer": "AdamW(fused=True)",
        "impls": impls,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
        "load_average": _load(), **_git_state(), "settings": {}, "ratios": {},
        "skipped_settings": args.skipped_settings,
    }
    if device.type == "cpu":
        result.update(cpu_capability=cpu_capability(), bf16_native=cpu_bf16_native())
    import timm
    import torchvision

    result["timm"], result["torchvision"] = timm.__version__, torchvision.__version__
    for setting in args.settings:
        torch.manual_seed(0)
        steps = {impl: make_step(build(impl, arch, device), setting, arch, args.batch, device) for impl in impls}
        timed = time_interleaved(steps, device, args.warmup, args.iters, args.repeats)
        for rec in timed.values():
            rec["img_per_s"] = args.batch / rec["sec_per_iter"]
        result["settings"][setting] = timed
        result["ratios"][setting] = {f"{o}/{b}": timed[o]["img_per_s"] / timed[b]["img_per_s"]
                                     for o in impls if o.startswith("ours") for b in ("timm", "torchvision")
                                     if b in timed}
        print(f"  {setting}: " + ", ".join(f"{k} {v['img_per_s']:.1f}" for k, v in timed.items()), flush=True)
        if args.ceiling and device.type == "cpu" and "timm" in steps:
            result.setdefault("matmul_ceiling", {})[setting] = {"impl": "timm", **matmul_ceiling(steps["timm"])}
        del steps
    if args.memory_model != "none":
        mem = activation_memory(arch_of(args.memory_model), args.memory_batch, device)
        result["activation_memory"] = {"model": args.memory_model, "batch": args.memory_batch, "dtype": "float32",
                                       "bytes_per_image": mem}
    result["load_average_end"] = _load()
    return result


def _git_state() -> Dict[str, object]:
    """Commit of the measured code and whether models/ had uncommitted changes (None outside a git checkout)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "models"], cwd=root, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "models_dirty": None}
    if head.returncode != 0:
        return {"git_commit": None, "models_dirty": None}
    return {"git_commit": head.stdout.strip(), "models_dirty": bool(dirty.stdout.strip())}


def _load() -> Optional[List[float]]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def format_table(result: dict) -> str:
    """The result as a text table: img/s per implementation and setting, then the ratios."""
    impls = result["impls"]
    ratio_keys = sorted({k for r in result["ratios"].values() for k in r})
    head = f"{'setting':<12}" + "".join(f"{i:>15}" for i in impls) + "".join(f"{k:>22}" for k in ratio_keys)
    isa = f", {result['cpu_capability']}, bf16 {'native' if result['bf16_native'] else 'emulated'}" \
        if "cpu_capability" in result else ""
    lines = [f"{result['model']} on {result['device_name']} ({result['device']}{isa}), batch {result['batch']}, "
             f"{result['threads']} threads, torch {result['torch']}: images/s (median)", head]
    for setting, timed in result["settings"].items():
        lines.append(f"{setting:<12}" + "".join(f"{timed[i]['img_per_s']:>15.2f}" for i in impls)
                     + "".join(f"{result['ratios'][setting].get(k, float('nan')):>21.2f}x" for k in ratio_keys))
        if "peak_step_mib" in timed[impls[0]]:
            lines.append(f"{'  peak MiB':<12}" + "".join(f"{timed[i]['peak_step_mib']:>15.0f}" for i in impls))
    load = max(result["load_average"][0], result["load_average_end"][0]) if result.get("load_average") else 0
    if result["device"] == "cpu" and load > result["threads"] + 0.5:
        lines.append(f"note: load average {load:.1f} > {result['threads']} threads: other processes competed for the "
                     f"cores; the implementations took turns, so the ratios hold better than the absolute img/s")
    if result.get("skipped_settings"):
        lines.append(f"skipped {' '.join(result['skipped_settings'])}: bf16 is emulated on this CPU (several times "
                     "slower than fp32, not a setting anyone trains in here); --settings runs them anyway")
    for setting, c in result.get("matmul_ceiling", {}).items():
        lines.append(f"{setting}: {c['impl']} spends {100 * c['matmul_share']:.0f}% of its step in matrix kernels: "
                     f"same matrix products at the same kernel speed can be at most {c['ceiling']:.2f}x faster")
    mem = result.get("activation_memory")
    if mem:
        b = mem["bytes_per_image"]
        lines.append(f"activation memory per image, {mem['model']} fp32: {b['no_checkpoint'] / 2**20:.1f} MiB, "
                     f"with checkpointing {b['checkpoint'] / 2**20:.1f} MiB ({100 * b['reduction']:.0f}% less)")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--model", default="swin_tiny_patch4_window7_224", help="registered name, short form or tiny")
    p.add_argument("--batch", type=int, help="images per step (default 8 on CPU, 128 on CUDA)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op CPU threads")
    p.add_argument("--iters", type=int, help="timed iterations per round (default 1 on CPU, 5 on CUDA)")
    p.add_argument("--repeats", type=int, help="rounds of turns (default 5 on CPU, 3 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 1 on CPU, 3 on CUDA)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS,
                   help="default: all, except the bf16 ones on a CPU that only emulates bf16")
    p.add_argument("--impls", nargs="+", choices=IMPLS, help="implementations (default: ours timm torchvision, "
                   "on CUDA also the other attention kernel)")
    p.add_argument("--compile", action="store_true", help="add torch.compile of ours (ours_compiled)")
    p.add_argument("--memory-model", default="swin_base_patch4_window7_224",
                   help="model whose activation memory is measured with and without checkpointing; none: skip")
    p.add_argument("--memory-batch", type=int, default=2, help="batch of the activation-memory measurement")
    p.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, profile timm's step: the share of matrix kernels and the speedup ceiling it implies")
    p.add_argument("--save", action="store_true", help="write the JSON to benchmarks/<device>-<model>.json")
    p.add_argument("--json", metavar="PATH", help="write the JSON here")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    for key, cpu_value, cuda_value in (("batch", 8, 128), ("iters", 1, 5), ("repeats", 5, 3), ("warmup", 1, 3)):
        if getattr(args, key) is None:
            setattr(args, key, cuda_value if cuda else cpu_value)
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    cpu = torch.device(args.device).type == "cpu"
    args.skipped_settings = []
    if args.settings is None:
        args.settings = list(SETTINGS)
        if cpu and not cpu_bf16_native():
            args.skipped_settings = [s for s in SETTINGS if s.endswith("bf16")]
            args.settings = [s for s in SETTINGS if s not in args.skipped_settings]
    if args.save and not args.json:
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
        # CPU results are per vector ISA: cpu-avx2-..., cpu-avx512-...
        kind = f"cpu-{cpu_capability().lower()}" if cpu else torch.device(args.device).type
        args.json = os.path.join(root, f"{kind}-{args.model}.json")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
