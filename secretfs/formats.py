"""Import and export formats as pure logic: dotenv, JSON, Kubernetes Secret manifests.

`parse(fmt, data)` turns a file's bytes into `Entry`s (a valid secret name, the exact
value bytes, the line it came from) and `Problem`s (a line and what is wrong there);
`render(fmt, values)` turns names and values into a file's bytes. Nothing here touches
the store. No message built here contains a value, nor a name that is not a valid
secret name (a mis-parsed line may hold part of a value where a name should be).

The dotenv grammar is our own, small and documented in docs/import-export.md:
python-dotenv has no writer that stays in memory (``set_key`` rewrites the file through
a plaintext temporary file and drops ``\\r``), and its reader logs and skips a bad line
instead of reporting it. Files we write are read back identically by python-dotenv
(``interpolate=False``); tests/test_formats.py checks that.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from secretfs.errors import UsageError
from secretfs.refs import name_problem

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "Entry",
    "Format",
    "FormatError",
    "Parsed",
    "Problem",
    "dotenv_quote",
    "format_for_path",
    "parse",
    "parse_dotenv",
    "parse_json",
    "parse_k8s",
    "render",
    "render_dotenv",
    "render_json",
    "render_k8s",
]

Format = Literal["dotenv", "json", "k8s"]
IMPORT_FORMATS: tuple[Format, ...] = ("dotenv", "json", "k8s")
EXPORT_FORMATS: tuple[Format, ...] = ("dotenv", "json", "k8s")

#: How many problems an error message lists before "... and N more".
MAX_LISTED_PROBLEMS = 50

_SUFFIXES: dict[str, Format] = {
    ".env": "dotenv",
    ".json": "json",
    ".yaml": "k8s",
    ".yml": "k8s",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One secret read from a file: `name` is a valid secret name."""

    name: str
    value: bytes = field(repr=False)
    line: int


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong at one line (`line` None: not tied to a line, as in export)."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Parsed:
    entries: list[Entry]
    problems: list[Problem]


class FormatError(UsageError):
    """The input (or an export) has problems; `problems` lists each one."""

    def __init__(self, problems: list[Problem], summary: str) -> None:
        self.problems = problems
        shown = [f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            shown.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join([f"{summary}:", *shown]))


def format_for_path(path: str) -> Format | None:
    """The format a file name suggests (`.env`, `.json`, `.yaml`/`.yml`), if any."""
    lower = path.lower()
    if lower.endswith(".env") or lower.rsplit("/", 1)[-1].startswith(".env"):
        return "dotenv"
    for suffix, fmt in _SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    return None


def parse(fmt: Format, data: bytes) -> Parsed:
    """Parse a whole file; FormatError if it cannot be read at all (encoding, syntax)."""
    text = _decode(data)
    if fmt == "dotenv":
        return parse_dotenv(text)
    if fmt == "json":
        return parse_json(text)
    if fmt == "k8s":
        return parse_k8s(text)
    raise UsageError(f"unknown format {fmt!r}: expected one of {', '.join(IMPORT_FORMATS)}")


def render(fmt: Format, values: Mapping[str, bytes], *, k8s_name: str = "secretfs") -> bytes:
    """A whole file holding `values` (in their order); FormatError if one cannot be held."""
    if fmt == "dotenv":
        return render_dotenv(values)
    if fmt == "json":
        return render_json(values)
    if fmt == "k8s":
        return render_k8s(values, k8s_name)
    raise UsageError(f"unknown format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FormatError(
            [Problem(line, "not valid UTF-8 text (the input must be UTF-8)")],
            "cannot read the input, nothing was imported",
        ) from None
    return text.removeprefix("\ufeff")


@dataclass(slots=True)
class _Item:
    """A name/value pair as a parser found it, before the name is checked."""

    line: int
    key: str | None  # None: the line has no name/value shape at all
    value: bytes | None  # None when `problem` says why there is no value
    problem: str | None = None


def _label(key: str) -> str:
    """The key as an error message may show it: quoted only if it is a valid name."""
    return repr(key) if name_problem(key) is None else "this name"


def _collect(items: Iterable[_Item]) -> Parsed:
    """Check names and duplicates; keep the first of a repeated name."""
    entries: list[Entry] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for item in items:
        if item.key is None:
            problems.append(Problem(item.line, item.problem or "not a NAME=value line"))
            continue
        bad_name = name_problem(item.key)
        if bad_name is not None:
            problems.append(Problem(item.line, f"invalid secret name: {bad_name}"))
        elif item.key in seen:
            problems.append(
                Problem(
                    item.line,
                    f"{item.key!r} appears again (first on line {seen[item.key]});"
                    " each name may appear once",
                )
            )
        elif item.problem is not None or item.value is None:
            seen[item.key] = item.line
            problems.append(Problem(item.line, item.problem or "no value"))
        else:
            seen[item.key] = item.line
            entries.append(Entry(item.key, item.value, item.line))
    problems.sort(key=lambda p: p.line or 0)
    return Parsed(entries, problems)


# --------------------------------------------------------------------------- dotenv

_BLANKS = " \t"
_DOUBLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_ESCAPE_OF = {
    "\\": "\\\\",
    '"': '\\"',
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_BARE_VALUE = re.compile(r"[A-Za-z0-9_./:@%+,=-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _DotenvReader:
    """One pass over the text; `line` is the line number at `pos`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def skip_blanks(self) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _BLANKS:
            self.pos += 1
        return self.pos - start

    def at_line_end(self) -> bool:
        rest = self.text[self.pos : self.pos + 2]
        return rest == "" or rest[0] == "\n" or rest == "\r\n" or rest == "\r"

    def skip_line(self) -> None:
        """Move past the end of the current physical line."""
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1
        self.line += 1

    def advance_to(self, pos: int) -> None:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos

    def items(self) -> Iterable[_Item]:
        while self.pos < len(self.text):
            self.skip_blanks()
            if self.at_line_end() or self.text[self.pos] == "#":
                self.skip_line()
                continue
            yield self.assignment()

    def assignment(self) -> _Item:
        line = self.line
        text = self.text
        if text.startswith("export", self.pos) and text[self.pos + 6 : self.pos + 7] in (
            " ",
            "\t",
        ):
            start = self.pos
            self.pos += 6
            self.skip_blanks()
            if self.at_line_end() or text[self.pos] == "=":  # a name that is "export"
                self.pos = start
        start = self.pos
        while self.pos < len(text) and text[self.pos] not in " \t\r\n=":
            self.pos += 1
        key = text[start : self.pos]
        self.skip_blanks()
        if text[self.pos : self.pos + 1] != "=":
            self.skip_line()
            return _Item(line, None, None, "missing '='")
        if not key:
            self.skip_line()
            return _Item(line, None, None, "missing name before '='")
        self.pos += 1
        blanks = self.skip_blanks()
        quote = text[self.pos : self.pos + 1]
        if quote in ("'", '"'):
            return self.quoted(line, key, quote)
        end = text.find("\n", self.pos)
        end = len(text) if end < 0 else end
        raw = text[self.pos : end]
        cut = _comment_start(raw, blanks > 0)
        value = (raw if cut < 0 else raw[:cut]).rstrip(" \t\r")
        self.skip_line()
        return _Item(line, key, value.encode("utf-8"))

    def quoted(self, line: int, key: str, quote: str) -> _Item:
        text = self.text
        start = self.pos + 1
        if quote == "'":
            close = text.find("'", start)
            value = "" if close < 0 else text[start:close]
        else:
            close, value = _double_quoted(text, start)
        if close < 0:
            self.advance_to(len(text))
            kind = "single" if quote == "'" else "double"
            return _Item(line, key, None, f"unterminated {kind}-quoted value (no closing {quote})")
        self.advance_to(close + 1)
        self.skip_blanks()
        problem = None
        if not self.at_line_end() and text[self.pos] != "#":
            problem = f"unexpected text after the closing {quote} (only a # comment may follow)"
        self.skip_line()
        return _Item(line, key, None if problem else value.encode("utf-8"), problem)


def _comment_start(raw: str, after_blank: bool) -> int:
    """Where a ` #` comment starts in an unquoted value (a `#` after a blank), or -1."""
    for i, char in enumerate(raw):
        if char == "#" and (raw[i - 1] in _BLANKS if i else after_blank):
            return i
    return -1


def _double_quoted(text: str, start: int) -> tuple[int, str]:
    """The closing quote's index (-1 if none) and the unescaped content."""
    out: list[str] = []
    i = start
    while i < len(text):
        char = text[i]
        if char == '"':
            return i, "".join(out)
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_DOUBLE_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    return -1, ""


def parse_dotenv(text: str) -> Parsed:
    """Read `NAME=value` lines (grammar in docs/import-export.md); never interpolates `$`."""
    return _collect(_DotenvReader(text.removeprefix("\ufeff")).items())


def dotenv_quote(value: str) -> str:
    """The value as dotenv text that reads back exactly: bare, '…' or "…" with escapes."""
    if _BARE_VALUE.fullmatch(value) or value == "":
        return value
    if "'" not in value and "\\" not in value and not _CONTROL.search(value):
        return f"'{value}'"
    return '"' + "".join(_ESCAPE_OF.get(c, c) for c in value) + '"'


def render_dotenv(values: Mapping[str, bytes]) -> bytes:
    """`NAME=value` lines; FormatError naming each value that is not UTF-8 or holds NUL."""
    lines: list[str] = []
    problems: list[Problem] = []
    for name, value in values.items():
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(
                Problem(
                    None,
                    f"{name}: the value is not UTF-8 text, which dotenv cannot hold"
                    " (use --format json, which writes it as base64)",
                )
            )
            continue
        if "\x00" in text:
            problems.append(
                Problem(
                    None,
                    f"{name}: the value holds a NUL byte, which no environment variable"
                    " can hold (use --format json)",
                )
            )
            continue
        lines.append(f"{name}={dotenv_quote(text)}\n")
    if problems:
        raise FormatError(problems, "cannot write these values as dotenv, nothing was exported")
    return "".join(lines).encode("utf-8")


# --------------------------------------------------------------------------- JSON

BASE64_KEY = "base64"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


class _Lines:
    """Line numbers of offsets, counted forward (offsets must not decrease)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def parse_json(text: str) -> Parsed:
    """A JSON object of names to values: strings, numbers, booleans, {"base64": "…"}."""
    try:
        json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FormatError(
            [Problem(exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")],
            "cannot read the input, nothing was imported",
        ) from None
    except _NotJson as exc:
        raise FormatError(
            [Problem(None, f"invalid JSON: {exc}")], "cannot read the input"
        ) from None
    # Valid JSON: walk the top-level object ourselves to know each key's line.
    decoder = json.JSONDecoder()
    lines = _Lines(text)
    pos = _skip_ws(text, 0)
    if text[pos] != "{":
        raise FormatError(
            [Problem(lines.at(pos), 'expected a JSON object: {"NAME": "value", ...}')],
            "cannot read the input, nothing was imported",
        )
    items: list[_Item] = []
    pos = _skip_ws(text, pos + 1)
    while text[pos] != "}":
        line = lines.at(pos)
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _skip_ws(text, pos)
        pos = _skip_ws(text, pos + 1)  # past ':'
        start = pos
        value, pos = decoder.raw_decode(text, pos)
        items.append(_json_item(line, key, value, text[start:pos]))
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return _collect(items)


def _json_item(line: int, key: str, value: Any, source: str) -> _Item:
    label = _label(key)
    allowed = (
        'a value must be a string, a number, true/false, or {"base64": "..."} for bytes'
        " (to store JSON, put its text in a string)"
    )
    if isinstance(value, str):
        try:
            return _Item(line, key, value.encode("utf-8"))
        except UnicodeEncodeError:
            return _Item(
                line,
                key,
                None,
                f"the value of {label} is not valid Unicode (a lone \\ud800-\\udfff escape);"
                ' give bytes as {"base64": "..."}',
            )
    if isinstance(value, bool):
        return _Item(line, key, b"true" if value else b"false")
    if isinstance(value, int | float):
        return _Item(line, key, source.encode("utf-8"))  # exactly as written
    if isinstance(value, dict) and list(value) == [BASE64_KEY]:
        encoded = value[BASE64_KEY]
        if isinstance(encoded, str):
            try:
                return _Item(line, key, base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                pass
        return _Item(line, key, None, f"the value of {label} is not valid base64")
    kind = {dict: "an object", list: "an array", type(None): "null"}.get(type(value), "other")
    return _Item(line, key, None, f"the value of {label} is {kind}; {allowed}")


def render_json(values: Mapping[str, bytes]) -> bytes:
    """A JSON object: UTF-8 values as strings, any other bytes as {"base64": "…"}."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = {BASE64_KEY: base64.b64encode(value).decode("ascii")}
    return (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- Kubernetes

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def parse_k8s(text: str) -> Parsed:
    """One or more `kind: Secret` documents: `data:` (base64) and `stringData:` (text).

    As in Kubernetes, a key in `stringData` replaces the same key in `data`.
    """
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        # Only the problem, never `str(exc)`: that quotes the offending line of input.
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise FormatError(
            [Problem(line, f"invalid YAML: {exc.problem or 'syntax error'}")],
            "cannot read the input, nothing was imported",
        ) from None
    except yaml.YAMLError:
        raise FormatError(
            [Problem(None, "invalid YAML")], "cannot read the input, nothing was imported"
        ) from None
    items: list[_Item] = []
    fatal: list[Problem] = []
    found = False
    for number, doc in enumerate(documents, 1):
        if doc is None or (isinstance(doc, yaml.ScalarNode) and doc.tag == _NULL_TAG):
            continue
        problem = _k8s_document_problem(doc)
        if problem is not None:
            fatal.append(Problem(doc.start_mark.line + 1, f"document {number}: {problem}"))
            continue
        found = True
        assert isinstance(doc, yaml.MappingNode)
        sections = {k.value: v for k, v in doc.value if isinstance(k, yaml.ScalarNode)}
        data = _k8s_section(sections.get("data"), "data", items)
        string_data = _k8s_section(sections.get("stringData"), "stringData", items)
        overridden = {key for key, _ in string_data} & {key for key, _ in data}
        for key, item in data:
            if key not in overridden:
                items.append(item)
        items.extend(item for _, item in string_data)
    if fatal:
        raise FormatError(fatal, "not a Kubernetes Secret manifest, nothing was imported")
    if not found:
        raise FormatError([Problem(None, "no kind: Secret document")], "nothing was imported")
    return _collect(sorted(items, key=lambda i: i.line))


def _k8s_document_problem(doc: yaml.Node) -> str | None:
    if not isinstance(doc, yaml.MappingNode):
        return "expected a mapping (apiVersion: v1, kind: Secret, data: ...)"
    fields = {
        k.value: v.value
        for k, v in doc.value
        if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)
    }
    if fields.get("kind") != "Secret":
        return "kind must be Secret"
    if fields.get("apiVersion") != "v1":
        return "apiVersion must be v1"
    return None


def _k8s_section(
    node: yaml.Node | None, section: str, items: list[_Item]
) -> list[tuple[str, _Item]]:
    """The (key, item) pairs of `data` or `stringData`; duplicates within it as items."""
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
        return []
    if not isinstance(node, yaml.MappingNode):
        items.append(_Item(node.start_mark.line + 1, None, None, f"{section} must be a mapping"))
        return []
    found: list[tuple[str, _Item]] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            items.append(_Item(line, None, None, f"a key in {section} must be text"))
            continue
        key = key_node.value
        item = _k8s_item(line, key, value_node, section)
        if key in seen:
            items.append(item)  # reported as a repeated name by _collect
        else:
            seen.add(key)
            found.append((key, item))
    return found


def _k8s_item(line: int, key: str, node: yaml.Node, section: str) -> _Item:
    label = _label(key)
    if not isinstance(node, yaml.ScalarNode):
        return _Item(line, key, None, f"{section}: the value of {label} must be a string")
    if node.tag == _NULL_TAG:
        return _Item(
            line, key, None, f"{section}: {label} has no value (write '' for an empty value)"
        )
    if node.tag != _STR_TAG:
        kind = node.tag.rsplit(":", 1)[-1]
        return _Item(
            line,
            key,
            None,
            f"{section}: the value of {label} is a YAML {kind}, not a string (quote it)",
        )
    text = str(node.value)
    if section == "stringData":
        return _Item(line, key, text.encode("utf-8"))
    try:
        # Like Kubernetes (Go's base64): line breaks are ignored, nothing else is.
        return _Item(
            line, key, base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
        )
    except (binascii.Error, ValueError):
        return _Item(line, key, None, f"data: the value of {label} is not valid base64")


def render_k8s(values: Mapping[str, bytes], name: str = "secretfs") -> bytes:
    """A `kind: Secret` manifest named `name` with every value base64 in `data:`."""
    if len(name) > 253 or not _K8S_NAME.fullmatch(name):
        raise UsageError(
            "a Kubernetes Secret name is lowercase letters, digits, '-' and '.', starting and"
            " ending with a letter or digit, at most 253 characters"
        )
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in values.items()},
    }
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False).encode("utf-8")
