"""Option numberings and answer forms mapped to one internal form (0-based index), ambiguity a named problem."""
import pytest

from robust_r1_jax.data import options
from robust_r1_jax.data.options import AnswerError, resolve_answer, split_labelled_options

SHAPES = ("circle", "square", "triangle", "star")


@pytest.mark.parametrize("text, style", [
    ("Which shape?\nOptions:\n0. circle\n1. square\n2. triangle\n3. star", "zero"),
    ("Which shape?\n1. circle\n2. square\n3. triangle\n4. star", "one"),
    ("Which shape?\nChoices:\nA. circle\nB. square\nC. triangle\nD. star", "letter"),
    ("Which shape?\n(A) circle\n(B) square\n(C) triangle\n(D) star", "letter"),
    ("Which shape?\nA) circle\nB) square\nC) triangle\nD) star", "letter"),
    ("Which shape?\na. circle\nb. square\nc. triangle\nd. star", "letter"),
    ("Which shape?\n(a) circle\n(b) square\n(c) triangle\n(d) star", "letter"),
])
def test_each_numbering_is_split_with_its_style(text, style):
    assert split_labelled_options(text) == ("Which shape?", SHAPES, style)


def test_text_without_a_sequential_block_has_no_options():
    assert split_labelled_options("Q?\nA. x\nC. y") == ("Q?\nA. x\nC. y", (), None)
    assert split_labelled_options("Q?\n2. x\n3. y") == ("Q?\n2. x\n3. y", (), None)
    assert split_labelled_options("Q?\nA. x\nb. y") == ("Q?\nA. x\nb. y", (), None)  # one case throughout
    assert split_labelled_options("  Just a question ") == ("Just a question", (), None)


@pytest.mark.parametrize("answer, style, index", [
    ("1", "zero", 1), (1, "zero", 1),
    ("1", "one", 0), ("4", "one", 3), ("(2)", "one", 1), ("2.", "zero", 2),  # the case: "1" means circle when options count from 1
    ("0", "letter", 0), ("2", "letter", 2), ("2", None, 2),  # a number with letters: SPEC §1's 0-based index
    ("C", "letter", 2), ("(C)", "one", 2), ("C.", "zero", 2), ("D", None, 3),
    ("c", "letter", 2), ("(b)", "letter", 1),  # lower-case letters where the options are lettered a, b, c
    ("triangle", "one", 2), (" Triangle. ", "letter", 2), ("star", None, 3),
])
def test_answers_map_to_the_index_whose_option_the_prompt_shows(answer, style, index):
    assert resolve_answer(answer, SHAPES, style) == index


@pytest.mark.parametrize("answer, style, message", [
    ("0", "one", "answer 0 is not one of the option labels 1..4 (the options are numbered from 1)"),
    ("5", "one", "answer 5 is not one of the option labels 1..4"),
    ("4", "zero", "answer 4 is not 0..3 of the 4 options"),
    ("4", "letter", "answer 4 is not index 0..3 of the 4 options"),
    ("E", "letter", "answer 'E' is past the last option letter D"),
    ("e", "letter", "answer 'e' is past the last option letter D"),
    ("c", "one", "answer 'c' is neither an option label nor the text"),  # lower case only with lettered options
    ("hexagon", "zero", "answer 'hexagon' is neither an option label nor the text of one of the options"),
])
def test_answers_naming_no_option_are_problems(answer, style, message):
    with pytest.raises(AnswerError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        resolve_answer(answer, SHAPES, style)


def test_an_answer_matching_duplicated_option_texts_is_ambiguous():
    with pytest.raises(AnswerError, match=r"answer 'None' matches options \[0, 2\] \(duplicated option text\)"):
        resolve_answer("None", ("None", "Two", "None", "One"), "letter")
    assert resolve_answer("C", ("None", "Two", "None", "One"), "letter") == 2  # a label is never ambiguous


def test_without_options_only_a_number_is_an_answer():
    assert resolve_answer("3", ()) == 3
    with pytest.raises(AnswerError, match="no options"):
        resolve_answer("yes", ())
    with pytest.raises(AnswerError, match="negative"):
        resolve_answer("-1", ())
    with pytest.raises(ValueError, match="unknown option style"):
        resolve_answer("1", SHAPES, "roman")
    assert options.STYLES == ("zero", "one", "letter")
