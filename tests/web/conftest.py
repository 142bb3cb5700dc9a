"""A tiny random model folder (Hugging Face layout, demo tokenizer, 56x56 image setting) and the web mode's config
pointing at it: what the web tests serve."""
import json

import pytest
from flax import nnx

from robust_r1_jax.data import chains, shapes
from robust_r1_jax.data import tokenizer as demo_tokenizer
from robust_r1_jax.web import samples

CHAIN = ("<TYPE>lens blur(0.42), noise(0.10)<TYPE_END>\n<INFLUENCE>edges are soft<INFLUENCE_END>\n"
         "<REASONING>the object has three corners<REASONING_END>\n<CONCLUSION>it is a triangle<CONCLUSION_END>\n"
         "<ANSWER>2<ANSWER_END>")


def tokenizer_texts():
    records = shapes.make_records(40, seed=0, image_size=56, style=samples.DEMO_STYLE)
    return [chains.format_prompt(r.question, r.options) for r in records] + [chains.PROMPT_SUFFIX, CHAIN]


def random_model(config, seed=0):
    """Qwen25VL with N(0, 0.02) weights and unit norm scales, drawn in NumPy: eager nnx initialisation compiles
    one small program per parameter (~25 s on a loaded 2-core machine), this takes milliseconds."""
    import jax
    import numpy as np

    from robust_r1_jax.model.vlm import Qwen25VL
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(leaf.shape, leaf.dtype)
        return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)
    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from robust_r1_jax.model import config as model_config
    from robust_r1_jax.model import hf
    directory = tmp_path_factory.mktemp("tiny_model")
    tokenizer = demo_tokenizer.train_demo_tokenizer(tokenizer_texts(), directory / "tokenizer", vocab_size=320)
    hf.save(random_model(model_config.tiny(vocab_size=len(tokenizer))), str(directory))  # replaces the folder
    tokenizer.save_pretrained(str(directory))
    # 56x56 = 4x4 patches of 14 px: every image is one small patch bucket
    (directory / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 56 * 56, "max_pixels": 56 * 56}))
    return str(directory)


@pytest.fixture(scope="session")
def web_config(model_dir):
    """The web mode's config on the tiny model: one prompt and one patch bucket, 24 sampled tokens (greedy, the
    random model repeats one newline)."""
    from configs.web import get_config
    config = get_config()
    config.checkpoint = model_dir
    config.sampling.max_new_tokens = 24
    config.sampling.temperature = 1.0
    config.prompt_buckets, config.patch_buckets = (512,), (16,)
    config.num_samples, config.sample_size = 2, 84
    return config


@pytest.fixture(scope="session")
def service(web_config):
    """One model service for every web test (loaded through the config, as the mode does), warmed up."""
    from robust_r1_jax.web.service import ModelService
    loaded = ModelService.from_config(web_config)
    first = samples.bundled_samples(1, web_config.sample_size)[0]
    loaded.warm_up(first.question, first.options, first.image)
    return loaded
