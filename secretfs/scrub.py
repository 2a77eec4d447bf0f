"""Streaming removal of secret values from a byte stream: each occurrence becomes `***`.

The output equals one pass over the whole stream that, at each position, replaces the
longest value that starts there and then goes on after it (leftmost-longest,
non-overlapping), however the stream is cut into chunks. Two rules make that hold:

- Matching uses one compiled alternation of the values, longest first, so the regex
  engine (C code) finds the leftmost start and, there, the longest value.
- Only the undecided tail is held back: the shortest suffix of what was seen that is
  still a proper prefix of some value. Text that cannot begin a value leaves at once,
  so a prompt or a last log line is never stuck behind a fixed-size window; at most
  `max_len - 1` bytes wait for more data.

Dagger's scrubber restarts after a failed partial match and so misses `aab` in `aaab`;
this one re-examines every position, because an undecided tail begins at the leftmost
position that can still start a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = b"***"
_HEAD = 16  # bytes of a value looked for with bytes.find before a full comparison


def scrub_forms(value: bytes) -> list[bytes]:
    """The forms of one value to hide: the value and its whitespace-trimmed form."""
    return [form for form in {value, value.strip()} if form]


class Scrubber:
    """Feed chunks in, get scrubbed bytes out; `finish()` at end of stream.

    Never keep a Scrubber in a log or a repr: it holds the values themselves.
    """

    __slots__ = ("_long", "_mask", "_pattern", "_pending")

    def __init__(self, values: Iterable[bytes], mask: bytes = MASK) -> None:
        distinct = sorted({v for v in values if v}, key=lambda v: (-len(v), v))
        self._mask = mask
        self._pending = b""
        self._pattern: re.Pattern[bytes] | None = (
            re.compile(b"|".join(re.escape(v) for v in distinct)) if distinct else None
        )
        # A 1-byte value is always decided at once: only longer ones can be cut off.
        self._long = [v for v in distinct if len(v) > 1]

    def __repr__(self) -> str:
        return f"<Scrubber of {len(self._long)} values of 2 bytes or more>"

    @property
    def held(self) -> int:
        """How many bytes wait for more input (they may be the start of a value)."""
        return len(self._pending)

    def feed(self, data: bytes) -> bytes:
        """Scrub `data` (the next chunk) and return what can be written now."""
        if self._pattern is None:
            return data
        buf = self._pending + data if self._pending else bytes(data)
        out: list[bytes] = []
        pos = 0
        hold = self._undecided(buf, 0)
        for m in self._pattern.finditer(buf):
            if m.start() >= hold:
                break
            out.append(buf[pos : m.start()])
            out.append(self._mask)
            pos = m.end()
            if pos > hold:
                hold = self._undecided(buf, pos)
        hold = max(hold, pos)
        out.append(buf[pos:hold])
        self._pending = buf[hold:]
        return b"".join(out)

    def finish(self) -> bytes:
        """End of stream: everything is decided now."""
        rest, self._pending = self._pending, b""
        if self._pattern is None or not rest:
            return rest
        return self._pattern.sub(self._mask, rest)

    def _undecided(self, buf: bytes, start: int) -> int:
        """The leftmost position >= start where a value may begin but `buf` ends first."""
        end = len(buf)
        best = end
        for value in self._long:
            # Only where buf[at:] is shorter than the value: at > end - len(value).
            lo = max(start, end - len(value) + 1)
            head = value[:_HEAD]
            tails_from = max(lo, end - len(head) + 1)
            # Long tails must begin with the value's head: a C-speed search finds them.
            at = buf.find(head, lo, tails_from - 1 + len(head))
            while at != -1 and at < min(best, tails_from):
                if buf.startswith(value[: end - at], at):
                    best = at
                    break
                at = buf.find(head, at + 1, tails_from - 1 + len(head))
            # Tails shorter than the head: at most len(head) - 1 places to look.
            for at in range(tails_from, min(best, end)):
                if buf.startswith(value[: end - at], at):
                    best = at
                    break
        return best
