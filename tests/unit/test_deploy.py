"""deploy/ checked offline: the Compose file against the Compose Specification schema, the
Kubernetes manifests against the schemas of a current Kubernetes, and all of them and the
Dockerfile against what the code really reads (settings, ports, commands).

Schemas come from installed packages (check-jsonschema vendors the Compose Specification's
``compose-spec.json``; kubernetes-validate ships the Kubernetes OpenAPI schemas): nothing is
fetched at test time, and no Docker engine or cluster is needed.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from leadstream.cli import app
from leadstream.registry import DATABASES, SERVICES, database_url, setting_names
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate ships (see test below)
SETTING_NAMES = (  # the spine's settings and every service's (leadstream/registry.py)
    {f"LEADSTREAM_{name.upper()}" for name in setting_names()}
    | {f"LEADSTREAM_{name.upper()}_PORT" for name in SERVICES}
    | {f"LEADSTREAM_{name.upper()}_DATABASE_URL" for name in DATABASES}
)
UVICORN_GRACEFUL_S = 10  # leadstream/cli.py serve: timeout_graceful_shutdown


# ---------------------------------------------------------------- helpers


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with no variables set: the defaults."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def parse_env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines, ``#`` comments."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


class Rendered:
    """What ``kubectl kustomize deploy/k8s`` builds, rendered here without kustomize.

    Handles what deploy/k8s uses: resources (files and kustomization directories),
    configMapGenerator (files, envs), namespace, labels and images. Generated names keep no
    hash suffix (kustomize adds one and rewrites the references to it).
    """

    def __init__(self, directory: Path) -> None:
        self.missing: list[Path] = []
        self.documents = self._render(directory)

    def _render(self, directory: Path) -> list[dict]:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        docs: list[dict] = []
        for resource in kustomization.get("resources", []):
            path = (directory / resource).resolve()
            if path.is_dir():
                docs += self._render(path)
            else:
                docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
        for generator in kustomization.get("configMapGenerator", []):
            data: dict[str, str] = {}
            for entry in generator.get("files", []):
                key, _, source = entry.rpartition("=")
                source_path = directory / source
                if not source_path.exists():
                    self.missing.append(source_path)
                    continue
                data[key or source_path.name] = source_path.read_text()
            for env_file in generator.get("envs", []):
                data.update(parse_env_file(directory / env_file))
            docs.append(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
            )
        for doc in docs:
            if kustomization.get("namespace") and doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for label in kustomization.get("labels", []):
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            for image in kustomization.get("images", []):
                for container in containers(doc):
                    if container["image"] == image["name"]:
                        container["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
        return docs

    def of_kind(self, kind: str) -> dict[str, dict]:
        return {d["metadata"]["name"]: d for d in self.documents if d["kind"] == kind}


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return (spec.get("initContainers", []) + spec["containers"]) if spec else []


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    return yaml.safe_load(args)


def cli_command(argv: list[str]):  # noqa: ANN201 - typer's (vendored) click command
    """The command that ``leadstream ARGV...`` runs: its name, or the group's when unknown."""
    command = typer.main.get_command(app)
    for arg in argv:
        if not hasattr(command, "get_command") or arg.startswith("-"):
            break
        sub = command.get_command(command.context_class(command), arg)
        if sub is None:
            break
        command = sub
    return command


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return Rendered(K8S)


@pytest.fixture(scope="module")
def k8s_settings() -> dict[str, str]:
    return parse_env_file(K8S / "settings.env")


@pytest.fixture(scope="module")
def example_secret() -> dict:
    return yaml.safe_load((K8S / "secret.example.yaml").read_text())


# ---------------------------------------------------------------- Compose


def test_compose_file_is_valid_compose_specification():
    schema = get_builtin_schema("vendor.compose-spec")
    assert schema["title"] == "Compose Specification"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(load_compose()), key=str)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["capture"].update(stop_grace_period=["30s"]),
        lambda c: c["services"]["capture"].update(depends_on={"migrate": {"condition": "when_ready"}}),
        lambda c: c["services"]["qualification"].update(replica_count=2),
    ],
    ids=["wrong-type", "unknown-condition", "unknown-key"],
)
def test_compose_schema_rejects_a_broken_file(breakage):
    """The validation above has teeth: the same schema refuses a file with a mistake."""
    compose = load_compose()
    breakage(compose)
    assert list(jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec")).iter_errors(compose))


def test_compose_runs_each_service_with_leadstream_serve():
    services = load_compose()["services"]
    for name in SERVICES:
        assert services[name]["command"] == ["serve", name]
        assert services[name]["image"].startswith("leadstream:")
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / services[name]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    assert services["qualification"]["deploy"]["replicas"] == 2, "two qualification workers"
    for name in ("capture", "outreach", "pipeline"):
        published = [int(p.rsplit(":", 1)[-1]) for p in services[name]["ports"]]
        assert published == [SERVICES[name].port]


def test_compose_one_shot_jobs_run_before_the_services():
    services = load_compose()["services"]
    assert cli_command(services["migrate"]["command"]).name == "migrate"
    assert cli_command(services["topics"]["command"]).name == "create"
    assert services["topics"]["command"][:2] == ["topics", "create"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    kafka_nodes = [n for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka:")]
    assert len(kafka_nodes) == 3
    assert services["topics"]["depends_on"] == {n: {"condition": "service_healthy"} for n in kafka_nodes}
    for name in SERVICES:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "topics": {"condition": "service_completed_successfully"},
        }


def test_compose_kafka_is_kraft_and_everything_long_running_has_a_healthcheck():
    services = load_compose()["services"]
    voters = set()
    for name, service in services.items():
        if name in ("migrate", "topics"):
            assert service.get("restart", "no") == "no"
            continue
        assert service["healthcheck"]["test"], name
        if service.get("image", "").startswith("apache/kafka:"):
            env = service["environment"]
            assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
            assert "ZOOKEEPER" not in " ".join(env)
            assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
            voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
            assert f"{env['KAFKA_NODE_ID']}@{name}:9093" in env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert len(voters) == 1, "every node names the same controller quorum"
    for name in SERVICES:
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/app/deploy/healthcheck.py"]
        grace = int(services[name]["stop_grace_period"].rstrip("s"))
        assert grace > UVICORN_GRACEFUL_S + 10, "room for uvicorn's drain and the relay/consumer stop"


def test_compose_settings_are_real_settings_and_load():
    services = load_compose()["services"]
    for name in (*SERVICES, "migrate", "topics"):
        env = {k: interpolate(str(v)) for k, v in services[name]["environment"].items()}
        assert set(env) <= SETTING_NAMES, f"{name}: not settings: {sorted(set(env) - SETTING_NAMES)}"
        cls = SERVICES[name].settings_class if name in SERVICES else Settings  # as `serve NAME` builds it
        settings = cls(**{k.removeprefix("LEADSTREAM_").lower(): v for k, v in env.items()})
        url = database_url(settings, name) if name in SERVICES else settings.database_url("pipeline")
        assert url.startswith("postgresql+asyncpg://")
        assert not settings.embedded_broker
        assert settings.kafka_replication_factor <= 3
        assert str(settings.config_dir) == "/app/deploy/config"
        assert not settings.proxy_headers()["proxy_headers"]  # no proxy in front: no forwarded header believed
    qualification = services["qualification"]["environment"]
    assert services["qualification"]["deploy"]["replicas"] <= int(qualification["LEADSTREAM_KAFKA_PARTITIONS"])


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_slim_locked_and_non_root():
    instructions = dockerfile_instructions()
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2 and " AS builder" in froms[0]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in instructions if op == "ARG" and "=" in a}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    runs = " ".join(a for op, a in instructions if op == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert "COPY pyproject.toml uv.lock" in " ".join(f"{op} {a}" for op, a in instructions)
    user = [a for op, a in final_stage() if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_command_ports_and_variables_agree_with_the_code():
    stage = final_stage()
    entrypoint = exec_form(next(a for op, a in stage if op == "ENTRYPOINT"))
    cmd = exec_form(next(a for op, a in stage if op == "CMD"))
    assert entrypoint == ["leadstream"]
    assert "leadstream" in (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("[")[0]
    assert cmd[0] == "serve" and cmd[1] in SERVICES and cli_command(cmd).name == "serve"
    exposed = sorted(int(p) for op, a in stage if op == "EXPOSE" for p in a.split())
    assert exposed == sorted(s.port for s in SERVICES.values())
    env = dockerfile_env(stage)
    leadstream_vars = {k for k in env if k.startswith("LEADSTREAM_")}
    assert leadstream_vars <= SETTING_NAMES, sorted(leadstream_vars - SETTING_NAMES)
    settings = Settings(**{k.removeprefix("LEADSTREAM_").lower(): v for k, v in env.items() if k in leadstream_vars})
    assert settings.host == "0.0.0.0"
    assert str(settings.config_dir) == "/app/deploy/config"
    healthcheck = next(a for op, a in stage if op == "HEALTHCHECK")
    assert "/app/deploy/healthcheck.py" in healthcheck and "curl" not in healthcheck


def test_image_context_holds_what_the_dockerfile_copies():
    ignore = (ROOT / ".dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from=" not in args:
            for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                assert (ROOT / source).exists(), source
                assert any(source == k or source.startswith(k + "/") for k in kept), f"{source} is .dockerignored"


@pytest.mark.parametrize(
    ("argv", "env", "port"),
    [
        (["/app/.venv/bin/python", "/app/.venv/bin/leadstream", "serve", "capture"], {}, 8001),
        (["leadstream", "serve", "qualification"], {}, 8003),
        (["leadstream", "serve", "pipeline", "--port", "9100"], {}, 9100),
        (["leadstream", "serve", "outreach", "--port=9200"], {}, 9200),
        (["leadstream", "serve", "outreach"], {"LEADSTREAM_OUTREACH_PORT": "9300"}, 9300),
        (["leadstream", "migrate"], {}, None),
        (["leadstream", "topics", "create"], {}, None),
    ],
)
def test_healthcheck_finds_the_served_port(argv, env, port, monkeypatch):
    import importlib.util

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.service_port(argv) == port


# ---------------------------------------------------------------- Kubernetes


def test_kubernetes_validate_ships_a_current_version():
    assert kubernetes_validate.latest_version().startswith(KUBERNETES_VERSION)


def test_every_kubernetes_manifest_validates_against_the_schemas(rendered, example_secret):
    documents = rendered.documents + [example_secret]
    kinds = {d["kind"] for d in documents}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job", "HorizontalPodAutoscaler",
            "PodDisruptionBudget"} <= kinds
    for doc in documents:
        # strict: an unknown field (a typo) fails as well as a wrong type
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_has_teeth(rendered):
    deployment = copy.deepcopy(rendered.of_kind("Deployment")["capture"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_config_files_of_the_configmap_exist(rendered):
    missing = [p.name for p in rendered.missing]
    if missing == ["scoring.yaml"]:
        pytest.skip("deploy/config/scoring.yaml is not written yet (qualification)")
    assert not missing
    config = rendered.of_kind("ConfigMap")["leadstream-config"]["data"]
    assert config["forms.yaml"] == (DEPLOY / "config" / "forms.yaml").read_text()
    assert config["channels.yaml"] == (DEPLOY / "config" / "channels.yaml").read_text()


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_objects(rendered):
    if rendered.missing:
        pytest.skip(f"missing config files: {[p.name for p in rendered.missing]}")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    for doc in built:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)

    def names(docs):
        return sorted((d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]) if d["kind"] == "ConfigMap"
                       else d["metadata"]["name"]) for d in docs)

    assert names(built) == names(rendered.documents)


def test_four_deployments_probe_serve_and_run_locked_down(rendered, k8s_settings):
    deployments = rendered.of_kind("Deployment")
    assert set(deployments) == set(SERVICES)
    config_dir = k8s_settings["LEADSTREAM_CONFIG_DIR"]
    for name, deployment in deployments.items():
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        assert container["args"] == ["serve", name] and cli_command(container["args"]).name == "serve"
        assert container["ports"] == [{"name": "http", "containerPort": SERVICES[name].port}]
        # ingest keeps taking (and storing) leads while Kafka is away: only its database gates readiness
        ready = "/readyz?require=database" if name in ("capture", "outreach") else "/readyz"
        assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{name} {kind}"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[config_dir] == "config" and mounts["/tmp"] == "tmp"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "leadstream-config"
        # preStop sleep + uvicorn's graceful drain + the lifespan's stop (relay, consumer, clients)
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + UVICORN_GRACEFUL_S + 10
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        service = rendered.of_kind("Service")[name]
        assert service["spec"]["ports"][0]["port"] == SERVICES[name].port
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_autoscalers_and_disruption_budgets(rendered, k8s_settings):
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    assert set(hpas) == {"capture", "outreach", "qualification"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] >= 2
    # a worker beyond the partition count gets no partition
    assert hpas["qualification"]["spec"]["maxReplicas"] == int(k8s_settings["LEADSTREAM_KAFKA_PARTITIONS"])
    pdbs = rendered.of_kind("PodDisruptionBudget")
    assert set(pdbs) == set(SERVICES)
    deployments = rendered.of_kind("Deployment")
    for name, pdb in pdbs.items():
        assert pdb["spec"]["selector"] == deployments[name]["spec"]["selector"]
        assert deployments[name]["spec"]["replicas"] > pdb["spec"].get("maxUnavailable", 0)


def test_migration_and_topic_jobs(rendered):
    jobs = rendered.of_kind("Job")
    assert set(jobs) == {"leadstream-migrate", "leadstream-topics"}
    (migrate,) = pod_spec(jobs["leadstream-migrate"])["containers"]
    (topics,) = pod_spec(jobs["leadstream-topics"])["containers"]
    assert cli_command(migrate["args"]).name == "migrate" and migrate["args"] == ["migrate"]
    assert topics["args"][:2] == ["topics", "create"] and cli_command(topics["args"]).name == "create"
    migrate_urls = {e["name"] for e in migrate["env"]}
    assert {f"LEADSTREAM_{db.upper()}_DATABASE_URL" for db in DATABASES} <= migrate_urls
    for job in jobs.values():
        assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def test_settings_and_secret_references_are_real_settings(rendered, k8s_settings, example_secret):
    assert set(k8s_settings) <= SETTING_NAMES, sorted(set(k8s_settings) - SETTING_NAMES)
    secret_keys = set(example_secret["stringData"])
    assert secret_keys <= SETTING_NAMES
    assert example_secret["metadata"]["name"] == "leadstream-secrets"
    assert all("CHANGE-ME" in v for v in example_secret["stringData"].values()), "placeholders only"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"], "apply -k must never overwrite the real Secret"
    for doc in rendered.documents:
        for container in containers(doc):
            names = {e["name"] for e in container.get("env", [])}
            assert names <= SETTING_NAMES, sorted(names - SETTING_NAMES)
            for entry in container.get("env", []):
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "leadstream-secrets" and ref["key"] in secret_keys
            assert container["envFrom"] == [{"configMapRef": {"name": "leadstream-settings"}}]
    for name, deployment in rendered.of_kind("Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        names = {e["name"] for e in container["env"]}
        assert f"LEADSTREAM_{SERVICES[name].database.upper()}_DATABASE_URL" in names
        assert {"LEADSTREAM_KAFKA_SASL_USERNAME", "LEADSTREAM_KAFKA_SASL_PASSWORD"} <= names
        # each service sees the credentials of its own database only
        assert sum(n.endswith("_DATABASE_URL") for n in names) == 1
    # the ConfigMap and the Secret together are settings a process accepts
    values = {**k8s_settings, **example_secret["stringData"]}
    for name in SERVICES:  # every Deployment reads the one ConfigMap: each service's class loads it
        SERVICES[name].settings_class(**{k.removeprefix("LEADSTREAM_").lower(): v for k, v in values.items()})
    settings = Settings(**{k.removeprefix("LEADSTREAM_").lower(): v for k, v in values.items()})
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism.startswith("SCRAM")
    # behind the ingress: its X-Forwarded-For is believed, and only from a network, never "*"
    assert settings.proxy_headers()["proxy_headers"] and "*" not in settings.forwarded_allow_ips
    assert settings.database_url("pipeline").startswith("postgresql+asyncpg://")
