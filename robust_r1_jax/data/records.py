"""The source record every reader produces, and the one way bad input is reported.

Readers (``sources.py``, ``shapes.py``) turn a file or a generator into ``Record`` objects; the
synthesis step loads each record's image, degrades it and writes the dataset. Bad input never
vanishes silently: it is reported with the file and line it came from, then skipped or raised
according to ``on_error``.
"""

from __future__ import annotations

import dataclasses
import io
import re
import logging
import os
from typing import Callable

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("skip", "raise")


class SourceError(ValueError):
    """Bad input in a source file or a user's image; the message names the file and line (or record). ``main``
    prints it as one ``error:`` line (exit 1) when it ends a run."""


class MissingInput(FileNotFoundError):
    """A file or folder a mode needs is not there (the demo's models for eval, generate or the playground); the
    message says what to run or set. ``main`` prints it as one ``error:`` line (exit 1)."""


class ImageError(SourceError):
    """A record's image is missing or cannot be decoded."""


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


class SkipLog:
    """The items ``on_error="skip"`` dropped: how many, and the first messages (each names file:line)."""

    def __init__(self, keep: int = 100):
        self.count = 0
        self.keep = keep
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(message)

    def describe(self, first: int = 3) -> str:
        """``"N skipped: msg; msg; msg; and K more"`` -- the count and why, for one-line errors."""
        shown = "; ".join(self.messages[:first])
        more = f"; and {self.count - first} more" if self.count > first else ""
        return f"{self.count} skipped" + (f": {shown}{more}" if shown else "")


def report_bad_input(problem: str | SourceError, on_error: str, skipped: SkipLog | None = None) -> None:
    """Raise the problem (a ``SourceError``) or log it as a warning and return, by ``on_error``.

    A skipped problem is also counted in ``skipped`` when one is given.
    """
    check_on_error(on_error)
    if on_error == "raise":
        raise problem if isinstance(problem, SourceError) else SourceError(problem)
    logger.warning("skipping bad input: %s", problem)
    if skipped is not None:
        skipped.add(str(problem))


# A byte that is not UTF-8, decoded with errors="surrogateescape", becomes U+DC80..U+DCFF.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def non_utf8_problem(text: str) -> str | None:
    """Where ``text`` (decoded with ``errors="surrogateescape"``) held a byte that is not UTF-8, or None."""
    match = _ESCAPED_BYTE.search(text)
    if match is None:
        return None
    return (f"text is not valid UTF-8: byte 0x{ord(match.group()) - 0xDC00:02x} at character {match.start() + 1} "
            f"(a Latin-1 or Windows-1252 file? re-save it as UTF-8)")


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 RGB (H, W, 3); ``where`` names the origin in errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # forces a full decode so truncated files fail here, not later
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL names the in-memory file object (with its address) in the message: keep reports reproducible
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        raise ImageError(f"{where}: cannot decode image ({reason})") from error


@dataclasses.dataclass(frozen=True)
class Record:
    """One multiple-choice VQA item from any source.

    Exactly one of ``image_path``, ``image_bytes`` or ``image_fn`` supplies the image.
    ``chain`` is set only for sources that ship a finished reasoning chain (Robust-R1 JSONL);
    their images are already degraded and ``applied`` holds the types parsed from the chain.
    ``line`` is the 1-based line of the record in ``source_file`` (JSON: the line where the
    record's object starts; generated sources: the example index).
    ``prompt`` is the source's own human turn word for word (``<image>`` and the SPEC §1 suffix removed) and
    ``prompt_answer`` the answer as that turn labels it (``""`` for sources without a human turn).
    ``aliased_types`` / ``unknown_types``: ``<TYPE>`` names of the source's chain that were rewritten by the alias
    table, or are neither SPEC §2 names nor aliases (``data/type_names.py``).
    ``extra_image_paths``: the prompt's second and later images, in order, for a source with several images per
    prompt (upstream's ``image`` list); ``image_path`` is the first.
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    rationales: tuple[str, ...] = ()
    image_path: str | None = None
    image_bytes: bytes | None = dataclasses.field(default=None, repr=False)
    image_fn: Callable[[], np.ndarray] | None = dataclasses.field(default=None, repr=False)
    chain: str | None = None
    applied: tuple[tuple[str, float], ...] = ()
    category: str = ""
    hint: str = ""
    prompt: str = ""
    prompt_answer: str = ""
    aliased_types: tuple[str, ...] = ()
    unknown_types: tuple[str, ...] = ()
    extra_image_paths: tuple[str, ...] = ()
    source_file: str = ""
    line: int = 0

    def __post_init__(self):
        supplied = [x is not None for x in (self.image_path, self.image_bytes, self.image_fn)]
        if sum(supplied) != 1:
            raise ValueError(f"{self.location}: a record needs exactly one image source, got {sum(supplied)}")
        if self.options and not 0 <= self.answer < len(self.options):
            raise ValueError(
                f"{self.location}: answer index {self.answer} outside the {len(self.options)} options"
            )

    @property
    def location(self) -> str:
        return f"{self.source_file}:{self.line}"

    def load_image(self) -> np.ndarray:
        """The image as uint8 RGB (H, W, 3); ``ImageError`` naming file and line when bad."""
        if self.image_fn is not None:
            return np.ascontiguousarray(self.image_fn(), dtype=np.uint8)
        if self.image_bytes is not None:
            return decode_image_bytes(self.image_bytes, f"{self.location} (id {self.id})")
        path = self.image_path
        if not os.path.isfile(path):
            raise ImageError(f"{self.location} (id {self.id}): image file not found: {path}")
        with open(path, "rb") as handle:
            data = handle.read()
        return decode_image_bytes(data, f"{self.location} (id {self.id}), image {path}")

    def load_extra_images(self) -> list[np.ndarray]:
        """The second and later images as uint8 RGB arrays; ``ImageError`` naming file, line and image when bad."""
        images = []
        for path in self.extra_image_paths:
            if not os.path.isfile(path):
                raise ImageError(f"{self.location} (id {self.id}): image file not found: {path}")
            with open(path, "rb") as handle:
                images.append(decode_image_bytes(handle.read(), f"{self.location} (id {self.id}), image {path}"))
        return images

    def encoded_image(self) -> bytes:
        """The image as encoded file bytes (the original bytes when there are any, else PNG)."""
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is not None:
            self.load_image()  # validates first so a bad file is reported with its origin
            with open(self.image_path, "rb") as handle:
                return handle.read()
        return encode_image(self.load_image(), "png")


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """uint8 RGB array -> PNG or JPEG bytes with PIL, deterministic for the same pixels."""
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if pil.mode != "RGB":
        raise ValueError(f"expected an RGB (H, W, 3) image, got shape {np.shape(image)}")
    if image_format == "png":
        # optimize=False and a fixed level keep the bytes identical across runs.
        pil.save(buffer, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        pil.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


def load_images(records, on_error: str = "skip", skipped: SkipLog | None = None):
    """Yield ``(record, image)`` for every record whose image loads; bad ones by ``on_error``."""
    check_on_error(on_error)
    for record in records:
        try:
            image = record.load_image()
        except ImageError as error:
            report_bad_input(error, on_error, skipped)
            continue
        yield record, image
