"""The train state on a mesh: optimizer moments are sharded like their parameters, and the step compiles once."""
import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sft_fixtures import run_on_eight_devices  # noqa: E402

EIGHT_DEVICES = textwrap.dedent("""
    import os, sys, jax, numpy as np
    from jax.sharding import PartitionSpec
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "train"))
    from sft_fixtures import synthetic_batch, tiny_model
    from robust_r1_jax import parallel
    from robust_r1_jax.train import optim, state as train_state, step as sft
    assert jax.device_count() == 8
    mesh = parallel.make_mesh(data=2, fsdp=4, tensor=1)
    cfg = optim.OptimConfig(learning_rate=1e-5, total_steps=10, weight_decay=0.1)
    tx = optim.optimizer(cfg)
    model = tiny_model()
    parts, state = train_state.init_state(model, tx, ("^visual\\\\.",), mesh)

    params = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(state.trainable)[0]}
    moments = sharded = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        key = jax.tree_util.keystr(path)
        owner = [p for p in params if key.endswith(p)]
        if leaf.ndim == 0:   # Adam's counts: replicated over the whole mesh
            assert leaf.sharding.spec == PartitionSpec() and len(leaf.sharding.device_set) == 8, key
            continue
        assert len(owner) == 1, key
        assert leaf.sharding == params[owner[0]].sharding, (key, leaf.sharding, params[owner[0]].sharding)
        moments += 1
        sharded += "fsdp" in str(leaf.sharding.spec)
    assert moments == 2 * len(params), (moments, len(params))
    assert sharded >= moments // 2, (sharded, moments)   # most tiny kernels divide by fsdp=4
    assert state.step.sharding.spec == PartitionSpec() and len(state.step.sharding.device_set) == 8

    batch = synthetic_batch(model.config)
    step = sft.compile_step(parts, tx, optim.schedule(cfg), sft.StepConfig(1, 0), state, mesh, batch)
    for _ in range(3):
        state, metrics = step(state, sft.global_batch(mesh, batch))
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        if leaf.ndim:
            owner = [p for p in params if jax.tree_util.keystr(path).endswith(p)][0]
            assert leaf.sharding == params[owner].sharding
    print("MOMENTS", moments, "SHARDED", sharded, "COMPILES", step._cache_size())
    assert step._cache_size() == 1
""")


@pytest.mark.slow   # ~26 s on 2 cores; test_aot's fsdp test keeps the sharded step's layout in the default step
def test_optimizer_state_is_sharded_like_parameters_and_the_step_compiles_once():
    assert "COMPILES 1" in run_on_eight_devices(EIGHT_DEVICES)
