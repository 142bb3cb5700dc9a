"""Evaluation results as files: JSON, a Markdown report and a PNG plot of accuracy against intensity.

The files are written as one set (``write_report_set``): a kill at any moment leaves the previous report or the new
one, never files of two runs side by side; only process 0 of a multi-process run writes.

``results`` (what ``robust.evaluate`` returns and ``results.json`` holds)::

    {"protocol": {...}, "models": {name: {"path", "tokenizer", "prompt_suffix",
                                         "benchmarks": {benchmark: summary}}}}

A synthetic-degradation summary has ``kind == "synthetic"`` and ``levels`` keyed by level name with an
``intensity``; an R-Bench summary has ``kind == "rbench"`` and levels ``ref`` / ``low`` / ``mid`` / ``high`` plus
``overall`` (all distorted rows together).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import uuid

import jax

from robust_r1_jax import atomic
from robust_r1_jax.data import chains
from robust_r1_jax.eval.benchmarks import RBENCH_RELEASE

PLOT_NAME = "accuracy.png"
JSON_NAME = "results.json"
MARKDOWN_NAME = "results.md"
PREDICTIONS_NAME = "predictions.jsonl"
VLMEVALKIT_DIR = "vlmevalkit"  # the prediction tables VLMEvalKit's evaluation reads
AS_SHIPPED = "as_shipped"  # their folder for benchmarks evaluated on the images as shipped (R-Bench)
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]+")
# Each benchmark panel is this many inches at PLOT_DPI: the PNG is (500 * panels) x 400 pixels.
PANEL_INCHES = (5.0, 4.0)
# A report set lives in a folder of its own; REPORT_SET_LINK points at the current one, the usual names at it.
REPORT_SET_LINK = ".report"
PLOT_DPI = 100


def is_writer() -> bool:
    return jax.process_index() == 0


def _percent(value) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _level_header(name: str, level: dict) -> str:
    return f"{name} (s={level['intensity']:.2f})" if level.get("intensity") is not None else name


def _benchmarks(results: dict) -> list[str]:
    names: list[str] = []
    for model in results["models"].values():
        for bench in model["benchmarks"]:
            if bench not in names:
                names.append(bench)
    return names


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first ``text_columns`` are left-aligned, the numbers right-aligned."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _breakdown(results: dict, bench: str, key: str, title: str) -> list[str]:
    rows, levels = [], None
    for name, model in results["models"].items():
        summary = model["benchmarks"].get(bench)
        if not summary or not summary.get(key):
            continue
        levels = levels or list(summary["levels"])
        for group, by_level in summary[key].items():
            first = next(iter(by_level.values()))
            rows.append([name, group, str(first["total"])] + [_percent(by_level[lv]["accuracy"]) for lv in levels])
    if not rows:
        return []
    return ["", f"### {title}", ""] + _table(["model", key.split("_")[1], "rows"] + levels, rows, text_columns=2)


def markdown(results: dict) -> str:
    """The report: per benchmark, accuracy by level (one row per model), chain metrics and breakdowns."""
    protocol = results["protocol"]
    decoding = ("greedy decoding" if protocol["temperature"] == 0
                else f"sampling at temperature {protocol['temperature']}")
    lines = ["# Robustness evaluation", "",
             f"{decoding.capitalize()}, at most {protocol['max_new_tokens']} new tokens"
             + (f", protocol `{protocol['eval_protocol']}`" if protocol.get("eval_protocol") else "")
             + ". Accuracy in %; rows that cannot be evaluated (undecodable image, malformed row) count as wrong."]
    for bench in _benchmarks(results):
        summaries = {n: m["benchmarks"][bench] for n, m in results["models"].items() if bench in m["benchmarks"]}
        first = next(iter(summaries.values()))
        failed = len(first["failed_rows"])
        lines += ["", f"## {bench}", "",
                  f"`{first['source']}`: {first['rows']} rows ({failed} failed); "
                  + ("one degradation type per image, seeded by its index, at every level."
                     if first["kind"] == "synthetic" else "real-world distortion levels as shipped."), ""]
        levels = list(first["levels"])
        header = ["model"] + [_level_header(lv, first["levels"][lv]) for lv in levels]
        rows = [[name] + [_percent(s["levels"][lv]["accuracy"]) for lv in levels] for name, s in summaries.items()]
        lines += _table(header, rows)

        chain_rows = []
        for name, summary in summaries.items():
            for lv, level in summary["levels"].items():
                chain_rows.append([name, lv, _number(level.get("type_precision")), _number(level.get("type_recall")),
                                   _number(level.get("intensity_mae")), _number(level["mean_chain_tokens"], 1),
                                   _percent(level["format_rate"]), _percent(level["unanswered_rate"])])
        lines += ["", "### Chain metrics", "",
                  f"Degradation names in `{chains.open_tag('TYPE')}` against the applied type (precision, recall), mean absolute "
                  "error of the matched intensities, mean generated tokens, share of outputs in the full chain "
                  "format, share of outputs with no readable answer.", ""]
        lines += _table(["model", "level", "type precision", "type recall", "intensity MAE", "chain tokens",
                         "format ok", "no answer"], chain_rows, text_columns=2)
        lines += _breakdown(results, bench, "by_stage", "Accuracy by stage (%)")
        lines += _breakdown(results, bench, "by_type", "Accuracy by type (%)")
        if failed:
            lines += ["", "### Failed rows (counted as wrong)", ""]
            lines += [f"- index {row['label']}: {row['problem']}" for row in first["failed_rows"]]
    return "\n".join(lines) + "\n"


def plot_png(results: dict) -> bytes:
    """Accuracy against intensity, one line per model, one panel per benchmark; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    benches = _benchmarks(results)
    figure = Figure(figsize=(PANEL_INCHES[0] * len(benches), PANEL_INCHES[1]), dpi=PLOT_DPI)
    axes = figure.subplots(1, len(benches), squeeze=False)[0]
    for ax, bench in zip(axes, benches):
        for name, model in results["models"].items():
            summary = model["benchmarks"].get(bench)
            if summary is None:
                continue
            levels = [lv for lv in summary["levels"] if lv != "overall"]
            if summary["kind"] == "synthetic":
                xs = [summary["levels"][lv]["intensity"] for lv in levels]
                ax.set_xticks(xs, [f"{lv}\n{x:.2f}" for lv, x in zip(levels, xs)])
                ax.set_xlabel("degradation level and intensity")
            else:
                xs = list(range(len(levels)))
                ax.set_xticks(xs, levels)
                ax.set_xlabel("distortion level")
            ys = [100.0 * summary["levels"][lv]["accuracy"] for lv in levels]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title(bench)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    return buffer.getvalue()


def write_report_set(workdir: str, files: dict[str, bytes]) -> dict[str, str]:
    """Writes ``files`` (relative path -> content) into ``workdir`` as one unit; returns path -> full path.

    The set is written and fsynced in a fresh folder ``.report-<id>``; one rename then points the symlink
    ``.report`` at it (a symlink replaced by rename switches atomically, a directory cannot), and each top-level
    name in ``workdir`` (a file, or a folder such as ``vlmevalkit/``) is a relative symlink ``.report/<name>``. Readers open the usual names and see the whole previous
    set or the whole new one; the previous folder is removed after the switch. Local file systems only."""
    os.makedirs(workdir, exist_ok=True)
    folder = f"{REPORT_SET_LINK}-{uuid.uuid4().hex[:12]}"
    staging = os.path.join(workdir, folder)
    os.makedirs(staging)
    try:
        for name, data in files.items():
            path = os.path.join(staging, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        atomic.share_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link = os.path.join(workdir, REPORT_SET_LINK)
    previous = os.readlink(link) if os.path.islink(link) else None
    _replace_symlink(link, folder)
    for name in dict.fromkeys(name.split("/")[0] for name in files):
        _replace_symlink(os.path.join(workdir, name), os.path.join(REPORT_SET_LINK, name))
    if previous and previous != folder:
        shutil.rmtree(os.path.join(workdir, previous), ignore_errors=True)
    return {name: os.path.join(workdir, name) for name in files}


def _replace_symlink(path: str, target: str) -> None:
    if os.path.islink(path) and os.readlink(path) == target:
        return
    temporary = f"{path}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(target, temporary)
    os.replace(temporary, path)


def write_reports(results: dict, predictions: list[dict], workdir: str, benchmarks=()) -> dict[str, str]:
    """results.json, results.md, accuracy.png and predictions.jsonl in ``workdir`` (process 0 only), and with
    ``benchmarks`` (``robust.Benchmark``) the VLMEvalKit prediction tables under ``vlmevalkit/``, written as one
    report set (``write_report_set``)."""
    paths = {kind: os.path.join(workdir, name) for kind, name in
             (("json", JSON_NAME), ("markdown", MARKDOWN_NAME), ("plot", PLOT_NAME),
              ("predictions", PREDICTIONS_NAME))}
    tables = vlmevalkit_tables(predictions, benchmarks)
    if tables:
        paths["vlmevalkit"] = os.path.join(workdir, VLMEVALKIT_DIR)
    if not is_writer():
        return paths
    files = {
        JSON_NAME: (json.dumps(results, indent=2) + "\n").encode("utf-8"),
        MARKDOWN_NAME: markdown(results).encode("utf-8"),
        PLOT_NAME: plot_png(results),
        PREDICTIONS_NAME: "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions).encode("utf-8")}
    files.update({f"{VLMEVALKIT_DIR}/{relative}": text.encode("utf-8") for relative, text in tables.items()})
    write_report_set(workdir, files)
    return paths


# --------------------------------------------------------------------------- VLMEvalKit prediction tables


def vlmevalkit_prediction(output: str | None) -> tuple[str, str]:
    """(prediction, thinking) of one output, split as VLMEvalKit's ``SPLIT_THINK`` splits a reasoning model's:
    the ANSWER block's text is the prediction and the whole chain the thinking; an output without a complete
    block is the prediction itself (thinking ""). No output (a row that failed) gives ("", "")."""
    if output is None:
        return "", ""
    block = chains.extract_block(output, "ANSWER")
    return (output, "") if block is None else (block.strip(), output)


def _file_name_part(text: str) -> str:
    return _UNSAFE_FILE_CHARACTERS.sub("_", text).strip("_") or "model"


def _dataset_name(path: str) -> str:
    """VLMEvalKit's dataset name for a TSV: R-Bench's release files by their registered names, else the stem."""
    name = os.path.basename(path)
    for part, names in RBENCH_RELEASE.items():
        if name in names:
            return os.path.splitext(names[0])[0]
    return os.path.splitext(name)[0]


def _tsv_text(header: list[str], rows: list[list[str]]) -> str:
    # VLMEvalKit writes its TSVs with pandas' to_csv(sep="\t", quoting=csv.QUOTE_ALL); this is that layout.
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def vlmevalkit_tables(predictions: list[dict], benchmarks) -> dict[str, str]:
    """Relative path -> TSV text of the tables VLMEvalKit's evaluation reads (``{model}_{dataset}.tsv``, set
    ``PRED_FORMAT=tsv`` there): each TSV row's own columns except ``image``, in file order, then ``prediction``
    (and ``thinking`` when any output has a chain). Synthetic benchmarks get one table per level
    (``<level>/``); shipped images (R-Bench) one per source file (``as_shipped/``). JSON rows have no columns
    and get no table."""
    columns_of = {row.where: row.columns for bench in benchmarks for c in bench.conditions for row in c.rows}
    kind_of = {bench.name: bench.kind for bench in benchmarks}
    groups: dict[str, list[dict]] = {}
    for record in predictions:
        columns = columns_of.get(record["where"])
        if not columns or record["benchmark"] not in kind_of:
            continue
        path = record["where"].rsplit(":", 1)[0]
        if kind_of[record["benchmark"]] == "synthetic":
            folder, dataset = record["level"], record["benchmark"]
        else:
            folder, dataset = AS_SHIPPED, _dataset_name(path)
        key = os.path.join(folder, f"{_file_name_part(record['model'])}_{dataset}.tsv")
        groups.setdefault(key, []).append(record)
    tables = {}
    for key, records in groups.items():
        records = sorted(records, key=lambda r: int(r["where"].rsplit(":", 1)[1]))
        header = [name for name, _ in columns_of[records[0]["where"]]]
        split = [vlmevalkit_prediction(r["output"]) for r in records]
        with_thinking = any(thinking for _, thinking in split)
        rows = [[value for _, value in columns_of[r["where"]]] + [prediction] + ([thinking] if with_thinking else [])
                for r, (prediction, thinking) in zip(records, split)]
        tables[key] = _tsv_text(header + ["prediction"] + (["thinking"] if with_thinking else []), rows)
    return tables
