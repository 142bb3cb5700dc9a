"""Build a Robust-R1 dataset: ``python -m robust_r1_jax.main --config=configs/synth.py``.

The default is the embedded run: a few hundred procedural shapes questions, each degraded with the
training sampler and annotated by the offline template annotator, in well under a minute. Point it
at real data with e.g. ``--config.synth.source=aokvqa --config.synth.source_path=.../aokvqa_v1p0_train.json
--config.synth.image_root=.../coco`` (A-OKVQA: the paper used 10K train + 1K validation).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "synth"
    config.workdir = "/tmp/robust_r1_jax/synth"

    synth = config.synth = ml_collections.ConfigDict()
    # Source: "shapes" | "aokvqa" | "robust_r1_jsonl" | "vlmeval_tsv".
    synth.source = "shapes"
    synth.source_path = ""  # A-OKVQA json, Robust-R1 JSONL or VLMEvalKit TSV
    synth.image_root = ""  # COCO root holding {split}2017/ (aokvqa) or the JSONL's image folder
    synth.aokvqa_split = ""  # "" -> taken from the json file name (train / val / test)
    synth.keep_prebuilt_chains = True  # robust_r1_jsonl: keep its degraded images and chains

    synth.num_train = 256
    synth.num_validation = 64
    synth.image_size = 224  # shapes render size (works down to 8; 56 for the smallest models)
    synth.max_image_side = 0  # file sources: shrink so the longer side is at most this (0 keeps)
    # shapes only: what the generator may draw (data/shapes.py::Style); the default is the full task.
    synth.shapes = ml_collections.ConfigDict(dict(
        kinds=("colour", "shape", "count", "position"),
        colours=("red", "green", "blue", "yellow", "magenta", "white"),
        shapes=("circle", "square", "triangle", "star", "diamond"),
        max_distractors=3, sorted_options=False, object_scale=1.0))

    # Degradations per image, types drawn at random with s ~ U[0, 1]; the paper's examples show 2-7.
    synth.min_degradations = 1
    synth.max_degradations = 4
    synth.seed = 0
    synth.on_error = "skip"  # "skip" (warn with file:line) or "raise" on bad input

    synth.annotator = "template"  # or "openai": an OpenAI-compatible endpoint (OPENAI_API_KEY env)
    synth.annotator_base_url = ""
    synth.annotator_model = ""
    synth.annotator_timeout = 60.0

    synth.image_format = "png"  # "png" (lossless) or "jpeg"
    synth.data_dir = ""  # "" -> {workdir}/tfds; the dataset lands in {data_dir}/robust_r1/1.0.0
    synth.overwrite = True  # replace an existing dataset (atomically) instead of failing
    synth.num_workers = 0  # >0: degrade in that many spawned processes (same bytes as 0)
    synth.contact_sheet_size = 8  # first N train examples, clean beside degraded
    return config
