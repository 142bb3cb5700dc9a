"""Shapes VQA: answers correct by construction, pixels agree with the scene, deterministic."""

import collections
import re

import numpy as np
import pytest

from robust_r1_jax.data import shapes

N = 400


def _target(example):
    """The object(s) the question is about, found from the question text and the scene."""
    objects = example.scene.objects
    if example.kind == "colour":
        kind = re.fullmatch(r"What colour is the (\w+)\?", example.question).group(1)
        return [o for o in objects if o.kind == kind]
    if example.kind == "shape":
        colour = re.fullmatch(r"What shape is the (\w+) object\?", example.question).group(1)
        return [o for o in objects if o.colour == colour]
    if example.kind == "position":
        colour, kind = re.fullmatch(r"On which side of the image is the (\w+) (\w+)\?", example.question).groups()
        return [o for o in objects if (o.colour, o.kind) == (colour, kind)]
    return list(objects)


@pytest.fixture(scope="module")
def examples():
    return [shapes.make_example(seed=11, index=i, image_size=224) for i in range(N)]


def test_answers_are_correct_by_construction(examples):
    for example in examples:
        assert len(example.options) == 4 and len(set(example.options)) == 4
        correct = example.options[example.answer]
        targets = _target(example)
        if example.kind == "colour":
            assert len(targets) == 1 and targets[0].colour == correct
        elif example.kind == "shape":
            assert len(targets) == 1 and targets[0].kind == correct
        elif example.kind == "position":
            assert len(targets) == 1 and targets[0].cell == shapes.SIDE_CELLS[correct]
            cx, cy = targets[0].center
            distance_to_edge = {"left": cx, "right": 1 - cx, "top": cy, "bottom": 1 - cy}
            assert min(distance_to_edge, key=distance_to_edge.get) == correct
        else:
            assert example.question == "How many shapes are in the image?"
            assert int(correct) == len(example.scene.objects)
            # exactly one option is right; the others are wrong counts
            assert sum(int(o) == len(example.scene.objects) for o in example.options) == 1


def test_objects_never_overlap_and_stay_inside(examples):
    for example in examples:
        objects = example.scene.objects
        assert 1 <= len(objects) <= shapes.MAX_OBJECTS
        assert len({o.cell for o in objects}) == len(objects)
        for i, a in enumerate(objects):
            assert a.radius <= a.center[0] <= 1 - a.radius and a.radius <= a.center[1] <= 1 - a.radius
            for b in objects[i + 1:]:
                gap = np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1])
                assert gap > a.radius + b.radius


@pytest.mark.parametrize("size", [224, 56])
def test_rendered_pixels_show_every_object_in_its_colour(size):
    for index in range(60):
        example = shapes.make_example(seed=3, index=index, image_size=size)
        image = shapes.render(example.scene)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        for obj in example.scene.objects:
            x = int(obj.center[0] * size)
            y = int(obj.center[1] * size)
            assert tuple(image[y, x]) == shapes.COLOURS[obj.colour], (index, obj)


def test_count_answer_matches_painted_object_pixels():
    # Independent of the scene list: count connected regions painted in shape colours.
    for index in range(40):
        example = shapes.make_example(seed=5, index=index, image_size=96, kinds=("count",))
        image = shapes.render(example.scene).astype(np.int32)
        painted = np.zeros(image.shape[:2], bool)
        for rgb in shapes.COLOURS.values():
            painted |= np.all(image == np.asarray(rgb), axis=-1)
        assert _count_components(painted, min_pixels=6) == int(example.options[example.answer])


def _count_components(mask, min_pixels):
    seen = np.zeros_like(mask)
    count = 0
    height, width = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, size = [(y, x)], 0
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        count += size >= min_pixels
    return count


def test_deterministic_and_seed_dependent():
    a = shapes.make_example(seed=1, index=17, image_size=64)
    b = shapes.make_example(seed=1, index=17, image_size=64)
    assert a == b
    assert shapes.render(a.scene).tobytes() == shapes.render(b.scene).tobytes()
    others = [shapes.make_example(seed=2, index=17, image_size=64), shapes.make_example(seed=1, index=18, image_size=64)]
    for other in others:
        assert shapes.render(other.scene).tobytes() != shapes.render(a.scene).tobytes()


def test_question_kinds_and_answer_positions_are_balanced(examples):
    kinds = collections.Counter(e.kind for e in examples)
    assert set(kinds) == set(shapes.QUESTION_KINDS)
    assert min(kinds.values()) >= 0.15 * N
    answers = collections.Counter(e.answer for e in examples)
    assert set(answers) == {0, 1, 2, 3} and min(answers.values()) >= 0.12 * N
    # A small vocabulary: the questions come from four templates.
    templates = {re.sub(r"(red|green|blue|yellow|magenta|white|circle|square|triangle|star|diamond)", "X", e.question)
                 for e in examples}
    assert len(templates) == 4


def test_rationales_are_two_or_three_and_state_the_answer(examples):
    for example in examples:
        assert 2 <= len(example.rationales) <= 3
        assert all(r.strip() and r.endswith(".") for r in example.rationales)
        correct = example.options[example.answer]
        if example.kind == "count":
            assert correct in " ".join(example.rationales) or shapes._NUMBER_WORDS[int(correct)] in example.rationales[0]
        else:
            assert correct in example.rationales[0]


def test_backgrounds_are_textured_not_flat():
    for index in range(20):
        example = shapes.make_example(seed=9, index=index, image_size=128)
        background = shapes._render_background(example.scene.background, 128).astype(np.float64)
        # local variation (texture) as well as a global gradient
        assert np.abs(np.diff(background, axis=1)).mean() + np.abs(np.diff(background, axis=0)).mean() > 0.5


def test_records_render_lazily_and_match_examples():
    records = shapes.make_records(5, seed=4, image_size=40, start=10)
    assert [r.id for r in records] == [f"shapes-4-{i}" for i in range(10, 15)]
    for record in records:
        example = shapes.make_example(4, record.line, 40)
        assert record.question == example.question and record.answer == example.answer
        assert record.options == example.options and record.category == example.kind
        np.testing.assert_array_equal(record.load_image(), shapes.render(example.scene))


def test_small_and_odd_sizes_render():
    for size in (8, 33, 56):
        image = shapes.render(shapes.make_example(0, 0, size).scene)
        assert image.shape == (size, size, 3)
    with pytest.raises(ValueError, match="at least 8"):
        shapes.make_example(0, 0, 4)


NARROW = shapes.Style(kinds=("colour", "shape", "position"), colours=("red", "green", "blue", "yellow"),
                      shapes=("circle", "square", "triangle", "star"), max_distractors=1, sorted_options=True)


def test_a_narrowed_style_draws_only_from_its_palette():
    examples = [shapes.make_example(seed=5, index=i, image_size=84, style=NARROW) for i in range(300)]
    assert {e.kind for e in examples} == set(NARROW.kinds)
    answers = collections.Counter()
    for example in examples:
        assert {o.colour for o in example.scene.objects} <= set(NARROW.colours)
        assert {o.kind for o in example.scene.objects} <= set(NARROW.shapes)
        assert 1 <= len(example.scene.objects) <= 1 + NARROW.max_distractors
        pool = {"colour": NARROW.colours, "shape": NARROW.shapes, "position": shapes.SIDES}[example.kind]
        assert example.options == tuple(pool)          # four of four, in palette order
        correct = example.options[example.answer]
        targets = _target(example)
        assert len(targets) == 1
        target = targets[0]
        assert correct == {"colour": target.colour, "shape": target.kind,
                           "position": shapes._CELL_NAMES[target.cell]}[example.kind]
        answers[example.answer] += 1
    # the answer index stays uniform: a model cannot beat chance without the image
    assert min(answers.values()) >= 0.18 * len(examples)


def test_sorted_options_keep_the_pool_order_with_a_larger_palette():
    style = shapes.Style(kinds=("colour",), sorted_options=True)
    for index in range(50):
        example = shapes.make_example(seed=2, index=index, image_size=64, style=style)
        order = [list(shapes.COLOURS).index(o) for o in example.options]
        assert order == sorted(order) and example.options[example.answer] in example.rationales[0]


def test_the_default_style_is_the_full_task():
    for index in range(20):
        a = shapes.make_example(seed=8, index=index, image_size=48)
        b = shapes.make_example(seed=8, index=index, image_size=48, style=shapes.Style())
        assert a == b
    assert shapes.make_example(8, 3, 48, kinds=("count",)).kind == "count"


@pytest.mark.parametrize("kwargs, message", [
    (dict(kinds=("colour", "size")), "unknown \\['size'\\]"),
    (dict(colours=("red", "green", "blue")), "at least 4"),
    (dict(shapes=("circle", "circle", "square", "star")), "distinct"),
    (dict(max_distractors=9), "max_distractors"),
])
def test_bad_styles_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes.Style(**kwargs)
