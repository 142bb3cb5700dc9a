"""Qwen2.5-VL inputs on the host: image preprocessing, the chat template and tokenisation.

User text is text (``Processor.encode``, the one place every mode's prompt is tokenised: the training rows,
evaluation, ``generate`` and the playground): the template's own tokens are special tokens, while
``<|im_end|>`` or ``<|image_pad|>`` typed inside a question, an option, a hint or a chain is encoded as the
characters it spells. transformers' processor tokenises the rendered template whole, so there such a string
becomes a control token; for text without special-token strings the two give the same ids.

Image preprocessing reproduces transformers' ``Qwen2VLImageProcessor`` (its PIL/numpy backend) bit for bit:
smart resize to multiples of ``patch_size * merge_size`` within the pixel bounds, PIL bicubic resampling of the
uint8 RGB image, rescale by 1/255 (in float64, then float32), CLIP mean/std normalisation in float32, and the
frame repeated to ``temporal_patch_size`` and flattened to ``(grid_t * grid_h * grid_w, C * T * P * P)`` patches
ordered merge-block-major (each ``merge_size x merge_size`` group of patches is contiguous, because the patch
merger turns each group into one ``<|image_pad|>`` token).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, END_OF_TEXT)
DEFAULT_SYSTEM = "You are a helpful assistant."
# Stands for the user's text while the chat template renders (private-use code points: no tokenizer's special token
# and no template's literal text holds them), so the template's text and the user's can be tokenised differently.
USER_TEXT_MARKER = "\ue000user-text\ue001"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESCALE_FACTOR = 1 / 255


# ---- images -----------------------------------------------------------------------------------------------

MAX_ASPECT_RATIO = 200  # transformers' Qwen2-VL smart_resize refuses anything more elongated


def check_image_size(height: int, width: int) -> str | None:
    """Why the processor cannot take an image of ``height`` x ``width`` pixels, or None when it can.

    The text is the ``ValueError`` message ``smart_resize`` raises (transformers' own wording), so a caller
    can test an item up front and report the same reason the processor would give later.
    """
    if height <= 0 or width <= 0:
        return f"image size must be positive, got height={height}, width={width}"
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        return (f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                f"got {max(height, width) / min(height, width)}")
    return None


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with the pixel count inside [min_pixels, max_pixels].

    The aspect ratio is kept as closely as the rounding allows; the arithmetic follows transformers exactly
    (Python's round-half-to-even, then floor/ceil after rescaling).
    """
    problem = check_image_size(height, width)
    if problem is not None:
        raise ValueError(problem)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_image(image) -> Image.Image:
    """A PIL RGB image from a PIL image of any mode or a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    Alpha is dropped (PIL ``convert("RGB")``), as transformers does; grey is copied to the three channels.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 RGB in HWC layout, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    return to_rgb_image(Image.fromarray(np.ascontiguousarray(array)))


def flatten_patches(image: np.ndarray, patch_size: int, temporal_patch_size: int,
                    merge_size: int) -> np.ndarray:
    """A (C, H, W) float image to (grid_h * grid_w, C * T * P * P) patches, merge-block-major.

    Row order is (block row, block col, row in block, col in block); inside a row the layout is
    (channel, frame, patch row, patch col), the layout the 3-D patch convolution's kernel expects.
    """
    channels, height, width = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h % merge_size or grid_w % merge_size or height % patch_size or width % patch_size:
        raise ValueError(f"image of {height}x{width} does not split into {merge_size}x{merge_size} groups of "
                         f"{patch_size}px patches")
    blocks = image.reshape(channels, grid_h // merge_size, merge_size, patch_size,
                           grid_w // merge_size, merge_size, patch_size)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, C, P, P)
    # A still image is one frame, repeated to fill the temporal patch.
    frames = np.repeat(blocks[:, :, :, :, :, None], temporal_patch_size, axis=5)
    return np.ascontiguousarray(
        frames.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size))


def preprocess_image(image, *, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280,
                     patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2,
                     image_mean: Sequence[float] = CLIP_MEAN,
                     image_std: Sequence[float] = CLIP_STD) -> tuple[np.ndarray, np.ndarray]:
    """One image to ``(pixel_values float32 [grid_h * grid_w, 3 * T * P * P], image_grid_thw int32 [1, 3])``."""
    rgb = to_rgb_image(image)
    width, height = rgb.size
    new_height, new_width = smart_resize(height, width, factor=patch_size * merge_size,
                                         min_pixels=min_pixels, max_pixels=max_pixels)
    resized = np.asarray(rgb.resize((new_width, new_height), resample=Image.BICUBIC))
    # Same dtypes and order as transformers, so the result is bitwise identical.
    scaled = (resized.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
    normalized = (scaled - np.asarray(image_mean, np.float32)) / np.asarray(image_std, np.float32)
    pixel_values = flatten_patches(normalized.transpose(2, 0, 1), patch_size, temporal_patch_size, merge_size)
    grid = np.array([[1, new_height // patch_size, new_width // patch_size]], np.int32)
    return pixel_values, grid


class ImageProcessor:
    """Qwen2-VL image preprocessing for a list of images; ``__call__`` concatenates them in order."""

    def __init__(self, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, patch_size: int = 14,
                 temporal_patch_size: int = 2, merge_size: int = 2,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD):
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, "
                             f"max_pixels={max_pixels}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values, got {image_mean} and {image_std}")
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "ImageProcessor":
        """From a model directory's ``preprocessor_config.json`` (defaults where the file or a key is absent)."""
        file = Path(path) / "preprocessor_config.json"
        settings = {}
        if file.is_file():
            try:
                raw = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{file} is not valid JSON: {e}") from e
            size = raw.get("size") or {}
            settings = {
                "min_pixels": raw.get("min_pixels") or size.get("shortest_edge"),
                "max_pixels": raw.get("max_pixels") or size.get("longest_edge"),
                **{k: raw.get(k) for k in ("patch_size", "temporal_patch_size", "merge_size",
                                           "image_mean", "image_std")},
            }
        settings = {k: v for k, v in settings.items() if v is not None}
        return cls(**{**settings, **overrides})

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size ** 2

    def image_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """The (t, h, w) patch grid an image of this size gets, without processing it."""
        new_height, new_width = smart_resize(height, width, self.patch_size * self.merge_size,
                                             self.min_pixels, self.max_pixels)
        return 1, new_height // self.patch_size, new_width // self.patch_size

    def preprocess(self, image) -> tuple[np.ndarray, np.ndarray]:
        return preprocess_image(image, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size,
                                merge_size=self.merge_size, image_mean=self.image_mean,
                                image_std=self.image_std)

    def __call__(self, images) -> dict:
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        processed = [self.preprocess(image) for image in images]
        if not processed:
            return {"pixel_values": np.zeros((0, self.patch_dim), np.float32),
                    "image_grid_thw": np.zeros((0, 3), np.int32)}
        return {"pixel_values": np.concatenate([p for p, _ in processed]),
                "image_grid_thw": np.concatenate([g for _, g in processed])}


def pad_patches(pixel_values: np.ndarray, image_grid_thw: np.ndarray, max_patches: int,
                max_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad to static shapes: ``(pixel_values [max_patches, D], image_grid_thw [max_images, 3], valid [max_patches])``.

    Padding patches are zeros and marked False in ``valid``; padding grid rows are (0, 0, 0), which the vision
    tower and :func:`robust_r1_jax.model.rope_index.mrope_position_ids` treat as empty slots.
    """
    pixel_values = np.asarray(pixel_values)
    grid = np.asarray(image_grid_thw).reshape(-1, 3)
    num_patches, num_images = pixel_values.shape[0], grid.shape[0]
    expected = int(np.prod(grid, axis=1).sum())
    if pixel_values.ndim != 2 or num_patches != expected:
        raise ValueError(f"pixel_values of shape {pixel_values.shape} do not match image_grid_thw "
                         f"{grid.tolist()}, which needs {expected} patch rows")
    if num_patches > max_patches:
        raise ValueError(f"{num_patches} image patches do not fit the bucket of max_patches={max_patches}")
    if num_images > max_images:
        raise ValueError(f"{num_images} images do not fit the bucket of max_images={max_images}")
    padded = np.zeros((max_patches, pixel_values.shape[1]), pixel_values.dtype)
    padded[:num_patches] = pixel_values
    padded_grid = np.zeros((max_images, 3), grid.dtype)
    padded_grid[:num_images] = grid
    valid = np.arange(max_patches) < num_patches
    return padded, padded_grid, valid


# ---- chat template ----------------------------------------------------------------------------------------

# The chat template Qwen2.5-VL-*-Instruct ship in chat_template.json (Jinja, as transformers renders it). For one user
# turn of images then text it renders exactly ``chat_prompt``'s text; exported folders whose tokenizer has no template
# of its own get this one, so transformers' ``apply_chat_template`` works on them.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_prompt(question: str, num_images: int = 1, system: str = DEFAULT_SYSTEM,
                image_tokens_per_image: Sequence[int] | None = None) -> str:
    """The Qwen2.5-VL chat template for one user turn (images first, then the question) and the assistant cue.

    With ``image_tokens_per_image`` each image's ``<|image_pad|>`` is expanded to its token count
    (t*h*w / merge^2), as the processor does before tokenising; without it each image has one placeholder.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_tokens_per_image is None:
        image_tokens_per_image = [1] * num_images
    image_tokens_per_image = [int(n) for n in image_tokens_per_image]
    if len(image_tokens_per_image) != num_images:
        raise ValueError(f"image_tokens_per_image has {len(image_tokens_per_image)} entries for "
                         f"{num_images} images")
    if any(n <= 0 for n in image_tokens_per_image):
        raise ValueError(f"every image needs at least one token, got {image_tokens_per_image}")
    images = "".join(VISION_START + IMAGE_PAD * n + VISION_END for n in image_tokens_per_image)
    return (f"{IM_START}system\n{system}{IM_END}\n"
            f"{IM_START}user\n{images}{question}{IM_END}\n"
            f"{IM_START}assistant\n")


def chat_completion(prompt: str, answer: str) -> str:
    """The prompt followed by the assistant's answer and the turn's closing tokens."""
    return f"{prompt}{answer}{IM_END}\n"


# ---- tokenizer and processor ------------------------------------------------------------------------------

def folder_chat_template(path) -> str | None:
    """The chat template a model folder's processor ships (``chat_template.jinja``, else ``chat_template.json``'s
    ``chat_template``), or None. transformers' processor renders with this one; the tokenizer's own template
    (``tokenizer_config.json``) is the tokenizer's business and loads with it. ValueError for an unreadable file."""
    directory = Path(path)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    file = directory / "chat_template.json"
    if not file.is_file():
        return None
    try:
        template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{file} is not a JSON object with a 'chat_template' string: {e}") from e
    if not isinstance(template, str) or not template:
        raise ValueError(f"{file}: 'chat_template' must be a non-empty string")
    return template


def load_tokenizer(path):
    """A transformers tokenizer from a local directory (never the network), carrying the folder's chat template
    (``folder_chat_template``, else the one in ``tokenizer_config.json``) as ``chat_template`` when it has one."""
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"could not load a tokenizer from {directory}: {e}") from e
    template = folder_chat_template(directory)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the Qwen2 special tokens; a clear error if the tokenizer does not keep each one as one token."""
    ids, problems = {}, []
    for token in SPECIAL_TOKENS:
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
            problems.append(f"{token} -> {encoded}")
        else:
            ids[token] = int(encoded[0])
    if problems:
        raise ValueError(f"the tokenizer does not encode these Qwen2 special tokens as single tokens: "
                         f"{'; '.join(problems)}")
    return ids


def render_chat_template(tokenizer, question: str, image_tokens_per_image: Sequence[int],
                         system: str | None = None) -> str:
    """The prompt text of one user turn (images first, then the question) and the assistant cue, rendered with
    ``tokenizer.chat_template`` (``apply_chat_template``), each image's ``<|image_pad|>`` expanded to its token
    count as transformers' processor does. A system turn is passed only when ``system`` is given (the template
    supplies its own default otherwise). ValueError when the template does not place one pad per image."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": [{"type": "image"} for _ in image_tokens_per_image]
                     + [{"type": "text", "text": question}]})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = text.split(IMAGE_PAD)
    if len(pieces) != len(image_tokens_per_image) + 1:
        raise ValueError(f"the chat template rendered {len(pieces) - 1} {IMAGE_PAD} for "
                         f"{len(image_tokens_per_image)} images")
    out = pieces[0]
    for count, piece in zip(image_tokens_per_image, pieces[1:]):
        out += IMAGE_PAD * int(count) + piece
    return out


class Processor:
    """Image processor + tokenizer: one (question, images, answer) example to model inputs.

    Prompts are rendered with the tokenizer's ``chat_template`` when it has one (a model folder's own template,
    see ``load_tokenizer``), else with Qwen2.5-VL's template written out in ``chat_prompt``.
    """

    def __init__(self, tokenizer, image_processor: ImageProcessor | None = None, system: str = DEFAULT_SYSTEM,
                 directory: str = ""):
        """``directory``: the folder the tokenizer was read from ("" when built in memory), for error messages."""
        self.tokenizer = tokenizer
        self.directory = directory
        self.image_processor = image_processor or ImageProcessor()
        self.system = system
        self.token_ids = special_token_ids(tokenizer)
        self.image_token_id = self.token_ids[IMAGE_PAD]
        self.im_end_id = self.token_ids[IM_END]
        self.chat_template = getattr(tokenizer, "chat_template", None) or None

    def prompt(self, question: str, image_tokens_per_image: Sequence[int]) -> str:
        """The chat text before tokenisation: the folder's template when there is one, else ``chat_prompt``."""
        if self.chat_template is None:
            return chat_prompt(question, len(image_tokens_per_image), self.system, image_tokens_per_image)
        # The default system prompt is left to the template, which may carry its own.
        return render_chat_template(self.tokenizer, question, image_tokens_per_image,
                                    None if self.system == DEFAULT_SYSTEM else self.system)

    @classmethod
    def from_pretrained(cls, path, system: str = DEFAULT_SYSTEM, **image_overrides) -> "Processor":
        return cls(load_tokenizer(path), ImageProcessor.from_pretrained(path, **image_overrides), system)

    def tokenize(self, text: str, as_text: bool = False) -> list[int]:
        """Token ids of ``text``, nothing added around it (the template holds every special token).

        ``as_text=True`` encodes special-token strings inside ``text`` (``<|im_end|>``, ``<|image_pad|>``) as the
        ordinary text they spell (the tokenizer's ``split_special_tokens``), for text a user wrote."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"])

    def prompt_ids(self, question: str, image_tokens_per_image: Sequence[int]) -> list[int]:
        """The prompt's token ids with ``question`` encoded as text (see the module docstring).

        The template is rendered once with a marker in the question's place (``prompt``); the text around the
        marker is tokenised with its special tokens, the question with special-token splitting on. The Qwen2.5-VL
        template puts special tokens on both sides of the user text (``<|vision_end|>`` before it, ``<|im_end|>``
        after), where a byte-level BPE never merges across, so a question without special-token strings gets
        exactly the ids the whole rendered prompt gets. ValueError when the template does not render the question
        exactly once."""
        rendered = self.prompt(USER_TEXT_MARKER, image_tokens_per_image)
        pieces = rendered.split(USER_TEXT_MARKER)
        if len(pieces) != 2:
            raise ValueError(f"the chat template rendered the user text {len(pieces) - 1} times; expected once")
        before, after = pieces
        return self.tokenize(before) + self.tokenize(question, as_text=True) + self.tokenize(after)

    def encode(self, question: str, images=(), answer: str | None = None) -> dict:
        """``input_ids`` int32 [S], ``loss_mask`` int32 [S], ``pixel_values``, ``image_grid_thw``.

        The loss mask is 1 exactly on the answer's tokens and the closing ``<|im_end|>`` (all zeros without an
        answer). Prompt and answer are tokenised separately and concatenated, so the prompt's tokens are the
        ones the sampler conditions on and the mask boundary never falls inside a merged token. ``question`` and
        ``answer`` are text: a special-token string inside them is encoded as the characters it spells
        (``prompt_ids``), so it can neither add image tokens nor end the turn.
        """
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        vision = self.image_processor(list(images))
        merge = self.image_processor.merge_size ** 2
        tokens_per_image = [int(np.prod(g)) // merge for g in vision["image_grid_thw"]]
        input_ids = self.prompt_ids(question, tokens_per_image)
        loss_mask = [0] * len(input_ids)
        if answer is not None:
            answer_ids = self.tokenize(answer, as_text=True) + [self.im_end_id]
            closing_ids = self.tokenize("\n")
            input_ids += answer_ids + closing_ids
            loss_mask += [1] * len(answer_ids) + [0] * len(closing_ids)
        return {"input_ids": np.asarray(input_ids, np.int32), "loss_mask": np.asarray(loss_mask, np.int32),
                "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
