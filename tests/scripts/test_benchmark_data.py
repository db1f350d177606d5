"""scripts/benchmark_data.py end to end on a few images: the three pipelines timed, the ratios, the device step."""
import json

import pytest

from scripts import benchmark_data


def test_benchmark_data_writes_every_pipeline_and_the_device_step(tmp_path):
    out = tmp_path / "data.json"
    assert benchmark_data.main(["--dir", str(tmp_path / "imgs"), "--num-images", "6", "--repeats", "2",
                                "--batch", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 6 and r["repeats"] == 2 and r["img_size"] == 224 and r["cpu"] and r["git_commit"]
    for name in ("ours", "baseline", "timm_prefetcher"):
        assert len(r[name]["passes"]) == 2 and r[name]["images_per_s"] > 0 and r[name]["cpu_ms_per_image"] > 0
    for ref, suffix in (("baseline", ""), ("timm_prefetcher", "_vs_timm_prefetcher")):
        assert r["speedup" + suffix] == pytest.approx(r["ours"]["images_per_s"] / r[ref]["images_per_s"])
        assert r["cpu_cost_ratio" + suffix] == pytest.approx(r[ref]["cpu_ms_per_image"] / r["ours"]["cpu_ms_per_image"])
    assert r["normalize_on_device"] is True and r["device_part_cpu_ms_per_image"] > 0
