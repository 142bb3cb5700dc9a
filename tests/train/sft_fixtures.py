"""A tiny model and a synthetic SFT batch in the pipeline's batched layout; scripts on 8 simulated devices."""
import os
import subprocess
import sys

import numpy as np
from flax import nnx

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model.rope_index import mrope_position_ids
from robust_r1_jax.model.vlm import Qwen25VL


def tiny_model(seed=0, **kw):
    return Qwen25VL(model_config.tiny(**kw), rngs=nnx.Rngs(seed))


def synthetic_batch(cfg, batch=8, seq=48, grid=(1, 4, 8), slots=2, patch_bucket=40, seed=0):
    rng = np.random.default_rng(seed)
    t, h, w = grid
    n_img = t * h * w // cfg.vision.merge_unit
    ids = np.full((batch, seq), cfg.bos_token_id, np.int32)
    mask = np.zeros((batch, seq), np.int32)
    loss = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        length = int(rng.integers(n_img + 12, seq + 1))
        row = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id]
        row += list(rng.integers(0, cfg.bos_token_id, length - len(row)))
        ids[b, :length], mask[b, :length] = row, 1
        loss[b, n_img + 6:length] = 1
    pix = np.zeros((batch, patch_bucket, cfg.vision.patch_dim), np.float32)
    pix[:, : t * h * w] = rng.normal(size=(batch, t * h * w, cfg.vision.patch_dim))
    grids = np.zeros((batch, slots, 3), np.int32)
    grids[:, 0] = grid
    pos, _ = mrope_position_ids(ids, grids.reshape(-1, 3), mask, image_token_id=cfg.image_token_id,
                                spatial_merge_size=cfg.vision.spatial_merge_size)
    return dict(input_ids=ids, attention_mask=mask, loss_mask=loss, pixel_values=pix, image_grid_thw=grids,
                position_ids=np.moveaxis(np.asarray(pos), 0, 1).astype(np.int32))


def run_on_eight_devices(script: str) -> str:
    """Runs ``script`` in a fresh process with 8 simulated CPU devices (from the repository root); its stdout, or
    an AssertionError carrying the tail of its output."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout
