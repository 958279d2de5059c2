"""core.common.atomic: replacing files without losing the old content."""

def test_same_file_links_the_bytes_in_and_falls_back_to_a_copy(tmp_path, monkeypatch):
    import os

    from core.common.atomic import atomic_same_file
    src, dst = tmp_path / "pnnx.bin", tmp_path / "set" / "model.bin"
    dst.parent.mkdir()
    src.write_bytes(b"weights" * 100)
    dst.write_bytes(b"old")
    atomic_same_file(src, dst)
    assert dst.read_bytes() == src.read_bytes() and os.stat(dst).st_ino == os.stat(src).st_ino  # no copy made
    src.unlink()  # the producing step deletes its output before writing it anew: the set keeps the old bytes
    src.write_bytes(b"new")
    assert dst.read_bytes() == b"weights" * 100

    def no_links(*args):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    atomic_same_file(src, dst)
    assert dst.read_bytes() == b"new" and os.stat(dst).st_ino != os.stat(src).st_ino
    assert [p.name for p in dst.parent.iterdir()] == ["model.bin"]  # no temp file left
