"""Hostile or broken inputs through `python main.py`: a malicious pickle, a truncated checkpoint, a YAML file
with Python tags, a BASE include cycle, a data path that is a file. Each ends with one clear message naming the
file, a non-zero exit code and no traceback, and runs nothing (no marker file). (tests/engine/test_resume.py
sends the malicious pickle through --eval and --pretrained as well.)"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from tests.helpers.engine import tiny_model
from tests.helpers.processes import main_cmd, run_all, write_malicious_checkpoint

MARKER = "PWNED"


def _files(root) -> dict[str, str]:
    """The hostile files, written under root; returns name -> path."""
    paths = {name: str(root / name) for name in ("evil.pth", "truncated.pth", "evil.yaml", "a.yaml", "b.yaml",
                                                 "a_file")}
    write_malicious_checkpoint(paths["evil.pth"], root / MARKER)
    torch.save({"model": tiny_model().state_dict(), "epoch": 0}, paths["truncated.pth"])
    with open(paths["truncated.pth"], "r+b") as f:
        f.truncate(os.path.getsize(paths["truncated.pth"]) // 2)
    with open(paths["evil.yaml"], "w") as f:
        f.write(f'MODEL:\n  NAME: !!python/object/apply:os.system ["touch {root / MARKER}"]\n')
    with open(paths["a.yaml"], "w") as f:
        f.write("BASE: ['b.yaml']\n")
    with open(paths["b.yaml"], "w") as f:
        f.write("BASE: ['a.yaml']\n")
    with open(paths["a_file"], "w") as f:
        f.write("not a folder\n")
    return paths


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[dict, dict[str, tuple[int, str]]]:
    """Every hostile command, run concurrently (each pays the interpreter start-up once)."""
    root = tmp_path_factory.mktemp("hostile")
    p, out = _files(root), str(root / "out")
    main = [sys.executable, "main.py"]
    cmds = {
        "pickle_resume": main_cmd(out, "--resume", p["evil.pth"]),
        "truncated": main_cmd(out, "--resume", p["truncated.pth"]),
        "data_file": main_cmd(out, "DATA.DATASET", "imagenet", "--data-path", p["a_file"]),
        "yaml_tag": main + ["--cfg", p["evil.yaml"]],
        "base_cycle": main + ["--cfg", p["a.yaml"]],
    }
    results = dict(zip(cmds, run_all(list(cmds.values()))))
    assert not (root / MARKER).exists(), "a hostile file ran code"
    return p, results


def _check(outcomes, name: str, path_key: str, *phrases: str) -> None:
    paths, results = outcomes
    code, out = results[name]
    assert code != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert paths[path_key] in out, out[-3000:]
    for phrase in phrases:
        assert phrase in out, out[-3000:]


def test_malicious_pickle_is_not_run_by_resume(outcomes):
    _check(outcomes, "pickle_resume", "evil.pth", "holds Python objects other than tensors", "nothing in it was run")


def test_truncated_checkpoint_is_a_clear_error(outcomes):
    _check(outcomes, "truncated", "truncated.pth", "is truncated or corrupt")


def test_yaml_with_python_tags_is_refused(outcomes):
    _check(outcomes, "yaml_tag", "evil.yaml", "no Python tags")
    assert outcomes[1]["yaml_tag"][0] == 2


def test_base_include_cycle_is_a_clear_error(outcomes):
    _check(outcomes, "base_cycle", "a.yaml", "BASE cycle", "b.yaml")


def test_data_path_that_is_a_file_is_a_clear_error(outcomes):
    _check(outcomes, "data_file", "a_file", "is a file, not a folder")
