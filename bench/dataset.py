"""The benchmark's secrets: the same bytes for tmpfs, the floor and secretfs.

Generated from a fixed seed, so the floor (another process) builds the very same tree
without the values ever being written to a file.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator

SEED = 6
SCOPE = "deployment"  # the 10,000-entry directory
SMALL, LARGE = 100, 4096  # even indexes are SMALL, odd ones LARGE
JSON_SCOPE = "@bench"
JSON_NAME = "config"
JSON_FIELD = "password"
SENTINEL = "sentinel"  # in JSON_SCOPE; rotated last, so its new inode says a batch is in


def name(index: int) -> str:
    return f"s{index:05d}"


def size_of(index: int) -> int:
    return SMALL if index % 2 == 0 else LARGE


def value(rng: random.Random, size: int) -> bytes:
    """Printable (dotenv-safe) random bytes of exactly `size`."""
    return base64.b64encode(rng.randbytes(size))[:size]


def json_value(rng: random.Random) -> bytes:
    doc = {
        "user": "app",
        JSON_FIELD: value(rng, 32).decode(),
        "host": "db.internal",
        "port": 5432,
        "tls": True,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def secrets(count: int, seed: int = SEED) -> Iterator[tuple[str, str, bytes]]:
    """(scope key, name, value): `count` secrets in SCOPE, then the JSON one and the
    sentinel in JSON_SCOPE."""
    rng = random.Random(seed)
    for i in range(count):
        yield SCOPE, name(i), value(rng, size_of(i))
    yield JSON_SCOPE, JSON_NAME, json_value(rng)
    yield JSON_SCOPE, SENTINEL, value(rng, SMALL)


def files(count: int, seed: int = SEED) -> dict[str, bytes]:
    """Path under the mount -> bytes, as a plain filesystem holds them: the JSON field is
    a file of its own, as secretfs shows it."""
    out: dict[str, bytes] = {}
    for scope, secret, data in secrets(count, seed):
        out[f"{scope}/{secret}"] = data
        if secret == JSON_NAME:
            out[f"{scope}/{secret}.d/{JSON_FIELD}"] = json.loads(data)[JSON_FIELD].encode()
    return out


def field_path() -> str:
    return f"{JSON_SCOPE}/{JSON_NAME}.d/{JSON_FIELD}"


def sentinel_path() -> str:
    return f"{JSON_SCOPE}/{SENTINEL}"


def cold_names(count: int) -> list[str]:
    """The secrets rotated before each cold round (both sizes, alternating)."""
    return [name(i) for i in range(count)]
