import numpy as np
import pytest

from robust_r1_jax.degrade.synthetic import textured_scene


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    """One natural-looking 64x80 image, read-only so any in-place write would raise."""
    image = textured_scene(64, 80, seed=11)
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def scenes() -> list[np.ndarray]:
    """Six natural-looking 128x160 images (gradients, shapes, grain)."""
    return [textured_scene(128, 160, seed=100 + i) for i in range(6)]
