"""Build a Robust-R1 dataset: ``python -m robust_r1_jax.main --config=configs/synth.py``.

The default is the embedded run: a few hundred procedural shapes questions, each degraded with the
training sampler and annotated by the offline template annotator, in well under a minute. Point it
at real data with e.g. ``--config.synth.source=aokvqa --config.synth.source_path=.../aokvqa_v1p0_train.json
--config.synth.image_root=.../coco`` (A-OKVQA: the paper used 10K train + 1K validation).

Sources (``--config.synth.source``; any other name is one ``error:`` line listing these):

* ``shapes``: the embedded procedural questions (no files).
* ``aokvqa``: A-OKVQA json; ``image_root`` is the COCO root.
* ``robust_r1_jsonl``: the VLM-R1 / Robust-R1 RL ``train.jsonl`` as upstream ships it, ``{"id", "image": "a.jpg" or
  a list, "conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "<chain>"}]}``;
  ``image_root`` is its image folder (upstream's ``--image_folders``).
* ``llamafactory``: LLaMA-Factory's sharegpt SFT file (JSON array or JSONL; ``messages`` with role/content or
  ``conversations`` with from/value, ``images``), read with the columns and tags of the ``dataset_info.json`` beside
  it (``--config.synth.dataset_name`` picks an entry); images relative to ``image_root``, else to the file's folder.
* ``vlmeval_tsv``: a VLMEvalKit multiple-choice TSV.

Records whose answer turn already is a chain keep it and their (already degraded) image and go straight to the
TFDS shards; options numbered from 0 or 1 or lettered, and answers given as a label, a letter or the option text,
are mapped to one form whose prompt and answer agree (a record that cannot be mapped is named and skipped); the
human turn is kept verbatim for ``data.prompt_style=upstream``; ``<TYPE>`` names go through the alias table of
``robust_r1_jax/data/type_names.py``. Example: ``--config.synth.source=robust_r1_jsonl
--config.synth.source_path=.../train.jsonl --config.synth.image_root=.../train_images
--config.synth.num_train=2000 --config.synth.num_validation=100``. A file source is cut to ``num_train +
num_validation`` records (defaults 256 + 64; a warning and ``synth_summary.json``'s ``source_records`` say how
many were left out); a file shorter than that fills ``train`` first and needs at least one record left for
``validation`` (or ``num_validation=0``). A prompt's several images are kept (``extra_images``) when the record
carries its chain; train with ``--config.data.image_slots`` >= ``max_images_per_prompt`` of the summary.
``synth_summary.json`` also lists the skipped records (file:line, id, why) and the ``<TYPE>`` aliases applied.
"""
from robust_r1_jax.data.synth import default_config


def get_config():
    return default_config()
