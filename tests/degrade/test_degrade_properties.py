"""Properties every degradation must have: determinism, shapes, identity at 0, monotone strength."""
import numpy as np
import pytest

from robust_r1_jax import degrade
from robust_r1_jax.degrade.synthetic import textured_scene

# Reference maps that are not the identity at s = 0, and why:
NOT_IDENTITY_AT_ZERO = {
    "motion blur",  # the streak is max(5, int(30s)) px long: 5 px at s = 0
    "jpeg compression",  # quality 100 still subsamples chroma and rounds DCT coefficients
    "scan lines",  # a band max(5, int(7s)) = 5 rows tall every max(3, int(20/0.1)) = 200 rows
    "sharpness change",  # s = 0 takes the reference's 3x3 Gaussian branch, blended 0.3
}
# Types whose output depends on the seed at s = 0.45 (the others are deterministic maps).
RANDOM_TYPES = {"lens flare", "motion blur", "dirty lens", "block exchange", "noise", "graffiti",
                "watermark damage"}
# color diffusion's reference map dims the image up to s ~ 0.58 and brightens it again after.
NOT_MONOTONE = {"color diffusion"}
LEVELS = (0.23, 0.45, 0.9)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("name", degrade.NAMES)
def test_same_seed_gives_identical_bytes(scene, name):
    for s in (0.3, 0.95):
        first = degrade.apply(scene, name, s, seed=1234)
        second = degrade.apply(scene.copy(), name, s, seed=1234)
        assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("name", sorted(RANDOM_TYPES))
def test_other_seed_gives_other_pixels(scenes, name):
    # 128x160: on much smaller images lens flare's 10-50 px discs cover everything whatever the seed
    outputs = {degrade.apply(scenes[0], name, 0.45, seed).tobytes() for seed in range(4)}
    assert len(outputs) > 1


@pytest.mark.parametrize("name", sorted(set(degrade.NAMES) - RANDOM_TYPES))
def test_deterministic_maps_ignore_the_seed(scene, name):
    np.testing.assert_array_equal(degrade.apply(scene, name, 0.45, 1), degrade.apply(scene, name, 0.45, 2))


@pytest.mark.parametrize("name", degrade.NAMES)
@pytest.mark.parametrize("shape", [(8, 8), (33, 47), (47, 33), (9, 120)])
def test_shape_and_dtype_are_kept_on_small_and_odd_sizes(name, shape):
    image = textured_scene(*shape, seed=shape[0] * 100 + shape[1])
    for s in (0.0, 0.23, 0.56, 0.9, 0.95, 1.0):
        out = degrade.apply(image, name, s, seed=7)
        assert out.shape == image.shape and out.dtype == np.uint8, (name, shape, s)


@pytest.mark.parametrize("name", degrade.NAMES)
def test_input_is_never_modified(scene, name):
    # ``scene`` is read-only: a write would raise. Check the values too, for copies made by Pillow.
    before = scene.copy()
    degrade.apply(scene, name, 0.9, 0)
    np.testing.assert_array_equal(scene, before)


@pytest.mark.parametrize("name", sorted(set(degrade.NAMES) - NOT_IDENTITY_AT_ZERO))
def test_identity_at_zero_within_two_grey_levels(scene, name):
    out = degrade.apply(scene, name, 0.0, seed=5)
    assert np.abs(out.astype(int) - scene.astype(int)).max() <= 2


@pytest.mark.parametrize("name", sorted(NOT_IDENTITY_AT_ZERO))
def test_exceptions_to_identity_at_zero_really_change_the_image(scene, name):
    out = degrade.apply(scene, name, 0.0, seed=5)
    assert np.abs(out.astype(int) - scene.astype(int)).max() > 2


@pytest.mark.parametrize("name", sorted(set(degrade.NAMES) - NOT_MONOTONE))
def test_mean_psnr_falls_strictly_with_benchmark_level(scenes, name):
    means = [np.mean([psnr(image, degrade.apply(image, name, s, seed=50 + i)) for i, image in enumerate(scenes)])
             for s in LEVELS]
    assert means[0] > means[1] > means[2], means


def test_color_diffusion_darkens_then_brightens_again_like_its_reference(scenes):
    brightness = {s: np.mean([degrade.apply(im, "color diffusion", s, 0).mean() / im.mean() for im in scenes])
                  for s in LEVELS}
    # mean gain (1-0.9s) + 0.9s·s²: 0.804, 0.677, 0.846
    assert brightness[0.23] == pytest.approx(0.804, abs=0.02)
    assert brightness[0.45] == pytest.approx(0.677, abs=0.02)
    assert brightness[0.9] == pytest.approx(0.846, abs=0.02)
    means = [np.mean([psnr(im, degrade.apply(im, "color diffusion", s, 0)) for im in scenes]) for s in LEVELS]
    assert means[0] > means[1]


def test_random_compositions_on_random_sizes_never_fail():
    rng = np.random.default_rng(123)
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(8, 90, size=2))
        image = textured_scene(h, w, seed=trial)
        steps = degrade.sample_training(rng, 1, 6)
        out, applied = degrade.compose(image, steps, seed=trial)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert [n for n, _ in applied] == [n for n, _ in steps]
