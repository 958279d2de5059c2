"""Behaviour of core.ncnn.param: lossless round trips, the grammar, error reporting, edits.

Every test states what a correct parser must do; none of them only exercises
code. The cases that once were defects (CR-only line numbers for bad bytes,
blank lines before the magic, long values, spaces in arrays, non-ASCII
digits, new lines in files with mixed endings) are pinned here.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.ncnn.param import (
    MAGIC,
    ParamFile,
    ParseResult,
    format_layer_line,
    load_param,
    parse_param,
)
from tests.paths import TESTS

FIXTURES = TESTS / "fixtures" / "icefall-real"
FIXTURE_PARAMS = sorted(FIXTURES.glob("*/*.param"))

def fast(n: int):
    """Few, quick examples: the whole file stays around a second or two."""
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def errors(result: ParseResult):
    return [i for i in result.issues if i.severity == "error"]


def warnings(result: ParseResult):
    return [i for i in result.issues if i.severity == "warning"]


# ---------------------------------------------------------------------------
# 1. Real pnnx output round-trips byte for byte
# ---------------------------------------------------------------------------

def test_fixture_params_are_present():
    # 3 architectures x (encoder, decoder, joiner); guards against an empty parametrization below.
    assert len(FIXTURE_PARAMS) == 9, FIXTURE_PARAMS


@pytest.mark.parametrize("path", FIXTURE_PARAMS, ids=lambda p: f"{p.parent.name}/{p.name.split('_')[0]}")
def test_real_params_round_trip_exactly(path: Path):
    data = path.read_bytes()
    result = parse_param(data, str(path))
    assert result.model is not None
    assert errors(result) == [], result.describe()
    assert result.ok
    model = result.model
    assert model.to_bytes() == data
    # the header pnnx wrote is consistent with what was parsed
    assert model.layer_count == len(model.layers) > 0
    assert model.blob_count == model.counted_blobs()
    assert model.input_names, "every exported graph has Input layers"
    # load_param reads the same file to the same model
    loaded = load_param(path)
    assert loaded.ok and loaded.model.to_bytes() == data
    assert [lay.name for lay in loaded.model.layers] == [lay.name for lay in model.layers]


def test_real_zipformer_encoder_io_blobs():
    model = load_param(FIXTURES / "zipformer" / "encoder_jit_trace-pnnx.ncnn.param").model
    # icefall's export: 1 + 7 x 5 stacks inputs, same count of outputs
    assert model.input_names == [f"in{i}" for i in range(36)]
    assert sorted(model.output_names, key=lambda n: int(n[3:])) == [f"out{i}" for i in range(36)]


# ---------------------------------------------------------------------------
# 2. Hypothesis: random valid files parse to what was generated, losslessly
# ---------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"


def _word(first: str, rest: str, max_rest: int):
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(alphabet=rest, max_size=max_rest))


_IDENT = _word(_LETTERS + "_", _LETTERS + _DIGITS + "_", 10)
_NAME = _word(_LETTERS + "_", _LETTERS + _DIGITS + "_./", 12)
_TYPES = st.one_of(
    st.sampled_from(["Input", "BinaryOp", "InnerProduct", "Split", "Convolution1D", "Reshape",
                     "Permute", "Concat", "Slice", "SherpaMetaData", "PoolingModuleNoProj", "MemoryData"]),
    _IDENT,
)


def _sep(rnd) -> str:  # one or more spaces / tabs between tokens
    return "".join(rnd.choice(" \t") for _ in range(rnd.choice((1, 1, 1, 2, 3))))


def _pad(rnd) -> str:  # optional leading / trailing padding
    return "".join(rnd.choice(" \t") for _ in range(rnd.choice((0, 0, 0, 1, 2))))
_INT = st.integers(min_value=-(10 ** 9), max_value=10 ** 9)
# ncnn reads any value with '.', 'e' or 'E' as a float: 1.000000e-05, 0.500, 1e-05, 3E+2
_FLOAT_TEXT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: "%e" % f),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda f: "%.3f" % f),
    st.builds(lambda m, e, x: f"{m}{e}{x}", st.integers(-999, 999), st.sampled_from(["e", "E", "e+", "e-"]),
              st.integers(0, 30)),
)


def _expected_scalar(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


_SCALAR_TEXT = st.one_of(_INT.map(str), _FLOAT_TEXT)


# What a parameter value looks like, independent of its id: (kind, payload).
_PARAM_VALUE = st.one_of(
    st.tuples(st.just("int"), _INT.map(str)),
    st.tuples(st.just("float"), _FLOAT_TEXT),
    st.tuples(st.just("old_array"), st.lists(_SCALAR_TEXT, max_size=6)),
    st.tuples(st.just("new_array"), st.lists(_SCALAR_TEXT, min_size=2, max_size=6)),  # 1 value = a scalar
    st.tuples(st.just("string"), _word(_LETTERS, _LETTERS + _DIGITS + "_", 14)),
    st.tuples(st.just("quoted"), st.text(alphabet=_LETTERS + _DIGITS + "_ ", max_size=12)),
)
_PARAMS = st.lists(st.tuples(st.integers(min_value=0, max_value=31), _PARAM_VALUE),
                   unique_by=lambda p: p[0], max_size=5)


def _param(pid: int, kind: str, payload):
    """(token text, expected (id, key, raw, kind, value, old_style))."""
    if kind == "int":
        return f"{pid}={payload}", (pid, str(pid), payload, "int", int(payload), False)
    if kind == "float":
        return f"{pid}={payload}", (pid, str(pid), payload, "float", float(payload), False)
    if kind == "old_array":
        raw = ",".join([str(len(payload))] + payload)
        key = str(-23300 - pid)
        return f"{key}={raw}", (pid, key, raw, "array", tuple(_expected_scalar(e) for e in payload), True)
    if kind == "new_array":
        raw = ",".join(payload)
        return f"{pid}={raw}", (pid, str(pid), raw, "array", tuple(_expected_scalar(e) for e in payload), False)
    if kind == "string":
        return f"{pid}={payload}", (pid, str(pid), payload, "string", payload, False)
    raw = f'"{payload}"'
    return f"{pid}={raw}", (pid, str(pid), raw, "string", payload, False)


@st.composite
def valid_param_files(draw):
    """A random, valid param file: (bytes, expected layers, final-newline flag, eol style).

    The structure (layers, blobs, params) is drawn token by token so it shrinks well; the
    layout (padding, blank lines, line endings) comes from a Random that hypothesis seeds,
    which keeps generation fast.
    """
    rnd = random.Random(draw(st.integers(min_value=0, max_value=2 ** 32 - 1), label="layout seed"))
    n_layers = draw(st.integers(min_value=1, max_value=8))
    produced: list[str] = []
    counter = 0
    layers = []
    for _ in range(n_layers):
        type_ = draw(_TYPES)
        name = draw(_NAME)
        bottoms = draw(st.lists(st.sampled_from(produced), max_size=3)) if produced else []
        n_tops = draw(st.integers(min_value=0 if produced else 1, max_value=3))
        tops = []
        for _ in range(n_tops):
            counter += 1
            # unique: the part after the last "_" (or the whole name) is the counter
            tops.append(str(counter) if rnd.random() < 0.5 else f"{draw(_IDENT)}_{counter}")
        produced.extend(tops)
        params = [_param(pid, kind, payload) for pid, (kind, payload) in draw(_PARAMS)]
        tokens = [type_, name, str(len(bottoms)), str(len(tops)), *bottoms, *tops, *(t for t, _ in params)]
        body = _pad(rnd)
        for i, tok in enumerate(tokens):
            body += (_sep(rnd) if i else "") + tok
        body += _pad(rnd)
        layers.append((body, (type_, name, tuple(bottoms), tuple(tops), tuple(e for _, e in params))))

    blob_count = counter  # every bottom is an earlier top, so the blobs are exactly the tops
    header = _pad(rnd) + str(n_layers) + _sep(rnd) + str(blob_count) + _pad(rnd)
    bodies = [MAGIC + rnd.choice(["", "", " "]), header]
    for body, _ in layers:
        if rnd.random() < 0.15:  # occasional blank (or whitespace-only) line
            bodies.append(_pad(rnd))
        bodies.append(body)
    if rnd.random() < 0.15:
        bodies.append(_pad(rnd))

    style = rnd.choice(["\n", "\r\n", "\r", "mixed"])
    eols = [rnd.choice(["\n", "\r\n", "\r"]) if style == "mixed" else style for _ in bodies]
    final_newline = rnd.random() < 0.7
    if not final_newline:
        eols[-1] = ""
    text = "".join(b + e for b, e in zip(bodies, eols))
    return text.encode("utf-8"), [exp for _, exp in layers], final_newline, style


def _structure(model: ParamFile):
    return [
        (lay.type, lay.name, lay.bottoms, lay.tops,
         tuple((p.id, p.key, p.raw, p.kind, p.value, p.old_style) for p in lay.params))
        for lay in model.layers
    ]


@fast(80)
@given(valid_param_files())
def test_generated_files_round_trip_and_parse_to_what_was_generated(case):
    data, expected, _final_newline, _style = case
    result = parse_param(data)
    assert result.model is not None, result.describe()
    assert result.issues == [], result.describe()
    model = result.model
    assert model.to_bytes() == data
    assert model.layer_count == len(expected) == len(model.layers)
    assert model.blob_count == model.counted_blobs()
    assert _structure(model) == expected
    assert [lay.index for lay in model.layers] == list(range(len(expected)))
    for lay in model.layers:  # each layer's line number points at its own line
        assert model.lines[lay.line - 1].split()[:2] == [lay.type, lay.name]
    # the str entry point gives the same model
    again = parse_param(data.decode("utf-8"))
    assert again.issues == [] and _structure(again.model) == expected
    assert again.model.text() == data.decode("utf-8")


# ---------------------------------------------------------------------------
# 3. Fuzzing: parse_param reports, it never raises
# ---------------------------------------------------------------------------

def _check_result_shape(result, data):
    assert isinstance(result, ParseResult)
    for issue in result.issues:
        assert issue.severity in ("error", "warning")
        assert issue.line is None or issue.line >= 1
        assert isinstance(issue.message, str) and issue.message
    if result.model is None:
        assert errors(result), "a file without a model must say why"
    else:
        # whatever parses is still lossless
        if isinstance(data, bytes):
            assert result.model.to_bytes() == data
        else:
            assert result.model.text() == data
        n_lines = len(result.model.lines)
        assert all(i.line is None or i.line <= n_lines for i in result.issues)
    assert result.ok == (result.model is not None and not errors(result))


@fast(200)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(data):
    _check_result_shape(parse_param(data), data)


@fast(200)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_raises(text):
    _check_result_shape(parse_param(text), text)


_GRAMMAR_CHARS = st.sampled_from(list(" \t\r\n=,-+.\"eE0123456789aZ_/") + ["-233", "7767517", "\ufeff", "\x85", "\u00a0"])


@fast(200)
@given(st.sampled_from(["7767517\n", "7767517\r\n", "7767517\r"]),
       st.sampled_from(["", "2 3\n", "1 1\n", "5 9\r\n"]),
       st.lists(_GRAMMAR_CHARS, max_size=120).map("".join))
def test_fuzz_near_valid_text_never_raises(magic, header, rest):
    text = magic + header + rest
    _check_result_shape(parse_param(text), text)
    _check_result_shape(parse_param(text.encode("utf-8")), text.encode("utf-8"))


@fast(40)
@given(valid_param_files(), st.data())
def test_fuzz_mutated_valid_files_never_raise(case, data):
    raw = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(list(b" \t\r\n=,-.\"0a") + [0xFF, 0x00]))
        if op == "insert":
            raw[pos:pos] = bytes([byte])
        elif pos < len(raw):
            raw[pos:pos + 1] = b"" if op == "delete" else bytes([byte])
    _check_result_shape(parse_param(bytes(raw)), bytes(raw))


# ---------------------------------------------------------------------------
# 4. Bad input: an error on the right line, with a sentence naming the problem
# ---------------------------------------------------------------------------

def _assert_error(result, line, *words):
    errs = errors(result)
    assert errs, f"expected an error, got {result.issues}"
    hits = [e for e in errs if e.line == line]
    assert hits, f"no error on line {line}: {errs}"
    text = " ".join(e.message for e in hits).lower()
    for w in words:
        assert w.lower() in text, f"{w!r} not in {text!r}"
    assert not result.ok


def test_wrong_magic():
    result = parse_param(b"7767518\n0 0\n")
    assert result.model is None
    _assert_error(result, 1, "magic", "7767517", "7767518")


def test_binary_param_file_is_not_mistaken_for_text():
    # a .param.bin starts with the magic as a little-endian int32
    result = parse_param((7767517).to_bytes(4, "little") + b"\x00" * 8)
    assert result.model is None
    _assert_error(result, 1)


@pytest.mark.parametrize("data", [b"", b"\n", b"  \r\n\t\n", ""], ids=["empty", "newline", "blank-lines", "empty-str"])
def test_empty_file(data):
    result = parse_param(data)
    assert result.model is None
    _assert_error(result, 1, "empty")


def test_leading_blank_line_is_not_called_an_empty_file():
    result = parse_param("\n7767517\n1 1\nInput in0 0 1 in0\n")
    assert not any("empty" in i.message for i in result.issues), result.issues


def test_utf8_bom():
    data = "\ufeff7767517\n1 1\nInput in0 0 1 in0\n".encode("utf-8")
    result = parse_param(data)
    assert result.model is None
    _assert_error(result, 1, "byte-order mark")


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_non_utf8_bytes_report_the_line_of_the_bad_byte(eol):
    lines = ["7767517", "2 2", "Input in0 0 1 in0", "ReLU r\xe9lu 1 1 in0 out0"]
    data = eol.join(lines).encode("latin-1") + eol.encode()
    result = parse_param(data)
    assert result.model is None
    _assert_error(result, 4, "utf-8", "0xe9")


def test_non_utf8_bytes_line_number_in_cr_only_file():
    data = b"7767517\r2 2\rInput in0 0 1 in0\rReLU r\xe9lu 1 1 in0 out0\r"
    _assert_error(parse_param(data), 4, "utf-8")


@pytest.mark.parametrize("text, found", [
    ("7767517\n", "nothing"),
    ("7767517\n1\nInput in0 0 1 in0\n", "'1'"),
    ("7767517\n1 1 1\nInput in0 0 1 in0\n", "'1 1 1'"),
    ("7767517\none two\nInput in0 0 1 in0\n", "'one two'"),
    ("7767517\n-1 1\nInput in0 0 1 in0\n", "'-1 1'"),
    ("7767517\n1.0 1\nInput in0 0 1 in0\n", "'1.0 1'"),
    ("7767517\r\nInput in0 0 1 in0\r\n", "'input in0 0 1 in0'"),
], ids=["missing", "one-number", "three-numbers", "words", "negative", "float", "layer-as-header"])
def test_malformed_header(text, found):
    result = parse_param(text)
    assert result.model is None
    _assert_error(result, 2, "header", "layer_count blob_count", found)


_TWO_LAYERS = "7767517\n{header}\nInput in0 0 1 in0\nReLU relu0 1 1 in0 out0\n"


def test_header_layer_count_larger_than_layer_lines():
    result = parse_param(_TWO_LAYERS.format(header="3 2"))
    assert result.model is not None  # still editable, so the header can be fixed
    _assert_error(result, 2, "3 layers", "2 layer lines", "set the first header number to 2")


def test_header_layer_count_smaller_than_layer_lines():
    result = parse_param(_TWO_LAYERS.format(header="1 2"))
    _assert_error(result, 2, "1 layers", "2 layer lines", "drops")


def test_header_layer_count_ignores_blank_lines():
    text = "7767517\n2 2\n\nInput in0 0 1 in0\n   \n\t\nReLU relu0 1 1 in0 out0\n\n"
    result = parse_param(text)
    assert result.issues == []


def test_header_blob_count_smaller_than_needed():
    result = parse_param(_TWO_LAYERS.format(header="2 1"))
    _assert_error(result, 2, "1 blobs", "define 2", "set the second header number to 2")


def test_header_blob_count_larger_is_only_a_warning():
    result = parse_param(_TWO_LAYERS.format(header="2 5"))
    assert result.ok
    assert [(w.line, "5 blobs" in w.message) for w in warnings(result)] == [(2, True)]


def test_blob_count_counts_unknown_bottoms():
    # ncnn gives a bottom nobody produced its own slot too
    result = parse_param("7767517\n1 2\nReLU relu0 1 1 ghost out0\n")
    assert errors(result) == []
    assert any(w.line == 3 and "ghost" in w.message for w in warnings(result))
    assert errors(parse_param("7767517\n1 1\nReLU relu0 1 1 ghost out0\n"))


_LAYER_EOLS = pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])


def _bad_layer(line_body: str, eol: str, blank_before: bool = True) -> str:
    """A file whose 4th line (5th with a blank line) is ``line_body``; the header matches."""
    lines = ["7767517", "2 2", "Input in0 0 1 in0"] + ([""] if blank_before else []) + [line_body]
    return eol.join(lines) + eol


BAD_LAYER_LINES = [
    # (layer line, words the message must contain)
    ("ReLU relu0 2 1 in0 out0", ["declares 2 bottom(s) and 1 top(s)", "lists 2 blob name(s)"]),
    ("ReLU relu0 1 3 in0 out0", ["declares 1 bottom(s) and 3 top(s)", "lists 2"]),
    ("ReLU relu0 1 2 in0 out0 0=1", ["declares 1 bottom(s) and 2 top(s)", "lists 2"]),
    ("ReLU relu0 x 1 in0 out0", ["bottom and top counts", "'x'"]),
    ("ReLU relu0 1 -1 in0 out0", ["bottom and top counts", "'-1'"]),
    ("ReLU relu0 1", ["needs 'type name bottom_count top_count"]),
    ("ReLU relu0 1 1 in0 out0 0=1 oops", ["'oops' is not a key=value pair"]),
    ("ReLU relu0 1 1 in0 out0 x=1", ["malformed key", "'x=1'"]),
    ("ReLU relu0 1 1 in0 out0 1a=1", ["malformed key", "'1a=1'"]),
    ("ReLU relu0 1 1 in0 out0 =1", ["malformed key"]),
    ("ReLU relu0 1 1 in0 out0 32=1", ["key 32 is out of range", "0-31"]),
    ("ReLU relu0 1 1 in0 out0 -23332=1,5", ["key -23332 is out of range"]),
    ("ReLU relu0 1 1 in0 out0 -1=5", ["key -1 is out of range"]),
    ("ReLU relu0 1 1 in0 out0 0=", ["key 0 has no value"]),
    ("ReLU relu0 1 1 in0 out0 -23309=3,1,2", ["array key -23309 says 3 value(s) but lists 2"]),
    ("ReLU relu0 1 1 in0 out0 -23309=1,1,2", ["says 1 value(s) but lists 2"]),
    ("ReLU relu0 1 1 in0 out0 -23309=x,1", ["must start with its length", "'x'"]),
    ("ReLU relu0 1 1 in0 out0 -23309=2,1,z", ["malformed element", "'z'"]),
    ("ReLU relu0 1 1 in0 out0 -23316=5,2,4, 3,2,4", ["space"]),
    ("ReLU relu0 1 1 in0 out0 -23316=2,2,4 3", ["space inside the array of key -23316"]),
    ("ReLU relu0 1 1 in0 out0 16=2,4 3", ["space inside the array of key 16"]),
    ("ReLU relu0 1 1 in0 out0 16=1,,2", ["array value of key 16 is malformed"]),
    ('ReLU relu0 1 1 in0 out0 5="abc', ["no closing quote"]),
    ('ReLU relu0 1 1 in0 out0 5="abc def 1=2', ["no closing quote"]),
    ("ReLU relu0 1 1 in0 out0 1=1.5.5", ["'1.5.5'", "not a number"]),
    ("ReLU relu0 1 1 in0 out0 1=1234567890123456", ["'1234567890123456'"]),
    ("ReLU relu0 1 1 in0 out0 1=1.0000000000000001", ["'1.0000000000000001'"]),
    ("ReLU relu0 1 1 in0 out0 -23301=2,1,1.00000000000000001", ["longer than 15 characters"]),
]


@_LAYER_EOLS
@pytest.mark.parametrize("blank_before", [False, True], ids=["dense", "blank-line"])
@pytest.mark.parametrize("body, words", BAD_LAYER_LINES, ids=[b.split(None, 6)[-1] for b, _ in BAD_LAYER_LINES])
def test_bad_layer_line_reports_its_line(body, words, eol, blank_before):
    result = parse_param(_bad_layer(body, eol, blank_before).encode())
    assert result.model is not None  # the rest of the file is still usable
    line = 5 if blank_before else 4
    _assert_error(result, line, "relu0", *words)
    # the bad line is not turned into a layer, and nothing else is blamed
    assert [lay.name for lay in result.model.layers] == ["in0"]
    assert all(e.line in (2, line) for e in errors(result))


@pytest.mark.parametrize("value", ["1234567890123456", "1.0000000000000001", "-0.0000000000001"])
def test_value_longer_than_15_chars_is_an_error(value):
    # ncnn scans a value with %15[^,\n ]: the 16th character starts the next "key"
    assert len(value) > 15
    result = parse_param(_bad_layer(f"ReLU relu0 1 1 in0 out0 1={value}", "\n", False))
    _assert_error(result, 4, value)
    assert len("1.000000000e-05") == 15
    assert parse_param(_bad_layer("ReLU relu0 1 1 in0 out0 1=1.000000000e-05", "\n", False)).ok


def test_value_longer_than_15_chars_message_names_the_limit():
    result = parse_param(_bad_layer("ReLU relu0 1 1 in0 out0 1=1234567890123456", "\n", False))
    text = " ".join(e.message for e in errors(result)).lower()
    assert "15" in text or "long" in text, text


def test_space_inside_array_does_not_blame_the_blob_count():
    result = parse_param(_bad_layer("ReLU relu0 1 1 in0 out0 -23316=5,2,4, 3,2,4", "\n", False))
    assert errors(result)
    assert not any("blob count" in e.message for e in errors(result)), errors(result)


@pytest.mark.parametrize("value", ["1_0.5", "\u0663", "\u0661.5"])
def test_python_only_number_syntax_is_rejected(value):
    result = parse_param(_bad_layer(f"ReLU relu0 1 1 in0 out0 1={value}", "\n", False))
    assert errors(result), result.model.layer_named("relu0").params


def test_duplicate_key_is_a_warning_and_last_wins():
    result = parse_param(_bad_layer("ReLU relu0 1 1 in0 out0 0=1 0=2.5", "\r\n", False))
    assert result.ok
    [w] = warnings(result)
    assert w.line == 4 and "key 0 is given twice" in w.message and "last" in w.message
    layer = result.model.layer_named("relu0")
    assert layer.get(0) == 2.5 and layer.param(0).raw == "2.5"


def test_issue_str_names_the_line():
    [issue] = errors(parse_param(_bad_layer("ReLU relu0 1 1 in0 out0 32=1", "\n", False)))
    assert str(issue).startswith("line 4: ")
    result = parse_param(b"nope", "x.param")
    assert result.describe().startswith("x.param: line 1: ")


def test_load_param_reports_unreadable_paths(tmp_path):
    missing = load_param(tmp_path / "nope.param")
    assert missing.model is None and "not found" in missing.issues[0].message
    directory = load_param(tmp_path)
    assert directory.model is None and "directory" in directory.issues[0].message


# ---------------------------------------------------------------------------
# 5. Edits change only what they name
# ---------------------------------------------------------------------------

SMALL = "7767517\n2 2\nInput in0 0 1 in0\nReLU relu0 1 1 in0 out0\n"
META_LINE = format_layer_line("SherpaMetaData", "sherpa_meta_data1", (), (), ["0=2", "-23316=2,1,2"])


def test_format_layer_line_pads_like_pnnx():
    line = format_layer_line("Split", "splitncnn_0", ["a"], ["b", "c"], ["0=1"])
    assert line == f"{'Split':<24} {'splitncnn_0':<24} 1 2 a b c 0=1"
    assert parse_param(f"7767517\n1 3\n{line}\n").model.layers[0].tops == ("b", "c")


def test_insert_after_header_in_crlf_file_uses_crlf():
    src = SMALL.replace("\n", "\r\n")
    model = parse_param(src.encode()).model
    new = model.with_line_inserted(2, META_LINE)
    lines = src.split("\r\n")
    expected = "\r\n".join(lines[:2] + [META_LINE] + lines[2:])
    assert new.to_bytes() == expected.encode()
    assert b"\n" not in new.to_bytes().replace(b"\r\n", b"")
    assert new.layers[0].type == "SherpaMetaData" and new.layers[0].line == 3


def test_insert_in_cr_file_uses_cr():
    src = SMALL.replace("\n", "\r")
    new = parse_param(src).model.with_line_inserted(2, META_LINE)
    assert new.text() == src.replace("2 2\r", f"2 2\r{META_LINE}\r")


def test_insert_into_file_without_final_newline_keeps_it_without():
    src = SMALL.rstrip("\n")
    model = parse_param(src).model
    at_end = model.with_line_inserted(4, META_LINE)
    assert at_end.text() == src + "\n" + META_LINE
    after_header = model.with_line_inserted(2, META_LINE)
    assert after_header.text() == src.replace("2 2\n", f"2 2\n{META_LINE}\n")
    assert not after_header.text().endswith("\n")


def test_insert_cr_line_before_blank_lf_line():
    src = "7767517\r1 1\rInput in0 0 1 in0\n\n"  # mixed endings: CR first, then LF
    model = parse_param(src).model
    new = model.with_line_inserted(3, "ReLU relu0 1 1 in0 out0")
    # the new line takes the ending of the line before it, so it cannot fuse with the blank LF line
    assert new.text() == "7767517\r1 1\rInput in0 0 1 in0\nReLU relu0 1 1 in0 out0\n\n"
    assert len(new.lines) == len(model.lines) + 1, new.lines
    assert new.with_line_removed(4).text() == src


def test_insert_at_end_of_file_with_final_newline():
    new = parse_param(SMALL).model.with_line_inserted(4, META_LINE)
    assert new.text() == SMALL + META_LINE + "\n"


def test_with_header_keeps_its_own_spacing():
    src = "7767517\r\n  12   34 \r\nInput in0 0 1 in0\r\nReLU relu0 1 1 in0 out0\r\n"
    model = parse_param(src).model  # counts are wrong, but the model is editable
    assert (model.layer_count, model.blob_count) == (12, 34)
    new = model.with_header(2, 2)
    assert new.text() == src.replace("  12   34 ", "  2   2 ")
    assert new.issues == []
    assert new.header_text() == "2   2"
    bigger = model.with_header(123, 4567)
    assert bigger.text() == src.replace("  12   34 ", "  123   4567 ")


def test_with_header_tab_separated():
    src = "7767517\n2\t2\nInput in0 0 1 in0\nReLU relu0 1 1 in0 out0"
    assert parse_param(src).model.with_header(3, 10).text() == src.replace("2\t2", "3\t10")


def test_replace_changes_only_that_line():
    src = SMALL.replace("\n", "\r\n")
    model = parse_param(src).model
    new = model.with_line_replaced(4, "ReLU   relu0   1 1 in0 out0 0=0.100000")
    assert new.text() == src.replace("ReLU relu0 1 1 in0 out0", "ReLU   relu0   1 1 in0 out0 0=0.100000")
    assert new.layer_named("relu0").get(0) == pytest.approx(0.1)
    # a last line without newline stays without
    bare = parse_param(SMALL.rstrip("\n")).model.with_line_replaced(4, "ReLU relu1 1 1 in0 out0")
    assert bare.text() == SMALL.rstrip("\n").replace("relu0", "relu1")


def test_remove_changes_only_that_line():
    src = "7767517\r\n3 3\r\nInput in0 0 1 in0\r\nReLU relu0 1 1 in0 out0\r\nReLU relu1 1 1 out0 out1\r\n"
    model = parse_param(src).model
    new = model.with_line_removed(4)
    assert new.text() == src.replace("ReLU relu0 1 1 in0 out0\r\n", "")
    assert [lay.name for lay in new.layers] == ["in0", "relu1"]
    assert [lay.line for lay in new.layers] == [3, 4]


def test_remove_last_line_keeps_no_final_newline():
    src = SMALL.rstrip("\n")
    new = parse_param(src).model.with_line_removed(4)
    assert new.text() == "7767517\n2 2\nInput in0 0 1 in0"
    # and with a final newline the file keeps it
    assert parse_param(SMALL).model.with_line_removed(4).text() == "7767517\n2 2\nInput in0 0 1 in0\n"


def test_edits_do_not_mutate_the_original():
    model = parse_param(SMALL).model
    model.with_line_inserted(2, META_LINE)
    model.with_line_replaced(4, "ReLU x 1 1 in0 out0")
    model.with_line_removed(4)
    model.with_header(9, 9)
    assert model.text() == SMALL and len(model.layers) == 2


def test_edit_that_breaks_the_file_is_refused():
    model = parse_param(SMALL).model
    with pytest.raises(ValueError, match="unreadable"):
        model.with_line_replaced(1, "not a magic line")
    with pytest.raises(ValueError, match="unreadable"):
        model.with_line_replaced(2, "two words")


def test_real_encoder_insert_and_header_keep_every_other_byte():
    path = FIXTURES / "zipformer" / "encoder_jit_trace-pnnx.ncnn.param"
    data = path.read_bytes()
    model = parse_param(data).model
    new = model.with_line_inserted(2, META_LINE).with_header(model.layer_count + 1, model.blob_count)
    assert new.ok, new.issues
    old_lines = data.decode().splitlines(keepends=True)
    new_lines = new.text().splitlines(keepends=True)
    assert new_lines[0] == old_lines[0]
    assert new_lines[1] == f"{model.layer_count + 1} {model.blob_count}\n"
    assert new_lines[2] == META_LINE + "\n"
    assert new_lines[3:] == old_lines[2:]
    assert new.layers[0].get(16) == (1, 2)


@fast(40)
@given(valid_param_files(), st.data())
def test_generated_insert_and_remove_touch_only_their_line(case, data):
    raw, expected, final_newline, style = case
    model = parse_param(raw).model
    text = raw.decode()
    lines = model.lines
    assert "".join(lines) == text
    after = data.draw(st.integers(min_value=2, max_value=len(lines)), label="after")
    new_line = "Fresh   fresh_layer 0 1 fresh_blob_zz 0=1"
    new = model.with_line_inserted(after, new_line)
    eol = model.eol
    assert eol in ("\n", "\r\n", "\r") and (style == "mixed" or eol == style)
    prev = lines[after - 1]
    body = prev.rstrip("\r\n")
    if prev != body:  # the new line takes the ending of the line before it
        want = "".join(lines[:after]) + new_line + prev[len(body):] + "".join(lines[after:])
    else:  # inserted after a last line without newline: the file still ends without one
        want = "".join(lines[:after - 1]) + body + eol + new_line
    assert new.text() == want
    assert new.layer_named("fresh_layer") is not None
    if prev != body:
        assert len(new.lines) == len(lines) + 1
        fresh_line = new.layer_named("fresh_layer").line
        assert fresh_line == after + 1
        assert new.with_line_removed(fresh_line).text() == text
    # the header edit touches only the digits of line 2
    bumped = model.with_header(model.layer_count + 1, model.blob_count + 1)
    old_header = lines[1]
    new_header = bumped.lines[1]
    assert bumped.lines[2:] == lines[2:] and bumped.lines[0] == lines[0]
    assert re.sub(r"\d+", "#", new_header) == re.sub(r"\d+", "#", old_header)
    assert new_header.split() == [str(model.layer_count + 1), str(model.blob_count + 1)]


# ---------------------------------------------------------------------------
# 6. Structured access on a hand-written graph
# ---------------------------------------------------------------------------

GRAPH = """7767517
9 11
Input            in0              0 1 in0 0=80 1=39
Input            in1              0 1 in1
Split            splitncnn_0      1 2 in0 a b
BinaryOp         add_0            2 1 a in1 c 0=0
InnerProduct     linear_0         1 1 c d 0=512 1=1 2=262144 0=256 -23310=3,1,2.500000e-01,3
ReLU             relu_0           1 1 b e 0=1.000000e-05 1=1e-3 2=5E2
Split            splitncnn_0      1 2 e f g
MemoryData       pe               0 1 h 0=4 5=abc 6="x y"
Concat           cat_0            2 1 f h i 16=1,2,3
"""


@pytest.fixture
def graph() -> ParamFile:
    result = parse_param(GRAPH)
    assert errors(result) == [], result.issues
    return result.model


def test_graph_layers_of_type(graph):
    assert [lay.name for lay in graph.layers_of_type("Input")] == ["in0", "in1"]
    assert [lay.name for lay in graph.layers_of_type("Split", "ReLU")] == ["splitncnn_0", "relu_0", "splitncnn_0"]
    assert graph.layers_of_type("Convolution") == []
    assert graph.layer_types() == {"Input": 2, "Split": 2, "BinaryOp": 1, "InnerProduct": 1, "ReLU": 1,
                                   "MemoryData": 1, "Concat": 1}


def test_graph_layer_named(graph):
    lin = graph.layer_named("linear_0")
    assert (lin.type, lin.bottoms, lin.tops, lin.line, lin.index) == ("InnerProduct", ("c",), ("d",), 7, 4)
    assert graph.layer_named("splitncnn_0").tops == ("a", "b")  # the first of a duplicated name
    assert graph.layer_named("nope") is None


def test_graph_inputs_outputs_and_blobs(graph):
    assert graph.input_names == ["in0", "in1"]
    assert graph.output_names == ["d", "g", "i"]
    assert graph.blob_names == ["in0", "in1", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    assert graph.counted_blobs() == 11
    assert (graph.layer_count, graph.blob_count) == (9, 11)


def test_graph_blob_count_error():
    # a header of 10 blobs is one short of the 11 slots ncnn fills
    result = parse_param(GRAPH.replace("9 11", "9 10"))
    _assert_error(result, 2, "10 blobs", "define 11")
    assert [e.line for e in errors(result)] == [2]


def test_graph_param_access(graph):
    lin = graph.layer_named("linear_0")
    assert lin.get(0) == 256  # duplicate key: the last one wins
    assert lin.param(0).raw == "256" and lin.param(0).kind == "int"
    assert lin.get(1) == 1 and lin.get(2) == 262144
    arr = lin.param(10)
    assert (arr.key, arr.kind, arr.value, arr.old_style, arr.text) == (
        "-23310", "array", (1, 0.25, 3), True, "-23310=3,1,2.500000e-01,3")
    assert lin.get(7) is None and lin.get(7, "dflt") == "dflt" and lin.param(7) is None
    relu = graph.layer_named("relu_0")
    assert relu.param(0).kind == "float" and relu.get(0) == pytest.approx(1e-5)
    assert (relu.param(1).kind, relu.get(1), relu.param(2).kind, relu.get(2)) == ("float", 0.001, "float", 500.0)
    pe = graph.layer_named("pe")
    assert pe.get(5) == "abc" and pe.param(5).kind == "string"
    assert pe.get(6) == "x y" and pe.param(6).raw == '"x y"'
    cat = graph.layer_named("cat_0")
    assert cat.param(16).kind == "array" and cat.get(16) == (1, 2, 3) and not cat.param(16).old_style
    assert graph.layer_named("in0").get(0) == 80


def test_graph_duplicate_key_warning(graph):
    dup = [w for w in graph.warnings if "given twice" in w.message]
    assert len(dup) == 1
    assert dup[0].line == 7 and "key 0" in dup[0].message and "linear_0" in dup[0].message


def test_graph_dangling_and_double_blobs_are_warnings():
    text = "7767517\n3 4\nInput in0 0 1 in0\nReLU r0 1 1 missing x\nReLU r1 1 1 in0 x\n"
    result = parse_param(text)
    assert errors(result) == []
    msgs = {(w.line, w.message.split(" ", 1)[0]) for w in warnings(result)}
    assert any(w.line == 4 and "'missing'" in w.message for w in warnings(result)), msgs
    assert any(w.line == 5 and "produced twice" in w.message for w in warnings(result)), msgs
