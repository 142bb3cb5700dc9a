"""The GRPO sampler's weight layouts (rl/rollout_weights.py): the replicated compute-dtype copy equals decoding on
the fsdp-sharded training state, token for token (4 simulated CPU devices, fresh process)."""
import os
import subprocess
import sys
import textwrap

import pytest

from robust_r1_jax.rl import rollout_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import dataclasses, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "model"))
    from unit_scale_model import unit_scale_model
    from test_generate import _prompts
    from robust_r1_jax import parallel
    from robust_r1_jax.model import config as model_config, generate as gen
    from robust_r1_jax.rl import rollout_weights
    from robust_r1_jax.train import state as train_state
    assert jax.device_count() == 4, jax.devices()
    dtype = sys.argv[1]
    tiny = model_config.tiny(dtype=dtype, param_dtype="float32", scan_layers=True)
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))
    model, _ = unit_scale_model(cfg, 0)
    mesh = parallel.make_mesh(data=1, fsdp=4, tensor=1)
    parallel.shard_module(model, mesh)
    parts, trainable, frozen = train_state.split_model(model, ("^visual\\\\.",))
    sharded = [x for x in jax.tree.leaves(trainable) if not x.sharding.is_fully_replicated]
    assert sharded, "the training state should be split over fsdp"
    policy = rollout_weights.decode_copy(parts, mesh, "replicated", jnp.dtype(dtype))
    copy = policy(trainable, frozen)
    leaves = jax.tree.leaves(nnx.state(copy, nnx.Param))
    assert all(x.dtype == jnp.dtype(dtype) and x.sharding.is_fully_replicated for x in leaves)
    # the copy holds exactly the values every layer casts its weights to
    want = jax.tree.leaves(nnx.state(parts.merge(trainable, frozen), nnx.Param))
    assert all(np.array_equal(np.asarray(a), np.asarray(b.astype(dtype))) for a, b in zip(leaves, want))
    assert len(leaves) == len(jax.tree.leaves(trainable)) + len(jax.tree.leaves(frozen))
    prompts = list(_prompts(cfg, seed=0))
    prompts[0], prompts[1] = np.repeat(prompts[0], 2, 0), np.repeat(prompts[1], 2, 0)
    prompts[2], prompts[3] = np.repeat(prompts[2], 2, 0), np.repeat(prompts[3], 2, 0)
    prompts = [jax.device_put(p, parallel.batch_sharding(mesh, p.ndim)) for p in prompts]
    for temperature in (0.0, 1.0):
        scfg = gen.SamplerConfig(max_new_tokens=6, temperature=temperature, num_samples=2, decode_bucket=2,
                                 pad_token_id=cfg.bos_token_id)
        on_copy = gen.generate(copy, *prompts, scfg, jax.random.key(1))
        on_state = gen.generate(parts.merge(trainable, frozen), *prompts, scfg, jax.random.key(1))
        if temperature == 0 or dtype == "float32":   # bf16 sums in another order may move a sampled draw
            np.testing.assert_array_equal(np.asarray(on_copy.tokens), np.asarray(on_state.tokens))
        if dtype == "float32":   # the same numbers up to the order of the sharded sums
            np.testing.assert_allclose(np.asarray(on_copy.logprobs), np.asarray(on_state.logprobs), rtol=1e-5,
                                       atol=1e-5)
    before = gen.compiled_cache_size()
    gen.generate(policy(trainable, frozen), *prompts, scfg, jax.random.key(2))   # the next step's copy
    assert gen.compiled_cache_size() == before
    print("OK")
""")


@pytest.mark.slow   # two compiled rollouts on 4 simulated devices: about 2 min per dtype on 2 cores
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_replicated_copy_decodes_as_the_sharded_training_state(dtype):
    """float32: token-identical rollouts (greedy and sampled), log-probs within 1e-5; bfloat16: the copy holds
    the very bf16 values the layers compute with, and greedy rollouts are token-identical."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, dtype], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="rollout.layout must be one of"):
        rollout_weights.decode_copy(None, None, "tensor", "bfloat16")
