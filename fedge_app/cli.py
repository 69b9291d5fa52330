"""The ``fedge`` command line (typer): demo, agent, aggregator, broker, status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

from fedge.errors import ConfigError, FedgeError
from fedge.messages import RoundSummary
from fedge_app import maintenance_cli

if TYPE_CHECKING:
    from fedge.config import FedgeSettings

S = TypeVar("S", bound="FedgeSettings")

__all__ = ["app", "main"]

app = typer.Typer(
    name="fedge",
    help="Federated predictive maintenance over MQTT: edge agents train on their own "
    "machines' data, an aggregator combines their updates, Grafana watches the fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# Piped to a file or CI log, rich would wrap the summary table at 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=140)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (env vars and options override it).",
        exists=False,
        dir_okay=False,
    ),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker", "-b", help="Broker URL, mqtt://[user:pass@]host:port (mqtts:// for TLS)."
    ),
]
LogOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


def _fail(exc: FedgeError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def _wait_for_ctrl_c(stop: threading.Event) -> None:
    """Turn SIGTERM into a clean stop like Ctrl-C (systemd stops services with SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        stop.set()


def _load(
    cls: type[S],
    config: Path | None,
    broker: str | None,
    overrides: dict[str, Any],
    *,
    protocol: str | None = None,
) -> S:
    """Config from file, environment and options; ``--broker`` becomes the broker section."""
    from fedge.config import BrokerEndpoint, load_config

    if broker is not None:
        extra = {} if protocol is None else {"protocol": protocol}
        overrides = {**overrides, "broker": BrokerEndpoint.from_url(broker, **extra)}
    return load_config(cls, config, **overrides)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _rounds_table(rounds: list[RoundSummary], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.caption = "val RMSE: global model 'of' version on held-out units, in cycles"
    for col in (
        "round",
        "task",
        "result",
        "ver",
        "clients",
        "rej",
        "loss",
        "val RMSE",
        "of",
        "MB in",
        "s",
    ):
        table.add_column(
            col, justify="left" if col in ("task", "result") else "right", no_wrap=True
        )
    for r in rounds:
        evaluated = (
            (
                f"v{r.version - 1}"
                if r.task == "train" and r.outcome == "completed"
                else f"v{r.version}"
            )
            if r.val_error is not None
            else "-"
        )
        table.add_row(
            str(r.round_id),
            r.task,
            "ok" if r.outcome == "completed" else r.outcome,
            str(r.version),
            str(r.participants),
            str(r.rejected),
            _fmt(r.train_loss, ".4f"),
            _fmt(r.val_error),
            evaluated,
            f"{r.bytes_received / 1e6:.2f}",
            f"{r.duration_s:.1f}",
        )
    return table


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, max=500, help="Simulated devices.")] = 8,
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Federated training rounds.")] = 10,
    broker: BrokerOpt = None,
    summary_json: Annotated[
        Path | None, typer.Option("--summary-json", help="Write the summary as JSON here.")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Where stores and checkpoints go.")] = Path(
        "fedge-demo"
    ),
    seed: Annotated[int, typer.Option(help="Seed for the simulator and the model.")] = 0,
    iid: Annotated[
        bool, typer.Option("--iid/--non-iid", help="Identical or different sites.")
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, max=50, help="Local epochs per round.")] = 2,
    strategy: Annotated[str, typer.Option(help="Aggregation strategy.")] = "fedavg",
    model: Annotated[str, typer.Option(help="Model architecture: cnn or gru.")] = "cnn",
    fleet: Annotated[str, typer.Option(help="Fleet name (topic namespace).")] = "demo",
    influx_url: Annotated[
        str | None,
        typer.Option(help="Send telemetry to InfluxDB at this URL instead of the SQLite file."),
    ] = None,
    influx_bucket: Annotated[str, typer.Option(help="InfluxDB bucket (1.8: db/rp).")] = "fedge",
    influx_org: Annotated[str, typer.Option(help="InfluxDB organisation.")] = "-",
    influx_token: Annotated[
        str, typer.Option(help="InfluxDB token (1.8: user:password).", envvar="FEDGE_INFLUX_TOKEN")
    ] = "",
    log_level: LogOpt = "WARNING",
) -> None:
    """Run a simulated fleet end to end: broker, aggregator, ingestion and agents in one process.

    Telemetry, predictions and round metrics land in WORKDIR/fedge-telemetry.sqlite
    (or InfluxDB with --influx-url); an HTML report is written next to it.
    """
    from fedge_app.demo import DemoOptions, failure_figures, run_demo

    _setup_logging(log_level)
    seen: list[RoundSummary] = []
    options = DemoOptions(
        devices=devices,
        rounds=rounds,
        broker_url=broker,
        fleet=fleet,
        workdir=workdir,
        seed=seed,
        non_iid=not iid,
        epochs=epochs,
        strategy=strategy,
        model=model,
        influx_url=influx_url,
        influx_bucket=influx_bucket,
        influx_org=influx_org,
        influx_token=influx_token,
    )
    where = broker or "embedded broker"
    console.print(f"fedge demo: {devices} devices, {rounds} rounds, {strategy}, {where}")
    lives: list[Any] = []  # closed lives, appended on the agents' threads

    def view() -> Group:
        return Group(
            _rounds_table(seen, "rounds (live)"),
            maintenance_cli.lives_table(lives[-12:], "failures (live, latest 12)"),
        )

    with Live(view(), console=console, transient=True, refresh_per_second=4) as live:

        def on_round(summary: RoundSummary) -> None:
            seen.append(summary)
            live.update(view())

        def on_life(outcome: Any) -> None:
            lives.append(outcome)
            live.update(view())

        try:
            result = run_demo(options, on_round=on_round, on_life=on_life)
        except FedgeError as exc:
            raise _fail(exc) from exc
    out.print(_rounds_table(result.rounds, "fedge demo — summary"))
    v0, final = result.val_error_round0, result.val_error_final
    out.print(
        f"validation RMSE of the global model on held-out units: round 0 = {_fmt(v0)} cycles, "
        f"final (v{len(result.training_rounds)}) = {_fmt(final)} cycles"
    )
    out.print(maintenance_cli.lives_table(result.lives, "failures per device", per_device=True))
    out.print(maintenance_cli.lives_summary(failure_figures(result.lives)))
    if result.ingest is not None:
        stats = result.ingest
        where = influx_url or str(result.telemetry_path)
        out.print(
            f"telemetry: {stats.points_written} points written to {where}, "
            f"{stats.duplicates} duplicates dropped, {stats.rejected_total} rejected"
        )
    if result.report_path is not None:
        out.print(f"report: {result.report_path}")
    out.print(f"wall time {result.wall_s:.1f} s")
    if summary_json is not None:
        result.write_json(summary_json)
        out.print(f"summary written to {summary_json}")
    if result.agent_errors or v0 is None or final is None:
        console.print(f"[red]demo incomplete[/]: agent errors {result.agent_errors}")
        raise typer.Exit(code=1)


agent_app = typer.Typer(
    help="Run an edge agent (the options below), or inspect one: `fedge agent status`.",
    invoke_without_command=True,
)
app.add_typer(agent_app, name="agent")


@agent_app.callback()
def agent(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(help="Device id (unique in the fleet).")] = None,
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name.")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite store path.")] = None,
    history_units: Annotated[
        int, typer.Option(help="Simulated run-to-failure history to start from (simulated source).")
    ] = 8,
    seed: Annotated[int | None, typer.Option(help="Simulator seed.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Sensor source kind (simulated, csv, command, mqtt, modbus, opcua, cmapss or a "
            "plugin's); its options come from the [source] table of --config."
        ),
    ] = None,
    cmapss: Annotated[
        Path | None,
        typer.Option(help="Replay NASA C-MAPSS engines from this directory instead of simulating."),
    ] = None,
    subset: Annotated[str, typer.Option(help="C-MAPSS subset with --cmapss.")] = "FD001",
    engines: Annotated[
        str, typer.Option(help="With --cmapss: training engines first-last, history then live.")
    ] = "1-10",
    log_level: LogOpt = "INFO",
) -> None:
    """Run one edge agent until Ctrl-C or SIGTERM.

    The sensor source is the [source] table of --config (kind = "modbus", "opcua",
    "mqtt", "csv", "command", ... with its options; the fleet simulator by default), or
    with --cmapss a replay of C-MAPSS training engines: all but the last of --engines
    are history (run to failure), the last is streamed live as this device's machine.
    The [features] table maps the source's channels onto the fleet model's features.
    """
    if ctx.invoked_subcommand is not None:
        return  # `fedge agent status` etc.: the subcommand does the work
    from edge_agent.sources.base import BaseSource
    from edge_agent.sources.cmapss import cmapss_source
    from fedge.config import AgentConfig
    from fedge_app.wiring import agent_source, agent_transport, build_agent

    _setup_logging(log_level)
    try:
        overrides: dict[str, Any] = {
            "device": device,
            "fleet": fleet,
            "store_path": store,
            "seed": seed,
        }
        cfg = _load(AgentConfig, config, broker, overrides)
        source_: BaseSource
        if cmapss is not None:
            source_ = cmapss_source(cmapss, subset, engines)
        else:
            source_ = agent_source(cfg, kind=source)
        if source_.kind != "simulated":
            # Recorded sources hand over everything they have as history.
            history_units = len(source_.history(10_000))
        agent_ = build_agent(
            cfg,
            transport=agent_transport(cfg),
            source=source_,
            history_units=history_units,
        )
        stop = threading.Event()
        thread = threading.Thread(target=agent_.run, args=(stop,), name=cfg.device)
        thread.start()
        console.print(f"agent {cfg.device} on {cfg.broker.url}, fleet {cfg.fleet}; Ctrl-C stops")
        _wait_for_ctrl_c(stop)
        thread.join()
    except FedgeError as exc:
        raise _fail(exc) from exc


@agent_app.command("status")
def agent_status(
    store: Annotated[Path, typer.Option(help="The agent's SQLite store (read-only).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show what an agent's store knows, read-only and without a broker.

    Lives (units) and which ran to failure, the current unit, readings not yet sent,
    readings the broker acknowledged that ingest has not confirmed stored and how far
    its confirmations go, the last error and the model version the agent last used.
    """
    from edge_agent.store_status import read_store_status
    from fedge_app.status_views import store_lines, store_table

    try:
        status_ = read_store_status(store)
    except FedgeError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(status_.to_json(), indent=2))  # plain: machine output, no rich markup
        return
    out.print(store_table(status_))
    for line in store_lines(status_):
        out.print(line)


@app.command()
def aggregator(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name.")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Training rounds to run.")] = None,
    min_clients: Annotated[int | None, typer.Option(min=1, help="Quorum per round.")] = None,
    round_timeout: Annotated[float | None, typer.Option(help="Round deadline, seconds.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Aggregation strategy.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoint directory.")] = None,
    log_level: LogOpt = "INFO",
) -> None:
    """Run the aggregator: announce rounds, validate and combine updates, publish models."""
    from fedge.config import AggregatorConfig
    from fedge_app.wiring import aggregator_client_id, build_aggregator, mqtt_transport

    _setup_logging(log_level)
    try:
        overrides: dict[str, Any] = {
            "fleet": fleet,
            "rounds": rounds,
            "min_clients": min_clients,
            "round_timeout_s": round_timeout,
            "strategy": strategy,
            "checkpoint_dir": checkpoint_dir,
        }
        cfg = _load(AggregatorConfig, config, broker, overrides)
        service = build_aggregator(
            cfg,
            transport=mqtt_transport(
                cfg.broker, client_id=aggregator_client_id(cfg), clean_session=False
            ),
            on_round=lambda s: console.print(
                f"round {s.round_id} {s.task} {s.outcome}: {s.participants} participants, "
                f"val RMSE {_fmt(s.val_error)}"
            ),
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            history = service.run(stop=stop)
        except KeyboardInterrupt:
            history = service.history
        out.print(_rounds_table(history, "aggregator rounds"))
    except FedgeError as exc:
        raise _fail(exc) from exc


@app.command("status")
def fleet_status(
    broker: BrokerOpt = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.2, max=600, help="Seconds to wait for predictions.")
    ] = 3.0,
) -> None:
    """Show the fleet as the broker sees it: devices, models, health, predictions.

    Every device online or offline (its will), last seen, model version in use (and
    whether it runs the current global model), buffer depth, source health, last
    error, latest prediction and alert.

    Statuses, the global model and the round are retained (shown at once); predictions
    are shown if devices publish one within --timeout. --config takes an ingest config
    (its broker section, e.g. the TLS files of a provisioned fleet).
    """
    from broker.mqtt_transport import PahoTransport
    from fedge.config import IngestConfig
    from fedge_app.fleet_status import collect_fleet_status
    from fedge_app.status_views import fleet_table

    try:
        cfg = _load(IngestConfig, config, broker, {"fleet": fleet})
        client_id = f"{cfg.fleet}-status-{os.getpid()}-{int(time.time())}"
        # An unreachable broker is reported within the same bound as everything else.
        transport = PahoTransport(
            cfg.broker, client_id=client_id, connect_timeout=max(2.0, timeout)
        )
        snapshot = collect_fleet_status(transport, cfg.fleet, timeout=timeout)
    except FedgeError as exc:
        raise _fail(exc) from exc
    data = snapshot.to_json()
    if as_json:
        print(json.dumps(data, indent=2))  # plain: machine output, no rich markup
        return
    out.print(fleet_table(data, now=time.time()))
    if data["rejected"]:
        out.print(f"messages refused, by reason: {data['rejected']}")


@app.command()
def ingest(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name.")] = None,
    influx_url: Annotated[
        str | None,
        typer.Option(help="InfluxDB URL (http://host:8086); without it points go to SQLite."),
    ] = None,
    influx_bucket: Annotated[
        str | None, typer.Option(help="Bucket (InfluxDB 1.8: database/retention_policy).")
    ] = None,
    influx_org: Annotated[str | None, typer.Option(help="Organisation (2.x).")] = None,
    influx_token: Annotated[
        str | None,
        typer.Option(help="Token (1.8: user:password). Prefer FEDGE_INGEST_INFLUX_TOKEN."),
    ] = None,
    sqlite: Annotated[Path | None, typer.Option(help="SQLite file when no InfluxDB URL.")] = None,
    spool: Annotated[Path | None, typer.Option(help="Durable spool for InfluxDB outages.")] = None,
    shared_group: Annotated[
        str | None,
        typer.Option(help="MQTT 5 shared subscription group, to split load across processes."),
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="MQTT client id (default: fleet, group and this instance's id)."),
    ] = None,
    stored_acks: Annotated[
        bool | None,
        typer.Option(
            "--stored-acks/--no-stored-acks",
            help="Publish per-device stored-up-to watermarks (not with --shared-group).",
        ),
    ] = None,
    log_level: LogOpt = "INFO",
) -> None:
    """Ingest telemetry, predictions, status and round metrics into InfluxDB (or SQLite).

    Runs a persistent MQTT session and acknowledges each message only once it is
    stored durably, so a restarted ingest gets whatever the broker queued meanwhile.
    Each instance keeps its id in a file next to its spool: run each instance with
    its own --spool.
    """
    from aggregator.ingest_identity import IngestInstance
    from aggregator.telemetry import describe_sink
    from fedge.config import IngestConfig
    from fedge_app.wiring import build_ingest, ingest_transport

    _setup_logging(log_level)
    try:
        overrides: dict[str, Any] = {
            "fleet": fleet,
            "influx_url": influx_url,
            "influx_bucket": influx_bucket,
            "influx_org": influx_org,
            "influx_token": influx_token,
            "sqlite_path": sqlite,
            "spool_path": spool,
            "shared_group": shared_group,
            "client_id": client_id,
            "stored_acks": stored_acks,
        }
        # Shared subscriptions are an MQTT 5 feature.
        cfg = _load(IngestConfig, config, broker, overrides, protocol="5" if shared_group else None)
        with IngestInstance.acquire(cfg.instance_file) as instance:
            transport = ingest_transport(cfg, instance)
            service, sink = build_ingest(cfg, transport=transport)
            try:
                service.start()
                if not transport.wait_subscribed(15.0):
                    console.print("[yellow]warning:[/] subscriptions not confirmed yet")
                resumed = "resumed" if transport.session_present else "new"
                console.print(
                    f"ingesting fleet {cfg.fleet} from {cfg.broker.url} into "
                    f"{describe_sink(cfg)} as client {transport.client_id} ({resumed} "
                    "session); Ctrl-C stops"
                )
                _wait_for_ctrl_c(threading.Event())
            finally:
                service.stop()
                sink.close()
        stats = service.stats
        console.print(
            f"received {stats.received}, points written {stats.points_written}, duplicates "
            f"{stats.duplicates}, acknowledged {stats.acked}, left to the broker "
            f"{stats.deferred}, rejected {dict(stats.rejected)}"
        )
    except FedgeError as exc:
        raise _fail(exc) from exc


# Maintenance (fedge_app/maintenance_cli.py): `fedge agent event`, `fedge backtest`.
agent_app.command("event")(maintenance_cli.event)
app.command("backtest")(maintenance_cli.backtest)

dashboards_app = typer.Typer(help="Grafana dashboards built from code.", no_args_is_help=True)
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("export")
def dashboards_export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write dashboards into.")],
) -> None:
    """Write the dashboards and Grafana provisioning files (datasource, provider) to OUT_DIR."""
    from dashboards import export_dashboards

    written = export_dashboards(out_dir)
    for path in written:
        out.print(str(path))


broker_app = typer.Typer(
    help="The MQTT broker: run it, or provision a secure fleet (CA, certificates, ACL, keys).",
    invoke_without_command=True,
)
app.add_typer(broker_app, name="broker")


@broker_app.callback()
def broker_cmd(
    ctx: typer.Context,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Run the pure-Python amqtt broker in-process.")
    ] = False,
    host: Annotated[str, typer.Option(help="Bind address for --embedded.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for --embedded.")] = 1883,
    config: Annotated[
        Path | None,
        typer.Option(help="mosquitto.conf to use (a provisioned DIR/mosquitto.conf for a fleet)."),
    ] = None,
    log_level: LogOpt = "INFO",
) -> None:
    """Run an MQTT broker: the embedded one (demo) or Mosquitto with fedge's config.

    Without --config, Mosquitto gets fedge's loopback-only demo config; a real fleet
    runs the config that `fedge broker provision` wrote.
    """
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(log_level)
    if embedded:
        from broker.embedded import EmbeddedBroker

        try:
            broker_ = EmbeddedBroker(host=host, port=port).start()
        except FedgeError as exc:
            raise _fail(exc) from exc
        console.print(f"embedded broker on {broker_.url}; Ctrl-C stops")
        stop = threading.Event()
        _wait_for_ctrl_c(stop)
        broker_.stop()
        return
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        console.print(
            "[red]mosquitto is not installed[/]: apt-get install -y mosquitto, or use --embedded"
        )
        raise typer.Exit(code=2)
    conf = config or Path(__file__).resolve().parent.parent / "broker" / "mosquitto.conf"
    console.print(f"exec {binary} -c {conf}")
    proc = subprocess.run([binary, "-c", str(conf)], check=False)  # noqa: S603
    raise typer.Exit(code=proc.returncode)


def _split_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


@broker_app.command("provision")
def broker_provision(
    directory: Annotated[Path, typer.Argument(help="Directory to write the fleet's files into.")],
    fleet: Annotated[str, typer.Option(help="Fleet name.")],
    devices: Annotated[str, typer.Option(help="Device ids, comma-separated.")],
    auth: Annotated[
        str, typer.Option(help="How clients log in: cert (client certificates) or password.")
    ] = "cert",
    host: Annotated[str, typer.Option(help="Broker host name or IP the clients use.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TLS listener port.")] = 8883,
    bind: Annotated[str | None, typer.Option(help="Listener bind address.")] = None,
    san: Annotated[
        list[str] | None, typer.Option(help="Extra server certificate names (repeatable).")
    ] = None,
    ingest_workers: Annotated[
        int, typer.Option(min=1, max=64, help="Ingest identities (one per process).")
    ] = 1,
    broker_user: Annotated[
        str | None, typer.Option(help="System user Mosquitto runs as (e.g. mosquitto).")
    ] = None,
) -> None:
    """Provision a secure fleet: CA, server and client certificates (or passwords), an
    Ed25519 signing key per device and for the aggregator, the ACL, a TLS-only Mosquitto
    config without anonymous access, and one client config per identity."""
    from broker.provision import provision_fleet

    if auth not in ("cert", "password"):
        raise _fail(ConfigError(f"--auth must be cert or password, got {auth!r}"))
    try:
        fleet_ = provision_fleet(
            directory,
            fleet=fleet,
            devices=_split_names(devices),
            broker_host=host,
            broker_port=port,
            auth="cert" if auth == "cert" else "password",
            server_names=tuple(san or ()),
            bind_address=bind,
            ingest_workers=ingest_workers,
            broker_user=broker_user,
        )
    except FedgeError as exc:
        raise _fail(exc) from exc
    out.print(f"fleet {fleet_.fleet} provisioned in {fleet_.directory}")
    out.print(f"  broker:  fedge broker --config {fleet_.mosquitto_conf}")
    for name, files in fleet_.identities.items():
        out.print(f"  {files.role:<10} {name:<20} {files.config_file}")


@broker_app.command("add-device")
def broker_add_device(
    directory: Annotated[Path, typer.Argument(help="A provisioned fleet directory.")],
    device: Annotated[str, typer.Argument(help="The new device id.")],
) -> None:
    """Add one device to a provisioned fleet (certificate or password, keys, ACL, config)."""
    from broker.provision import add_device

    try:
        fleet_ = add_device(directory, device)
    except FedgeError as exc:
        raise _fail(exc) from exc
    out.print(f"added {device}: {fleet_.identities[device].config_file}")
    out.print("reload the broker (SIGHUP) so its ACL and password file include it")


@broker_app.command("revoke-device")
def broker_revoke_device(
    directory: Annotated[Path, typer.Argument(help="A provisioned fleet directory.")],
    device: Annotated[str, typer.Argument(help="The device id to lock out.")],
) -> None:
    """Revoke one device: certificate on the CRL, password and ACL removed, key unregistered."""
    from broker.provision import revoke_device

    try:
        revoke_device(directory, device)
    except FedgeError as exc:
        raise _fail(exc) from exc
    out.print(f"revoked {device}; reload the broker (SIGHUP) to lock it out")


def main() -> None:
    """Console-script entry point."""
    started = time.monotonic()
    try:
        app()
    finally:
        logging.getLogger(__name__).debug("fedge ran %.1fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
