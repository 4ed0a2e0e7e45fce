"""`tritonrag render`, `serve` and `demo`: render the model repository from a deployment spec and run Triton on it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from tritonrag.cli.app import app, console
from tritonrag.settings import load_settings

DEMO_QUESTIONS = (
    "Describe the body of water in Utah",
    "Tell me as much as you can about the robbery",
    "Did Phileas Fogg really rob the bank?",
)


def _repository(path: Path | None) -> Path:
    """The repository to serve: ``path``, else the default CPU deployment's (rendered first outside a checkout)."""
    from tritonrag.deploy.render import checkout_repository, default_plan, default_repository, render_repository

    if path is None:
        path = default_repository(load_settings())
        if checkout_repository() is None:
            render_repository(load_settings(), path, plan=default_plan(load_settings()))
    if not (path / "rag" / "config.pbtxt").exists():
        raise typer.BadParameter(f"{path} is not a tritonrag model repository; render one with `tritonrag render "
                                 "--output DIR`, or pass --model-repository")
    return path


SpecPath = Annotated[Path | None, typer.Option(
    "--spec", help="Deployment spec (YAML); default: the CPU spec, deploy/specs/cpu.yaml. Examples in deploy/specs/.")]


DetectGpus = Annotated[bool, typer.Option(
    "--detect-gpus", help="Place on this machine's GPUs (nvidia-smi) instead of the spec's inventory.")]


def _plan(spec: Path | None, detect_gpus: bool = False):
    from tritonrag.deploy.plan import load_plan
    from tritonrag.deploy.render import default_plan
    from tritonrag.deploy.spec import SpecError

    try:
        if spec is None and detect_gpus:
            raise SpecError("--detect-gpus needs --spec: the default CPU spec places nothing on GPUs")
        return load_plan(spec, load_settings(), use_machine_gpus=detect_gpus) if spec else default_plan(load_settings())
    except (SpecError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _print_plan(plan, spec: Path | None) -> None:
    from rich.table import Table

    from tritonrag.deploy.plan import gpu_rows, plan_rows

    gpus = ", ".join(f"{g.index}: {g.memory_gib:g} GiB" for g in plan.gpus) or "none (CPU only)"
    table = Table(title=f"Plan for {spec or 'the default CPU spec'} (GPUs {gpus})")
    for column in ("component", "instances", "where", "share/GPU", "memory cap", "Triton instance_group",
                   "settings"):
        table.add_column(column, overflow="fold")
    for row in plan_rows(plan):
        table.add_row(*row)
    console.print(table)
    if plan.gpus:
        per_gpu = Table(title="Per GPU")
        for column in ("GPU", "memory", "shares", "capped", "instances"):
            per_gpu.add_column(column, overflow="fold")
        for row in gpu_rows(plan):
            per_gpu.add_row(*row)
        console.print(per_gpu)
    generators = plan.spec.generator_models()
    if len(generators) > 1:
        models = ", ".join(f"{name} ({model or 'the [generator] model'})" for name, model in generators.items())
        console.print(f"Generators: {models}; each its own Triton model with the generator's inputs and outputs.",
                      markup=False, highlight=False)
    low, high = plan.replicas
    console.print(f"Cluster: {low} to {high if high is not None else 'any number of'} replicas of this server "
                  "(from min_instances/max_instances).")
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
def render(
    spec: SpecPath = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "--model-repository", help="Repository to write (default: model_repository/ of this checkout, else "
        "$TRITONRAG_HOME/repositories/cpu).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the placement plan as a table; write nothing.")] = False,
    check: Annotated[bool, typer.Option(help="Only report files that differ; exit 1 if any.")] = False,
    detect_gpus: DetectGpus = False,
) -> None:
    """Render the model repository from a deployment spec and the settings (defaults + $TRITONRAG_CONFIG).

    Examples:
      tritonrag render --spec deploy/specs/gpu-8.yaml --dry-run
      tritonrag render --spec deploy/specs/cpu-two-generators.yaml --dry-run   # a second, small generator
      tritonrag render --spec deploy/specs/gpu-1.yaml --output /srv/tritonrag-repo
      tritonrag render --check      # is model_repository/ the rendering of the default CPU spec?
    """
    from tritonrag.deploy.render import default_repository, render_repository

    plan = _plan(spec, detect_gpus)
    if dry_run:
        _print_plan(plan, spec)
        return
    target = output or default_repository(load_settings())
    differing = render_repository(load_settings(), target, check=check, plan=plan)
    for path in differing:
        console.print(f"{'differs' if check else 'wrote'}: {path}")
    if check and differing:
        raise typer.Exit(1)
    if not check:
        console.print(f"{target} is the rendering of {spec or 'the default CPU spec'}")


def _render_spec(spec: Path, detect_gpus: bool) -> Path:
    from tritonrag.deploy.render import render_repository

    plan = _plan(spec, detect_gpus)
    _print_plan(plan, spec)
    target = load_settings().home / "repositories" / spec.stem
    render_repository(load_settings(), target, plan=plan)
    console.print(f"rendered {spec} into {target}")
    return target


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_server(model_repository: Path | None, http_port: int | None, grpc_port: int | None,
                  metrics_port: int | None, host: str = "127.0.0.1"):
    from tritonrag.deploy.server import Ports, TritonServer

    settings = load_settings()
    ports = Ports.choose(http_port or settings.server.http_port, grpc_port or settings.server.grpc_port,
                         metrics_port or settings.server.metrics_port)
    server = TritonServer(_repository(model_repository), settings.home, ports, address=host)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops Triton as cleanly as Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (`serve &`)
    with console.status(f"starting Triton (models loading; log: {server.log_file})..."):
        started = time.monotonic()
        server.start(settings.server.startup_timeout_s)
    console.print(f"Triton ready in {time.monotonic() - started:.0f}s: HTTP {server.http_url}, "
                  f"gRPC {server.grpc_url}, metrics {server.metrics_url}")
    return server


@app.command()
def serve(
    model_repository: Annotated[Path | None, typer.Option(help="Model repository to serve.")] = None,
    http_port: Annotated[int | None, typer.Option()] = None,
    grpc_port: Annotated[int | None, typer.Option()] = None,
    metrics_port: Annotated[int | None, typer.Option()] = None,
    host: Annotated[str, typer.Option(help="Triton's address for HTTP and gRPC (0.0.0.0 to serve other hosts: its "
                                      "admin and model-control APIs are then restricted).")] = "127.0.0.1",
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Render this deployment spec into $TRITONRAG_HOME/repositories/<name> and serve that.")] = None,
    detect_gpus: DetectGpus = False,
    with_ingress: Annotated[bool, typer.Option(
        "--ingress/--no-ingress", help="Also run the OpenAI-compatible ingress (\\[ingress] settings).")] = True,
    ingress_host: Annotated[str | None, typer.Option(help="The ingress's address (default: \\[ingress] host).")] = None,
    ingress_port: Annotated[int | None, typer.Option(help="The ingress's port (default: \\[ingress] port).")] = None,
    health_port: Annotated[int | None, typer.Option(
        help="The supervisor's readiness port, /health/ready (default: \\[server] health_port).")] = None,
) -> None:
    """Run Triton on the model repository, and the ingress in front of it, until Ctrl-C.

    A supervisor keeps them whole (\\[server] supervise): a model whose stub died is unloaded and loaded again, a
    dead tritonserver or ingress is restarted, with backoff; its readiness for load balancers and probes is
    http://HOST:8003/health/ready (\\[server] health_port).

    Examples:
      tritonrag serve, then: tritonrag ask "Who is Passepartout?"  or  http://127.0.0.1:8080/ (the chat page)
      tritonrag serve --ingress-host 0.0.0.0      # the OpenAI API for other hosts (set API keys), Triton private
      tritonrag serve --spec deploy/specs/gpu-1.yaml --detect-gpus --host 0.0.0.0 --no-ingress
    """
    if spec is not None:
        if model_repository is not None:
            raise typer.BadParameter("give --spec or --model-repository, not both")
        model_repository = _render_spec(spec, detect_gpus)
    server = _start_server(model_repository, http_port, grpc_port, metrics_port, host)
    front = health = None
    try:
        supervisor, health = _supervisor(server, health_port)
        if with_ingress:
            front = _start_ingress(server, ingress_host, ingress_port,
                                   health and f"http://127.0.0.1:{health.port}/health/ready")
        _supervise(server, front, supervisor)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        if health is not None:
            health.stop()
        if front is not None:
            front.stop()
        server.stop()


def _port_or_free(port: int, what: str) -> int:
    """``port`` if free, else a free one (said on the console)."""
    from tritonrag.deploy.server import free_port, port_is_free

    if port_is_free(port):
        return port
    new = free_port()
    console.print(f"[yellow]{what} port {port} is busy; using {new}[/yellow]")
    return new


def _supervisor(server, health_port: int | None):
    """The supervisor of ``server`` and its readiness endpoint (None, None when [server] supervise is off)."""
    from tritonrag.deploy.server import LOOPBACK, admin_key
    from tritonrag.deploy.supervisor import Backoff, HealthServer, ModelControl, Supervisor

    config = load_settings().server
    if not config.supervise:
        return None, None

    def report(event) -> None:
        colour = "green" if event.what.endswith(("restored", "restarted")) else "red"
        console.print(f"[{colour}]{event.what}[/{colour}] {event.target}: {event.detail}", highlight=False)

    key = None if server.address in LOOPBACK else admin_key(server.home)
    supervisor = Supervisor(server, ModelControl(server.http_url, key),
                            startup_timeout_s=config.startup_timeout_s, on_event=report,
                            backoff=lambda: Backoff(config.restart_backoff_s, config.restart_backoff_max_s))
    health = HealthServer(supervisor, _port_or_free(health_port or config.health_port, "health"),
                          server.address).start()
    console.print(f"supervising: readiness at http://{server.http_url.split(':')[0]}:{health.port}/health/ready",
                  highlight=False)
    return supervisor, health


def _supervise(server, front, supervisor) -> None:
    """Until Ctrl-C: restore what breaks (``supervisor``), or, without one, exit when a process dies."""
    config = load_settings().server
    if supervisor is None:
        while server.process is not None and server.process.poll() is None:
            if front is not None and front.process is not None and front.process.poll() is not None:
                console.print(f"[red]the ingress exited[/red]; see {front.log_file}")
                raise typer.Exit(1)
            time.sleep(1)
        console.print(f"[red]tritonserver exited[/red]; see {server.log_file}")
        raise typer.Exit(1)
    supervisor.ingress = front
    supervisor.run(config.health_interval_s)


def _start_ingress(server, host: str | None, port: int | None, triton_health: str | None = None):
    """The ingress on the Triton just started; a busy port is replaced by a free one (logged)."""
    from tritonrag.deploy.ingress_process import IngressProcess

    config = load_settings().ingress
    port = _port_or_free(port or config.port, "ingress")
    front = IngressProcess(server.grpc_url, port, load_settings().home, host or config.host, config.workers,
                           extra_args=("--triton-health", triton_health) if triton_health else (),
                           log_file=load_settings().home / "logs" / f"ingress-{port}.log")
    with console.status(f"starting the ingress (log: {front.log_file})..."):
        front.start()
    console.print(f"ingress ready: OpenAI API {front.url}/v1, chat page {front.url}/", markup=False, highlight=False)
    return front


@app.command()
def demo(
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    model_repository: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Start Triton, stream answers to the original demo's three questions with their sources, stop."""
    from tritonrag_client import RagAnswer, RagClient
    from tritonrag_client.cli import print_sources

    server = _start_server(model_repository, None, None, None)
    try:
        client = RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
        for question in DEMO_QUESTIONS:
            console.rule(f"[bold]{question}")
            answer, started, first = RagAnswer(), time.monotonic(), None
            for event in client.stream(question):
                if event.text and first is None:
                    first = time.monotonic() - started
                answer.add(event)
                console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            print_sources(answer.sources, answer.citations)
            console.print(f"[dim]first token {first or 0:.2f}s, total {time.monotonic() - started:.2f}s, "
                          f"finish: {answer.finish_reason}[/dim]")
    finally:
        server.stop()
