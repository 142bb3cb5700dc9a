"""Composition in physical order, the training sampler and the benchmark protocol."""
import collections

import numpy as np
import pytest

from robust_r1_jax import degrade

STAGE_RANK = {"environment": 0, "capture": 1, "transmission": 2, "postprocessing": 3}


def stage_of(name: str) -> str:
    return next(stage for stage, names in degrade.STAGES.items() if name in names)


def is_physical_order(names) -> bool:
    keys = [(STAGE_RANK[stage_of(n)], degrade.NAMES.index(n)) for n in names]
    return keys == sorted(keys)


# --- compose -----------------------------------------------------------------------------------

def test_compose_applies_in_physical_order_whatever_the_input_order(scene):
    steps = [("jpeg compression", 0.5), ("graffiti", 0.3), ("darkness", 0.4), ("lens blur", 0.2)]
    out, applied = degrade.compose(scene, steps, seed=3)
    assert applied == [("darkness", 0.4), ("lens blur", 0.2), ("jpeg compression", 0.5), ("graffiti", 0.3)]
    shuffled, applied_again = degrade.compose(scene, list(reversed(steps)), seed=3)
    assert applied_again == applied
    np.testing.assert_array_equal(out, shuffled)
    # The same result by hand, in physical order with the derived seeds.
    by_hand = scene
    for name, s in applied:
        by_hand = degrade.apply(by_hand, name, s, degrade.step_seed(3, name))
    np.testing.assert_array_equal(out, by_hand)


def test_order_matters_so_the_physical_order_is_not_a_formality(scene):
    dark_then_noise = degrade.apply(degrade.apply(scene, "darkness", 0.9, 1), "noise", 0.3, 2)
    noise_then_dark = degrade.apply(degrade.apply(scene, "noise", 0.3, 2), "darkness", 0.9, 1)
    assert not np.array_equal(dark_then_noise, noise_then_dark)


def test_compose_is_deterministic_and_seed_dependent(scene):
    steps = [("noise", 0.5), ("block exchange", 0.6)]
    a, _ = degrade.compose(scene, steps, seed=10)
    b, _ = degrade.compose(scene, steps, seed=10)
    c, _ = degrade.compose(scene, steps, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_step_seeds_differ_per_type_and_do_not_depend_on_the_other_types():
    seeds = {degrade.step_seed(5, name) for name in degrade.NAMES}
    assert len(seeds) == 16
    assert degrade.step_seed(5, "noise") != degrade.step_seed(6, "noise")


def test_compose_with_no_steps_returns_a_copy(scene):
    out, applied = degrade.compose(scene, [], seed=0)
    assert applied == [] and out is not scene
    np.testing.assert_array_equal(out, scene)


@pytest.mark.parametrize("steps, message", [
    ([("noise", 0.2), ("noise", 0.3)], "distinct"),
    ([("fog", 0.2)], "unknown degradation"),
    ([("noise", 1.5)], "intensity"),
    ([("noise",)], r"\(name, intensity\)"),
])
def test_compose_rejects_bad_steps(scene, steps, message):
    with pytest.raises(ValueError, match=message):
        degrade.compose(scene, steps, seed=0)


# --- training sampler --------------------------------------------------------------------------

def test_training_sampler_properties_over_many_draws():
    rng = np.random.default_rng(0)
    counts = collections.Counter()
    names = collections.Counter()
    intensities = []
    for _ in range(2000):
        steps = degrade.sample_training(rng, min_count=2, max_count=5)
        counts[len(steps)] += 1
        step_names = [n for n, _ in steps]
        assert len(set(step_names)) == len(step_names)
        assert is_physical_order(step_names)
        for name, s in steps:
            assert isinstance(s, float) and 0.0 <= s <= 1.0 and round(s, 2) == s
            names[name] += 1
            intensities.append(s)
    assert set(counts) == {2, 3, 4, 5}
    assert min(counts.values()) > 400  # uniform count: 500 expected each
    assert set(names) == set(degrade.NAMES)
    assert np.mean(intensities) == pytest.approx(0.5, abs=0.02)
    assert np.std(intensities) == pytest.approx(np.sqrt(1 / 12), abs=0.02)


def test_training_sampler_is_deterministic_for_a_seed():
    assert degrade.sample_training(42) == degrade.sample_training(42)
    assert degrade.sample_training(42, 1, 4) != degrade.sample_training(43, 1, 4) or \
        degrade.sample_training(44, 1, 4) != degrade.sample_training(42, 1, 4)
    assert len(degrade.sample_training(1, 16, 16)) == 16


@pytest.mark.parametrize("low, high", [(0, 3), (3, 2), (1, 17), (1.5, 3)])
def test_training_sampler_rejects_bad_count_ranges(low, high):
    with pytest.raises(ValueError, match="count"):
        degrade.sample_training(0, low, high)


# --- benchmark protocol ------------------------------------------------------------------------

def test_benchmark_levels_are_the_spec_intensities():
    assert degrade.BENCHMARK_LEVELS == {"clean": 0.0, "25%": 0.23, "50%": 0.45, "100%": 0.9}


def test_benchmark_sampler_draws_each_stage_a_quarter_of_the_time_then_uniformly():
    draws = [degrade.sample_benchmark(i) for i in range(8000)]
    stages = collections.Counter(stage_of(n) for n in draws)
    for stage in degrade.STAGES:
        assert stages[stage] / 8000 == pytest.approx(0.25, abs=0.02)
    per_name = collections.Counter(draws)
    for stage, names in degrade.STAGES.items():
        for name in names:
            assert per_name[name] / stages[stage] == pytest.approx(1 / len(names), abs=0.035)


def test_benchmark_sampler_is_a_function_of_the_index():
    assert [degrade.sample_benchmark(i) for i in range(50)] == [degrade.sample_benchmark(i) for i in range(50)]
    assert len({degrade.sample_benchmark(i) for i in range(50)}) > 8


def test_benchmark_image_uses_one_type_and_seed_at_every_level(scene):
    for index in range(12):
        name = degrade.sample_benchmark(index)
        seed = degrade.benchmark_seed(index)
        for level, s in degrade.BENCHMARK_LEVELS.items():
            out = degrade.benchmark_image(scene, index, level)
            if level == "clean":
                np.testing.assert_array_equal(out, scene)
                assert out is not scene
            else:
                np.testing.assert_array_equal(out, degrade.apply(scene, name, s, seed))
        np.testing.assert_array_equal(degrade.benchmark_image(scene, index, "50%"),
                                      degrade.benchmark_image(scene, index, "50%"))


def test_benchmark_image_rejects_unknown_levels_and_bad_indices(scene):
    with pytest.raises(ValueError, match="level"):
        degrade.benchmark_image(scene, 0, "75%")
    with pytest.raises(ValueError, match="index"):
        degrade.benchmark_image(scene, -1, "50%")
    with pytest.raises(ValueError, match="index"):
        degrade.sample_benchmark("3")
