"""The ``robust_r1`` tensorflow-datasets builder: array_record shards, no TensorFlow needed.

tfds 4.9.10 prepares a ``GeneratorBasedBuilder`` without TensorFlow as long as no feature has to
be encoded by TF: images arrive here already encoded (PNG or JPEG bytes made with PIL), which the
``Image`` feature stores as they are; text, scalars and tensors are serialised by tfds's own
protobuf code. Reading back goes through ``tfds.builder_from_directory(...).as_data_source``
(decoding images with PIL), which is also what grain's pipelines consume.

On-disk layout (the standard tfds one)::

    {data_dir}/robust_r1/1.0.0/
        dataset_info.json  features.json
        robust_r1-train.array_record-00000-of-0000N
        robust_r1-validation.array_record-00000-of-0000M

Examples keep the order they were generated in (``disable_shuffling``), so the same inputs give
byte-identical shards. A build happens in a temporary directory next to the target and is moved
into place with one rename: a failure leaves the previous dataset (or nothing) behind.

Per example: ``id``, ``image`` (the degraded image), ``question``, ``options``, ``answer`` (option
index), ``chain``, ``rationales``, ``degradation_types``, ``degradation_intensities``,
``degradation_seed`` (-1 when the source shipped pre-degraded images), ``category``, ``source``, and
``prompt`` / ``prompt_answer``: the source's own human turn kept word for word (``<image>`` and the SPEC §1
suffix removed) and the answer text that agrees with it (``""`` when the source has none: the prompt is then
built from ``question`` and ``options``; see ``data/rows.py``'s ``prompt_style``). ``chain`` always answers with
the 0-based ``answer`` index, the project's form. ``extra_images``: a prompt's second and later images, encoded
file bytes in order (empty for one image; the model sees ``image`` first). Datasets written before these fields
read as ``""`` and ``[]``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import itertools
import logging
import os
import shutil
import tempfile
from typing import Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from robust_r1_jax import atomic

logger = logging.getLogger(__name__)
DATASET_NAME = "robust_r1"
DATASET_VERSION = "1.0.0"
SPLITS = ("train", "validation")
IMAGE_FORMATS = ("png", "jpeg")
DESCRIPTION = "Degraded multiple-choice VQA with degradation-aware reasoning chains (Robust-R1)."

TEXT_FIELDS = ("id", "question", "chain", "category", "source", "prompt", "prompt_answer")
OPTIONAL_TEXT_FIELDS = ("prompt", "prompt_answer")  # "" when an example leaves them out
TEXT_LIST_FIELDS = ("options", "rationales", "degradation_types")


def features(image_format: str = "png") -> tfds.features.FeaturesDict:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
        "question": tfds.features.Text(),
        "options": tfds.features.Sequence(tfds.features.Text()),
        "answer": tfds.features.Scalar(np.int32),
        "chain": tfds.features.Text(),
        "rationales": tfds.features.Sequence(tfds.features.Text()),
        "degradation_types": tfds.features.Sequence(tfds.features.Text()),
        "degradation_intensities": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "degradation_seed": tfds.features.Scalar(np.int64),
        "category": tfds.features.Text(),
        "source": tfds.features.Text(),
        "prompt": tfds.features.Text(),
        "prompt_answer": tfds.features.Text(),
        # encoded bytes kept as they are (an Image sequence would have to stack images of different sizes)
        "extra_images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
    })


def validate_example(example: Mapping, where: str) -> dict:
    """The example with normalised types; ``ValueError`` naming ``where`` when malformed."""
    expected = set(features().keys())
    example = {**{field: "" for field in OPTIONAL_TEXT_FIELDS}, "extra_images": [], **example}
    if set(example) != expected:
        raise ValueError(
            f"{where}: example fields differ from the schema: missing {sorted(expected - set(example))}, "
            f"unexpected {sorted(set(example) - expected)}"
        )
    if not isinstance(example["image"], bytes) or not example["image"]:
        raise ValueError(f"{where}: 'image' must be encoded image bytes (PNG or JPEG)")
    types = list(example["degradation_types"])
    intensities = np.asarray(example["degradation_intensities"], dtype=np.float32).reshape(-1)
    if len(types) != len(intensities):
        raise ValueError(f"{where}: {len(types)} degradation types but {len(intensities)} intensities")
    options = [str(o) for o in example["options"]]
    answer = int(example["answer"])
    if options and not 0 <= answer < len(options):
        raise ValueError(f"{where}: answer {answer} outside the {len(options)} options")
    extra = list(example["extra_images"])
    if not all(isinstance(image, bytes) and image for image in extra):
        raise ValueError(f"{where}: 'extra_images' must be encoded image bytes (PNG or JPEG)")
    normalised = dict(example)
    normalised.update(
        extra_images=extra,
        options=options,
        rationales=[str(r) for r in example["rationales"]],
        degradation_types=[str(t) for t in types],
        degradation_intensities=intensities,
        answer=answer,
        degradation_seed=int(example["degradation_seed"]),
    )
    for field in TEXT_FIELDS:
        normalised[field] = str(example[field])
    return normalised


class RobustR1(tfds.core.GeneratorBasedBuilder):
    """Degraded multiple-choice VQA with degradation-aware reasoning chains (Robust-R1)."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Initial release."}

    # tfds's default code_path probes ``importlib_resources`` (an optional etils extra that is not
    # installed); this module's own file is the right answer and needs no probing.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, split_examples: Mapping[str, Iterable[Mapping]] | None = None,
                 image_format: str = "png", **kwargs):
        self._split_examples = dict(split_examples or {})
        self._image_format = image_format
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=DESCRIPTION,
            features=features(self._image_format),
            disable_shuffling=True,  # keep generation order: reproducible bytes and indices
            homepage="https://arxiv.org/abs/2512.17532",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: examples are handed in
        if not self._split_examples:
            raise ValueError("RobustR1 builder was created without examples; use write_dataset()")
        return {split: self._generate_examples(split) for split in self._split_examples}

    def _generate_examples(self, split):
        for index, example in enumerate(self._split_examples[split]):
            yield index, validate_example(example, f"{split} example {index} (id {example.get('id', '?')!r})")


def dataset_dir(data_dir: str) -> str:
    """Where ``write_dataset(..., data_dir)`` puts the dataset."""
    return os.path.join(data_dir, DATASET_NAME, DATASET_VERSION)


@contextlib.contextmanager
def _quiet_tfds():
    """Hide tfds's own bars and messages; the caller shows its own progress."""
    previous = tqdm_utils._active  # pylint: disable=protected-access
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(previous)


def _missing_directories(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def non_empty_splits(split_examples: Mapping[str, Iterable[Mapping]]) -> dict[str, Iterable[Mapping]]:
    """The splits that hold at least one example (each still lazy after its first one).

    tfds cannot write a split without examples ("No examples were yielded"), so an empty one is left out
    with a warning: a train-only dataset is ``{"train": examples}`` or a ``"validation"`` split that is empty.
    """
    kept = {}
    for split, examples in split_examples.items():
        iterator = iter(examples)
        first = next(iterator, _NO_EXAMPLE)
        if first is _NO_EXAMPLE:
            logger.warning("split %r has no examples; the dataset is written without it", split)
            continue
        kept[split] = itertools.chain([first], iterator)
    if not kept:
        raise ValueError(f"no split has any example ({', '.join(split_examples) or 'no splits given'}): "
                         f"nothing to write")
    return kept


_NO_EXAMPLE = object()


def write_dataset(
    split_examples: Mapping[str, Iterable[Mapping]],
    data_dir: str,
    image_format: str = "png",
    overwrite: bool = False,
) -> str:
    """Write the splits as array_record shards under ``dataset_dir(data_dir)``; returns that path.

    Examples are consumed lazily (pass generators to stream); a split without examples is left out
    (``non_empty_splits``). Nothing is visible at the target until the build has succeeded; an existing
    dataset is replaced only with ``overwrite``.
    """
    unknown = set(split_examples) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected a subset of {SPLITS}")
    target = dataset_dir(data_dir)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    split_examples = non_empty_splits(split_examples)
    parent = os.path.dirname(target)
    created = _missing_directories(parent)
    os.makedirs(parent, exist_ok=True)

    def fill(staging: str) -> None:
        # tfds writes <data_dir>/<name>/<version>/: build in a scratch dir, then move the version dir's files
        scratch = tempfile.mkdtemp(prefix=f".{DATASET_NAME}-build-", dir=parent)
        try:
            builder = RobustR1(split_examples=split_examples, image_format=image_format, data_dir=scratch,
                               file_format="array_record")
            with _quiet_tfds():
                builder.download_and_prepare()
            built = dataset_dir(scratch)
            for entry in os.listdir(built):
                os.replace(os.path.join(built, entry), os.path.join(staging, entry))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    try:
        atomic.replace_dir(target, fill)
    except BaseException:
        for directory in created:  # deepest first; rmdir only removes empty ones
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    return target


def find_dataset_dir(path: str) -> str:
    """The versioned dataset folder (the one holding ``dataset_info.json``) that ``path`` is or lies above: a
    ``write_dataset`` data_dir (``<data_dir>/robust_r1/1.0.0``), the dataset's name folder or synth's workdir
    (``<workdir>/tfds/robust_r1/1.0.0``) are accepted too.
    FileNotFoundError naming ``path`` when there is none, ValueError when there are several."""
    if "://" in path or os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset_dir {path} does not exist")
    found = []
    for pattern in ("*/dataset_info.json", "*/*/dataset_info.json", "*/*/*/dataset_info.json"):
        found = sorted(os.path.dirname(f) for f in glob.glob(os.path.join(glob.escape(path), pattern)))
        if found:  # the nearest level that holds any
            break
    if not found:
        raise FileNotFoundError(f"dataset_dir {path} holds no TFDS dataset (no dataset_info.json in it or in the "
                                f"three folder levels below); build one with configs/synth.py")
    if len(found) > 1:
        raise ValueError(f"dataset_dir {path} holds {len(found)} datasets, name one: {', '.join(found)}")
    return found[0]


def data_source(path: str, split: str, decode_images: bool = True):
    """A random-access tfds data source (what grain reads) for a dataset directory (``find_dataset_dir``).

    ``ValueError`` naming the splits the dataset has when ``split`` is not one of them (a train-only
    dataset has no ``validation``).
    """
    path = find_dataset_dir(path)
    builder = tfds.builder_from_directory(path)
    missing = [name for name in (part.split("[")[0].strip() for part in split.split("+"))
               if name not in builder.info.splits]  # tfds split syntax: "train+validation[:10]"
    if missing:
        raise ValueError(f"{path} has no {missing[0]!r} split; it holds {sorted(builder.info.splits)}")
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)


def to_python(example: Mapping) -> dict:
    """A decoded tfds example with text as ``str`` and intensities as a float32 array."""
    out = dict(example)
    for field in TEXT_FIELDS:
        out[field] = _text(example.get(field, "")) if field in OPTIONAL_TEXT_FIELDS else _text(example[field])
    for field in TEXT_LIST_FIELDS:
        out[field] = [_text(v) for v in example[field]]
    out["extra_images"] = [bytes(image) for image in example.get("extra_images", [])]
    out["answer"] = int(example["answer"])
    out["degradation_seed"] = int(example["degradation_seed"])
    out["degradation_intensities"] = np.asarray(example["degradation_intensities"], np.float32).reshape(-1)
    return out


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_examples(path: str, split: str, decode_images: bool = True) -> list[dict]:
    """Every example of a split, in order, as plain Python dicts (images as uint8 arrays)."""
    source = data_source(path, split, decode_images)
    return [to_python(source[i]) for i in range(len(source))]


def split_sizes(path: str) -> dict[str, int]:
    builder = tfds.builder_from_directory(path)
    return {name: info.num_examples for name, info in builder.info.splits.items()}


SUMMARY_FILE = "synth_summary.json"  # what synth writes in its workdir, beside the data folder


def describe_dataset(path: str, num_examples: int = 3) -> str:
    """What the ``inspect`` mode prints for a dataset synth wrote: the versioned folder, the split sizes, synth's
    summary (skipped records, ``<TYPE>`` aliases, the most images a prompt has) when it lies beside the data folder,
    then the first ``num_examples`` examples of each split with every text field as stored (``repr``, so a typed
    ``<|image_pad|>`` or a newline shows as it is), the options numbered as the stored 0-based ``answer`` reads
    them, and the image sizes."""
    path = find_dataset_dir(path)
    lines = [f"dataset: {path}", "splits: " + ", ".join(f"{k} {v}" for k, v in sorted(split_sizes(path).items()))]
    summary_path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), SUMMARY_FILE)
    if os.path.isfile(summary_path):
        import json
        with open(summary_path, encoding="utf-8") as handle:
            summary = json.load(handle)
        lines.append(f"synth summary ({summary_path}):")
        for key in ("source", "source_records", "skipped", "skipped_items", "type_aliases_applied",
                    "unknown_type_names", "max_images_per_prompt"):
            if key in summary:
                lines.append(f"  {key}: {json.dumps(summary[key], ensure_ascii=False)}")
    for split in sorted(split_sizes(path)):
        source = data_source(path, split)
        for index in range(min(num_examples, len(source))):
            example = to_python(source[index])
            image = np.asarray(example["image"])
            lines.append(f"--- {split}[{index}] id {example['id']!r} (source {example['source']!r})")
            lines.append(f"  image: {image.shape[1]}x{image.shape[0]} px, plus {len(example['extra_images'])} "
                         f"extra image(s)")
            lines.append(f"  question: {example['question']!r}")
            options = example["options"]
            lines += [f"  option {i}: {text!r}" + ("   <- answer" if i == example["answer"] else "")
                      for i, text in enumerate(options)]
            if not 0 <= example["answer"] < len(options):
                lines.append(f"  answer: {example['answer']} (names no option)")
            lines.append(f"  prompt (source's own turn, prompt_style=upstream): {example['prompt']!r}")
            lines.append(f"  prompt_answer (the answer in that turn's labels): {example['prompt_answer']!r}")
            degradations = ", ".join(f"{name}({float(s):.2f})" for name, s in
                                     zip(example["degradation_types"], example["degradation_intensities"]))
            lines.append(f"  degradations: {degradations or 'none'} (seed {example['degradation_seed']}; -1: the "
                         f"source's image, degraded as shipped)")
            lines.append(f"  chain: {example['chain']!r}")
    return "\n".join(lines)
