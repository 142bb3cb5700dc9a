"""Finished (model, benchmark, level) results of an evaluation, kept on disk so that a stopped run keeps its work.

Each level's outcomes (``robust.evaluate_condition``'s records) are written, as soon as the level is done, to
``<workdir>/levels/<model>/<benchmark>/<level>.json`` (one atomic write: a kill leaves the old file or none). The
file holds the level's *key* beside the outcomes: everything the outcomes depend on (the model folder and its
identity, tokenizer and suffix; the benchmark file, its identity and its rows; the level and intensity; every
generation and protocol setting, ``robust.Settings.protocol()``). A later run with the same config finds the same
key and reuses the outcomes instead of generating again; any difference (another checkpoint written into the model
folder, an edited TSV, another ``max_new_tokens``) makes the key differ and the level is evaluated anew, replacing
the file. Sampled decoding draws from a stream named by (benchmark, level), not by what ran before, so a resumed
run's report set is the one an uninterrupted run writes.

Folder identities are the device and inode numbers and modification time of the folder (and of a file source):
the project replaces an exported model folder by rename (``atomic.swap_dir``), which gives it a new inode, and a
new training checkpoint step changes its folder's modification time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

from robust_r1_jax import atomic

DIRECTORY = "levels"
FORMAT = "robust_r1_jax.eval.finished/1"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def path_identity(path: str) -> list | None:
    """[device, inode, modification time in ns] of a local file or folder; None where it is absent or remote."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns]


def rows_digest(rows: Sequence[Any]) -> str:
    """sha256 of the rows' places, labels and answers (``BenchmarkRow``): a changed ``limit`` or file changes it."""
    text = json.dumps([[row.where, str(row.label), None if row.record is None else row.record.answer]
                       for row in rows])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def level_key(spec, benchmark, condition, settings) -> dict:
    """What one level's outcomes depend on, as JSON values (see the module docstring)."""
    return json.loads(json.dumps({
        "format": FORMAT,
        "model": {"name": spec.name, "path": os.path.abspath(spec.path), "identity": path_identity(spec.path),
                  "tokenizer": spec.tokenizer_path, "tokenizer_identity": path_identity(spec.tokenizer_path),
                  "use_suffix": spec.use_suffix},
        "benchmark": {"name": benchmark.name, "kind": benchmark.kind, "source": os.path.abspath(benchmark.source),
                      "identity": path_identity(benchmark.source)},
        "level": condition.level, "intensity": condition.intensity, "rows": rows_digest(condition.rows),
        "settings": settings.protocol()}))


def _part(text: str) -> str:
    return _UNSAFE.sub("_", str(text)).strip("_") or "_"


class FinishedLevels:
    """The ``levels/`` folder of an evaluation workdir: ``load`` a level's outcomes for a key, ``save`` them."""

    def __init__(self, workdir: str, writer: bool = True):
        self.directory = os.path.join(workdir, DIRECTORY)
        self.writer = writer  # only one process of a multi-process job writes

    def path(self, key: dict) -> str:
        """``<model>/<benchmark>/<level>.json`` with characters outside [A-Za-z0-9._-] as ``_``."""
        return os.path.join(self.directory, _part(key["model"]["name"]), _part(key["benchmark"]["name"]),
                            _part(key["level"]) + ".json")

    def load(self, key: dict) -> list[dict] | None:
        """The outcomes saved under ``key``; None when there are none, they were saved under another key, or the
        file cannot be read (then the level is evaluated again and the file replaced)."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("outcomes"), list):
            return None
        return saved["outcomes"]

    def save(self, key: dict, outcomes: list[dict]) -> str:
        """Writes the level's outcomes under ``key`` (atomically); returns the file's path.

        Raises TypeError when an outcome holds a value JSON cannot write (a bug: outcomes are plain values)."""
        path = self.path(key)
        if self.writer:
            text = json.dumps({"key": key, "outcomes": outcomes}, ensure_ascii=False)
            atomic.write_text(path, text + "\n")
        return path
