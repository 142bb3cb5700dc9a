"""Build a Robust-R1 dataset: ``python -m robust_r1_jax.main --config=configs/synth.py``.

The default is the embedded run: a few hundred procedural shapes questions, each degraded with the
training sampler and annotated by the offline template annotator, in well under a minute. Point it
at real data with e.g. ``--config.synth.source=aokvqa --config.synth.source_path=.../aokvqa_v1p0_train.json
--config.synth.image_root=.../coco`` (A-OKVQA: the paper used 10K train + 1K validation).
"""
from robust_r1_jax.data.synth import default_config


def get_config():
    return default_config()
