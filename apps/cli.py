"""The ``nba`` command line. Every command works inside one data folder, ``NBA_HOME``.

Stages are imported inside their commands, so ``nba --help`` stays fast and nothing runs at import.
Errors the project raises on purpose (``NBAError``) are printed without a traceback, exit code 2.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table as RichTable

from nba.errors import DataValidationError, NBAError, plural
from nba.home import Home

app = typer.Typer(
    help="Next-best-action engine for relationship banking.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Bank data: generate a synthetic bank, ingest a bank's own files.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
features_app = typer.Typer(help="Feature store: point-in-time features, customer state, online store.",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")
bench_app = typer.Typer(help="Benchmarks on public data, side by side with peers.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
models_app = typer.Typer(help="Model registry (MLflow): versions, aliases, promotion.", no_args_is_help=True)
app.add_typer(models_app, name="models")
index_app = typer.Typer(help="FAISS retrieval: product candidates and lookalike audiences.", no_args_is_help=True)
app.add_typer(index_app, name="index")

from apps.api.keys_cli import keys_app  # noqa: E402 - after the app it joins

app.add_typer(keys_app, name="keys")
outcomes_app = typer.Typer(help="Outcomes of decisions: the contact ledger and its export to the store.",
                           no_args_is_help=True)
app.add_typer(outcomes_app, name="outcomes")

out = Console()
err = Console(stderr=True)


class _State:
    home: Home


state = _State()


@app.callback()
def _main(
    home: Annotated[Path | None, typer.Option(
        "--home", help="Data folder (default: $NBA_HOME, else ./.nba).", show_default=False)] = None,
) -> None:
    state.home = Home.resolve(home)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


def _parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=option) from None


# -------------------------------------------------------------------------------------------------
# nba data ...


@data_app.command("generate")
def data_generate(
    customers: Annotated[int, typer.Option("--customers", "-n", min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 42,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="First day after the history, YYYY-MM-DD (default: today).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: $NBA_HOME/synthetic).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a synthetic bank (every contract table as Parquet) plus the truth of the next 90 days."""
    from nba.synthetic import generate

    day = _parse_date(as_of, "--as-of") or date.today()
    target = out_dir or state.home.ensure().synthetic
    real, home = target.resolve(), state.home.root.resolve()
    if real == home or real in home.parents:
        raise typer.BadParameter(f"{target} holds NBA_HOME ({home}): writing the bank there would replace it",
                                 param_hint="--out")
    with _progress() as bar:
        task = bar.add_task("generating customers", total=customers)
        manifest = generate(customers, seed, day, target, workers=workers, overwrite=overwrite,
                            on_progress=lambda done, total: bar.update(task, completed=done))
    out.print(f"wrote a synthetic bank of {manifest['customers']:,} customers (seed {seed}, as of "
              f"{manifest['as_of']}) to {target}; ground truth of the next {manifest['truth_days']} days in "
              f"{target / '_truth'}")


@data_app.command("ingest")
def data_ingest(
    src: Annotated[Path, typer.Argument(help="Folder with one file (.csv/.parquet) or folder per table.")],
    mode: Annotated[str, typer.Option(
        help="replace: tables given replace the stored ones; append: their rows are added.")] = "replace",
) -> None:
    """Validate a bank's files against the contract and commit them as a new store version."""
    from feature_store.ingest import ingest
    from feature_store.store import TableStore

    if mode not in ("replace", "append"):
        raise typer.BadParameter(f"{mode!r} is not one of replace, append", param_hint="--mode")
    store = TableStore(state.home.ensure().store)
    with err.status("ingesting") as status:
        version = ingest(src, store, mode=mode, progress=lambda msg: status.update(f"ingesting {msg}"))
    out.print(f"store version {version.name} is live ({version.manifest['source']})")
    _print_version(version)
    from feature_store.materialize import online_behind, online_store
    from feature_store.online import ENV_VAR as ONLINE_ENV
    behind = None
    if os.environ.get(ONLINE_ENV) or (state.home.root / "online.sqlite").exists():  # never create one here
        try:
            online = online_store(state.home)
            try:
                behind = online_behind(online.live(), version.name)
            finally:
                online.close()
        except Exception:  # noqa: BLE001 - an unreachable online store is the server's concern, not ingest's
            behind = None
    if behind:
        out.print(f"[yellow]note:[/yellow] {behind}")


@data_app.command("status")
def data_status() -> None:
    """Show the live store version, its tables and row counts, and the versions kept."""
    from feature_store.store import TableStore

    store = TableStore(state.home.store)
    version = store.require_current()
    out.print(f"NBA_HOME {state.home.root}; live store version {version.name}, "
              f"created {version.manifest['created_at']}; kept: {', '.join(store.version_names())}")
    _print_version(version)


@data_app.command("rollback")
def data_rollback(version: Annotated[str, typer.Argument(help="A kept version, e.g. v000002.")]) -> None:
    """Make an earlier store version live again."""
    from feature_store.store import TableStore

    v = TableStore(state.home.store).rollback(version)
    out.print(f"store version {v.name} is live again")


def _print_version(version) -> None:
    from nba import features as F

    t = RichTable("table", "rows", "parts", "note")
    for name in version.tables:
        ext = version.extensions(name)
        note = "; ".join(filter(None, [
            (F.ABSENT_NOTES.get(name, "absent from the export").split(": ", 1)[-1]
             if version.absent(name) else ""),
            ("extensions: " + ", ".join(f"{c} ({k})" for c, k in ext.items())) if ext else ""]))
        t.add_row(name, f"{version.rows(name):,}", str(len(version.manifest['tables'][name]['parts'])), note)
    out.print(t)


# -------------------------------------------------------------------------------------------------
# nba features ...


@features_app.command("materialize")
def features_materialize(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="YYYY-MM-DD (default: the day after the store's latest event).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML with a 'state:' section (default: configs/features.yaml if present).")] = None,
    online: Annotated[str | None, typer.Option(
        "--online", help="Online store URL (default: $NBA_ONLINE_STORE, else SQLite in NBA_HOME).")] = None,
    publish: Annotated[bool | None, typer.Option(
        "--publish/--no-publish", help="Publish to the online store (default: yes without --as-of; with "
        "--as-of only when it is not older than the date online, so a backfill never sends serving back in "
        "time).", show_default=False)] = None,
) -> None:
    """Compute features and customer state at as_of, write them (Parquet) and fill the online store."""
    from feature_store.materialize import materialize, state_config

    home = state.home.ensure()
    with err.status("materializing") as status:
        result = materialize(home, _parse_date(as_of, "--as-of"), online_url=online,
                             state=state_config(config), progress=lambda m: status.update(m), publish=publish)
    online_note = (f"online version {result.online_version} is live" if result.published else
                   f"online store not changed: it serves {result.online_version or 'nothing'} "
                   f"(--publish to serve {result.as_of})")
    out.print(f"features at {result.as_of} for {result.rows:,} customers from store {result.store_version}: "
              f"{result.path}; {online_note} ({', '.join(f'{k} {v}' for k, v in result.seconds.items())})")


@features_app.command("get")
def features_get(
    customer_id: Annotated[str, typer.Argument(help="The customer's id.")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Read the offline features of this date instead of the live online store.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    online: Annotated[str | None, typer.Option("--online", help="Online store URL.")] = None,
) -> None:
    """Print one customer's features and state (online store, or offline with --as-of)."""
    import json

    from feature_store.materialize import decode, get_online, read_features
    from nba.errors import StoreError

    day = _parse_date(as_of, "--as-of")
    if day is None:
        doc = get_online(state.home, customer_id, online)
    else:
        rows = read_features(state.home, day, [customer_id])
        doc = None if rows.empty else json.loads(rows.iloc[:1].to_json(orient="records", date_format="iso"))[0]
    if doc is None:
        where = f"the features at {day}" if day else "the live online store"
        raise StoreError(f"unknown customer_id {customer_id!r} (not in {where})")
    doc = decode(doc)
    if isinstance(doc.get("as_of"), str):
        doc["as_of"] = doc["as_of"][:10]
    if as_json:
        print(json.dumps(doc, indent=1, default=str))
        return
    t = RichTable("feature", "value", title=f"{customer_id} as of {doc['as_of']}")
    for k in ("lifecycle_stage", "health_score", "complaint_state", "emotional_state"):
        t.add_row(f"[bold]{k}", str(doc[k]))
    for k, v in doc.items():
        if k not in ("lifecycle_stage", "health_score", "complaint_state", "emotional_state", "state_evidence"):
            t.add_row(k, "" if v is None else str(v))
    out.print(t)
    out.print_json(data=doc["state_evidence"])


# -------------------------------------------------------------------------------------------------
# nba train, nba models ...


@app.command("train")
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Training config (default: configs/train.yaml).", show_default=False)] = None,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Train on the graph at this date, YYYY-MM-DD (default: the day after the store's "
        "latest event).",
        show_default=False)] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).", show_default=False)] = None,
    promote: Annotated[bool, typer.Option(
        "--promote", help="Also make the new version the champion.")] = False,
    no_ray: Annotated[bool, typer.Option(
        "--no-ray", help="Run the plain loop in-process instead of Ray Train.")] = False,
) -> None:
    """Train the GNN (Ray Train), evaluate it on the following 90 days, log and register it in MLflow."""
    from training.config import load_run_config
    from training.pipeline import run_training

    cfg, path = load_run_config(config, overrides)
    if no_ray:
        cfg.ray.enabled = False
    run_training(state.home.ensure(), cfg, _parse_date(as_of, "--as-of"), promote=promote, config_path=path,
                 log=lambda msg: out.print(msg, highlight=False, markup=False))


NameOpt = Annotated[str | None, typer.Option(
    "--name", help="Registered model name (default: configs/registry.yaml).", show_default=False)]


@models_app.command("list")
def models_list(name: NameOpt = None) -> None:
    """Registered versions with their aliases, as_of and evaluation."""
    from bundle import registry

    versions = registry.list_versions(state.home, name)
    t = RichTable("version", "aliases", "as_of", "K", "model recall@K", "popularity recall@K", "churn ROC AUC", "run",
                  title=f"registered model {versions[0].name}")
    for v in versions:
        m = v.metrics
        k = _headline_k(m)
        t.add_row(str(v.version), ", ".join(v.aliases), v.as_of, "" if k is None else str(k),
                  _fmt(m.get(f"test.model.recall_at_{k}")), _fmt(m.get(f"test.popularity.recall_at_{k}")),
                  _fmt(m.get("test.churn.roc_auc")), v.run_id or "")
    out.print(t)
    if any(_headline_k(v.metrics) is None for v in versions):
        out.print("K blank: no backtest metrics (trained at the latest date), or no K below the catalogue size")


def _headline_k(metrics: dict) -> int | None:
    """The K of the recall shown for a version: 5, or for a catalogue of 5 products or fewer the largest K
    evaluated below its size (recall@K of every product is 1.0 for any model). None when none fits."""
    ks = sorted(int(k.rsplit("_", 1)[1]) for k in metrics if k.startswith("test.model.recall_at_"))
    products = metrics.get("catalogue_products")
    fit = [k for k in ks if products is None or k < products]
    if not fit:
        return None
    return 5 if 5 in fit else fit[-1]


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="Version to make the champion.")],
    name: NameOpt = None,
) -> None:
    """Point the alias champion at a version."""
    from bundle import registry

    registry.promote(state.home, version, name)
    out.print(f"{name or registry.default_name()} version {version} is now the champion")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"



# -------------------------------------------------------------------------------------------------
# nba index ...

ModelOpt = Annotated[str, typer.Option(
    "--model-version", "-m", help="Registered version number or alias (champion, challenger).")]


@index_app.command("build")
def index_build(
    model_version: ModelOpt = "champion",
    config: Annotated[Path | None, typer.Option(
        "--config", help="Index settings (default: configs/index.yaml).", show_default=False)] = None,
) -> None:
    """Build the product and customer indexes of a model version and log them to it in MLflow."""
    from serving.retrieval import build_for_version, load_index_config

    build_for_version(state.home.ensure(), model_version, load_index_config(config),
                      log=lambda m: out.print(m, highlight=False, markup=False))


@index_app.command("query")
def index_query(
    customer: Annotated[list[str], typer.Option("--customer", "-c", help="Customer id (repeatable).")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Candidates per customer.")] = 10,
    model_version: ModelOpt = "champion",
    include_held: Annotated[bool, typer.Option("--include-held", help="Keep products already held.")] = False,
    exclude: Annotated[str | None, typer.Option(
        "--exclude", help="Comma-separated product ids nobody may get.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Product candidates for customers: the model's top-k, held and excluded products left out."""
    from serving.retrieval import Retriever

    r = Retriever(state.home, model_version)
    df = r.candidates(customer, k, exclude_held=not include_held,
                      exclude_products=[p for p in (exclude or "").split(",") if p])
    if as_json:
        print(df.to_json(orient="records", lines=True))
        return
    t = RichTable("customer_id", "rank", "product_id", "score", title=f"model version {r.snapshot.version}, "
                  f"index {r.snapshot.build_id}")
    for row in df.itertuples():
        t.add_row(row.customer_id, str(row.rank), row.product_id, f"{row.score:.4f}")
    out.print(t)
    for c, g in df.groupby("customer_id"):
        if g["found"].iloc[0] < k:
            err.print(f"{c}: only {g['found'].iloc[0]} admissible product(s) of the {k} asked for")
    for c in set(customer) - set(df["customer_id"]):
        err.print(f"{c}: no admissible product")


@index_app.command("lookalike")
def index_lookalike(
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seed customer ids.")] = None,
    seeds_file: Annotated[Path | None, typer.Option(
        "--seeds-file", help="Seed ids, one a line (or a CSV with customer_id).")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Audience size.")] = 1000,
    method: Annotated[str, typer.Option(help="nearest (best match to any seed) or centroid.")] = "nearest",
    exclude_file: Annotated[Path | None, typer.Option(
        "--exclude-file", help="Customers to suppress (one a line, or CSV with customer_id).")] = None,
    model_version: ModelOpt = "champion",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the audience as CSV.")] = None,
) -> None:
    """A lookalike audience: the n customers most like the seeds (seeds and suppressed left out)."""
    from serving.retrieval import Retriever, read_id_file

    ids = [s.strip() for s in (seeds or "").split(",") if s.strip()]
    if seeds_file:
        ids += read_id_file(seeds_file)
    if not ids:
        raise typer.BadParameter("give seed customers with --seeds or --seeds-file", param_hint="--seeds")
    if method not in ("nearest", "centroid"):
        raise typer.BadParameter(f"{method!r} is not one of nearest, centroid", param_hint="--method")
    suppressed = read_id_file(exclude_file) if exclude_file else []
    res = Retriever(state.home, model_version).lookalike(ids, n, method, suppressed)
    if res.unknown_seeds:
        err.print(f"{len(res.unknown_seeds)} seed(s) unknown to model version {res.model_version}, ignored: "
                  f"{', '.join(res.unknown_seeds[:10])}")
    if len(res.audience) < n:
        err.print(f"only {len(res.audience):,} customers could be found of the {n:,} asked for")
    if out_file:
        res.audience.to_csv(out_file, index=False)
        out.print(f"audience of {len(res.audience):,} customers ({method}, {res.seeds_used} seeds, model version "
                  f"{res.model_version}) written to {out_file}")
        return
    t = RichTable("rank", "customer_id", "similarity", title=f"lookalikes of {res.seeds_used} seed(s), {method}")
    for row in res.audience.head(20).itertuples():
        t.add_row(str(row.rank), row.customer_id, f"{row.similarity:.4f}")
    out.print(t)
    if len(res.audience) > 20:
        out.print(f"... {len(res.audience) - 20:,} more (use --out FILE for all)")


@app.command("daily")
def daily(
    day: Annotated[str | None, typer.Option(
        "--date", help="The day to decide for, YYYY-MM-DD (default: the day after the store's latest event).",
        show_default=False)] = None,
    model_version: ModelOpt = "champion",
    catalog: Annotated[Path | None, typer.Option(
        "--catalog", help="Action catalog (default: configs/actions.yaml).", show_default=False)] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Score with Ray Data on this cluster ('local' for a local Ray; default: "
        "$RAY_ADDRESS, else in-process).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Decide even when the store's data is older than data_freshness.max_days "
        "(configs/bank.yaml).")] = False,
) -> None:
    """Decide every client's next best action for a day and write the RMs' lists under daily/<date>/."""
    from feature_store.materialize import default_as_of
    from feature_store.store import TableStore
    from serving.daily import run_daily

    home = state.home.ensure()
    d = _parse_date(day, "--date") or default_as_of(TableStore(home.store).require_current())
    res = run_daily(home, d, model=model_version, catalog_path=catalog, ray_address=ray_address, force=force,
                    log=lambda m: out.print(m, highlight=False, markup=False))
    s = res.summary()
    t = RichTable("family", "listed", title=f"decisions for {d}")
    for fam, k in sorted(s["by_family"].items()):
        t.add_row(fam, f"{k:,}")
    t.add_row("control group (no action)", f"{s['control_group']:,}")
    out.print(t)
    out.print(f"timings: {', '.join(f'{k} {v:.1f} s' for k, v in s['seconds'].items())}")


@bench_app.command("recsys")
def bench_recsys(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (LightGCN format or MovieLens 100K).")],
    fmt: Annotated[str | None, typer.Option(
        "--format", help="lightgcn or movielens (default: detected).", show_default=False)] = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated: nba, lightgcn, pyg-lightgcn, als, pop (default: all).",
        show_default=False)] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the results as JSON.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Settings (default: configs/recsys/<dataset>.yaml, else default.yaml).",
        show_default=False)] = None,
) -> None:
    """Train and evaluate the project's models and their peers on one split, in this process."""
    from recsys_bench.harness import run

    if fmt is not None and fmt not in ("lightgcn", "movielens"):
        raise NBAError(f"--format {fmt!r}: expected lightgcn or movielens")
    res = run(data, fmt, models.split(",") if models else None, out_file, config,
              log=lambda m: out.print(m, highlight=False, markup=False))
    names = sorted({k for r in res["models"].values() for k in r["metrics"]})
    t = RichTable("model", *names, "train s", "peak RSS MB", "note", title=f"{res['dataset']} ({res['protocol']} protocol)")
    for name, r in res["models"].items():
        t.add_row(name, *[f"{r['metrics'].get(k, float('nan')):.4f}" for k in names], f"{r['train_seconds']:.1f}",
                  f"{r['peak_rss_mb']:,.0f}", str(r.get("budget", "")))
    out.print(t)


# -------------------------------------------------------------------------------------------------
# nba demo


LedgerOpt = Annotated[str | None, typer.Option(
    "--ledger-url", help="Serving database: sqlite:///PATH or postgresql://... (default: $NBA_LEDGER_URL, else "
    "SQLite in NBA_HOME).", show_default=False)]


@outcomes_app.command("export")
def outcomes_export(
    ledger_url: LedgerOpt = None,
) -> None:
    """Append the ledger's new outcomes (API, workbench) to the store's action_outcomes: one store
    version, so they become training labels and features."""
    from feature_store.ledger import Ledger
    from feature_store.store import TableStore

    home = state.home.ensure()
    import sqlalchemy as sa

    with Ledger.open(home, ledger_url) as ledger:
        v = ledger.export_outcomes(TableStore(home.store))
        with ledger.engine.connect() as c:
            waiting = c.execute(sa.text("SELECT COUNT(*) FROM outcomes WHERE exported_version IS NULL")).scalar()
    out.print("no new outcomes in the ledger" if v is None and not waiting else
              f"outcomes exported: store version {v.name} is live" if v is not None else "nothing exported")
    if waiting:
        out.print(f"{waiting:,} outcome(s) dated after now wait for a later export")


@outcomes_app.command("summary")
def outcomes_summary(
    ledger_url: LedgerOpt = None,
) -> None:
    """Decisions and outcomes in the ledger, by source and outcome."""
    import sqlalchemy as sa

    from feature_store.ledger import Ledger

    home = state.home.ensure()
    with Ledger.open(home, ledger_url) as ledger, ledger.engine.connect() as c:
        # A contact: listed (daily), or an outcome says it was delivered (the ledger's rule).
        dec = c.execute(sa.text(
            "SELECT source, COUNT(*), SUM(CASE WHEN contact OR decision_id IN (SELECT decision_id FROM outcomes "
            "WHERE outcome IN ('shown', 'reached', 'accepted', 'declined')) THEN 1 ELSE 0 END) "
            "FROM decisions GROUP BY source ORDER BY source")).fetchall()
        outc = c.execute(sa.text("SELECT outcome, COUNT(*), SUM(CASE WHEN exported_version IS NULL THEN 1 ELSE 0 "
                                 "END) FROM outcomes GROUP BY outcome ORDER BY outcome")).fetchall()
    t = RichTable("decisions from", "rows", "contacts", title="contact ledger")
    for source, n, contacts in dec:
        t.add_row(str(source), f"{n:,}", f"{int(contacts or 0):,}")
    out.print(t)
    t = RichTable("outcome", "rows", "not yet exported", title="outcomes")
    for outcome, n, pending in outc:
        t.add_row(str(outcome), f"{n:,}", f"{int(pending or 0):,}")
    out.print(t)


@app.command("serve")
def serve_api(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="uvicorn worker processes.")] = 1,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy on Ray Serve instead of uvicorn.")] = False,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Ray Serve replicas (with --ray).")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray cluster for --ray (default: a local Ray).", show_default=False)] = None,
    model_version: ModelOpt = "champion",
    ledger_url: LedgerOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Serving settings (default: configs/serving.yaml).", show_default=False)] = None,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log",
        help="uvicorn's line per request (ids in paths redacted). Off by default: it costs about a quarter "
             "of a request's time; /metrics counts requests by route and status, the audit log every read "
             "of a client's data.")] = False,
) -> None:
    """Serve the scoring API (next best action, batch scores, recommendations, lookalikes, outcomes)."""
    from apps.api import serve as runner
    from apps.api.settings import load_settings

    home = state.home.ensure()
    load_settings(config)  # a bad config fails here, before anything starts
    kw = dict(host=host, port=port, model=model_version, ledger_url=ledger_url, config=config)
    if ray:
        out.print(f"Ray Serve: {replicas} replica(s) on http://{host}:{port} (docs at /docs)")
        runner.deploy_ray(home, replicas=replicas, address=ray_address, **kw)
    else:
        out.print(f"uvicorn: {workers} worker(s) on http://{host}:{port} (docs at /docs)")
        runner.run_uvicorn(home, workers=workers, access_log=access_log, **kw)


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option("--customers", "-n", min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 42,
) -> None:
    """Run the main job end to end on embedded defaults: generate a bank, ingest it, materialize features,
    train (a backtest with its evaluation, then the production model), register in MLflow, build the
    FAISS indexes, and decide the day's next best actions with the RMs' lists."""
    home = state.home.ensure()
    out.rule("[bold]1. synthetic bank")
    data_generate(customers=customers, seed=seed, as_of=None, out_dir=home.synthetic, workers=None,
                  overwrite=True)
    out.rule("[bold]2. ingest into the store")
    data_ingest(src=home.synthetic, mode="replace")
    out.rule("[bold]3. features, customer state, online store")
    features_materialize(as_of=None, config=None, online=None)
    _show_states(home)
    from datetime import timedelta

    from feature_store.materialize import available_as_of
    latest = available_as_of(home)[-1]
    backtest = latest - timedelta(days=90)
    out.rule(f"[bold]4. train a backtest model at {backtest} (Ray Train), evaluate on the 90 days after, MLflow")
    train(config=None, as_of=backtest.isoformat(), overrides=None, promote=False, no_ray=False)
    out.rule(f"[bold]5. train the production model at {latest}, register it as champion")
    train(config=None, as_of=latest.isoformat(), overrides=None, promote=True, no_ray=False)
    models_list(name=None)
    out.rule("[bold]6. FAISS indexes of the champion: product candidates, lookalike audience")
    index_build(model_version="champion", config=None)
    _demo_retrieval(home)
    out.rule(f"[bold]7. next best actions for {latest}: every client decided, RM lists written")
    daily(day=latest.isoformat(), model_version="champion", catalog=None, ray_address=None, force=False)
    _demo_rm_list(home, latest)
    out.rule("[bold]8. scoring API: keys, a real-time decision, a batch, lookalikes, outcomes back to the store")
    _demo_api(home)
    out.print(f"[green]demo complete[/green]: everything lives in {home.root}; MLflow UI: "
              f"mlflow ui --backend-store-uri sqlite:///{home.mlflow_db}")


def _demo_retrieval(home: Home) -> None:
    from serving.retrieval import Retriever

    r = Retriever(home, "champion")
    ids = r.snapshot.bundle.customer_ids
    index_query(customer=ids[:2], k=3, model_version="champion", include_held=False, exclude=None, as_json=False)
    # A campaign audience: lookalikes of the customers who hold the least common product.
    bundle = r.snapshot.bundle
    counts = np.bincount(bundle.held[1], minlength=len(bundle.product_ids))
    rare = int(np.argmin(np.where(counts > 20, counts, counts.max() + 1)))
    seeds = [ids[u] for u in bundle.held[0][bundle.held[1] == rare][:200]]
    res = r.lookalike(seeds, 1000, "nearest")
    holders = set(bundle.held[0][bundle.held[1] == rare].tolist())
    in_aud = np.isin(r.snapshot.customers.row_of(res.audience["customer_id"].tolist()), list(holders)).mean()
    out.print(f"lookalike audience of {len(res.audience):,} for {len(seeds)} holders of {bundle.product_ids[rare]}: "
              f"{in_aud:.1%} of it already holds the product (base rate {len(holders) / len(ids):.1%})")


def _demo_api(home: Home) -> None:
    """Start the API on uvicorn in this process (a free loopback port), call it as a campaign system, an
    inbound-call tool and an RM would, then export the outcomes to the store."""
    import socket
    import threading
    import time
    from datetime import datetime
    from datetime import time as clock_time
    from zoneinfo import ZoneInfo

    import httpx
    import uvicorn

    from apps.api.app import create_app
    from apps.api.security import KeyStore
    from feature_store.ledger import Ledger
    from feature_store.materialize import _live_as_of, features_at, online_store
    from feature_store.store import TableStore
    from nba.bank import load_bank_config

    keys = KeyStore.open(home)
    version = TableStore(home.store).require_current()
    day = _live_as_of(online_store(home).live())
    feats = features_at(home, day, version)
    rm_id = feats["rm_id"].value_counts().index[0]
    campaign = keys.create("campaign", label="demo campaign system")[1]
    rm_key = keys.create("rm", rm_id=rm_id, label=f"demo {rm_id}")[1]
    out.print(f"API keys made (shown once, stored hashed): campaign, and rm for {rm_id}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Decisions are recorded on the real clock when the features are today's (the demo's data is current),
    # else at noon of the features' day in the bank's zone (a replay of a past day).
    zone = ZoneInfo(load_bank_config().time_zone)
    noon = datetime.combine(day, clock_time(12), tzinfo=zone)
    clock = None if datetime.now(zone).date() == day else (lambda: noon)
    server = uvicorn.Server(uvicorn.Config(create_app(home, poll=False, clock=clock), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > 120:
                    raise NBAError("the API did not become ready in 120 s")
                time.sleep(0.2)
            out.print(f"uvicorn on {base}: ready in {time.perf_counter() - t0:.1f} s (OpenAPI docs at {base}/docs)")
            mine = feats.loc[feats.rm_id == rm_id, "customer_id"].tolist()
            other = feats.loc[feats.rm_id != rm_id, "customer_id"].iloc[0]
            for cid in mine[:200]:  # an inbound call from a client with something to talk about
                t = time.perf_counter()
                d = http.post("/v1/next-best-action", headers={"X-API-Key": campaign},
                              json={"customer_id": cid, "context": {"channel": "phone"}, "top": 3}).json()
                ms = (time.perf_counter() - t) * 1000
                if len(d["actions"]) >= 2:
                    break
            tab = RichTable("rank", "action", "channel", "priority", "talking points",
                            title=f"inbound call from {cid} ({ms:.0f} ms; model {d['model_version']}, "
                                  f"features of {d['as_of']})")
            for a in d["actions"]:
                tab.add_row(str(a["rank"]), a["action_id"], a["channel"], f"{a['priority']:,.1f}",
                            "\n".join(a["talking_points"]))
            out.print(tab)
            if d["control_group"]:
                out.print(f"{cid} is in today's control group for {d['held_out']['action_family']}: no action")
            batch = feats["customer_id"].head(1000).tolist()
            t = time.perf_counter()
            s = http.post("/v1/score", headers={"X-API-Key": campaign}, json={"customer_ids": batch}).json()
            ms = (time.perf_counter() - t) * 1000
            fams: dict[str, int] = {}
            for r in s["results"]:
                d0 = r["decision"]
                fam = ("control group" if d0["control_group"] else
                       d0["actions"][0]["action_family"] if d0["actions"] else "no action")
                fams[fam] = fams.get(fam, 0) + 1
            out.print(f"POST /v1/score: {len(s['results']):,} clients decided in {ms:.0f} ms: "
                      + ", ".join(f"{k} {v:,}" for k, v in sorted(fams.items())))
            lk = http.post("/v1/audiences/lookalike", headers={"X-API-Key": campaign},
                           json={"seed_customer_ids": mine[:20], "size": 200,
                                 "filters": {"channel": "email"}}).json()
            out.print(f"lookalike audience: {len(lk['audience'])} clients like {len(mine[:20])} of {rm_id}'s "
                      f"clients, all with email and marketing consent")
            rec = http.get(f"/v1/clients/{cid}/recommendations?k=3", headers={"X-API-Key": rm_key}).json()
            if rec["recommendations"]:
                out.print(f"{rm_id}'s own client {cid}: top products "
                          + ", ".join(f"{r['product_id']} ({r['propensity']:.1%})" for r in rec["recommendations"]))
            else:  # every offer removed by a policy: say which, rather than an empty list
                rules: dict[str, int] = {}
                for rule in rec["removed"].values():
                    rules[rule] = rules.get(rule, 0) + 1
                out.print(f"{rm_id}'s own client {cid}: no product passes the offer policies ("
                          + ", ".join(f"{n} removed by {r}" for r, n in sorted(rules.items())) + ")")
            r404 = http.get(f"/v1/clients/{other}/recommendations", headers={"X-API-Key": rm_key})
            out.print(f"{rm_id} asking for a client outside the book: HTTP {r404.status_code} (as an unknown client)")
            recorded = 0
            for i, c in enumerate(mine[:30]):
                dd = http.post("/v1/next-best-action", headers={"X-API-Key": campaign}, json={"customer_id": c}).json()
                if not dd["actions"]:
                    continue
                outcome = ("accepted", "declined", "reached")[i % 3]
                body = {"decision_id": dd["decision_id"], "outcome": outcome}
                if outcome == "declined":
                    body["reason"] = "not now"
                key = f"demo-{dd['decision_id']}-{outcome}"
                for _ in range(2):  # a retry with the same Idempotency-Key is answered from the stored outcome
                    ack = http.post("/v1/outcomes", headers={"X-API-Key": campaign, "Idempotency-Key": key},
                                    json=body)
                    ack.raise_for_status()
                recorded += 1
            out.print(f"{recorded} outcomes recorded through the API (each sent twice: stored once)")
            metrics = http.get("/metrics").text
            n = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("nba_decisions_total{"))
            out.print(f"/metrics: {n:.0f} decisions answered so far, Prometheus text format")
            out.rule("[bold]9. RM workbench: an RM signs in, works the list, records an outcome")
            _demo_workbench(http, rm_id, rm_key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    with Ledger.open(home) as ledger:
        v = ledger.export_outcomes(TableStore(home.store))
    out.print("no outcomes to export yet" if v is None else
              f"outcomes exported from the ledger to the store: version {v.name} is live; the next training and "
              f"the features read them")


def _demo_workbench(http, rm_id: str, rm_key: str) -> None:
    """Drive the workbench's pages as a browser would (forms, cookie, CSRF token), on the running app."""
    import re
    import time

    def csrf(html: str) -> str:
        return re.search(r'name="csrf" value="([^"]+)"', html).group(1)

    def meta(html: str) -> str:
        m = re.search(r'<p class="meta">([^<]+)</p>', html)
        return m.group(1).strip() if m else "no list"

    login = http.get("/login")
    signed = http.post("/login", data={"key": rm_key, "csrf": csrf(login.text)}, follow_redirects=True)
    signed.raise_for_status()
    t = time.perf_counter()
    page = http.get("/")
    ms = (time.perf_counter() - t) * 1000
    out.print(f"{rm_id} signed in with their key (exchanged for an HttpOnly session cookie); list page in "
              f"{ms:.0f} ms: {meta(page.text)}")
    rows = re.findall(r'<tr id="d-([^"]+)"[^>]*>.*?href="/clients/([^"]+)"', page.text, flags=re.S)
    if not rows:
        out.print("nothing on the list today")
        return
    decision_id, cid = rows[0]
    t = time.perf_counter()
    view = http.get(f"/clients/{cid}")
    charts = [http.get(f"/clients/{cid}/charts/{n}.svg") for n in ("balance", "state", "contacts")]
    ms = (time.perf_counter() - t) * 1000
    out.print(f"client view of {cid} with 3 charts in {ms:.0f} ms "
              f"({len(view.text) // 1024} KiB of HTML, {sum(len(c.content) for c in charts) // 1024} KiB of SVG)")
    form = re.search(r'name="idem" value="([^"]+)"', view.text).group(1)
    done = http.post("/outcomes", data={"decision_id": decision_id, "outcome": "accepted", "csrf": csrf(view.text),
                                        "idem": form, "note": "Happy to meet next week", "back": f"client:{cid}"},
                     follow_redirects=True)
    done.raise_for_status()
    out.print(f"outcome 'accepted' with a note recorded from the client view; the list now says: "
              f"{meta(http.get('/').text)}")
    zh = http.get("/?lang=zh")
    out.print(f"in Chinese (?lang=zh or the browser's language): {meta(zh.text)}")
    out.print(f"try it: [bold]nba keys create --scope rm --rm {rm_id}[/bold], [bold]nba serve[/bold], then open "
              f"http://127.0.0.1:8000/ and sign in with that key")


def _demo_rm_list(home: Home, day) -> None:
    from serving.daily import read_day, rm_files

    d = read_day(home, day)
    listed = d[~d.control_group]
    rm_id = listed[listed.in_person].rm_id.value_counts().index[0]
    mine = listed[listed.rm_id == rm_id].sort_values(["in_person", "priority"], ascending=[False, False])
    t = RichTable("client", "action", "channel", "priority", "talking points",
                  title=f"{rm_id}'s list for {day} (first 5 of {len(mine)})")
    for r in mine.head(5).itertuples():
        t.add_row(r.customer_id, r.action_id + (" (RM review)" if r.rm_review else ""), r.channel,
                  f"{r.priority:,.1f}", r.talking_points.replace(" || ", "\n"))
    out.print(t)
    out.print(f"printable list: {rm_files(home, day)[rm_id]}")


def _show_states(home: Home) -> None:
    from feature_store.materialize import available_as_of, read_features

    df = read_features(home, available_as_of(home)[-1])
    t = RichTable("state", "value", "customers", "share", title="customer state")
    for col in ("lifecycle_stage", "complaint_state", "emotional_state"):
        counts = df[col].value_counts()
        for value, n in counts.items():
            t.add_row(col, str(value), f"{n:,}", f"{n / len(df):.1%}")
    out.print(t)
    out.print(f"health score: median {df.health_score.median():.1f}, "
              f"{(df.health_score < 50).mean():.1%} of clients below 50")


def main() -> None:
    try:
        app()
    except DataValidationError as e:
        err.print(f"[red]error:[/red] {plural(len(e.problems) + e.truncated, 'problem')}; nothing was stored")
        for p in sorted(e.problems, key=lambda p: (p.file, p.row or 0)):
            err.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        if e.truncated:
            err.print(f"  ... and {e.truncated} more")
        sys.exit(2)
    except NBAError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
