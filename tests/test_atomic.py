import pytest

from charnn import atomic


def test_write_bytes_replaces_a_file_whole(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_bytes(path, b"old")
    atomic.write_bytes(path, "新しい".encode())
    assert path.read_bytes() == "新しい".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic.write_bytes(path, "not bytes")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_folder_is_replaced_only_when_complete(tmp_path):
    target = tmp_path / "ckpt_1"
    with atomic.replacing_folder(target) as tmp:
        assert atomic.is_temporary(tmp) and not target.exists()
        atomic.write_bytes(tmp / "weights", b"1")
    assert (target / "weights").read_bytes() == b"1"
    with pytest.raises(RuntimeError), atomic.replacing_folder(target) as tmp:
        atomic.write_bytes(tmp / "weights", b"2")
        raise RuntimeError("a failure half-way")
    assert (target / "weights").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_1"]
    with atomic.replacing_folder(target) as tmp:
        atomic.write_bytes(tmp / "weights", b"3")
    assert (target / "weights").read_bytes() == b"3"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_1"]


def test_tidy_clears_temporaries_and_puts_back_a_folder_moved_aside(tmp_path):
    (tmp_path / ".ckpt_2.tmp-999").mkdir()  # a write that never finished
    (tmp_path / ".train.bin.tmp-999").write_bytes(b"partial")
    (tmp_path / ".best.old-999").mkdir()  # a replace stopped between its two renames
    (tmp_path / ".best.old-999" / "weights").write_bytes(b"best")
    (tmp_path / "ckpt_1").mkdir()
    (tmp_path / ".ckpt_1.old-998").mkdir()  # its replacement had landed: the old one goes
    (tmp_path / ".hidden").write_bytes(b"not ours")
    atomic.tidy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "best", "ckpt_1"]
    assert (tmp_path / "best" / "weights").read_bytes() == b"best"
