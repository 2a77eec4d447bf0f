"""`secretfs run --on-change`: keep CMD as a child and signal or restart it when a
secret it uses gets a new value.

One thread does everything: the signals we forward and SIGCHLD are blocked and taken
with `sigtimedwait`, whose timeout is the store's poll interval. A change counts once
its value really changed (a new version with the same fingerprint does not) and the
store has been quiet for the debounce time, so a burst of writes (a certificate, then
its key) is acted on once. A restart resolves every reference again first: if one no
longer resolves, the running child is kept and the problem is reported.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from secretfs.clock import SYSTEM, Clock
from secretfs.errors import SecretfsError, UsageError
from secretfs.follow import POLL_SECONDS, Follower, Selection
from secretfs.hardening import restore_core_limit
from secretfs.refs import Ref
from secretfs.run import FORWARDED, CommandError, Resolver, resolve_env
from secretfs.store.location import StoreLocation
from secretfs.vault import Vault

RESTART = "restart"
_SI_KERNEL = 0x80  # sent by the kernel (a terminal's Ctrl-C): the child got its own copy
_WAITED = (*FORWARDED, signal.SIGCHLD)

Env = Mapping[bytes, bytes]


def parse_action(text: str) -> str | signal.Signals:
    """`restart`, or a signal by name (`HUP`, `SIGHUP`) or number."""
    if text.lower() == RESTART:
        return RESTART
    name = text.upper()
    try:
        return (
            signal.Signals(int(name))
            if name.isdigit()
            else signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        )
    except (KeyError, ValueError):
        raise UsageError(
            f"--on-change {text!r}: give a signal (HUP, USR1, TERM, 1, ...) or 'restart'"
        ) from None


@dataclass
class Supervisor:
    argv: list[str]
    follower: Follower
    action: str | signal.Signals
    debounce: float
    # The child's environment now, resolved again from the store; raises on a problem.
    environment: Callable[[], Env]
    grace: float = 10.0  # a restarted child gets this long after SIGTERM, then SIGKILL
    say: Callable[[str], None] = lambda line: print(f"secretfs: {line}", file=sys.stderr)
    clock: Clock = SYSTEM  # when the store has been quiet for the debounce time

    def run(self, first: list[Env]) -> int:
        """Run CMD with the environment in `first` (taken out of it, so that no one
        holds the values once CMD has them) until it exits on its own or by a signal we
        forwarded; return its wait status."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        try:
            child = self._start(first.pop())
            due: float | None = None  # act then, unless another change comes first
            while True:
                info = signal.sigtimedwait(_WAITED, POLL_SECONDS)
                if info is not None and info.si_signo != signal.SIGCHLD:
                    if info.si_code != _SI_KERNEL and child.returncode is None:
                        child.send_signal(info.si_signo)
                if child.poll() is not None:
                    return child.returncode
                changes = [c for c in self.follower.poll(self.clock.time_ns()) if not c.same_value]
                if changes:
                    due = self.clock.monotonic() + self.debounce
                    for c in changes:
                        self.say(
                            f"{c.ref} changed ({c.event}, v{c.old_version} -> v{c.new_version})"
                        )
                if due is not None and self.clock.monotonic() >= due:
                    due = None
                    child = self._act(child)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)

    def _act(self, child: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        if self.action != RESTART:
            assert isinstance(self.action, signal.Signals)
            self.say(f"sending {self.action.name} to {self.argv[0]} (pid {child.pid})")
            child.send_signal(self.action)
            return child
        try:
            env = self.environment()
        except SecretfsError as exc:  # a reference gone or the store unreadable: keep it
            self.say(f"not restarting {self.argv[0]}: {exc}")
            return child
        self.say(f"restarting {self.argv[0]} (pid {child.pid})")
        child.terminate()
        try:
            child.wait(self.grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return self._start(env)

    def _start(self, env: Env) -> subprocess.Popen[bytes]:
        try:
            # The child must not inherit our blocked signals.
            return subprocess.Popen(
                self.argv,
                env=env,
                close_fds=True,
                preexec_fn=_unblock,
            )
        except FileNotFoundError:
            raise CommandError(f"command not found: {self.argv[0]}", 127) from None
        except PermissionError:
            raise CommandError(
                f"command cannot be run (permission denied): {self.argv[0]}", 126
            ) from None
        except OSError as exc:
            raise CommandError(f"cannot run {self.argv[0]}: {exc.strerror}", 126) from None


def _unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)
    restore_core_limit()  # the user's command gets the user's core limit, as with `run`


def run_on_change(
    location: StoreLocation,
    argv: list[str],
    template: Env,
    action_text: str,
    debounce: float,
    watch: tuple[str, ...] = (),
) -> int:
    """`secretfs run --on-change`: CMD's wait status once it exits (run.exit_like it)."""
    action = parse_action(action_text)
    if not debounce >= 0:
        raise UsageError("--debounce takes a number of seconds, 0 or more")
    used: set[Ref] = set()

    def environment() -> Env:
        vault = Vault.open(location, readonly=True)
        try:
            resolver = Resolver(vault)

            def resolve(ref: Ref) -> bytes:
                used.add(ref.without_field())
                return resolver.resolve(ref)

            env, res = resolve_env(template, resolve)
        finally:
            vault.close()
        res.fail_if_any(f"not running {argv[0]}")
        return env

    backend = location.open(readonly=True)
    try:
        # Taken before the first resolution, so a change in between is not missed.
        follower = Follower(backend, Selection())
        first = [environment()]
        follower.selection = Selection.of_refs(used) | Selection.parse(watch)
        if follower.selection.everything:
            raise UsageError(
                "--on-change: CMD's environment has no secret reference to follow;"
                " name what it reads with --watch REF|SCOPE"
            )
        supervisor = Supervisor(argv, follower, action, debounce, environment)
        return supervisor.run(first)
    finally:
        backend.close()
