"""A Qwen25VL (either family) with unit-scale random weights drawn with NumPy (nnx.eval_shape skips the slow
per-shape init programs), for sampler tests that need peaked, reproducible logits; callers set the output head they
need."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model.layers import Dense, LayerNorm, RMSNorm
from robust_r1_jax.model.vlm import Qwen25VL


def unit_scale_model(cfg, seed: int):
    """(model, draw): Dense kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1), norm scales ~ N(1, 0.1), embeddings
    ~ N(0, 0.4), Qwen3-VL's LayerNorm biases ~ N(0, 0.1) and learned vision positions ~ N(0, 1) (as
    ``tests/model/hf_reference.unit_scale_``); ``draw(shape, std, mean=0.0)`` continues the same NumPy stream
    (float32). Qwen2.5-VL's draws are the same as before Qwen3-VL's were added."""
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)

    def draw(shape, std, mean=0.0):
        return jnp.asarray(mean + std * rng.standard_normal(shape), jnp.float32)

    for _, module in nnx.iter_modules(model):
        if isinstance(module, Dense):
            module.kernel.set_value(draw(module.kernel.shape, 1 / math.sqrt(math.prod(module.in_shape))))
            if module.bias is not None:
                module.bias.set_value(draw(module.bias.shape, 0.1))
        elif isinstance(module, RMSNorm):
            module.scale.set_value(draw(module.scale.shape, 0.1, mean=1.0))
        elif isinstance(module, LayerNorm):
            module.scale.set_value(draw(module.scale.shape, 0.1, mean=1.0))
            module.bias.set_value(draw(module.bias.shape, 0.1))
    model.language.embed.set_value(draw(model.language.embed.shape, 0.4))
    if hasattr(model.visual, "pos_embed"):
        model.visual.pos_embed.set_value(draw(model.visual.pos_embed.shape, 1.0))
    abstract = [path for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
                if isinstance(leaf, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"unit_scale_model draws no value for {abstract}")
    return model, draw
