"""benchmarks/sft_pricing.py: one pricing with extra XLA options, on the tiny recipe for v5p-8 (libtpu, no TPU)."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
pytest.importorskip("libtpu")


def test_xla_options_parse_to_typed_values_and_refuse_a_bare_name():
    import sft_pricing
    assert sft_pricing.xla_option("a=false") == ("a", False) and sft_pricing.xla_option("b=3") == ("b", 3)
    assert sft_pricing.xla_option("c=0.5") == ("c", 0.5) and sft_pricing.xla_option("d=x") == ("d", "x")
    with pytest.raises(ValueError, match="name=value"):
        sft_pricing.xla_option("windowed")


def test_the_tiny_sft_step_priced_streamed_with_an_option(tmp_path):
    import sft_pricing
    out = tmp_path / "pricing.json"
    result = sft_pricing.main(["--recipe", os.path.join(ROOT, "configs/sft_tiny.py"), "--topology", "v5p-8",
                               "--pricing", "streamed", "--override", "data.global_batch_size=4",
                               "--xla-option", "xla_tpu_enable_windowed_einsum_for_all_gather=false",
                               "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["xla_options"] == {"xla_tpu_enable_windowed_einsum_for_all_gather": False}
    assert result["cost_model_s"] > 0 and 0 < result["mfu"] < 1 and result["tokens"] > 0
