"""benchmarks/{sft_step,rollout}.py --peer: ours and the PyTorch peer on the same tiny model, one JSON each."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _check(result: dict) -> None:
    for key in ("device", "ours_tokens_per_s", "peer_tokens_per_s", "ratio", "settings", "commit", "machine"):
        assert key in result, key
    assert result["ours_tokens_per_s"] > 0 and result["peer_tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["ours_tokens_per_s"] / result["peer_tokens_per_s"])
    assert result["peer"]["source"].startswith("in-process")


def test_finish_ratio_and_peer_lines(tmp_path, capsys):
    import common
    lines = tmp_path / "peer.jsonl"
    lines.write_text('{"what": "env"}\nnoise\n{"what": "hf_generate", "gen_tokens_per_s": 4.0}\n')
    assert common.read_peer(str(lines), "hf_generate")["gen_tokens_per_s"] == 4.0
    assert common.read_peer(str(lines), "hf_sft_step") is None  # the peer failed: ours is still reported
    out = tmp_path / "r.json"
    common.finish(dict(ours_tokens_per_s=10.0, peer_tokens_per_s=4.0), str(out))
    result = json.loads(out.read_text())
    assert result["ratio"] == 2.5 and result["commit"] and result["machine"]["cpus"] >= 1
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.slow
def test_sft_step_peer(tmp_path):
    import sft_step
    out = tmp_path / "sft.json"
    sft_step.main(["--preset", "tiny", "--bsz", "1", "--seqlen", "32", "--side", "56", "--warmup", "0",
                   "--steps", "1", "--peer", "--ceilings", "--out", str(out)])
    result = json.loads(out.read_text())
    _check(result)
    for key in ("mfu", "matmul_tflops", "peak_gib"):
        assert result[key] > 0, key
    # Same weights and batch: the first step's losses (before any update) agree.
    assert result["loss"] == pytest.approx(result["peer"]["loss"], abs=1e-3)


@pytest.mark.slow
def test_rollout_peer(tmp_path):
    import rollout
    out = tmp_path / "rollout.json"
    rollout.main(["--preset", "tiny", "--batch", "1", "--samples", "2", "--prompt-len", "16", "--new-tokens",
                  "4", "--image-side", "56", "--warmup", "0", "--repeats", "1", "--peer", "--hbm-shape", "1x2x4",
                  "--out", str(out)])
    result = json.loads(out.read_text())
    _check(result)
    assert result["peer"]["generated"] == 2 * 4
    assert "hbm_share" in result and result["copy_gb_per_s"] > 0


@pytest.mark.slow
def test_device_bench_dry(tmp_path):
    """The device call's script, end to end at tiny size (peer process, ours, JSON files)."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    run = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_bench.sh"), "--dry"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    names = sorted(os.listdir(tmp_path))
    for kind in ("sft", "rollout"):
        [name] = [n for n in names if n.endswith(f"-{kind}.json")]
        result = json.loads((tmp_path / name).read_text())
        assert result["ratio"] == pytest.approx(result["ours_tokens_per_s"] / result["peer_tokens_per_s"])


def test_device_bench_script_is_clean():
    script = os.path.join(ROOT, "benchmarks", "device_bench.sh")
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        done = subprocess.run([shellcheck, "--shell=bash", "--severity=style", script], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown argument --bogus" in done.stderr
