"""benchmarks/attention_xla.py: one JSON line with both timings of the xla path at a chunked shape."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_attention_benchmark_times_the_chunked_path_and_the_whole_row(tmp_path, monkeypatch):
    import attention_xla
    from robust_r1_jax.model import layers
    monkeypatch.setattr(layers, "XLA_QUERY_CHUNK", 16)
    out = tmp_path / "attention.json"
    result = attention_xla.main(["--bsz", "1", "--seqlen", "40", "--heads", "4", "--kv-heads", "2", "--head-dim",
                                 "8", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["query_chunk"] == 16 and len(result["chunked_s_all"]) == 2 and result["chunked_s"] > 0
    assert result["whole_over_chunked"] == result["whole_row_s"] / result["chunked_s"]
