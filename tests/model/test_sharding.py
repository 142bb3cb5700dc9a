"""The model sharded over 8 simulated CPU devices gives the single-device output (fresh process)."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "model"))
    from hf_reference import image_tokens_prompt, qwen3_vl_tiny_config, tiny_config
    from robust_r1_jax import parallel
    from robust_r1_jax.model.vlm import Qwen25VL
    assert jax.device_count() == 8, jax.devices()
    scan = sys.argv[1] == "scanned"
    cfg = (qwen3_vl_tiny_config if sys.argv[2] == "qwen3_vl" else tiny_config)(scan_layers=scan)
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    known = {name for name, _ in parallel.LOGICAL_AXIS_RULES}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # every parameter named on every axis
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == var.value.ndim and set(axes) <= known, (path, axes)
    rng = np.random.default_rng(0)
    grids = [(1, 4, 8), (1, 4, 8)]
    rows = [image_tokens_prompt(rng, cfg, grids[:1], [3, 4]) for _ in range(4)]
    ids = np.array(rows)
    pix = rng.normal(size=(4 * 32, cfg.vision.patch_dim)).astype(np.float32)
    grid = np.array([(1, 4, 8)] * 4)
    want = np.asarray(model(ids, pixel_values=pix, image_grid_thw=grid))

    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    parallel.shard_module(model, mesh)
    if scan:  # the stacked kernel [layers, embed, mlp]: the layer axis stays whole on every device
        kernel = model.language.layers.mlp.gate.kernel.value
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor"), kernel.sharding
        assert kernel.addressable_shards[0].data.shape == (cfg.text.num_hidden_layers, 32, 64)
    else:
        kernel = model.language.layers[0].mlp.gate.kernel.value
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor"), kernel.sharding
        assert kernel.addressable_shards[0].data.shape == (32, 64)
    assert len(kernel.addressable_shards) == 8
    ids_s = jax.device_put(ids, parallel.batch_sharding(mesh, 2))
    got = np.asarray(model(ids_s, pixel_values=pix, image_grid_thw=grid))
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    print("ERR", err)
    assert err < 1e-5, err
""")


# the scanned layouts ~25 s each on 2 cores: slow step; the unrolled Qwen2.5-VL one stays in the default step
@pytest.mark.parametrize("layout,family", [("unrolled", "qwen2_5_vl"),
                                           pytest.param("scanned", "qwen2_5_vl", marks=pytest.mark.slow),
                                           pytest.param("scanned", "qwen3_vl", marks=pytest.mark.slow)])
def test_sharded_forward_equals_single_device(layout, family):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SCRIPT, layout, family], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ERR" in out.stdout
