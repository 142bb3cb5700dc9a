"""Shared pieces of the evaluation tests: a scripted stand-in for model + sampler, a tiny random model calibrated
to answer with option digits, and the data they run on."""
from __future__ import annotations

import base64
import dataclasses
import types

import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.data import chains, shapes, sources
from robust_r1_jax.eval import inference
from robust_r1_jax.model import config as model_config
from robust_r1_jax.model.vlm import Qwen25VL

NUM_GOOD_ROWS = 12
IMAGE_SIZE = 56
FIRST_INDEX = 100  # numeric TSV indices, as VLMEvalKit files have: they seed the degradation
TOKENIZER_TEXTS_EXTRA = (
    chains.PROMPT_SUFFIX,
    "<TYPE>motion blur(0.50), noise(0.20)<TYPE_END>\n<INFLUENCE>x<INFLUENCE_END>\n<REASONING>word word"
    "<REASONING_END>\n<CONCLUSION>y<CONCLUSION_END>\n<ANSWER>0<ANSWER_END>",
)


def good_records():
    records = shapes.make_records(NUM_GOOD_ROWS, seed=0, image_size=IMAGE_SIZE)
    return [dataclasses.replace(r, id=str(FIRST_INDEX + i)) for i, r in enumerate(records)]


def tokenizer_texts():
    records = shapes.make_records(40, seed=0, image_size=IMAGE_SIZE)
    return [chains.format_prompt(r.question, r.options) for r in records] + list(TOKENIZER_TEXTS_EXTRA)


def write_tsv_with_bad_rows(path) -> dict:
    """12 good rows, then one row whose image is not base64 and one whose bytes are no image.

    Returns {"good": records, "bad_labels": [...], "rows": 14}.
    """
    records = good_records()
    sources.write_vlmeval_tsv(records, str(path))
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    template = lines[1].split("\t")

    def row(index, image_field):
        fields = list(template)
        fields[header.index("index")] = index
        fields[header.index("image")] = image_field
        return "\t".join(fields)

    garbage = base64.b64encode(b"\x89PNG this is not an image at all" * 3).decode()
    lines += [row("900", "!!! not base64 !!!" * 5), row("901", garbage)]
    path.write_text("\n".join(lines) + "\n")
    return {"good": records, "bad_labels": ["900", "901"], "rows": len(records) + 2}


# ------------------------------------------------------------------ scripted model + sampler


class ScriptedAnswerer:
    """Stands in for model + sampler with the sampler's ``generate`` signature.

    For each prompt it answers from the image it was given: option ``floor(1000 * mean(patches)) % 4 +
    shift``, in a full chain whose TYPE block is always ``predicted_types`` and whose reasoning grows with the
    answer. ``seen`` records every (prompt ids, patches) it received.
    """

    def __init__(self, tokenizer, stop_id: int, predicted_types: str, shift: int = 0, letters: bool = False):
        self.tokenizer, self.stop_id = tokenizer, stop_id
        self.predicted_types, self.shift, self.letters = predicted_types, shift, letters
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def answer_for(self, patches: np.ndarray) -> int:
        return (int(np.floor(1000 * float(np.mean(patches)))) + self.shift) % 4

    def chain(self, answer: int) -> str:
        shown = "ABCD"[answer] if self.letters else str(answer)
        return (f"<TYPE>{self.predicted_types}<TYPE_END>\n<INFLUENCE>blurry<INFLUENCE_END>\n"
                f"<REASONING>{'look ' * (2 + 3 * answer)}<REASONING_END>\n<CONCLUSION>so<CONCLUSION_END>\n"
                f"<ANSWER>{shown}<ANSWER_END>")

    def generate(self, model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config, rng):
        prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        pixel_values, grid = np.asarray(pixel_values), np.asarray(image_grid_thw)
        horizon = config.max_new_tokens
        tokens = np.full((len(prompt_ids), horizon), config.pad_token_id, np.int32)
        lengths = np.zeros(len(prompt_ids), np.int32)
        for b in range(len(prompt_ids)):
            patches = pixel_values[b, : int(np.prod(grid[b, 0]))]
            self.seen.append((prompt_ids[b][prompt_mask[b] == 1], patches))
            ids = self.tokenizer.encode(self.chain(self.answer_for(patches)), add_special_tokens=False)
            ids = (ids + [self.stop_id])[:horizon]
            tokens[b, : len(ids)] = ids
            lengths[b] = len(ids)
        return types.SimpleNamespace(tokens=tokens, lengths=lengths)


def stand_in_model(tokenizer):
    """What the evaluator reads from a model when generation is scripted: its config."""
    return types.SimpleNamespace(config=model_config.tiny(vocab_size=len(tokenizer)))


# ------------------------------------------------------------------ a tiny model that answers with digits


def answering_model(tokenizer, calibration: list[dict], seed: int = 0):
    """(model, smallest logit margin, spread of the projections): a tiny random Qwen2.5-VL whose greedy output
    is one option digit and then ``<|im_end|>``.

    Untied output head: the digit rows point along the two directions in which the last prompt hidden state
    varies most between degradation levels of the same image (``calibration`` holds the encoded prompts, four
    levels per image in order), so the digit it picks changes with the image and its degradation. The digits'
    input embeddings share a direction that only the ``<|im_end|>`` row reads, so after a digit it stops. The
    quadrant offset is chosen so every calibration prompt is far from a decision boundary.
    """
    config = model_config.tiny(vocab_size=len(tokenizer))
    config = config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=False))
    model = Qwen25VL(config, rngs=nnx.Rngs(seed))
    digits = [tokenizer.convert_tokens_to_ids(c) for c in "0123"]
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    language = model.language
    rng = np.random.default_rng(seed)
    marker = rng.normal(size=config.text.hidden_size)
    marker /= np.linalg.norm(marker)
    language.embed[...] = language.embed[...].at[jnp.asarray(digits)].add(jnp.asarray(3.0 * marker, jnp.float32))

    longest = max(len(e["input_ids"]) for e in calibration)
    batch = inference.pack_batch(calibration, len(calibration), (longest,), (16,), 0)
    hidden = np.asarray(_last_hidden(model, batch["prompt_ids"], batch["pixel_values"], batch["image_grid_thw"],
                                     batch["prompt_mask"]), np.float64)
    mean = hidden.mean(0)
    within = hidden.reshape(-1, 4, hidden.shape[-1])
    within = (within - within.mean(1, keepdims=True)).reshape(len(hidden), -1)
    directions = np.linalg.svd(within, full_matrices=False)[2][:2]
    for axis in (mean / np.linalg.norm(mean), marker):
        directions -= np.outer(directions @ axis, axis)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    projected = (hidden - mean) @ directions.T

    def head(offset):
        kernel = np.zeros((config.text.hidden_size, config.text.vocab_size), np.float64)
        for d, token in enumerate(digits):
            angle = offset + d * np.pi / 2
            kernel[:, token] = 50.0 * (np.cos(angle) * directions[0] + np.sin(angle) * directions[1])
        kernel[:, stop] = 5.0 * marker
        return kernel

    def margin(kernel):
        logits = np.sort((hidden @ kernel)[:, digits + [stop]], axis=1)
        return float(np.min(logits[:, -1] - logits[:, -2]))

    best = max(np.linspace(0, np.pi / 2, 24, endpoint=False), key=lambda o: margin(head(o)))
    language.lm_head.kernel[...] = jnp.asarray(head(best), jnp.float32)
    return model, margin(head(best)), projected.std(0)


@nnx.jit
def _last_hidden(model, ids, pixels, grid, mask):
    return model.hidden_states(ids, pixels, grid, mask)[:, -1]
