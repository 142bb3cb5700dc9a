"""Degradation-aware reasoning chains: the exact text format of SPEC §1, built and parsed.

A chain is::

    <TYPE>lens blur(0.47), jpeg compression(0.58)<TYPE_END>
    <INFLUENCE>...<INFLUENCE_END>
    <REASONING>...<REASONING_END>
    <CONCLUSION>...<CONCLUSION_END>
    <ANSWER>0<ANSWER_END>

TYPE and ANSWER are always written by code (``format_type`` and the option index), so parsing a
generated chain gives back exactly the applied types and intensities. INFLUENCE, REASONING and
CONCLUSION come from an annotator: ``TemplateAnnotator`` (offline, deterministic given a seed) or
``OpenAIAnnotator`` (an OpenAI-compatible HTTP endpoint, validated, with the template as fallback).

A clean image (no degradation applied) is written ``<TYPE>none<TYPE_END>``: an explicit word is
easier for a model to learn than an empty block, and the TYPE parser returns ``[]`` for it
because ``none`` has no ``name(number)`` pair.

The reasoning grows with the summed intensity Σs: more of the source's rationales, one
visual-evidence sentence per noticeable degradation (two when it is severe), and option-by-option
verification once the image is heavily degraded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import urllib.error
import urllib.request
from typing import Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TAGS = ("TYPE", "INFLUENCE", "REASONING", "CONCLUSION", "ANSWER")

# SPEC §3, verbatim: the format reward searches for this (DOTALL).
FORMAT_REGEX = (
    r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>"
    r"\s*<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>"
)
FORMAT_PATTERN = re.compile(FORMAT_REGEX, re.DOTALL)
# SPEC §3: the name(number) pairs inside the TYPE block (re.findall semantics).
TYPE_PAIR_PATTERN = re.compile(r"(\w+(?:\s+\w+)*)\(([\d.]+)\)")
NO_DEGRADATION = "none"

# SPEC §1 prompt suffix with its whitespace folded to single spaces. The four "\n" are real
# newlines, as in the reference code's Python string literal; "tags,provides" and
# "<ANSWER_END>.i.e.," are verbatim.
PROMPT_SUFFIX = (
    "First output the types of degradations in image briefly in <TYPE> <TYPE_END> tags, and then "
    "output what effects do these degradation have on the image in <INFLUENCE> <INFLUENCE_END> "
    "tags, then based on the strength of degradation, output an APPROPRIATE length for the "
    "reasoning process in <REASONING> <REASONING_END> tags, and then summarize the content of "
    "reasoning and the give the answer in <CONCLUSION> <CONCLUSION_END> tags,provides the user "
    "with the answer briefly in <ANSWER> <ANSWER_END>.i.e., <TYPE> degradation type here "
    "<TYPE_END>\n<INFLUENCE> influence here<INFLUENCE_END>\n<REASONING> reasoning process "
    "here<REASONING_END>\n<CONCLUSION>summary here<CONCLUSION_END>\n<ANSWER>final answer<ANSWER_END>"
)

BANDS = ("mild", "moderate", "severe")
# Band edges at thirds put the benchmark levels 0.23 / 0.45 / 0.9 in mild / moderate / severe.
BAND_EDGES = (1.0 / 3.0, 2.0 / 3.0)
NOTICEABLE = 0.2  # below this a degradation earns no reasoning sentence of its own


class ChainFormatError(ValueError):
    """A chain that does not follow SPEC §1 / §3."""


class AnnotatorError(RuntimeError):
    """An annotator could not produce a valid chain body."""


@dataclasses.dataclass(frozen=True)
class DegradationText:
    """What one degradation does, per band, and which cues it hides / leaves usable."""

    influence: tuple[str, str, str]
    hides: str
    relies_on: str


DEGRADATION_TEXT: dict[str, DegradationText] = {
    "lens blur": DegradationText(
        ("A slight lens blur softens the edges, but shapes and colours remain clear.",
         "A moderate lens blur smears edges and fine textures, so small details are hard to resolve.",
         "A strong lens blur washes out edges and fine structure; only large shapes and colour regions survive."),
        "fine edges and small details", "large shapes and colour regions"),
    "lens flare": DegradationText(
        ("A faint lens flare adds a few bright spots that barely cover the content.",
         "Lens flare adds bright discs and streaks that wash out parts of the scene.",
         "Heavy lens flare covers large areas with glare and streaks, hiding whatever lies beneath them."),
        "the regions covered by glare", "the areas outside the bright streaks"),
    "motion blur": DegradationText(
        ("Slight motion blur adds a small directional smear to the edges.",
         "Motion blur drags edges along one direction, doubling outlines and blurring texture.",
         "Strong motion blur streaks the whole image along one direction, so outlines and small objects smear together."),
        "sharp outlines along the blur direction", "the overall colours and the rough layout"),
    "dirty lens": DegradationText(
        ("A few faint smudges from a dirty lens slightly veil the image.",
         "Dirt on the lens leaves grey blotches and spots that veil parts of the image and lower its contrast.",
         "A very dirty lens covers the view with dense blotches, spots and rings, lowering contrast everywhere."),
        "the areas under the smudges and low-contrast detail", "strongly coloured regions that show through the dirt"),
    "saturation": DegradationText(
        ("Colour saturation is slightly reduced, but hues are still easy to tell apart.",
         "Saturation is clearly reduced, so colours look washed out and similar hues are harder to separate.",
         "Colours are almost completely desaturated; the image is close to grey, so hue cannot be trusted."),
        "differences in hue", "brightness, shape and position"),
    "jpeg compression": DegradationText(
        ("Light JPEG compression adds barely visible artefacts around edges.",
         "JPEG compression introduces blocky artefacts and ringing around edges, blurring fine texture.",
         "Heavy JPEG compression breaks the image into 8x8 blocks with colour bleeding, erasing fine detail."),
        "fine texture and sharp colour boundaries", "coarse shapes and dominant colours"),
    "block exchange": DegradationText(
        ("A few small image blocks have been swapped, slightly disturbing local content.",
         "Several blocks of the image are swapped with each other, so some regions show content from elsewhere.",
         "Many large blocks are shuffled across the image, so local regions may show misplaced content."),
        "where objects really are inside the swapped blocks", "objects that stay intact outside the swapped blocks"),
    "mean shift": DegradationText(
        ("Mean-shift filtering slightly flattens textures into smoother colour patches.",
         "Mean-shift filtering merges nearby pixels into flat colour patches, removing texture.",
         "Strong mean-shift filtering turns the image into large flat colour regions; texture and small details are gone."),
        "textures and small details", "large colour regions and their outlines"),
    "scan lines": DegradationText(
        ("Thin dark scan lines cross the image at wide intervals.",
         "Regular dark scan lines cover part of the rows, hiding thin horizontal slices of content.",
         "Dense, thick dark scan lines black out many rows, leaving only strips of the scene visible."),
        "the content inside the dark bands", "the visible strips between the lines"),
    "darkness": DegradationText(
        ("The image is slightly darker than normal, but everything is still visible.",
         "The image is noticeably dark; shadows merge and contrast in dark areas is lost.",
         "The image is very dark; most content is barely above black and colours are hard to judge."),
        "details in dark regions and colour contrast", "the brightest objects and their outlines"),
    "atmospheric turbulence": DegradationText(
        ("Mild atmospheric turbulence makes straight lines waver slightly.",
         "Atmospheric turbulence warps the image in waves, bending edges and shifting objects a little.",
         "Strong atmospheric turbulence distorts the image with large waves, displacing and bending objects."),
        "exact shapes and straight edges", "colours and approximate locations"),
    "noise": DegradationText(
        ("Light Gaussian noise adds a fine grain that hardly affects the content.",
         "Gaussian noise adds visible grain that masks fine texture and small details.",
         "Heavy Gaussian noise covers the image in strong grain, burying small details and faint edges."),
        "fine texture and faint edges", "large, high-contrast structures"),
    "color diffusion": DegradationText(
        ("Slight colour diffusion makes colours bleed a little across edges.",
         "Colour diffusion spreads colours into a soft haze, so boundaries between regions blur.",
         "Strong colour diffusion floods the image with a bright haze of blended colours, hiding boundaries and small objects."),
        "the boundaries between colour regions", "the dominant colour of large regions"),
    "sharpness change": DegradationText(
        ("Slight over-sharpening adds faint halos along edges.",
         "Over-sharpening creates bright halos and amplified grain along edges.",
         "Extreme sharpening produces harsh halos and exaggerated noise that distort textures."),
        "true texture and subtle shading", "strong edges and overall shapes"),
    "graffiti": DegradationText(
        ("A few thin graffiti lines are drawn over the image.",
         "Graffiti lines cross the image and cover parts of the content.",
         "Heavy graffiti with thick lines and a large red text stamp covers much of the image."),
        "the content under the painted strokes", "the regions the strokes do not cross"),
    "watermark damage": DegradationText(
        ("A small watermark-damaged patch slightly smudges one region.",
         "Several rectangular watermark-damaged patches are smudged and blended into the image.",
         "Many damaged watermark patches with darkened borders cover the image, smearing the content underneath."),
        "the content inside the damaged patches", "the undamaged parts of the image"),
}

_OVERALL = (
    "Overall the degradation is light, so the main content is still easy to see.",
    "Overall the degradation is moderate, so some details need care.",
    "Overall the degradation is heavy, so the answer must rest on the most robust cues.",
)
_CLEAN_INFLUENCE = "The image shows no visible degradation, so all of its details can be trusted."


def band_of(intensity: float) -> str:
    """'mild' / 'moderate' / 'severe' for an intensity in [0, 1]."""
    if intensity < BAND_EDGES[0]:
        return BANDS[0]
    if intensity < BAND_EDGES[1]:
        return BANDS[1]
    return BANDS[2]


def total_intensity(applied: Sequence[tuple[str, float]]) -> float:
    return float(sum(s for _, s in applied))


# --------------------------------------------------------------------------- TYPE block


def format_type(applied: Sequence[tuple[str, float]]) -> str:
    """``name(0.47), name(0.58)`` with two decimals; ``none`` when nothing was applied."""
    if not applied:
        return NO_DEGRADATION
    parts = []
    for name, intensity in applied:
        if not re.fullmatch(r"\w+(?:\s+\w+)*", name):
            raise ValueError(f"degradation name {name!r} would not survive the TYPE regex")
        if not 0.0 <= float(intensity) <= 1.0:
            raise ValueError(f"intensity of {name!r} must be in [0, 1], got {intensity}")
        parts.append(f"{name}({float(intensity):.2f})")
    return ", ".join(parts)


def parse_type_pairs(type_text: str) -> list[tuple[str, float]]:
    """``name(number)`` pairs of a TYPE block (SPEC §3 regex); invalid numbers are dropped."""
    pairs = []
    for name, number in TYPE_PAIR_PATTERN.findall(type_text):
        try:
            pairs.append((name.strip(), float(number)))
        except ValueError:
            continue
    return pairs


# --------------------------------------------------------------------------- chain text


@dataclasses.dataclass(frozen=True)
class ChainBody:
    """The annotator-written part of a chain."""

    influence: str
    reasoning: str
    conclusion: str


@dataclasses.dataclass(frozen=True)
class ChainRequest:
    """Everything an annotator needs for one example."""

    question: str
    options: tuple[str, ...]
    answer: int
    rationales: tuple[str, ...]
    applied: tuple[tuple[str, float], ...]
    seed: int = 0

    def __post_init__(self):
        if self.options and not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not an index into {len(self.options)} options")

    @property
    def answer_text(self) -> str:
        return self.options[self.answer] if self.options else str(self.answer)


def render_chain(applied: Sequence[tuple[str, float]], body: ChainBody, answer: int) -> str:
    """The five blocks joined by newlines, exactly as SPEC §1 shows them."""
    for field in ("influence", "reasoning", "conclusion"):
        text = getattr(body, field)
        if not text.strip():
            raise ChainFormatError(f"the {field} block is empty")
        if re.search(r"<[A-Z_]+>", text):
            raise ChainFormatError(f"the {field} block contains a tag: {text[:80]!r}")
    return (
        f"<TYPE>{format_type(applied)}<TYPE_END>\n"
        f"<INFLUENCE>{body.influence.strip()}<INFLUENCE_END>\n"
        f"<REASONING>{body.reasoning.strip()}<REASONING_END>\n"
        f"<CONCLUSION>{body.conclusion.strip()}<CONCLUSION_END>\n"
        f"<ANSWER>{int(answer)}<ANSWER_END>"
    )


@dataclasses.dataclass(frozen=True)
class ParsedChain:
    """The blocks of a chain (``None`` where a block is missing) and its TYPE pairs."""

    blocks: dict[str, str | None]
    types: list[tuple[str, float]]
    matches_format: bool

    @property
    def answer(self) -> str | None:
        block = self.blocks.get("ANSWER")
        return None if block is None else block.strip()


def extract_block(text: str, tag: str) -> str | None:
    """Contents of the first ``<TAG>...<TAG_END>`` (non-greedy), or None."""
    match = re.search(f"<{tag}>(.*?)<{tag}_END>", text, re.DOTALL)
    return None if match is None else match.group(1)


def parse_chain(text: str) -> ParsedChain:
    """Blocks and TYPE pairs of any text; never raises (see ``parse_chain_strict``)."""
    blocks = {tag: extract_block(text, tag) for tag in TAGS}
    type_block = blocks["TYPE"]
    types = parse_type_pairs(type_block) if type_block is not None else []
    return ParsedChain(blocks, types, FORMAT_PATTERN.search(text) is not None)


def parse_chain_strict(text: str) -> tuple[ParsedChain, int]:
    """Parsed chain and its integer answer; ``ChainFormatError`` if either is malformed."""
    parsed = parse_chain(text)
    if not parsed.matches_format:
        missing = [tag for tag, block in parsed.blocks.items() if block is None]
        detail = f"missing blocks {missing}" if missing else "blocks out of order"
        raise ChainFormatError(f"chain does not match the SPEC §3 format ({detail})")
    try:
        answer = int(parsed.answer)
    except (TypeError, ValueError):
        raise ChainFormatError(f"ANSWER block {parsed.answer!r} is not an option index") from None
    return parsed, answer


def format_question(question: str, options: Sequence[str]) -> str:
    """The user text of a multiple-choice question: question, then ``i. option`` lines."""
    lines = [question.strip()]
    if options:
        lines.append("Options:")
        lines.extend(f"{i}. {option}" for i, option in enumerate(options))
    return "\n".join(lines)


def format_prompt(question: str, options: Sequence[str], suffix: str = PROMPT_SUFFIX) -> str:
    """Question and options followed by the SPEC §1 instruction suffix."""
    return f"{format_question(question, options)}\n{suffix}" if suffix else format_question(question, options)


# --------------------------------------------------------------------------- template annotator


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    if text and text[-1] not in ".!?:":
        text += "."
    return text[:1].upper() + text[1:]


def rationale_count(total: float, available: int) -> int:
    """How many source rationales the reasoning uses: 1 below Σs 1, 2 below Σs 2, else all."""
    wanted = 1 if total < 1.0 else 2 if total < 2.0 else available
    return min(available, wanted)


def influence_text(applied: Sequence[tuple[str, float]]) -> str:
    """Per-type sentences by band, then one overall sentence by Σs."""
    if not applied:
        return _CLEAN_INFLUENCE
    sentences = []
    for name, intensity in applied:
        text = DEGRADATION_TEXT.get(name)
        if text is None:
            raise KeyError(f"no influence text for degradation {name!r}; known: {sorted(DEGRADATION_TEXT)}")
        sentences.append(text.influence[BANDS.index(band_of(intensity))])
    total = total_intensity(applied)
    overall = _OVERALL[0] if total < 1.0 else _OVERALL[1] if total < 2.5 else _OVERALL[2]
    return " ".join(sentences + [overall])


_OPENINGS = (
    "The question asks: {q}",
    "I need to answer: {q}",
    "The task is to decide: {q}",
)
_EVIDENCE = (
    "The {name} ({band}) hides {hides}, so I rely on {relies}.",
    "Because of the {band} {name}, {hides} cannot be trusted; {relies} remain usable.",
    "With {band} {name}, I set aside {hides} and look at {relies} instead.",
)
_SEVERE_CHECK = (
    "Since the {name} is severe, I check that what I see is part of the scene and not an artefact of it.",
    "The {name} is strong enough to create false cues, so I only trust features that appear clearly.",
)
_VERIFY_OPENINGS = (
    "Checking the options one by one:",
    "To be sure, I compare every option with the visible evidence:",
)
_VERIFY_WRONG = (
    "'{opt}' does not match what is visible.",
    "'{opt}' is not supported by the remaining cues.",
)
_VERIFY_RIGHT = (
    "'{opt}' is consistent with everything that can still be seen.",
    "Only '{opt}' agrees with the evidence that survives the degradation.",
)
_CLOSINGS = (
    "So the best-supported option is '{ans}'.",
    "This points to '{ans}'.",
    "Taken together, the evidence supports '{ans}'.",
)
_NO_RATIONALE = "The visible content is consistent with '{ans}'."


def template_reasoning(request: ChainRequest) -> str:
    """Reasoning whose length grows with Σs; deterministic given ``request.seed``."""
    rng = random.Random(request.seed)
    applied = list(request.applied)
    total = total_intensity(applied)
    answer_text = request.answer_text

    sentences = [rng.choice(_OPENINGS).format(q=" ".join(request.question.split()))]
    rationales = [_sentence(r) for r in request.rationales if str(r).strip()]
    chosen = rationales[: rationale_count(total, len(rationales))]
    sentences += chosen or [_NO_RATIONALE.format(ans=answer_text)]

    # Strongest first: the degradation that hides the most is discussed first.
    for name, intensity in sorted(applied, key=lambda pair: -pair[1]):
        if intensity < NOTICEABLE:
            continue
        text = DEGRADATION_TEXT[name]
        fields = dict(name=name, band=band_of(intensity), hides=text.hides, relies=text.relies_on)
        sentences.append(_sentence(rng.choice(_EVIDENCE).format(**fields)))
        if band_of(intensity) == "severe":
            sentences.append(rng.choice(_SEVERE_CHECK).format(name=name))

    if total >= 1.5 and len(request.options) > 1:
        sentences.append(rng.choice(_VERIFY_OPENINGS))
        for index, option in enumerate(request.options):
            if index != request.answer:
                sentences.append(rng.choice(_VERIFY_WRONG).format(opt=option))
        if total >= 3.0:
            sentences.append(rng.choice(_VERIFY_RIGHT).format(opt=answer_text))
    sentences.append(rng.choice(_CLOSINGS).format(ans=answer_text))
    return " ".join(_sentence(s) for s in sentences)


def template_conclusion(request: ChainRequest) -> str:
    """Degradation summary, the key rationale, and the answer text."""
    applied = sorted(request.applied, key=lambda pair: -pair[1])
    if applied:
        name, intensity = applied[0]
        lead = f"Despite the {band_of(intensity)} {name}, the key evidence is still readable."
    else:
        lead = "The image is clean, so the evidence is direct."
    rationales = [_sentence(r) for r in request.rationales if str(r).strip()]
    middle = f" {rationales[0]}" if rationales else ""
    return f"{lead}{middle} Therefore, the answer is {request.answer_text}."


class Annotator(Protocol):
    def annotate(self, request: ChainRequest) -> ChainBody: ...


class TemplateAnnotator:
    """Offline annotator: per-type influence text by band, rationale-based reasoning."""

    def annotate(self, request: ChainRequest) -> ChainBody:
        return ChainBody(
            influence=influence_text(request.applied),
            reasoning=template_reasoning(request),
            conclusion=template_conclusion(request),
        )


def build_chain(request: ChainRequest, annotator: Annotator | None = None) -> str:
    """A complete chain for ``request``; TYPE and ANSWER always come from the request."""
    body = (annotator or TemplateAnnotator()).annotate(request)
    return render_chain(request.applied, body, request.answer)


def make_chain(
    question: str,
    options: Sequence[str],
    answer: int,
    rationales: Sequence[str],
    applied: Sequence[tuple[str, float]],
    seed: int = 0,
    annotator: Annotator | None = None,
) -> str:
    """Convenience form of ``build_chain`` taking the fields directly."""
    request = ChainRequest(
        question=question,
        options=tuple(options),
        answer=int(answer),
        rationales=tuple(rationales),
        applied=tuple((str(n), float(s)) for n, s in applied),
        seed=int(seed),
    )
    return build_chain(request, annotator)


# --------------------------------------------------------------------------- OpenAI-compatible annotator

_SYSTEM_PROMPT = (
    "You annotate images for a robustness dataset. The image was deliberately degraded; you are told "
    "which degradations were applied and how strongly (intensity 0 to 1). Write three blocks exactly as "
    "<INFLUENCE>...<INFLUENCE_END>\n<REASONING>...<REASONING_END>\n<CONCLUSION>...<CONCLUSION_END> and "
    "nothing else. INFLUENCE: what the degradations do to this image. REASONING: answer the question "
    "step by step, saying which visual cues the degradations hide and which remain reliable; its length "
    "must follow the requested word count, longer for stronger degradation. CONCLUSION: one or two "
    "sentences summarising the reasoning and stating the answer. Never write any other tags."
)


def reasoning_word_target(request: ChainRequest) -> int:
    """The template reasoning's length in words: the intensity-calibrated target for an LLM."""
    return len(template_reasoning(request).split())


def annotation_prompt(request: ChainRequest) -> str:
    """The user message: question, options, answer, rationales and calibrated length."""
    if request.applied:
        degradations = "\n".join(
            f"- {name}: intensity {s:.2f} ({band_of(s)})" for name, s in request.applied
        )
    else:
        degradations = "- none (the image is clean)"
    rationales = "\n".join(f"- {r}" for r in request.rationales) or "- (none given)"
    return (
        f"Question: {request.question}\n"
        f"{format_question('', request.options).strip()}\n"
        f"Correct answer: option {request.answer} ({request.answer_text})\n"
        f"Human rationales:\n{rationales}\n"
        f"Applied degradations (summed intensity {total_intensity(request.applied):.2f}):\n{degradations}\n"
        f"Write the REASONING in about {reasoning_word_target(request)} words."
    )


def parse_annotation(text: str, word_target: int, tolerance: float = 3.0) -> ChainBody:
    """The three blocks of an LLM reply, validated; ``AnnotatorError`` naming what is wrong."""
    blocks = {}
    for tag in ("INFLUENCE", "REASONING", "CONCLUSION"):
        block = extract_block(text, tag)
        if block is None or not block.strip():
            raise AnnotatorError(f"reply has no non-empty <{tag}> block: {text[:200]!r}")
        if re.search(r"<[A-Z_]+>", block):
            raise AnnotatorError(f"reply's <{tag}> block contains another tag: {block[:200]!r}")
        blocks[tag.lower()] = " ".join(block.split())
    words = len(blocks["reasoning"].split())
    if not word_target / tolerance <= words <= word_target * tolerance:
        raise AnnotatorError(
            f"reply's reasoning has {words} words, outside [{word_target / tolerance:.0f}, "
            f"{word_target * tolerance:.0f}] around the calibrated target {word_target}"
        )
    return ChainBody(**blocks)


def chat_completions_url(base_url: str) -> str:
    """``.../v1/chat/completions`` whether or not ``base_url`` already ends in ``/v1``."""
    base = base_url.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


class OpenAIAnnotator:
    """Writes INFLUENCE / REASONING / CONCLUSION with an OpenAI-compatible chat endpoint.

    Uses only ``urllib``. A bad reply (HTTP error, network error, malformed JSON, missing or
    tagged blocks, reasoning far from the calibrated length) raises ``AnnotatorError`` when
    ``on_failure="raise"``; with ``"fallback"`` (default) it logs the reason and returns the
    template annotation instead, so a flaky endpoint never stops a dataset build.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        on_failure: str = "fallback",
        temperature: float = 0.0,
        length_tolerance: float = 3.0,
    ):
        if on_failure not in ("fallback", "raise"):
            raise ValueError(f"on_failure must be 'fallback' or 'raise', got {on_failure!r}")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.on_failure = on_failure
        self.temperature = temperature
        self.length_tolerance = length_tolerance
        self.fallback = TemplateAnnotator()
        self.num_fallbacks = 0

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            body = error.read()[:300].decode("utf-8", "replace")
            raise AnnotatorError(f"{self.url} answered HTTP {error.code}: {body}") from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise AnnotatorError(f"{self.url} could not be reached: {error}") from error
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise AnnotatorError(f"{self.url} returned invalid JSON: {raw[:200]!r}") from error

    def request_body(self, request: ChainRequest) -> ChainBody:
        """One endpoint call, validated; raises ``AnnotatorError`` on any problem."""
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": _SYSTEM_PROMPT},
                {"role": "user", "content": annotation_prompt(request)},
            ],
            "temperature": self.temperature,
            "seed": int(request.seed),
        }
        reply = self._post(payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AnnotatorError(f"{self.url} reply has no choices[0].message.content: {str(reply)[:200]}") from None
        if not isinstance(content, str):
            raise AnnotatorError(f"{self.url} reply content is not text: {content!r}")
        return parse_annotation(content, reasoning_word_target(request), self.length_tolerance)

    def annotate(self, request: ChainRequest) -> ChainBody:
        try:
            return self.request_body(request)
        except AnnotatorError as error:
            if self.on_failure == "raise":
                raise
            self.num_fallbacks += 1
            logger.warning("annotator endpoint failed, using the template annotation: %s", error)
            return self.fallback.annotate(request)


def make_annotator(kind: str = "template", **kwargs) -> Annotator:
    """``"template"`` or ``"openai"`` (kwargs: base_url, model, api_key, timeout, on_failure)."""
    if kind == "template":
        return TemplateAnnotator()
    if kind == "openai":
        return OpenAIAnnotator(**kwargs)
    raise ValueError(f"unknown annotator {kind!r}; expected 'template' or 'openai'")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties) with NumPy only."""

    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values), dtype=np.float64)
        ranked[order] = np.arange(len(values), dtype=np.float64)
        # Average the ranks of tied values.
        unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        sums = np.zeros(len(unique))
        np.add.at(sums, inverse, ranked)
        return (sums / counts)[inverse]

    rx, ry = ranks(x), ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator else 0.0
