"""Each degradation's parameter map, checked against an independent computation of SPEC section 2."""
import colorsys
import io
import math

import numpy as np
import pytest
from PIL import Image

from robust_r1_jax import degrade
from robust_r1_jax.degrade import environment, filters, meanshift, postprocessing, transmission
from robust_r1_jax.degrade.synthetic import textured_scene


def reflect_filter(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Float separable filter with OpenCV's reflect-101 border, straightforwardly."""
    r = len(taps) // 2
    f = image.astype(np.float64)
    p = np.pad(f, ((r, r), (0, 0), (0, 0)), mode="reflect")
    v = sum(t * p[k:k + f.shape[0]] for k, t in enumerate(taps))
    p = np.pad(v, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(t * p[:, k:k + f.shape[1]] for k, t in enumerate(taps))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured_scene(72, 96, seed=3)


# --- environment -------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [0.1, 0.5, 0.9, 1.0])
def test_darkness_is_img_times_one_minus_s_squared_truncated(image, s):
    expected = np.floor(image.astype(np.float64) * (1 - s**2)).astype(np.uint8)
    np.testing.assert_array_equal(degrade.apply(image, "darkness", s, 0), expected)


def test_darkness_spot_values():
    grey = np.full((8, 8, 3), 200, np.uint8)
    assert degrade.apply(grey, "darkness", 0.5, 0)[0, 0, 0] == 150
    assert degrade.apply(grey, "darkness", 1.0, 0).max() == 0


@pytest.mark.parametrize("s, std", [(0.2, 15.0), (0.4, 30.0)])
def test_noise_std_is_75s_grey_levels(s, std):
    grey = np.full((160, 160, 3), 128, np.uint8)
    diff = degrade.apply(grey, "noise", s, seed=9).astype(np.float64) - 128
    assert diff.std() == pytest.approx(std, rel=0.02)
    assert diff.mean() == pytest.approx(-0.5, abs=0.3)  # truncation, as the reference's cast
    assert np.mean(np.abs(diff + 0.5) <= std) == pytest.approx(0.683, abs=0.01)  # Gaussian shape


def test_noise_quantile_table_inverts_the_normal_cdf():
    q = environment.standard_normal_quantiles()
    for k in (0, 1, 100, 1000, 20000, 32767, 32768, 50000, 65535):
        p = (k + 0.5) / 65536
        assert 0.5 * (1 + math.erf(q[k] / math.sqrt(2))) == pytest.approx(p, rel=1e-6)
    assert np.all(np.diff(q) > 0)


def test_atmospheric_turbulence_matches_a_float_remap(image):
    h, w = image.shape[:2]
    for s in (0.23, 0.9):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        d = 40 * s * np.sin(y / 30 + 5 * s)
        xs, ys = np.clip(x + d, 0, w - 1), np.clip(y + 0.7 * d, 0, h - 1)
        x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
        f = image.astype(np.float64)
        expected = (f[y0, x0] * (1 - fx) + f[y0, x1] * fx) * (1 - fy) + (f[y1, x0] * (1 - fx) + f[y1, x1] * fx) * fy
        out = degrade.apply(image, "atmospheric turbulence", s, 0)
        assert np.abs(out - expected).max() <= 2.0


def test_color_diffusion_kernel_map_and_its_box_equivalent():
    taps = environment.color_diffusion_kernel(0.45)
    assert len(taps) == 3 + 2 * int(20 * 0.45) == 21
    offsets = np.arange(21) - 10
    sigma = 50 * 0.45
    expected = np.exp(-offsets**2 / (2 * sigma**2))
    np.testing.assert_allclose(taps, expected / expected.sum())
    radius = filters.box_radius_matching(taps)
    whole, frac = int(radius), radius - int(radius)
    box = np.r_[frac, np.ones(2 * whole + 1), frac] / (2 * radius + 1)
    box_offsets = np.arange(len(box)) - len(box) // 2
    assert np.sum(box * box_offsets**2) == pytest.approx(np.sum(taps * offsets**2), rel=1e-6)


def test_color_diffusion_blends_a_dimmed_blur(image):
    s = 0.45
    blurred = reflect_filter(image, environment.color_diffusion_kernel(s))
    expected = (1 - 0.9 * s) * image + 0.9 * s * np.floor(blurred * s * s)
    out = degrade.apply(image, "color diffusion", s, 0)
    assert np.abs(out - expected)[4:-4, 4:-4].max() <= 2.0


def test_color_diffusion_adds_grey_discs_only_above_0_9():
    black = np.zeros((96, 96, 3), np.uint8)
    assert degrade.apply(black, "color diffusion", 0.9, 0).max() == 0
    out = degrade.apply(black, "color diffusion", 0.95, 0)
    assert np.mean(out.max(axis=2) > 0) > 0.2
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


# --- capture -----------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [0.05, 0.2, 0.45])
def test_lens_blur_matches_the_reference_gaussian_away_from_borders(image, s):
    size = int(3 + 300 * s) | 1
    blurred = np.floor(reflect_filter(image, filters.opencv_gaussian_kernel(size, 20 * s)))
    expected = np.clip(np.floor((1 - 0.7 * s) * image + 0.9 * s * blurred + 0.5), 0, 255)
    out = degrade.apply(image, "lens blur", s, 0).astype(np.float64)
    margin = int(3 * 20 * s) + 1
    assert np.abs(out - expected)[margin:-margin, margin:-margin].max() <= 1.0
    assert np.abs(out - expected).mean() <= 0.5


def test_motion_blur_spreads_a_dot_along_a_normalised_line():
    dot = np.zeros((61, 61, 3), np.uint8)
    dot[30, 30] = 255
    for s, length in ((0.2, 6), (0.45, 13), (0.9, 27)):
        out = degrade.apply(dot, "motion blur", s, seed=4)[..., 0].astype(np.float64)
        lit = np.argwhere(out > 0)
        assert len(lit) <= length
        span = np.max(np.linalg.norm(lit[:, None] - lit[None, :], axis=-1))  # Euclidean extent
        assert abs(span - (length - 1)) <= 1.0, (s, span)
        assert out.sum() == pytest.approx(255, abs=length)  # kernel sums to 1
    grey = np.full((20, 20, 3), 77, np.uint8)
    np.testing.assert_array_equal(degrade.apply(grey, "motion blur", 0.7, 1), grey)


@pytest.mark.parametrize("s", [0.3, 0.7, 1.0])
def test_saturation_scales_hsv_saturation(image, s):
    out = degrade.apply(image, "saturation", s, 0)
    for y, x in [(0, 0), (10, 20), (35, 50), (71, 95), (50, 5)]:
        h, sat, v = colorsys.rgb_to_hsv(*(image[y, x] / 255.0))
        expected = np.array(colorsys.hsv_to_rgb(h, sat * (1 - s), v)) * 255
        assert np.abs(out[y, x] - expected).max() <= 1.0
    if s == 1.0:
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_lens_flare_only_brightens_and_grows_with_intensity():
    image = textured_scene(160, 200, seed=4)  # discs are 10-50 px whatever the image size
    lit = []
    for s in (0.23, 0.45, 0.9):
        out = degrade.apply(image, "lens flare", s, seed=2)
        assert np.all(out >= image)
        lit.append(np.mean(out.astype(int) - image > 20))
    assert 0 < lit[0] < lit[1] < lit[2]


def test_dirty_lens_is_a_weighted_blend_with_a_grey_dirt_layer(image):
    s = 0.6
    out = degrade.apply(image, "dirty lens", s, seed=2).astype(np.float64)
    dirt = (out - (1 - 0.7 * s) * image) / (0.8 * s)  # recover the dirt, up to rounding
    assert dirt.min() >= -1.5 and dirt.max() <= 130
    assert np.abs(dirt[..., 0] - dirt[..., 1]).max() <= 2.5  # grey
    assert dirt.mean() > 5


# --- transmission ------------------------------------------------------------------------------

@pytest.mark.parametrize("s, quality", [(0.0, 100), (0.45, 57), (0.9, 14), (0.96, 8), (1.0, 5)])
def test_jpeg_uses_quality_100_minus_95s_and_equals_pillow_at_that_quality(image, s, quality):
    assert transmission.jpeg_quality(s) == quality
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(degrade.apply(image, "jpeg compression", s, 0), expected)


@pytest.mark.parametrize("s, period, height", [(0.0, 200, 5), (0.23, 60, 5), (0.45, 36, 5), (0.9, 20, 6), (1.0, 18, 7)])
def test_scan_lines_period_and_band_height(s, period, height):
    assert transmission.scan_line_geometry(s) == (period, height)
    image = textured_scene(220, 30, seed=1)
    out = degrade.apply(image, "scan lines", s, 0)
    in_band = (np.arange(220) % period) < height
    np.testing.assert_array_equal(out[in_band], np.floor(image[in_band] * 0.01).astype(np.uint8))
    np.testing.assert_array_equal(out[~in_band], image[~in_band])


def test_block_exchange_permutes_whole_blocks():
    image = textured_scene(100, 130, seed=8)
    s = 0.45
    size = min(32, int(5 + 30 * s))
    assert size == 18
    out = degrade.apply(image, "block exchange", s, seed=3)
    rows, cols = 100 // size, 130 // size
    np.testing.assert_array_equal(out[rows * size:], image[rows * size:])
    np.testing.assert_array_equal(out[:, cols * size:], image[:, cols * size:])

    def blocks(a):
        return sorted(a[i * size:(i + 1) * size, j * size:(j + 1) * size].tobytes()
                      for i in range(rows) for j in range(cols))

    assert blocks(out) == blocks(image)
    moved = sum(not np.array_equal(out[i * size:(i + 1) * size, j * size:(j + 1) * size],
                                   image[i * size:(i + 1) * size, j * size:(j + 1) * size])
                for i in range(rows) for j in range(cols))
    assert 2 <= moved <= 2 * int(35 * s)


def test_mean_shift_flattens_noise_below_the_colour_radius_and_keeps_strong_edges():
    rng = np.random.default_rng(0)
    image = np.zeros((96, 96, 3), np.float64)
    image[:, :48] = (60, 90, 120)
    image[:, 48:] = (160, 190, 220)  # 173 grey levels away: far beyond the colour radius
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    assert meanshift.mean_shift_radii(0.45) == (18, 18)
    out = degrade.apply(image, "mean shift", 0.45, 0).astype(np.float64)
    left, right = out[:, 4:44], out[:, 52:92]
    assert left.std(axis=(0, 1)).max() < 1.5 and image[:, 4:44].std(axis=(0, 1)).min() > 3.5
    np.testing.assert_allclose(left.mean(axis=(0, 1)), (60, 90, 120), atol=2)
    np.testing.assert_allclose(right.mean(axis=(0, 1)), (160, 190, 220), atol=2)
    assert np.abs(out[:, 46:48] - (60, 90, 120)).max() < 15  # the edge stays sharp
    assert np.abs(out[:, 48:50] - (160, 190, 220)).max() < 15
    np.testing.assert_array_equal(degrade.apply(image, "mean shift", 0.02, 0), image)  # radii 0


# --- postprocessing ----------------------------------------------------------------------------

@pytest.mark.parametrize("s", [0.0, 0.05, 0.45, 0.9])
def test_sharpness_change_matches_the_unnormalised_kernel_blend(image, s):
    f = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="reflect")
    if s > 0:
        response = 5 * f[1:-1, 1:-1] - f[:-2, 1:-1] - f[2:, 1:-1] - f[1:-1, :-2] - f[1:-1, 2:]
        sharp = np.clip(np.rint(response * 80 * s), 0, 255)
    else:
        sharp = np.floor(reflect_filter(image, np.array([0.25, 0.5, 0.25])) + 0.5)
    expected = np.floor(0.7 * image + 0.3 * sharp + 0.5)
    assert np.abs(degrade.apply(image, "sharpness change", s, 0) - expected).max() <= 1


def test_graffiti_stamps_red_text_only_above_0_55():
    grey = np.full((200, 300, 3), 128, np.uint8)

    def red_pixels(out):
        return int(np.sum((out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] < 60)))

    stamped = [red_pixels(degrade.apply(grey, "graffiti", 0.9, seed)) for seed in range(3)]
    unstamped = [red_pixels(degrade.apply(grey, "graffiti", 0.5, seed)) for seed in range(3)]
    assert min(stamped) > 300
    assert max(unstamped) < min(stamped) / 4
    lines = degrade.apply(grey, "graffiti", 0.5, 0)
    assert np.mean(np.any(lines != 128, axis=2)) > 0.005  # int(10·0.5) = 5 lines drawn


def test_watermark_damage_changes_only_the_rectangles_and_darkens_edges_above_half(image):
    image = textured_scene(160, 200, seed=5)
    for s in (0.3, 0.8):
        mask = postprocessing.watermark_rectangles(160, 200, s, np.random.default_rng(6))
        out = degrade.apply(image, "watermark damage", s, seed=6)
        np.testing.assert_array_equal(out[~mask], image[~mask])
        assert np.mean(out[mask] != image[mask]) > 0.3
        edge = mask & ~np.pad(mask, 1, mode="edge")[:-2, 1:-1] | mask & ~np.pad(mask, 1, mode="edge")[2:, 1:-1]
        inner = out[edge].astype(np.float64).mean() / max(image[edge].astype(np.float64).mean(), 1)
        assert (inner < 0.9) == (s > 0.5)


def test_watermark_rectangle_sizes_follow_the_reference_on_large_images():
    mask = postprocessing.watermark_rectangles(448, 448, 0.0, np.random.default_rng(0))  # one rectangle
    ys, xs = np.nonzero(mask)
    assert 51 <= np.ptp(xs) + 1 <= 201 and 21 <= np.ptp(ys) + 1 <= 81
