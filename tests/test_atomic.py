"""robust_r1_jax.atomic: content written, no temporary entries left, and a failure part way leaves the old file or
directory exactly as it was."""
import os
import stat

import pytest

from robust_r1_jax import atomic


class Interrupted(Exception):
    pass


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_text_and_bytes_create_replace_and_leave_nothing_else(tmp_path):
    target = tmp_path / "new" / "deeper" / "report.md"
    atomic.write_text(target, "§ first\n")
    assert target.read_bytes() == "§ first\n".encode("utf-8")
    atomic.write_bytes(str(target), b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert entries(target.parent) == ["report.md"]
    assert mode(target) == atomic.file_mode()


def test_open_for_write_passes_the_open_arguments(tmp_path):
    target = tmp_path / "rows.tsv"
    with atomic.open_for_write(target, "w", encoding="utf-8", newline="") as handle:
        handle.write("a\tb\r\n")
    assert target.read_bytes() == b"a\tb\r\n"  # newline="" reached open(): no translation
    with pytest.raises(ValueError, match="must start with 'w'"):
        with atomic.open_for_write(target, "a"):
            pass
    assert entries(tmp_path) == ["rows.tsv"]


def test_a_failure_mid_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(Interrupted):
        with atomic.open_for_write(target, "w") as handle:
            handle.write("half of the new")
            handle.flush()
            # the partial content exists only under a temporary name
            assert target.read_text() == "old" and len(entries(tmp_path)) == 2
            raise Interrupted
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["summary.json"]


def test_a_failure_writes_nothing_where_there_was_nothing(tmp_path):
    with pytest.raises(Interrupted):
        with atomic.open_for_write(tmp_path / "plot.png", "wb"):
            raise Interrupted
    assert entries(tmp_path) == []


def fill_with(files):
    def fill(directory):
        for name, text in files.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
    return fill


def test_replace_dir_creates_then_swaps_a_whole_directory(tmp_path):
    target = tmp_path / "tokenizer"
    atomic.replace_dir(target, fill_with({"a.json": "1", "b.json": "2"}))
    assert entries(target) == ["a.json", "b.json"] and (target / "a.json").read_text() == "1"
    assert mode(target) == atomic.dir_mode()
    atomic.replace_dir(str(target), fill_with({"c.json": "3"}))
    assert entries(target) == ["c.json"]  # the old directory's files are gone with it, not merged
    assert entries(tmp_path) == ["tokenizer"]


def test_a_failing_fill_leaves_the_old_directory_intact(tmp_path):
    target = tmp_path / "tokenizer"
    atomic.replace_dir(target, fill_with({"a.json": "old"}))

    def fail(directory):
        fill_with({"a.json": "new", "b.json": "new"})(directory)
        raise Interrupted

    with pytest.raises(Interrupted):
        atomic.replace_dir(target, fail)
    assert entries(target) == ["a.json"] and (target / "a.json").read_text() == "old"
    assert entries(tmp_path) == ["tokenizer"]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_modes_are_what_open_and_mkdir_give_under_the_umask(tmp_path, umask_027):
    atomic.write_text(tmp_path / "a.txt", "x")
    atomic.replace_dir(tmp_path / "d", fill_with({"b.json": "1"}))
    (tmp_path / "d" / "sub").mkdir()
    os.chmod(tmp_path / "d" / "b.json", 0o600)   # what safetensors' writer leaves
    atomic.share_tree(tmp_path / "d")
    assert (mode(tmp_path / "a.txt"), mode(tmp_path / "d"), mode(tmp_path / "d" / "sub"),
            mode(tmp_path / "d" / "b.json")) == (0o640, 0o750, 0o750, 0o640)
    assert os.umask(0o027) == 0o027  # reading the umask left it as it was


def test_swap_dir_replaces_a_complete_directory(tmp_path):
    atomic.replace_dir(tmp_path / "model", fill_with({"old.json": "1"}))
    staging = tmp_path / ".model.staging"
    staging.mkdir()
    fill_with({"new.json": "2"})(staging)
    atomic.swap_dir(staging, tmp_path / "model")
    assert entries(tmp_path) == ["model"] and entries(tmp_path / "model") == ["new.json"]
