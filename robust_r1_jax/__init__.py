"""robust_r1_jax: Robust-R1 (degradation-aware reasoning for VLMs) in JAX / Flax NNX."""

__version__ = "0.1.0"
