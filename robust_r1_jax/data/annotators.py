"""Annotators: who writes a chain's INFLUENCE, REASONING and CONCLUSION blocks.

``TemplateAnnotator`` is offline and deterministic given a seed (its text lives in ``data/chain_text.py``);
``OpenAIAnnotator`` asks an OpenAI-compatible HTTP endpoint, validates the reply and falls back to the template.
TYPE and ANSWER are never an annotator's: ``build_chain`` writes them from the request (``data/chains.py``).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Protocol, Sequence

from robust_r1_jax.data.chain_text import (band_of, influence_text, template_conclusion, template_reasoning,
                                           total_intensity)
from robust_r1_jax.data.chains import (ANNOTATED_TAGS, ChainBody, ChainRequest, close_tag, contains_tag, extract_block,
                                       format_question, open_tag, render_chain)

logger = logging.getLogger(__name__)


class AnnotatorError(RuntimeError):
    """An annotator could not produce a valid chain body."""


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

_BLOCK_LAYOUT = "\n".join(f"{open_tag(tag)}...{close_tag(tag)}" for tag in ANNOTATED_TAGS)
_SYSTEM_PROMPT = (
    "You annotate images for a robustness dataset. The image was deliberately degraded; you are told "
    "which degradations were applied and how strongly (intensity 0 to 1). Write three blocks exactly as "
    f"{_BLOCK_LAYOUT} and "
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
    for tag in ANNOTATED_TAGS:
        block = extract_block(text, tag)
        if block is None or not block.strip():
            raise AnnotatorError(f"reply has no non-empty {open_tag(tag)} block: {text[:200]!r}")
        if contains_tag(block):
            raise AnnotatorError(f"reply's {open_tag(tag)} block contains another tag: {block[:200]!r}")
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

