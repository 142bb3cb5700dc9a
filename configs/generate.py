"""Reasoning chains for your own images: ``python -m robust_r1_jax.main --config=configs/generate.py``.

One image, streamed to the terminal:
    --config.image=photo.png --config.question="What colour is the car?" --config.options="red|blue|green"
A folder, written as JSONL (one shared question, or --config.questions_file with one JSON line per image):
    --config.image_dir=photos --config.question="What is shown?" --config.output=runs/generate/photos.jsonl

With no checkpoint the demo model is used (runs/demo/rl/model, else runs/demo/sft/model; run the demo first).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "generate"
    config.checkpoint = ""  # Hugging Face dir, orbax model checkpoint or training checkpoint folder
    config.tokenizer = ""  # "" = the checkpoint's own folder
    config.suffix = True  # append the SPEC §1 instruction suffix (off for base models)

    config.image = ""
    config.question = ""
    config.options = ""  # "|"-separated; empty for an open question

    config.image_dir = ""
    config.questions_file = ""  # JSONL: {"image": "name.png", "question": "...", "options": [...]}
    config.output = ""  # "" -> <workdir>/generations.jsonl
    config.workdir = "runs/generate"
    config.batch_size = 4
    config.prompt_buckets = "256,512,1024,2048"
    config.patch_buckets = "64,256,1024,4096"

    config.max_new_tokens = 1024
    config.temperature = 0.0  # greedy
    config.top_p = 1.0
    config.top_k = 0
    config.seed = 0
    config.min_pixels = 0
    config.max_pixels = 0
    config.dtype = "float32"
    return config
