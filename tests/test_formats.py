"""secretfs.formats: the dotenv grammar, JSON and Kubernetes Secret import, exact round-trips."""

from __future__ import annotations

import base64
import io
import json

import dotenv
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from secretfs import formats
from secretfs.formats import FormatError, parse_dotenv, parse_json, parse_k8s

# --------------------------------------------------------------------------- strategies

names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,12}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda n: not n.endswith(".d")
)
# Text that leans on what breaks dotenv writers: quotes, '=', '#', newlines, CR,
# backslashes, blanks at either end, '$', an `export ` prefix, unicode.
tricky = st.sampled_from(
    ["'", '"', "=", "#", " #", "\n", "\r", "\r\n", "\\", "\\n", " ", "\t", "$HOME", "${X}",
     "`", "export ", "ü", "€", "😀", "\u2028", "\x0b", "\x1b", "\x7f", "=#'\"\\"]
)  # fmt: skip
text_values = st.lists(
    st.one_of(tricky, st.text(st.characters(exclude_categories=("Cs",)), max_size=8)),
    max_size=8,
).map("".join)
dotenv_values = text_values.filter(lambda v: "\x00" not in v)


def as_dict(parsed: formats.Parsed) -> dict[str, bytes]:
    assert parsed.problems == [], [str(p) for p in parsed.problems]
    return {e.name: e.value for e in parsed.entries}


def problems(parsed: formats.Parsed) -> list[str]:
    return [str(p) for p in parsed.problems]


# --------------------------------------------------------------------------- round-trips


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, dotenv_values, max_size=8))
def test_dotenv_round_trips_every_text_value(values: dict[str, str]) -> None:
    encoded = {k: v.encode() for k, v in values.items()}
    out = formats.render_dotenv(encoded)
    assert as_dict(parse_dotenv(out.decode())) == encoded


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, dotenv_values, max_size=8))
def test_python_dotenv_reads_our_dotenv_output_the_same(values: dict[str, str]) -> None:
    out = formats.render_dotenv({k: v.encode() for k, v in values.items()}).decode()
    theirs = dotenv.dotenv_values(stream=io.StringIO(out), interpolate=False)
    assert dict(theirs) == values


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, st.one_of(text_values.map(str.encode), st.binary()), max_size=8))
def test_json_round_trips_every_value_bytes_included(values: dict[str, bytes]) -> None:
    out = formats.render_json(values)
    assert as_dict(formats.parse("json", out)) == values


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, st.one_of(text_values.map(str.encode), st.binary()), max_size=8))
def test_k8s_round_trips_every_value_bytes_included(values: dict[str, bytes]) -> None:
    out = formats.render_k8s(values, "app-secrets")
    assert as_dict(formats.parse("k8s", out)) == values


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, text_values.filter(lambda v: "\x00" not in v), max_size=6))
def test_k8s_string_data_reads_any_text(values: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "stringData": values}
    text = yaml.safe_dump(manifest)  # non-ASCII escaped: raw NEL is a YAML line break
    assert as_dict(parse_k8s(text)) == {k: v.encode() for k, v in values.items()}


def test_json_writes_text_as_strings_and_other_bytes_as_base64() -> None:
    out = json.loads(formats.render_json({"t": "ü\n".encode(), "b": b"\xff\x00", "e": b""}))
    assert out == {"t": "ü\n", "b": {"base64": "/wA="}, "e": ""}


# --------------------------------------------------------------------------- dotenv grammar


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("A=plain", "plain"),
        ("A=", ""),
        ("A=''", ""),
        ('A=""', ""),
        ("export A=1", "1"),
        ("export\tA=1", "1"),
        ("  A  =  spaced value  ", "spaced value"),
        ("A=two words # comment", "two words"),
        ("A=a#b", "a#b"),
        ("A=#b", "#b"),
        ("A= #only a comment", ""),
        ("A=x\r", "x"),
        ("A='single # not a comment'  # comment", "single # not a comment"),
        ("A='$HOME \\n \\\\ \"'", '$HOME \\n \\\\ "'),
        ('A="a\\nb\\tc\\rd"', "a\nb\tc\rd"),
        ('A="q\\"q \\\\ \\\' \\a\\b\\f\\v"', "q\"q \\ ' \a\b\f\v"),
        ('A="\\x \\$ \\u00e9"', "\\x \\$ \\u00e9"),
        ('A="$HOME ${X}"', "$HOME ${X}"),
        ("A=a=b=c", "a=b=c"),
        ("A=ünïcødé 😀", "ünïcødé 😀"),
        ("A=it's", "it's"),
        ("\ufeffA=bom", "bom"),
    ],
)
def test_dotenv_grammar(line: str, value: str) -> None:
    assert as_dict(parse_dotenv(line + "\n")) == {"A": value.encode()}
    assert as_dict(parse_dotenv(line)) == {"A": value.encode()}  # no final newline


def test_dotenv_multiline_quotes_and_line_numbers() -> None:
    text = (
        "# a comment\n"
        "\n"
        "A='one\n"
        "two'\n"
        'B="three\n'
        'four" # trailing comment\n'
        "export export=x\n"
        "C=last\r\n"
    )
    parsed = parse_dotenv(text)
    assert as_dict(parsed) == {"A": b"one\ntwo", "B": b"three\nfour", "export": b"x", "C": b"last"}
    assert [(e.name, e.line) for e in parsed.entries] == [
        ("A", 3),
        ("B", 5),
        ("export", 7),
        ("C", 8),
    ]


def test_dotenv_errors_name_the_line() -> None:
    text = (
        "A=1\n"  # 1
        "B='two\n"  # 2
        "lines'\n"  # 3
        "just words\n"  # 4
        "=novalue\n"  # 5
        "_X=1\n"  # 6
        "C='x' tail\n"  # 7
        "A=again\n"  # 8
        "export D\n"  # 9
        "E=ok\n"  # 10
        'F="never closed\n'  # 11
        "G=swallowed\n"  # 12
    )
    parsed = parse_dotenv(text)
    assert [e.name for e in parsed.entries] == ["A", "B", "E"]
    got = problems(parsed)
    assert got[0] == "line 4: missing '='"
    assert got[1] == "line 5: missing name before '='"
    assert got[2].startswith("line 6: invalid secret name: it starts with '_'; names may use")
    assert got[3] == "line 7: unexpected text after the closing ' (only a # comment may follow)"
    assert got[4] == "line 8: 'A' appears again (first on line 1); each name may appear once"
    assert got[5] == "line 9: missing '='"
    assert got[6] == 'line 11: unterminated double-quoted value (no closing ")'
    assert len(got) == 7


@pytest.mark.parametrize(
    "line",
    [
        "MIIEvQIBADANBg+kqhki/G9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Vb==",  # base64 with '='
        "hunter2 s3cr3t",  # no '='
        "p@ss word=x",
        "'quoted'=x",
    ],
)
def test_dotenv_errors_never_quote_what_may_be_a_value(line: str) -> None:
    parsed = parse_dotenv(f"A=1\n{line}\n")
    assert len(parsed.problems) == 1
    message = str(parsed.problems[0])
    assert message.startswith("line 2: ")
    for fragment in ("MIIE", "hunter2", "s3cr3t", "p@ss", "quoted"):
        assert fragment not in message


def test_dotenv_writer_quoting() -> None:
    out = formats.render_dotenv(
        {
            "bare": b"abc-1.2_3/x:y@z%+,=",
            "empty": b"",
            "space": b" lead and trail ",
            "hash": b"a#b",
            "dollar": b"$HOME",
            "quote": b"it's",
            "newline": b"a\nb",
            "backslash": b"C:\\dir",
            "dq": b'say "hi"',
        }
    ).decode()
    assert out.splitlines() == [
        "bare=abc-1.2_3/x:y@z%+,=",
        "empty=",
        "space=' lead and trail '",
        "hash='a#b'",
        "dollar='$HOME'",
        'quote="it\'s"',
        'newline="a\\nb"',
        'backslash="C:\\\\dir"',
        "dq='say \"hi\"'",
    ]


def test_dotenv_writer_refuses_bytes_and_nul_per_key_without_values() -> None:
    with pytest.raises(FormatError) as err:
        formats.render_dotenv({"ok": b"fine", "bin": b"\xffSECRET", "nul": b"a\x00SECRET"})
    message = str(err.value)
    assert "bin: the value is not UTF-8 text" in message
    assert "nul: the value holds a NUL byte" in message
    assert "--format json" in message
    assert "SECRET" not in message
    assert "ok" not in message.split(":", 1)[1].split()


def test_input_must_be_utf8_and_the_error_names_the_line() -> None:
    with pytest.raises(FormatError) as err:
        formats.parse("dotenv", b"A=1\nB=2\nC=\xff\xfe\n")
    assert "line 3: not valid UTF-8" in str(err.value)


def test_empty_dotenv_is_nothing_to_import() -> None:
    assert as_dict(formats.parse("dotenv", b"")) == {}
    assert as_dict(formats.parse("dotenv", b"# only comments\n\n")) == {}


# --------------------------------------------------------------------------- JSON


def test_json_values_and_their_lines() -> None:
    text = (
        "{\n"
        '  "text": "a\\nb \\u00fc",\n'
        '  "int": 5432,\n'
        '  "float": 1.50,\n'
        '  "exp": 1E+3,\n'
        '  "yes": true,\n'
        '  "no": false,\n'
        '  "bytes": {"base64": "/wA="},\n'
        '  "empty": ""\n'
        "}\n"
    )
    parsed = parse_json(text)
    assert as_dict(parsed) == {
        "text": "a\nb ü".encode(),
        "int": b"5432",
        "float": b"1.50",  # numbers exactly as written
        "exp": b"1E+3",
        "yes": b"true",
        "no": b"false",
        "bytes": b"\xff\x00",
        "empty": b"",
    }
    assert [e.line for e in parsed.entries] == [2, 3, 4, 5, 6, 7, 8, 9]


def test_json_per_key_errors_with_lines() -> None:
    text = (
        "{\n"
        '  "ok": "x",\n'  # 2
        '  "nul": null,\n'  # 3
        '  "arr": [1],\n'  # 4
        '  "obj": {"a": 1},\n'  # 5
        '  "b64": {"base64": "not base64!"},\n'  # 6
        '  "_bad": "SECRETVALUE",\n'  # 7
        '  "ok": "again",\n'  # 8
        '  "lone": "\\ud800"\n'  # 9
        "}"
    )
    parsed = parse_json(text)
    assert [e.name for e in parsed.entries] == ["ok"]
    got = problems(parsed)
    assert got[0].startswith("line 3: the value of 'nul' is null; a value must be a string")
    assert got[1].startswith("line 4: the value of 'arr' is an array")
    assert got[2].startswith("line 5: the value of 'obj' is an object")
    assert got[3] == "line 6: the value of 'b64' is not valid base64"
    assert got[4].startswith("line 7: invalid secret name: it starts with '_'")
    assert got[5].startswith("line 8: 'ok' appears again (first on line 2)")
    assert got[6].startswith("line 9: the value of 'lone' is not valid Unicode")
    assert not any("SECRETVALUE" in p for p in got)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{\n  "a": "x",\n  "b": 1,,\n}', "line 3: invalid JSON"),
        ('["a"]', "line 1: expected a JSON object"),
        ("", "line 1: invalid JSON"),
        ('{"a": NaN}', "NaN is not JSON"),
    ],
)
def test_json_syntax_errors(text: str, expected: str) -> None:
    with pytest.raises(FormatError) as err:
        parse_json(text)
    assert expected in str(err.value)


# --------------------------------------------------------------------------- Kubernetes


MANIFEST = """\
apiVersion: v1
kind: Secret
metadata:
  name: app
  namespace: prod
type: Opaque
data:
  username: YWRtaW4=
  both: ZnJvbS1kYXRh
  wrapped: |
    aGVs
    bG8=
stringData:
  password: "p@ss: 'w#rd'\\n"
  both: from-stringData
---
apiVersion: v1
kind: Secret
stringData:
  second: doc
"""


def test_k8s_data_and_string_data() -> None:
    parsed = parse_k8s(MANIFEST)
    assert as_dict(parsed) == {
        "username": b"admin",
        "both": b"from-stringData",  # as in Kubernetes: stringData wins
        "wrapped": b"hello",
        "password": b"p@ss: 'w#rd'\n",
        "second": b"doc",
    }
    assert {e.name: e.line for e in parsed.entries}["second"] == 20


def test_k8s_per_key_errors_with_lines() -> None:
    text = (
        "apiVersion: v1\n"
        "kind: Secret\n"
        "data:\n"
        "  ok: b2s=\n"  # 4
        "  bad: '%%%'\n"  # 5
        "  .dockerconfigjson: e30=\n"  # 6
        "stringData:\n"
        "  port: 5432\n"  # 8
        "  empty:\n"  # 9
        "  list: [a]\n"  # 10
    )
    parsed = parse_k8s(text)
    assert [e.name for e in parsed.entries] == ["ok"]
    got = problems(parsed)
    assert got[0] == "line 5: data: the value of 'bad' is not valid base64"
    assert got[1].startswith("line 6: invalid secret name: it contains '.'") or got[1].startswith(
        "line 6: invalid secret name: it starts with '.'"
    )
    assert (
        got[2] == "line 8: stringData: the value of 'port' is a YAML int, not a string (quote it)"
    )
    assert got[3] == "line 9: stringData: 'empty' has no value (write '' for an empty value)"
    assert got[4] == "line 10: stringData: the value of 'list' must be a string"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: v1\nkind: ConfigMap\ndata: {}\n", "line 1: document 1: kind must be Secret"),
        ("apiVersion: v2\nkind: Secret\n", "apiVersion must be v1"),
        ("kind: Secret\ndata:\n  a: [\n    SECRETVALUE\n", "invalid YAML"),
        ("", "no kind: Secret document"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_k8s_document_errors(text: str, expected: str) -> None:
    with pytest.raises(FormatError) as err:
        parse_k8s(text)
    assert expected in str(err.value)
    assert "SECRETVALUE" not in str(err.value)


def test_k8s_export_names_the_secret_and_checks_the_name() -> None:
    doc = yaml.safe_load(formats.render_k8s({"a": b"1"}, "my-app.v2"))
    assert doc["metadata"] == {"name": "my-app.v2"}
    assert doc["data"] == {"a": base64.b64encode(b"1").decode()}
    with pytest.raises(formats.UsageError):
        formats.render_k8s({}, "Not_Valid")


def test_format_for_path() -> None:
    assert formats.format_for_path("prod.env") == "dotenv"
    assert formats.format_for_path("dir/.env") == "dotenv"
    assert formats.format_for_path(".env.local") == "dotenv"
    assert formats.format_for_path("s.JSON") == "json"
    assert formats.format_for_path("secret.yaml") == "k8s"
    assert formats.format_for_path("secret.yml") == "k8s"
    assert formats.format_for_path("secrets.txt") is None
