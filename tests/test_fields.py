"""JSON secrets as field trees: parse, children, resolve, render, extract (SPEC §3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretfs import fields
from secretfs.errors import NotFoundError, SecretfsError
from secretfs.refs import is_valid_field_key

DOC = (
    b'{"user": "admin", "password": "p\\u00e4ss w\\"rd", "port": 5432, "price": 2.50,'
    b' "big": 1e3, "exact": 12345678901234567890123, "neg": -0, "frac": 1.0E-7,'
    b' "on": true, "off": false, "none": null,'
    b' "replicas": [{"host": "a", "weight": 0.10}, {"host": "b", "weight": 1}],'
    b' "matrix": [[1, 2], [], [[3.00]]], "empty": {}, "unicode": "\xe2\x82\xac \xf0\x9f\x94\x91",'
    b' "k\xc3\xa9y": "v"}'
)


def names(node: Any) -> list[str]:
    return [name for name, _ in fields.children(node)]


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    "value",
    [b"{}", b"[]", b' \n{"a": 1}\n', b"[1, 2]", DOC, '{"ü": "ö"}'.encode()],
)
def test_parse_accepts_objects_and_arrays(value: bytes) -> None:
    doc = fields.parse(value)
    assert fields.is_container(doc)
    assert isinstance(doc, type(json.loads(value)))


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"plain text",
        b"42",
        b"2.50",
        b'"a string"',
        b"true",
        b"null",
        b"{",
        b'{"a": 1',
        b'{"a": 1} trailing',
        b"\xff\xfe{",
        b"\x00",
        b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    ],
)
def test_parse_rejects_everything_else(value: bytes) -> None:
    assert fields.parse(value) is None


def test_parse_of_absurd_nesting_is_none_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert fields.parse(deep) is None
    with pytest.raises(NotFoundError):
        fields.extract(deep, ("0",))


def test_deep_but_parseable_nesting_renders() -> None:
    depth = 900
    doc = fields.parse(b"[" * depth + b"]" * depth)
    assert doc is not None
    assert fields.render(doc) == b"[" * depth + b"]" * depth


def test_is_container() -> None:
    doc = fields.parse(DOC)
    assert fields.is_container(doc)
    assert fields.is_container(fields.resolve(doc, ("replicas",)))
    assert fields.is_container(fields.resolve(doc, ("empty",)))
    for leaf in ("user", "port", "on", "none"):
        assert not fields.is_container(fields.resolve(doc, (leaf,)))


# --------------------------------------------------------------------------- children


def test_children_of_an_object_keep_source_order() -> None:
    doc = fields.parse(DOC)
    assert names(doc) == [
        "user",
        "password",
        "port",
        "price",
        "big",
        "exact",
        "neg",
        "frac",
        "on",
        "off",
        "none",
        "replicas",
        "matrix",
        "empty",
        "unicode",
        "kéy",
    ]


def test_children_of_arrays_are_indexes() -> None:
    doc = fields.parse(DOC)
    matrix = fields.resolve(doc, ("matrix",))
    assert names(matrix) == ["0", "1", "2"]
    assert names(fields.resolve(doc, ("matrix", "0"))) == ["0", "1"]
    assert names(fields.resolve(doc, ("matrix", "1"))) == []
    assert names(fields.resolve(doc, ("matrix", "2", "0"))) == ["0"]
    assert names(fields.parse(b"[" + b",".join([b"0"] * 12) + b"]")) == [str(i) for i in range(12)]


def test_children_of_leaves_and_empty_containers() -> None:
    doc = fields.parse(DOC)
    assert names(fields.resolve(doc, ("empty",))) == []
    for leaf in ("user", "port", "on", "none"):
        assert fields.children(fields.resolve(doc, (leaf,))) == []


BAD_KEYS = ["", ".", "..", "a/b", "/", "nul\x00", "x" * 256, "é" * 128, "\ud800"]
GOOD_KEYS = [" ", "...", "a b", "k:v", "@x", "$S:y", "-", "x" * 255, "é" * 127, "\U0001f511"]


def test_children_leave_out_keys_that_cannot_be_file_names() -> None:
    obj = {k: i for i, k in enumerate(BAD_KEYS + GOOD_KEYS)}
    doc = fields.parse(json.dumps(obj).encode())
    assert names(doc) == GOOD_KEYS
    nested = fields.parse(json.dumps({"outer": obj}).encode())
    assert names(fields.resolve(nested, ("outer",))) == GOOD_KEYS


# --------------------------------------------------------------------------- resolve


def test_resolve_walks_objects_and_arrays() -> None:
    doc = fields.parse(DOC)
    assert fields.render(fields.resolve(doc, ("replicas", "1", "host"))) == b"b"
    assert fields.render(fields.resolve(doc, ("matrix", "2", "0", "0"))) == b"3.00"
    assert fields.render(fields.resolve(doc, ("kéy",))) == b"v"
    assert fields.resolve(doc, ()) is doc


@pytest.mark.parametrize(
    "path",
    [
        ("missing",),
        ("user", "deeper"),
        ("replicas", "2"),
        ("replicas", "-1"),
        ("replicas", "01"),
        ("replicas", "+1"),
        ("replicas", " 1"),
        ("replicas", "1.0"),
        ("replicas", "host"),
        ("replicas", "²"),  # str.isdigit() says yes, int() says no
        ("replicas", "\u0661"),  # ARABIC-INDIC DIGIT ONE: not an alias of "1"
        ("replicas", "\uff11"),  # FULLWIDTH DIGIT ONE
        ("replicas", ""),
        ("none", "x"),
        ("empty", "x"),
        ("",),
        (".",),
        ("..",),
    ],
)
def test_resolve_missing_fields_raise_not_found(path: tuple[str, ...]) -> None:
    doc = fields.parse(DOC)
    with pytest.raises(NotFoundError) as info:
        fields.resolve(doc, path)
    assert isinstance(info.value, SecretfsError)


def test_resolve_does_not_reach_keys_left_out_of_children() -> None:
    doc = fields.parse(json.dumps({"": 1, "a/b": 2, ".": 3, "x" * 256: 4}).encode())
    for key in ("", "a/b", ".", "x" * 256):
        with pytest.raises(NotFoundError):
            fields.resolve(doc, (key,))


def test_not_found_message_names_the_path_and_not_the_value() -> None:
    doc = fields.parse(b'{"a": {"b": "hunter2"}}')
    with pytest.raises(NotFoundError) as info:
        fields.resolve(doc, ("a", "c", "d"))
    assert "a/c" in str(info.value)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("user",), b"admin"),
        (("password",), 'päss w"rd'.encode()),
        (("port",), b"5432"),
        (("price",), b"2.50"),
        (("big",), b"1e3"),
        (("exact",), b"12345678901234567890123"),
        (("neg",), b"-0"),
        (("frac",), b"1.0E-7"),
        (("on",), b"true"),
        (("off",), b"false"),
        (("none",), b""),
        (("unicode",), "€ 🔑".encode()),
        (("replicas", "0", "weight"), b"0.10"),
        (("matrix", "2", "0", "0"), b"3.00"),
    ],
)
def test_render_leaves(path: tuple[str, ...], expected: bytes) -> None:
    assert fields.render(fields.resolve(fields.parse(DOC), path)) == expected


def test_render_strings_are_raw() -> None:
    doc = fields.parse(b'{"nl": "a\\nb\\n", "tab": "\\t", "q": "\\"", "bs": "\\\\", "e": ""}')
    assert fields.render(fields.resolve(doc, ("nl",))) == b"a\nb\n"
    assert fields.render(fields.resolve(doc, ("tab",))) == b"\t"
    assert fields.render(fields.resolve(doc, ("q",))) == b'"'
    assert fields.render(fields.resolve(doc, ("bs",))) == b"\\"
    assert fields.render(fields.resolve(doc, ("e",))) == b""


def test_render_special_number_constants_keep_their_text() -> None:
    doc = fields.parse(b"[NaN, Infinity, -Infinity]")
    assert [fields.render(v) for _, v in fields.children(doc)] == [
        b"NaN",
        b"Infinity",
        b"-Infinity",
    ]


def test_render_containers_as_compact_json_keeping_number_text() -> None:
    doc = fields.parse(DOC)
    assert fields.render(fields.resolve(doc, ("replicas",))) == (
        b'[{"host":"a","weight":0.10},{"host":"b","weight":1}]'
    )
    assert fields.render(fields.resolve(doc, ("matrix",))) == b"[[1,2],[],[[3.00]]]"
    assert fields.render(fields.resolve(doc, ("empty",))) == b"{}"
    whole = fields.render(doc)
    assert b": " not in whole
    assert b", " not in whole
    assert b'"price":2.50' in whole
    assert b'"big":1e3' in whole
    assert b'"exact":12345678901234567890123' in whole
    assert b'"on":true,"off":false,"none":null' in whole
    assert b'"unicode":"\xe2\x82\xac \xf0\x9f\x94\x91"' in whole  # UTF-8, not \u escapes
    assert json.loads(whole) == json.loads(DOC)


def test_render_container_keeps_keys_that_have_no_file() -> None:
    obj = {"": 1, "a/b": 2, "ok": {"..": None}}
    doc = fields.parse(json.dumps(obj).encode())
    assert json.loads(fields.render(doc)) == obj


def test_lone_surrogates_render_without_failing() -> None:
    doc = fields.parse(b'{"s": "a\\ud800b", "k\\udc00": 1, "pair": "\\ud83d\\udd11"}')
    assert names(doc) == ["s", "pair"]
    assert fields.render(fields.resolve(doc, ("pair",))) == "🔑".encode()
    raw = fields.render(fields.resolve(doc, ("s",)))
    assert raw.decode("utf-8", "surrogatepass") == "a\ud800b"
    compact = fields.render(doc)
    compact.decode("utf-8")  # still valid UTF-8: the surrogates stay escaped
    assert json.loads(compact) == {"s": "a\ud800b", "k\udc00": 1, "pair": "🔑"}


# --------------------------------------------------------------------------- extract


def test_extract_leaves_and_containers() -> None:
    assert fields.extract(DOC, ("user",)) == b"admin"
    assert fields.extract(DOC, ("price",)) == b"2.50"
    assert fields.extract(DOC, ("none",)) == b""
    assert fields.extract(DOC, ("replicas", "0", "host")) == b"a"
    assert fields.extract(DOC, ("matrix", "0")) == b"[1,2]"
    assert fields.extract(b"[1, [2, 3]]", ("1", "1")) == b"3"
    assert json.loads(fields.extract(DOC, ())) == json.loads(DOC)


def test_extract_missing_field_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        fields.extract(DOC, ("nope",))
    with pytest.raises(NotFoundError):
        fields.extract(DOC, ("replicas", "5", "host"))


@pytest.mark.parametrize("value", [b"hunter2", b"42", b'"str"', b"null", b"", b"{broken"])
def test_extract_from_a_non_json_value_is_not_found(value: bytes) -> None:
    with pytest.raises(NotFoundError) as info:
        fields.extract(value, ("a",))
    assert "not a JSON object or array" in str(info.value)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- property

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
_keys = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(["", ".", "..", "a/b", "n\x00l", "x" * 256, "0", "01"]),
)
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)
_objects = st.dictionaries(_keys, _json, max_size=6)


def _expected(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if value is None:
        return b""
    return json.dumps(value).encode()


def _check(obj: Any, node: Any, path: tuple[str, ...], doc: Any) -> int:
    """Compare the parsed `node` with the Python `obj` it came from; count leaves."""
    entries = fields.children(node)
    if isinstance(obj, dict):
        assert [name for name, _ in entries] == [k for k in obj if is_valid_field_key(k)]
    else:
        assert [name for name, _ in entries] == [str(i) for i in range(len(obj))]
    leaves = 0
    for name, sub in entries:
        original = obj[name] if isinstance(obj, dict) else obj[int(name)]
        here = (*path, name)
        assert fields.resolve(doc, here) is sub
        if isinstance(original, dict | list):
            assert fields.is_container(sub)
            assert json.loads(fields.render(sub)) == original
            leaves += _check(original, sub, here, doc)
        else:
            assert not fields.is_container(sub)
            assert fields.render(sub) == _expected(original)
            leaves += 1
    return leaves


@settings(max_examples=300, deadline=None)
@given(obj=_objects, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 2]))
def test_every_reachable_leaf_renders_as_json_says(
    obj: dict[str, Any], ensure_ascii: bool, indent: int | None
) -> None:
    value = json.dumps(obj, ensure_ascii=ensure_ascii, indent=indent).encode()
    doc = fields.parse(value)
    assert doc is not None
    _check(obj, doc, (), doc)
    assert json.loads(fields.render(doc)) == obj
    assert json.loads(fields.extract(value, ())) == obj
