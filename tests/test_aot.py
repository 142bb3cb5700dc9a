"""The aot mode: TPU slices by name, and a tiny preset's SFT and GRPO programs compiled for v5p on this CPU host
(libtpu, no TPU), with their memory, fit and loop-corrected cost-model figures."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robust_r1_jax import aot, tpu_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,chips,shape,hosts,hbm_gib", [
    ("v5p-8", 4, (2, 2, 1), 1, 95), ("v5p-16", 8, (2, 2, 2), 2, 95), ("v5p-32", 16, (2, 2, 4), 4, 95),
    ("v6e-8", 8, (2, 4), 1, 32), ("v6e-16", 16, (4, 4), 4, 32), ("v5e-4", 4, (2, 2), 1, 16),
    ("v5litepod-16", 16, (4, 4), 4, 16)])
def test_slices_by_name(name, chips, shape, hosts, hbm_gib):
    s = tpu_topology.parse_slice(name)
    assert (s.chips, s.shape, s.hosts, s.generation.hbm_bytes) == (chips, shape, hosts, hbm_gib * tpu_topology.GIB)


@pytest.mark.parametrize("name", ["v4-8", "v5p", "v5p-3", "tpu-8"])
def test_bad_slice_names_are_refused(name):
    with pytest.raises(ValueError):
        tpu_topology.parse_slice(name)


RECIPES = {
    "sft": """
        from robust_r1_jax.train.sft import default_config
        def get_config():
            c = default_config()
            c.model.vocab_size = 512
            c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 8, 64, 64
            c.mesh.data, c.mesh.fsdp = 1, -1
            c.train.ce_chunk, c.train.freeze = 32, ("^visual\\\\.",)
            return c
    """,
    "grpo": """
        from robust_r1_jax.rl.grpo import default_config
        def get_config():
            c = default_config()
            c.model.vocab_size = 512
            c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 4, 48, 64
            c.mesh.data, c.mesh.fsdp = 1, -1
            c.grpo.num_samples, c.grpo.logprob_chunk = 2, 8
            c.sampling.max_new_tokens = 16
            c.rollout.decode_bucket = 4
            return c
    """,
}
# learner buckets below the 16-token horizon: a step's score and update run on the bucket of its longest completion
RECIPES["grpo_buckets"] = RECIPES["grpo"].replace("return c", "c.learner.completion_buckets = (4, 8, 12)\n"
                                                  + 12 * " " + "return c")

# Qwen3-VL's tiny preset (16-px patches, learned positions, DeepStack), scanned as the 4B recipes are, packed rows:
# image-major vision input (16 patches per image slot); a length profile of 18-28-token rows with one 4-token image,
# 2-3 to a 64-token row
RECIPES["sft_qwen3_vl_packed"] = RECIPES["sft"].replace("return c", """c.model.preset = "qwen3_vl_tiny"
            c.model.scan_layers = True
            c.data.packing, c.data.image_slots = True, 4
            c.data.length_profile = dict(template_tokens=(4, 4), image_tokens=(4, 4), images=1,
                                         question_tokens=(4, 8), suffix_tokens=(0, 0), chain_tokens=(6, 12))
            return c""")


def _aot(tmp_path, kind: str, *extra: str):
    recipe = tmp_path / f"{kind}_recipe.py"
    recipe.write_text(textwrap.dedent(RECIPES[kind]))
    out = tmp_path / f"{kind}.json"
    cmd = [sys.executable, "-m", "robust_r1_jax.main", "--config=configs/aot.py", f"--config.recipe={recipe}",
           "--config.topology=v5p-8", f"--config.output={out}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return proc, out


def _check_common(row):
    assert row["topology"] == "v5p-8" and row["chips"] == 4 and row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert row["argument_bytes"] > 0 and row["temp_bytes"] > 0
    assert row["peak_bytes"] >= row["argument_bytes"] + row["temp_bytes"] - row["alias_bytes"]
    assert row["hbm_bytes_per_chip"] == 95 * tpu_topology.GIB and row["fits"] is True
    assert "cost model" in row["note"]


def _sft_step_row(tmp_path, kind: str) -> dict:
    """The one program row of an SFT recipe's aot run (8 rows of 64 tokens), checked as every SFT row is."""
    proc, out = _aot(tmp_path, kind)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["programs"]
    assert row["program"] == "sft_step"
    _check_common(row)
    assert row["cost_model_s"] > 0 and row["flops_per_chip"] > 0 and 0 < row["mfu"] < 1
    assert row["tokens_per_s_per_chip"] == pytest.approx(8 * 64 / row["cost_model_s"] / 4)
    assert "sft_step" in proc.stdout and "MFU" in proc.stdout and "useful MFU" in proc.stdout
    return row


def test_sft_step_compiles_for_v5p_with_memory_and_cost(tmp_path):
    row = _sft_step_row(tmp_path, "sft")
    # donated state: the AdamW moments and parameters come back in place
    assert row["alias_bytes"] > 0.5 * row["argument_bytes"]
    # SPEC §8's rows (644-974 tokens) cut to 64: every slot holds a real token
    assert row["padding_fraction"] == 0 and row["useful_mfu"] == pytest.approx(row["mfu"])


@pytest.mark.slow
def test_packed_qwen3_vl_sft_step_compiles_for_v5p_with_memory_and_cost(tmp_path):
    """Issue 27 item 3: a Qwen3-VL recipe through the aot mode, on packed rows (the tower's image-major input)."""
    row = _sft_step_row(tmp_path, "sft_qwen3_vl_packed")
    # two or three examples of 18-28 tokens to a 64-token row: 12-45% padding
    assert 0.1 < row["padding_fraction"] < 0.5 and row["useful_mfu"] == pytest.approx(
        row["mfu"] * (1 - row["padding_fraction"]))
    from robust_r1_jax import aot
    cfg = aot.recipe_model_config(aot.load_recipe(str(tmp_path / "sft_qwen3_vl_packed_recipe.py")))
    assert cfg.model_type == "qwen3_vl" and cfg.scan_layers and cfg.vision.patch_dim == 3 * 2 * 16 * 16


def test_useful_share_of_sft_rows_at_the_robust_r1_profile():
    """Unpacked 2048-token rows of SPEC §8's profile are ~60% padding; packed 4096-token rows ~6%."""
    from robust_r1_jax import aot_programs
    from robust_r1_jax.model import config as model_config
    from robust_r1_jax.train import sft
    recipe, cfg = sft.default_config(), model_config.tiny()
    recipe.data.global_batch_size, recipe.data.seq_len, recipe.data.patch_bucket = 16, 2048, 1024
    assert 0.38 < aot_programs.sft_useful_share(recipe, cfg) < 0.41
    recipe.data.packing, recipe.data.global_batch_size, recipe.data.seq_len = True, 8, 4096
    recipe.data.patch_bucket, recipe.data.image_slots = 5 * 1024, 5
    assert 0.93 < aot_programs.sft_useful_share(recipe, cfg) < 0.95
    recipe.data.length_profile = dict(template_tokens=(10, 10), image_tokens=(0, 0), images=0,
                                      question_tokens=(10, 10), suffix_tokens=(0, 0), chain_tokens=(20, 20))
    assert aot_programs.sft_useful_share(recipe, cfg) == pytest.approx(40 * 102 / 4096, rel=0.01)


@pytest.mark.slow   # ~65 s here: every GRPO program plus the summary's learner at the profile's bucket
def test_grpo_programs_compile_for_v5p_and_a_program_that_does_not_fit_fails(tmp_path):
    proc, out = _aot(tmp_path, "grpo_buckets", "--config.hbm_limit_fraction=1e-9",
                     "--config.completion_profile=(12, 5)")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "does not fit v5p-8" in proc.stderr
    report = json.loads(out.read_text())
    rows = {r["program"]: r for r in report["programs"]}
    assert set(rows) == {"rollout_weights", "rollout", "score", "update"}
    for row in rows.values():
        row["fits"] = True   # every one is over a 1e-9 limit; the rest of the row is what a real limit gives
        _check_common(row)
    # the rollout decodes on its replicated copy (an argument) while the whole training state, the optimizer state
    # and the reference copy stay resident; the copy is made from the training state by its own program
    assert rows["rollout"]["other_resident_bytes"] > rows["update"]["other_resident_bytes"] > 0
    copy_bytes = rows["rollout_weights"]["output_bytes"]
    assert copy_bytes > 0 and rows["rollout"]["argument_bytes"] >= copy_bytes
    assert rows["rollout_weights"]["cost_model_s"] > 0
    g = report["grpo"]
    assert g["layout"] == "replicated" and g["profile"]["longest"] == 12 and g["profile"]["median"] == 5
    assert 0 < g["decode_roofline_s"] and 0 < g["decode_step_s"] and g["prefill_s"] > 0
    assert g["rollout_s"] == pytest.approx(g["prefill_s"] + 11 * g["decode_step_s"])
    assert g["rollout_full_horizon_s"] > g["rollout_s"] and g["rollout_full_horizon_s"] == rows["rollout"]["cost_model_s"]
    assert g["step_s"] == pytest.approx(g["rollout_weights_s"] + g["rollout_s"] + g["score_s"] + g["update_s"])
    assert g["samples_per_s_per_pflops"] == pytest.approx(8 / g["step_s"] / (4 * 0.459))
    assert "per PFLOP/s" in proc.stdout
    # the step's learner runs at its longest completion's bucket (12 of 16 columns), priced by its own programs
    # (at these microsecond sizes their times need not order as their columns do)
    assert g["learner_completion_bucket"] == 12
    assert g["learner_tokens"] == {"score": 8 * (48 + 12), "update": 8 * (48 + 12)}
    assert rows["score"]["tokens"] == rows["update"]["tokens"] == 8 * (48 + 16)
    assert g["score_full_horizon_s"] == rows["score"]["cost_model_s"]
    assert g["update_full_horizon_s"] == rows["update"]["cost_model_s"]
    assert g["score_s"] > 0 and g["update_s"] > 0
    # every program, the rollout's decode step included, has a cost-model time (the decode step's was -1 while the
    # token lookup's bounds mask was gathered across chips through a TPU custom call the model cannot cost)
    assert rows["rollout"]["mfu"] > 0 and rows["rollout"]["cost_model_s"] > 0
    assert rows["update"]["mfu"] > 0 and rows["score"]["cost_model_s"] > 0


@pytest.mark.slow
def test_qwen3_vl_grpo_programs_compile_for_v5p(tmp_path):
    """Issue 27 item 3: GRPO on a tiny Qwen3-VL through the aot mode: the rollout's copy of the weights (q/k norms,
    DeepStack mergers, the position table), its prefill and decode, the learner's score and update all fit."""
    RECIPES["grpo_qwen3_vl"] = RECIPES["grpo"].replace("return c", 'c.model.preset = "qwen3_vl_tiny"\n' + 12 * " "
                                                      + "return c")
    proc, out = _aot(tmp_path, "grpo_qwen3_vl", "--config.cost_estimate=False")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["program"]: r for r in json.loads(out.read_text())["programs"]}
    assert set(rows) == {"rollout_weights", "rollout", "score", "update"}
    for row in rows.values():
        _check_common(row)
    assert rows["rollout"]["argument_bytes"] >= rows["rollout_weights"]["output_bytes"] > 0


def test_grpo_learner_compiles_at_the_completion_bucket_of_the_step(tmp_path):
    """A step whose longest completion is 3 tokens: score and update compile for the 4-token bucket (prompt 48 +
    4 columns per row instead of 48 + 16), and only the programs asked for are compiled."""
    proc, out = _aot(tmp_path, "grpo_buckets", "--config.learner_completion=3", "--config.programs=('score', 'update')",
                     "--config.cost_estimate=False")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["program"]: r for r in json.loads(out.read_text())["programs"]}
    assert set(rows) == {"score", "update"}
    # the learner's tokens: 4 prompts x 2 samples x (48 + 4); the real ones from the profile (prompt capped at 48,
    # chain at 4): no padding left
    assert rows["score"]["tokens"] == rows["update"]["tokens"] == 8 * 52
    assert rows["score"]["padding_fraction"] == pytest.approx(0.0)
    for row in rows.values():
        _check_common(row)


LEARNER_CHECK = """
import sys
import jax
from robust_r1_jax import aot, aot_decode, aot_programs, tpu_topology
recipe = aot.load_recipe(sys.argv[1])
mesh = aot.mesh_for(recipe, tpu_topology.devices(tpu_topology.parse_slice("v5p-8")))
cfg = aot.recipe_model_config(recipe, "tpu")
arguments = lambda args: str(jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), args))
describe = lambda p: (p.name, p.model_flops, p.tokens, p.other_resident_bytes, p.useful_tokens, p.splash_tiles,
                      arguments(p.compiled.args), [arguments(c.args) for c in p.cost_parts(cfg)])
with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    whole = [describe(p) for p in aot_programs.for_recipe(recipe, cfg, mesh, learner_completion=3)
             if p.name in ("score", "update")]
    def refuse(*args, **kwargs):
        raise AssertionError("the rollout's weights were built for the learner alone")
    aot_decode.model_weights = refuse
    alone = [describe(p) for p in aot_programs.grpo_learner_programs(recipe, cfg, mesh, 3)]
print("learner", [d[0] for d in alone], "same" if alone == whole else f"differ: {alone} vs {whole}")
"""


def test_the_learner_programs_alone_are_those_of_the_whole_grpo_step(tmp_path):
    """``grpo_learner_programs`` (the aot summary's learner at the profile's bucket) gives the score and update
    ``for_recipe`` gives at that bucket (arguments, shardings, FLOPs, tokens, bytes, tiles, cost variants) without
    building the rollout's programs."""
    recipe = tmp_path / "grpo_recipe.py"
    recipe.write_text(textwrap.dedent(RECIPES["grpo_buckets"]))
    proc = subprocess.run([sys.executable, "-c", LEARNER_CHECK, str(recipe)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "learner ['score', 'update'] same" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow   # two compiles of the update for v5p-8: ~1.5 min on this project's loaded CPU machine
def test_a_micro_batched_update_holds_one_micro_batchs_activations(tmp_path):
    """16 prompts x 4 samples of 48 + 256 tokens on 4 chips (4 prompt groups per chip): with
    grpo.update_microbatches = 2 the compiler's temporaries fall by more than half, so each micro-batch stays
    spread over every chip (rl/grpo.py update_step)."""
    sizes = "'grpo.num_samples=4', 'sampling.max_new_tokens=256', 'data.global_batch_size=16'"
    rows = {}
    for count in (1, 2):
        proc, out = _aot(tmp_path, "grpo", "--config.programs=('update',)", "--config.cost_estimate=False",
                         f"--config.recipe_overrides=({sizes}, 'grpo.update_microbatches={count}')")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (rows[count],) = json.loads(out.read_text())["programs"]
        _check_common(rows[count])
    # measured 2026-12-06 (libtpu 0.0.42.1): 101.3 and 44.1 MB (M = 4: 26.8); the fp32 gradient accumulator is a
    # few MB at this size
    assert rows[2]["temp_bytes"] < 0.55 * rows[1]["temp_bytes"], (rows[1]["temp_bytes"], rows[2]["temp_bytes"])
    assert rows[1]["argument_bytes"] == rows[2]["argument_bytes"]


SPLASH_CHECK = """
import sys
import jax
from robust_r1_jax import aot, aot_programs, tpu_topology
recipe = aot.load_recipe(sys.argv[1])
slice_ = tpu_topology.parse_slice("v5p-8")
mesh = aot.mesh_for(recipe, tpu_topology.devices(slice_))
cfg = aot.recipe_model_config(recipe, mesh.devices.flat[0].platform)
with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    (program,) = aot_programs.for_recipe(recipe, cfg, mesh)
    compiled = program.compiled.fn.lower(*program.compiled.args).compile()
print("attention", cfg.attention_impl, "kernels", compiled.as_text().count("tpu_custom_call"),
      "temp", compiled.memory_analysis().temp_size_in_bytes)
"""


def test_splash_tiles_of_sft_rows_at_the_robust_r1_profile():
    """The language model's causal 512-tiles per head a row computes (of 10 at 2048 tokens, 36 at 4096): one
    650-950-token example per 2048-row, its 3 tiles and the padding's 2 more diagonal ones; packed 4096-rows of
    ~4.8 examples, the block diagonal they make, under half the causal tiles; rows of one-token examples, the
    diagonal alone."""
    from robust_r1_jax import aot_programs
    from robust_r1_jax.model import config as model_config
    from robust_r1_jax.train import sft
    recipe, cfg = sft.default_config(), model_config.tiny()
    recipe.data.global_batch_size, recipe.data.seq_len, recipe.data.patch_bucket = 16, 2048, 1024
    (unpacked,) = aot_programs.sft_splash_tiles(recipe, cfg).items()
    assert unpacked[0] == (2048, True) and 4.9 < unpacked[1] < 5.5
    recipe.data.packing, recipe.data.global_batch_size, recipe.data.seq_len = True, 8, 4096
    recipe.data.patch_bucket, recipe.data.image_slots = 5 * 1024, 5
    (packed,) = aot_programs.sft_splash_tiles(recipe, cfg).items()
    assert packed[0] == (4096, True) and 15.0 < packed[1] < 18.0
    recipe.data.length_profile = dict(template_tokens=(1, 1), image_tokens=(0, 0), images=0,
                                      question_tokens=(0, 0), suffix_tokens=(0, 0), chain_tokens=(0, 0))
    assert aot_programs.sft_splash_tiles(recipe, cfg)[(4096, True)] == 8.0


def test_splash_tiles_of_grpo_learner_rows_at_the_robust_r1_profile():
    """Learner rows: a ~510-token prompt left-padded to 512, a 150-450-token chain, right padding to the bucket.
    At the full horizon (2560 = 5 tiles of 512) the prompt tile, the chain's tile and the 3 padding tiles'
    diagonal: 6 of the 15 causal tiles; at the 512 bucket all 3 causal tiles of the 1024-token row."""
    from robust_r1_jax import aot, aot_programs
    from robust_r1_jax.model import config as model_config
    recipe = aot.load_recipe("configs/grpo_qwen2_5_vl_3b.py:v5p8")
    assert aot_programs.grpo_splash_tiles(recipe, model_config.tiny(), 2048) == {(2560, True): 6.0}
    assert aot_programs.grpo_splash_tiles(recipe, model_config.tiny(), 512) == {(1024, True): 3.0}


@pytest.mark.slow   # ~50 s on 2 cores; the default step keeps the xla-attention v5p compile and the splash cost tests
def test_sft_step_with_splash_attention_compiles_for_v5p(tmp_path):
    """attention "auto" resolves to splash for a TPU slice; the step compiles with the Pallas kernels in it
    (the decoder's forward, dq and dk/dv; the frozen vision tower's forward), and through the aot mode, whose
    cost variants price those kernels."""
    recipe = tmp_path / "sft_splash_recipe.py"
    auto = 'c.model.attention_impl = "auto"\n    return c'
    recipe.write_text(textwrap.dedent(RECIPES["sft"]).replace("return c", auto))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SPLASH_CHECK, str(recipe)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    words = proc.stdout.split()
    assert words[words.index("attention") + 1] == "splash"
    assert int(words[words.index("kernels") + 1]) >= 3
    out = tmp_path / "splash.json"
    proc = subprocess.run([sys.executable, "-m", "robust_r1_jax.main", "--config=configs/aot.py",
                           f"--config.recipe={recipe}", "--config.topology=v5p-8", f"--config.output={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["programs"]
    _check_common(row)
    # the cost variants run splash too, priced through its CostEstimate: a positive time, and the counted FLOPs
    # cover the 6 N tokens the MFU is made of (plus the attention's and the frozen vision tower's own)
    assert row["cost_model_s"] > 0 and 0 < row["mfu"] < 1
    # the report names the kernel and the tiles it priced (the tiny recipe's 64-token rows: one 128-lane tile)
    assert row["attention"] == "splash" and row["splash_tiles"] == [dict(sequence=128, causal=True, tiles=1.0, of=1)]
    assert "attention: splash" in proc.stdout
    model_flops_per_chip = row["mfu"] * tpu_topology.parse_slice("v5p-8").generation.peak_bf16_flops * row[
        "cost_model_s"]
    assert row["flops_per_chip"] > model_flops_per_chip


SPLASH_COST_CHECK = """
import jax, jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
from robust_r1_jax import aot_splash_cost, tpu_topology
from robust_r1_jax.model import splash
device = SingleDeviceSharding(tpu_topology.devices(tpu_topology.parse_slice("v5p-8"))[0])
spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device)
def cost(causal):
    f = lambda q, k, v, s: splash.splash_attention(q, k, v, s, causal=causal).astype(jnp.float32).sum()
    args = spec(1, 1024, 4, 128), spec(1, 1024, 2, 128), spec(1, 1024, 2, 128), jax.ShapeDtypeStruct(
        (1, 1024), jnp.int32, sharding=device)
    c = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(*args).compile().cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return c.get("flops", 0.0), c.get("transcendentals", 0.0), c["optimal_seconds"]
print("before", *cost(True))
with aot_splash_cost.splash_cost_estimates():
    print("causal", *cost(True))
    print("full", *cost(False))
with aot_splash_cost.splash_cost_estimates({(1024, True): 2.0}):
    print("expected", *cost(True))
print("after", *cost(True))
"""


@pytest.mark.slow   # ~25 s on 2 cores; test_aot's tile-count tests stay in the default step
def test_splash_kernels_are_priced_by_their_tiles_only_inside_the_cost_context(tmp_path):
    """Causal splash, q [1, 1024, 4 heads, 128] over 2 KV heads, 512-tiles: 3 of the 4 tiles computed (2 where
    the expected tiles say so), 18 bq bkv D FLOPs per head and tile over the forward (4), dq (6) and dk/dv (8)
    kernels, one exp per score and kernel.
    Outside the context the same program's kernels cost nothing (jax's splash declares no CostEstimate)."""
    proc = subprocess.run([sys.executable, "-c", SPLASH_COST_CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ("before", "causal", "full", "expected", "after")}
    tile = 4 * 512 * 512   # heads x bq x bkv
    assert rows["after"] == rows["before"] and rows["before"][1] == 0   # no kernel cost, no leak after exit
    # (approx: the block tables' own element-wise ops, under 0.1% of the kernels' FLOPs, differ by mask)
    assert rows["causal"][0] - rows["before"][0] == pytest.approx(18 * 3 * tile * 128, rel=1e-3)
    assert rows["full"][0] - rows["before"][0] == pytest.approx(18 * 4 * tile * 128, rel=1e-3)
    assert rows["causal"][1] == 3 * 3 * tile and rows["full"][1] == 3 * 4 * tile
    # the tiles the data needs, where the caller gives them (aot_programs.sft_splash_tiles): 2 of the 3
    assert rows["expected"][0] - rows["before"][0] == pytest.approx(18 * 2 * tile * 128, rel=1e-3)
    assert rows["full"][2] > rows["causal"][2] > rows["before"][2] > 0


@pytest.mark.parametrize("q_len,kv_len,bq,bkv,causal,pairs", [
    (1024, 1024, 512, 512, True, 3), (2048, 2048, 512, 512, True, 10), (2048, 2048, 512, 512, False, 16),
    (1024, 1024, 256, 512, True, 6), (128, 128, 128, 128, True, 1)])
def test_splash_tile_pairs(q_len, kv_len, bq, bkv, causal, pairs):
    from robust_r1_jax import aot_splash_cost
    assert aot_splash_cost.tile_pairs(q_len, kv_len, bq, bkv, causal) == pairs


def test_splash_cost_patch_is_active_only_inside_its_context():
    from jax.experimental import pallas as pl
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_module
    from robust_r1_jax import aot_splash_cost
    assert not aot_splash_cost.active() and kernel_module.pl is pl
    with aot_splash_cost.splash_cost_estimates():
        assert aot_splash_cost.active() and kernel_module.pl.BlockSpec is pl.BlockSpec
        with pytest.raises(RuntimeError, match="already active"):
            with aot_splash_cost.splash_cost_estimates():
                pass
    assert not aot_splash_cost.active() and kernel_module.pl is pl
    with pytest.raises(ZeroDivisionError):
        with aot_splash_cost.splash_cost_estimates():
            raise ZeroDivisionError
    assert kernel_module.pl is pl


COLLECTIVES_CHECK = """
import dataclasses, re, sys, jax
from robust_r1_jax import aot, aot_programs, tpu_topology
recipe = aot.load_recipe(sys.argv[1])
recipe.model.dtype = "bfloat16"
slice_ = tpu_topology.parse_slice("v5p-8")
mesh = aot.mesh_for(recipe, tpu_topology.devices(slice_))
cfg = aot.recipe_model_config(recipe, "tpu")
width = int(sys.argv[2])
if width:
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, hidden_size=width, intermediate_size=2 * width,
                                               num_attention_heads=width // 16),
                      vision=dataclasses.replace(cfg.vision, out_hidden_size=width))
with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    (program,) = aot_programs.for_recipe(recipe, cfg, mesh)
    text = program.compiled.fn.lower(*program.compiled.args).compile().as_text()
for leaf in jax.tree.leaves(program.compiled.args[0].trainable):
    if leaf.ndim >= 2 and leaf.sharding.shard_shape(leaf.shape) != leaf.shape:   # split over fsdp
        print("PARAM", ",".join(map(str, leaf.shape)))
computation = ""
for line in text.splitlines():
    if line and not line.startswith(" "):
        computation = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
    match = re.search(r"= (.*?) (all-gather|all-reduce|reduce-scatter)(-start)?\\(", line)
    if not match:
        continue
    kind = match.group(2)
    # TPU's reduce-scatter: an all-reduce + dynamic-slice inside an "all-reduce-scatter" kCustom fusion
    if kind == "all-reduce" and computation.startswith("%all-reduce-scatter"):
        kind = "reduce-scatter"
    for dtype, dims in re.findall(r"(bf16|f32|s32|pred)\\[([\\d,]*)\\]", match.group(1)):
        print(kind.upper(), dtype, dims or "-")
"""


def _collectives(tmp_path, width: int) -> tuple[set, list]:
    recipe = tmp_path / "sft_recipe.py"
    recipe.write_text(textwrap.dedent(RECIPES["sft"]))
    proc = subprocess.run([sys.executable, "-c", COLLECTIVES_CHECK, str(recipe), str(width)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    params = {tuple(map(int, r[1].split(","))) for r in rows if r[0] == "PARAM"}
    ops = [(r[0], r[1], tuple(int(d) for d in r[2].split(",")) if r[2] != "-" else ()) for r in rows
           if r[0] in ("ALL-GATHER", "ALL-REDUCE", "REDUCE-SCATTER")]
    return params, ops


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def test_fsdp_gathers_bf16_weights_and_reduce_scatters_gradients(tmp_path):
    """fp32 master weights, bf16 compute, fsdp=4 on v5p: every all-gather of a matrix moves bf16 bytes (the cast
    happens on the shard, before the gather), and the big weight gradients leave the backward pass through a
    reduce-scatter onto the chip's shard, never as an all-reduce of the full matrix (issue 13, item 4).

    On TPU a reduce-scatter is compiled as an "all-reduce-scatter" kCustom fusion whose body holds an all-reduce
    and a dynamic-slice: counting those inner all-reduces as all-reduces is what made an earlier HLO reading
    report full-size gradient all-reduces. Gradients are matched to weights by element count (layout assignment
    may regroup a weight's trailing dimensions). The text model is widened to 128: at this size XLA still
    all-reduces the 16K-element attention projections' gradients in one combined op (latency-bound sizes) but
    reduce-scatters the MLP and embedding ones; in the 3B step every gradient is reduce-scattered (the aot
    notes give the 3B HLO's collective bytes)."""
    width = 128
    params, ops = _collectives(tmp_path, width=width)
    gathers = [dtype for kind, dtype, shape in ops if kind == "ALL-GATHER" and len(shape) >= 2
               and dtype in ("bf16", "f32")]
    assert len(gathers) >= 8 and set(gathers) == {"bf16"}, ops
    big = {_size(shape) for shape in params if _size(shape) >= 2 * width * width}   # MLP matrices, embedding
    assert len(big) >= 2
    all_reduced = {_size(shape) for kind, dtype, shape in ops if kind == "ALL-REDUCE"}
    assert not big & all_reduced, (params, ops)
    scattered = {_size(shape) for kind, dtype, shape in ops if kind == "REDUCE-SCATTER" and dtype == "bf16"}
    assert big <= scattered, (params, ops)


def test_recipe_overrides_set_typed_fields_and_refuse_unknown_keys():
    from robust_r1_jax import aot
    recipe = aot.load_recipe("configs/grpo_qwen2_5_vl_3b.py:v6e8")
    aot.apply_overrides(recipe, ("sampling.max_new_tokens=2048", "grpo.logprob_chunk=128"))
    assert (recipe.sampling.max_new_tokens, recipe.grpo.logprob_chunk) == (2048, 128)
    for bad in ("sampling.max_new_token=1", "sampling.max_new_tokens=many", "no_equals_sign"):
        with pytest.raises(ValueError, match="recipe override"):
            aot.apply_overrides(recipe, (bad,))


def test_collective_bytes_reads_result_shapes_of_each_collective_once():
    from robust_r1_jax import aot_decode
    hlo = "\n".join([
        "  %all-reduce.1 = bf16[128,16,128]{2,0,1} all-reduce(%x), channel_id=1",
        "  %ag = (bf16[4,8]{1,0}, f32[2]{0}) all-gather(%a, %b), dimensions={0}",
        "  %ars = bf16[32,2,128]{2,1,0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter",   # not an op itself
        "  %rs-start = f32[10]{0} reduce-scatter-start(%z)",
        "  %add = f32[10]{0} add(%p, %q)"])
    assert aot_decode.collective_bytes(hlo) == {"all-reduce": 128 * 16 * 128 * 2, "all-gather": 4 * 8 * 2 + 2 * 4,
                                                "reduce-scatter": 40}


def test_decode_attends_follow_the_length_buckets():
    from robust_r1_jax.aot_programs import decode_attends
    assert decode_attends(512, 2048, 2560, 256, 5) == [768] * 5
    attends = decode_attends(512, 2048, 2560, 256, 1023)
    assert attends[254] == 768 and attends[255] == 1024 and attends[-1] == 1536 and len(attends) == 1023
    assert decode_attends(512, 2048, 2560, 0, 3) == [2560] * 3


TENSOR_DECODE_CHECK = """
import sys
import jax, numpy as np
from robust_r1_jax import aot, aot_decode, tpu_topology
recipe = aot.apply_overrides(aot.load_recipe(sys.argv[1]), ("rollout.layout=tensor",))
slice_ = tpu_topology.parse_slice("v5p-8")
mesh = aot.mesh_for(recipe, tpu_topology.devices(slice_))
cfg = aot.recipe_model_config(recipe, "tpu")
with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    for name, case in dict(replicated=aot_decode.DecodeCase("r", "replicated"),
                           tensor=aot_decode.DecodeCase("t", "tensor"),
                           whole=aot_decode.DecodeCase("w", "tensor", vocab_split=False)).items():
        need = aot_decode.roofline_bytes(recipe, cfg, mesh, case)
        coll = aot_decode.collective_bytes(aot_decode.compile_case(recipe, cfg, mesh, case).as_text())
        print(name, need["weights"], need["kv"], coll.get("all-reduce", 0), coll.get("all-gather", 0),
              sum(coll.values()))
print("cfg", cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.text.vocab_size, np.dtype(cfg.dtype).itemsize)
from robust_r1_jax import aot_programs
try:
    aot_programs.grpo_programs(aot.apply_overrides(recipe, ("rollout.tensor_parallel=4",)), cfg, mesh)
except ValueError as refused:
    print("refused", refused)
"""


def test_tensor_rollout_layout_halves_the_weights_read_for_two_all_reduces_per_layer(tmp_path):
    """The "tensor" decode step on v5p-8 (rollout mesh data 2 x tensor 2, 8 rows, 4 per data shard): each chip
    holds half of the language weights (norms whole: ratio 0.5015 on this model) and the same KV bytes (twice the
    rows, half the KV heads); its collectives are exactly the Megatron pair per layer plus the vocab-split
    embedding lookup, all-reduces of [4, hidden], and one all-gather of the [4, vocab] logits, never of the
    head's weights; the replicated copy has none; with the vocabulary whole there is no gather. A tensor axis
    the KV heads cannot split is refused before anything compiles."""
    recipe = tmp_path / "grpo_recipe.py"
    recipe.write_text(textwrap.dedent(RECIPES["grpo"]))
    proc = subprocess.run([sys.executable, "-c", TENSOR_DECODE_CHECK, str(recipe)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r[0]: [int(v) for v in r[1:]] for r in (line.split() for line in proc.stdout.splitlines())
            if r and r[0] != "refused"}
    hidden, layers, vocab, itemsize = rows["cfg"]
    (rep_w, rep_kv, *rep_coll), (ten_w, ten_kv, reduce, gather, total) = rows["replicated"], rows["tensor"]
    assert rep_coll == [0, 0, 0]
    assert 0.5 < ten_w / rep_w < 0.502 and ten_kv == rep_kv > 0
    per_shard = 4
    assert reduce == (2 * layers + 1) * per_shard * hidden * itemsize
    assert gather == per_shard * vocab * 4 and total == reduce + gather   # float32 logits, nothing else moved
    assert "refused config.rollout.tensor_parallel=4 does not divide the model's 2 KV heads" in proc.stdout
    whole_w, _, whole_reduce, whole_gather, _ = rows["whole"]
    assert whole_w > ten_w and whole_reduce == 2 * layers * per_shard * hidden * itemsize and whole_gather == 0


@pytest.mark.slow   # the GRPO programs compiled for v5p-8: ~1.5 min on 2 cores
def test_grpo_programs_compile_with_the_tensor_rollout_layout(tmp_path):
    """rollout.layout="tensor": the copy program reshards the state onto the rollout mesh (half the language
    weights per chip), the rollout and its prefill compile on that mesh, and the GRPO summary prices the copy
    once per step."""
    proc, out = _aot(tmp_path, "grpo", "--config.completion_profile=(12, 5)",
                     "--config.recipe_overrides=('rollout.layout=tensor',)")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["program"]: r for r in report["programs"]}
    assert set(rows) == {"rollout_weights", "rollout", "score", "update"}
    for row in rows.values():
        _check_common(row)
    copy_bytes = rows["rollout_weights"]["output_bytes"]
    assert 0 < copy_bytes <= rows["rollout"]["argument_bytes"] and rows["rollout_weights"]["cost_model_s"] > 0
    g = report["grpo"]
    assert g["layout"] == "tensor" and g["rollout_weights_s"] == rows["rollout_weights"]["cost_model_s"]
    assert g["step_s"] == pytest.approx(g["rollout_weights_s"] + g["rollout_s"] + g["score_s"] + g["update_s"])
    assert g["rollout_s"] == pytest.approx(g["prefill_s"] + 11 * g["decode_step_s"])


def test_the_table_keeps_a_long_program_name_apart_from_its_slice():
    row = dict(program="rollout_weights", topology="v5p-8", mesh={"data": 1, "fsdp": 4, "tensor": 1}, compile_s=1.0,
               argument_bytes=None, temp_bytes=None, peak_bytes=None, hbm_bytes_per_chip=None, fits=None,
               cost_model_s=None, tokens_per_s_per_chip=None, mfu=None, useful_tokens_per_s_per_chip=None,
               useful_mfu=None)
    header, line = aot.table([row, dict(row, program="decode")]).splitlines()[:2]
    assert header.split()[:3] == ["program", "slice", "mesh"]
    assert line.split()[:4] == ["rollout_weights", "v5p-8", "1x4x1", "1.0"]
    assert header.index("slice") == line.index("v5p-8")


def test_the_report_names_the_attention_it_compiled_and_the_tiles_splash_is_priced_at():
    """A recipe left on xla attention says so (and how to get splash); a splash row names its priced tiles."""
    xla = dict(program="sft_step", attention="xla", splash_tiles=None)
    assert aot.attention_note([xla]).startswith("attention: xla (the recipe's model.attention_impl")
    packed = dict(program="sft_step", attention="splash",
                  splash_tiles=[dict(sequence=4096, causal=True, tiles=16.859375, of=36)])
    assert aot.attention_note([packed]) == (
        "attention: splash, priced by aot_splash_cost's tile-level CostEstimate; the language model's at the tiles "
        "its rows need at the length profile: sft_step 16.9 of 36 causal tiles per head at 4096 tokens")


def _aot_recipe_file(spec: str, *overrides: str):
    cmd = [sys.executable, "-m", "robust_r1_jax.main", "--config=configs/aot.py", f"--config.recipe={spec}",
           "--config.topology=v5p-8", *(f"--config.recipe_overrides={o}" for o in overrides)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_a_batch_the_slice_cannot_split_is_one_line_naming_the_override():
    proc = _aot_recipe_file("configs/grpo_tiny.py")   # 2 prompts over v5p-8's 4 chips
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config.data.global_batch_size=2 is not divisible by the 4 batch shards of the mesh (data=4 x fsdp=1 "
        "over 4 devices): use a multiple of 4 (aot: --config.recipe_overrides='(\"data.global_batch_size=4\",)')")


def test_packed_examples_no_row_holds_are_one_line_naming_the_overrides():
    proc = _aot_recipe_file("configs/sft_tiny.py", "data.packing=True", "data.seq_len=512")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config.data.length_profile: its examples need up to 1024 patches and 1 image(s) (512 tokens kept at "
        "data.seq_len=512), more than one packed row holds (data.patch_bucket=64, data.image_slots=1): raise "
        "data.seq_len / data.patch_bucket to the recipe's real rows, or give a data.length_profile whose examples "
        "fit (aot: --config.recipe_overrides='(\"data.patch_bucket=1024\",)')")


def test_a_program_the_default_compile_cannot_price_is_priced_streamed_and_marked(monkeypatch):
    """libtpu's cost analysis gives no estimate for every v6e SFT step: the cost variants are then compiled without
    memory space assignment, and the row says so (MFU from that figure)."""
    from robust_r1_jax import aot_decode
    from robust_r1_jax.model import config as model_config
    seen = []

    def fake_compile(part, options=None):
        seen.append(options)
        return options

    def fake_cost(options):   # no estimate by default; 1 s at every depth when streamed
        return {"flops": 2e12, "seconds": 1.0 if options == aot_decode.STREAMED_COMPILER_OPTIONS else -1.0}

    monkeypatch.setattr(aot, "_compile", fake_compile)
    monkeypatch.setattr(aot, "_cost", fake_cost)
    program = aot.Program("sft_step", aot.Compiled(None, ()), model_flops=4e15, tokens=1000, other_resident_bytes=0,
                          cost_parts=lambda variant: [aot.Compiled(None, ())], useful_tokens=500.0)
    slice_ = tpu_topology.parse_slice("v6e-8")
    row = aot.measure(program, slice_, mesh=_FakeMesh(), cfg=model_config.tiny(), cost_estimate=True, memory=False)
    assert seen[0] is None and aot_decode.STREAMED_COMPILER_OPTIONS in seen
    assert row["cost_model_s"] == pytest.approx(1.0) and row["cost_pricing"].startswith("streamed")
    assert row["mfu"] == pytest.approx(4e15 / (8 * slice_.generation.peak_bf16_flops * 1.0))
    assert row["useful_mfu"] == pytest.approx(row["mfu"] / 2)
    assert "cost of sft_step: streamed" in aot.table([row])


def test_priced_cost_turns_sliced_prefetches_off_then_streams_only_without_an_estimate(monkeypatch):
    """Default first; where it gives none (v6e: the ConcatBitcast of sliced prefetches), the same compile with
    sliced prefetches off; then streamed. The GRPO summary prices the rollout's prefill through this too (v6e's
    default compile gave -10 s)."""
    from robust_r1_jax import aot_decode
    from robust_r1_jax.model import config as model_config
    parts = lambda variant: [aot.Compiled(None, ())]
    monkeypatch.setattr(aot, "_compile", lambda part, options=None: options)
    cases = (((0.5, 3.0, 2.0), (0.5, "default")), ((-10.0, 3.0, 2.0), (3.0, "unsliced")),
             ((-10.0, -1.0, 2.0), (2.0, "streamed")), ((-10.0, -1.0, -1.0), (-1.0, "streamed")))
    for (default_s, unsliced_s, streamed_s), (want_s, want_pricing) in cases:
        by_options = lambda options, d=default_s, u=unsliced_s, st=streamed_s: {
            "flops": 1.0, "seconds": {None: d, str(aot_decode.UNSLICED_PREFETCH_OPTIONS): u,
                                      str(aot_decode.STREAMED_COMPILER_OPTIONS): st}[None if options is None
                                                                                     else str(options)]}
        monkeypatch.setattr(aot, "_cost", by_options)
        cost, pricing = aot.priced_cost(parts, model_config.tiny())
        assert (cost["seconds"], pricing) == (pytest.approx(want_s), want_pricing)


def test_a_program_priced_with_sliced_prefetches_off_says_so(monkeypatch):
    from robust_r1_jax import aot_decode
    from robust_r1_jax.model import config as model_config
    monkeypatch.setattr(aot, "_compile", lambda part, options=None: options)
    monkeypatch.setattr(aot, "_cost", lambda options: {
        "flops": 2e12, "seconds": 1.0 if options == aot_decode.UNSLICED_PREFETCH_OPTIONS else -1.0})
    program = aot.Program("sft_step", aot.Compiled(None, ()), model_flops=4e15, tokens=1000, other_resident_bytes=0,
                          cost_parts=lambda variant: [aot.Compiled(None, ())])
    row = aot.measure(program, tpu_topology.parse_slice("v6e-8"), mesh=_FakeMesh(), cfg=model_config.tiny(),
                      cost_estimate=True, memory=False)
    assert row["cost_model_s"] == pytest.approx(1.0) and "sliced prefetches off" in row["cost_pricing"]
    assert "cost of sft_step: default memory space assignment with sliced prefetches off" in aot.table([row])


class _FakeMesh:
    shape = {"data": 1, "fsdp": 8, "tensor": 1}


def test_decode_cases_are_priced_by_the_programs_chain_keeping_cross_program_prefetch_off(monkeypatch):
    """One fallback chain (``aot.first_priced``) for programs and decode cases: default, sliced prefetches off,
    streamed; every decode pricing compiles without cross-program prefetch."""
    from robust_r1_jax import aot_decode
    assert [key for key, _ in aot_decode.DECODE_PRICINGS] == [key for key, _ in aot.PROGRAM_PRICINGS]
    assert all(options["xla_max_cross_program_prefetches"] == 0 for _, options in aot_decode.DECODE_PRICINGS)
    tried = []

    def case_cost(recipe, model_cfg, mesh, case, options):
        tried.append(options)
        return {"seconds": 2.0 if options.get("xla_tpu_sliced_prefetch_max_slices") == 0 else -1.0}
    monkeypatch.setattr(aot_decode, "case_cost", case_cost)
    cost, pricing = aot_decode.priced_case_cost(None, None, None, aot_decode.DecodeCase("x"))
    assert (cost["seconds"], pricing) == (2.0, "unsliced") and len(tried) == 2
    tried.clear()
    monkeypatch.setattr(aot_decode, "case_cost", lambda *a: tried.append(a[-1]) or {"seconds": -1.0})
    cost, pricing = aot_decode.priced_case_cost(None, None, None, aot_decode.DecodeCase("x"))
    assert (cost["seconds"], pricing) == (-1.0, "streamed") and tried[-1] == aot_decode.STREAMED_COMPILER_OPTIONS
