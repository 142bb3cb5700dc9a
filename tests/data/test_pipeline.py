"""grain pipelines: fixed shapes, exact masks and positions, determinism, resumption, host sharding."""

import dataclasses
import json

import numpy as np
import pytest

from robust_r1_jax import degrade
from robust_r1_jax.data import annotators, chains, pipeline, references, rows, shapes, synth, tfds_builder
from robust_r1_jax.data.pipeline import PipelineConfig
from robust_r1_jax.data.records import encode_image
from robust_r1_jax.data.tokenizer import train_demo_tokenizer
from robust_r1_jax.model.processor import IM_END, ImageProcessor, Processor
from robust_r1_jax.model.rope_index import mrope_position_ids

NUM_EXAMPLES = 14
SEQ_LEN = 1024
BUCKET = 64


def _examples(num=NUM_EXAMPLES):
    """Shapes questions with hand-picked degradations (no pixels degraded: the pipeline only reads them)."""
    rng = np.random.default_rng(7)
    out = []
    for index, record in enumerate(shapes.make_records(num, seed=3, image_size=56)):
        image = record.load_image()
        if index % 3 == 0:  # a larger, non-square image: resized to fit the bucket
            image = np.ascontiguousarray(np.tile(image, (2, 3, 1))[:100, :150])
        count = 1 + index % 4
        names = [str(n) for n in rng.choice(degrade.NAMES, count, replace=False)]
        values = np.round(rng.uniform(0, 1, count), 2).astype(np.float32)
        applied = list(zip(names, values.tolist()))
        chain = annotators.make_chain(record.question, record.options, record.answer, record.rationales,
                                      [(n, round(v, 2)) for n, v in applied], seed=index)
        out.append({
            "id": record.id,
            "image": encode_image(image, "png"),
            "question": record.question,
            "options": list(record.options),
            "answer": record.answer,
            "chain": chain,
            "rationales": list(record.rationales),
            "degradation_types": names,
            "degradation_intensities": values,
            "degradation_seed": index,
            "category": record.category,
            "source": record.location,
        })
    return out


@pytest.fixture(scope="module")
def examples():
    return _examples()


@pytest.fixture(scope="module")
def source(examples, tmp_path_factory):
    path = tfds_builder.write_dataset({"train": examples}, str(tmp_path_factory.mktemp("pipeline_tfds")))
    return tfds_builder.data_source(path, "train")


@pytest.fixture(scope="module")
def processor(examples, tmp_path_factory):
    texts = [e["chain"] for e in examples] + [rows.user_text(e, chains.PROMPT_SUFFIX) for e in examples]
    tokenizer = train_demo_tokenizer(texts, tmp_path_factory.mktemp("pipeline_tok") / "tok", vocab_size=1024)
    return Processor(tokenizer, ImageProcessor())


def _config(**overrides):
    settings = dict(batch_size=4, seq_len=SEQ_LEN, patch_bucket=BUCKET, image_slots=2, seed=5, num_epochs=1,
                    drop_remainder=False, read_threads=0, prefetch_batches=2)
    settings.update(overrides)
    return PipelineConfig(**settings)


def _sft(source, processor, **overrides):
    hosts = {k: overrides.pop(k) for k in ("process_index", "process_count") if k in overrides}
    hosts = {"process_index": 0, "process_count": 1, **hosts}
    return pipeline.make_sft_loader(source, processor, _config(**overrides), **hosts)


def _rl(source, processor, **overrides):
    hosts = {k: overrides.pop(k) for k in ("process_index", "process_count") if k in overrides}
    hosts = {"process_index": 0, "process_count": 1, **hosts}
    return pipeline.make_rl_loader(source, processor, _config(**overrides), **hosts)


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _real_indices(batches):
    return [int(i) for b in batches for i in b["example_index"] if i >= 0]


@pytest.fixture(scope="module")
def sft_batches(source, processor):
    return list(_sft(source, processor))


@pytest.fixture(scope="module")
def rl_batches(source, processor):
    return list(_rl(source, processor))


# ---- shapes, masks, images, positions ---------------------------------------------------------------------------

def test_sft_batches_have_fixed_shapes_and_dtypes(sft_batches, processor):
    assert len(sft_batches) == 4  # 14 examples, batches of 4, last one filled with 2 padding rows
    dim = processor.image_processor.patch_dim
    expected = {
        "input_ids": ((4, SEQ_LEN), np.int32), "attention_mask": ((4, SEQ_LEN), np.int32),
        "loss_mask": ((4, SEQ_LEN), np.int32), "pixel_values": ((4, BUCKET, dim), np.float32),
        "image_grid_thw": ((4, 2, 3), np.int32), "position_ids": ((4, 3, SEQ_LEN), np.int32),
        "example_index": ((4,), np.int64), "truncated_tokens": ((4,), np.int32),
    }
    for batch in sft_batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
        assert not batch["truncated_tokens"].any()
    last = sft_batches[-1]
    np.testing.assert_array_equal(last["example_index"][2:], [-1, -1])
    assert not last["loss_mask"][2:].any()
    assert last["attention_mask"][2:].sum(axis=1).min() > 0  # padding rows repeat real prompts: no empty rows
    assert sorted(_real_indices(sft_batches)) == list(range(NUM_EXAMPLES))


def test_loss_mask_covers_exactly_the_chain_and_im_end(sft_batches, examples, processor):
    tokenizer, pad = processor.tokenizer, rows._RowBuilder._pad_id(processor)
    for batch in sft_batches:
        for row, index in enumerate(batch["example_index"]):
            if index < 0:
                continue
            ids, mask = batch["input_ids"][row], batch["loss_mask"][row]
            masked = np.flatnonzero(mask)
            # One contiguous block, decoding to exactly the chain and the turn's closing token.
            assert masked[-1] - masked[0] + 1 == len(masked)
            assert tokenizer.decode(ids[masked]) == examples[index]["chain"] + IM_END
            assert tokenizer.decode(ids[: masked[0]]).endswith("<|im_start|>assistant\n")
            length = batch["attention_mask"][row].sum()
            assert batch["attention_mask"][row][:length].all() and (ids[length:] == pad).all()
            assert masked[-1] < length - 1  # the "\n" after <|im_end|> is real but not trained on


def test_image_tokens_match_grids_and_patches(sft_batches, processor):
    image_token = processor.image_token_id
    for batch in sft_batches:
        for row in range(4):
            grid = batch["image_grid_thw"][row]
            patches = int(np.prod(grid, axis=1).sum())
            assert grid[0].all() and not grid[1].any()  # one image per example, second slot empty
            assert 16 <= patches <= BUCKET
            assert (batch["input_ids"][row] == image_token).sum() == patches // 4
            pixels = batch["pixel_values"][row]
            assert np.abs(pixels[:patches]).sum(axis=1).min() > 0 and not pixels[patches:].any()


def test_large_image_is_resized_to_fit_the_bucket(source, processor):
    # Example 0 is 100x150: unconstrained it gets an 8x10 grid of patches, more than the bucket of 64.
    batches = _first(_sft(source, processor, shuffle=False, batch_size=1), 1)
    assert ImageProcessor().image_grid(100, 150) == (1, 8, 10)
    np.testing.assert_array_equal(batches[0]["image_grid_thw"][0, 0], [1, 6, 8])  # 48 patches <= 64
    np.testing.assert_array_equal(batches[0]["example_index"], [0])


def _first(loader, n):
    out = [next(loader) for _ in range(n)]
    loader.close()
    return out


def test_position_ids_equal_mrope_position_ids(sft_batches, rl_batches, processor):
    kw = dict(image_token_id=processor.image_token_id, spatial_merge_size=processor.image_processor.merge_size)
    for ids_key, mask_key, batches in (("input_ids", "attention_mask", sft_batches),
                                       ("prompt_ids", "prompt_mask", rl_batches)):
        for batch in batches:
            expected, _ = mrope_position_ids(batch[ids_key], batch["image_grid_thw"].reshape(-1, 3),
                                             batch[mask_key], **kw)
            np.testing.assert_array_equal(batch["position_ids"], np.asarray(expected).transpose(1, 0, 2))
            # Image tokens really get 3-D positions: the three rows differ somewhere.
            assert (batch["position_ids"][:, 1] != batch["position_ids"][:, 2]).any()


# ---- RL batches ---------------------------------------------------------------------------------------------------

def test_rl_batch_is_the_left_padded_prompt_with_references(rl_batches, sft_batches, examples, processor):
    assert len(rl_batches) == 4
    for rl, sft in zip(rl_batches, sft_batches):
        assert rl["prompt_ids"].shape == (4, SEQ_LEN) and rl["prompt_ids"].dtype == np.int32
        assert rl["reference_answer"].shape == (4, 16) and rl["reference_answer"].dtype == np.uint8
        assert rl["reference_names"].shape == (4, 16, 32) and rl["reference_values"].dtype == np.float32
        assert rl["reference_token_len"].dtype == np.int32 and rl["summed_intensity"].dtype == np.float32
        np.testing.assert_array_equal(rl["example_index"], sft["example_index"])  # same order as SFT
        refs = references.from_batch(rl)
        for row, index in enumerate(rl["example_index"]):
            mask = rl["prompt_mask"][row]
            length = mask.sum()
            assert not mask[: SEQ_LEN - length].any() and mask[SEQ_LEN - length:].all()  # left padded
            # The prompt is exactly the SFT row's tokens before the chain.
            prompt_end = np.flatnonzero(sft["loss_mask"][row])[0] if index >= 0 else length
            np.testing.assert_array_equal(rl["prompt_ids"][row, SEQ_LEN - length:], sft["input_ids"][row, :prompt_end])
            if index < 0:
                continue
            example = examples[index]
            # The references are those the GRPO loop built on the host from the chain before.
            expected = references.prepare_references([example["chain"]], processor.tokenizer, answer_bytes=16,
                                                     max_names=16, name_bytes=32)
            for field in dataclasses.fields(expected):
                got, want = getattr(refs, field.name)[row], getattr(expected, field.name)
                assert got.dtype == want.dtype, field.name
                np.testing.assert_array_equal(got, want[0], err_msg=field.name)
            answer = bytes(refs.answer[row, :refs.answer_len[row]]).decode("utf-8")
            assert answer == references.reference_answer(example["chain"]) == str(example["answer"])
            count = len(example["degradation_types"])
            names = [bytes(n[:k]).decode("utf-8") for n, k in zip(refs.names[row], refs.name_len[row]) if k >= 0]
            assert names == example["degradation_types"] and (refs.name_len[row, count:] == -1).all()
            np.testing.assert_array_equal(refs.values[row, :count], example["degradation_intensities"])
            assert rl["summed_intensity"][row] == pytest.approx(float(example["degradation_intensities"].sum()),
                                                                abs=1e-6)


# ---- order, determinism, resumption, hosts ------------------------------------------------------------------------

def test_two_runs_give_identical_batches_and_seed_changes_order(source, processor, sft_batches):
    _assert_same_batches(list(_sft(source, processor)), sft_batches)
    other = _real_indices(_sft(source, processor, seed=6))
    assert sorted(other) == sorted(_real_indices(sft_batches)) and other != _real_indices(sft_batches)


def test_epochs_are_distinct_permutations(examples, processor):
    loader = _sft(examples, processor, batch_size=7, num_epochs=2, drop_remainder=True, patch_bucket=48)
    order = _real_indices(loader)
    assert loader.num_batches == 4 and len(order) == 2 * NUM_EXAMPLES
    first, second = order[:NUM_EXAMPLES], order[NUM_EXAMPLES:]
    assert sorted(first) == sorted(second) == list(range(NUM_EXAMPLES)) and first != second


def test_resuming_from_a_saved_state_yields_exactly_the_remaining_batches(examples, processor):
    settings = dict(batch_size=3, num_epochs=2, drop_remainder=True, patch_bucket=48)
    everything = list(_sft(examples, processor, **settings))
    assert len(everything) == 9  # 28 rows // 3
    loader = _sft(examples, processor, **settings)
    head = [next(loader) for _ in range(4)]  # stops mid-epoch, mid-prefetch
    saved = json.loads(json.dumps(loader.get_state()))
    loader.close()
    assert saved["next_batch"] == 4
    resumed = _sft(examples, processor, **settings)
    resumed.set_state(saved)
    tail = list(resumed)
    _assert_same_batches(head + tail, everything)
    assert resumed.get_state()["next_batch"] == 9
    with pytest.raises(ValueError, match="batch_size: saved 3, now 2"):
        _sft(examples, processor, **{**settings, "batch_size": 2}).set_state(saved)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_hosts_partition_the_data(source, processor, drop_remainder):
    # 14 examples, 2 hosts x 3 rows: 2 full global batches + 2 rows.
    hosts = [list(_sft(source, processor, batch_size=3, drop_remainder=drop_remainder, process_index=h,
                       process_count=2)) for h in (0, 1)]
    assert len(hosts[0]) == len(hosts[1]) == (2 if drop_remainder else 3)
    seen = [set(_real_indices(batches)) for batches in hosts]
    assert len(_real_indices(hosts[0])) == len(seen[0]) and len(_real_indices(hosts[1])) == len(seen[1])
    assert not seen[0] & seen[1]
    if drop_remainder:
        assert len(seen[0]) == len(seen[1]) == 6
    else:
        assert seen[0] | seen[1] == set(range(NUM_EXAMPLES))
    # Together the hosts' rows are the one-host stream cut into global batches.
    single = _real_indices(_sft(source, processor, batch_size=6, drop_remainder=drop_remainder))
    interleaved = [i for k in range(len(hosts[0])) for h in (0, 1) for i in hosts[h][k]["example_index"] if i >= 0]
    assert interleaved == single


def test_order_is_numpys_permutation_per_epoch():
    # The runs' data order (and the demo's numbers) rest on this rule; grain's own shuffle draws other orders.
    order = pipeline.StreamOrder(dataset_size=5, global_batch=4, seed=3, shuffle=True, num_epochs=2,
                                 drop_remainder=False)
    expected = np.concatenate([np.random.default_rng([3, epoch]).permutation(5) for epoch in (0, 1)])
    assert [order(p)[0] for p in range(10)] == expected.tolist() and not any(order(p)[1] for p in range(10))
    assert order.num_batches == 3 and [order(p) for p in (10, 11)] == [(expected[0], True), (expected[1], True)]


def test_a_state_saved_on_two_hosts_resumes_on_one(source, processor):
    settings = dict(num_epochs=2, drop_remainder=True, patch_bucket=48)
    pair = [_sft(source, processor, batch_size=3, process_index=h, process_count=2, **settings) for h in (0, 1)]
    for loader in pair:
        next(loader)
    saved = json.loads(json.dumps(pair[0].get_state()))
    for loader in pair:
        loader.close()
    single = list(_sft(source, processor, batch_size=6, **settings))
    resumed = _sft(source, processor, batch_size=6, **settings)
    resumed.set_state(saved)
    _assert_same_batches(list(resumed), single[1:])


def test_infinite_loader_keeps_going_and_resumes(examples, processor):
    loader = _sft(examples, processor, batch_size=5, num_epochs=None, patch_bucket=48)
    assert loader.num_batches is None
    batches = _first(loader, 7)  # 35 rows: past two epochs of 14
    order = _real_indices(batches)
    assert len(order) == 35 and sorted(order[:14]) == sorted(order[14:28]) == list(range(14))
    resumed = _sft(examples, processor, batch_size=5, num_epochs=None, patch_bucket=48)
    resumed.set_state({**loader.get_state(), "next_batch": 5})
    _assert_same_batches(_first(resumed, 2), batches[5:])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(source, processor, sft_batches):
    with _sft(source, processor, worker_count=1) as loader:
        _assert_same_batches(list(loader), sft_batches)
    # Resuming on workers from a state saved in-process.
    loader = _sft(source, processor, worker_count=2)
    loader.set_state({**loader.get_state(), "next_batch": 2})
    _assert_same_batches(list(loader), sft_batches[2:])


# ---- errors and truncation ---------------------------------------------------------------------------------------

def test_long_sequences_are_truncated_and_counted(examples, processor):
    full = _first(_sft(examples, processor, shuffle=False, batch_size=2), 1)[0]
    lengths = full["attention_mask"].sum(axis=1)
    seq_len = int(lengths.min()) - 5
    cut = _first(_sft(examples, processor, shuffle=False, batch_size=2, seq_len=seq_len), 1)[0]
    np.testing.assert_array_equal(cut["truncated_tokens"], lengths - seq_len)
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][:, :seq_len])
    np.testing.assert_array_equal(cut["loss_mask"], full["loss_mask"][:, :seq_len])
    assert cut["attention_mask"].all()


def test_examples_that_do_not_fit_are_errors_naming_them(examples, processor):
    name = examples[0]["id"]
    with pytest.raises(ValueError, match=f"{name}.*min_pixels=12544"):
        _first(_sft(examples, processor, shuffle=False, min_pixels=112 * 112, patch_bucket=48), 1)
    with pytest.raises(ValueError, match=f"{name}.*image tokens run to position .* beyond seq_len=20"):
        _first(_sft(examples, processor, shuffle=False, seq_len=20), 1)
    with pytest.raises(ValueError, match=f"{name}.*prompt has .* tokens, more than seq_len=60"):
        _first(_rl(examples, processor, shuffle=False, seq_len=60), 1)
    with pytest.raises(ValueError, match=f"{name}.*name_bytes=4 is too small"):
        _first(_rl(examples, processor, shuffle=False, reference_name_bytes=4), 1)
    two_images = [{**examples[0], "images": [examples[0]["image"]] * 3}]
    with pytest.raises(ValueError, match=f"{name}.*3 images but image_slots=2"):
        _first(_sft(two_images, processor, batch_size=1), 1)
    with pytest.raises(ValueError, match="patch_bucket=30 must be a multiple of"):
        _sft(examples, processor, patch_bucket=30)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        _sft(examples, processor, batch_size=8, drop_remainder=True, process_count=2)


# ---- a bad example never ends the run (issue 16, kind 1) ---------------------------------------------------------

def test_a_bad_example_becomes_a_named_padding_row(examples, processor, caplog):
    bad = list(examples)
    bad[2] = {**examples[2], "image": encode_image(np.zeros((10, 2100, 3), np.uint8), "png")}
    bad[5] = {**examples[5], "image": b"not an image"}
    bad[9] = {k: v for k, v in examples[9].items() if k != "chain"}
    bad = [bad[i] for i in range(12)]  # three full batches of four
    expected_warnings = [
        f"skipping a bad example: example {examples[2]['id']!r} (source index 2): absolute aspect ratio must be "
        f"smaller than 200, got 210.0; its row is padding built from source index 3",
        f"skipping a bad example: example {examples[5]['id']!r} (source index 5): cannot decode image (cannot "
        f"identify image file); its row is padding built from source index 6",
        f"skipping a bad example: example {examples[9]['id']!r} (source index 9): the example has no 'chain' field; "
        f"its row is padding built from source index 10",
    ]
    for make, ids_key in ((_sft, "input_ids"), (_rl, "prompt_ids")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="robust_r1_jax.data.rows"):
            batches = list(make(bad, processor, shuffle=False))
        reference = list(make(examples[:12], processor, shuffle=False))
        assert [m for m in caplog.messages if m.startswith("skipping a bad example")] == expected_warnings
        assert len(batches) == len(reference) == 3
        indices = np.concatenate([b["example_index"] for b in batches])
        np.testing.assert_array_equal(indices, [i if i not in (2, 5, 9) else -1 for i in range(12)])
        for batch, good in zip(batches, reference):
            assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in good.items()}
        rows_of = lambda bs: np.concatenate([b[ids_key] for b in bs])  # noqa: E731
        np.testing.assert_array_equal(rows_of(batches)[[2, 5, 9]], rows_of(reference)[[3, 6, 10]])
        if make is _sft:
            assert not np.concatenate([b["loss_mask"] for b in batches])[[2, 5, 9]].any()


def test_a_train_only_dataset_goes_through_synth_and_the_loaders(processor, tmp_path):
    """num_validation=0 (issue 16, kind 3): the dataset has one split and the loaders batch it."""
    config = synth.default_config()
    config.workdir = str(tmp_path)
    config.synth.update({"num_train": 4, "num_validation": 0, "image_size": 56, "contact_sheet_size": 0})
    path = synth.run(config)["dataset_dir"]
    assert tfds_builder.split_sizes(path) == {"train": 4}
    source = tfds_builder.data_source(path, "train")
    for make in (_sft, _rl):
        (batch,) = list(make(source, processor))
        assert sorted(batch["example_index"].tolist()) == [0, 1, 2, 3]
