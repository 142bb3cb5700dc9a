"""The scaffold both training loops share (``sft.run`` and ``rl.grpo.run``): everything but the loop itself.

``Run(config, name, loader_kind)`` joins the distributed job, checks the workdir, builds the mesh, tokenizer,
model, optimizer and train state: ``run.state`` is then the starting point (before any resume). Entering it as a
context manager opens the grain loader, the checkpointer (resuming the newest checkpoint in the workdir: model,
optimizer, step and data order), the metric writer and the progress bar, and closes them all on the way out,
whatever happens inside. A loop then reads ``run.steps()``, calls ``run.step_done`` after each step (metrics,
progress, console line, checkpoint when due) and ``run.finish`` at the end (waits for saves, exports the model).

The config is checked as a whole (``train.validate``) before the tokenizer or model is built. Inside the context,
SIGTERM / SIGINT make ``step_done`` save the step just finished and raise ``stops.Preempted``; a step whose update
was skipped (``scalars["skipped"]``) is never saved as a checkpoint, so rotation keeps the newest one from before
a run of skipped steps, and ``train.max_consecutive_skips`` of them in a row raise ``stops.Diverged`` naming it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Callable

import jax
import ml_collections
from flax import nnx

from robust_r1_jax import distributed, parallel
from robust_r1_jax.model import assets, config as model_config, hf, loading, orbax_io
from robust_r1_jax.model.vlm import Qwen25VL
from robust_r1_jax.train import checkpoint as ckpt
from robust_r1_jax.train import curves
from robust_r1_jax.train import metrics as mx
from robust_r1_jax.train import optim, state as train_state
from robust_r1_jax.train import memory, stops, validate

log = logging.getLogger(__name__)


# ---- set-up pieces ------------------------------------------------------------------------------------------------
def init_distributed(config) -> distributed.DistributedInfo:
    d = config.distributed
    return distributed.initialize(coordinator_address=d.coordinator_address or None,
                                  num_processes=d.num_processes or None,
                                  process_id=None if d.process_id < 0 else d.process_id, timeout_s=d.timeout_s)


def check_workdir(workdir: str) -> str:
    """Fails before any compute when the workdir cannot be written (gs:// paths are left to orbax)."""
    if workdir.startswith("gs://"):
        return workdir
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"workdir {path} is not writable: {e}") from e
    return path


def build_mesh(config) -> jax.sharding.Mesh:
    """The recipe's (data, fsdp, tensor) mesh over every device; a mesh the devices cannot form is one
    ``validate.ConfigError`` line naming what JAX sees (only CPU devices usually means the accelerator build of jax
    is not installed: requirements-gpu.txt / requirements-tpu.txt)."""
    m = config.mesh
    try:
        return parallel.make_mesh(m.data, m.fsdp, m.tensor)
    except ValueError as error:
        devices = jax.devices()
        seen = f"JAX sees {len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}"
        hint = ("; on NVIDIA GPUs install requirements-gpu.txt, on TPU VMs requirements-tpu.txt (WORKSPACE.md "
                "\"Run\")" if devices[0].platform == "cpu" else "")
        raise validate.ConfigError([f"config.mesh (data={m.data}, fsdp={m.fsdp}, tensor={m.tensor}): {error}; "
                                    f"{seen}{hint}"]) from error


def planned_model_config(config) -> model_config.ModelConfig:
    """The model config the run will build, read without any weight: ``model.init_from``'s own (its config.json,
    model_config.json or training checkpoint meta), else the preset, with the recipe's runtime settings."""
    m = config.model
    runtime = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention_impl=m.attention_impl,
                   scan_layers=m.get("scan_layers", False))
    if m.init_from:  # the recipe's dtypes replace the stored ones: config.json alone is read
        return loading.read_config(m.init_from, stored_dtype=False).replace(**runtime)
    extra = {"vocab_size": m.vocab_size} if m.get("vocab_size") else {}
    return model_config.preset(m.preset, **extra, **runtime)


def check_model_fits(config, mesh, kind: str) -> None:
    """Before any weight is read: the model in ``init_from`` is the size the recipe was written for
    (``validate.model_size_problems``) and its per-device memory estimate (``train.memory``) fits the devices;
    otherwise ``validate.ConfigError`` with one line; a folder no mode can use (an unsupported family, no weight
    files) is one such line too. ``train.memory_check=False`` skips the memory part."""
    try:
        planned = planned_model_config(config)
        problems = validate.model_size_problems(config, planned, kind) or _weight_problems(config.model.init_from)
    except model_config.ModelFolderError as error:
        raise validate.ConfigError([f"config.model.init_from: {error}"]) from error
    if problems:
        raise validate.ConfigError(problems)
    if config.train.get("memory_check", True):
        estimate = memory.check_fits(config, planned, mesh, kind)
        log.info("memory: about %s", estimate.describe())


def _weight_problems(init_from: str) -> list[str]:
    """A Hugging Face folder's weight files are all there (read from the index and headers, no tensor loaded)."""
    if init_from and loading.is_hf_dir(init_from):
        try:
            hf.weight_files(init_from)
        except model_config.MissingModelFiles as error:
            return [f"config.model.init_from: {error}"]
    return []


def load_processor(config):
    """The run's tokenizer (``data.tokenizer``, else the ``model.init_from`` directory) at the data's pixel bounds."""
    path = config.data.tokenizer or config.model.init_from
    if not path and config.model.preset not in model_config.SMALL_PRESETS:
        raise ValueError(f"config.model.init_from is required for the {config.model.preset!r} preset: a Hugging Face "
                         f"directory, an exported model or a training checkpoint to start from")
    if not path:
        raise ValueError("config.data.tokenizer (a tokenizer directory) is required when model.init_from is empty")
    return loading.load_processor(path, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels,
                                  field="--config.data.tokenizer")


def build_model(config, processor, mesh) -> Qwen25VL:
    """From a checkpoint (``model.init_from``, any layout ``model.loading`` reads) or freshly initialised from a
    preset; the small presets take their vocabulary and special token ids from the tokenizer."""
    m = config.model
    runtime = dict(dtype=m.dtype, remat=m.remat, attention_impl=m.attention_impl,
                   scan_layers=m.get("scan_layers", False))
    if m.init_from:   # a tokenizer of another model is named before the weights load
        loading.check_pairing(planned_model_config(config), processor, model_dir=m.init_from,
                              field="--config.data.tokenizer")
        model = loading.with_runtime_settings(loading.load_model(m.init_from, m.param_dtype, mesh=mesh), **runtime)
    elif m.preset in model_config.SMALL_PRESETS:
        vocab = m.vocab_size or len(processor.tokenizer)
        cfg = model_config.preset(m.preset, vocab_size=vocab, param_dtype=m.param_dtype, **runtime,
                                  **loading.token_fields(processor))
        model = Qwen25VL(cfg, rngs=nnx.Rngs(config.seed))
    else:
        model = Qwen25VL(model_config.preset(m.preset, param_dtype=m.param_dtype, **runtime),
                         rngs=nnx.Rngs(config.seed))
    loading.check_pairing(model, processor)
    return model


def optim_config(config, steps: int) -> optim.OptimConfig:
    """``config.optim`` with the schedule in training steps; a GRPO config's ``grpo.inner_iterations`` (μ
    optimizer updates per step) sizes it in updates (``optim.schedule``)."""
    o = config.optim
    updates = int(config.grpo.inner_iterations) if "grpo" in config else 1
    return optim.OptimConfig(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
                             total_steps=o.total_steps or steps, min_lr_ratio=o.min_lr_ratio,
                             weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm,
                             updates_per_step=updates)


def make_loader(config, processor, per_host: int, info, kind: str = "sft"):
    """This process's shard of the ``robust_r1`` dataset as fixed-shape SFT or RL batches (grain)."""
    from robust_r1_jax.data import pipeline, tfds_builder
    d = config.data
    source = tfds_builder.data_source(d.dataset_dir, d.split)
    extra = {k: d[k] for k in ("reference_answer_bytes", "reference_names", "reference_name_bytes", "prompt_style")
             if k in d}
    pcfg = pipeline.PipelineConfig(batch_size=per_host, seq_len=d.seq_len, patch_bucket=d.patch_bucket,
                                   image_slots=d.image_slots, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                                   seed=config.seed, shuffle=d.shuffle, num_epochs=None,
                                   worker_count=d.worker_count, packing=kind == "sft" and d.get("packing", False),
                                   **extra)
    make = pipeline.make_sft_loader if kind == "sft" else pipeline.make_rl_loader
    return make(source, processor, pcfg, process_index=info.process_index, process_count=info.process_count)


def run_meta(config, model) -> dict:
    return dict(model_config=model.config.to_dict(), config=config.to_json_best_effort())


def progress_bar(start: int, total: int, desc: str):
    if not distributed.is_primary():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)


def export_dtype(config) -> str:
    """The stored dtype of a run's ``model/``: ``train.export_dtype``, or ("") the compute dtype ``model.dtype``
    (bf16 for the recipes, whose fp32 master weights stay in the checkpoints), as the upstream release ships."""
    return config.train.get("export_dtype", "") or config.model.dtype


def started_processor(init_from: str) -> str:
    """The folder holding the image processor config of the model a run started from ("" when it has none: a
    model trained from scratch, or a remote path)."""
    if not init_from or "://" in init_from or not os.path.isdir(init_from):
        return ""
    holds = lambda d: os.path.isfile(os.path.join(d, assets.PREPROCESSOR_FILE))
    return next((d for d in loading.asset_sources(init_from) if os.path.isdir(d) and holds(d)), "")


def export(config, model: Qwen25VL, model_dir: str, image_processor) -> None:
    """The run's ``model/``: parameters in ``export_dtype``, the tokenizer, and the image processor config of the
    model the run started from (its pixel bounds, not the training data's); a model trained from scratch gets the
    training ``image_processor``'s."""
    source = started_processor(config.model.init_from)
    orbax_io.save(model, model_dir, asset_sources=(config.data.tokenizer, config.model.init_from),
                  image_processor=None if source else image_processor, processor_source=source,
                  dtype=export_dtype(config))


# ---- the scaffold -------------------------------------------------------------------------------------------------
class Run:
    """One training run's set-up and close-out; see the module docstring for the order of things."""

    def __init__(self, config: ml_collections.ConfigDict, name: str, loader_kind: str = "sft",
                 problems: tuple[str, ...] = (), loader_scale: int = 1):
        """``problems``: the loop's own config problems, reported with the rest (or a function of the mesh that
        gives them, for problems that depend on the devices); ``loader_scale``: the loader yields that many times
        the global batch per step (GRPO's dynamic sampling draws more prompts)."""
        self.config, self.name, self.loader_kind = config, name, loader_kind
        self.info = init_distributed(config)
        self.mesh = build_mesh(config)
        validate.check_training_config(config, self.mesh, self.info.process_count,
                                       tuple(problems(self.mesh) if callable(problems) else problems))
        check_model_fits(config, self.mesh, loader_kind)
        self.workdir = check_workdir(config.workdir)
        self.per_host = distributed.check_divisible(config.data.global_batch_size, self.info.process_count)
        self.loader_rows = self.per_host * loader_scale
        self.processor = load_processor(config)
        model = build_model(config, self.processor, self.mesh)
        self.model_config = model.config
        self.optim_config = optim_config(config, config.train.steps)
        self.tx = optim.optimizer(self.optim_config)
        self.schedule = optim.schedule(self.optim_config)
        self.parts, self.state = train_state.init_state(model, self.tx, tuple(config.train.freeze), self.mesh)
        self.start = 0
        self.model_dir = None
        self.skip_run: list[int] = []   # the steps of the current run of consecutive skipped updates
        self._closing = contextlib.ExitStack()

    def __enter__(self) -> "Run":
        with contextlib.ExitStack() as opening:  # a failure while opening closes what was already open
            # Steps trace inside the run: scanned layers pin their activations to the batch layout of this mesh.
            opening.enter_context(jax.set_mesh(self.mesh))
            self.loader = opening.enter_context(contextlib.closing(
                make_loader(self.config, self.processor, self.loader_rows, self.info, self.loader_kind)))
            self.checkpointer = opening.enter_context(contextlib.closing(ckpt.Checkpointer(
                os.path.join(self.workdir, "checkpoints"), keep=self.config.train.keep,
                async_save=self.config.train.async_checkpoint)))
            self._resume()
            self.writer = opening.enter_context(contextlib.closing(mx.Writer(
                os.path.join(self.workdir, "logs"), resume_step=self.start, panels=curves.PANELS.get(self.name, ()))))
            self.signals = opening.enter_context(stops.StopSignals())
            self.progress = progress_bar(self.start, self.config.train.steps, self.name)
            if self.progress is not None:
                opening.enter_context(contextlib.closing(self.progress))
            self._closing = opening.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.close()

    def _resume(self) -> None:
        if self.checkpointer.latest_step() is None:
            return
        ckpt.check_compatible(self.checkpointer.read_meta(), self.model_config, self.checkpointer.directory)
        self.state, data_state, _, self.start = self.checkpointer.restore(self.state)
        self.loader.set_state(data_state)
        log.info("%s: resumed from step %d in %s", self.name, self.start, self.checkpointer.directory)

    def steps(self) -> range:
        return range(self.start, self.config.train.steps)

    def model(self, state) -> Qwen25VL:
        """The whole model of a train state (trained and frozen parameters)."""
        return self.parts.merge(state.trainable, state.frozen)

    def parameter_counts(self) -> dict:
        """Trained parameters, vision parameters, and whether any vision parameter is trained."""
        flat = lambda tree: [(p, x) for p, x in nnx.to_flat_state(tree)]
        trained, frozen = flat(self.state.trainable), flat(self.state.frozen)
        return dict(trained=train_state.count(self.state.trainable),
                    vision=sum(int(x.size) for p, x in trained + frozen if p[0] == "visual"),
                    vision_trained=any(p[0] == "visual" for p, _ in trained))

    def step_done(self, step: int, state, scalars: dict, postfix: dict, console_line: Callable[[], str]) -> None:
        """After 0-based ``step``: its scalars to the writer, the progress bar, ``console_line()`` to the log every
        ``train.log_every`` steps, and a checkpoint every ``train.checkpoint_every`` steps and at the last (not of a
        skipped update). Raises ``stops.Diverged`` after ``train.max_consecutive_skips`` skipped updates in a row
        and ``stops.Preempted`` (after saving this step) once any process was sent SIGTERM or SIGINT."""
        done, train = step + 1, self.config.train
        skipped = float(scalars.get("skipped", 0)) > 0
        self.writer.write(done, scalars)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(**postfix)
        if done % train.log_every == 0 and distributed.is_primary():
            log.info(console_line())
        self._count_skips(done, skipped)
        signum = self.signals.agreed()
        due = done % train.checkpoint_every == 0 or done == train.steps
        if (due or signum) and not skipped:
            self.checkpointer.save(done, state, self.loader.get_state(), run_meta(self.config, self.model(state)),
                                   force=bool(signum))
        elif due:
            log.warning("%s: no checkpoint at step %d: its update was skipped (the newest stays %s)", self.name,
                        done, self._last_checkpoint())
        if due or signum:
            self.writer.write_curves()
        if signum:
            self.checkpointer.wait()
            raise stops.Preempted(f"{self.name}: stopped by {stops.signal_name(signum)} after step {done} of "
                                  f"{train.steps}; newest checkpoint: {self._last_checkpoint()}; run the same "
                                  f"command to resume", signum)

    def _count_skips(self, done: int, skipped: bool) -> None:
        if not skipped:
            self.skip_run = []
            return
        self.skip_run.append(done)
        log.warning("%s step %d: non-finite loss, gradient or update, update skipped (%d in a row)", self.name,
                    done, len(self.skip_run))
        limit = self.config.train.get("max_consecutive_skips", 0)
        if limit and len(self.skip_run) >= limit:
            self.checkpointer.wait()
            self.writer.write_curves()
            raise stops.Diverged(f"{self.name}: {len(self.skip_run)} consecutive updates skipped (steps "
                                 f"{self.skip_run[0]}-{done}: non-finite loss, gradient or update), "
                                 f"train.max_consecutive_skips={limit}; stopping without export. Last good "
                                 f"checkpoint: {self._last_checkpoint()}")

    def closing_line(self) -> str:
        """The run's last line: where its model, logs (metrics, curves, TensorBoard) and checkpoints are."""
        model = (f"model in {self.model_dir} ({export_dtype(self.config)})" if self.model_dir
                 else "no model exported (train.export_model=False)")
        return (f"{self.name}: finished step {self.config.train.steps}; {model}; logs in "
                f"{os.path.join(self.workdir, 'logs')} (metrics.jsonl, curves.png, TensorBoard); checkpoints in "
                f"{os.path.join(self.workdir, 'checkpoints')}")

    def _last_checkpoint(self) -> str:
        step = self.checkpointer.latest_step()
        if step is None:
            return "none (no checkpoint saved yet; the run starts from its initial model)"
        return f"step {step} in {self.checkpointer.directory}"

    def finish(self, state) -> dict:
        """Waits for the last save, exports the model (``train.export_model``, see ``export``) and returns the
        run's summary."""
        self.checkpointer.wait()
        self.writer.write_curves()
        if self.config.train.export_model:
            self.model_dir = os.path.join(self.workdir, "model")
            export(self.config, self.model(state), self.model_dir, self.processor.image_processor)
        if distributed.is_primary():
            print(self.closing_line(), flush=True)
        return dict(start_step=self.start, final_step=self.config.train.steps, workdir=self.workdir,
                    model_dir=self.model_dir)
