"""How a benchmark row becomes a prompt and how an output becomes an answer: the two evaluation protocols.

``vlmevalkit`` (the default; the paper's numbers, SPEC §6, come from VLMEvalKit):

* the prompt VLMEvalKit builds for an MCQ row when evaluating Qwen2.5-VL. Its registered Qwen2.5-VL models run
  with ``use_custom_prompt=False`` (``vlmeval/config.py``, since VLMEvalKit PR #786, February 2025), so the
  prompt is the dataset's own ``ImageMCQDataset.build_prompt`` (``vlmeval/dataset/image_mcq.py``)::

      Hint: {hint}\\n                    (only when the row has a hint)
      Question: {question}\\n
      Options:\\n
      A. {A}\\n
      B. {B}\\n ...
      Please select the correct answer from the options above. \\n

  (the trailing space and newline are VLMEvalKit's; the image comes before the text in the user turn);
* for reasoning models the SPEC §1 suffix follows that text directly;
* images resized within VLMEvalKit's pixel bounds for Qwen2.5-VL: 1280·28·28 to 16384·28·28 pixels;
* the answer read with ``answers.vlmevalkit_extract``: the ``<ANSWER>`` block first, then the whole output,
  each with VLMEvalKit's exact matching (``answers.vlmevalkit_choice``).

``indexed`` (this project's training format, SPEC §1): the question, ``Options:`` and ``0. option`` lines
(``chains.format_prompt``), the model's own image settings, and ``answers.extract`` (option index or letter).
"""
from __future__ import annotations

from typing import Sequence

from robust_r1_jax.data import chains
from robust_r1_jax.eval import answers

VLMEVALKIT = "vlmevalkit"
INDEXED = "indexed"
PROTOCOLS = (VLMEVALKIT, INDEXED)
# vlmeval/config.py, "Qwen2.5-VL-3B-Instruct" (and the other Qwen2.5-VL sizes): min_pixels, max_pixels.
VLMEVALKIT_MIN_PIXELS = 1280 * 28 * 28
VLMEVALKIT_MAX_PIXELS = 16384 * 28 * 28
VLMEVALKIT_MCQ_INSTRUCTION = "Please select the correct answer from the options above. \n"


def check_protocol(protocol: str) -> str:
    """The protocol name, or ValueError listing the known ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    return protocol


def vlmevalkit_mcq_prompt(question: str, options: Sequence[str], hint: str = "") -> str:
    """VLMEvalKit's MCQ prompt text for one row (see the module docstring for the layout and its source)."""
    text = f"Hint: {hint}\n" if hint else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{letter}. {option}\n"
                                       for letter, option in answers.lettered_options(options).items())
        text += VLMEVALKIT_MCQ_INSTRUCTION
    return text


def prompt_text(question: str, options: Sequence[str], hint: str, protocol: str, use_suffix: bool,
                prompt_style: str = chains.PROJECT_STYLE) -> str:
    """The user text of one benchmark row under ``protocol``, with the SPEC §1 suffix when ``use_suffix``.

    ``prompt_style`` (``chains.PROMPT_STYLES``) says how the suffix joins the question text: ``project`` as the
    project trains (``vlmevalkit``: directly after VLMEvalKit's text, which ends in a newline; ``indexed``: on a
    line of its own), ``upstream`` directly, with ``<image>`` removed, as upstream trains its released models."""
    suffix = chains.PROMPT_SUFFIX if use_suffix else ""
    if check_protocol(protocol) == VLMEVALKIT:
        text = vlmevalkit_mcq_prompt(question, options, hint)
    else:
        text = chains.format_question(f"{hint}\n{question}" if hint else question, options)
    if chains.check_prompt_style(prompt_style) == chains.UPSTREAM_STYLE:
        return chains.upstream_prompt(text, suffix)
    if protocol == VLMEVALKIT or not suffix:
        return text + suffix
    return f"{text}\n{suffix}"  # chains.format_prompt


def read_answer(text: str, options: Sequence[str], protocol: str) -> answers.Extraction:
    """The option index an output picks under ``protocol`` (None when it cannot be told) and where it was read."""
    if check_protocol(protocol) == VLMEVALKIT:
        return answers.vlmevalkit_extract(text, options)
    return answers.extract(text, options)


def pixel_bounds(protocol: str, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) for the image processor: a set value wins; 0 means the protocol's own bounds
    (VLMEvalKit's for ``vlmevalkit``; the model folder's ``preprocessor_config.json`` for ``indexed``, kept 0)."""
    if check_protocol(protocol) == VLMEVALKIT:
        max_pixels = int(max_pixels) or VLMEVALKIT_MAX_PIXELS
        # A lower max_pixels alone also lowers the floor, so that the bounds stay ordered.
        return int(min_pixels) or min(VLMEVALKIT_MIN_PIXELS, max_pixels), max_pixels
    return int(min_pixels), int(max_pixels)
