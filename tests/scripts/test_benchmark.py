"""scripts/benchmark.py: the side-by-side benchmark end to end on a tiny model, and the saved-tensor counter."""
import json

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from scripts import benchmark


def test_benchmark_writes_every_setting_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--model", "tiny", "--batch", "2", "--threads", "1", "--iters", "1", "--repeats", "2",
                           "--warmup", "0", "--memory-model", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["batch"] == 2 and r["threads"] == 1 and r["device"] == "cpu" and r["device_name"]
    assert r["torch"] == torch.__version__ and r["timm"] and r["torchvision"] and r["date"]
    assert r["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["bf16_native"] is benchmark.cpu_bf16_native()
    skipped = [] if r["bf16_native"] else ["train_bf16", "infer_bf16"]  # emulated bf16 is skipped by default
    assert r["skipped_settings"] == skipped
    assert set(r["settings"]) == set(benchmark.SETTINGS) - set(skipped)
    for setting, timed in r["settings"].items():
        assert set(timed) == {"ours", "timm", "torchvision"}
        for rec in timed.values():
            assert len(rec["times"]) == 2 and rec["img_per_s"] == pytest.approx(2 / rec["sec_per_iter"])
        for base in ("timm", "torchvision"):
            assert r["ratios"][setting][f"ours/{base}"] == pytest.approx(
                timed["ours"]["img_per_s"] / timed[base]["img_per_s"])
    assert set(r["matmul_ceiling"]) == set(r["settings"])
    for c in r["matmul_ceiling"].values():
        assert c["impl"] == "timm" and 0 < c["matmul_share"] < 1 and c["ceiling"] == pytest.approx(1 / c["matmul_share"], rel=1e-2)
    mem = r["activation_memory"]["bytes_per_image"]
    assert 0 < mem["checkpoint"] < mem["no_checkpoint"]
    assert mem["reduction"] == pytest.approx(1 - mem["checkpoint"] / mem["no_checkpoint"])


@pytest.mark.parametrize("native", [True, False])
def test_default_settings_follow_the_cpu(monkeypatch, native):
    monkeypatch.setattr(benchmark, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(benchmark, "cpu_capability", lambda: "AVX512" if native else "AVX2")
    args = benchmark.parse_args(["--save"])
    assert args.settings == (list(benchmark.SETTINGS) if native else ["train_fp32", "infer_fp32"])
    assert args.json.endswith(f"cpu-{'avx512' if native else 'avx2'}-swin_tiny_patch4_window7_224.json")
    assert benchmark.parse_args(["--settings", "train_bf16"]).settings == ["train_bf16"]  # asked for: run


def test_implementations_build_the_same_architecture():
    arch = benchmark.TINY
    counts = {impl: sum(p.numel() for p in benchmark.build(impl, arch, torch.device("cpu")).parameters())
              for impl in ("ours", "timm", "torchvision")}
    assert len(set(counts.values())) == 1, counts


def test_counter_counts_each_saved_storage_once_and_skips_parameters():
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(4, 3), nn.Linear(3, 3)
    params = list(lin1.parameters()) + list(lin2.parameters())
    x = torch.randn(5, 4)  # 80 bytes

    def branch(h):
        return torch.relu(lin2(torch.relu(h)))

    with benchmark.SavedTensorCounter(params) as plain:
        h = lin1(x)  # saves x (the weight is a parameter)
        y = branch(h)  # relu saves its 60-byte output, which lin2 saves again; the last relu saves 60 more
        y * y  # saves y twice: the same storage
        y[:, :2].exp()  # saves its 40-byte result
    assert plain.nbytes == 80 + 60 + 60 + 40
    with benchmark.SavedTensorCounter(params) as ckpt:
        h = lin1(x)
        checkpoint(branch, h, use_reentrant=False)  # keeps only its 60-byte input h
    assert ckpt.nbytes == 80 + 60


def test_save_path_and_device_defaults():
    args = benchmark.parse_args(["--save", "--model", "base"])
    isa = torch.backends.cpu.get_cpu_capability().lower()
    assert args.batch == 8 and args.json.endswith(f"benchmarks/cpu-{isa}-base.json")
    assert benchmark.arch_of("base") == benchmark.arch_of("swin_base_patch4_window7_224")
    with pytest.raises(SystemExit):
        benchmark.arch_of("resnet50")


def test_matmul_ceiling_tells_matrix_products_from_other_work():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    matmul_only = benchmark.matmul_ceiling(lambda: torch.mm(a, b))
    elementwise_only = benchmark.matmul_ceiling(lambda: (a.exp() + b).tanh_())
    assert matmul_only["matmul_share"] > 0.98 and matmul_only["ceiling"] < 1.02
    assert elementwise_only["matmul_share"] == 0 and elementwise_only["ceiling"] == float("inf")


def test_swinv2_benchmarks_the_three_swinv2_implementations(tmp_path):
    arch = benchmark.arch_of("swinv2_tiny_patch4_window8_256")
    assert benchmark.is_v2(arch) and arch["window_size"] == 8 and arch["img_size"] == 256
    tiny = benchmark.TINY_V2
    models = {impl: benchmark.build(impl, tiny, torch.device("cpu")) for impl in ("ours", "timm", "torchvision")}
    counts = {impl: sum(p.numel() for p in m.parameters()) for impl, m in models.items()}
    # torchvision keeps a (zeroed) key bias the official SwinV2 and timm do not have: one dim-sized vector per block
    assert counts["ours"] == counts["timm"] == counts["torchvision"] - (16 + 32)
    assert type(models["ours"]).__name__ == "SwinTransformerV2" and models["timm"].__module__.endswith("_v2")
    out = tmp_path / "v2.json"
    assert benchmark.main(["--model", "tiny_v2", "--batch", "2", "--threads", "1", "--iters", "1", "--repeats", "1",
                           "--warmup", "0", "--settings", "train_fp32", "--memory-model", "tiny_v2", "--no-ceiling",
                           "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["settings"]["train_fp32"]) == {"ours", "timm", "torchvision"} and r["arch"]["pretrained_window_sizes"]
    assert set(r["ratios"]["train_fp32"]) == {"ours/timm", "ours/torchvision"}
    assert 0 < r["activation_memory"]["bytes_per_image"]["checkpoint"] < r["activation_memory"]["bytes_per_image"]["no_checkpoint"]
