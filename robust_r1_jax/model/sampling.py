"""The sampling settings of every mode that generates (rl rollouts, eval, generate, the demo): one ConfigDict
shape, ``config.sampling``, so temperature, top-p, top-k and the completion budget are set in one place.

A model folder may ship its own settings in ``generation_config.json`` (transformers' ``GenerationConfig``);
:func:`shipped_settings` reads them and :func:`resolve` merges them under what the user set (``generate``)."""
from __future__ import annotations

import dataclasses
import os

import ml_collections
from ml_collections import config_dict

FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k")
# generate's extra field: not in the shared shape, because GRPO's learner does not apply the penalty to its own
# log-probabilities (its rollouts must not sample from a distribution the learner never computes).
REPETITION_PENALTY = "repetition_penalty"
GENERATION_CONFIG = "generation_config.json"
# What transformers uses for a GenerationConfig field the file leaves unset
# (transformers 5: GenerationConfig._get_default_generation_params).
TRANSFORMERS_DEFAULTS = dict(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0,
                             num_beams=1)


# Not a model folder's setting: a completion is text, and the vision special tokens (<|image_pad|>, ...) written as
# text put the model where it was never trained (and GRPO's learner would score them as text); see
# model.generate.vision_token_ids.
SUPPRESS_VISION_TOKENS = "suppress_vision_tokens"


def default_config(**overrides) -> ml_collections.ConfigDict:
    """``max_new_tokens``, ``temperature`` (0: greedy), ``top_p`` (1: off), ``top_k`` (0: off) and
    ``suppress_vision_tokens`` (True: the vision special tokens are never sampled)."""
    c = ml_collections.ConfigDict(dict(max_new_tokens=1024, temperature=0.0, top_p=1.0, top_k=0,
                                       suppress_vision_tokens=True))
    c.update(overrides)
    return c


def unset_config() -> ml_collections.ConfigDict:
    """The ``config.sampling`` shape with every field unset (None), so :func:`resolve` can tell what the user set
    on the command line from what the model folder or :func:`default_config` should fill in (the vision-token
    setting is not a folder's: it is on unless the user turns it off)."""
    types = dict(max_new_tokens=int, temperature=float, top_p=float, top_k=int, repetition_penalty=float)
    c = ml_collections.ConfigDict({name: config_dict.placeholder(kind) for name, kind in types.items()})
    c[SUPPRESS_VISION_TOKENS] = True
    return c


def sampler_settings(sampling) -> dict:
    """The fields of ``config.sampling`` as keyword arguments of ``eval.inference.sampler_config``, with their
    types made exact."""
    return dict(max_new_tokens=int(sampling.max_new_tokens), temperature=float(sampling.temperature),
                top_p=float(sampling.top_p), top_k=int(sampling.top_k),
                suppress_vision_tokens=bool(sampling.get(SUPPRESS_VISION_TOKENS, True)))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problems(sampling, section: str = "sampling") -> list[str]:
    """Every impossible value of a ``config.sampling`` section, one line each naming ``config.<section>.<field>``,
    its value and what would work; unset fields (None: ``generate``'s, filled in from the model folder) pass.
    Checked with the rest of a config before any model loads (``train.validate.sampling_problems``); the same
    bounds as ``model.generate.SamplerConfig``, which would only refuse them after the model is loaded."""
    out = []

    def bad(field, text):
        out.append(f"config.{section}.{field}={sampling.get(field)!r}: {text}")

    rules = (
        ("max_new_tokens", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
         "must be a whole number of tokens, at least 1"),
        ("temperature", lambda v: _number(v) and 0 <= v < float("inf"),
         "must be a finite number >= 0 (0 = greedy decoding)"),
        ("top_p", lambda v: _number(v) and 0 < v <= 1,
         "must be in (0, 1] (1 = off; 0 would keep no token)"),
        ("top_k", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
         "must be a whole number >= 0 (0 = off)"),
        (REPETITION_PENALTY, lambda v: _number(v) and 0 < v < float("inf"),
         "must be a finite number > 0 (1 = off)"),
        (SUPPRESS_VISION_TOKENS, lambda v: isinstance(v, bool), "must be True or False"),
    )
    for field, ok, text in rules:
        if field in sampling and sampling[field] is not None and not ok(sampling[field]):
            bad(field, text)
    return out


@dataclasses.dataclass(frozen=True)
class Shipped:
    """A model folder's generation settings: ``settings`` holds the :data:`FIELDS` it determines (greedy is
    temperature 0) and its repetition penalty, ``ignored`` what this sampler does not implement ("num_beams=3")."""

    path: str
    settings: dict
    ignored: tuple[str, ...] = ()


def shipped_settings(model_dir: str) -> Shipped | None:
    """The sampler settings of ``model_dir/generation_config.json`` read with transformers' ``GenerationConfig``
    (None when the folder has none); a ``ValueError`` naming the file when it cannot be read.

    ``do_sample`` false (transformers' default) means greedy; otherwise temperature, top_p and top_k apply,
    with transformers' defaults (1.0, 1.0, 50) for the ones the file leaves out. ``repetition_penalty`` applies
    either way, as in transformers. ``max_new_tokens`` is taken only when the file sets it.
    """
    path = os.path.join(model_dir, GENERATION_CONFIG)
    if not os.path.isfile(path):
        return None
    from transformers import GenerationConfig  # heavy import, only where a folder ships a file
    try:
        shipped = GenerationConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable transformers GenerationConfig ({error})") from error

    def field(name):
        value = getattr(shipped, name, None)
        return TRANSFORMERS_DEFAULTS[name] if value is None else value

    if field("do_sample"):
        settings = dict(temperature=float(field("temperature")), top_p=float(field("top_p")),
                        top_k=int(field("top_k")))
    else:
        settings = dict(temperature=0.0)
    settings[REPETITION_PENALTY] = float(field(REPETITION_PENALTY))
    if shipped.max_new_tokens is not None:
        settings["max_new_tokens"] = int(shipped.max_new_tokens)
    ignored = tuple(f"{name}={field(name)}" for name in ("num_beams",) if field(name) != TRANSFORMERS_DEFAULTS[name])
    return Shipped(path, settings, ignored)


def resolve(sampling, shipped: Shipped | None) -> tuple[dict, str]:
    """(sampler keyword arguments, one line saying which settings are used and where each came from).

    Each field (:data:`FIELDS` and the repetition penalty): the user's value when set (not None), else the model
    folder's, else :func:`default_config`'s (penalty 1: off). A user's temperature 0 asks for plain greedy
    decoding: nothing comes from the folder then.
    """
    defaults = {**default_config().to_dict(), REPETITION_PENALTY: 1.0}
    names = FIELDS + (REPETITION_PENALTY,)
    user = {name: sampling[name] for name in names if sampling.get(name) is not None}
    from_file = {} if shipped is None or user.get("temperature") == 0 else shipped.settings
    values, origin = {}, {}
    for name in names:
        for source, table in (("set", user), ("generation_config.json", from_file), ("default", defaults)):
            if name in table:
                values[name], origin[name] = table[name], source
                break
    values[SUPPRESS_VISION_TOKENS] = sampling.get(SUPPRESS_VISION_TOKENS, True)
    settings = {**sampler_settings(ml_collections.ConfigDict(values)),
                REPETITION_PENALTY: float(values[REPETITION_PENALTY])}
    shown = ([f"greedy ({origin['temperature']})"] if settings["temperature"] == 0 else
             [f"temperature={settings['temperature']:g} ({origin['temperature']})",
              f"top_p={settings['top_p']:g} ({origin['top_p']})", f"top_k={settings['top_k']} ({origin['top_k']})"])
    if settings[REPETITION_PENALTY] != 1.0:
        shown.append(f"repetition_penalty={settings[REPETITION_PENALTY]:g} ({origin[REPETITION_PENALTY]})")
    shown.append(f"max_new_tokens={settings['max_new_tokens']} ({origin['max_new_tokens']})")
    line = "sampling: " + ", ".join(shown)
    if shipped is not None and from_file:
        line += f"; from {shipped.path}"
        if shipped.ignored:
            line += f" (not supported by this sampler, ignored: {', '.join(shipped.ignored)})"
    elif shipped is not None:
        line += f"; greedy was asked for, so {shipped.path} is not used"
    return settings, line
