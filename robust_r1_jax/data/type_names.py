"""``<TYPE>`` names as data files write them, mapped onto the 16 names the chains, r_deg and the metrics use.

The rewards (SPEC §3) and ``eval/chain_metrics.py`` compare degradation names exactly, against the 16 names of
SPEC §2 (``degrade.NAMES``). Chains written elsewhere often use common names instead; a chain saying
``gaussian noise(0.30)`` would score as a wrong type forever. When a source's chain is read, each name is looked
up case-insensitively, whitespace folded, in ``ALIASES`` and rewritten to its SPEC name in the chain text itself;
a name that is neither one of the 16 nor an alias is kept as written and reported per record
(``unknown_type_names``), and the synth summary counts both (``type_aliases_applied``,
``unknown_type_names``).

The alias table (common name -> SPEC §2 name):

=================================================================================== ==========================
aliases                                                                             name
=================================================================================== ==========================
gaussian noise, random noise, image noise, sensor noise, noisy                      noise
low light, low illumination, dim light, dark, dimness, underexposure                darkness
gaussian blur, defocus blur, defocus, out of focus, lens blurring, blur, blurry     lens blur
motion blurring, camera shake                                                       motion blur
lens glare, glare, flare                                                            lens flare
lens dirt, dirt, smudge, smudged lens, dust                                         dirty lens
desaturation, color saturation, colour saturation, saturation change                saturation
jpeg, jpeg artifacts, jpeg artefacts, compression, compression artifacts            jpeg compression
block shuffle, block swap, block swapping, block exchanges                          block exchange
mean shift filtering, meanshift                                                     mean shift
scan line, scanlines, scanline                                                      scan lines
turbulence, heat haze, heat shimmer                                                 atmospheric turbulence
colour diffusion, color bleeding, colour bleeding, color bleed                      color diffusion
sharpening, oversharpening, over sharpening, sharpness, sharpen                     sharpness change
scribbles, doodles                                                                  graffiti
watermark, watermarks, watermark removal                                            watermark damage
=================================================================================== ==========================
"""
from __future__ import annotations

import re

from robust_r1_jax import degrade
from robust_r1_jax.data import chains

_TABLE = {
    "noise": ("gaussian noise", "random noise", "image noise", "sensor noise", "noisy"),
    "darkness": ("low light", "low illumination", "dim light", "dark", "dimness", "underexposure"),
    "lens blur": ("gaussian blur", "defocus blur", "defocus", "out of focus", "lens blurring", "blur", "blurry"),
    "motion blur": ("motion blurring", "camera shake"),
    "lens flare": ("lens glare", "glare", "flare"),
    "dirty lens": ("lens dirt", "dirt", "smudge", "smudged lens", "dust"),
    "saturation": ("desaturation", "color saturation", "colour saturation", "saturation change"),
    "jpeg compression": ("jpeg", "jpeg artifacts", "jpeg artefacts", "compression", "compression artifacts"),
    "block exchange": ("block shuffle", "block swap", "block swapping", "block exchanges"),
    "mean shift": ("mean shift filtering", "meanshift"),
    "scan lines": ("scan line", "scanlines", "scanline"),
    "atmospheric turbulence": ("turbulence", "heat haze", "heat shimmer"),
    "color diffusion": ("colour diffusion", "color bleeding", "colour bleeding", "color bleed"),
    "sharpness change": ("sharpening", "oversharpening", "over sharpening", "sharpness", "sharpen"),
    "graffiti": ("scribbles", "doodles"),
    "watermark damage": ("watermark", "watermarks", "watermark removal"),
}
ALIASES: dict[str, str] = {alias: name for name, aliases in _TABLE.items() for alias in aliases}
assert set(_TABLE) == set(degrade.NAMES), "the alias table must cover exactly the 16 SPEC §2 names"


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def canonical(name: str) -> tuple[str, bool]:
    """``(SPEC name, known)`` for a degradation name: one of the 16 as it is, an alias mapped, anything else
    returned as written (stripped) with ``known=False``."""
    key = _key(name)
    if key in degrade.NAMES:
        return key, True
    if key in ALIASES:
        return ALIASES[key], True
    return name.strip(), False


def normalise_chain_types(chain: str) -> tuple[str, list[tuple[str, float]], list[str], list[str]]:
    """A chain with its ``<TYPE>`` names mapped by ``canonical``.

    Returns ``(chain, pairs, aliased, unknown)``: the chain with each aliased name rewritten in place (numbers and
    everything else untouched), its TYPE pairs after the mapping (``chains.parse_type_pairs``), the aliases that
    were rewritten (as written) and the names neither in the 16 nor aliased.
    """
    block = chains.extract_block(chain, "TYPE")
    if block is None:
        return chain, [], [], []
    aliased, unknown = [], []

    def rename(match: re.Match) -> str:
        name, known = canonical(match.group(1))
        if not known:
            unknown.append(match.group(1).strip())
            return match.group(0)
        if name != match.group(1).strip():
            aliased.append(match.group(1).strip())
        return f"{name}({match.group(2)})"

    new_block = chains.TYPE_PAIR_PATTERN.sub(rename, block)
    opening = chains.open_tag("TYPE")
    start = chain.index(opening + block) + len(opening)  # the first TYPE block, the one extract_block read
    chain = chain[:start] + new_block + chain[start + len(block):]
    return chain, chains.parse_type_pairs(new_block), aliased, unknown
