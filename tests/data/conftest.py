"""The `folder` fixture of the data tests: a tiny ImageNet-layout image folder written into tmp_path."""
from __future__ import annotations

import pytest

from tests.helpers.data import write_folder


@pytest.fixture
def folder(tmp_path) -> str:
    return write_folder(tmp_path / "imagenet")
