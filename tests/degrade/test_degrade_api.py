"""The registry and the checked entry point: names, stages, validation."""
import numpy as np
import pytest

from robust_r1_jax import degrade

SPEC_NAMES = (
    "lens blur", "lens flare", "motion blur", "dirty lens", "saturation",
    "jpeg compression", "block exchange", "mean shift", "scan lines",
    "darkness", "atmospheric turbulence", "noise", "color diffusion",
    "sharpness change", "graffiti", "watermark damage",
)


def test_names_are_the_sixteen_spec_names_in_spec_order():
    assert degrade.NAMES == SPEC_NAMES


def test_stages_partition_the_names():
    assert degrade.STAGES == {
        "capture": SPEC_NAMES[0:5],
        "transmission": SPEC_NAMES[5:9],
        "environment": SPEC_NAMES[9:13],
        "postprocessing": SPEC_NAMES[13:16],
    }
    for entry in degrade.REGISTRY:
        assert entry.name in degrade.STAGES[entry.stage]
        assert callable(entry.fn)


def test_apply_returns_a_new_writable_uint8_array(scene):
    for name in degrade.NAMES:
        out = degrade.apply(scene, name, 0.0, seed=0)
        assert out is not scene and not np.shares_memory(out, scene)
        assert out.flags.writeable and out.dtype == np.uint8 and out.shape == scene.shape


def test_apply_accepts_numpy_scalars_and_non_contiguous_views(scene):
    view = scene[:, ::-1]
    out = degrade.apply(view, "darkness", np.float32(0.5), np.int64(3))
    expected = np.floor(view.astype(np.float64) * 0.75).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["blur", "Lens Blur", "lens_blur", "", None])
def test_unknown_name_is_rejected(scene, name):
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade.apply(scene, name, 0.5, 0)


@pytest.mark.parametrize("image, message", [
    (np.zeros((16, 16, 3), np.float32), "dtype uint8"),
    (np.zeros((16, 16), np.uint8), "HxWx3"),
    (np.zeros((16, 16, 4), np.uint8), "HxWx3"),
    (np.zeros((7, 16, 3), np.uint8), "at least 8x8"),
    (np.zeros((16, 7, 3), np.uint8), "at least 8x8"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_image_is_rejected(image, message):
    with pytest.raises(ValueError, match=message):
        degrade.apply(image, "noise", 0.5, 0)


@pytest.mark.parametrize("intensity", [-0.01, 1.01, float("nan"), float("inf"), "0.5", True, None])
def test_intensity_outside_unit_interval_is_rejected(scene, intensity):
    with pytest.raises(ValueError, match="intensity"):
        degrade.apply(scene, "noise", intensity, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", None])
def test_bad_seed_is_rejected(scene, seed):
    with pytest.raises(ValueError, match="seed"):
        degrade.apply(scene, "noise", 0.5, seed)


def test_intensity_bounds_are_accepted(scene):
    for name in degrade.NAMES:
        assert degrade.apply(scene, name, 0, 0).shape == scene.shape
        assert degrade.apply(scene, name, 1, 0).shape == scene.shape


@pytest.mark.parametrize("shape", [(degrade.MIN_SIDE, degrade.MIN_SIDE), (degrade.MIN_SIDE, 1600), (1600, degrade.MIN_SIDE)])
def test_every_degradation_takes_the_smallest_and_most_elongated_images_synth_lets_through(shape):
    """data/synth.py lets an image reach the engine when its short side is >= MIN_SIDE and the processor's
    aspect ratio (<= 200) holds: each degradation must then work at every intensity."""
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for name in degrade.NAMES:
        for intensity in (0.0, 0.5, 1.0):
            assert degrade.apply(image, name, intensity, seed=3).shape == image.shape
    height, width = (side - 1 if side == degrade.MIN_SIDE else side for side in shape)
    thinner = np.zeros((height, width, 3), np.uint8)
    with pytest.raises(ValueError, match=f"at least {degrade.MIN_SIDE}x{degrade.MIN_SIDE}, got {height}x{width}"):
        degrade.apply(thinner, "noise", 0.5, seed=0)
