"""`secretfs run` and `secretfs inject` as plain logic: find references, resolve them all
or fail listing every one that cannot be, run a command with the values.

Reference forms:

- An environment value that *starts* with `$S:` or `$secret://` is one whole reference
  (ZLayer's `resolve_env`, 1Password's `op run`): the variable gets the value.
- `{{ $S:ref }}` / `{{ $secret://env/KEY }}` anywhere in an environment value or a
  template is replaced by the value (1Password's `op inject`), so a reference can sit
  inside a longer text: `postgres://app:{{ $S:db/password }}@db:5432/app`.
- Any other text is left as it is. A `$S:` inside a longer value without the braces is
  left alone too (the grammar has no end marker) and gets a warning.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO

from secretfs import fields
from secretfs.errors import NotFoundError, SecretfsError, UsageError
from secretfs.hardening import restore_core_limit
from secretfs.refs import PREFIX, SECRET_URL_PREFIX, Ref, parse_ref
from secretfs.scrub import Scrubber, scrub_forms
from secretfs.vault import Vault

_REF_STARTS = (PREFIX.encode(), SECRET_URL_PREFIX.encode())
#: `{{ $S:… }}` on one line; the reference runs to the last non-blank before `}}`.
TEMPLATE_RE = re.compile(rb"\{\{[ \t]*((?:\$S:|\$secret://)[^\n]*?)[ \t]*\}\}")
_QUOTE = 80
NEWLINE = b"\n"


def _show(ref_text: bytes) -> str:
    text = ref_text.decode("utf-8", "backslashreplace")
    return repr(text) if len(text) <= _QUOTE else f"{text[:_QUOTE]!r}..."


class Resolver:
    """Reads references from an open store, each secret decrypted at most once."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._values: dict[Ref, bytes] = {}

    def resolve(self, ref: Ref) -> bytes:
        whole = ref.without_field()
        value = self._values.get(whole)
        if value is None:
            value = self._vault.get_value(whole)
            self._values[whole] = value
        return fields.extract(value, ref.field) if ref.field else value


@dataclass
class Resolution:
    """What resolving found: values, problems (never values), and values to scrub."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: list[bytes] = field(default_factory=list, repr=False)
    count: int = 0

    def fail_if_any(self, what: str) -> None:
        if self.problems:
            n = len(self.problems)
            raise NotFoundError(
                f"{what}: {n} reference{'s' if n != 1 else ''} could not be resolved"
                " (nothing was run or written):\n  " + "\n  ".join(self.problems)
            )


def _lookup(
    resolve: Callable[[Ref], bytes], ref_text: bytes, where: str, res: Resolution
) -> bytes | None:
    try:
        ref = parse_ref(ref_text.decode("utf-8"))
        value = resolve(ref)
    except UnicodeDecodeError:
        res.problems.append(f"{where}: {_show(ref_text)}: a reference is UTF-8 text")
        return None
    except SecretfsError as exc:
        res.problems.append(f"{where}: {_show(ref_text)}: {exc}")
        return None
    res.count += 1
    res.used.append(value)
    return value


def render(
    template: bytes, resolve: Callable[[Ref], bytes], res: Resolution, where: str | None = None
) -> bytes:
    """Replace every `{{ ref }}` in `template`; problems go to `res`, labelled `where`
    (or `line N` of the template when `where` is None)."""

    def replace(m: re.Match[bytes]) -> bytes:
        label = where or f"line {template.count(NEWLINE, 0, m.start()) + 1}"
        value = _lookup(resolve, m.group(1), label, res)
        return b"" if value is None else value

    return TEMPLATE_RE.sub(replace, template)


def is_whole_ref(value: bytes) -> bool:
    return value.startswith(_REF_STARTS)


def resolve_env(
    env: Mapping[bytes, bytes], resolve: Callable[[Ref], bytes]
) -> tuple[dict[bytes, bytes], Resolution]:
    """The environment with every reference replaced (check `problems` before use)."""
    res = Resolution()
    out: dict[bytes, bytes] = {}
    for key, raw in env.items():
        name = key.decode("utf-8", "backslashreplace")
        if is_whole_ref(raw):
            value = _lookup(resolve, raw, f"${name}", res)
        elif b"{{" in raw and TEMPLATE_RE.search(raw):
            value = render(raw, resolve, res, f"${name}")
        else:
            if any(start in raw for start in _REF_STARTS):
                res.warnings.append(
                    f"${name} holds '$S:' inside a longer value and is passed unchanged;"
                    " write the reference as the whole value, or as {{ $S:... }}"
                )
            out[key] = raw
            continue
        if value is not None and b"\0" in value:
            res.problems.append(
                f"${name}: the value has a NUL byte; it cannot be in an environment"
            )
            continue
        out[key] = raw if value is None else value
    return out, res


def no_store(ref: Ref) -> bytes:
    """The resolver when no reference was found: never called."""
    raise AssertionError(f"no store open to resolve {ref}")


def references_in(env: Mapping[bytes, bytes]) -> bool:
    return any(is_whole_ref(v) or TEMPLATE_RE.search(v) for v in env.values())


# --------------------------------------------------------------------------- running

#: Forwarded to the child when sent to us; terminal-made copies are not (the child, in
#: our process group, got them from the terminal already).
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)
_SI_KERNEL = 0x80
_CORE_SIGNALS = frozenset(
    {signal.SIGQUIT, signal.SIGILL, signal.SIGABRT, signal.SIGFPE, signal.SIGSEGV,
     signal.SIGBUS, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU, signal.SIGXFSZ}
)  # fmt: skip
_CHUNK = 65536


def exec_command(argv: list[str], env: Mapping[bytes, bytes]) -> None:
    """Replace this process with the command (no return on success)."""
    restore_core_limit()  # ours stays dumpable=0 until the exec, which resets it
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the user's command, by design
    except FileNotFoundError:
        raise CommandError(f"command not found: {argv[0]}", 127) from None
    except PermissionError:
        raise CommandError(f"command cannot be run (permission denied): {argv[0]}", 126) from None
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}", 126) from None


class CommandError(UsageError):
    """The command could not be started (exit 127 not found, 126 not runnable)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_scrubbed(argv: list[str], env: Mapping[bytes, bytes], values: Iterable[bytes]) -> int:
    """Run the command with piped stdout/stderr, scrubbed; return its wait status."""
    forms = [form for v in values for form in scrub_forms(v)]
    child: list[subprocess.Popen[bytes]] = []

    def early(signum: int, _frame: object) -> None:  # only until the signals are blocked
        if child:
            child[0].send_signal(signum)

    previous = {sig: signal.signal(sig, early) for sig in FORWARDED}
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            preexec_fn=restore_core_limit,  # no thread of ours runs yet
        )
    except FileNotFoundError:
        raise CommandError(f"command not found: {argv[0]}", 127) from None
    except PermissionError:
        raise CommandError(f"command cannot be run (permission denied): {argv[0]}", 126) from None
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}", 126) from None
    child.append(proc)
    # Blocked here (the child did not inherit the block); a thread takes them with their
    # siginfo, so a Ctrl-C the terminal already gave the child is not sent twice.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    done = threading.Event()
    forwarder = threading.Thread(target=_forward_signals, args=(proc, done), daemon=True)
    forwarder.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        _pump([(proc.stdout, 1, Scrubber(forms)), (proc.stderr, 2, Scrubber(forms))])
        status = proc.wait()
    finally:
        done.set()
        forwarder.join()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _forward_signals(proc: subprocess.Popen[bytes], done: threading.Event) -> None:
    while not done.is_set():
        info = signal.sigtimedwait(FORWARDED, 0.1)
        if info is None or info.si_code == _SI_KERNEL:
            continue
        if proc.returncode is None:
            try:
                proc.send_signal(info.si_signo)
            except ProcessLookupError:
                return


def _pump(streams: list[tuple[IO[bytes], int, Scrubber]]) -> None:
    """Copy child pipes to our fds through their scrubbers until each reaches EOF."""
    sel = selectors.DefaultSelector()
    for pipe, out_fd, scrubber in streams:
        # Ours from here on: closed below, so the pipe objects must not close them too.
        sel.register(os.dup(pipe.fileno()), selectors.EVENT_READ, (out_fd, scrubber))
        pipe.close()
    while sel.get_map():
        for key, _ in sel.select():
            out_fd, scrubber = key.data
            data = os.read(key.fd, _CHUNK)
            clean = scrubber.feed(data) if data else scrubber.finish()
            if not _write_all(out_fd, clean) or not data:
                # EOF, or our reader went away: then the child meets a closed pipe,
                # as it would have without us in between.
                sel.unregister(key.fileobj)
                os.close(key.fd)
    sel.close()


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return False
        view = view[n:]
    return True


def exit_like(status: int) -> int:
    """Leave the way the child did: same exit code, or die of the same signal."""
    if status >= 0:
        return status
    sig = -status
    if sig in _CORE_SIGNALS:
        return 128 + sig  # re-raising would dump our memory, values included
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot have a handler
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    return 128 + sig  # not reached for a signal that terminates
