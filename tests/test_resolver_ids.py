"""Engine IDs and patterns (the cases of docker/secrets-engine's own tests), and the
one-to-one map between secretfs refs and engine IDs."""

from __future__ import annotations

import pytest

from secretfs.refs import parse_ref
from secretfs.resolver.ids import InvalidPattern, id_to_ref, parse_pattern, ref_to_id, valid_id

# x/secrets/pattern_test.go TestParsePattern
VALID_PATTERNS = [
    "foo",
    "foo/bar/baz",
    "*",
    "**",
    "*/bar",
    "foo/*/baz",
    "**/bar",
    "foo/**/baz",
    "foo/*/baz/**/*",
]
INVALID_PATTERNS = [
    "*a*",
    "*a",
    "/foo/bar",
    "foo/bar/",
    "foo//bar",
    "",
    "/",
    "foo/*a*/baz",
    "***",
    "foo bar",
    "foo/#",
]


@pytest.mark.parametrize("text", VALID_PATTERNS)
def test_valid_patterns_parse(text: str) -> None:
    assert str(parse_pattern(text)) == text


@pytest.mark.parametrize("text", INVALID_PATTERNS)
def test_invalid_patterns_are_refused(text: str) -> None:
    with pytest.raises(InvalidPattern, match=r"^invalid pattern$"):
        parse_pattern(text)


# x/secrets/identifiers_test.go TestParseIDNew
@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("my-secretA9", True),
        ("my.secretA9", True),
        ("my/secret", True),
        ("my_secretA9", True),
        ("127.0.0.1:8080", True),
        ("my/secret/", False),
        ("/my/secret", False),
        ("my//secret", False),
        ("my secret", False),
        ("my#secret", False),
        ("", False),
        ("a*", False),
    ],
)
def test_id_grammar(text: str, ok: bool) -> None:
    assert valid_id(text) is ok


# x/secrets/identifiers_test.go TestMatchNew
MATCHES = [
    ("*/**/*", ["foo/bar", "foo/bar/baz"], True),
    ("**", ["foo", "foo/bar", "foo/bar/baz"], True),
    ("foo/bar", ["foo/bar/baz", "foo"], False),
    ("foo/*", ["foo/bar"], True),
    ("foo/*", ["foo/bar/baz", "foo"], False),
    ("*/bar", ["foo/bar"], True),
    ("*/bar", ["foo/bar/baz", "foo"], False),
    ("foo/**/baz", ["foo/bar/baz", "foo/baz", "foo/bar/something/baz"], True),
    ("foo/**/baz", ["foo/bar", "foo/bar/baz/qux"], False),
    ("com.test.test/**", ["com.test.test/test/bob", "com.test.test/test/alice"], True),
    ("foo/127.0.0.1:8080/**", ["foo/127.0.0.1:8080/bob", "foo/127.0.0.1:8080/jeff/test"], True),
    # and the issue's: `foo/**` takes `foo` itself (** is zero or more)
    ("foo/**", ["foo", "foo/a/b"], True),
    ("**/*", ["foo"], True),
]


@pytest.mark.parametrize(("pattern", "ids", "expected"), MATCHES)
def test_matching_is_the_engines(pattern: str, ids: list[str], expected: bool) -> None:
    p = parse_pattern(pattern)
    for text in ids:
        assert valid_id(text)
        assert p.match(text.split("/")) is expected, (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "prefix", "could"),
    [
        ("deployment/*", ("deployment",), True),
        ("env/*", ("deployment",), False),
        ("**", ("project", "p", "e"), True),
        ("project/p", ("project", "p", "e"), False),
        ("*/x/*", ("env", "x"), True),
        ("*/x/*", ("env", "y"), False),
    ],
)
def test_a_scan_skips_only_scopes_that_cannot_match(
    pattern: str, prefix: tuple[str, ...], could: bool
) -> None:
    assert parse_pattern(pattern).could_match_below(prefix) is could


MAPPING = [
    ("$S:db", "deployment/db"),
    ("$S:@api/token", "service/api/token"),
    ("$S::staging/db", "env/staging/db"),
    ("$S:shop:prod/db", "project/shop/prod/db"),
    ("$S:@api/config/user", "service/api/config/user"),
    ("$S:shop:prod/db/replicas/0/host", "project/shop/prod/db/replicas/0/host"),
]


@pytest.mark.parametrize(("ref", "engine_id"), MAPPING)
def test_refs_and_ids_map_one_to_one(ref: str, engine_id: str) -> None:
    assert ref_to_id(parse_ref(ref)) == engine_id
    back = id_to_ref(engine_id)
    assert back is not None and str(back) == ref


def test_a_field_key_outside_the_id_alphabet_has_no_id() -> None:
    assert ref_to_id(parse_ref("$S:db/a b")) is None
    assert ref_to_id(parse_ref("$S:db/caf\u00e9")) is None


@pytest.mark.parametrize(
    "text",
    [
        "deployment",
        "service/api",
        "env/x",
        "project/p/e",
        "secrets/db",
        "deployment/a:b",
        "deployment/.x",
        "service/api/db/..",
        "deployment//db",
        "deployment/db.d",
    ],
)
def test_ids_that_name_no_ref(text: str) -> None:
    assert id_to_ref(text) is None


def test_runs_of_double_stars_are_one_and_nothing_backtracks_forever() -> None:
    assert parse_pattern("a/**/**/b").match(["a", "b"])
    assert parse_pattern("**/**").match(["x", "y", "z"])
    # `**/a/**/a/.../b` against `a/a/.../a`: exponential by plain backtracking.
    evil = parse_pattern("/".join(["**", "a"] * 30 + ["b"]))
    assert not evil.match(["a"] * 40)
    assert evil.match(["a"] * 30 + ["b"])
    # More fixed components than the ID has: no match, without trying.
    assert not parse_pattern("/".join(["**"] * 2000 + ["*"] * 6)).match(["a"] * 5)
