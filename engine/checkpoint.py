"""The checkpoint format: atomic saves, safe loads, auto-resume and pruning (the random-number state it stores:
engine/rng.py).

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts (the config as YAML text), so it
always loads with `torch.load(..., weights_only=True)`: nothing in a checkpoint is ever run as code.
Files are named like the official release (`ckpt_epoch_<N>.pth`, written after epoch N) and written
atomically: a crash, a kill or a full disk half way through leaves the previous file under that name untouched
and no partial file under a checkpoint's name (a SIGKILL can leave a hidden `.ckpt_*.tmp` file, which
`remove_stale_temp_files` deletes when the next run starts).

A run stopped by a preemption signal in the middle of epoch N saves `ckpt_epoch_<N>_step_<S>.pth` (S: the
run's update count): it holds the position inside the epoch, and auto-resume prefers it over
`ckpt_epoch_<N-1>.pth` and anything older. It is deleted as soon as a newer checkpoint loads, and does not
count towards TRAIN.KEEP_LAST.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import uuid
import zipfile
from typing import Any, BinaryIO, Callable, Iterator

import torch

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt_epoch_(\d+)(?:_step_(\d+))?\.pth$")
_TMP_RE = re.compile(r"^\.ckpt_epoch_\d+(?:_step_\d+)?\.pth\.[0-9a-f]{12}\.tmp$")  # atomic_write's temp names


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message names the file and what to do."""


def checkpoint_path(run_dir: str, epoch: int) -> str:
    """The official file name of the checkpoint written after `epoch`: <run_dir>/ckpt_epoch_<epoch>.pth."""
    return os.path.join(run_dir, f"ckpt_epoch_{epoch}.pth")


def mid_epoch_checkpoint_path(run_dir: str, epoch: int, global_step: int) -> str:
    """<run_dir>/ckpt_epoch_<epoch>_step_<global_step>.pth: epoch `epoch` stopped after update `global_step`."""
    return os.path.join(run_dir, f"ckpt_epoch_{epoch}_step_{global_step}.pth")


def _named_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _named_tensors(v, f"{prefix}.{k}")


def _check_finite(state: dict, path: str) -> None:
    # Weights (and their EMA) only: optimizer moments or a scaler may legitimately hold inf.
    for section in ("model", "ema"):
        for name, t in _named_tensors(state.get(section), section):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(
                    f"Refusing to write checkpoint {path}: tensor {name} holds NaN or Inf values. "
                    "The run has diverged; resume from an earlier checkpoint with a lower learning rate "
                    "(or AMP off) instead."
                )


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network, tmpfs variants) do not support fsync on directories
    finally:
        os.close(fd)


def _os_error_behind(e: BaseException) -> OSError | None:
    """The OSError that caused `e`, if any (torch.save turns a failed write into a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temp file beside `path`, fsync it, rename it onto `path`, fsync the directory.

    On any error (or interrupt) the temp file is removed and the error re-raised, so `path` holds either
    its previous content or the complete new one, never a partial file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with mode 0o666 (not mkstemp's 0o600) so the file gets the usual umask permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # includes KeyboardInterrupt
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = _os_error_behind(e)
        if cause is not None and cause is not e:
            raise cause from e  # torch's zip writer hides e.g. ENOSPC behind "unexpected pos"
        raise
    _fsync_dir(directory)


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` atomically (see `atomic_write`).

    Raises CheckpointError when a floating tensor in state['model'] (or state['ema']) is NaN/Inf, and
    re-raises any write error (e.g. OSError ENOSPC) after removing the temp file; the file previously under
    `path`, if any, is left intact in every failure case.
    """
    _check_finite(state, path)
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """Load a checkpoint on CPU with weights_only=True; any failure becomes one CheckpointError naming `path`.

    `mmap=True` maps tensor storages instead of reading them (a cheap integrity probe for large files);
    files in the legacy (non-zip) format are read normally.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Check the path given to --resume/--pretrained."
        ) from None
    except IsADirectoryError:
        raise CheckpointError(f"Checkpoint {path} is a directory; pass the .pth file inside it.") from None
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False or allow-listing the global: keep only the global's name.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"Checkpoint {path} holds Python objects other than tensors and plain data{why}, so it was not "
            "loaded and nothing in it was run. Only use files you trust, saved as plain state dicts."
        ) from None
    except PermissionError:
        raise CheckpointError(f"Checkpoint {path} cannot be read: permission denied.") from None
    except Exception as e:
        # A truncated zip is not recognised as one, and the legacy unpickler then fails with any error type.
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(e).__name__}: {_first_line(e)}). "
            "Delete it or use an earlier checkpoint."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a dict; expected a state dict or "
            "{'model': state_dict, ...}."
        )
    return obj


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _checkpoints(run_dir: str) -> list[tuple[tuple[int, int, int], str]]:
    """[(order key, path)] of the checkpoints in run_dir, newest first.

    The key orders by training progress: epoch N stopped after update S is (N, 0, S), after epoch N is (N, 1, 0).
    """
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _CKPT_RE.match(name)
        if m:
            epoch, step = int(m.group(1)), m.group(2)
            key = (epoch, 1, 0) if step is None else (epoch, 0, int(step))
            found.append((key, os.path.join(run_dir, name)))
    return sorted(found, reverse=True)


def _is_mid_epoch(key: tuple[int, int, int]) -> bool:
    return key[1] == 0


def _loads(path: str) -> bool:
    try:
        load_checkpoint(path, mmap=True)
    except CheckpointError as e:
        log.warning("Skipping unreadable checkpoint: %s", e)
        return False
    return True


def find_resume_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint in run_dir (by training progress) that loads; broken ones are skipped with a warning.

    Returns None when the directory holds no loadable checkpoint. The probe memory-maps the file, so it
    costs little even for large checkpoints; load the returned path with `load_checkpoint`.
    """
    for _, path in _checkpoints(run_dir):
        if _loads(path):
            return path
    return None


def prune_checkpoints(run_dir: str, keep_last: int, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Delete epoch checkpoints beyond the newest `keep_last`, and mid-epoch ones a newer checkpoint replaces;
    return the deleted paths.

    Never deletes a path in `keep` (e.g. the best checkpoint) nor the newest checkpoint that loads (so a
    damaged newest file can never leave the run without a resumable checkpoint).
    """
    found = _checkpoints(run_dir)
    newest_good = next((p for _, p in found if _loads(p)), None)
    protected = {os.path.realpath(p) for p in keep}
    epoch_ends = [p for key, p in found if not _is_mid_epoch(key)]
    protected.update(os.path.realpath(p) for p in epoch_ends[: max(keep_last, 0)])
    if newest_good is not None:
        protected.add(os.path.realpath(newest_good))
    deleted = []
    for _, path in found:
        if os.path.realpath(path) not in protected:
            os.remove(path)
            deleted.append(path)
    if deleted:
        log.info("Removed old checkpoints: %s", ", ".join(os.path.basename(p) for p in deleted))
    return deleted


def remove_stale_temp_files(run_dir: str) -> list[str]:
    """Delete temp files a killed checkpoint write left in run_dir (call before this run writes any)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    stale = [os.path.join(run_dir, n) for n in names if _TMP_RE.match(n)]
    for path in stale:
        os.remove(path)
    if stale:
        log.warning("Removed unfinished checkpoint writes of an earlier run: %s",
                    ", ".join(os.path.basename(p) for p in stale))
    return stale
