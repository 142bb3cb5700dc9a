"""Model configuration as plain frozen dataclasses, with presets and Hugging Face conversion.

Two model families share these dataclasses, told apart by ``ModelConfig.model_type`` (``config.json``'s
``model_type``): ``"qwen2_5_vl"`` (Qwen2.5-VL) and ``"qwen3_vl"`` (Qwen3-VL, dense). A field only one family reads
says so; ``model/qwen3_vl.py`` holds what Qwen3-VL does differently. Qwen3-VL's mixture-of-experts variants
(``qwen3_vl_moe``: 30B-A3B, 235B-A22B) are not supported: their ``config.json`` is refused with that reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
          "float16": jnp.float16, "fp16": jnp.float16}


def resolve_dtype(dtype: Any):
    """A jnp dtype from a dtype or one of the names in ``DTYPES``; anything else is a clear error."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype name {dtype!r}; expected one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    try:
        return jnp.dtype(dtype).type
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 2048
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tokens_per_second: int = 2
    initializer_range: float = 0.02   # std of freshly initialised kernels (transformers' field)
    # Qwen3-VL only: a learned position table of num_position_embeddings (a square) resampled to each grid,
    # DeepStack mergers after the blocks listed in deepstack_visual_indexes, the MLP's activation.
    num_position_embeddings: int = 0
    deepstack_visual_indexes: tuple[int, ...] = ()
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (112 px / 14 px / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = True
    # Qwen3 sets head_dim independently of hidden_size / heads (config.json's ``head_dim``); None derives it.
    explicit_head_dim: int | None = None
    # Biases on the q/k/v projections (Qwen2: yes; Qwen3: config.json's attention_bias, False when released).
    attention_bias: bool = True
    # Qwen3: RMSNorm over head_dim on queries and keys before the rotary embedding.
    qk_norm: bool = False
    # Qwen3-VL: frequencies assigned to (t, h, w) round-robin (``mrope_interleaved``) instead of in blocks.
    mrope_interleaved: bool = False

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    # compute dtype of activations and matmuls; parameters are kept in param_dtype.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # "none" | "full" | "dots": what a decoder layer keeps for the backward pass.
    remat: str = "none"
    # "xla" | "cudnn" | "splash" | "auto": the kernel behind layers.attention (resolve_implementation).
    attention_impl: str = "xla"
    # Decoder layers and vision blocks stacked ([layers, ...] parameters) and run under lax.scan, so a compile
    # does not grow with depth; False keeps one module per layer. Not part of the HF config.json.
    scan_layers: bool = False
    # The model family, as config.json names it: "qwen2_5_vl" or "qwen3_vl" (FAMILIES).
    model_type: str = "qwen2_5_vl"

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown model_type {self.model_type!r}; expected one of {FAMILIES}")

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        text = TextConfig(**_tuples(d.pop("text", {})))
        vision = VisionConfig(**_tuples(d.pop("vision", {})))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(text=text, vision=vision, **d)

    # ---- Hugging Face ``config.json`` -------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "ModelConfig":
        """From a ``config.json`` dict, the family chosen by its ``model_type`` (none: Qwen2.5-VL).

        ``ModelFolderError`` (a ValueError) for a family this package does not implement (Qwen3-VL MoE names itself
        as such)."""
        kind = hf.get("model_type")
        if kind == "qwen3_vl":
            from robust_r1_jax.model import qwen3_vl
            return qwen3_vl.config_from_hf(hf, **overrides)
        if kind in UNSUPPORTED_FAMILIES:
            reason = UNSUPPORTED_FAMILIES[kind].format(dense=", ".join(preset_label(n) for n in sized_presets()))
            raise ModelFolderError(f"config.json has model_type {kind!r}: {reason}")
        if kind not in (None, "qwen2_5_vl"):
            raise ModelFolderError(f"config.json has model_type {kind!r}, expected one of {FAMILIES}")
        return read_hf_config(hf, QWEN2_5_VL_HF, **overrides)

    def to_hf(self) -> dict:
        """A ``config.json`` dict that transformers' config class of this family reads back."""
        if self.model_type == "qwen3_vl":
            from robust_r1_jax.model import qwen3_vl
            return qwen3_vl.config_to_hf(self)
        t, v = self.text, self.vision
        text = dict(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps, hidden_act="silu",
            max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=t.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                             "mrope_section": list(t.mrope_section)},
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, model_type="qwen2_5_vl_text",
        )
        vision = dict(
            depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_heads=v.num_heads, out_hidden_size=v.out_hidden_size, in_channels=v.in_channels,
            patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
            spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
            fullatt_block_indexes=list(v.fullatt_block_indexes), hidden_act="silu",
            tokens_per_second=v.tokens_per_second, initializer_range=v.initializer_range,
            model_type="qwen2_5_vl_vision",
        )
        return dict(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
                    text_config=text, vision_config=vision, tie_word_embeddings=t.tie_word_embeddings,
                    image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                    vision_start_token_id=self.vision_start_token_id,
                    vision_end_token_id=self.vision_end_token_id)


class ModelFolderError(ValueError):
    """A model or tokenizer folder this package cannot use (an unsupported family, weights missing, a tokenizer of
    another model); the message is one line naming the folder and what to do, which ``main`` prints alone (exit 2)."""


class MissingModelFiles(ModelFolderError, FileNotFoundError):
    """A model or tokenizer folder without the files it needs: weights beside a ``config.json``
    (``model.hf.weight_files``), a tokenizer's vocabulary (``model.loading.load_processor``)."""


@dataclasses.dataclass(frozen=True)
class HFFields:
    """How one family's ``config.json`` fills a ``ModelConfig`` (``read_hf_config``): where its text fields sit,
    the defaults of the fields a file may leave out, and what the family checks or sets beyond the shared fields.

    ``text_at_top_level``: transformers 4.x Qwen2.5-VL files keep the text fields at the top level, so those fill
    in what ``text_config`` lacks. ``rope_theta`` / ``mrope_section``: the text rotary defaults (transformers'
    config class defaults). ``vision``: ``VisionConfig`` field -> default, read from ``vision_config`` (a tuple or
    float default converts the file's value to that type); ``vision_fixed``: fields set whatever the file says.
    ``text_fields(text_config, rope)``: the family's own ``TextConfig`` fields, read before the shared ones; it
    raises ValueError for what the model here does not implement. ``check_vision``: ValueError for a tower the
    model here cannot build."""
    model_type: str
    text_at_top_level: bool
    rope_theta: float
    mrope_section: tuple[int, int, int]
    vision: Mapping[str, Any]
    vision_fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    text_fields: Callable[[dict, dict], dict] | None = None
    check_vision: Callable[[VisionConfig], None] | None = None


def _as_default_type(value, default):
    """``value`` as the type of its default where the file's JSON type differs (lists -> tuples, ints -> floats)."""
    if isinstance(default, tuple):
        return tuple(value)
    if isinstance(default, float):
        return float(value)
    return value


def read_hf_config(hf: dict, family: HFFields, **overrides) -> ModelConfig:
    """A ``ModelConfig`` of ``family`` from a ``config.json`` dict (transformers 4.x ``rope_scaling`` + ``rope_theta``
    or 5.x ``rope_parameters``); ``overrides`` are ``ModelConfig`` fields. KeyError naming a required text field
    the file lacks; ValueError from the family's checks."""
    t = dict(hf.get("text_config") or {})
    if family.text_at_top_level:
        for k, v in hf.items():
            t.setdefault(k, v)
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    own = family.text_fields(t, rope) if family.text_fields else {}
    text = TextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", t.get("rope_theta", family.rope_theta))),
        mrope_section=tuple(rope.get("mrope_section", family.mrope_section)),
        max_position_embeddings=t.get("max_position_embeddings", 128000),
        # transformers 5 reads tie_word_embeddings at the top level (4.x files repeat it in text_config).
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
        **own,
    )
    v = hf.get("vision_config") or {}
    vrope = v.get("rope_parameters") or {}
    fields = {}
    for name in (f.name for f in dataclasses.fields(VisionConfig)):  # in field order, as the file was always read
        if name == "out_hidden_size":
            fields[name] = v.get(name, text.hidden_size)
        elif name == "rope_theta":
            fields[name] = float(vrope.get("rope_theta", 10000.0))
        elif name in family.vision_fixed:
            fields[name] = family.vision_fixed[name]
        elif name in family.vision:
            fields[name] = _as_default_type(v.get(name, family.vision[name]), family.vision[name])
    vision = VisionConfig(**fields)
    if family.check_vision:
        family.check_vision(vision)
    # Where the top level was merged into t above, t already holds its token ids.
    top = {} if family.text_at_top_level else hf
    eos = t.get("eos_token_id", top.get("eos_token_id", 151645))
    return ModelConfig(text=text, vision=vision, model_type=family.model_type,
                       image_token_id=hf.get("image_token_id", 151655),
                       video_token_id=hf.get("video_token_id", 151656),
                       vision_start_token_id=hf.get("vision_start_token_id", 151652),
                       vision_end_token_id=hf.get("vision_end_token_id", 151653),
                       bos_token_id=t.get("bos_token_id") or top.get("bos_token_id") or 151643,
                       eos_token_id=eos[0] if isinstance(eos, (list, tuple)) else eos, **overrides)


# transformers' Qwen2_5_VLConfig defaults (Qwen2.5-VL-3B's tower).
QWEN2_5_VL_HF = HFFields(
    model_type="qwen2_5_vl", text_at_top_level=True, rope_theta=1e6, mrope_section=(16, 24, 24),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=(7, 15, 23, 31),
                tokens_per_second=2, initializer_range=0.02),
)


FAMILIES = ("qwen2_5_vl", "qwen3_vl")
# The names the model cards use for each family (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen3-VL-4B-Instruct).
FAMILY_NAMES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
UNSUPPORTED_FAMILIES = {
    "qwen3_vl_moe": "Qwen3-VL mixture-of-experts models (30B-A3B, 235B-A22B) are out of scope; use a dense "
                    "model ({dense})",
}


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def tiny(vocab_size: int = 512, **kw) -> ModelConfig:
    """A few-layer model for tests and the CPU demo. Special tokens sit at the top of the vocabulary."""
    text = TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3),
                      max_position_embeddings=4096, tie_word_embeddings=True)
    vision = VisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          fullatt_block_indexes=(1,))
    top = vocab_size
    ids = dict(bos_token_id=top - 7, vision_start_token_id=top - 6, vision_end_token_id=top - 5,
               image_token_id=top - 4, video_token_id=top - 3, eos_token_id=top - 2)
    ids.update(kw)
    return ModelConfig(text=text, vision=vision, **ids)


def demo(vocab_size: int = 2048, **kw) -> ModelConfig:
    """The embedded default's model: small enough to train on a 2-core CPU in minutes."""
    base = tiny(vocab_size=vocab_size, **kw)
    text = dataclasses.replace(base.text, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, mrope_section=(4, 6, 6))
    # Trained from scratch: at the usual 0.02 the tower's features start ~40x smaller than the language
    # model's activations and the model learns to answer from the text alone; 0.1 lets it read the image.
    vision = dataclasses.replace(base.vision, depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                 out_hidden_size=128, fullatt_block_indexes=(1,), initializer_range=0.1)
    return base.replace(text=text, vision=vision)


def qwen2_5_vl_3b(**kw) -> ModelConfig:
    return ModelConfig(**kw)


def qwen2_5_vl_7b(**kw) -> ModelConfig:
    text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    return ModelConfig(text=text, vision=VisionConfig(out_hidden_size=3584), **kw)


def qwen3_vl_tiny(vocab_size: int = 512, **kw) -> ModelConfig:
    """``tiny``'s sizes in the Qwen3-VL family: q/k norm, head_dim set apart from hidden / heads, interleaved
    M-RoPE, 16-px patches with a 4 x 4 learned position table, DeepStack after vision blocks 0 and 1."""
    base = tiny(vocab_size=vocab_size, **kw)
    text = dataclasses.replace(base.text, explicit_head_dim=24, mrope_section=(4, 4, 4), attention_bias=False,
                               qk_norm=True, mrope_interleaved=True, rope_theta=5_000_000.0)
    vision = dataclasses.replace(base.vision, patch_size=16, fullatt_block_indexes=(), window_size=0,
                                 num_position_embeddings=16, deepstack_visual_indexes=(0, 1),
                                 hidden_act="gelu_pytorch_tanh")
    return base.replace(text=text, vision=vision, model_type="qwen3_vl")


def _qwen3_vl(text: dict, vision: dict, **kw) -> ModelConfig:
    """A released Qwen3-VL's shapes: Qwen3 text (head_dim 128, rope_theta 5e6, interleaved M-RoPE 24/20/20,
    262144 positions) and the SigLIP-2-style tower (16-px patches, 48 x 48 learned positions)."""
    text = TextConfig(vocab_size=151936, explicit_head_dim=128, rope_theta=5_000_000.0, mrope_section=(24, 20, 20),
                      max_position_embeddings=262144, attention_bias=False, qk_norm=True, mrope_interleaved=True,
                      **text)
    vision = VisionConfig(num_heads=16, patch_size=16, num_position_embeddings=2304, fullatt_block_indexes=(),
                          window_size=0, hidden_act="gelu_pytorch_tanh", out_hidden_size=text.hidden_size, **vision)
    return ModelConfig(text=text, vision=vision, model_type="qwen3_vl", **kw)


# Shapes from the released Qwen/Qwen3-VL-{2B,4B,8B}-Instruct config.json files (as transcribed in public
# repositories; checked offline against those copies, not against the Hub).
def qwen3_vl_2b(**kw) -> ModelConfig:
    return _qwen3_vl(dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                          num_key_value_heads=8, tie_word_embeddings=True),
                     dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=(5, 11, 17)),
                     **kw)


def qwen3_vl_4b(**kw) -> ModelConfig:
    return _qwen3_vl(dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                          num_key_value_heads=8, tie_word_embeddings=True),
                     dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=(5, 11, 17)),
                     **kw)


def qwen3_vl_8b(**kw) -> ModelConfig:
    return _qwen3_vl(dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                          num_key_value_heads=8, tie_word_embeddings=False),
                     dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=(8, 16, 24)),
                     **kw)


# Presets small enough to initialise from scratch on a CPU; they take their vocabulary size and special token ids
# from the run's tokenizer.
SMALL_PRESETS = ("tiny", "demo", "qwen3_vl_tiny")

PRESETS = {"tiny": tiny, "demo": demo, "3b": qwen2_5_vl_3b, "7b": qwen2_5_vl_7b, "qwen3_vl_tiny": qwen3_vl_tiny,
           "qwen3_vl_2b": qwen3_vl_2b, "qwen3_vl_4b": qwen3_vl_4b, "qwen3_vl_8b": qwen3_vl_8b}


def sized_presets() -> tuple[str, ...]:
    """The presets of released models (every preset but ``SMALL_PRESETS``), in ``PRESETS`` order."""
    return tuple(name for name in PRESETS if name not in SMALL_PRESETS)


def preset_size(name: str) -> str:
    """A sized preset's parameter count as its name writes it ("3b" for "3b", "4b" for "qwen3_vl_4b")."""
    return name.rsplit("_", 1)[-1]


def preset_label(name: str) -> str:
    """A sized preset as its model card names it: "Qwen2.5-VL-3B", "Qwen3-VL-4B"."""
    return f"{FAMILY_NAMES[preset(name).model_type]}-{preset_size(name).upper()}"


def preset(name: str, **kw) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**kw)
