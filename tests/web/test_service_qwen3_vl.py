"""The playground on a tiny random Qwen3-VL folder (issue 27, item 3): the page's Run handler streams the greedy
chain transformers generates for the degraded image the page shows, and ends "done"."""
import os
import sys

import pytest
from conftest import tokenizer_texts

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qwen3_vl_folder  # noqa: E402

from robust_r1_jax.data import tokenizer as demo_tokenizer  # noqa: E402
from robust_r1_jax.eval import generate  # noqa: E402
from robust_r1_jax.model import generate as gen  # noqa: E402
from robust_r1_jax.model import loading  # noqa: E402
from robust_r1_jax.web import app, inputs, samples  # noqa: E402
from robust_r1_jax.web.service import ModelService  # noqa: E402

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def qwen3_vl_config(tmp_path_factory):
    from configs.web import get_config
    root = tmp_path_factory.mktemp("qwen3_vl_web")
    tokenizer = demo_tokenizer.train_demo_tokenizer(tokenizer_texts(), root / "tokenizer", vocab_size=320)
    config = get_config()
    config.checkpoint = qwen3_vl_folder.write(root / "model", tokenizer)
    config.sampling.temperature, config.sampling.max_new_tokens = 0.0, MAX_NEW_TOKENS
    config.prompt_buckets, config.patch_buckets = (512,), (16,)   # 64 x 64 px: 4 x 4 patches of 16 px
    config.num_samples, config.sample_size = 1, 84
    return config


def _handler(page, name: str):
    (fn,) = [block.fn for block in page.fns.values() if getattr(block.fn, "__name__", "") == name]
    return fn


@pytest.mark.slow   # 15-45 s on the 2-core CI machine, with its model fixture
def test_run_streams_transformers_greedy_chain_on_the_degraded_image(qwen3_vl_config):
    config = qwen3_vl_config
    service = ModelService.from_config(config)
    assert service.model.config.model_type == "qwen3_vl" and service.processor.image_processor.patch_size == 16
    sample = samples.bundled_samples(1, config.sample_size)[0]
    events = list(_handler(app.build(service, config), "on_run")(
        sample.image, sample.question, "\n".join(sample.options), "noise", 0.5, 3))
    raw, _, _, stats, status = events[-1]
    assert status == "done" and len(events) >= 4   # the status line, the growing text, "done"

    degraded = inputs.apply(sample.image, inputs.plan("noise", 0.5, 3))
    processor = loading.load_processor(config.checkpoint)
    encoded = processor.encode(generate.prompt_text(sample.question, sample.options, True), [degraded])
    ids, _ = qwen3_vl_folder.transformers_greedy(config.checkpoint, encoded, MAX_NEW_TOKENS)
    stops = set(gen.default_stop_token_ids(service.model.config))
    want = processor.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
    assert len(set(ids)) >= 3 and raw == want
    assert stats.startswith(f"done · {len(ids)} tokens"), stats
