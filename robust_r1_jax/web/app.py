"""The ``web`` mode: the degradation playground, a Gradio app.

    python -m robust_r1_jax.main --config=configs/web.py            # the demo model, http://127.0.0.1:7860
    python -m robust_r1_jax.main --config=configs/web.py --config.checkpoint=DIR --config.port=8080

Upload an image or pick a bundled sample, ask a question (options optional), choose one of the 16 degradations and
its intensity (or "random (seeded)": the training sampler); the degraded image follows the controls. Run streams
the reasoning chain; Sweep runs the question at the protocol's four levels. Bad input gets a message in the page.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the server may have no network

import gradio as gr  # noqa: E402
import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

from robust_r1_jax.model import sampling  # noqa: E402
from robust_r1_jax.web import chain_view, inputs, samples, sweep  # noqa: E402
from robust_r1_jax.web.service import ModelService, StreamEvent, compiled_programs, parse_options  # noqa: E402

CSS = """
.rr-chips {display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0;}
.rr-chip {border-radius: 14px; padding: 3px 10px; font-size: 0.9em; border: 1px solid #bbb;}
.rr-hit {background: #d9f2dd; border-color: #3a9d4a;}
.rr-extra {background: #fde2c8; border-color: #d9822b;}
.rr-missed {background: #eee; border-color: #999; border-style: dashed;}
.rr-clean {background: #eef3fb;}
.rr-panel {border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; margin: 6px 0; white-space: pre-wrap;
           overflow-wrap: anywhere;}
.rr-writing {border-style: dashed;}
.rr-tag {font-size: 0.75em; text-transform: uppercase; color: #777; letter-spacing: 0.05em;}
.rr-answer {background: #fff3a8; border: 2px solid #e0b800; border-radius: 6px; padding: 6px 10px; margin: 6px 0;}
"""


def _problem(error: Exception) -> str:
    """The status line for a failed request: InputProblem as written, anything else as an internal error."""
    if isinstance(error, inputs.InputProblem):
        return f"⚠️ {error}"
    logging.exception("web: request failed")
    return f"⚠️ The request failed: {type(error).__name__}: {error}"


def _applied_text(degradation: inputs.Degradation) -> str:
    if not degradation.applied:
        return "applied: nothing (clean image)"
    return "applied: " + ", ".join(f"{n} {s:.2f}" for n, s in degradation.applied) + f" (seed {degradation.seed})"


def _stats(event: StreamEvent, compiled: dict[str, int]) -> str:
    first = "—" if event.first_token_s is None else f"{event.first_token_s * 1000:.0f} ms"
    rate = "—" if event.tokens_per_s is None else f"{event.tokens_per_s:.1f} tokens/s"
    state = "done" if event.done else "generating…"
    return (f"{state} · {event.num_tokens} tokens · time to first token {first} · {rate} · "
            f"compiled programs: prefill {compiled['prefill']}, decode {compiled['decode']}")


def build(service: ModelService, config) -> gr.Blocks:
    """The page, wired to ``service``; the caller launches it."""
    limits = inputs.Limits(max_file_bytes=int(config.max_upload_mb * 2**20), max_side=int(config.max_side))
    bundled = {s.name: s for s in samples.bundled_samples(int(config.num_samples), int(config.sample_size))}
    random_types = tuple(int(n) for n in config.random_types)

    def degraded_view(image, choice, intensity, seed):
        if image is None:
            return None, "", ""
        try:
            degradation = inputs.plan(choice, intensity, int(seed or 0), random_types)
            return inputs.apply(image, degradation), _applied_text(degradation), ""
        except Exception as error:  # noqa: BLE001  (the page shows it; the server keeps serving)
            return None, "", _problem(error)

    # The upload box is emptied after each file (None first): the original panel shows what was read, and the box
    # is ready for the next file, after a bad one too.
    def on_upload(path, choice, intensity, seed):
        if not path:
            return None, None, None, None, "", ""
        try:
            image = inputs.read_upload(path, limits)
        except Exception as error:  # noqa: BLE001
            return None, None, None, None, "", _problem(error)
        return (None, image, image, *degraded_view(image, choice, intensity, seed))

    def on_sample(name, choice, intensity, seed):
        if name not in bundled:
            return gr.update(), gr.update(), None, None, None, "", ""
        sample = bundled[name]
        return (sample.question, "\n".join(sample.options), sample.image, sample.image,
                *degraded_view(sample.image, choice, intensity, seed))

    def on_run(image, question, options_text, choice, intensity, seed):
        outputs = dict(raw="", chips="", panels="", stats="", status="")

        def emit(**changes):
            outputs.update(changes)
            return tuple(outputs.values())
        if image is None:
            yield emit(status="⚠️ Upload an image or pick a sample first.")
            return
        try:
            degradation = inputs.plan(choice, intensity, int(seed or 0), random_types)
            degraded = inputs.apply(image, degradation)
            options = parse_options(options_text)
            yield emit(status=f"running on the degraded image ({_applied_text(degradation)})",
                       chips=chain_view.chips_html("", degradation.applied))
            for event in service.stream(question, options, degraded):
                yield emit(raw=event.text, chips=chain_view.chips_html(event.text, degradation.applied),
                           panels=chain_view.panels_html(event.text, options),
                           stats=_stats(event, compiled_programs()))
            yield emit(status="done")
        except Exception as error:  # noqa: BLE001
            yield emit(status=_problem(error))

    def on_sweep(image, question, options_text, choice, seed):
        if image is None:
            yield None, None, "⚠️ Upload an image or pick a sample first."
            return
        try:
            options, seed = parse_options(options_text), int(seed or 0)
            name = sweep.sweep_type(choice, seed)
            points = []
            for level, intensity in sweep.LEVELS:
                yield (sweep.sweep_table(points, name, options) if points else None, gr.update(),
                       f"sweep: {name} at {level}…")
                degradation = inputs.Degradation(((name, intensity),) if intensity else (), seed)
                event = service.complete(question, options, inputs.apply(image, degradation))
                points.append(sweep.SweepPoint(level, intensity, event.text, event.num_tokens))
            yield (sweep.sweep_table(points, name, options), sweep.sweep_figure(points, name, options),
                   f"sweep done: {name}, seed {seed}")
        except Exception as error:  # noqa: BLE001
            yield gr.update(), gr.update(), _problem(error)

    with gr.Blocks(title="Robust-R1 degradation playground", analytics_enabled=False) as page:
        gr.Markdown(f"## Robust-R1 degradation playground\nModel **{service.name}**. Degrade an image with the "
                    f"training engine (SPEC §2), ask a question and watch the degradation-aware chain.")
        image_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload an image", type="filepath", elem_id="upload")
                sample = gr.Dropdown(choices=list(bundled), value=None, label="…or pick a sample", elem_id="sample")
                question = gr.Textbox(label="Question", elem_id="question")
                options = gr.Textbox(label="Options (one per line, optional)", lines=4, elem_id="options")
                choice = gr.Dropdown(choices=list(inputs.CHOICES), value="lens blur", label="Degradation",
                                     elem_id="degradation")
                intensity = gr.Slider(0.0, 1.0, value=0.45, step=0.01, label="Intensity", elem_id="intensity")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                    sweep_button = gr.Button("Sweep clean / 25 / 50 / 100%", elem_id="sweep")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    original = gr.Image(label="Original", type="numpy", interactive=False, elem_id="original",
                                        height=260)
                    degraded = gr.Image(label="Degraded (what the model sees)", type="numpy", interactive=False,
                                        elem_id="degraded", height=260)
                applied = gr.Markdown(elem_id="applied")
                chips = gr.HTML(elem_id="chips")
                panels = gr.HTML(elem_id="panels")
                stats = gr.Markdown(elem_id="stats")
                raw = gr.Textbox(label="Streamed chain", lines=6, interactive=False, elem_id="stream")
        with gr.Row():
            table = gr.Dataframe(headers=list(sweep.TABLE_HEADERS), label="Sweep", interactive=False, wrap=True,
                                 column_widths=["10%", "18%", "30%", "13%", "18%", "11%"], elem_id="sweep-table",
                                 scale=3)
            plot = gr.Plot(label="Sweep plot", elem_id="sweep-plot", scale=2)

        controls = [choice, intensity, seed]
        # Previews never wait for a generation (no concurrency limit); Run and Sweep share the one model.
        upload.upload(on_upload, [upload, *controls], [upload, image_state, original, degraded, applied, status],
                      show_progress="minimal", concurrency_limit=None)
        sample.input(on_sample, [sample, *controls], [question, options, image_state, original, degraded, applied,
                                                      status], show_progress="minimal", concurrency_limit=None)
        for control in controls:
            control.change(degraded_view, [image_state, *controls], [degraded, applied, status],
                           trigger_mode="always_last", show_progress="hidden", concurrency_limit=None)
        run_button.click(on_run, [image_state, question, options, *controls], [raw, chips, panels, stats, status],
                         concurrency_limit=1, concurrency_id="model")
        sweep_button.click(on_sweep, [image_state, question, options, choice, seed], [table, plot, status],
                           concurrency_limit=1, concurrency_id="model")
    return page


def launch(page: gr.Blocks, host: str, port: int, *, max_upload_mb: float = 20.0, block: bool = True):
    """Serves ``page`` on host:port (no share link, no server-side rendering); ``block`` False returns at once.
    Gradio itself refuses uploads over twice the app's limit, so a huge file never reaches the disk whole."""
    page.queue(default_concurrency_limit=1)
    return page.launch(server_name=host, server_port=int(port), share=False, ssr_mode=False, css=CSS,
                       prevent_thread_lock=not block, quiet=not block, show_error=True,
                       max_file_size=int(2 * max_upload_mb * 2**20))


def default_config() -> ml_collections.ConfigDict:
    """Every setting of the ``web`` mode with its default (``configs/web.py`` overrides)."""
    config = ml_collections.ConfigDict()
    config.mode = "web"
    config.checkpoint = ""  # Hugging Face dir, orbax model or training checkpoint folder; "" = the demo model
    config.tokenizer = ""  # "" = the checkpoint's own folder
    config.suffix = True  # append the SPEC §1 instruction suffix (off for base models)
    config.prompt_style = "project"  # "upstream": the question as typed + the suffix directly (generate's setting)
    config.host = "127.0.0.1"
    config.port = 7860
    config.dtype = "float32"
    config.min_pixels = 0  # 0: the model folder's preprocessor setting
    config.max_pixels = 0
    config.prompt_buckets = (256, 512, 1024)
    config.patch_buckets = (64, 256, 1024)
    config.sampling = sampling.default_config(max_new_tokens=512)  # greedy
    config.seed = 0
    config.num_samples = 3  # bundled sample images
    config.sample_size = 168
    config.random_types = (1, 1)  # how many types "random (seeded)" draws (the demo model was trained on one)
    config.max_side = 768  # uploads are shrunk to this longer side
    config.max_upload_mb = 20.0
    config.warm_up = True  # compile on a sample before serving, so the first request does not wait for it
    return config


def run(config) -> None:
    """The ``web`` mode: load the model once, warm the compiled programs up, serve until interrupted."""
    service = ModelService.from_config(config)
    if config.warm_up:
        first = samples.bundled_samples(1, int(config.sample_size))[0]
        seconds = service.warm_up(first.question, first.options, first.image)
        logging.info("web: compiled prefill and decode in %.1f s", seconds)
    print(f"Robust-R1 playground: model {service.name}, http://{config.host}:{int(config.port)}", flush=True)
    launch(build(service, config), config.host, int(config.port), max_upload_mb=float(config.max_upload_mb))
