"""Atomic writes of files and directories: a reader sees the old version or the new one, never half of one.

A file is written under a temporary name in its own directory (so the rename never crosses file systems),
flushed and fsynced (so a crash after the rename cannot leave a renamed but empty file), given the mode
``open()`` would have given it (``file_mode()``: 0644 under the usual umask 022), then renamed over the target.
A directory is filled beside its target under a temporary name, then swapped in by rename; the old directory is
first moved aside (a rename cannot replace a non-empty directory) and deleted after. Any failure removes the temporary file or directory and leaves the old target as it was.

Usage::

    atomic.write_text("runs/demo/report.md", text)
    with atomic.open_for_write("out.tsv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    atomic.replace_dir("runs/demo/tokenizer", tokenizer.save_pretrained)

Local paths only: an object store (gs://...) commits whole objects on its own.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, Callable, Iterator

# mkstemp / mkdtemp create 0600 / 0700 entries; outputs are meant to be shared like ones open() / mkdir() make,
# so they get those modes: 0666 / 0777 less the process's umask.
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put the old one straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir()`` gives a new directory: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~_umask()


def share_tree(directory: str | os.PathLike) -> None:
    """Gives ``directory`` and everything under it the modes ``open()`` / ``mkdir()`` would have given them
    (writers such as safetensors and tempfile create 0600 / 0700 entries)."""
    files, dirs = file_mode(), dir_mode()
    os.chmod(directory, dirs)
    for root, subdirs, names in os.walk(directory):
        for name in subdirs:
            os.chmod(os.path.join(root, name), dirs)
        for name in names:
            os.chmod(os.path.join(root, name), files)


def _parent(path: str | os.PathLike) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return directory


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Yields a file opened with ``open(temporary, mode, **open_kwargs)``; when the block ends without an
    exception the file replaces ``path``, otherwise it is removed. ``mode`` is "w" or "wb" (plus "+")."""
    if not mode.startswith("w"):
        raise ValueError(f"open_for_write writes a new file: mode must start with 'w', got {mode!r}")
    name = os.path.basename(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=_parent(path))
    try:
        with open(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces ``path`` with ``data``, atomically."""
    with open_for_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replaces ``path`` with ``text`` encoded as ``encoding`` (newlines written as given), atomically."""
    write_bytes(path, text.encode(encoding))


def replace_dir(path: str | os.PathLike, fill: Callable[[str], object]) -> None:
    """``fill(staging)`` writes a sibling directory of ``path`` that then replaces ``path`` by rename. If
    ``fill`` raises, ``path`` is left as it was and the staging directory is removed. The staging directory
    gets ``dir_mode()``; what ``fill`` writes keeps its own modes."""
    target = os.path.abspath(path)
    parent, name = _parent(target), os.path.basename(target)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        fill(staging)
        os.chmod(staging, dir_mode())
        swap_dir(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def swap_dir(staging: str | os.PathLike, path: str | os.PathLike) -> None:
    """Moves the complete directory ``staging`` to ``path`` (a sibling, same file system), replacing what was
    there. The old directory is moved aside first (a rename cannot replace a non-empty directory), so ``path``
    is missing only between two renames, never half written; the old one is deleted after."""
    target = os.path.abspath(path)
    parent, name = _parent(target), os.path.basename(target)
    if not os.path.exists(target):
        os.replace(staging, target)
        return
    retired = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
    os.replace(target, os.path.join(retired, name))
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(os.path.join(retired, name), target)  # put the old one back
        shutil.rmtree(retired, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
