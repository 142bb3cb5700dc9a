"""Print a checkpoint's layout, stored dtype, files (shards, tokenizer, processor, generation config), model config
and parameter counts (HF directory, orbax model or training checkpoint folder); or, for a dataset synth wrote (its
workdir, data folder or runs/synth/tfds/robust_r1/1.0.0), the split sizes, synth's summary (skipped records,
``<TYPE>`` aliases, ``max_images_per_prompt``) and the first ``inspect.num_examples`` (3) stored examples of each
split: question, options with the stored answer marked, the source's own prompt and its answer label
(``prompt_style=upstream``), degradations and chain.

python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=/path/to/checkpoint
python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=runs/synth
"""
from robust_r1_jax.model.convert import default_inspect_config


def get_config():
    return default_inspect_config()
