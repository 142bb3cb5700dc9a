"""The ``web`` mode through the entry point: the message without a demo model, and the server it starts."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from test_browser import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "web.py")


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def test_without_a_checkpoint_or_demo_the_message_names_the_demo_command(tmp_path, monkeypatch):
    from configs.web import get_config

    from robust_r1_jax import main
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    with pytest.raises(FileNotFoundError, match="Run the demo first: python -m robust_r1_jax.main "
                                                "--config=configs/demo.py"):
        main.resolve("web")(get_config())


@pytest.mark.slow
def test_the_mode_serves_the_page_on_the_chosen_port(model_dir, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "robust_r1_jax.main", f"--config={CONFIG}",
                               f"--config.checkpoint={model_dir}", f"--config.port={port}",
                               "--config.sampling.max_new_tokens=8", "--config.prompt_buckets=(512,)",
                               "--config.patch_buckets=(16,)"], cwd=tmp_path, env=_env(), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline, page = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None, (tmp_path / "server.log").read_text()[-3000:]
        assert "Robust-R1 degradation playground" in page
        assert f"http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
