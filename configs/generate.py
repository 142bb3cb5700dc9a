"""Reasoning chains for your own images: ``python -m robust_r1_jax.main --config=configs/generate.py``.

One image, streamed to the terminal:
    --config.image=photo.png --config.question="What colour is the car?" --config.options='("red", "blue", "green")'
A folder, written as JSONL (one shared question, or --config.questions_file with one JSON line per image):
    --config.image_dir=photos --config.question="What is shown?" --config.output=runs/generate/photos.jsonl

With no checkpoint the demo model is used (runs/demo/rl/model, else runs/demo/sft/model; run the demo first).
Lists are tuples (a Python tuple in quotes, or the flag repeated); sampling is ``--config.sampling.*`` (unset
fields come from the model folder's generation_config.json, else greedy; --config.sampling.temperature=0 for greedy).
Every field and its default: ``robust_r1_jax.eval.generate.default_config``.
"""
from robust_r1_jax.eval.generate import default_config


def get_config():
    return default_config()
