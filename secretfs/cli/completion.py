"""Shell completion: `secretfs completion bash|zsh|fish`, and the parameter types that
complete refs, scopes and versions from the store.

Completion reads names only: it opens a SQLite store read-only without its key (the
metadata is not encrypted) and never reads a value. Any problem (no store, unreadable,
locked, etcd) completes nothing, silently: a shell prompt is no place for errors.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from secretfs.cli.common import cli
from secretfs.refs import PREFIX, Ref, Scope, format_ref, parse_ref

if TYPE_CHECKING:
    from secretfs.store.base import Backend

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_SECRETFS_COMPLETE"  # what click's main() looks for, from prog_name
WAIT_SECONDS = 1.0  # a prompt waits no longer than this for names


@contextlib.contextmanager
def _names_only(ctx: click.Context) -> Iterator[Backend]:
    """The store the command line names so far (else the default), read-only, no key."""
    from secretfs.store.location import default_location

    location = ctx.params.get("store") or default_location()
    local = location.local_file()
    if local is None or not local.is_file():
        raise LookupError("completion reads local SQLite stores only")  # no network waits
    backend = location.open(readonly=True)
    try:
        yield backend
    finally:
        backend.close()


def _quiet(fn: Callable[..., list[CompletionItem]]) -> Callable[..., list[CompletionItem]]:
    """Complete nothing rather than print a traceback into someone's prompt, or keep it
    waiting: a store locked by a writer would block for SQLite's busy timeout."""

    def wrapper(*args: Any) -> list[CompletionItem]:
        found: queue.SimpleQueue[list[CompletionItem]] = queue.SimpleQueue()

        def work() -> None:
            try:
                found.put(fn(*args))
            except Exception:  # noqa: BLE001 - any failure means "no suggestions"
                found.put([])

        threading.Thread(target=work, daemon=True).start()  # abandoned if it hangs
        try:
            return found.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            return []

    return wrapper


def _scope_text(key: str) -> str:
    """How the CLI writes a scope: `@api`, `:staging`, `shop:prod`, `deployment`."""
    scope = Scope.from_key(key)
    if scope.kind == "service":
        return f"@{scope.service}"
    if scope.kind == "env":
        return f":{scope.env}"
    if scope.kind == "project":
        return f"{scope.project}:{scope.env}"
    return "deployment"


class RefParam(click.ParamType):  # type: ignore[type-arg]
    """A secret reference (or with scopes=True, a scope too) as text: the command parses
    it. Shared by every command that takes one, so that all of them complete alike."""

    name = "ref"

    def __init__(self, *, refs: bool = True, scopes: bool = False) -> None:
        self.refs = refs
        self.scopes = scopes

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return value

    @_quiet
    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        prefixed = incomplete.startswith(PREFIX)
        words: set[str] = set()
        with _names_only(ctx) as backend:
            metas = [m for m in backend.list_meta() if not m.deleted]
            if self.refs:
                words |= {format_ref(Ref(Scope.from_key(m.scope), m.name)) for m in metas}
            if self.scopes:
                keys = {m.scope for m in metas} | set(backend.list_scopes())
                words |= {_scope_text(k) for k in keys}
        if not prefixed:
            words = {w.removeprefix(PREFIX) for w in words}
        return [CompletionItem(w) for w in sorted(words) if w.startswith(incomplete)]


REF = RefParam()
REF_OR_SCOPE = RefParam(scopes=True)
SCOPE = RefParam(refs=False, scopes=True)


@_quiet
def complete_versions(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The kept versions of the REF given earlier on the command line (newest first)."""
    # With the option's value still missing, click leaves the positional REF in ctx.args.
    given = ctx.params.get("ref") or next(iter(ctx.args), None)
    if given is None:
        return []
    ref = parse_ref(str(given))
    with _names_only(ctx) as backend:
        meta = backend.get_meta(ref.scope.key, ref.name)
        if meta is None or meta.deleted:
            return []
        versions = [v.version for v in backend.history(meta.secret_id)]
    return [
        CompletionItem(str(v))
        for v in sorted(versions, reverse=True)
        if str(v).startswith(incomplete)
    ]


@_quiet
def complete_client_keys(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The ids (`ck_…`) of the store's live client keys: public keys only, no key needed."""
    with _names_only(ctx) as backend:
        ids = [k.key_id for k in backend.list_client_keys() if k.revoked_ns is None]
    return [CompletionItem(i) for i in sorted(ids) if i.startswith(incomplete)]


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: eval "$(secretfs completion bash)"   (in ~/.bashrc)
    zsh:  eval "$(secretfs completion zsh)"    (in ~/.zshrc)
    fish: secretfs completion fish > ~/.config/fish/completions/secretfs.fish
    """
    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    if cls is None:  # click knows all three; a guard for mypy
        raise click.UsageError(f"no completion for {shell}")
    click.echo(cls(root, {}, "secretfs", COMPLETE_VAR).source())
