"""The robustness protocol with a scripted stand-in for model + sampler: accuracies against an independent loop,
one type per image at every level, determinism, failed rows, chain metrics and bad input."""
import numpy as np
import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model, write_tsv_with_bad_rows

from robust_r1_jax import degrade
from robust_r1_jax.data import chains, sources
from robust_r1_jax.data.records import ImageError, SourceError
from robust_r1_jax.eval import robust
from robust_r1_jax.model.generate import SamplerConfig

LEVELS = ["clean", "25%", "50%", "100%"]
SETTINGS = robust.Settings(max_new_tokens=256, batch_size=5, prompt_buckets=(256, 512), patch_buckets=(16,),
                          eval_protocol="indexed")  # the scripted answers are option indices


def most_common_type(records):
    kinds = [degrade.sample_benchmark(int(r.id)) for r in records]
    return max(set(kinds), key=kinds.count)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tsv") / "shapes_eval.tsv"
    info = write_tsv_with_bad_rows(path)
    info["path"] = str(path)
    info["predicted_type"] = most_common_type(info["good"])
    return info


def make_answerer(tokenizer, dataset, **kw):
    return ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            f"{dataset['predicted_type']}(0.50), noise(0.20)", **kw)


def run_protocol(tokenizer, processor, dataset, use_suffix=True, **kw):
    answerer = make_answerer(tokenizer, dataset, **kw)
    bench = robust.synthetic_benchmark(dataset["path"], LEVELS)
    summaries, predictions = robust.evaluate_model("scripted", stand_in_model(tokenizer), processor, [bench],
                                                   SETTINGS, use_suffix=use_suffix, generate_fn=answerer.generate)
    return summaries["shapes_eval"], predictions, answerer


@pytest.fixture(scope="module")
def evaluated(tokenizer, processor, dataset):
    return run_protocol(tokenizer, processor, dataset)


def independent_loop(tokenizer, processor, dataset, level):
    """Reads the TSV itself, degrades, prompts the answerer one row at a time and scores."""
    answerer = make_answerer(tokenizer, dataset)
    config = SamplerConfig(max_new_tokens=256, pad_token_id=0)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    correct, outputs = 0, []
    for record in sources.read_vlmeval_tsv(dataset["path"], on_error="skip"):
        try:
            image = record.load_image()
        except ImageError:
            continue
        image = degrade.benchmark_image(image, int(record.id), level)
        encoded = processor.encode(chains.format_prompt(record.question, record.options), [image])
        ids = encoded["input_ids"][None]
        out = answerer.generate(None, ids, np.ones_like(ids), encoded["pixel_values"][None],
                                encoded["image_grid_thw"][None], config, None)
        generated = [t for t in out.tokens[0, : out.lengths[0]] if t != stop]
        text = tokenizer.decode(generated, skip_special_tokens=True)
        picked = None
        block = chains.extract_block(text, "ANSWER")
        if block is not None and block.strip().isdigit():
            picked = int(block.strip())
        correct += picked == record.answer
        outputs.append((record, text, int(out.lengths[0])))
    return correct, outputs


def test_accuracy_equals_an_independent_loop(tokenizer, processor, dataset, evaluated):
    summary, _, _ = evaluated
    seen = []
    for level in LEVELS:
        correct, _ = independent_loop(tokenizer, processor, dataset, level)
        got = summary["levels"][level]
        assert got["total"] == dataset["rows"] == 14
        assert got["correct"] == correct
        assert got["accuracy"] == pytest.approx(correct / 14)
        seen.append(correct)
    # Not vacuous: some right and some wrong answers, and the levels do not all agree.
    assert 0 < sum(seen) < 12 * len(LEVELS)
    assert len(set(seen)) > 1, seen


def test_one_type_per_image_at_every_level(processor, dataset, evaluated):
    summary, predictions, answerer = evaluated
    by_index = {}
    for p in predictions:
        by_index.setdefault(p["image_index"], set()).add((p["type"], p["stage"]))
    assert len(by_index) == 14
    for index, kinds in by_index.items():
        assert len(kinds) == 1
        (kind, stage), = kinds
        assert kind == degrade.sample_benchmark(index)
        assert kind in degrade.STAGES[stage]
    # What the model received is exactly the protocol's image: the index's type and seed at each level.
    received = {(tuple(ids), patches.tobytes()) for ids, patches in answerer.seen}
    for record in dataset["good"]:
        clean = record.load_image()
        variants = set()
        for level in LEVELS:
            image = degrade.benchmark_image(clean, int(record.id), level)
            encoded = processor.encode(chains.format_prompt(record.question, record.options), [image])
            key = (tuple(encoded["input_ids"]), encoded["pixel_values"].tobytes())
            assert key in received, (record.id, level)
            variants.add(key[1])
        assert len(variants) >= 2  # the degradation changed the pixels


def test_identical_results_across_runs(tokenizer, processor, dataset, evaluated):
    summary, predictions, _ = evaluated
    again, predictions_again, _ = run_protocol(tokenizer, processor, dataset)
    assert again == summary
    assert predictions_again == predictions


def test_undecodable_rows_are_reported_and_count_as_wrong(evaluated):
    summary, predictions, _ = evaluated
    failed = {row["label"]: row for row in summary["failed_rows"]}
    assert sorted(failed) == ["900", "901"]
    assert "not valid base64" in failed["900"]["problem"]
    assert "cannot decode image" in failed["901"]["problem"]
    assert failed["901"]["where"].endswith(":15")  # header + 12 rows + the base64 row: line 15
    for level in LEVELS:
        rows = [p for p in predictions if p["level"] == level and p["index"] in failed]
        assert len(rows) == 2
        assert all(p["correct"] is False and p["output"] is None and p["problem"] for p in rows)
        assert summary["levels"][level]["failed"] == 2


def test_chain_metrics_against_the_applied_type(tokenizer, processor, dataset, evaluated):
    summary, _, _ = evaluated
    matching = sum(degrade.sample_benchmark(int(r.id)) == dataset["predicted_type"] for r in dataset["good"])
    assert matching >= 1
    for level in LEVELS:
        got = summary["levels"][level]
        _, outputs = independent_loop(tokenizer, processor, dataset, level)
        assert got["mean_chain_tokens"] == pytest.approx(np.mean([n for _, _, n in outputs]))
        assert got["format_rate"] == 1.0
        assert got["types_predicted"] == 2 * 12
        intensity = degrade.BENCHMARK_LEVELS[level]
        if level == "clean":
            assert got["type_precision"] == 0.0  # names predicted for a clean image are all wrong
            assert got["type_recall"] is None and got["intensity_mae"] is None
            continue
        assert got["type_precision"] == pytest.approx(matching / 24)
        assert got["type_recall"] == pytest.approx(matching / 12)
        assert got["intensity_mae"] == pytest.approx(abs(0.5 - intensity))


def test_breakdowns_add_up(evaluated):
    summary, _, _ = evaluated
    for level in LEVELS:
        for key in ("by_stage", "by_type"):
            groups = summary[key].values()
            assert sum(g[level]["total"] for g in groups) == 14
            assert sum(g[level]["correct"] for g in groups) == summary["levels"][level]["correct"]
    assert set(summary["by_stage"]) <= set(degrade.STAGES)
    assert set(summary["by_type"]) <= set(degrade.NAMES)


def test_the_suffix_can_be_dropped_for_base_models(tokenizer, processor, dataset):
    _, _, with_suffix = run_protocol(tokenizer, processor, dataset)
    _, _, without = run_protocol(tokenizer, processor, dataset, use_suffix=False)
    start = chains.PROMPT_SUFFIX[:40]
    assert all(start in tokenizer.decode(ids) for ids, _ in with_suffix.seen)
    assert not any(start in tokenizer.decode(ids) for ids, _ in without.seen)


def test_letter_answers_score_like_indices(tokenizer, processor, dataset, evaluated):
    summary, _, _ = evaluated
    letters, _, _ = run_protocol(tokenizer, processor, dataset, letters=True)
    assert [letters["levels"][lv]["correct"] for lv in LEVELS] == [summary["levels"][lv]["correct"] for lv in LEVELS]


def test_a_tsv_missing_columns_names_them(tmp_path):
    path = tmp_path / "broken.tsv"
    sources.write_vlmeval_tsv(good_records()[:2], str(path))
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, name in enumerate(header) if name not in ("answer", "question")]
    path.write_text("\n".join("\t".join(line.split("\t")[i] for i in keep) for line in lines) + "\n")
    with pytest.raises(SourceError, match=r"missing required column\(s\) \['question', 'answer'\]"):
        robust.synthetic_benchmark(str(path), LEVELS)
    with pytest.raises(SourceError, match="not found"):
        robust.synthetic_benchmark(str(tmp_path / "absent.tsv"), LEVELS)


def test_levels_by_name_or_intensity():
    assert robust.check_levels(["clean", "0.23", "0.45", "100%"]) == LEVELS
    with pytest.raises(ValueError, match="unknown benchmark level '0.3'"):
        robust.check_levels(["0.3"])


def test_sampling_keys_depend_only_on_seed_stream_and_batch(tokenizer, processor, dataset):
    """Sampled (non-greedy) decoding draws batch k of a condition from (seed, benchmark, level, chunk, k)."""
    import jax

    from robust_r1_jax.eval import inference

    keys = []
    scripted = make_answerer(tokenizer, dataset)

    def recording(model, *args):
        keys.append(np.asarray(jax.random.key_data(args[-1])).tobytes())
        return scripted.generate(model, *args)

    generator = inference.Generator(
        stand_in_model(tokenizer), processor,
        inference.sampler_config(stand_in_model(tokenizer), processor, max_new_tokens=256, temperature=1.0),
        batch_size=2, prompt_buckets=(256,), patch_buckets=(16,), seed=3, generate_fn=recording)
    prompts = [("q", r.load_image()) for r in dataset["good"][:3]]
    generator.complete(prompts, stream=(0, 1))
    first = list(keys)
    generator.complete(prompts, stream=(0, 2))
    generator.complete(prompts, stream=(0, 1))
    assert len(first) == 2 and first[0] != first[1]  # two batches, two keys
    assert keys[4:6] == first and keys[2:4] != first


def test_rejected_rows_stay_in_the_denominator_under_a_quiet_log(dataset):
    import logging

    from robust_r1_jax.eval import benchmarks

    logger = logging.getLogger("robust_r1_jax.data.records")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        rows = benchmarks.read_tsv_rows(dataset["path"])
    finally:
        logger.setLevel(previous)
    assert len(rows) == 14 and logger.level == previous
    assert [r.label for r in rows if r.problem] == ["900"]  # rejected by the reader; 901 fails when decoded
    assert [r.image_index for r in rows] == list(range(100, 112)) + [900, 901]
    assert len(benchmarks.read_tsv_rows(dataset["path"], limit=5)) == 5
