"""A procedural multiple-choice VQA source: coloured shapes on textured backgrounds.

It powers the embedded default run and the tests, so it is built to be learnable by a tiny model:
six strongly saturated colours, five shapes with black outlines, objects on a 3x3 grid (never
overlapping), and four question templates (colour, shape, count, position). Backgrounds are
gradients with stripes, noise or a checker pattern so that every degradation leaves a visible trace.

Every example is a pure function of ``(seed, index, image_size, style)``: the scene, the question, its four
options (exactly one correct by construction) and 2-3 rationales written from the scene. ``Style`` narrows the
generator (question kinds, palette, shapes, distractors, option order) for models trained from scratch in
minutes; its default is the full task.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from robust_r1_jax.data.records import Record

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 185, 65),
    "blue": (40, 85, 235),
    "yellow": (250, 220, 35),
    "magenta": (230, 55, 225),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
QUESTION_KINDS = ("colour", "shape", "count", "position")
SIDES = ("left", "right", "top", "bottom")
TEXTURES = ("stripes", "noise", "checker")
GRID = 3
MAX_OBJECTS = 6
NUM_OPTIONS = 4

# The edge-middle cell (row, col) of each side: an object there is unambiguously on that side.
SIDE_CELLS = {"left": (1, 0), "right": (1, 2), "top": (0, 1), "bottom": (2, 1)}
_CELL_NAMES = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "centre", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
_SHAPE_FEATURES = {
    "circle": "a round outline with no corners",
    "square": "four equal straight sides and four right-angled corners",
    "triangle": "three straight sides meeting in three corners",
    "star": "five sharp points around its centre",
    "diamond": "four corners pointing up, down, left and right",
}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class Style:
    """What the generator may draw. ``colours`` and ``shapes`` are the palette (each at least four: an option
    list needs four distinct values); ``max_distractors`` caps the extra objects of colour, shape and position
    questions; ``sorted_options`` lists colour and shape options in palette order instead of a random order, so
    that an option's index follows from its text alone; ``object_scale`` multiplies every radius (objects then
    stay inside the image, and may leave their cell: use it with few distractors)."""

    kinds: tuple[str, ...] = QUESTION_KINDS
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    max_distractors: int = 3
    sorted_options: bool = False
    object_scale: float = 1.0

    def __post_init__(self):
        for field, value, allowed in (("kinds", self.kinds, QUESTION_KINDS), ("colours", self.colours, tuple(COLOURS)),
                                      ("shapes", self.shapes, SHAPES)):
            unknown = sorted(set(value) - set(allowed))
            if unknown or not value or len(set(value)) != len(value):
                raise ValueError(f"shapes style: {field}={tuple(value)} must be distinct values from {allowed}"
                                 + (f"; unknown {unknown}" if unknown else ""))
        for field, value in (("colours", self.colours), ("shapes", self.shapes)):
            if len(value) < NUM_OPTIONS:
                raise ValueError(f"shapes style: {field} needs at least {NUM_OPTIONS} values (one per option), "
                                 f"got {tuple(value)}")
        if not 1.0 <= self.object_scale <= 4.0:
            raise ValueError(f"shapes style: object_scale must be in [1, 4], got {self.object_scale}")
        if not 0 <= self.max_distractors <= GRID * GRID - 1:
            raise ValueError(f"shapes style: max_distractors must be in [0, {GRID * GRID - 1}], "
                             f"got {self.max_distractors}")


FULL_STYLE = Style()


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One shape; ``center`` and ``radius`` are fractions of the image side."""

    kind: str
    colour: str
    cell: tuple[int, int]
    center: tuple[float, float]
    radius: float

    @property
    def description(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def region(self) -> str:
        return _CELL_NAMES[self.cell]


@dataclasses.dataclass(frozen=True)
class Background:
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    angle: float
    texture: str
    frequency: float
    texture_angle: float
    texture_seed: int


@dataclasses.dataclass(frozen=True)
class Scene:
    size: int
    background: Background
    objects: tuple[ShapeObject, ...]


@dataclasses.dataclass(frozen=True)
class ShapesExample:
    scene: Scene
    kind: str
    question: str
    options: tuple[str, ...]
    answer: int
    rationales: tuple[str, ...]


# --------------------------------------------------------------------------- scene sampling


def _sample_background(rng: np.random.Generator) -> Background:
    # Muted mid tones so the saturated shapes (and white/yellow) stand out.
    colour_a = tuple(int(v) for v in rng.integers(55, 150, size=3))
    colour_b = tuple(int(v) for v in rng.integers(55, 150, size=3))
    return Background(
        colour_a=colour_a,
        colour_b=colour_b,
        angle=float(rng.uniform(0, 2 * math.pi)),
        texture=str(rng.choice(TEXTURES)),
        frequency=float(rng.uniform(4, 12)),
        texture_angle=float(rng.uniform(0, math.pi)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _place(rng: np.random.Generator, kind: str, colour: str, cell: tuple[int, int], scale: float = 1.0) -> ShapeObject:
    row, col = cell
    # Jitter 0.03 + radius <= 0.12 keeps every shape inside its 1/3 cell: no overlaps (at scale 1).
    cx = (col + 0.5) / GRID + float(rng.uniform(-0.03, 0.03))
    cy = (row + 0.5) / GRID + float(rng.uniform(-0.03, 0.03))
    radius = float(rng.uniform(0.08, 0.12)) * scale
    inside = lambda v: min(max(v, radius), 1.0 - radius)  # a no-op at scale 1
    return ShapeObject(kind, colour, cell, (inside(cx), inside(cy)), radius)


def _free_cells(rng: np.random.Generator, taken: set, count: int) -> list[tuple[int, int]]:
    cells = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]
    order = rng.permutation(len(cells))[:count]
    return [cells[i] for i in order]


def _distractors(rng, style: Style, count, taken_cells, allowed) -> list[ShapeObject]:
    """``count`` objects in free cells whose (kind, colour) satisfies ``allowed``."""
    combos = [(k, c) for k in style.shapes for c in style.colours if allowed(k, c)]
    objects = []
    for cell in _free_cells(rng, taken_cells, count):
        kind, colour = combos[int(rng.integers(len(combos)))]
        objects.append(_place(rng, kind, colour, cell, style.object_scale))
    return objects


def _options_with(rng, correct: str, pool, keep_order: bool = False) -> tuple[tuple[str, ...], int]:
    """Four distinct options from ``pool`` including ``correct``, in a seeded order (or ``pool``'s order)."""
    others = [p for p in pool if p != correct]
    chosen = [others[i] for i in rng.permutation(len(others))[: NUM_OPTIONS - 1]] + [correct]
    order = rng.permutation(NUM_OPTIONS)
    options = tuple(chosen[i] for i in order)
    if keep_order:
        options = tuple(p for p in pool if p in options)
    return options, options.index(correct)


def _pick(rng, sentences: list[str], low: int = 2, high: int = 3) -> tuple[str, ...]:
    """2-3 of the rationale sentences, the first always kept (it states the key fact)."""
    count = int(rng.integers(low, high + 1))
    rest = [sentences[i] for i in sorted(rng.permutation(len(sentences) - 1)[: count - 1] + 1)]
    return tuple([sentences[0]] + rest)


def _target_among_distractors(rng, style: Style, differ_by: str):
    """A target of random shape and colour and distractors that differ from it in ``differ_by`` ("shape" or
    "colour"), so a question naming the target by the other attribute has one answer."""
    kind = str(rng.choice(list(style.shapes)))
    colour = str(rng.choice(list(style.colours)))
    target = _place(rng, kind, colour, _free_cells(rng, set(), 1)[0], style.object_scale)
    differs = (lambda k, c: k != kind) if differ_by == "shape" else (lambda k, c: c != colour)
    extra = _distractors(rng, style, int(rng.integers(0, style.max_distractors + 1)), {target.cell}, differs)
    return kind, colour, target, extra


def _colour_question(rng, background, size, style: Style) -> ShapesExample:
    kind, colour, target, extra = _target_among_distractors(rng, style, differ_by="shape")
    options, answer = _options_with(rng, colour, list(style.colours), style.sorted_options)
    wrong = next(o for o in options if o != colour)
    rationales = _pick(rng, [
        f"The {kind} in the {target.region} of the image is {colour}.",
        f"Its fill is clearly {colour}, not {wrong}.",
        f"There is only one {kind} in the picture, so its colour decides the answer.",
        f"The black outline of the {kind} encloses a {colour} area.",
    ])
    scene = Scene(size, background, tuple(_shuffled(rng, [target] + extra)))
    return ShapesExample(scene, "colour", f"What colour is the {kind}?", options, answer, rationales)


def _shape_question(rng, background, size, style: Style) -> ShapesExample:
    kind, colour, target, extra = _target_among_distractors(rng, style, differ_by="colour")
    options, answer = _options_with(rng, kind, list(style.shapes), style.sorted_options)
    rationales = _pick(rng, [
        f"The {colour} object in the {target.region} of the image is a {kind}.",
        f"It has {_SHAPE_FEATURES[kind]}.",
        f"No other object in the picture is {colour}, so this {kind} is the one asked about.",
        f"Its outline matches a {kind} and none of the other listed shapes.",
    ])
    scene = Scene(size, background, tuple(_shuffled(rng, [target] + extra)))
    return ShapesExample(scene, "shape", f"What shape is the {colour} object?", options, answer, rationales)


def _count_question(rng, background, size, style: Style) -> ShapesExample:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _distractors(rng, style, count, set(), lambda k, c: True)
    # Four consecutive numbers containing the truth; where the truth sits is random.
    start = max(1, count - int(rng.integers(0, NUM_OPTIONS)))
    options = tuple(str(n) for n in range(start, start + NUM_OPTIONS))
    answer = options.index(str(count))
    listing = ", ".join(f"a {o.description}" for o in objects)
    word = _NUMBER_WORDS[count]
    noun = "shape" if count == 1 else "shapes"
    rationales = _pick(rng, [
        f"I can see {word} separate {noun}: {listing}.",
        f"Counting them one by one gives {count}.",
        "Each shape sits in its own part of the image, so none is hidden behind another.",
        f"There are exactly {word} outlined {noun} on the background.",
    ])
    scene = Scene(size, background, tuple(objects))
    return ShapesExample(scene, "count", "How many shapes are in the image?", options, answer, rationales)


def _position_question(rng, background, size, style: Style) -> ShapesExample:
    side = str(rng.choice(SIDES))
    kind = str(rng.choice(list(style.shapes)))
    colour = str(rng.choice(list(style.colours)))
    target = _place(rng, kind, colour, SIDE_CELLS[side], style.object_scale)
    extra = _distractors(rng, style, int(rng.integers(0, style.max_distractors + 1)), {target.cell},
                         lambda k, c: (k, c) != (kind, colour))
    options = SIDES
    answer = options.index(side)
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[side]
    across = "vertically" if side in ("left", "right") else "horizontally"
    rationales = _pick(rng, [
        f"The {colour} {kind} is near the {side} edge of the image.",
        f"It is centred {across} and much closer to the {side} than to the {opposite}.",
        f"Only one {colour} {kind} appears, and it sits on the {side} side.",
    ])
    scene = Scene(size, background, tuple(_shuffled(rng, [target] + extra)))
    return ShapesExample(
        scene, "position", f"On which side of the image is the {colour} {kind}?", options, answer, rationales
    )


def _shuffled(rng, items: list) -> list:
    return [items[i] for i in rng.permutation(len(items))]


_QUESTION_MAKERS = {
    "colour": _colour_question,
    "shape": _shape_question,
    "count": _count_question,
    "position": _position_question,
}


def make_example(seed: int, index: int, image_size: int = 224, kinds=None,
                 style: Style = FULL_STYLE) -> ShapesExample:
    """The example at ``index`` of the stream ``seed``; a pure function of its arguments (``kinds``, when given,
    overrides ``style.kinds``)."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if kinds is not None:
        style = dataclasses.replace(style, kinds=tuple(kinds))
    rng = np.random.default_rng([int(seed), int(index)])
    kind = str(rng.choice(list(style.kinds)))
    background = _sample_background(rng)
    return _QUESTION_MAKERS[kind](rng, background, int(image_size), style)


# --------------------------------------------------------------------------- rendering


def _render_background(background: Background, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    along = xs * math.cos(background.angle) + ys * math.sin(background.angle)
    t = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    a = np.asarray(background.colour_a, np.float64)
    b = np.asarray(background.colour_b, np.float64)
    image = a * (1.0 - t[..., None]) + b * t[..., None]
    phase = xs * math.cos(background.texture_angle) + ys * math.sin(background.texture_angle)
    if background.texture == "stripes":
        image += 18.0 * np.sin(2 * math.pi * background.frequency * phase)[..., None]
    elif background.texture == "checker":
        cells = (np.floor(xs * background.frequency) + np.floor(ys * background.frequency)) % 2
        image += (cells * 2.0 - 1.0)[..., None] * 12.0
    else:
        noise = np.random.default_rng(background.texture_seed).normal(0.0, 12.0, size=(size, size, 3))
        image += noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _polygon(obj: ShapeObject, size: int) -> list[tuple[float, float]] | None:
    cx, cy, r = obj.center[0] * size, obj.center[1] * size, obj.radius * size
    if obj.kind == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if obj.kind == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if obj.kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if obj.kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    return None  # circle


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 RGB (size, size, 3) array."""
    size = scene.size
    image = Image.fromarray(_render_background(scene.background, size))
    draw = ImageDraw.Draw(image)
    outline_width = max(1, size // 112)
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        polygon = _polygon(obj, size)
        if polygon is None:
            cx, cy, r = obj.center[0] * size, obj.center[1] * size, obj.radius * size
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=(0, 0, 0), width=outline_width)
        else:
            draw.polygon(polygon, fill=fill, outline=(0, 0, 0), width=outline_width)
    return np.asarray(image, dtype=np.uint8)


# --------------------------------------------------------------------------- records


def make_records(num: int, seed: int = 0, image_size: int = 224, start: int = 0,
                 style: Style = FULL_STYLE) -> list[Record]:
    """``num`` shapes records (indices ``start`` .. ``start + num - 1``); images render lazily."""
    records = []
    for index in range(start, start + num):
        example = make_example(seed, index, image_size, style=style)
        records.append(
            Record(
                id=f"shapes-{seed}-{index}",
                question=example.question,
                options=example.options,
                answer=example.answer,
                rationales=example.rationales,
                image_fn=functools.partial(render, example.scene),
                category=example.kind,
                source_file=f"shapes(seed={seed})",
                line=index,
            )
        )
    return records
