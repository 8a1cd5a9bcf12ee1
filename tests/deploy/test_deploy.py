"""The deployment kit under ``deploy/`` is checked against the processor it deploys:
the metrics the alert rules and the dashboard name are ones the processor's
registry exposes; promtool accepts the rules and passes their unit tests; the
Kubernetes manifests set only variables the processor reads, and their values
load as its configuration; the Dockerfile's stages, user, port and entrypoint
agree with the manifests and with pyproject.toml. No Docker engine or cluster is
needed: what cannot run here is parsed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from processor.cli import ENVIRONMENT
from processor.config import SHUTDOWN_GRACE_SECONDS, Config
from processor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "stream-processor.json"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
GUIDE = ROOT / "docs" / "deploy.md"

PROMTOOL_MISSING = (
    "promtool is not installed: apt-get install -y prometheus (Debian's package; it gives /usr/bin/promtool)"
)

# A metric name in PromQL: fc_..., not preceded by a name character (so not a label's tail).
METRIC_NAME = re.compile(r"(?<![\w:])fc_[A-Za-z0-9_:]+")
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Where PromQL names labels, not metrics: selectors' matchers, and the label lists of
# aggregations and vector matching.
PROMQL_LABELS = re.compile(
    r"\{[^{}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# The variables ``fc-stream-processor --help`` lists, its descriptions included
# (FC_HEALTH_WINDOW_SECONDS is named inside FC_HEALTH_MAX_ERROR_RATE's).
VARIABLE = re.compile(r"\b(?:FC_[A-Z0-9_]+|RUST_LOG)\b")


# Metrics and expressions.


def exposed_sample_names() -> set[str]:
    """The sample names a fresh processor registry exposes, as Prometheus stores them."""
    metrics = Metrics()
    # A labelled metric exposes no sample until it has a child, so give each one a
    # child: its names (``..._total``) then show as they will once it counts.
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("probe" for _ in metric._labelnames))
    text = metrics.exposition().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def metric_names(expression: str) -> set[str]:
    """The fc_* metric names a PromQL expression reads; its string literals (label
    values, regular expressions) and label names are not metric names."""
    return set(METRIC_NAME.findall(PROMQL_LABELS.sub(" ", PROMQL_STRING.sub('""', expression))))


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    """Every query of the dashboard: its panels' targets (rows' nested panels too) and
    its variables' queries."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return [expression for expression in walk(json.loads(DASHBOARD.read_text())) if expression.strip()]


def test_every_metric_the_alert_rules_name_is_in_the_processor_s_registry() -> None:
    exposed = exposed_sample_names()
    rules = alert_rules()
    assert len(rules) >= 10, "the rules file lost its rules"
    unknown: dict[str, list[str]] = {}
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']} names no fc_* metric: {rule['expr']!r}"
        if names - exposed:
            unknown[rule["alert"]] = sorted(names - exposed)
    assert not unknown, f"rules name metrics the processor does not expose: {unknown}"


def test_every_metric_the_dashboard_s_panels_name_is_in_the_processor_s_registry() -> None:
    exposed = exposed_sample_names()
    expressions = dashboard_expressions()
    panels_with_targets = [
        panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel.get("targets")
    ]
    assert panels_with_targets and len(expressions) > len(panels_with_targets)
    unknown = {name for expression in expressions for name in metric_names(expression)} - exposed
    assert not unknown, f"the dashboard names metrics the processor does not expose: {sorted(unknown)}"


def test_the_registry_exposes_counters_with_their_total_suffix_and_labelled_ones_too() -> None:
    # What makes the two tests above able to fail: the bare counter name is not a
    # series Prometheus stores, and labelled counters are seen despite having no child yet.
    exposed = exposed_sample_names()
    assert "fc_stream_events_processed_total" in exposed
    assert "fc_stream_events_processed" not in exposed
    assert {"fc_stream_store_errors_total", "fc_stream_events_dead_lettered_total"} <= exposed
    histogram = "fc_stream_processing_duration_seconds"
    assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= exposed
    assert histogram not in exposed


def test_the_metric_names_of_an_expression_leave_out_labels_and_strings() -> None:
    expression = (
        "sum by (instance, fc_label) (rate(fc_a_total{kind!=\"fc_not_a_metric\", fc_l=~'fc_x'}[5m]))"
        " / on (instance) group_left (fc_info) fc_b:ratio > 0 unless absent(fc_c{})"
    )
    assert metric_names(expression) == {"fc_a_total", "fc_b:ratio", "fc_c"}


# promtool.


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail(PROMTOOL_MISSING)
    return subprocess.run(
        [executable, *arguments], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def test_promtool_finds_the_alert_rules_valid() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    missing = {rule["alert"] for rule in alert_rules()} - firing
    assert not missing, f"alerts no unit test sees fire: {sorted(missing)}"


def shown_rule_copies() -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """The rules files the documentation shows in YAML blocks, with where."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"^```ya?ml\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL):
            document = yaml.safe_load(block)
            if isinstance(document, dict) and "groups" in document:
                yield path, [rule for group in document["groups"] for rule in group["rules"]]


def test_the_rules_the_documentation_shows_name_the_alerts_of_the_rules_file() -> None:
    def outline(rules: list[dict[str, Any]]) -> dict[str, tuple[str | None, object]]:
        return {rule["alert"]: (rule.get("for"), rule.get("labels")) for rule in rules}

    expected = outline(alert_rules())
    for path, rules in shown_rule_copies():
        assert outline(rules) == expected, f"{path.relative_to(ROOT)} shows other alerts than {RULES.name}"


# Kubernetes.


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def one(kind: str) -> dict[str, Any]:
    found = [document for document in manifests() if document["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def container_environment() -> dict[str, str | None]:
    """The container's variables: the ConfigMap's, then ``env``'s (which wins);
    None for a value taken from elsewhere (a Secret, the downward API)."""
    configmap = one("ConfigMap")
    environment: dict[str, str | None] = {}
    for source in container().get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        environment |= configmap["data"]
    for variable in container().get("env", []):
        environment[variable["name"]] = variable.get("value")
    return environment


# What the Secret and the downward API would give, for loading the configuration.
STAND_INS = {
    "FC_MONGO_URL": "mongodb://mongo-0.mongo:27017,mongo-1.mongo:27017/?replicaSet=rs0",
    "FC_REDIS_URL": "redis://redis:6379/0",
    "FC_STANDBY_REDIS_URL": "redis://redis:6379/0",
    "FC_STANDBY_INSTANCE_ID": "fc-stream-processor-7d9f8b6c5-x2x4z",
}


@pytest.fixture
def manifest_config(monkeypatch: pytest.MonkeyPatch) -> Config:
    """The configuration the processor loads from the Deployment's environment."""
    for name in set(VARIABLE.findall(ENVIRONMENT)):
        monkeypatch.delenv(name, raising=False)
    for name, value in container_environment().items():
        monkeypatch.setenv(name, STAND_INS[name] if value is None else value)
    return Config()


def test_the_manifests_are_a_deployment_a_disruption_budget_a_service_and_a_config_map() -> None:
    kinds = sorted(document["kind"] for document in manifests())
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    for document in manifests():
        assert {"apiVersion", "kind", "metadata"} <= document.keys()
        assert document["metadata"]["name"] == "fc-stream-processor"


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    assert listed == sorted(
        path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml"
    )
    assert [image["name"] for image in kustomization.get("images", [])] == [
        container()["image"].partition(":")[0]
    ]


def test_the_deployment_runs_two_replicas_with_standby_on(manifest_config: Config) -> None:
    assert one("Deployment")["spec"]["replicas"] == 2
    assert manifest_config.standby_enabled is True
    rollout = one("Deployment")["spec"]["strategy"]
    assert rollout["rollingUpdate"]["maxUnavailable"] == 0  # a standby stays through a rollout


def test_each_pod_is_named_in_the_leader_lock_by_its_own_name() -> None:
    variable = next(v for v in container()["env"] if v["name"] == "FC_STANDBY_INSTANCE_ID")
    assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_store_and_redis_urls_come_from_the_secret_not_the_config_map() -> None:
    assert not {name for name in one("ConfigMap")["data"] if name.endswith("_URL")}
    for variable in container()["env"]:
        if variable["name"].endswith("_URL"):
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference["name"] == "fc-stream-processor"
            assert reference["key"] == variable["name"]  # as docs/deploy.md creates the Secret
    required = {
        v["name"]
        for v in container()["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
        if not v["valueFrom"]["secretKeyRef"].get("optional")
    }
    assert required == {"FC_MONGO_URL", "FC_REDIS_URL"}


def test_every_variable_the_manifests_set_is_one_the_processor_reads() -> None:
    read = set(VARIABLE.findall(ENVIRONMENT))
    assert {"FC_STANDBY_ENABLED", "FC_HEALTH_WINDOW_SECONDS", "RUST_LOG"} <= read
    unknown = set(container_environment()) - read
    assert not unknown, f"the manifests set variables the processor does not read: {sorted(unknown)}"


def test_the_probes_ask_live_and_ready_on_the_metrics_port(manifest_config: Config) -> None:
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports == {"metrics": manifest_config.metrics_port}
    assert manifest_config.metrics_port == 9090
    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        request = container()[probe]["httpGet"]
        assert request["path"] == path
        assert ports.get(request["port"], request["port"]) == manifest_config.metrics_port


def test_the_service_and_the_scrape_annotations_name_the_metrics_port(manifest_config: Config) -> None:
    service = one("Service")["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("metrics", manifest_config.metrics_port, "metrics")
    ]
    assert service["publishNotReadyAddresses"] is True  # a leader behind is unready, and must be scraped
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(manifest_config.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (250m, 1, 512Mi, 1G) as a number."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match and match[2] in ("", *units), f"not a quantity: {text!r}"
    return float(match[1]) * units.get(match[2], 1)


def test_the_container_has_resource_requests_and_limits() -> None:
    resources = container()["resources"]
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert 0 < quantity(request) <= quantity(limit), resource
    assert quantity(resources["requests"]["memory"]) >= 256 * 2**20  # 100 events of 10 MB peak at 153 MiB


def test_the_disruption_budget_keeps_one_pod_of_the_deployment() -> None:
    budget = one("PodDisruptionBudget")["spec"]
    deployment = one("Deployment")["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()


def test_the_pod_outlives_the_shutdown_grace_period(manifest_config: Config) -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert manifest_config.shutdown_grace_seconds == SHUTDOWN_GRACE_SECONDS
    # The grace period, then the ops server's stop (up to 5 s) before the process exits.
    assert grace >= manifest_config.shutdown_grace_seconds + 5


def test_the_pods_run_as_the_image_s_non_root_user() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == final_stage().user()
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


# The Dockerfile.


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]]  # (keyword, arguments)

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]

    def user(self) -> str:
        users = self.arguments("USER")
        assert users, f"stage {self.name} sets no USER: it would run as root"
        return users[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile: its instructions, continuation lines joined and
    comments dropped; a stage's image with the ARG defaults before the first FROM."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):  # comments may sit inside one too
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    stages: list[Stage] = []
    defaults: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+ )?(\S+) (?i:AS) (\S+)", arguments)
            assert match, f"FROM {arguments}: every stage is named (FROM image AS name)"
            image = re.sub(r"\$\{(\w+)\}", lambda name: defaults.get(name[1], name[0]), match[1])
            stages.append(Stage(image, match[2], []))
        elif stages:
            stages[-1].instructions.append((keyword, arguments))
        else:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = arguments.partition("=")
            defaults[name] = default
    return stages


def final_stage() -> Stage:
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def build_stage() -> Stage:
    builders = [
        stage
        for stage in dockerfile_stages(DOCKERFILE.read_text())
        if any("pip wheel" in run for run in stage.arguments("RUN"))
    ]
    assert len(builders) == 1, "one stage builds the wheel with pip wheel"
    return builders[0]


def copy_sources(stage: Stage) -> list[str]:
    """What a stage's COPY instructions take from the build context."""
    sources = []
    for arguments in stage.arguments("COPY"):
        words = shlex.split(arguments)
        if not any(word.startswith("--from=") for word in words):
            sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def test_the_dockerfile_builds_the_wheel_with_gcc_and_installs_it_in_a_slim_stage() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    build, runtime = build_stage(), final_stage()
    assert len(stages) >= 2 and build is not runtime
    assert any(re.search(r"apt-get install .*\bgcc\b", run) for run in build.arguments("RUN"))
    assert f"--from={build.name}" in " ".join(runtime.arguments("COPY"))
    installs = [run for run in runtime.arguments("RUN") if "pip install" in run]
    assert installs and all("--no-index" in run for run in installs), "the runtime installs the built wheels"
    assert not any("gcc" in run or "pip wheel" in run for run in runtime.arguments("RUN"))
    assert "from fastmatch import _ctrie" in " ".join(runtime.arguments("RUN")), (
        "the image build checks that the compiled trie is there"
    )
    assert "-slim" in runtime.image, runtime.image


def test_the_build_stage_copies_what_building_the_wheel_reads() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = [source.rstrip("/") for source in copy_sources(build_stage())]
    needed = ["pyproject.toml", "CMakeLists.txt", project["project"]["readme"]]
    needed += project["tool"]["scikit-build"]["wheel"]["packages"]
    for path in needed:
        assert any(path == source or path.startswith(source + "/") for source in copied), path
    for source in copied:
        assert (ROOT / source).exists(), source


def test_the_docker_ignore_file_lets_in_what_the_build_stage_copies() -> None:
    patterns = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert {source.rstrip("/") for source in copy_sources(build_stage())} <= allowed
    assert "src/**/*.so" in patterns  # a stale in-place build must not reach the wheel


def test_the_image_runs_as_a_non_root_user() -> None:
    uid = final_stage().user().partition(":")[0]
    assert uid not in ("root", "0")
    created = [run for run in final_stage().arguments("RUN") if f"useradd --system --uid {uid} " in run]
    assert created, f"the image creates no user {uid}"


def test_the_image_exposes_the_metrics_port_of_the_manifests(manifest_config: Config) -> None:
    assert final_stage().arguments("EXPOSE") == [str(manifest_config.metrics_port)]
    assert [port["containerPort"] for port in container()["ports"]] == [manifest_config.metrics_port]


def test_the_image_s_entrypoint_is_the_console_script_pyproject_declares() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = final_stage().arguments("ENTRYPOINT")
    command = json.loads(entrypoint)  # the exec form: the processor is PID 1 and gets SIGTERM itself
    assert command == ["fc-stream-processor"]
    assert command[0] in scripts
    assert container().get("command") is None  # the manifests keep the image's entrypoint


def test_the_dockerfile_parser_reads_stages_continuations_and_comments() -> None:
    stages = dockerfile_stages(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n"
        "RUN apt-get update \\\n # a comment\n && apt-get install -y gcc\n"
        "FROM ${BASE} as runtime\nCOPY --from=build /wheels /wheels\nUSER 10001\n"
    )
    assert [(stage.image, stage.name) for stage in stages] == [
        ("python:3.11-slim", "build"),
        ("python:3.11-slim", "runtime"),
    ]
    assert stages[0].arguments("RUN") == ["apt-get update && apt-get install -y gcc"]
    assert stages[1].user() == "10001"
    with pytest.raises(AssertionError, match="every stage is named"):
        dockerfile_stages("FROM python:3.11\n")


# The guide.


def test_the_guide_says_what_to_do_for_every_alert_and_its_links_resolve() -> None:
    guide = GUIDE.read_text()
    missing = [rule["alert"] for rule in alert_rules() if f"`{rule['alert']}`" not in guide]
    assert not missing, f"docs/deploy.md does not cover {missing}"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", guide):
        if "://" not in target:
            assert (GUIDE.parent / target).exists(), f"docs/deploy.md links {target}, which does not exist"
