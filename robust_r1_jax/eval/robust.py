"""The robustness protocol of SPEC §2 / §6, for the ``eval`` mode of the entry point.

For every model and every benchmark:

* **VLMEvalKit MCQ TSVs** (MMMB, MMStar, RealWorldQA, or the demo's held-out shapes): each image gets ONE
  degradation type drawn from its index (``degrade.sample_benchmark``) and is evaluated clean and with that type at
  intensity 0.23 / 0.45 / 0.9 ("25% / 50% / 100%"), the same type and pixel seed at every level;
* **R-Bench** multiple choice from a local copy (``benchmarks.py`` documents the layout): the shipped distorted
  images, level by level (low / mid / high, ``overall`` = all three together).

The prompt and the reading of answers follow ``config.protocol`` (``protocols.py``): ``vlmevalkit`` (the default,
VLMEvalKit's Qwen2.5-VL MCQ prompt, pixel bounds and exact matching) or ``indexed`` (this project's ``0. option``
training prompt); the SPEC §1 instruction suffix is appended except for base models that were never trained on it.
The demo models (no checkpoint given) are trained on, and so evaluated with, ``indexed``. Answers are generated in
fixed-shape batches by the sampler (greedy by default). Reported per level:
accuracy (rows that cannot be evaluated count as wrong), accuracy per stage and per type, the chain metrics of
``chain_metrics`` against the applied type, the mean number of generated tokens, the share of outputs in the full
chain format and the share with no readable answer. ``report.py`` writes JSON, Markdown and a PNG plot.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from typing import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from robust_r1_jax import degrade
from robust_r1_jax.data import chains
from robust_r1_jax.data.records import MissingInput
from robust_r1_jax.eval import benchmarks, chain_metrics, defaults, inference, protocols, report
from robust_r1_jax.eval import finished as finished_levels
from robust_r1_jax.eval.benchmarks import BenchmarkRow
from robust_r1_jax.eval.inference import ModelSpec
from robust_r1_jax.model import sampling

STAGE_OF = {name: stage for stage, names in degrade.STAGES.items() for name in names}
OVERALL = "overall"
DEMO_PROTOCOL = protocols.INDEXED  # the demo models learn the "0. option" prompt (data/chains.py)


@dataclasses.dataclass(frozen=True)
class Condition:
    """One column of a report: rows evaluated at one level (``intensity`` None: the images as shipped)."""

    level: str
    intensity: float | None
    rows: tuple[BenchmarkRow, ...]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "synthetic" (degraded here) or "rbench" (distorted as shipped)
    source: str
    conditions: tuple[Condition, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Generation and batching settings shared by every model of a run."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    suppress_vision_tokens: bool = True
    batch_size: int = 8
    prompt_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    patch_buckets: tuple[int, ...] = (64, 256, 1024, 4096)
    seed: int = 0
    dtype: str = "float32"
    min_pixels: int = 0  # 0: the protocol's bounds (protocols.pixel_bounds)
    max_pixels: int = 0
    eval_protocol: str = protocols.VLMEVALKIT  # prompt, image bounds and answer reading (protocols.py)
    prompt_style: str = "project"  # how the suffix joins the question (protocols.prompt_text; chains.PROMPT_STYLES)

    def protocol(self) -> dict:
        return {**dataclasses.asdict(self), "levels": dict(degrade.BENCHMARK_LEVELS)}


# --------------------------------------------------------------------------- benchmarks


def synthetic_benchmark(path: str, levels: Sequence[str], name: str | None = None, limit: int = 0) -> Benchmark:
    """A VLMEvalKit TSV under the synthetic-degradation protocol at ``levels`` (names of BENCHMARK_LEVELS)."""
    rows = tuple(benchmarks.read_tsv_rows(path, limit))
    if not rows:
        raise ValueError(f"{path}: the TSV has no data rows")
    conditions = tuple(Condition(level, degrade.BENCHMARK_LEVELS[level], rows) for level in levels)
    return Benchmark(name or os.path.splitext(os.path.basename(path))[0], "synthetic", path, conditions)


def rbench_benchmark(rbench_dir: str, name: str = "R-Bench", limit: int = 0) -> Benchmark:
    levels = benchmarks.read_rbench(rbench_dir, limit)
    return Benchmark(name, "rbench", rbench_dir,
                     tuple(Condition(level, None, tuple(rows)) for level, rows in levels.items()))


def check_levels(levels: Sequence[str]) -> list[str]:
    """Level names of BENCHMARK_LEVELS; intensities ("0.45") are accepted for their names."""
    by_value = {f"{v:g}": k for k, v in degrade.BENCHMARK_LEVELS.items()}
    out = []
    for level in levels:
        level = str(level).strip()
        name = level if level in degrade.BENCHMARK_LEVELS else by_value.get(_normal_number(level))
        if name is None:
            raise ValueError(f"unknown benchmark level {level!r}; expected names {list(degrade.BENCHMARK_LEVELS)} "
                             f"or intensities {list(degrade.BENCHMARK_LEVELS.values())}")
        out.append(name)
    if not out:
        raise ValueError("no benchmark level given")
    return out


def _normal_number(text: str) -> str | None:
    try:
        return f"{float(text):g}"
    except ValueError:
        return None


# --------------------------------------------------------------------------- one model


def applied_types(row: BenchmarkRow, condition: Condition) -> list[tuple[str, float]]:
    """What was applied to the row's image under ``condition`` (nothing at "clean" or for shipped images)."""
    if not condition.intensity:
        return []
    return [(degrade.sample_benchmark(row.image_index), condition.intensity)]


def question_text(row: BenchmarkRow, use_suffix: bool, protocol: str = protocols.VLMEVALKIT,
                  prompt_style: str = "project") -> str:
    record = row.record
    return protocols.prompt_text(record.question, record.options, record.hint, protocol, use_suffix, prompt_style)


def condition_image(row: BenchmarkRow, condition: Condition) -> tuple[np.ndarray | None, str | None]:
    """The row's image at the condition's level, or why there is none.

    The clean level and shipped images never go through the degradation engine, so an image smaller than its
    8-px minimum (a 4x4 icon) is still evaluated clean when the processor accepts it.
    """
    image, problem = row.load_image()
    if image is None or not condition.intensity:
        return image, problem
    try:
        return degrade.benchmark_image(image, row.image_index, condition.level), None
    except ValueError as error:  # e.g. an image smaller than the degradations accept
        return None, f"{row.where} (index {row.label}): cannot degrade the image at {condition.level}: {error}"


def encoded_prompt(generator: inference.Generator, row: BenchmarkRow, condition: Condition,
                   use_suffix: bool, protocol: str = protocols.VLMEVALKIT,
                   prompt_style: str = "project") -> tuple[dict | None, str | None]:
    """The row's prompt encoded at the condition's level, or why it cannot be (decode, degrade or processor)."""
    image, problem = condition_image(row, condition)
    if image is None:
        return None, problem
    try:
        where = f"{row.where} (index {row.label})"
        return generator.encode(question_text(row, use_suffix, protocol, prompt_style), image, where), None
    except ValueError as error:
        return None, str(error)


def _outcome(row: BenchmarkRow, condition: Condition, kind: str) -> dict:
    outcome = {"level": condition.level, "where": row.where, "index": row.label, "image_index": row.image_index,
               "answer": None if row.record is None else row.record.answer, "predicted": None,
               "correct": False, "tokens": None, "output": None, "problem": None}
    if kind == "synthetic":
        kind_name = degrade.sample_benchmark(row.image_index)
        outcome.update(type=kind_name, stage=STAGE_OF[kind_name])
    return outcome


def evaluate_condition(generator: inference.Generator, condition: Condition, kind: str, use_suffix: bool,
                       stream: tuple[int, ...] = (), protocol: str = protocols.VLMEVALKIT,
                       prompt_style: str = "project",
                       on_rows: Callable[[int], object] | None = None) -> list[dict]:
    """One outcome per row: prediction, correctness, tokens and output, or the problem that made it wrong.

    ``stream`` names the condition's random stream (sampled decoding only): each chunk of rows draws from
    (stream, chunk number), so results do not depend on what was evaluated before. ``on_rows(n)`` is called after
    each chunk with its number of rows (the progress bar).
    """
    outcomes = []
    size = generator.batch_size
    for chunk_number, start in enumerate(range(0, len(condition.rows), size)):
        rows = condition.rows[start:start + size]
        encoded, waiting = [], []
        for row in rows:
            outcome = _outcome(row, condition, kind)
            outcomes.append(outcome)
            prompt, problem = encoded_prompt(generator, row, condition, use_suffix, protocol, prompt_style)
            if prompt is None:
                outcome["problem"] = problem
                logging.warning("row counted as wrong: %s", problem)
                continue
            encoded.append(prompt)
            waiting.append((row, outcome))
        if encoded:
            completions = generator.complete_encoded(encoded, stream=(*stream, chunk_number))
            for (row, outcome), completion in zip(waiting, completions):
                predicted = protocols.read_answer(completion.text, row.record.options, protocol).index
                outcome.update(predicted=predicted, correct=predicted == row.record.answer,
                               tokens=completion.num_tokens, output=completion.text)
        if on_rows is not None:
            on_rows(len(rows))
        logging.log_every_n_seconds(logging.INFO, "%s: %d / %d rows", 30, condition.level, len(outcomes),
                                    len(condition.rows))
    failed = sum(o["problem"] is not None for o in outcomes)
    if failed:
        logging.warning("%s: %d of %d rows could not be evaluated; they count as wrong and stay in the denominator",
                        condition.level, failed, len(outcomes))
    return outcomes


def _accuracy(outcomes: Sequence[dict]) -> dict:
    correct = sum(bool(o["correct"]) for o in outcomes)
    return {"accuracy": correct / len(outcomes) if outcomes else None, "correct": correct, "total": len(outcomes)}


def summarize_level(outcomes: Sequence[dict], condition: Condition) -> dict:
    generated = [o for o in outcomes if o["output"] is not None]
    rows_by_where = {row.where: row for row in condition.rows}
    matches = [chain_metrics.match_types(chain_metrics.predicted_types(o["output"]),
                                         applied_types(rows_by_where[o["where"]], condition)) for o in generated]
    share = (lambda count: count / len(generated) if generated else None)
    return {
        "intensity": condition.intensity,
        **_accuracy(outcomes),
        "failed": len(outcomes) - len(generated),
        "mean_chain_tokens": float(np.mean([o["tokens"] for o in generated])) if generated else None,
        "format_rate": share(sum(chains.FORMAT_PATTERN.search(o["output"]) is not None for o in generated)),
        "unanswered_rate": share(sum(o["predicted"] is None for o in generated)),
        **chain_metrics.summarize(matches),
    }


def _breakdown(outcomes_by_level: dict[str, list[dict]], key: str) -> dict:
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for level, outcomes in outcomes_by_level.items():
        for outcome in outcomes:
            groups[outcome[key]][level].append(outcome)
    order = list(degrade.STAGES) if key == "stage" else list(degrade.NAMES)
    return {group: {level: _accuracy(groups[group][level]) for level in outcomes_by_level}
            for group in sorted(groups, key=order.index)}


def summarize(benchmark: Benchmark, outcomes_by_level: dict[str, list[dict]]) -> dict:
    levels = {c.level: summarize_level(outcomes_by_level[c.level], c) for c in benchmark.conditions}
    failed = {}
    for outcomes in outcomes_by_level.values():
        for o in outcomes:
            if o["problem"] is not None:
                failed.setdefault(o["where"], {"where": o["where"], "label": o["index"], "problem": o["problem"]})
    summary = {"kind": benchmark.kind, "source": benchmark.source,
               "rows": len({row.where for c in benchmark.conditions for row in c.rows}),
               "levels": levels, "failed_rows": list(failed.values())}
    if benchmark.kind == "synthetic":
        summary["by_stage"] = _breakdown(outcomes_by_level, "stage")
        summary["by_type"] = _breakdown(outcomes_by_level, "type")
    else:
        distorted = [c for c in benchmark.conditions if c.level != benchmarks.RBENCH_REFERENCE]
        together = Condition(OVERALL, None, tuple(row for c in distorted for row in c.rows))
        summary["levels"][OVERALL] = summarize_level(
            [o for c in distorted for o in outcomes_by_level[c.level]], together)
    return summary


def progress_bar(name: str, bench: Benchmark, condition: Condition):
    """A tqdm bar of one level's rows (rate and ETA), on the writing process only; None elsewhere."""
    if not report.is_writer():
        return None
    from tqdm import tqdm
    return tqdm(total=len(condition.rows), desc=f"{name} {bench.name} {condition.level}", unit="row",
                dynamic_ncols=True)


def evaluate_model(name: str, model, processor, bench_list: Sequence[Benchmark], settings: Settings,
                   use_suffix: bool = True, generate_fn=None, finished: dict | None = None,
                   on_finished: Callable[[Benchmark, Condition, list[dict]], list[dict]] | None = None
                   ) -> tuple[dict, list[dict]]:
    """({benchmark: summary}, prediction records) of one loaded model.

    ``finished``: {(benchmark name, level): outcomes} done in an earlier run, used instead of generating;
    ``on_finished(benchmark, condition, outcomes)`` is called as each other level completes and returns the
    outcomes to report (``evaluate`` saves them there and reports them as saved).
    """
    finished = finished or {}
    generator = None if model is None else _generator(model, processor, settings, name, generate_fn)
    summaries, predictions = {}, []
    for bench_number, bench in enumerate(bench_list):
        outcomes_by_level = {}
        for level_number, condition in enumerate(bench.conditions):
            outcomes = finished.get((bench.name, condition.level))
            if outcomes is None:
                logging.info("%s: %s at %s (%d rows)", name, bench.name, condition.level, len(condition.rows))
                bar = progress_bar(name, bench, condition)
                try:
                    outcomes = evaluate_condition(generator, condition, bench.kind, use_suffix,
                                                  stream=(bench_number, level_number),
                                                  protocol=settings.eval_protocol,
                                                  prompt_style=settings.prompt_style,
                                                  on_rows=None if bar is None else bar.update)
                finally:
                    if bar is not None:
                        bar.close()
                if on_finished is not None:
                    outcomes = on_finished(bench, condition, outcomes)
            outcomes_by_level[condition.level] = outcomes
            predictions += [{"model": name, "benchmark": bench.name, **o} for o in outcomes]
        summaries[bench.name] = summarize(bench, outcomes_by_level)
    return summaries, predictions


def _generator(model, processor, settings: Settings, name: str, generate_fn) -> inference.Generator:
    inference.check_pairing(model, processor, name)
    return inference.Generator(
        model, processor,
        inference.sampler_config(model, processor, max_new_tokens=settings.max_new_tokens,
                                 temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                                 suppress_vision_tokens=settings.suppress_vision_tokens),
        batch_size=settings.batch_size, prompt_buckets=settings.prompt_buckets,
        patch_buckets=settings.patch_buckets, seed=settings.seed, generate_fn=generate_fn)


def evaluate(specs: Sequence[ModelSpec], bench_list: Sequence[Benchmark], settings: Settings,
             generate_fn=None, store: finished_levels.FinishedLevels | None = None) -> tuple[dict, list[dict]]:
    """(results, prediction records) of every model on every benchmark; models are loaded one at a time.

    With a ``store`` (``eval/finished.py``) each (model, benchmark, level) is saved as it completes, and levels
    saved by an earlier run under the same key are reused; a model whose levels are all saved is not loaded."""
    results = {"protocol": settings.protocol(), "models": {}}
    predictions: list[dict] = []
    for spec in specs:
        keys = {(b.name, c.level): finished_levels.level_key(spec, b, c, settings)
                for b in bench_list for c in b.conditions}
        done = {}
        if store is not None:
            done = {where: outcomes for where, key in keys.items()
                    if (outcomes := store.load(key)) is not None}
            for bench_name, level in done:
                logging.info("%s: %s at %s: finished in an earlier run (%s), reused", spec.name, bench_name,
                             level, store.path(keys[bench_name, level]))

        def on_finished(bench, condition, outcomes, keys=keys):
            if store is None:
                return outcomes
            # reported as a resumed run will read them back, so both report sets are the same bytes
            outcomes = json.loads(json.dumps(outcomes))
            store.save(keys[bench.name, condition.level], outcomes)
            return outcomes

        processor = model = None
        if len(done) < len(keys):
            processor = inference.load_processor(
                spec, *protocols.pixel_bounds(settings.eval_protocol, settings.min_pixels, settings.max_pixels))
            model = inference.load_model(spec.path, settings.dtype)
            # named here with both folders (evaluate_model checks again without them)
            inference.check_pairing(model, processor, spec.name, model_dir=spec.path, field="--config.tokenizers")
        summaries, records = evaluate_model(spec.name, model, processor, bench_list, settings, spec.use_suffix,
                                            generate_fn, finished=done, on_finished=on_finished)
        results["models"][spec.name] = {"path": spec.path, "tokenizer": spec.tokenizer_path or spec.path,
                                        "prompt_suffix": spec.use_suffix, "benchmarks": summaries}
        predictions += records
        del model
    return results, predictions


# --------------------------------------------------------------------------- config


def as_list(value) -> list[str]:
    """A tuple config field (``--config.tsvs='("a.tsv", "b.tsv")'`` or the flag repeated) -> list of stripped
    strings (empty entries kept inside; all empty -> []). A plain string is one entry."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else [str(v) for v in value]
    items = [item.strip() for item in items]
    return [] if all(not item for item in items) else items


def _display_names(paths: Sequence[str]) -> list[str]:
    """Folder names; a name shared by several paths takes its parent folder too (``sft/model``)."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    names = [os.path.join(*os.path.normpath(p).split(os.sep)[-2:]) if names.count(n) > 1 else n
             for p, n in zip(paths, names)]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def demo_problems() -> list[str]:
    """The demo outputs that are missing (empty when the demo model can be evaluated)."""
    missing = [p for p in (defaults.DEMO_TOKENIZER_DIR,) if not os.path.isdir(p)]
    if not any(os.path.isdir(path) for _, path in defaults.DEMO_MODELS):
        missing += [path for _, path in defaults.DEMO_MODELS]
    return missing


def model_specs(config) -> list[ModelSpec]:
    """The models of the config; with no checkpoint, the demo model before and after RL."""
    checkpoints = as_list(config.checkpoints)
    no_suffix = set(as_list(config.no_suffix))
    if not checkpoints:
        missing = demo_problems()
        if missing:
            raise MissingInput(
                f"no checkpoint given (--config.checkpoints=...), so the demo model is evaluated, but the demo "
                f"outputs are missing: {', '.join(missing)} (relative to {os.getcwd()}). Run the demo first: "
                f"{defaults.DEMO_COMMAND}")
        present = [(name, path) for name, path in defaults.DEMO_MODELS if os.path.isdir(path)]
        for name, path in defaults.DEMO_MODELS:
            if not os.path.isdir(path):
                logging.warning("demo model %r not found at %s; evaluating the others", name, path)
        return [ModelSpec(name, path, defaults.DEMO_TOKENIZER_DIR,
                          use_suffix=not ({"all", "*", name} & no_suffix)) for name, path in present]
    names = as_list(config.names) or _display_names(checkpoints)
    if len(names) != len(checkpoints):
        raise ValueError(f"config.names has {len(names)} entries for {len(checkpoints)} checkpoints")
    tokenizers = as_list(config.tokenizers)
    if len(tokenizers) == 1:
        tokenizers = tokenizers * len(checkpoints)
    if tokenizers and len(tokenizers) != len(checkpoints):
        raise ValueError(f"config.tokenizers has {len(tokenizers)} entries for {len(checkpoints)} checkpoints "
                         f"(give one shared tokenizer, one per checkpoint, or none)")
    tokenizers = tokenizers or [""] * len(checkpoints)
    return [ModelSpec(name, path, tok, use_suffix=not ({"all", "*", name, path} & no_suffix))
            for name, path, tok in zip(names, checkpoints, tokenizers)]


def benchmark_problems(config, using_demo: bool) -> list[str]:
    """What leaves the ``eval`` mode nothing to evaluate, one line each naming the field to set: neither ``tsvs``
    nor ``rbench_dir`` given for the config's own checkpoints (the demo models default to the demo TSV), and
    ``levels`` empty or naming an unknown level."""
    problems = []
    if not using_demo and not as_list(config.tsvs) and not config.rbench_dir:
        problems.append("no benchmark given: set --config.tsvs=a.tsv (a VLMEvalKit MCQ TSV; several as "
                        "--config.tsvs='(\"a.tsv\", \"b.tsv\")') and/or --config.rbench_dir=<local R-Bench copy>")
    try:
        check_levels(as_list(config.levels))
    except ValueError as error:
        problems.append(f"config.levels: {error}")
    return problems


def load_benchmarks(config, using_demo: bool) -> list[Benchmark]:
    """The config's benchmarks (the demo TSV for the demo models when none is given). ``validate.ConfigError`` with
    ``benchmark_problems``; ``MissingInput`` when the demo TSV is needed and missing."""
    from robust_r1_jax.train import validate
    problems = benchmark_problems(config, using_demo)
    if problems:
        raise validate.ConfigError(problems)
    tsvs = as_list(config.tsvs)
    if not tsvs and not config.rbench_dir and using_demo:
        if not os.path.isfile(defaults.DEMO_EVAL_TSV):
            raise MissingInput(f"the demo's evaluation TSV {defaults.DEMO_EVAL_TSV} is missing (relative to "
                                    f"{os.getcwd()}). Run the demo first: {defaults.DEMO_COMMAND}")
        tsvs = [defaults.DEMO_EVAL_TSV]
    levels = check_levels(as_list(config.levels))
    names = _display_names(tsvs) if tsvs else []
    names = [os.path.splitext(n)[0] for n in names]
    out = [synthetic_benchmark(path, levels, name, int(config.limit)) for path, name in zip(tsvs, names)]
    if config.rbench_dir:
        out.append(rbench_benchmark(config.rbench_dir, limit=int(config.limit)))
    return out


def default_config() -> ml_collections.ConfigDict:
    """Every setting of the ``eval`` mode with its default (``configs/eval_robust.py`` documents them)."""
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.workdir = ""  # "" -> runs/demo/eval for the demo, runs/eval otherwise
    # Models: paths, display names (default: folder names), tokenizer folders ("" = the checkpoint's own; one
    # entry is shared by all), and the names (or "all") prompted WITHOUT the SPEC §1 suffix (base models).
    config.checkpoints = ()
    config.names = ()
    config.tokenizers = ()
    config.no_suffix = ()
    # Benchmarks: VLMEvalKit MCQ TSVs under synthetic degradation, and/or a local R-Bench MCQ copy.
    config.tsvs = ()
    config.rbench_dir = ""
    config.levels = ("clean", "25%", "50%", "100%")  # intensities 0, 0.23, 0.45, 0.9
    config.limit = 0  # evaluate only the first N rows of each file (0 = all)
    # Generation: greedy by default; batches padded to fixed shapes so one compilation serves a benchmark.
    config.sampling = sampling.default_config()
    config.seed = 0
    config.batch_size = 8
    config.prompt_buckets = (256, 512, 1024, 2048)  # prompt lengths in tokens (images included)
    config.patch_buckets = (64, 256, 1024, 4096)  # image patches per prompt
    # "vlmevalkit": VLMEvalKit's prompt, pixel bounds and answer matching (the paper's numbers); "indexed": the
    # project's "0. option" prompt and answer reading (what the demo models learn; used when none is given).
    config.protocol = protocols.VLMEVALKIT
    config.min_pixels = 0  # 0: the protocol's bounds (vlmevalkit: 1280*28*28; indexed: preprocessor_config.json)
    config.max_pixels = 0
    config.dtype = "float32"  # "bfloat16" on accelerators
    # "project" or "upstream": the suffix appended directly, as the released Robust-R1 models were trained
    config.prompt_style = "project"
    return config


def settings_from_config(config) -> Settings:
    return Settings(**sampling.sampler_settings(config.sampling), batch_size=int(config.batch_size),
                    prompt_buckets=tuple(int(b) for b in config.prompt_buckets),
                    patch_buckets=tuple(int(b) for b in config.patch_buckets), seed=int(config.seed),
                    dtype=str(config.dtype), min_pixels=int(config.min_pixels), max_pixels=int(config.max_pixels),
                    eval_protocol=protocols.check_protocol(str(config.protocol)),
                    prompt_style=chains.check_prompt_style(str(config.get("prompt_style", "project"))))


def run_settings(config) -> Settings:
    """``settings_from_config``, except that the demo models (no checkpoint given) get DEMO_PROTOCOL."""
    settings = settings_from_config(config)
    if not as_list(config.checkpoints) and settings.eval_protocol != DEMO_PROTOCOL:
        logging.info("evaluating the demo models with the %r protocol they were trained on", DEMO_PROTOCOL)
        settings = dataclasses.replace(settings, eval_protocol=DEMO_PROTOCOL)
    return settings


def run(config) -> dict:
    """The ``eval`` mode: evaluate, write the reports into ``config.workdir`` and print the Markdown."""
    from robust_r1_jax.train import validate
    using_demo = not as_list(config.checkpoints)
    # before any benchmark or model loads
    validate.check_sampling(config, extra=benchmark_problems(config, using_demo))
    specs = model_specs(config)
    bench_list = load_benchmarks(config, using_demo)
    workdir = config.workdir or (defaults.DEMO_EVAL_WORKDIR if using_demo else "runs/eval")
    store = finished_levels.FinishedLevels(workdir, writer=report.is_writer())
    results, predictions = evaluate(specs, bench_list, run_settings(config), store=store)
    paths = report.write_reports(results, predictions, workdir, bench_list)
    if report.is_writer():
        print(report.markdown(results))
        names = ", ".join(os.path.basename(p) for p in paths.values())
        print(f"eval: reports in {os.path.abspath(workdir)} ({names}); finished levels kept in {store.directory} "
              f"(a rerun of the same command reuses them)")
    return results
