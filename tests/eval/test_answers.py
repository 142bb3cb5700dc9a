"""Answer extraction on a table of awkward model outputs."""
import pytest

from robust_r1_jax.eval import answers

COLOURS = ("red", "white", "blue", "yellow")
COUNTS = ("4", "5", "6", "7")
SHAPES = ("star", "square", "triangle", "star and square")

CASES = [
    # (output, options, expected index, expected source)
    # -- the chain convention: an index inside the tags
    ("<TYPE>noise(0.45)<TYPE_END>\n<ANSWER>2<ANSWER_END>", COLOURS, 2, "answer_tag"),
    ("<ANSWER> 0 <ANSWER_END>", COLOURS, 0, "answer_tag"),
    ("<ANSWER>\n3\n<ANSWER_END>", COLOURS, 3, "answer_tag"),
    # -- letters inside the tags (VLMEvalKit convention)
    ("<ANSWER>C<ANSWER_END>", COLOURS, 2, "answer_tag"),
    ("<ANSWER>(B)<ANSWER_END>", COLOURS, 1, "answer_tag"),
    ("<ANSWER>d<ANSWER_END>", COLOURS, 3, "answer_tag"),
    ("<ANSWER>B. white<ANSWER_END>", COLOURS, 1, "answer_tag"),
    ("<ANSWER>Answer: 1<ANSWER_END>", COLOURS, 1, "answer_tag"),
    ("<ANSWER>**A**<ANSWER_END>", COLOURS, 0, "answer_tag"),
    # -- option text inside the tags
    ("<ANSWER>Blue<ANSWER_END>", COLOURS, 2, "answer_tag"),
    ("<ANSWER>the blue one<ANSWER_END>", COLOURS, 2, "answer_tag"),
    # -- several answers: the first block wins
    ("<ANSWER>1<ANSWER_END> then <ANSWER>3<ANSWER_END>", COLOURS, 1, "answer_tag"),
    # -- committed but unreadable or out of range: None, the free text is not consulted
    ("the answer is B <ANSWER>final answer<ANSWER_END>", COLOURS, None, "answer_tag"),
    ("<ANSWER>4<ANSWER_END>", COLOURS, None, "answer_tag"),
    ("<ANSWER>E<ANSWER_END>", COLOURS, None, "answer_tag"),
    ("<ANSWER>-1<ANSWER_END>", COLOURS, None, "answer_tag"),
    ("<ANSWER><ANSWER_END>", COLOURS, None, "answer_tag"),
    ("<ANSWER>red or blue<ANSWER_END>", COLOURS, None, "answer_tag"),
    # -- an out-of-range integer equal to one option's text picks that option; an in-range one is an index
    ("<ANSWER>5<ANSWER_END>", COUNTS, 1, "answer_tag"),
    ("<ANSWER>2<ANSWER_END>", COUNTS, 2, "answer_tag"),
    # -- truncated tags
    ("<REASONING>blah<REASONING_END><ANSWER>2", COLOURS, 2, "truncated_tag"),
    ("<ANSWER>1<ANSWER_E", COLOURS, 1, "truncated_tag"),
    ("<ANSWER>", COLOURS, None, "truncated_tag"),
    ("<ANSWER>B\n<CONCLUSION>x<CONCLUSION_END>", COLOURS, 1, "truncated_tag"),
    ("<ANSWER_END>2", COLOURS, None, "free_text"),  # an end tag alone opens nothing
    # -- free text: lone answers
    ("B", COLOURS, 1, "free_text"),
    ("b", COLOURS, 1, "free_text"),
    ("(C)", COLOURS, 2, "free_text"),
    ("D.", COLOURS, 3, "free_text"),
    ("  A  \n", COLOURS, 0, "free_text"),
    ("2", COLOURS, 2, "free_text"),
    ("Option 3", COLOURS, 3, "free_text"),
    ("yellow.", COLOURS, 3, "free_text"),
    ("E", COLOURS, None, "free_text"),
    ("9", COLOURS, None, "free_text"),
    # -- free text: answer phrases
    ("Answer: B", COLOURS, 1, "free_text"),
    ("I looked closely. The answer is (c).", COLOURS, 2, "free_text"),
    ("The correct option is 0 because the circle is red.", COLOURS, 0, "free_text"),
    ("answer: b because it is white", COLOURS, 1, "free_text"),
    ("The answer is A, then.", COLOURS, 0, "free_text"),
    ("The answer is B. No wait, the answer is C.", COLOURS, None, "free_text"),  # several answers
    ("The answer is a red circle.", COLOURS, 0, "free_text"),  # 'a' is an article; 'red' is option 0
    ("The answer is 5 shapes.", COUNTS, 1, "free_text"),  # a count in prose, found as option text '5'
    # -- free text: marked letters; letters inside words never count
    ("I pick (B) here", COLOURS, 1, "free_text"),
    ("BLUE is not it, nor WHITE", COLOURS, None, "free_text"),  # no marked letter; two option texts
    ("Because Dark colours dominate, I cannot tell.", COLOURS, None, "free_text"),
    ("Options A. and C. both look plausible", COLOURS, None, "free_text"),  # several answers
    ("We see the U.S. flag", COLOURS, None, "free_text"),
    # -- free text: option text
    ("I can see a white circle on the left.", COLOURS, 1, "free_text"),
    ("It has five points, like a star and square drawn together", SHAPES, 3, "free_text"),
    ("It looks like a star", SHAPES, 0, "free_text"),
    ("Either red or blue.", COLOURS, None, "free_text"),
    ("Bluebird", COLOURS, None, "free_text"),  # 'blue' inside a word does not count
    ("", COLOURS, None, "free_text"),
]


@pytest.mark.parametrize("output,options,expected,source", CASES)
def test_extraction_table(output, options, expected, source):
    got = answers.extract(output, options)
    assert got.index == expected, f"{output!r} -> {got.index}, expected {expected}"
    assert got.source == source
    assert answers.extract_answer(output, options) == expected


def test_the_table_covers_both_conventions_and_failures():
    # The table is only useful if it exercises letters, indices, option texts and failures.
    indices = [expected for _, _, expected, _ in CASES]
    assert sum(i is None for i in indices) >= 15
    assert {0, 1, 2, 3} <= set(indices)


def test_options_are_required():
    with pytest.raises(ValueError, match="options"):
        answers.extract("<ANSWER>1<ANSWER_END>", ())
