"""The deployment files under ``deploy/`` parse and name only real metrics, commands and ports.

Nothing here runs Docker, Kubernetes or a broker: these checks read the files and hold them
against Kourier's own parser, metrics registry, settings and topic names.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import streams.http.ingress
import streams.kafka.offsets
import streams.kafka.worker
import streams.metrics
from streams.cli import build_parser
from streams.kafka import broker
from streams.metrics import LoopCounter, LoopHistogram
from streams.settings import Settings
from streams.wire.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "kourier.json"
IMAGE_DOCKERFILE = "deploy/Dockerfile"

#: The metrics the README and DESIGN.md §8 promise, with their labels.
DOCUMENTED_METRICS = {
    "kourier_invocations": {"service", "handler", "outcome"},
    "kourier_invocation_seconds": {"service", "handler"},
    "kourier_handler_seconds": {"service", "handler"},
    "kourier_retries": {"service", "handler"},
    "kourier_paused": {"service"},
    "kourier_deadletters": {"reason"},
    "kourier_inbox_depth": {"partition"},
    "kourier_consumer_lag": {"topic", "partition"},
    "kourier_pending_timers": {"partition"},
    "kourier_delay_carried": set(),
    "kourier_partition_stalled_seconds": {"topic", "partition"},
    "kourier_deadlocks": set(),
    "kourier_ingress_requests": {"kind", "status"},
    "kourier_ingress_request_seconds": {"kind"},
    "kourier_ingress_in_flight": set(),
}

#: The series a family of each type exposes (a counter's family name has no ``_total``).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


# -- reading the files -------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict[str, Any]:
    (compose,) = _documents(DEPLOY / "docker-compose.yml")
    return compose


def _k8s() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


def _kourier_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the image built from deploy/Dockerfile."""
    return {
        name: service
        for name, service in _compose()["services"].items()
        if service.get("build", {}).get("dockerfile") == IMAGE_DOCKERFILE
    }


def _pod_containers() -> list[tuple[str, dict[str, Any]]]:
    """(object name, container) for every container in deploy/k8s that runs Kourier's image."""
    found = []
    for doc in _k8s():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if container["image"].split("/")[-1].startswith("kourier:"):
                found.append((doc["metadata"]["name"], container))
    return found


def _kourier_commands() -> list[tuple[str, list[str]]]:
    """Every ``kourier ...`` argument list in docker-compose.yml and deploy/k8s."""
    commands = [(f"compose {name}", s["command"]) for name, s in _kourier_services().items()]
    for name, container in _pod_containers():
        assert container.get("command", ["kourier"]) == ["kourier"], name
        commands.append((f"k8s {name}", container["args"]))
    return commands


def _parse(source: str, argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{source}: `kourier {' '.join(argv)}` does not parse")


# -- the metrics Kourier registers -------------------------------------------------------


def _registered() -> dict[str, str]:
    """Kourier's metric families in the default registry: family name -> type."""
    return {f.name: f.type for f in REGISTRY.collect() if f.name.startswith("kourier_")}


def _series() -> dict[str, str]:
    """Every series name Kourier can expose -> its family (the worker's lock-free
    families have no ``_created`` series)."""
    lock_free = {
        value.name
        for value in vars(streams.metrics).values()
        if isinstance(value, LoopCounter | LoopHistogram)
    }
    return {
        family + suffix: family
        for family, kind in _registered().items()
        for suffix in _SUFFIXES[kind]
        if not (family in lock_free and suffix == "_created")
    }


def _labels() -> dict[str, frozenset[str]]:
    """Label names per family, from the metric objects the two modules define."""
    found = {}
    for module in (streams.metrics, streams.http.ingress):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                (family,) = value.describe()
                # prometheus_client has no public accessor for a metric's label names.
                found[family.name] = frozenset(value._labelnames)
            elif isinstance(value, LoopCounter | LoopHistogram):
                found[value.name] = frozenset(value.labelnames)
    return found


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legend) for every query in the dashboard, variables included."""
    dashboard = _dashboard()
    queries = [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries.append((f"variable {variable['name']}", text, ""))
    return queries


# -- files parse -------------------------------------------------------------------------


def test_the_deployment_files_exist() -> None:
    expected = [
        "Dockerfile",
        "docker-compose.yml",
        "README.md",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/kourier.json",
        "k8s/namespace.yaml",
        "k8s/config.yaml",
        "k8s/topics-job.yaml",
        "k8s/worker.yaml",
        "k8s/worker-scaling.yaml",
        "k8s/ingress.yaml",
    ]
    missing = [name for name in expected if not (DEPLOY / name).is_file()]
    assert not missing


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_into_mappings(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents)


def test_every_k8s_object_names_its_kind_and_namespace() -> None:
    for doc in _k8s():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "kourier", doc["metadata"]["name"]


def test_the_dockerfile_installs_the_repository_and_runs_kourier() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["kourier"]' in instructions
    assert any(re.match(r"RUN pip install \.( |$)", line) for line in instructions)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(instructions), re.M))
    for line in instructions:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source)
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    assert 'kourier = "streams.cli:main"' in (ROOT / "pyproject.toml").read_text()


# -- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_is_json_with_panels_and_queries() -> None:
    dashboard = _dashboard()
    charts = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(charts) >= 10
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in charts:
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]


def test_kourier_registers_the_documented_metrics() -> None:
    assert _registered().keys() == DOCUMENTED_METRICS.keys()
    assert {name: set(labels) for name, labels in _labels().items()} == DOCUMENTED_METRICS
    kinds = _registered()
    assert kinds["kourier_invocation_seconds"] == "histogram"
    assert kinds["kourier_handler_seconds"] == "histogram"
    assert kinds["kourier_ingress_request_seconds"] == "histogram"


def _check_query(title: str, expr: str) -> set[str]:
    """Fail unless ``expr`` queries Kourier metrics that exist, by labels they have; the
    labels it groups by."""
    series, labels = _series(), _labels()
    names = re.findall(r"\bkourier_\w+", expr)
    assert names, f"{title}: {expr!r} queries no Kourier metric"
    unknown = [name for name in names if name not in series]
    assert not unknown, f"{title}: {unknown} are not metrics Kourier registers"
    known = set().union(*(labels[series[name]] for name in names))
    if any(name.endswith("_bucket") for name in names):
        known.add("le")
    grouped = {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }
    matched = {
        label
        for selector in re.findall(r"\{([^}]*)\}", expr)
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)
    }
    assert grouped | matched <= known, f"{title}: labels {(grouped | matched) - known}"
    return grouped


def test_the_dashboard_queries_only_real_metrics_and_labels() -> None:
    for title, expr, legend in _queries():
        grouped = _check_query(title, expr)
        in_legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert in_legend <= grouped, f"{title}: legend {legend!r} uses labels it drops"


def test_the_dashboard_charts_every_kourier_metric() -> None:
    series = _series()
    charted = {
        series[name] for _, expr, _ in _queries() for name in re.findall(r"kourier_\w+", expr)
    }
    assert charted == _registered().keys()


def test_histograms_are_charted_as_quantiles_over_buckets() -> None:
    histograms = {name for name, kind in _registered().items() if kind == "histogram"}
    for family in histograms:
        exprs = [expr for _, expr, _ in _queries() if f"{family}_bucket" in expr]
        assert exprs, f"{family}: no histogram_quantile over its buckets"
        for quantile in ("0.5", "0.99"):
            assert any(f"histogram_quantile({quantile}," in e for e in exprs), (family, quantile)


def _alerts() -> list[dict[str, Any]]:
    (rules,) = _documents(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_the_alerts_query_only_real_metrics_and_name_only_labels_they_keep() -> None:
    alerts = _alerts()
    assert {rule["alert"] for rule in alerts} >= {"KourierPartitionStalled", "KourierDeadlock"}
    for rule in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        grouped = _check_query(rule["alert"], rule["expr"])
        text = " ".join(rule["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", text))
        assert used <= grouped, f"{rule['alert']}: annotations use labels it drops"
        for command in re.findall(r"`kourier ([^`]+)`", text):
            argv = re.sub(r"\{\{[^}]*\}\}", "x", command).split()
            _parse(rule["alert"], argv)


def test_prometheus_loads_the_alerts_that_compose_mounts() -> None:
    (config,) = _documents(DEPLOY / "prometheus" / "prometheus.yml")
    mounts = _compose()["services"]["prometheus"]["volumes"]
    for name in config["rule_files"]:
        assert (DEPLOY / "prometheus" / name).is_file(), name
        assert f"./prometheus/{name}:/etc/prometheus/{name}:ro" in mounts, name


def _threshold_color(steps: list[dict[str, Any]], value: float) -> str:
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return str(color)


def test_the_deadlock_stat_is_red_when_there_is_one() -> None:
    (panel,) = [
        p
        for p in _dashboard()["panels"]
        if any("kourier_deadlocks" in t["expr"] for t in p.get("targets", []))
    ]
    assert panel["type"] == "stat"
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert _threshold_color(steps, 0) != "red"
    assert _threshold_color(steps, 1) == "red"


# -- commands, ports and names -------------------------------------------------------------


def test_every_kourier_command_parses_and_its_module_exists() -> None:
    commands = _kourier_commands()
    for where in ("compose", "k8s"):
        used = {argv[0] for source, argv in commands if source.startswith(where)}
        assert {"topics", "worker", "ingress"} <= used, where
    for source, argv in commands:
        args = _parse(source, argv)
        if args.command == "worker":
            module = args.module.split(":")[0]
            assert importlib.util.find_spec(module) is not None, f"{source}: no {module}"


def test_compose_workers_host_handlers_the_image_contains() -> None:
    for name, service in _kourier_services().items():
        args = _parse(name, service["command"])
        if args.command == "worker":
            handlers = service["build"]["args"]["HANDLERS"]
            assert args.module.split(".")[0] == handlers


def _listening(service: dict[str, Any], source: str) -> dict[int, str]:
    """Port -> interface that a compose service's Kourier process listens on."""
    args = _parse(source, service["command"])
    if args.command == "worker" and args.metrics_port is not None:
        return {args.metrics_port: args.metrics_host}
    if args.command == "ingress":
        return {args.port: args.host, args.admin_port: args.host}
    return {}


def _declared(service: dict[str, Any]) -> set[int]:
    """Container ports a compose service declares (expose, and the container side of ports)."""
    exposed = {int(str(port)) for port in service.get("expose", [])}
    published = {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}
    return exposed | published


def test_prometheus_scrapes_exactly_the_ports_kourier_listens_on() -> None:
    (config,) = _documents(DEPLOY / "prometheus" / "prometheus.yml")
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
    services = _kourier_services()
    listening = {
        (name, port): host
        for name, service in services.items()
        for port, host in _listening(service, name).items()
    }
    assert targets == listening.keys()
    for (name, port), host in listening.items():
        assert host == "0.0.0.0", f"{name} listens on {host}:{port}, unreachable from Prometheus"
        assert port in _declared(services[name]), f"{name} does not expose {port}"
    worker_jobs = [j for j in config["scrape_configs"] if j.get("dns_sd_configs")]
    assert [d["names"] for j in worker_jobs for d in j["dns_sd_configs"]] == [["worker"]]


def test_grafana_reads_the_compose_prometheus_and_the_dashboard() -> None:
    compose = _compose()["services"]
    (datasources,) = _documents(DEPLOY / "grafana" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose
    assert int(port) in _declared(compose[host])
    mounts = dict(volume.split(":")[:2] for volume in compose["grafana"]["volumes"])
    for local in mounts:
        assert (DEPLOY / local).exists(), f"grafana mounts {local}, which does not exist"
    (providers,) = _documents(DEPLOY / "grafana" / "dashboards" / "kourier.yml")
    folder = providers["providers"][0]["options"]["path"]
    assert mounts["./grafana/kourier.json"] == f"{folder}/kourier.json"
    prometheus_mounts = compose["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts


def _read_by_kourier() -> set[str]:
    """``KOURIER_*`` variable names that appear as string literals in streams/."""
    return {
        name
        for path in (ROOT / "streams").glob("*.py")
        for name in re.findall(r"[\"'](KOURIER_[A-Z_]+)[\"']", path.read_text())
    }


def test_every_kourier_variable_set_is_one_kourier_reads() -> None:
    settings: dict[str, Any] = {}
    for service in _kourier_services().values():
        settings |= service.get("environment", {})
    settings |= _k8s_object("ConfigMap", "kourier-config")["data"]
    settings |= _k8s_object("Secret", "kourier-secrets")["stringData"]
    known = _read_by_kourier()
    for name in settings:
        assert name.startswith("KOURIER_KAFKA_") or name in known, f"Kourier never reads {name}"
    assert {"KOURIER_BOOTSTRAP_SERVERS", "KOURIER_NAMESPACE", "KOURIER_TOKEN"} <= known


def test_keda_scales_the_workers_group_on_its_ingress_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _k8s_object("ConfigMap", "kourier-config")["data"]
    namespace = config["KOURIER_NAMESPACE"]
    # The group id the worker really uses: build its consumer config without Kafka.
    configs: list[dict[str, Any]] = []
    monkeypatch.setattr(streams.kafka.offsets, "Consumer", configs.append)
    streams.kafka.worker.Worker(Settings(namespace=namespace), [])._new_consumer()
    (consumer,) = configs
    group = consumer["group.id"]
    scaled = _k8s_object("ScaledObject", "kourier-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == group == f"{namespace}.workers"
    assert trigger["metadata"]["topic"] == Topics(namespace).ingress
    assert trigger["metadata"]["bootstrapServers"] == config["KOURIER_BOOTSTRAP_SERVERS"]
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    assert scaled["spec"]["scaleTargetRef"]["name"] == "kourier-worker"
    _k8s_object("Deployment", "kourier-worker")
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] <= int(config["KOURIER_PARTITIONS"])


def _container(name: str) -> dict[str, Any]:
    (container,) = [c for owner, c in _pod_containers() if owner == name]
    return container


def _port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_k8s_worker_ports_probe_and_grace_period() -> None:
    deployment = _k8s_object("Deployment", "kourier-worker")
    container = _container("kourier-worker")
    args = _parse("k8s worker", container["args"])
    assert args.metrics_host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [args.metrics_port]
    assert _port(container, container["readinessProbe"]) == args.metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("name", ["kourier-worker", "kourier-ingress"])
def test_k8s_pods_have_a_writable_temporary_directory_for_their_spills(name: str) -> None:
    """The root filesystem is read-only, and each partition's spill (streams/engine/spill.py)
    and the admin index's (streams/http/index_spill.py) write an unlinked SQLite file to the
    first writable of SQLITE_TMPDIR, TMPDIR, /var/tmp, /usr/tmp, /tmp (both commands check
    at start): the manifest names the directory, and mounts a volume on disk there."""
    deployment = _k8s_object("Deployment", name)
    container = _container(name)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    tmpdir = env.get("SQLITE_TMPDIR") or env.get("TMPDIR")
    assert tmpdir, "the spill's directory is left to SQLite's search"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert tmpdir in mounts, f"nothing writable is mounted at {tmpdir}"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    empty_dir = volumes[mounts[tmpdir]]["emptyDir"]
    assert (empty_dir or {}).get("medium") != "Memory", "a tmpfs holds the spill in memory"


def test_k8s_ingress_ports_probes_and_service() -> None:
    container = _container("kourier-ingress")
    args = _parse("k8s ingress", container["args"])
    assert args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert sorted(ports.values()) == sorted([args.port, args.admin_port])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert _port(container, container[probe]) == args.port
    service = _k8s_object("Service", "kourier-ingress")
    exposed = {
        p["port"]: ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]
    }
    assert exposed == {args.port: args.port, args.admin_port: args.admin_port}
    deployment = _k8s_object("Deployment", "kourier-ingress")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_a_single_broker_stops_without_a_controlled_shutdown_and_a_cluster_with_one(
    tmp_path: Path,
) -> None:
    """Kafka 4.4's controlled shutdown of a partition's only replica sets its leader to none
    while the broker still runs, and a transaction committing then is completed without its
    markers (KAFKA-20734): a hanging transaction that stops read_committed readers for good.
    A single node has nobody to hand its leaderships to, so it skips that step; a cluster
    keeps it, to move leaderships before its nodes stop."""
    broker._write_nodes([tmp_path / "one"], [0], broker.DEPLOY_DIR)
    single = _properties(tmp_path / "one" / "server.properties")
    assert single["controlled.shutdown.enable"] == "false"
    nodes = [tmp_path / f"n{i}" for i in range(3)]
    broker._write_nodes(nodes, [0, 0, 0], broker.DEPLOY_DIR)
    for node in nodes:
        assert _properties(node / "server.properties")["controlled.shutdown.enable"] == "true"


def test_a_single_broker_s_existing_properties_gain_the_setting_and_keep_their_ports(
    tmp_path: Path,
) -> None:
    """A data directory written before the setting existed (its broker restarts with the
    ports it has) gets the line once; nothing else in the file changes."""
    broker._write_nodes([tmp_path], [0], broker.DEPLOY_DIR)
    props = tmp_path / "server.properties"
    old = "\n".join(
        line for line in props.read_text().splitlines() if "controlled.shutdown" not in line
    )
    props.write_text(old + "\n")
    assert broker._write_properties(tmp_path, 0, broker.DEPLOY_DIR) == props
    updated = props.read_text()
    assert updated == old + "\ncontrolled.shutdown.enable=false\n"
    broker._write_properties(tmp_path, 0, broker.DEPLOY_DIR)
    assert props.read_text() == updated, "written once"


def test_compose_runs_the_kafka_version_the_tests_run() -> None:
    """Compose ran Kafka 4.1 while every test ran the version ``deploy/kafka/pom.xml`` pins."""
    (compose,) = _documents(DEPLOY / "docker-compose.yml")
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{broker.kafka_version()}"


@pytest.mark.parametrize(
    ("script", "found"),
    [
        ("echo 'openjdk version \"11.0.22\" 2024-01-16' >&2", "found 11"),
        ("echo 'Error: could not find agent library' >&2; exit 1", "found none"),
    ],
    ids=["java 11", "a java that does not start"],
)
def test_setup_refuses_a_java_older_than_the_broker_needs(
    tmp_path: Path, script: str, found: str
) -> None:
    """``deploy/setup.sh`` took any ``java`` on the PATH; with Java 11 first, the broker
    then failed to start with a class-version error deep in its log."""
    fake = tmp_path / "bin"
    fake.mkdir()
    java = fake / "java"
    java.write_text(f"#!/bin/sh\n{script}\n")
    java.chmod(0o755)
    for tool in ("mvn", "kcat"):  # present, as setup checks for them first
        (fake / tool).symlink_to("/bin/true")
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "KOURIER_VENV": str(tmp_path / "venv"),
           "HOME": os.environ.get("HOME", str(tmp_path))}  # fmt: skip
    done = subprocess.run(["bash", str(DEPLOY / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"needs Java 17 or newer, {found}" in done.stderr
    assert not (tmp_path / "venv").exists(), "went on past the check"
