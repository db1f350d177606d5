"""Precision follows the hardware: bf16 autocast only where the device computes bf16 natively."""
import logging

import pytest
import torch

import models.cpu
from configs import ConfigError, get_config
from engine.amp import resolve_amp

CPU = torch.device("cpu")


def _fake_cpu(monkeypatch, capability: str, bf16_instructions: bool) -> None:
    monkeypatch.setattr(models.cpu, "cpu_capability", lambda: capability)
    monkeypatch.setattr(models.cpu, "_hardware_bf16", lambda: bf16_instructions)


@pytest.mark.parametrize("capability, instructions, native", [
    ("AVX512", True, True),  # AVX512-BF16 or AMX
    ("AVX512", False, False),  # AVX-512 without BF16: oneDNN emulates it
    ("AVX2", False, False),
    ("AVX2", True, False),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU behaves as an AVX2-only one
    ("DEFAULT", True, False),
])
def test_native_bf16_needs_the_instructions_and_the_kernels(monkeypatch, capability, instructions, native):
    _fake_cpu(monkeypatch, capability, instructions)
    monkeypatch.setattr(models.cpu, "_is_x86", lambda: True)
    assert models.cpu.cpu_bf16_native() is native
    assert models.cpu.cpu_description() == f"{capability}, bf16 {'native' if native else 'emulated'}"


def test_arm_bf16_follows_onednn(monkeypatch):
    _fake_cpu(monkeypatch, "SVE256", True)
    monkeypatch.setattr(models.cpu, "_is_x86", lambda: False)
    assert models.cpu.cpu_bf16_native()


def test_auto_trains_in_bf16_where_native(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "AVX512", True)
    with caplog.at_level(logging.WARNING):
        amp = resolve_amp(get_config(), CPU)
    assert amp.enabled and amp.dtype == torch.bfloat16 and amp.dtype_name == "bfloat16"
    assert "native" in amp.reason and not caplog.records


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_auto_trains_in_float32_where_bf16_is_emulated(monkeypatch, caplog, capability):
    _fake_cpu(monkeypatch, capability, False)
    with caplog.at_level(logging.WARNING):
        amp = resolve_amp(get_config(), CPU)
    assert not amp.enabled and amp.dtype_name == "float32" and not amp.needs_scaler
    assert f"CPU ({capability}, bf16 emulated) only emulates bfloat16" in amp.reason
    assert not caplog.records
    with amp.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_forced_bf16_on_an_emulating_cpu_works_but_warns(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "AVX2", False)
    with caplog.at_level(logging.WARNING):
        amp = resolve_amp(get_config(opts=["AMP_DTYPE", "bfloat16"]), CPU)
    assert amp.enabled and amp.dtype == torch.bfloat16
    assert len(caplog.records) == 1 and "several times slower than float32" in caplog.text
    with amp.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_disabled_amp_and_float16_on_cpu(monkeypatch):
    _fake_cpu(monkeypatch, "AVX512", True)
    off = resolve_amp(get_config(opts=["AMP_ENABLE", False]), CPU)
    assert not off.enabled and off.reason == "AMP_ENABLE is off"
    with pytest.raises(ConfigError, match="float16 needs CUDA"):
        resolve_amp(get_config(opts=["AMP_DTYPE", "float16"]), CPU)
