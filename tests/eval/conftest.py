import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import eval_helpers  # noqa: E402

from robust_r1_jax.data import tokenizer as demo_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The demo tokenizer trained on shapes questions, the prompt suffix and a chain (specials at the top)."""
    directory = tmp_path_factory.mktemp("tokenizer")
    demo_tokenizer.train_demo_tokenizer(eval_helpers.tokenizer_texts(), directory, vocab_size=320)
    return str(directory)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from robust_r1_jax.model.processor import load_tokenizer
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def processor(tokenizer):
    from robust_r1_jax.model.processor import ImageProcessor, Processor
    return Processor(tokenizer, ImageProcessor())
