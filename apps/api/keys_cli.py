"""``nba keys``: API keys for the scoring API (create, list, revoke).

The commands are thin: :func:`create_key`, :func:`list_keys` and :func:`revoke_key` do the work, for any
caller. Mounted in the main CLI as ``app.add_typer(keys_app, name="keys")``, the commands take the data
folder from its ``--home``; run alone, from ``$NBA_HOME`` (else ``./.nba``). The key store is imported
inside the commands so that ``nba --help`` loads neither FastAPI nor SQLAlchemy.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from nba.errors import NBAError
from nba.home import Home

if TYPE_CHECKING:
    from apps.api.security import Principal

keys_app = typer.Typer(help="API keys for the scoring API", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

LedgerUrl = Annotated[str | None, typer.Option(
    "--ledger-url", help="Serving database (default: $NBA_LEDGER_URL, else $NBA_HOME/ledger.sqlite).",
    show_default=False)]


# -------------------------------------------------------------------------------------------------
# The work, as plain functions


def create_key(home: Home, scope: str, rm_id: str | None = None, label: str | None = None,
               url: str | None = None, *, check_rm: bool = True) -> tuple[Principal, str]:
    """A new key in ``home``'s serving database (or ``url``'s): its Principal and its plaintext, which is
    returned this once and stored only hashed. With ``check_rm`` (the default), an ``rm`` key's RM must be
    in the live store's ``relationship_managers`` when the home has a store (a typo would make a key that
    sees no client); raises ``APIKeyError`` naming it."""
    from apps.api.security import RM, APIKeyError, KeyStore

    if check_rm and scope == RM and rm_id:
        from feature_store.store import TableStore
        version = TableStore(home.store).current() if home.store.exists() else None
        if version is not None and "relationship_managers" in version.tables:
            known = set(version.read("relationship_managers", ["rm_id"]).column("rm_id").to_pylist())
            if rm_id not in known:
                raise APIKeyError(f"unknown RM {rm_id!r}: not in the store's relationship_managers "
                                  f"({len(known)} RMs; --any-rm to create the key anyway)")
    return KeyStore.open(home, url, cache_ttl=0).create(scope, rm_id=rm_id, label=label)


def list_keys(home: Home, url: str | None = None) -> list[dict]:
    """Every key (id, scope, rm_id, label, created_at, revoked_at), without secrets."""
    from apps.api.security import KeyStore

    return KeyStore.open(home, url, cache_ttl=0).list()


def revoke_key(home: Home, key_id: str, url: str | None = None) -> bool:
    """Revoke ``key_id``: True if it was active, False if already revoked; an unknown id raises. Servers
    stop accepting it within their key cache's TTL (5 s by default)."""
    from apps.api.security import KeyStore

    return KeyStore.open(home, url, cache_ttl=0).revoke(key_id)


# -------------------------------------------------------------------------------------------------
# The commands


def _home(ctx: typer.Context) -> Home:
    """The main CLI's ``--home`` when mounted under it, else ``$NBA_HOME`` / ``./.nba``."""
    return Home.resolve(ctx.find_root().params.get("home"))


def _fail(e: NBAError) -> typer.Exit:
    err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _when(value) -> str:  # noqa: ANN001 - datetime or None
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


@keys_app.command("create")
def create_cmd(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option(
        "--scope", help="campaign (campaign systems: any client), rm (one RM's own clients, with --rm) or "
                        "admin (reload, model info; no client data).", show_default=False)],
    rm: Annotated[str | None, typer.Option("--rm", help="The RM's id, for scope rm.", show_default=False)] = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="A note on who holds the key (e.g. 'crm-campaigns prod').", show_default=False)] = None,
    any_rm: Annotated[bool, typer.Option("--any-rm", help="Do not check that the RM is in the store (an RM "
                                                           "whose clients arrive later).")] = False,
    ledger_url: LedgerUrl = None,
) -> None:
    """Create a key. The key is printed once, alone on stdout (KEY=$(nba keys create ...)); only its hash is kept."""
    try:
        principal, plaintext = create_key(_home(ctx), scope, rm, label, ledger_url, check_rm=not any_rm)
    except NBAError as e:
        raise _fail(e) from None
    err.print(f"created {principal}" + (f", label {principal.label!r}" if principal.label else ""),
              highlight=False, markup=False, soft_wrap=True)
    err.print("This key cannot be shown again: store it now (send it as the X-API-Key header).", highlight=False,
              soft_wrap=True)
    print(plaintext)


@keys_app.command("list")
def list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
    ledger_url: LedgerUrl = None,
) -> None:
    """List the keys: id, scope, RM, label, created, revoked. Never secrets."""
    try:
        keys = list_keys(_home(ctx), ledger_url)
    except NBAError as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps([{**k, "created_at": k["created_at"].isoformat(),
                           "revoked_at": k["revoked_at"] and k["revoked_at"].isoformat()} for k in keys]))
        return
    if not keys:
        err.print("no API keys yet (nba keys create --scope ...)")
        return
    t = RichTable(box=None)
    t.add_column("id", no_wrap=True)
    t.add_column("scope", no_wrap=True)
    t.add_column("rm", no_wrap=True)
    t.add_column("label", overflow="fold")
    t.add_column("created", no_wrap=True)
    t.add_column("revoked", no_wrap=True)
    for k in keys:
        t.add_row(k["key_id"], k["scope"], Text(k["rm_id"] or ""), Text(k["label"] or ""),  # Text: no markup
                  _when(k["created_at"]), _when(k["revoked_at"]))
    out.print(t, highlight=False)


@keys_app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (nba keys list).", show_default=False)],
    ledger_url: LedgerUrl = None,
) -> None:
    """Revoke a key. Servers refuse it within their key cache's TTL (5 s by default)."""
    try:
        revoked = revoke_key(_home(ctx), key_id, ledger_url)
    except NBAError as e:
        raise _fail(e) from None
    err.print(f"revoked key {key_id}" if revoked else f"key {key_id} was already revoked", highlight=False,
              markup=False, soft_wrap=True)
