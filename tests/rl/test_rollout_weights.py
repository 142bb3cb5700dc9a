"""The GRPO sampler's weight layouts (rl/rollout_weights.py): the replicated compute-dtype copy (4 simulated CPU
devices) and the tensor-parallel copy on the rollout mesh (8 simulated devices as data 4 x tensor 2) equal decoding
on the fsdp-sharded training state, token for token (fresh processes); bad layouts are refused before any model
loads."""
import os
import subprocess
import sys
import textwrap

import pytest

from robust_r1_jax.rl import rollout_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETUP = textwrap.dedent("""
    import dataclasses, logging, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "model"))
    from unit_scale_model import unit_scale_model
    from test_generate import _prompts
    from robust_r1_jax import parallel
    from robust_r1_jax.model import config as model_config, generate as gen
    from robust_r1_jax.rl import rollout_weights
    from robust_r1_jax.train import state as train_state
    dtype, devices = sys.argv[1], int(sys.argv[2])
    assert jax.device_count() == devices, jax.devices()
    tiny = model_config.tiny(dtype=dtype, param_dtype="float32", scan_layers=True)
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))
    model, _ = unit_scale_model(cfg, 0)
    mesh = parallel.make_mesh(data=1, fsdp=devices, tensor=1)
    parallel.shard_module(model, mesh)
    parts, trainable, frozen = train_state.split_model(model, ("^visual\\\\.",))
""")

SCRIPT = SETUP + textwrap.dedent("""
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
    out = subprocess.run([sys.executable, "-c", SCRIPT, dtype, "4"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout


TENSOR_SCRIPT = SETUP + textwrap.dedent("""
    policy = rollout_weights.decode_copy(parts, mesh, "tensor", jnp.dtype(dtype), tensor_parallel=2)
    assert dict(policy.mesh.shape) == dict(data=4, fsdp=1, tensor=2), policy.mesh.shape
    assert list(policy.mesh.devices.flat) == list(mesh.devices.flat)   # the training mesh's devices, reshaped
    with jax.set_mesh(mesh):   # as train.run.Run holds it
        copy = policy(trainable, frozen)
    # Megatron layout: q/k/v and gate/up split over their outputs, o and down over their inputs, vocab split,
    # norms and the hidden size whole; every leaf in the compute dtype with the exact values the layers use
    layers = copy.language.layers
    want_specs = {"attn.q.kernel": P(None, None, "tensor"), "attn.k.kernel": P(None, None, "tensor"),
                  "attn.v.kernel": P(None, None, "tensor"), "attn.o.kernel": P(None, "tensor"),
                  "mlp.gate.kernel": P(None, None, "tensor"), "mlp.up.kernel": P(None, None, "tensor"),
                  "mlp.down.kernel": P(None, "tensor"), "input_norm.scale": P()}
    for path, spec in want_specs.items():
        leaf = layers
        for name in path.split("."):
            leaf = getattr(leaf, name)
        padded = lambda spec: tuple(spec) + (None,) * (leaf.get_value().ndim - len(spec))   # [layers, ...]: scanned
        assert padded(leaf.get_value().sharding.spec) == padded(spec), (path, leaf.get_value().sharding.spec, spec)
        assert leaf.get_value().sharding.mesh.shape == policy.mesh.shape
    assert copy.language.embed.get_value().sharding.spec[0] == "tensor", copy.language.embed.get_value().sharding
    leaves = jax.tree.leaves(nnx.state(copy, nnx.Param))
    want = jax.tree.leaves(nnx.state(parts.merge(trainable, frozen), nnx.Param))
    assert all(x.dtype == jnp.dtype(dtype) for x in leaves)
    assert all(np.array_equal(np.asarray(a), np.asarray(b.astype(dtype))) for a, b in zip(leaves, want))
    prompts = [np.repeat(p, 4, 0) for p in _prompts(cfg, seed=0)]   # 8 prompts x G = 2: 16 rows
    prompts = [jax.device_put(p, parallel.batch_sharding(mesh, p.ndim)) for p in prompts]
    compiles = []   # the messages of jax.log_compiles: one "Compiling ..." per program compiled
    handler = logging.Handler()
    handler.emit = lambda record: compiles.append(record.getMessage())
    logging.getLogger("jax").addHandler(handler)
    for temperature in (0.0, 1.0):
        scfg = gen.SamplerConfig(max_new_tokens=6, temperature=temperature, num_samples=2, decode_bucket=2,
                                 pad_token_id=cfg.bos_token_id)
        with jax.set_mesh(mesh), jax.log_compiles(True):   # the mesh as train.run.Run holds it
            on_copy = policy.generate(trainable, frozen, *prompts, scfg, jax.random.key(1))
            on_state = gen.generate(parts.merge(trainable, frozen), *prompts, scfg, jax.random.key(1))
        assert on_copy.tokens.sharding.mesh.shape == mesh.shape   # back on the training mesh for the learner
        if temperature == 0 or dtype == "float32":   # bf16 sums in another order may move a sampled draw
            np.testing.assert_array_equal(np.asarray(on_copy.tokens), np.asarray(on_state.tokens))
            np.testing.assert_array_equal(np.asarray(on_copy.lengths), np.asarray(on_state.lengths))
        if dtype == "float32":   # the same numbers up to the order of the sharded sums
            np.testing.assert_allclose(np.asarray(on_copy.logprobs), np.asarray(on_state.logprobs), rtol=1e-5,
                                       atol=1e-5)
    # the next GRPO step (a new copy of the same state, a new key) compiles nothing: copy, placement, rollout
    assert any("Compiling" in m for m in compiles), compiles[:5]   # the first step's programs were seen
    compiles.clear()
    before = gen.compiled_cache_size()
    with jax.log_compiles(True), jax.set_mesh(mesh):
        again = policy.generate(trainable, frozen, *prompts, scfg, jax.random.key(2))
        jax.block_until_ready(again)
    assert gen.compiled_cache_size() == before
    compiled = [m for m in compiles if "Compiling" in m]
    assert not compiled, compiled
    print("OK")
""")


@pytest.mark.slow   # three compiled rollouts on 8 simulated devices: about 2-3 min per dtype on 2 cores
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_tensor_parallel_copy_decodes_as_the_sharded_training_state(dtype):
    """On 8 devices (training mesh fsdp 8, rollout mesh data 4 x tensor 2): the copy is laid out Megatron style in
    the compute dtype; float32 rollouts are token-identical to the training state's (greedy and sampled),
    log-probs within 1e-5; bfloat16 greedy rollouts token-identical; a second step compiles nothing."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", TENSOR_SCRIPT, dtype, "8"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="rollout.layout must be one of"):
        rollout_weights.decode_copy(None, None, "pipeline", "bfloat16")


def test_bad_tensor_parallel_is_named_before_the_model_loads():
    import ml_collections
    rollout = lambda **kw: ml_collections.ConfigDict(dict(dict(layout="tensor", tensor_parallel=2), **kw))
    assert rollout_weights.layout_problems(rollout(), devices=8, kv_heads=2) == []
    assert rollout_weights.layout_problems(rollout(layout="replicated", tensor_parallel=3), 8, 2) == []
    (kv,) = rollout_weights.layout_problems(rollout(tensor_parallel=4), devices=8, kv_heads=2)
    assert "tensor_parallel=4 does not divide the model's 2 KV heads" in kv
    (devices,) = rollout_weights.layout_problems(rollout(tensor_parallel=2), devices=3, kv_heads=2)
    assert "tensor_parallel=2 does not divide the 3 devices" in devices
    assert len(rollout_weights.layout_problems(rollout(tensor_parallel=3), devices=8, kv_heads=2)) == 2
    (zero,) = rollout_weights.layout_problems(rollout(tensor_parallel=0), devices=8, kv_heads=2)
    assert "expected a positive integer" in zero
    (name,) = rollout_weights.layout_problems(rollout(layout="pipeline"), devices=8)
    assert "config.rollout.layout='pipeline'" in name


def test_a_grpo_run_refuses_a_bad_tensor_parallel_before_the_model_loads(tmp_path, monkeypatch):
    """One ConfigError naming both problems (the tiny model's 2 KV heads, the one CPU device), before any
    tokenizer or weight is read."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "train"))
    import sft_data
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import run as train_run, validate

    def loaded(*_):
        raise AssertionError("the model was loaded before the rollout section was checked")
    monkeypatch.setattr(train_run, "build_model", loaded)
    monkeypatch.setattr(train_run, "load_processor", loaded)
    data = dict(dataset_dir=str(tmp_path / "absent"), tokenizer=str(tmp_path / "absent"), vocab_size=1024)
    config = sft_data.tiny_grpo_config(data, tmp_path / "run", steps=1)
    config.rollout.layout, config.rollout.tensor_parallel = "tensor", 4
    with pytest.raises(validate.ConfigError) as refused:
        grpo.run(config)
    problems = "\n".join(refused.value.problems)
    assert "config.rollout.tensor_parallel=4 does not divide the 1 devices" in problems
    assert "config.rollout.tensor_parallel=4 does not divide the model's 2 KV heads" in problems


RUN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "train"))
    import jax
    import sft_data
    from robust_r1_jax.model import generate as gen
    from robust_r1_jax.rl import grpo
    assert jax.device_count() == 2, jax.devices()
    tmp = sys.argv[1]
    data = sft_data.build(os.path.join(tmp, "data"), num_train=16, vocab_size=1024)
    for layout in ("replicated", "tensor"):
        config = sft_data.tiny_grpo_config(data, os.path.join(tmp, layout), steps=2)
        config.rollout.layout = layout
        before = gen.compiled_cache_size()
        out = grpo.run(config)
        rows = [{k: row[k] for k in ("reward/total", "completion_length", "loss", "kl")} for row in out["history"]]
        print(json.dumps(dict(layout=layout, programs=gen.compiled_cache_size() - before, rows=rows)))
""")


@pytest.mark.slow   # two 2-step GRPO runs of the tiny preset on 2 simulated devices: ~1.5 min on 2 cores
def test_a_grpo_run_on_the_tensor_layout_matches_the_replicated_one(tmp_path):
    """grpo.run end to end on 2 devices (training mesh fsdp 2, rollout mesh data 1 x tensor 2), float32: the same
    rewards, completion lengths and losses as with the replicated copy, and one rollout program for both steps."""
    import json
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = {r["layout"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    assert runs["tensor"]["programs"] == runs["replicated"]["programs"] == 1
    assert len(runs["tensor"]["rows"]) == 2
    for tensor, replicated in zip(runs["tensor"]["rows"], runs["replicated"]["rows"]):
        assert tensor == pytest.approx(replicated, rel=1e-5, abs=1e-6)
