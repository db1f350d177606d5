"""The official zipped ImageNet layout: DATA_PATH/{train,val}.zip + {train,val}_map.txt.

Map lines are "relative/path<TAB>label" with paths relative to the zip root, exactly what the official
release documents and scripts/make_zip.py writes (e.g. "n01440764/n01440764_10026.JPEG\t0"); a leading
"train.zip@/" prefix (the official in-memory form) is accepted too.

The central directory is read once, in the main process, into numpy arrays (offset, size, method, crc);
workers then read members with a plain file handle opened lazily in each process (never pickled). This
avoids every worker building a 1.28M-entry ZipFile index, which the official ZipReader does.
CACHE_MODE: no = read on demand; part = hold the bytes of indices rank, rank + W, ... (this rank's shard,
matching the ShardTrainSampler and the strided eval sampler); full = hold every image's bytes. Cached bytes
live in one numpy buffer, so forked workers share it without copy-on-write.
"""
from __future__ import annotations

import logging
import os
import struct
import zipfile
import zlib
from typing import Callable

import numpy as np

from data.base import LabeledImageDataset
from data.bytecache import CACHE_MODES, ByteCache, cached_indices, ensure_fits
from data.errors import CorruptImageError, DataError
from data.fast import FastOptions
from data.folder import check_root

log = logging.getLogger(__name__)

ZIP_LAYOUT = ("DATA_PATH/train.zip, train_map.txt, val.zip, val_map.txt (map lines 'n01440764/x.JPEG<TAB>0'; "
              "create them with scripts/make_zip.py)")
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (skipped fields), file name length, extra length


def read_map(path: str) -> tuple[list[str], list[int]]:
    """Parse a map file into member names (relative to the zip root) and integer labels."""
    names, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.rsplit(None, 1)
            try:
                name, label = parts[0], int(parts[-1])
            except (ValueError, IndexError):
                raise DataError(f"{path}:{lineno}: expected 'relative/path<TAB>label', got {line!r}") from None
            if len(parts) < 2:
                raise DataError(f"{path}:{lineno}: expected 'relative/path<TAB>label', got {line!r}")
            if "@" in name:  # "train.zip@/n01/x.JPEG" -> "n01/x.JPEG"
                name = name.split("@", 1)[1]
            names.append(name.lstrip("/"))
            labels.append(label)
    return names, labels


def _map_num_classes(path: str) -> int:
    return max(read_map(path)[1]) + 1


class ZipMapDataset(LabeledImageDataset):
    """One split of the zipped layout, decoded with `decode_rgb`."""

    def __init__(self, root: str, split: str, transform: Callable | None = None, on_corrupt: str = "error",
                 cache_mode: str = "no", rank: int = 0, world_size: int = 1, fast: FastOptions = FastOptions()) -> None:
        super().__init__(transform, on_corrupt, fast)
        check_root(root, ZIP_LAYOUT)
        self.zip_path = os.path.join(root, f"{split}.zip")
        map_path = os.path.join(root, f"{split}_map.txt")
        for p in (self.zip_path, map_path):
            if not os.path.isfile(p):
                raise DataError(f"{p} is missing; expected {ZIP_LAYOUT}.")
        names, labels = read_map(map_path)
        if not names:
            raise DataError(f"{map_path} lists no images; expected {ZIP_LAYOUT}.")
        if min(labels) < 0:
            raise DataError(f"{map_path} has a negative label; labels are class indices 0..C-1.")
        train_map = os.path.join(root, "train_map.txt")
        self.num_classes = max(labels) + 1 if split == "train" or not os.path.isfile(train_map) \
            else _map_num_classes(train_map)
        if max(labels) >= self.num_classes:
            raise DataError(f"{map_path} has label {max(labels)}, but {train_map} has only {self.num_classes} classes.")
        self._names = np.array([n.encode() for n in names])
        self._labels = np.asarray(labels, dtype=np.int64)
        self._index_members(names)
        self._fh = None
        self._fh_pid = -1
        if cache_mode not in CACHE_MODES:
            raise DataError(f"DATA.CACHE_MODE is {cache_mode!r}; choose {', '.join(CACHE_MODES)}.")
        self.cache_mode = cache_mode
        self._cache = ByteCache(len(names))
        if cache_mode != "no":
            held = cached_indices(cache_mode, len(names), rank, world_size)
            # filling holds the members read and then their one buffer: about twice the cache at its peak
            ensure_fits(2 * int(self._csize[held.start:held.stop:held.step].sum()),
                        f"{self.zip_path} while filling the cache")
            self._fill_cache(held)

    def _index_members(self, names: list[str]) -> None:
        try:
            with zipfile.ZipFile(self.zip_path) as zf:
                infos = {i.filename: i for i in zf.infolist()}
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{self.zip_path} is not a readable zip file ({e}); expected {ZIP_LAYOUT}.") from None
        missing = [n for n in names if n not in infos]
        if missing:
            raise DataError(f"{len(missing)} map entries are not in {self.zip_path}, e.g. {missing[0]!r}; "
                            "rebuild the map and zip with scripts/make_zip.py.")
        sel = [infos[n] for n in names]
        bad = [i.filename for i in sel if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
               or i.flag_bits & 0x1]
        if bad:
            raise DataError(f"{self.zip_path}: {bad[0]!r} is encrypted or not stored/deflated; rebuild the zip "
                            "with scripts/make_zip.py.")
        self._offset = np.array([i.header_offset for i in sel], dtype=np.int64)
        self._csize = np.array([i.compress_size for i in sel], dtype=np.int64)
        self._method = np.array([i.compress_type for i in sel], dtype=np.uint8)
        self._crc = np.array([i.CRC for i in sel], dtype=np.uint32)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_fh_pid"] = None, -1  # file handles are opened per process, never pickled
        return state

    def _read_member(self, index: int) -> bytes:
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh, self._fh_pid = open(self.zip_path, "rb"), os.getpid()
        fh = self._fh
        fh.seek(int(self._offset[index]))
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size:
            raise CorruptImageError(f"Cannot read {self.name(index)}: the zip file is truncated")
        sig, n_name, n_extra = _LOCAL_HEADER.unpack(header)
        if sig != b"PK\x03\x04":
            raise CorruptImageError(f"Cannot read {self.name(index)}: bad local zip header")
        fh.seek(n_name + n_extra, os.SEEK_CUR)
        raw = fh.read(int(self._csize[index]))
        try:
            data = zlib.decompress(raw, -15) if self._method[index] == zipfile.ZIP_DEFLATED else raw
        except zlib.error as e:
            raise CorruptImageError(f"Cannot read {self.name(index)}: {e}") from None
        if zlib.crc32(data) != int(self._crc[index]):
            raise CorruptImageError(f"Cannot read {self.name(index)}: CRC mismatch (damaged zip member)")
        return data

    def _fill_cache(self, indices: range) -> None:
        def readable():
            for i in indices:
                try:
                    yield i, self._read_member(i)
                except CorruptImageError:
                    continue  # left uncached: reading it again at training time applies DATA.ON_CORRUPT

        self._cache = ByteCache(len(self._names), readable())
        log.info("Cached %d images (%.1f MiB) from %s (%s mode)", len(self._cache), self._cache.nbytes / 2**20,
                 self.zip_path, self.cache_mode)
        if self._fh is not None:
            self._fh.close()
            self._fh, self._fh_pid = None, -1

    def cached(self, index: int) -> bool:
        return self._cache.holds(index)

    def name(self, index: int) -> str:
        return f"{self.zip_path}@/{self._names[index].decode()}"

    def source(self, index: int) -> bytes:
        data = self._cache.get(index)
        return self._read_member(index) if data is None else data
