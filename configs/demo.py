"""The embedded default: ``python -m robust_r1_jax.main --config=configs/demo.py`` (no downloads, CPU-sized).

Synthesises shapes VQA with degradations and chains, trains a tokenizer, SFTs a small Qwen2.5-VL, runs GRPO,
evaluates both on held-out degraded images and writes runs/demo/report.md (see robust_r1_jax/demo.py).

The stages' configs are the modes' own (``synth``, ``sft``, ``rl``: each mode's ``default_config()`` with the
demo's overrides), so any of their fields can be set here or on the command line (``--config.sft.train.steps=2``).
The demo fills in only what earlier stages produce: workdirs, the dataset and tokenizer paths, the SFT model, the
sequence lengths measured on the data. ``seed`` and ``image_size`` are shared references: setting one sets it in
every stage.
"""
import ml_collections

from robust_r1_jax.data import synth
from robust_r1_jax.rl import grpo
from robust_r1_jax.train import sft


def get_config():
    seed = ml_collections.FieldReference(0)
    # 84 px = 6x6 patches = 3x3 language tokens, one per cell of the shapes grid.
    image_size = ml_collections.FieldReference(84)
    c = ml_collections.ConfigDict()
    c.mode = "demo"
    c.workdir = "runs/demo"
    c.seed = seed
    c.image_size = image_size

    c.synth = synth.default_config()
    s = c.synth.synth
    s.num_train, s.num_validation, s.image_size = 2400, 64, image_size
    s.min_degradations = s.max_degradations = 1
    s.seed, s.on_error = seed, "raise"
    # The shapes task narrowed for a model trained from scratch in minutes (data/shapes.py::Style): one large
    # object, colour and shape questions, options in palette order.
    s.shapes = ml_collections.ConfigDict(dict(
        kinds=("colour", "shape"), colours=("red", "green", "blue", "yellow"),
        shapes=("circle", "square", "triangle", "star"), max_distractors=0, sorted_options=True, object_scale=2.5))

    # max_token_length: merges may cross words up to this many bytes (phrase tokens; see demo.py).
    c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=4096, max_token_length=32))

    # SFT trains from scratch, so the vision tower learns too.
    c.sft = _stage(sft.default_config(), seed, image_size, steps=1000, batch_size=8)
    c.sft.train.freeze = ()
    c.sft.optim.learning_rate, c.sft.optim.warmup_steps, c.sft.optim.min_lr_ratio = 2e-3, 10, 0.1

    # GRPO keeps the vision tower frozen, as the paper does (the reference model then shares it), at the paper's
    # temperature 1.0 with nucleus 0.95: the tiny model's far tail ("lens blur(0315)") would otherwise put single
    # samples at r_deg = -313. The prompt pool: prompts come from the first 32 training examples, one epoch every
    # 8 steps, so the first and last 10% of steps score the same prompts and the rise is not buried under which
    # prompts a step happened to draw (their spread is ~1.0 in mean reward). Reward weights: the reference code's
    # (all four terms, weight 1); the paper's R = r_deg + r_len is accuracy=0, format=0.
    c.rl = _stage(grpo.default_config(), seed, image_size, steps=80, batch_size=4)
    c.rl.data.split = "train[:32]"
    c.rl.grpo.num_samples, c.rl.grpo.beta = 8, 0.04
    c.rl.sampling.temperature, c.rl.sampling.top_p = 1.0, 0.95
    c.rl.optim.learning_rate, c.rl.optim.warmup_steps, c.rl.optim.min_lr_ratio = 2e-4, 0, 1.0
    c.rl.rewards.variant = "paper"

    # The held-out check after each stage. new_token_margin: generations may run this much past the longest
    # training chain.
    c.eval = ml_collections.ConfigDict(dict(num_examples=64, batch_size=64, tsv_rows=48, new_token_margin=1.25))
    return c


def _stage(c, seed, image_size, *, steps: int, batch_size: int):
    """What the SFT and GRPO stages share: the demo preset at the demo's image size, one checkpoint at the end."""
    steps = ml_collections.FieldReference(steps)
    c.seed = seed
    c.model.preset = "demo"
    c.data.global_batch_size = batch_size
    c.data.patch_bucket = (image_size // 14) * (image_size // 14)
    c.data.min_pixels = c.data.max_pixels = image_size * image_size
    c.train.steps = c.train.checkpoint_every = steps
    c.train.log_every = max(1, steps.get() // 10)
    c.train.async_checkpoint = False
    return c
