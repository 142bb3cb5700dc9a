"""The degradation playground in the browser: ``python -m robust_r1_jax.main --config=configs/web.py``.

With no checkpoint the demo model is served (runs/demo/rl/model, else runs/demo/sft/model; run the demo first);
``--config.checkpoint=DIR`` serves any model folder the other modes accept (``--config.tokenizer=DIR`` when the
tokenizer lives elsewhere). ``--config.port`` (7860) and ``--config.host`` (127.0.0.1: this machine only; 0.0.0.0
to serve the network). Sampling is ``--config.sampling.*`` (greedy by default). Every field and its default:
``robust_r1_jax.web.app.default_config``.
"""
from robust_r1_jax.web.app import default_config


def get_config():
    return default_config()
