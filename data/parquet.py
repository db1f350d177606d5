"""Parquet shards (the Hugging Face Hub copies of ImageNet) read in place: one row = one image and its label.

Layout, as downloaded (e.g. `huggingface-cli download ILSVRC/imagenet-1k --repo-type dataset --local-dir D`):
DATA_PATH/data/train-00000-of-00294.parquet ... and DATA_PATH/data/validation-*.parquet; also accepted are
DATA_PATH/{split}-*.parquet, DATA_PATH/{split}/*.parquet and DATA_PATH/default/{split}/*.parquet (the Hub's
parquet conversion). `val` is looked up as `validation`, then `val`. Shards are read in file-name order.

Columns: `image`, either a struct with a `bytes` field (the `datasets` Image feature: the encoded file as
downloaded) or plain binary, and `label`, an integer class index. Labels are used as stored: in ILSVRC/imagenet-1k
they are the indices of the wnids in sorted order (0 = n01440764), the same indices the folder and zip layouts
give, so a checkpoint trained on either reads the other. The class count comes from the shards' `datasets`
metadata (a ClassLabel's names) when present, else from the largest training label.

Access: the row index (shard, row group, row) and the labels are read once from the footers and the label column,
in the main process; workers open the shards lazily (never pickled). A row is served from DATA.CACHE_MODE's
in-memory copy when held (part: this rank's shard rank, rank + W, ..., the same rows as the zip layout; full:
every row), else by reading its whole row group's image column, of which each process keeps the last one: cheap
for evaluation's consecutive rows, a whole row group per image for training's random order (see
benchmarks/README.md for the measured cost; scripts/prepare_imagenet.py writes the zip layout from shards for
machines whose memory holds no shard). With CACHE_MODE part the training split is dealt to the ranks by whole row
groups (group k to rank k mod W), so each rank reads only its 1/W of the shards to fill its cache, and
ShardTrainSampler draws its epochs from them; a rank's process keeps at most 32 shards open.
"""
from __future__ import annotations

import collections
import glob
import json
import logging
import os
from typing import Callable, Iterator

import numpy as np

from data.base import LabeledImageDataset
from data.bytecache import CACHE_MODES, ByteCache, cached_indices, ensure_fits
from data.errors import CorruptImageError, DataError
from data.fast import FastOptions
from data.folder import check_root

log = logging.getLogger(__name__)

PARQUET_LAYOUT = ("DATA_PATH/data/{train,validation}-*.parquet (the Hugging Face layout) with columns image "
                  "(struct with bytes, or binary) and label (int)")
_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val")}
_PATTERNS = ("data/{s}-*.parquet", "{s}-*.parquet", "{s}/*.parquet", "default/{s}/*.parquet")


def find_shards(root: str, split: str) -> list[str]:
    """The split's shard files under `root` in name order, from the first pattern that matches; [] if none."""
    for name in _SPLIT_NAMES.get(split, (split,)):
        for pattern in _PATTERNS:
            found = sorted(glob.glob(os.path.join(glob.escape(root), pattern.format(s=name))))
            if found:
                return found
    return []


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("Reading parquet shards needs pyarrow; install it with pip install pyarrow "
                        "(it is in requirements.txt).") from None
    return pq


_OPEN_FILES = 32  # shards a process keeps open at once (least recently used closed first)


def _open(path: str):
    pq = _pyarrow()
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged or truncated file
        if "Too many open files" in str(e):
            raise DataError(f"Cannot open {path}: too many open files in this process; raise the limit (ulimit -n) or "
                            "use fewer DataLoader workers.") from None
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}: {e}); download it again.") \
            from None


def _image_column(pf, path: str) -> str:
    """The column path holding the encoded images: image.bytes (struct) or image (binary)."""
    import pyarrow as pa

    schema = pf.schema_arrow
    if "image" not in schema.names or "label" not in schema.names:
        raise DataError(f"{path} has columns {schema.names}; expected {PARQUET_LAYOUT}.")
    kind = schema.field("image").type
    if pa.types.is_struct(kind):
        if kind.get_field_index("bytes") < 0:
            raise DataError(f"{path}: column image is a struct without a bytes field ({kind}); "
                            f"expected {PARQUET_LAYOUT}.")
        return "image.bytes"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "image"
    raise DataError(f"{path}: column image has type {kind}; expected {PARQUET_LAYOUT}.")


def _class_names(pf) -> list[str] | None:
    """The label's ClassLabel names from the `datasets` metadata in the schema, if any."""
    meta = pf.schema_arrow.metadata or {}
    raw = meta.get(b"huggingface")
    if raw is None:
        return None
    try:
        names = json.loads(raw)["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _labels(pf, path: str) -> np.ndarray:
    import pyarrow as pa

    kind = pf.schema_arrow.field("label").type
    if not pa.types.is_integer(kind):
        raise DataError(f"{path}: column label has type {kind}; expected integer class indices.")
    column = pf.read(columns=["label"]).column(0)
    if column.null_count:
        raise DataError(f"{path}: {column.null_count} rows have no label; every image needs its class index.")
    return column.to_numpy().astype(np.int64)


class ParquetDataset(LabeledImageDataset):
    """One split of the parquet layout: random access by row over all its shards."""

    def __init__(self, root: str, split: str, transform: Callable | None = None, on_corrupt: str = "error",
                 cache_mode: str = "no", rank: int = 0, world_size: int = 1, fast: FastOptions = FastOptions()) -> None:
        super().__init__(transform, on_corrupt, fast)
        check_root(root, PARQUET_LAYOUT)
        if cache_mode not in CACHE_MODES:
            raise DataError(f"DATA.CACHE_MODE is {cache_mode!r}; choose {', '.join(CACHE_MODES)}.")
        self.shards = find_shards(root, split)
        if not self.shards:
            raise DataError(f"No {split} shards under {root}; expected {PARQUET_LAYOUT}.")
        shard_of, group_of, row_of, id_of, labels, self.classes = [], [], [], [], [], None
        image_bytes = 0  # the image column's size over all shards, uncompressed, from the footers
        for s, path in enumerate(self.shards):
            pf = _open(path)
            column = _image_column(pf, path)
            self.classes = self.classes or _class_names(pf)
            labels.append(_labels(pf, path))
            for g in range(pf.metadata.num_row_groups):
                group = pf.metadata.row_group(g)
                rows = group.num_rows
                image_bytes += sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                                   if group.column(c).path_in_schema == column)
                shard_of.append(np.full(rows, s, dtype=np.int32))
                group_of.append(np.full(rows, g, dtype=np.int32))
                row_of.append(np.arange(rows, dtype=np.int32))
                id_of.append(np.full(rows, len(id_of), dtype=np.int32))  # row groups numbered over all shards
            pf.close()
        self._column = column
        self._shard = np.concatenate(shard_of)  # per row: its shard, row group and place in the row group
        self._group = np.concatenate(group_of)
        self._row = np.concatenate(row_of)
        self._group_id = np.concatenate(id_of)
        rows_per_group = np.bincount(self._group_id)
        self._labels = np.concatenate(labels)
        if not len(self._labels):
            raise DataError(f"The {split} shards under {root} hold no rows; expected {PARQUET_LAYOUT}.")
        self.num_classes = self._num_classes(root, split)
        self._check_labels()
        # under DATA.ON_CORRUPT skip a damaged row group's rows are skipped one by one: allow a whole group of them
        self.max_consecutive_corrupt = max(self.max_consecutive_corrupt, int(rows_per_group.max()) + 1)
        self._bad_groups: set[tuple[int, int]] = set()
        self._files: collections.OrderedDict[int, object] = collections.OrderedDict()
        self._files_pid = -1
        self._group_key: tuple[int, int] | None = None
        self._group_values = None
        self.cache_mode = cache_mode
        self._cache = ByteCache(len(self))
        if cache_mode == "no" and split == "train" and rows_per_group.mean() > 8:
            log.warning("DATA.CACHE_MODE no: each training image read from the parquet shards decodes its whole row "
                        "group (%.0f rows on average), which costs more than decoding the image; hold the shards in "
                        "memory (DATA.CACHE_MODE part or full) or write the zip layout with "
                        "scripts/prepare_imagenet.py.", rows_per_group.mean(), extra={"once_per_job": True})
        self.part_shards: list[np.ndarray] | None = None  # every rank's training rows with CACHE_MODE part
        if cache_mode != "no":
            if cache_mode == "part" and split == "train":
                self.part_shards = self._group_shards(world_size)
                held = self.part_shards[rank]
            else:
                held = cached_indices(cache_mode, len(self), rank, world_size)
            # filling holds the rows read and then their one buffer: about twice the cache at its peak
            ensure_fits(2 * image_bytes * len(held) // len(self), f"{split} images while filling the cache")
            self._cache = ByteCache(len(self), self._read_rows(held))
            log.info("Cached %d images (%.1f MiB) from %d %s shards (%s mode)", len(self._cache),
                     self._cache.nbytes / 2**20, len(self.shards), split, cache_mode)
            self._close()
            import pyarrow as pa

            pa.default_memory_pool().release_unused()  # the row groups read while filling

    def _group_shards(self, world_size: int) -> list[np.ndarray]:
        """Each rank's training rows with CACHE_MODE part: whole row groups, dealt out in turn (group k of all the
        shards' groups to rank k mod W), so that filling a rank's cache reads only its own 1/W of the row groups.
        ShardTrainSampler draws each rank's epoch from them (evaluation keeps the strided rows rank, rank + W, ...,
        which are the ones it reads)."""
        shards = [np.flatnonzero(self._group_id % world_size == r) for r in range(world_size)]
        if min(len(s) for s in shards) == 0:
            raise DataError(f"The training shards hold {int(self._group_id.max()) + 1} row groups, fewer than the "
                            f"{world_size} processes that DATA.CACHE_MODE part deals them to; use DATA.CACHE_MODE full "
                            "(or no).")
        return shards

    def _num_classes(self, root: str, split: str) -> int:
        if self.classes:
            return len(self.classes)
        if split == "train":
            return int(self._labels.max()) + 1
        train = find_shards(root, "train")  # the training split defines the classes, as for the folder layout
        if not train:
            return int(self._labels.max()) + 1
        return int(max(_labels(_open(p), p).max() for p in train)) + 1

    def _check_labels(self) -> None:
        bad = np.flatnonzero((self._labels < 0) | (self._labels >= self.num_classes))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{self.name(i)} has label {self._labels[i]}, outside "
                            f"0..{self.num_classes - 1} ({len(bad)} such rows); a split without labels (such as "
                            "test) cannot be trained or evaluated.")

    # -- reading ------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # open files and the last row group stay in the process that read them
        state.update(_files=collections.OrderedDict(), _files_pid=-1, _group_key=None, _group_values=None)
        return state

    def _file(self, s: int):
        if self._files_pid != os.getpid():
            self._files, self._files_pid, self._group_key = collections.OrderedDict(), os.getpid(), None
        if s in self._files:
            self._files.move_to_end(s)
        else:
            while len(self._files) >= _OPEN_FILES:
                self._files.popitem(last=False)[1].close()
            self._files[s] = _open(self.shards[s])
        return self._files[s]

    def _close(self) -> None:
        for pf in self._files.values():
            pf.close()
        self._files, self._group_key, self._group_values = collections.OrderedDict(), None, None

    def _row_group(self, s: int, g: int):
        """The image column of row group g of shard s (the last one read is kept)."""
        if (s, g) in self._bad_groups:  # failed before in this process: not read again for each of its rows
            raise CorruptImageError(f"Cannot read row group {g} of {self.shards[s]} (damaged)")
        if self._group_key != (s, g) or self._files_pid != os.getpid():
            try:
                table = self._file(s).read_row_group(g, columns=[self._column])
            except DataError:
                raise
            except Exception as e:  # a damaged page: the rows of this group cannot be read
                self._bad_groups.add((s, g))
                raise CorruptImageError(f"Cannot read row group {g} of {self.shards[s]}: {type(e).__name__}: {e}") \
                    from None
            column = table.column(0).combine_chunks()
            self._group_values = column.field("bytes") if self._column == "image.bytes" else column
            self._group_key = (s, g)
        return self._group_values

    def _read_rows(self, indices: range) -> Iterator[tuple[int, bytes]]:
        """(index, bytes) for the readable ones of `indices` (ascending), each row group read once."""
        for i in indices:
            try:
                data = self._read(i)
            except CorruptImageError:
                continue  # left uncached: reading it again at training time applies DATA.ON_CORRUPT
            yield i, data

    def _read(self, index: int) -> bytes:
        values = self._row_group(int(self._shard[index]), int(self._group[index]))
        value = values[int(self._row[index])]
        if not value.is_valid:
            raise CorruptImageError(f"{self.name(index)} has no image bytes")
        return value.as_py()

    def cached(self, index: int) -> bool:
        return self._cache.holds(index)

    def name(self, index: int) -> str:
        s = int(self._shard[index])
        return f"{self.shards[s]} (row group {int(self._group[index])}, row {int(self._row[index])})"

    def source(self, index: int) -> bytes:
        data = self._cache.get(index)
        return self._read(index) if data is None else data


def shard_classes(path: str) -> list[str] | None:
    """The class names a shard's `datasets` metadata gives its labels, or None."""
    return _class_names(_open(path))


def shard_rows(path: str) -> Iterator[tuple[bytes, int, str]]:
    """(encoded image, label, stored file name or '') per row of one shard, read one row group at a time."""
    pf = _open(path)
    column = _image_column(pf, path)
    columns = ["image", "label"]
    for g in range(pf.metadata.num_row_groups):
        try:
            table = pf.read_row_group(g, columns=columns)
        except Exception as e:
            raise DataError(f"Cannot read row group {g} of {path} ({type(e).__name__}: {e}); download it again.") \
                from None
        images, labels = table.column("image").combine_chunks(), table.column("label").to_pylist()
        data = images.field("bytes") if column == "image.bytes" else images
        names = images.field("path").to_pylist() if column == "image.bytes" and \
            images.type.get_field_index("path") >= 0 else [""] * len(labels)
        for value, label, name in zip(data, labels, names):
            if not value.is_valid or label is None:
                raise DataError(f"{path} (row group {g}) has a row without image bytes or label; download it again.")
            yield value.as_py(), int(label), name or ""


def write_shards(items: list[tuple[bytes, int]], out_dir: str, split: str, num_shards: int = 1,
                 rows_per_group: int = 100, class_names: list[str] | None = None,
                 compression: str = "snappy") -> list[str]:
    """Write (encoded image, label) rows as the Hub's layout writes them: out_dir/data/{split}-0000i-of-0000n.parquet,
    an `image` struct {bytes, path} column, an int64 `label` column, the `datasets` ClassLabel names in the
    metadata, row groups of `rows_per_group` rows (the Hub's image data sets use 100), dictionary-encoded. Each
    shard is written under a temporary name and renamed when complete. Returns the shard paths."""
    import pyarrow as pa

    pq = _pyarrow()
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel"}}
    if class_names:
        features["label"]["names"] = list(class_names)
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    paths = []
    for k, part in enumerate(np.array_split(np.arange(len(items)), num_shards)):
        rows = [items[i] for i in part]
        table = pa.table({
            "image": pa.array([{"bytes": data, "path": f"{split}_{i}.JPEG"} for (data, _), i in zip(rows, part)],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([label for _, label in rows], pa.int64()),
        }).replace_schema_metadata(metadata)
        path = os.path.join(out_dir, "data", f"{split}-{k:05d}-of-{num_shards:05d}.parquet")
        pq.write_table(table, path + ".tmp", row_group_size=rows_per_group, compression=compression)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
