"""The Kubernetes manifests: schema-valid offline for every supported version, sound where
schemas cannot tell, and played for real with `podman kube play`."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from tests.conftest import Broker, free_port
from tests.deploy.conftest import (
    ROOT,
    assert_balanced,
    health,
    json_lines,
    last_event,
    podman,
    records,
    wait_until,
)

pytestmark = pytest.mark.deploy

K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = ["sidecar.yaml", "native-sidecar.yaml"]
OLDEST = Version("1.29")  # native sidecars are on by default from 1.29
VERSIONS = sorted({v for v in all_versions() if Version(v) >= OLDEST}, key=Version)
DOWNWARD = {
    "KUBERNETES_POD_NAME": "metadata.name",
    "KUBERNETES_NAMESPACE": "metadata.namespace",
    "KUBERNETES_NODE_NAME": "spec.nodeName",
    "KUBERNETES_POD_UID": "metadata.uid",
}
READ_IDLE = 1.0  # shutdown.read_idle's default, in seconds
RUNTIME_MIB = 80  # interpreter, kafka-python and buffers beside the queue (README: Performance)

Docs = list[dict[str, Any]]


def load(name: str) -> Docs:
    """The YAML documents of a manifest."""
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def kind(docs: Docs, k: str) -> dict[str, Any]:
    """The one document of kind ``k``."""
    (doc,) = [d for d in docs if d["kind"] == k]
    return doc


def pod_spec(docs: Docs) -> dict[str, Any]:
    """The Deployment's pod template spec."""
    spec: dict[str, Any] = kind(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers and containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def shipper_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The container named shipper."""
    (c,) = [c for c in all_containers(spec) if c["name"] == "shipper"]
    return c


def shipper_config(docs: Docs) -> dict[str, Any]:
    """The shipper config held by the ConfigMap."""
    cfg: dict[str, Any] = yaml.safe_load(kind(docs, "ConfigMap")["data"]["shipper.yaml"])
    return cfg


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


# ---- checks the schemas cannot make -----------------------------------------------------

_QUANTITY = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_UNITS = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def quantity(value: str | int) -> float | None:
    """A Kubernetes quantity in base units, or None if it is not one (``256MB``)."""
    m = _QUANTITY.match(str(value))
    return float(m.group(1)) * _UNITS[m.group(3) or ""] if m else None


def seconds(value: str | float) -> float:
    """A shipper duration (``10s``, ``500ms``) in seconds."""
    m = _DURATION.match(str(value))
    assert m, value
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def size_mib(value: str | int) -> float:
    """A shipper size (``32MiB``) in MiB."""
    m = re.match(r"^(\d+)(B|KiB|MiB|GiB|KB|MB|GB)?$", str(value))
    assert m, value
    unit = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}[
        m.group(2) or "B"
    ]
    return int(m.group(1)) * unit / 2**20


def _ports_and_probes(c: dict[str, Any]) -> list[str]:
    problems = []
    names = {p["name"] for p in c.get("ports", []) if "name" in p}
    numbers = {p["containerPort"] for p in c.get("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = c.get(probe, {}).get("httpGet", {}).get("port")
        if port is None:
            continue
        if isinstance(port, str) and port not in names:
            problems.append(f"{c['name']}.{probe}: port name {port!r} is not declared")
        if isinstance(port, int) and numbers and port not in numbers:
            problems.append(f"{c['name']}.{probe}: port {port} is not declared")
    return problems


def _resources(c: dict[str, Any]) -> list[str]:
    problems = []
    res = c.get("resources", {})
    for kind_ in ("requests", "limits"):
        for what, value in res.get(kind_, {}).items():
            q = quantity(value)
            if q is None:
                problems.append(f"{c['name']}.resources.{kind_}.{what}: {value!r} is no quantity")
            elif what == "memory" and str(value).endswith("m"):
                problems.append(f"{c['name']}: memory {value!r} is in millibytes")
    for what, request in res.get("requests", {}).items():
        limit = res.get("limits", {}).get(what)
        r, lim = quantity(request), quantity(limit) if limit is not None else None
        if r is not None and lim is not None and r > lim:
            problems.append(f"{c['name']}: {what} request {request} exceeds limit {limit}")
    return problems


def _env(c: dict[str, Any]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for e in c.get("env", []):
        if e["name"] in seen:
            problems.append(f"{c['name']}: env {e['name']} is set twice")
        seen.add(e["name"])
        if ("value" in e) == ("valueFrom" in e):
            problems.append(f"{c['name']}: env {e['name']} needs exactly one of value, valueFrom")
    return problems


def problems_in(docs: Docs) -> list[str]:
    """What a cluster would reject or do wrong that the schemas let through."""
    problems: list[str] = []
    dep = kind(docs, "Deployment")
    spec = pod_spec(docs)
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"selector {selector} does not match the template labels {labels}")
    defined = [v["name"] for v in spec.get("volumes", [])]
    used = {m["name"] for c in all_containers(spec) for m in c.get("volumeMounts", [])}
    problems += [f"volume {n!r} is mounted but not defined" for n in sorted(used - set(defined))]
    problems += [f"volume {n!r} is defined but never mounted" for n in defined if n not in used]
    for c in all_containers(spec):
        problems += _ports_and_probes(c) + _resources(c) + _env(c)
    for v in spec.get("volumes", []):
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}:
            problems.append(f"volume {v['name']!r} names ConfigMap {cm!r}, not in this file")
    return problems


MUTATIONS: dict[str, tuple[Callable[[Docs], None], str]] = {
    "undefined port name": (
        lambda d: shipper_container(pod_spec(d))["livenessProbe"]["httpGet"].update(port="metric"),
        "port name 'metric' is not declared",
    ),
    "mount of an undefined volume": (
        lambda d: shipper_container(pod_spec(d))["volumeMounts"][0].update(name="app-log"),
        "'app-log' is mounted but not defined",
    ),
    "selector that misses the labels": (
        lambda d: kind(d, "Deployment")["spec"]["selector"]["matchLabels"].update(app="other"),
        "does not match the template labels",
    ),
    "memory in MB": (
        lambda d: shipper_container(pod_spec(d))["resources"]["limits"].update(memory="128MB"),
        "'128MB' is no quantity",
    ),
    "env with value and valueFrom": (
        lambda d: shipper_container(pod_spec(d))["env"][-2].update(value="x"),
        "needs exactly one of value, valueFrom",
    ),
    "request above limit": (
        lambda d: shipper_container(pod_spec(d))["resources"]["requests"].update(cpu="1"),
        "cpu request 1 exceeds limit",
    ),
}


# ---- offline: schemas -------------------------------------------------------------------


def test_versions_cover_the_supported_range() -> None:
    """The bundled schemas reach from 1.29 to a current release."""
    assert VERSIONS[0] == "1.29.0", VERSIONS
    assert Version(VERSIONS[-1]) >= Version("1.33"), VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_in_strict_mode(name: str, version: str) -> None:
    """Every document of the manifest passes that Kubernetes version's strict schema."""
    for doc in load(name):
        got = kubernetes_validate.validate(doc, version, strict=True)
        assert got == version.rsplit(".", 1)[0]  # validated against that very version


@pytest.mark.parametrize("name", MANIFESTS)
def test_misspelt_key_is_rejected(name: str) -> None:
    """A broken copy (``resource:`` for ``resources:``) fails strict validation in every
    version, though the lax schemas let it through: strict mode is what catches typos."""
    docs = load(name)
    c = shipper_container(pod_spec(docs))
    c["resource"] = c.pop("resources")
    dep = kind(docs, "Deployment")
    for version in VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
            kubernetes_validate.validate(dep, version, strict=True)
    kubernetes_validate.validate(dep, VERSIONS[-1], strict=False)


def test_native_sidecar_needs_a_recent_kubernetes() -> None:
    """Schemas before 1.28 have no init-container restartPolicy: the README's minimum holds."""
    dep = kind(load("native-sidecar.yaml"), "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(dep, "1.27", strict=True)


# ---- offline: what schemas miss -----------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_no_problem_schemas_miss(name: str) -> None:
    """Port names, volumes, selector, quantities and env entries are consistent."""
    assert problems_in(load(name)) == []


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_own_checks_catch_a_broken_copy(mutation: str) -> None:
    """Each own check fails on a copy broken in the way it looks for."""
    change, expected = MUTATIONS[mutation]
    docs = load("sidecar.yaml")
    change(docs)
    found = problems_in(docs)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("name", MANIFESTS)
def test_shipper_is_hardened(name: str) -> None:
    """Non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp, logs read-only."""
    spec = pod_spec(load(name))
    c = shipper_container(spec)
    sc = {**spec.get("securityContext", {}), **c["securityContext"]}
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    logs = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/log/app"]
    assert logs, "no mount on /var/log/app"
    assert logs[0].get("readOnly") is True
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("name", MANIFESTS)
def test_downward_api_and_broker_come_from_env(name: str) -> None:
    """Pod name, namespace, node, uid by fieldRef; the app container's name as a value; the
    broker address as a variable the config reads."""
    spec = pod_spec(load(name))
    env = {e["name"]: e for e in shipper_container(spec)["env"]}
    for var, path in DOWNWARD.items():
        assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == path
    app_names = [c["name"] for c in spec["containers"]]
    assert env["KUBERNETES_CONTAINER_NAME"]["value"] in app_names
    assert "value" in env["KAFKA_BOOTSTRAP"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_configmap_config_passes_shipper_validate(name: str, tmp_path: Path) -> None:
    """`shipper validate` accepts the embedded config with the container's environment, and
    every ${VAR} without a default is set there."""
    docs = load(name)
    text = kind(docs, "ConfigMap")["data"]["shipper.yaml"]
    env = {
        e["name"]: e.get("value", f"sample-{e['name'].lower()}")
        for e in shipper_container(pod_spec(docs))["env"]
    }
    needed = {
        var
        for s in strings(yaml.safe_load(text))
        for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", s)
    }
    assert needed <= set(env), f"not set in the container: {sorted(needed - set(env))}"
    conf = tmp_path / "shipper.yaml"
    conf.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SHIPPER_"))}
    res = subprocess.run(
        [sys.executable, "-m", "shipper", "validate", "-c", str(conf)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", MANIFESTS)
def test_config_fits_the_pod(name: str) -> None:
    """The config reads the read-only log mount, keeps its registry on a writable volume, is
    mounted where the command reads it, fits the memory limit, and the grace period covers
    the stop (read_idle + drain_timeout)."""
    docs = load(name)
    spec = pod_spec(docs)
    c = shipper_container(spec)
    cfg = shipper_config(docs)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for inp in cfg["inputs"]:
        for glob in inp["paths"]:
            assert any(glob.startswith(p + "/") and mounts[p].get("readOnly") for p in mounts), glob
    registry = cfg.get("registry", {}).get("path", "/var/lib/shipper/registry.json")
    assert any(registry.startswith(p + "/") and not m.get("readOnly") for p, m in mounts.items()), (
        registry
    )
    conf_path = c["command"][c["command"].index("-c") + 1]
    assert os.path.dirname(conf_path) in mounts
    limit_mib = (quantity(c["resources"]["limits"]["memory"]) or 0) / 2**20
    queue_mib = size_mib(cfg.get("queue", {}).get("max_bytes", "64MiB"))
    assert limit_mib >= queue_mib + RUNTIME_MIB, (limit_mib, queue_mib)
    shutdown = cfg.get("shutdown", {})
    stop_budget = seconds(shutdown.get("read_idle", READ_IDLE)) + seconds(
        shutdown.get("drain_timeout", "5s")
    )
    assert spec["terminationGracePeriodSeconds"] > stop_budget + 5


def test_native_and_classic_differ_only_in_where_the_shipper_sits() -> None:
    """The native form is the classic one with the shipper moved to initContainers and
    given restartPolicy: Always; everything else is the same."""
    classic, native = load("sidecar.yaml"), load("native-sidecar.yaml")
    for docs in (classic, native):  # the configs' comments differ where the stop differs
        kind(docs, "ConfigMap")["data"]["shipper.yaml"] = shipper_config(docs)
    n_spec = pod_spec(native)
    (init,) = n_spec["initContainers"]
    assert init.pop("restartPolicy") == "Always"
    assert init == shipper_container(pod_spec(classic))
    del n_spec["initContainers"]
    n_spec["containers"].append(init)
    assert native == classic


def test_kustomization_names_existing_manifests() -> None:
    """Every resource the kustomization lists is a file here."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["resources"]
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res


# ---- played for real ----------------------------------------------------------------------

APP_SCRIPT = """\
# The test's app: numbered lines every 20 ms; on SIGTERM, 20 more over a second, as an app
# that logs while it shuts down.
stopping() {
  for j in $(seq 1 20); do echo "app stopping $j" >>/var/log/app/app.log; sleep 0.05; done
  echo "app stopped" >>/var/log/app/app.log
  exit 0
}
trap stopping TERM
i=0
while :; do
  i=$((i + 1))
  echo "app line $i" >>/var/log/app/app.log
  sleep 0.02
done
"""


def play_variant(
    docs: Docs, image: str, broker: Broker, *, topic: str, listen: str, suffix: str
) -> Docs:
    """The sidecar as podman 4.3 can play it here: local image, host network (for the host's
    broker), no ports, numeric probe ports, no fieldRefs it lacks, names of its own."""
    docs = copy.deepcopy(docs)
    cm, dep = kind(docs, "ConfigMap"), kind(docs, "Deployment")
    cm["metadata"]["name"] += suffix
    dep["metadata"]["name"] = f"shipper-play{suffix}"
    spec = dep["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    for v in spec["volumes"]:
        if "configMap" in v:
            v["configMap"]["name"] += suffix
    renamed = {v["name"]: v["name"] + suffix for v in spec["volumes"]}
    for v in spec["volumes"]:
        v["name"] = renamed[v["name"]]
    port = int(listen.rsplit(":", 1)[1])
    for c in all_containers(spec):
        c["image"] = image
        c.pop("ports", None)
        for m in c.get("volumeMounts", []):
            m["name"] = renamed[m["name"]]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                c[probe]["httpGet"]["port"] = port
    app = next(c for c in spec["containers"] if c["name"] == "app")
    app["command"] = ["sh", "-c", APP_SCRIPT]
    values = {
        "KAFKA_BOOTSTRAP": broker.bootstrap,
        "SHIPPER_TOPIC": topic,
        "SHIPPER_METRICS_LISTEN": listen,
        # podman 4.3 resolves only metadata.name and metadata.uid
        "KUBERNETES_NAMESPACE": "default",
        "KUBERNETES_NODE_NAME": "podman",
    }
    for e in shipper_container(spec)["env"]:
        if e["name"] in values:
            e.pop("valueFrom", None)
            e["value"] = values[e["name"]]
    return docs


@dataclass
class Played:
    """What playing and stopping the pod left behind."""

    before_stop: list[bytes]  # complete lines in the app's file when the stop began
    in_file: list[bytes]  # complete lines in the file after the pod stopped
    shipped: list[bytes]  # records in the topic
    exit_codes: dict[str, str]
    shipper_events: list[dict[str, Any]]
    stop_seconds: float


def complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of a file."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines()


@pytest.fixture(name="played", scope="module")
def fixture_played(
    image: str, kafka: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Played]:
    """Play the sidecar variant, let the app log for a while, then stop the pod under it."""
    suffix = f"-{uuid.uuid4().hex[:8]}"
    topic = f"t-play{suffix}"
    listen = f"127.0.0.1:{free_port()}"
    docs = play_variant(
        load("sidecar.yaml"), image, kafka, topic=topic, listen=listen, suffix=suffix
    )
    kube = tmp_path_factory.mktemp("kube") / "play.yaml"
    kube.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    pod = f"shipper-play{suffix}-pod-0"
    volumes = [v["name"] for v in pod_spec(docs)["volumes"]]
    try:
        podman("kube", "play", str(kube))
        wait_until(lambda: health(listen)[0] == 200, 60, "the shipper's /health in the pod")
        wait_until(
            lambda: len(records(kafka.bootstrap, topic, timeout=2)) >= 100,
            60,
            "the app's first 100 lines at the broker",
            interval=0.5,
        )
        logs_dir = Path(
            podman("volume", "inspect", "--format", "{{.Mountpoint}}", volumes[0]).stdout.strip()
        )
        app_log = logs_dir / "app.log"
        before = complete_lines(app_log)
        started = time.monotonic()
        podman("pod", "stop", "--time", "30", pod, timeout=90)
        took = time.monotonic() - started
        in_file = complete_lines(app_log)
        shipped = records(kafka.bootstrap, topic, timeout=30)
        codes = {
            c: podman("inspect", "--format", "{{.State.ExitCode}}", f"{pod}-{c}").stdout.strip()
            for c in ("app", "shipper")
        }
        res = podman("logs", f"{pod}-shipper")
        yield Played(before, in_file, shipped, codes, json_lines(res.stdout + res.stderr), took)
    finally:
        podman("kube", "down", str(kube), check=False)
        podman("pod", "rm", "--force", pod, check=False)
        podman("volume", "rm", "--force", *volumes, check=False)


@pytest.mark.kafka
def test_played_pod_ships_the_apps_lines_and_stops_cleanly(played: Played) -> None:
    """The app's lines reach the broker in order; both containers exit 0 on the pod's stop,
    and the shipper's final ledger adds up."""
    assert played.shipped[:100] == [b"app line %d" % i for i in range(1, 101)]
    assert played.exit_codes == {"app": "0", "shipper": "0"}, played.exit_codes
    assert played.stop_seconds < 30
    done = last_event(played.shipper_events, "shutdown_complete")
    assert_balanced(done)
    assert done["lines_sent"] == len(played.shipped)


@pytest.mark.kafka
def test_pod_stop_loses_no_line_written_before_the_stop(played: Played) -> None:
    """Every line in the app's file when `podman pod stop` began is at the broker."""
    missing = [x for x in played.before_stop if x not in set(played.shipped)]
    assert not missing, f"{len(missing)} of {len(played.before_stop)} lost: {missing[:5]}"


@pytest.mark.kafka
def test_pod_stop_ships_what_the_app_logs_while_stopping(played: Played) -> None:
    """Lines the app writes after SIGTERM (its last second) are shipped too: on SIGTERM the
    shipper reads on until the files are idle for shutdown.read_idle, then drains.
    Needs the daemon's shutdown.read_idle."""
    assert played.in_file[-1] == b"app stopped", played.in_file[-3:]
    missing = [x for x in played.in_file if x not in set(played.shipped)]
    assert not missing, f"{len(missing)} of {len(played.in_file)} lost: {missing[:5]}"
