"""Issue 16, kind 2 on the evaluation side: a byte that is not UTF-8 (Latin-1 text) in a benchmark file makes
that one row a problem named by file and line (counted wrong, kept in the denominator); the file's other rows are
evaluated. The TSV rows rely on the data readers' per-line check (``data/sources.py``); R-Bench JSON lists are
read here."""
import json

from eval_helpers import NUM_GOOD_ROWS, good_records
from PIL import Image

from robust_r1_jax.data import sources
from robust_r1_jax.eval import benchmarks, robust


# The per-line check lives in the data reader (data/sources.py, records.non_utf8_problem).
def test_a_latin1_byte_in_a_tsv_row_makes_that_row_a_problem(tmp_path):
    path = tmp_path / "latin1.tsv"
    sources.write_vlmeval_tsv(good_records(), str(path))
    lines = path.read_bytes().split(b"\n")
    header = lines[0].split(b"\t")
    fields = lines[3].split(b"\t")  # the third data row
    fields[header.index(b"question")] = "Which colour is the caf\u00e9 sign?".encode("latin-1")
    lines[3] = b"\t".join(fields)
    path.write_bytes(b"\n".join(lines))
    bench = robust.synthetic_benchmark(str(path), ["clean"])
    rows = bench.conditions[0].rows
    assert len(rows) == NUM_GOOD_ROWS  # the row stays in the denominator
    bad = [row for row in rows if row.problem is not None]
    assert [row.where for row in bad] == [f"{path}:4"]
    assert bad[0].record is None and "not valid UTF-8" in bad[0].problem and "0xe9" in bad[0].problem
    assert bad[0].problem.startswith(f"{path}:4: ")
    assert bad[0].label == fields[header.index(b"index")].decode()  # the row keeps its index in the report
    assert all(row.record is not None for row in rows if row.problem is None)


def test_a_latin1_byte_in_an_rbench_json_entry_makes_that_entry_a_problem(tmp_path):
    records = good_records()[:3]
    (tmp_path / "images").mkdir()
    entries = []
    for i, record in enumerate(records):
        Image.fromarray(record.load_image()).save(tmp_path / "images" / f"{i}.png")
        entries.append({"id": str(i), "image": f"images/{i}.png", "question": record.question,
                        "options": list(record.options), "answer": record.answer})
    entries[1]["question"] = "caf\u00e9?"
    text = json.dumps(entries, ensure_ascii=False, indent=1).encode("utf-8").replace(
        "caf\u00e9".encode("utf-8"), "caf\u00e9".encode("latin-1"))
    (tmp_path / "low.json").write_bytes(text)
    rows = benchmarks.read_rbench(str(tmp_path))["low"]
    assert [row.problem for row in rows] == [
        None, f"{tmp_path / 'low.json'}[1]: entry 1: text is not valid UTF-8 (byte 0xe9)", None]
    assert [row.load_image()[1] for row in rows] == [None, rows[1].problem, None]
