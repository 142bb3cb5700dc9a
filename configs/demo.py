"""The embedded default: ``python -m robust_r1_jax.main --config=configs/demo.py`` (no downloads, CPU-sized).

Synthesises shapes VQA with degradations and chains, trains a tokenizer, SFTs a small Qwen2.5-VL, runs GRPO,
evaluates both on held-out degraded images and writes runs/demo/report.md (see robust_r1_jax/demo.py).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "demo"
    c.workdir = "runs/demo"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(preset="demo"))
    # 84 px = 6x6 patches = 3x3 language tokens, one per cell of the shapes grid.
    # max_token_length: merges may cross words up to this many bytes (phrase tokens; see demo.py).
    c.data = ml_collections.ConfigDict(dict(num_train=2400, num_validation=64, image_size=84, min_degradations=1,
                                            max_degradations=1, vocab_size=4096, max_token_length=32))
    # The shapes task narrowed for a model trained from scratch in minutes (data/shapes.py::Style): one large
    # object, colour and shape questions, options in palette order.
    c.data.shapes = ml_collections.ConfigDict(dict(
        kinds=("colour", "shape"), colours=("red", "green", "blue", "yellow"),
        shapes=("circle", "square", "triangle", "star"), max_distractors=0, sorted_options=True, object_scale=2.5))
    c.sft = ml_collections.ConfigDict(dict(steps=1000, batch_size=8, learning_rate=2e-3, warmup_steps=10,
                                           min_lr_ratio=0.1))
    # GRPO at the paper's temperature 1.0 with nucleus 0.95: the tiny model's far tail ("lens blur(0315)") would
    # otherwise put single samples at r_deg = -313. prompt_pool: prompts come from the first 32 training
    # examples, one epoch every 8 steps, so the first and last 10% of steps score the same prompts and the rise
    # is not buried under which prompts a step happened to draw (their spread is ~1.0 in mean reward).
    # reward weights: the reference code's (all four terms, weight 1); the paper's R = r_deg + r_len is
    # accuracy=0, format=0.
    c.rl = ml_collections.ConfigDict(dict(
        steps=80, batch_size=4, num_samples=8, prompt_pool=32, learning_rate=2e-4, warmup_steps=0,
        min_lr_ratio=1.0, beta=0.04, temperature=1.0, top_p=0.95, reward_variant="paper",
        reward_weights=ml_collections.ConfigDict(dict(accuracy=1.0, format=1.0, degradation=1.0, length=1.0))))
    # new_token_margin: generations may run this much past the longest training chain.
    c.eval = ml_collections.ConfigDict(dict(num_examples=64, batch_size=64, tsv_rows=48, new_token_margin=1.25))
    return c
