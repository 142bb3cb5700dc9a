"""What the template annotator writes: per-degradation influence text by band, and reasoning that grows with Σs.

The reasoning grows with the summed intensity Σs: more of the source's rationales, one
visual-evidence sentence per noticeable degradation (two when it is severe), and option-by-option
verification once the image is heavily degraded. ``spearman`` measures how well a dataset's reasoning
lengths follow Σs.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import numpy as np
import scipy.stats

from robust_r1_jax.data.chains import ChainRequest

BANDS = ("mild", "moderate", "severe")
# Band edges at thirds put the benchmark levels 0.23 / 0.45 / 0.9 in mild / moderate / severe.
BAND_EDGES = (1.0 / 3.0, 2.0 / 3.0)
NOTICEABLE = 0.2  # below this a degradation earns no reasoning sentence of its own


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



def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0.0 when either side has fewer than two distinct values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return 0.0  # scipy answers nan (with a warning) for constant input
    return float(scipy.stats.spearmanr(x, y).statistic)
