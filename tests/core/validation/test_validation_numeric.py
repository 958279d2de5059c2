"""core.validation.numeric: the ncnn half of the numeric check, in a child process, on torch's saved chunks."""
import numpy as np

from core.validation.numeric import NETS, _load_chunks, compare_in_child, save_chunks


def test_chunks_survive_the_file_in_order(tmp_path):
    enc = [([np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.zeros((2, 1, 4), np.float32)],
            [np.ones((1, 1, 3), np.float32)]) for _ in range(2)]
    enc[1][0][0] += 1  # chunk 1 differs from chunk 0
    nets = {"encoder": enc, "decoder": [([np.array([[1, 2]], dtype=np.int64)], [np.ones((1, 8), np.float32)])]}
    save_chunks(tmp_path / "c.npz", nets)
    back = _load_chunks(tmp_path / "c.npz")
    assert list(back["encoder"][1][0][0].ravel()) == list(range(1, 7))
    assert [len(c[0]) for c in back["encoder"]] == [2, 2] and back["decoder"][0][0][0].dtype == np.int64


def test_an_unloadable_model_is_a_sentence_per_net(tmp_path):
    nets = {n: [([np.zeros((1, 4), np.float32)], [np.zeros((1, 4), np.float32)])] for n in NETS}
    save_chunks(tmp_path / "c.npz", nets)
    for n in NETS:  # a param python ncnn refuses
        (tmp_path / f"{n}_jit_trace-pnnx.ncnn.param").write_text("not a param\n")
        (tmp_path / f"{n}_jit_trace-pnnx.ncnn.bin").write_bytes(b"\0" * 16)
    result = compare_in_child(tmp_path, tmp_path / "c.npz")
    assert set(result) == set(NETS)
    assert all(isinstance(v, str) and "could not load" in v and "jit_trace-pnnx.ncnn.param" in v
               for v in result.values()), result
