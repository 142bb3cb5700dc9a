"""The sampling settings of every mode that generates (rl rollouts, eval, generate, the demo): one ConfigDict
shape, ``config.sampling``, so temperature, top-p, top-k and the completion budget are set in one place."""
from __future__ import annotations

import ml_collections


def default_config(**overrides) -> ml_collections.ConfigDict:
    """``max_new_tokens``, ``temperature`` (0: greedy), ``top_p`` (1: off) and ``top_k`` (0: off)."""
    c = ml_collections.ConfigDict(dict(max_new_tokens=1024, temperature=0.0, top_p=1.0, top_k=0))
    c.update(overrides)
    return c


def sampler_settings(sampling) -> dict:
    """The fields of ``config.sampling`` as the sampler's keyword arguments, with their types made exact."""
    return dict(max_new_tokens=int(sampling.max_new_tokens), temperature=float(sampling.temperature),
                top_p=float(sampling.top_p), top_k=int(sampling.top_k))
