"""Chains: SPEC §1 format, TYPE round trip, the template text and its length scaling."""

import re

import numpy as np
import pytest

from robust_r1_jax.data import annotators, chain_text, chains, shapes

SPEC_NAMES = (
    "lens blur", "lens flare", "motion blur", "dirty lens", "saturation",
    "jpeg compression", "block exchange", "mean shift", "scan lines",
    "darkness", "atmospheric turbulence", "noise", "color diffusion",
    "sharpness change", "graffiti", "watermark damage",
)

# SPEC §1 as printed there (line-wrapped, with literal \n sequences).
SPEC_SUFFIX_AS_PRINTED = r"""First output the types of degradations in image briefly in <TYPE> <TYPE_END> tags, and then output what effects
do these degradation have on the image in <INFLUENCE> <INFLUENCE_END> tags, then based on the strength of
degradation, output an APPROPRIATE length for the reasoning process in <REASONING> <REASONING_END> tags, and then
summarize the content of reasoning and the give the answer in <CONCLUSION> <CONCLUSION_END> tags,provides the user
with the answer briefly in <ANSWER> <ANSWER_END>.i.e., <TYPE> degradation type here <TYPE_END>\n<INFLUENCE>
influence here<INFLUENCE_END>\n<REASONING> reasoning process here<REASONING_END>\n<CONCLUSION>summary
here<CONCLUSION_END>\n<ANSWER>final answer<ANSWER_END>"""

SPEC_FORMAT = re.compile(
    r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>\s*"
    r"<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>",
    re.DOTALL,
)


def random_applied(rng, max_count=7, min_count=0):
    count = int(rng.integers(min_count, max_count + 1))
    names = [SPEC_NAMES[i] for i in rng.permutation(len(SPEC_NAMES))[:count]]
    return [(name, round(float(rng.uniform(0, 1)), 2)) for name in names]


def random_request(rng, seed):
    example = shapes.make_example(seed=7, index=int(rng.integers(10_000)), image_size=32)
    return chains.ChainRequest(
        question=example.question,
        options=example.options,
        answer=example.answer,
        rationales=example.rationales,
        applied=tuple(random_applied(rng)),
        seed=seed,
    )


def test_prompt_suffix_is_spec_text_with_whitespace_folded():
    folded = " ".join(SPEC_SUFFIX_AS_PRINTED.split()).replace(r"\n", "\n")
    assert chains.PROMPT_SUFFIX == folded
    assert chains.PROMPT_SUFFIX.count("\n") == 4
    assert "  " not in chains.PROMPT_SUFFIX
    assert "tags,provides" in chains.PROMPT_SUFFIX and "<ANSWER_END>.i.e.," in chains.PROMPT_SUFFIX


def test_format_regex_segments_and_pair_pattern_are_the_spec_text():
    assert chains.FORMAT_REGEX == SPEC_FORMAT.pattern
    segments = [first if second is None else first + r"\s*" + second for first, second in chains.FORMAT_SEGMENTS]
    joined = ".*?".join(segments)
    assert joined == SPEC_FORMAT.pattern
    assert chains.TYPE_PAIR_REGEX == r"(\w+(?:\s+\w+)*)\(([\d.]+)\)"
    assert [(chains.open_tag(t), chains.close_tag(t)) for t in ("TYPE", "ANSWER")] == [
        ("<TYPE>", "<TYPE_END>"), ("<ANSWER>", "<ANSWER_END>")]
    assert chains.extract_block("x<ANSWER> 2 <ANSWER_END><ANSWER>3<ANSWER_END>", "ANSWER") == " 2 "
    assert chains.contains_tag("a <B_C> b") and not chains.contains_tag("a <b> (C)")


def test_spec_example_chain_layout():
    body = chains.ChainBody("influence here", "reasoning here", "summary here")
    text = chains.render_chain([("lens blur", 0.47), ("jpeg compression", 0.58)], body, 0)
    assert text == (
        "<TYPE>lens blur(0.47), jpeg compression(0.58)<TYPE_END>\n"
        "<INFLUENCE>influence here<INFLUENCE_END>\n"
        "<REASONING>reasoning here<REASONING_END>\n"
        "<CONCLUSION>summary here<CONCLUSION_END>\n"
        "<ANSWER>0<ANSWER_END>"
    )
    parsed = chains.parse_chain(text)
    assert parsed.types == [("lens blur", 0.47), ("jpeg compression", 0.58)]
    assert parsed.answer == "0"
    assert parsed.blocks["REASONING"] == "reasoning here"


def test_every_generated_chain_matches_format_and_round_trips_types():
    rng = np.random.default_rng(0)
    for seed in range(300):
        request = random_request(rng, seed)
        text = annotators.build_chain(request)
        assert SPEC_FORMAT.search(text), text
        assert chains.FORMAT_PATTERN.search(text)
        parsed, answer = chains.parse_chain_strict(text)
        assert answer == request.answer
        assert parsed.types == [(n, float(f"{s:.2f}")) for n, s in request.applied]
        # exactly one of each block, so a greedy reader cannot pick up a stray tag
        for tag in chains.TAGS:
            assert text.count(f"<{tag}>") == 1 and text.count(f"<{tag}_END>") == 1


def test_type_block_uses_two_decimals():
    assert chains.format_type([("lens blur", 0.5), ("noise", 1.0), ("darkness", 0.0)]) == (
        "lens blur(0.50), noise(1.00), darkness(0.00)"
    )
    assert chains.format_type([("noise", 0.456)]) == "noise(0.46)"
    with pytest.raises(ValueError, match="intensity"):
        chains.format_type([("noise", 1.2)])
    with pytest.raises(ValueError, match="TYPE regex"):
        chains.format_type([("jpeg-compression", 0.2)])


def test_zero_degradation_chain_has_none_type_and_parses_to_empty_list():
    text = annotators.make_chain("Q?", ["a", "b"], 1, ["because"], [], seed=1)
    assert text.startswith("<TYPE>none<TYPE_END>\n")
    assert SPEC_FORMAT.search(text)
    assert chains.parse_chain(text).types == []


def test_parse_chain_reports_missing_blocks_and_drops_invalid_numbers():
    parsed = chains.parse_chain("<TYPE>noise(0..5), lens blur(0.30)<TYPE_END> and nothing else")
    assert parsed.types == [("lens blur", 0.3)]
    assert not parsed.matches_format
    assert parsed.blocks["ANSWER"] is None
    with pytest.raises(chains.ChainFormatError, match="INFLUENCE"):
        chains.parse_chain_strict("<TYPE>noise(0.50)<TYPE_END>")
    good = annotators.make_chain("Q?", ["a", "b"], 1, [], [("noise", 0.5)])
    with pytest.raises(chains.ChainFormatError, match="not an option index"):
        chains.parse_chain_strict(good.replace("<ANSWER>1<", "<ANSWER>b<"))


def test_influence_text_covers_all_16_types_and_three_bands():
    assert set(chain_text.DEGRADATION_TEXT) == set(SPEC_NAMES)
    texts = [t for entry in chain_text.DEGRADATION_TEXT.values() for t in entry.influence]
    assert len(texts) == 48 and len(set(texts)) == 48
    assert [chain_text.band_of(s) for s in (0.0, 0.23, 0.34, 0.45, 0.67, 0.9, 1.0)] == [
        "mild", "mild", "moderate", "moderate", "severe", "severe", "severe"]
    mild = chain_text.influence_text([("noise", 0.1)])
    severe = chain_text.influence_text([("noise", 0.95)])
    assert chain_text.DEGRADATION_TEXT["noise"].influence[0] in mild
    assert chain_text.DEGRADATION_TEXT["noise"].influence[2] in severe


def test_influence_names_match_the_degradation_registry():
    from robust_r1_jax import degrade

    assert set(chain_text.DEGRADATION_TEXT) == set(degrade.NAMES)


def test_reasoning_length_correlates_with_summed_intensity():
    rng = np.random.default_rng(1)
    totals, lengths = [], []
    for seed in range(1000):
        request = random_request(rng, seed)
        reasoning = chains.parse_chain(annotators.build_chain(request)).blocks["REASONING"]
        totals.append(chain_text.total_intensity(request.applied))
        lengths.append(len(reasoning.split()))
    rho = chain_text.spearman(totals, lengths)
    assert rho > 0.5, rho
    totals, lengths = np.asarray(totals), np.asarray(lengths)
    light = lengths[totals < np.quantile(totals, 0.25)].mean()
    heavy = lengths[totals > np.quantile(totals, 0.75)].mean()
    assert heavy > 2.0 * light, (light, heavy)


def test_template_chain_is_deterministic_given_seed():
    rng = np.random.default_rng(2)
    request = random_request(rng, 5)
    assert annotators.build_chain(request) == annotators.build_chain(request)
    variants = {
        annotators.build_chain(chains.ChainRequest(**{**request.__dict__, "seed": s})) for s in range(12)
    }
    assert len(variants) > 1  # the seed does pick among paraphrases


def test_reasoning_uses_more_rationales_when_degradation_is_stronger():
    base = dict(question="What colour is the star?", options=("red", "blue", "green", "white"), answer=1,
                rationales=("Rationale one is here.", "Rationale two is here.", "Rationale three is here."), seed=0)
    light = chain_text.template_reasoning(chains.ChainRequest(applied=(("noise", 0.3),), **base))
    heavy = chain_text.template_reasoning(chains.ChainRequest(
        applied=(("noise", 0.9), ("darkness", 0.8), ("lens blur", 0.7)), **base))
    assert light.count("Rationale") == 1
    assert heavy.count("Rationale") == 3
    assert "'red'" in heavy and "'green'" in heavy  # option-by-option verification


def test_spearman_matches_hand_computed_values():
    assert chain_text.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert chain_text.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1,2,3,4 ; y with a tie: [1, 2.5, 2.5, 4] -> Pearson of ranks
    x = np.array([1, 2, 3, 4.0]) - 2.5
    y = np.array([1, 2.5, 2.5, 4.0]) - 2.5
    expected = (x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())
    assert chain_text.spearman([5, 6, 7, 8], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(expected)


def test_spearman_is_zero_for_constant_input_and_ranks_ties_by_average():
    assert chain_text.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert chain_text.spearman([1, 2, 3], [4, 4, 4]) == 0.0
    assert chain_text.spearman([], []) == 0.0
    rng = np.random.default_rng(3)
    for _ in range(50):
        x, y = rng.integers(0, 4, 12).astype(float), rng.integers(0, 3, 12).astype(float)
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        rx = np.array([np.mean(np.flatnonzero(np.sort(x) == v)) for v in x]) - 5.5  # average 0-based ranks
        ry = np.array([np.mean(np.flatnonzero(np.sort(y) == v)) for v in y]) - 5.5
        expected = (rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum())
        assert chain_text.spearman(x, y) == pytest.approx(expected, abs=1e-12)


def test_format_prompt_puts_options_then_suffix():
    prompt = chains.format_prompt("What is it?", ["cat", "dog"])
    assert prompt == "What is it?\nOptions:\n0. cat\n1. dog\n" + chains.PROMPT_SUFFIX
