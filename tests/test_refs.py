"""The $S: reference grammar, scopes and the reference <-> path map (SPEC §2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secretfs.errors import RefError, SecretfsError
from secretfs.refs import (
    DEPLOYMENT,
    MAX_NAME_BYTES,
    NAME_RE,
    Ref,
    Scope,
    format_ref,
    is_valid_field_key,
    parse_ref,
    parse_scope,
    path_to_ref,
    ref_to_path,
    validate_field_component,
    validate_name,
)

SVC = Scope("service", service="api")
STAGING = Scope("env", env="staging")
SHOP_PROD = Scope("project", project="shop", env="prod")

# Fragments of the "what is allowed" part of the messages.
REF_FORMS = "$S:@service/name"
NAME_RULE = "names may use letters, digits"
FIELD_RULE = "field path component"
SCOPE_FORMS = "expected a scope"
PATH_FORMS = "project/<project>/<env>/<name>"


# --------------------------------------------------------------------------- valid forms

VALID = [
    # canonical $S: forms: text, scope, name, field, path
    ("$S:db", DEPLOYMENT, "db", (), "deployment/db"),
    ("$S:db/password", DEPLOYMENT, "db", ("password",), "deployment/db.d/password"),
    ("$S:db/a/b/0", DEPLOYMENT, "db", ("a", "b", "0"), "deployment/db.d/a/b/0"),
    ("$S:@api/token", SVC, "token", (), "@api/token"),
    ("$S:@api/db/user", SVC, "db", ("user",), "@api/db.d/user"),
    ("$S:@api/db/a/b/0", SVC, "db", ("a", "b", "0"), "@api/db.d/a/b/0"),
    ("$S::staging/db", STAGING, "db", (), "env/staging/db"),
    ("$S::staging/db/host", STAGING, "db", ("host",), "env/staging/db.d/host"),
    ("$S:shop:prod/db", SHOP_PROD, "db", (), "project/shop/prod/db"),
    ("$S:shop:prod/db/x/y", SHOP_PROD, "db", ("x", "y"), "project/shop/prod/db.d/x/y"),
    # names at the edges of the rule
    ("$S:a", DEPLOYMENT, "a", (), "deployment/a"),
    ("$S:A-b_c.d0", DEPLOYMENT, "A-b_c.d0", (), "deployment/A-b_c.d0"),
    ("$S:a..b", DEPLOYMENT, "a..b", (), "deployment/a..b"),
    ("$S:d", DEPLOYMENT, "d", (), "deployment/d"),
    ("$S:" + "x" * 253, DEPLOYMENT, "x" * 253, (), "deployment/" + "x" * 253),
    # field components are JSON keys: anything a file name can hold
    ("$S:db/a b", DEPLOYMENT, "db", ("a b",), "deployment/db.d/a b"),
    ("$S:db/k:v/@x/$S:y", DEPLOYMENT, "db", ("k:v", "@x", "$S:y"), "deployment/db.d/k:v/@x/$S:y"),
    ("$S:db/ключ/...", DEPLOYMENT, "db", ("ключ", "..."), "deployment/db.d/ключ/..."),
    ("$S:db/x.d", DEPLOYMENT, "db", ("x.d",), "deployment/db.d/x.d"),
    ("$S:@api/db/" + "é" * 127, SVC, "db", ("é" * 127,), "@api/db.d/" + "é" * 127),
]


@pytest.mark.parametrize(("text", "scope", "name", "field", "path"), VALID)
def test_valid_canonical(
    text: str, scope: Scope, name: str, field: tuple[str, ...], path: str
) -> None:
    ref = parse_ref(text)
    assert ref == Ref(scope, name, field)
    assert ref.scope == scope and ref.name == name and ref.field == field
    assert str(ref) == format_ref(ref) == text
    assert ref_to_path(ref) == ref.path == path
    assert path_to_ref(path) == ref
    assert path_to_ref("/" + path) == ref
    # the same reference without the prefix
    assert parse_ref(text[3:]) == ref


OTHER_FORMS = [
    # (input, canonical)
    ("db", "$S:db"),
    ("db/field", "$S:db/field"),
    ("@api/db", "$S:@api/db"),
    ("@api/db/f", "$S:@api/db/f"),
    (":staging/db", "$S::staging/db"),
    ("shop:prod/db", "$S:shop:prod/db"),
    ("shop:prod/db/a/0", "$S:shop:prod/db/a/0"),
    ("$secret://staging/KEY", "$S::staging/KEY"),
    ("$secret://staging/KEY/field", "$S::staging/KEY/field"),
    ("$secret://staging/KEY/a/b", "$S::staging/KEY/a/b"),
]


@pytest.mark.parametrize(("text", "canonical"), OTHER_FORMS)
def test_other_forms(text: str, canonical: str) -> None:
    ref = parse_ref(text)
    assert str(ref) == canonical
    assert parse_ref(canonical) == ref


def test_ref_helpers() -> None:
    ref = parse_ref("$S:@api/db/a/b")
    assert ref.without_field() == Ref(SVC, "db")
    assert str(ref.without_field()) == "$S:@api/db"
    plain = parse_ref("$S:db")
    assert plain.without_field() == plain
    # a list is accepted and stored as a tuple; the ref stays hashable
    listed = Ref(DEPLOYMENT, "db", ["a", "b"])  # type: ignore[arg-type]
    assert listed.field == ("a", "b")
    assert hash(listed) == hash(Ref(DEPLOYMENT, "db", ("a", "b")))


# --------------------------------------------------------------------------- invalid forms

INVALID = [
    # ZLayer's own invalid cases
    ("$S:", REF_FORMS),
    ("$S:@", REF_FORMS),
    ("$S:@/x", REF_FORMS),
    ("$S:@svc/", REF_FORMS),
    ("$S:/x", REF_FORMS),
    ("$S:database/", REF_FORMS),
    ("$S:::x", REF_FORMS),
    ("$S::/x", REF_FORMS),
    ("$S:proj:/x", REF_FORMS),
    ("$S:a:b:c/x", REF_FORMS),
    ("$S::env/", REF_FORMS),
    # a bare rest with ':' and no '/'
    ("$S:a:b", REF_FORMS),
    ("$S::env", REF_FORMS),
    ("a:b", REF_FORMS),
    # empty text and prefix spelling
    ("", REF_FORMS),
    ("$s:db", "case-sensitive"),
    ("$S:$S:db", REF_FORMS),
    ("$secret://", REF_FORMS),
    ("$secret://env", REF_FORMS),
    ("$secret://env/", REF_FORMS),
    ("$secret://a:b/KEY", REF_FORMS),
    # names
    ("$S:my db", NAME_RULE),
    ("$S:..", NAME_RULE),
    ("$S:.", NAME_RULE),
    ("$S:.hidden", NAME_RULE),
    ("$S:db-", NAME_RULE),
    ("$S:db\x00", NAME_RULE),
    ("$S:db\n", NAME_RULE),
    ("$S:ключ", NAME_RULE),
    ("$S:" + "x" * 254, NAME_RULE),
    ("$S:db.d", NAME_RULE),
    ("$S:db.d/x", NAME_RULE),
    ("$S:@my svc/db", NAME_RULE),
    ("$S:@svc.d/db", NAME_RULE),
    ("$S:@a:b/db", NAME_RULE),
    ("$S:@svc/..", NAME_RULE),
    ("$S::st aging/db", NAME_RULE),
    ("$S::env/x.d", NAME_RULE),
    ("$S:pr oj:env/db", NAME_RULE),
    ("$S:-p:env/db", NAME_RULE),
    ("@svc/db name", NAME_RULE),
    # field components
    ("$S:db//x", FIELD_RULE),
    ("$S:db/x/", FIELD_RULE),
    ("$S:db/x//y", FIELD_RULE),
    ("$S:db/./x", FIELD_RULE),
    ("$S:db/../x", FIELD_RULE),
    ("$S:db/x\x00y", FIELD_RULE),
    ("$S:db/" + "x" * 256, FIELD_RULE),
    ("$S:db/" + "é" * 128, FIELD_RULE),
    ("$S:@svc/db/", REF_FORMS),
    ("$S:@svc/db//x", FIELD_RULE),
]


@pytest.mark.parametrize(("text", "allowed"), INVALID)
def test_invalid(text: str, allowed: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    message = str(info.value)
    assert allowed in message
    assert isinstance(info.value, SecretfsError)


def test_error_quotes_input_truncated() -> None:
    long = "$S:" + "x" * 5000 + " tail-marker"
    with pytest.raises(RefError) as info:
        parse_ref(long)
    message = str(info.value)
    assert "tail-marker" not in message
    assert len(message) < 1000
    assert "5012 characters" in message


def test_error_escapes_control_characters() -> None:
    with pytest.raises(RefError) as info:
        parse_ref("$S:a\x00b\x1b[2J")
    message = str(info.value)
    assert "\x00" not in message and "\x1b" not in message


# --------------------------------------------------------------------------- names, fields


@pytest.mark.parametrize("name", ["a", "0", "db", "A.b-c_d", "a..b", "x" * MAX_NAME_BYTES, "d"])
def test_validate_name_ok(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "is empty"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("a\x00b", "contains '\\x00'"),
        ("..", "starts with '.'"),
        ("-a", "starts with '-'"),
        ("a_", "ends with '_'"),
        ("db.d", "ends in '.d'"),
        ("x" * (MAX_NAME_BYTES + 1), "254 bytes"),
        ("é", "contains 'é'"),
    ],
)
def test_validate_name_bad(name: str, reason: str) -> None:
    with pytest.raises(RefError) as info:
        validate_name(name, "service name")
    message = str(info.value)
    assert "service name" in message
    assert reason in message
    assert NAME_RULE in message


def test_name_re_shape() -> None:
    assert NAME_RE.fullmatch("a-b") and not NAME_RE.fullmatch("a-b\n")


@pytest.mark.parametrize("part", ["a", "0", "a b", "...", "k:v", "x.d", "é" * 127, "x" * 255])
def test_field_component_ok(part: str) -> None:
    assert validate_field_component(part) == part
    assert is_valid_field_key(part)


@pytest.mark.parametrize("part", ["", ".", "..", "a/b", "a\x00", "x" * 256, "é" * 128, "\ud800"])
def test_field_component_bad(part: str) -> None:
    assert not is_valid_field_key(part)
    with pytest.raises(RefError) as info:
        validate_field_component(part)
    assert FIELD_RULE in str(info.value)


def test_refs_validate_on_construction() -> None:
    with pytest.raises(RefError):
        Ref(DEPLOYMENT, "bad name")
    with pytest.raises(RefError):
        Ref(DEPLOYMENT, "db", ("",))
    with pytest.raises(RefError):
        Ref(DEPLOYMENT, "db", "abc")  # type: ignore[arg-type]
    with pytest.raises(RefError):
        Scope("service")
    with pytest.raises(RefError):
        Scope("deployment", env="x")
    with pytest.raises(RefError):
        Scope("project", env="prod")
    with pytest.raises(RefError):
        Scope("env", env="a b")
    with pytest.raises(RefError):
        Scope("galaxy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- scopes


SCOPES = [
    (DEPLOYMENT, "deployment", ("deployment",)),
    (SVC, "@api", ("@api",)),
    (STAGING, "env/staging", ("env", "staging")),
    (SHOP_PROD, "project/shop/prod", ("project", "shop", "prod")),
]


@pytest.mark.parametrize(("scope", "key", "parts"), SCOPES)
def test_scope_key(scope: Scope, key: str, parts: tuple[str, ...]) -> None:
    assert scope.key == str(scope) == key
    assert scope.path_parts() == parts
    assert Scope.from_key(key) == scope
    assert parse_scope(key) == scope
    assert parse_scope(key + "/") == scope


def test_deployment_constant() -> None:
    assert Scope("deployment") == DEPLOYMENT


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/",
        "deployment/",
        "deployment/x",
        "@",
        "@a b",
        "@svc/x",
        "env",
        "env/",
        "env/a/b",
        "project/shop",
        "project/shop/prod/x",
        "project//prod",
        "/deployment",
        "@svc.d",
        "env/x.d",
        "Deployment",
        "$S:@svc",
        ":staging",
    ],
)
def test_scope_from_key_bad(key: str) -> None:
    with pytest.raises(RefError):
        Scope.from_key(key)


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("$S:@api", SVC),
        ("@api", SVC),
        (":staging", STAGING),
        ("$S::staging", STAGING),
        ("shop:prod", SHOP_PROD),
        ("$S:shop:prod", SHOP_PROD),
        ("deployment", DEPLOYMENT),
        ("env/staging", STAGING),
        ("project/shop/prod", SHOP_PROD),
        ("@api/", SVC),
    ],
)
def test_parse_scope(text: str, scope: Scope) -> None:
    assert parse_scope(text) == scope


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("", SCOPE_FORMS),
        ("$S:", SCOPE_FORMS),
        ("$S:deployment", SCOPE_FORMS),
        ("$S:env/staging", SCOPE_FORMS),
        ("@", SCOPE_FORMS),
        ("$S:@", SCOPE_FORMS),
        ("@svc/db", SCOPE_FORMS),
        ("@svc//", SCOPE_FORMS),
        (":", SCOPE_FORMS),
        ("shop:", SCOPE_FORMS),
        ("a:b:c", SCOPE_FORMS),
        ("::x", SCOPE_FORMS),
        ("staging", SCOPE_FORMS),
        ("env", SCOPE_FORMS),
        ("env/a/b", SCOPE_FORMS),
        ("project/shop", SCOPE_FORMS),
        ("deployment//", SCOPE_FORMS),
        ("@my svc", NAME_RULE),
        (":x.d", NAME_RULE),
        ("sh op:prod", NAME_RULE),
        ("env/bad name", NAME_RULE),
        ("project/shop/pr od", NAME_RULE),
    ],
)
def test_parse_scope_bad(text: str, allowed: str) -> None:
    with pytest.raises(RefError) as info:
        parse_scope(text)
    assert allowed in str(info.value)


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "//deployment/db",
        "deployment",
        "deployment/",
        "deployment/db.d",
        "deployment/db.d/",
        "deployment/db/x",
        "deployment/db//x",
        "deployment/db.d//x",
        "deployment/db.d/..",
        "@",
        "@api",
        "@api/",
        "env",
        "env/staging",
        "env/staging/",
        "project/shop",
        "project/shop/prod",
        "project/shop/prod/",
        "secrets/db",
        "deployment/bad name",
        "deployment/.d/x",
        "@a b/db",
        "env/.hidden/db",
        "project/shop/prod/db.d/x/",
        "Deployment/db",
    ],
)
def test_path_to_ref_bad(path: str) -> None:
    with pytest.raises(RefError):
        path_to_ref(path)


def test_path_errors_say_what_is_allowed() -> None:
    for path in ("deployment", "deployment/db.d", "secrets/db", "env/staging"):
        with pytest.raises(RefError) as info:
            path_to_ref(path)
        assert PATH_FORMS in str(info.value)


# --------------------------------------------------------------------------- properties

names = st.from_regex(NAME_RE, fullmatch=True).filter(
    lambda n: len(n) <= MAX_NAME_BYTES and not n.endswith(".d")
)
field_parts = st.text(min_size=1, max_size=12).filter(is_valid_field_key)
fields = st.lists(field_parts, max_size=4).map(tuple)
scopes = st.one_of(
    st.just(DEPLOYMENT),
    names.map(lambda s: Scope("service", service=s)),
    names.map(lambda e: Scope("env", env=e)),
    st.builds(lambda p, e: Scope("project", project=p, env=e), names, names),
)
refs = st.builds(Ref, scopes, names, fields)


@st.composite
def canonical_texts(draw: st.DrawFn) -> str:
    """Canonical $S: strings built from the grammar, independently of format_ref."""
    kind = draw(st.sampled_from(["deployment", "service", "env", "project"]))
    name = draw(names)
    if kind == "deployment":
        text = f"$S:{name}"
    elif kind == "service":
        text = f"$S:@{draw(names)}/{name}"
    elif kind == "env":
        text = f"$S::{draw(names)}/{name}"
    else:
        text = f"$S:{draw(names)}:{draw(names)}/{name}"
    parts = draw(fields)
    return text + "".join("/" + p for p in parts)


@given(canonical_texts())
def test_prop_canonical_round_trip(text: str) -> None:
    ref = parse_ref(text)
    assert format_ref(ref) == text
    assert str(ref) == text
    assert parse_ref(text[3:]) == ref


@given(refs)
def test_prop_ref_round_trips(ref: Ref) -> None:
    assert path_to_ref(ref_to_path(ref)) == ref
    assert parse_ref(format_ref(ref)) == ref
    assert parse_ref(str(ref)) == ref


@given(scopes)
def test_prop_scope_key_round_trip(scope: Scope) -> None:
    assert Scope.from_key(scope.key) == scope
    assert parse_scope(scope.key) == scope
    assert scope.key == "/".join(scope.path_parts())


arbitrary = st.one_of(
    st.text(),
    st.text().map(lambda s: "$S:" + s),
    st.text().map(lambda s: "$secret://" + s),
    st.text(alphabet="ab:@/.$S\x00 ", max_size=20),
    st.text(alphabet="ab:@/.$S\x00 ", max_size=20).map(lambda s: "$S:" + s),
)


@given(arbitrary)
def test_prop_parse_ref_total(text: str) -> None:
    try:
        ref = parse_ref(text)
    except RefError:
        return
    assert isinstance(ref, Ref)
    # whatever parses has one canonical text and one path, both round-tripping
    assert parse_ref(str(ref)) == ref
    assert path_to_ref(ref.path) == ref


@given(arbitrary)
def test_prop_parse_scope_total(text: str) -> None:
    try:
        scope = parse_scope(text)
    except RefError:
        return
    assert Scope.from_key(scope.key) == scope


@given(st.one_of(st.text(), st.text(alphabet="ab@/.d\x00 ", max_size=24)))
def test_prop_path_to_ref_total(path: str) -> None:
    try:
        ref = path_to_ref(path)
    except RefError:
        return
    assert ref_to_path(ref) == path.removeprefix("/")


@given(st.text())
def test_prop_validators_agree(part: str) -> None:
    try:
        validate_field_component(part)
        ok = True
    except RefError:
        ok = False
    assert ok == is_valid_field_key(part)
    try:
        validate_name(part)
    except RefError:
        return
    assert NAME_RE.fullmatch(part)
