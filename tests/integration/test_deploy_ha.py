"""The HA deploy files hold together (docs/ha.md, deploy/README.md "High availability"):
deploy/kubernetes/overlays/ha and deploy/compose/compose.ha.yaml. Each replica count has the list that must
follow it — recovery replicas and the recovery receiver's webhooks, etcd members and --initial-cluster and
recovery.ha.etcd, Alertmanager peers and --cluster.peer and Prometheus' alertmanagers, shards and
--shard I/N — and each check is shown to fail when a count changes alone. The overlay also passes
Kubernetes' and the prometheus-operator's schemas in tests/integration/test_deploy.py (OVERLAYS);
here its etcd
members are started from the StatefulSet's own arguments and form one cluster."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from test_deploy import (
    COMPOSE,
    K8S,
    K8S_VERSION,
    ROOT,
    _find,
    _KustomizeLoader,
    _one,
    _run,
    _tool,
    _validate_crds,
    check_compose_references,
    crd_validator,  # noqa: F401 - the fixture
    gen,
)

from tierwatch.cli import main as tierwatch_cli
from tierwatch.config.shard import shard_of
from tierwatch_lab.stack import etcd as lab_etcd
from tierwatch_lab.stack.ports import free_port
from tierwatch_lab.stack.process import Stack, StackError, wait_for

HA = K8S / "overlays" / "ha"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def ha() -> list[Obj]:
    """``kubectl kustomize deploy/kubernetes/overlays/ha``."""
    kubectl = _tool("kubectl", "it ships kustomize (`kubectl kustomize`), used to render deploy/kubernetes")
    result = _run([kubectl, "kustomize", str(HA)])
    assert result.returncode == 0, f"kustomize overlays/ha failed:\n{result.stderr}"
    return [d for d in yaml.load_all(result.stdout, Loader=_KustomizeLoader) if d]


def _flag(args: list[str], name: str) -> list[str]:
    """The values of ``--name=value`` flags in ``args``."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


def _env_field(container: Obj, name: str) -> str:
    (env,) = [e for e in container.get("env", []) if e["name"] == name]
    return env["valueFrom"]["fieldRef"]["fieldPath"]


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _pod_labels(objects: list[Obj], workload: Obj) -> dict[str, str]:
    if workload["kind"] == "StatefulSet":
        return workload["spec"]["template"]["metadata"]["labels"]
    # the operator's pods: Prometheus and Alertmanager label them so (prometheus-operator docs)
    name = workload["metadata"]["name"]
    if workload["kind"] == "Prometheus":
        return {
            "app.kubernetes.io/name": "prometheus",
            "operator.prometheus.io/name": name,
            "prometheus": name,
        }
    return {"app.kubernetes.io/name": "alertmanager", "alertmanager": name}


def _recovery_config(objects: list[Obj], recovery: Obj) -> Obj:
    (volume,) = [v for v in recovery["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    data = _one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    return yaml.safe_load(data["recovery.yml"])


def ha_problems(objects: list[Obj]) -> list[str]:
    """What does not hold together in the rendered HA overlay: each list against its replica count."""
    problems: list[str] = []
    services = {s["metadata"]["name"]: s for s in _find(objects, "Service")}

    # Recovery replicas: one webhook per pod, by the headless Service, in the recovery receiver.
    recovery = _one(objects, "StatefulSet", "tierwatch-recovery")
    replicas = recovery["spec"]["replicas"]
    namespace = recovery["metadata"]["namespace"]
    peers = services[recovery["spec"]["serviceName"]]
    port = next(p["port"] for p in peers["spec"]["ports"] if p["name"] == "http")
    if peers["spec"].get("clusterIP") != "None" or not _selects(
        {"matchLabels": peers["spec"]["selector"]}, recovery["spec"]["template"]["metadata"]["labels"]
    ):
        problems.append(f"Service {peers['metadata']['name']} must be headless and select the recovery pods")
    if replicas < 2:
        problems.append(f"tierwatch-recovery has {replicas} replica(s): HA needs 2 or more")
    pods = [f"{recovery['metadata']['name']}-{i}" for i in range(replicas)]
    want = [f"http://{pod}.{peers['metadata']['name']}.{namespace}.svc:{port}/webhook" for pod in pods]
    spec = _one(objects, "AlertmanagerConfig", "tierwatch")["spec"]
    (receiver,) = [r for r in spec["receivers"] if r["name"] == "recovery"]
    urls = [w["url"] for w in receiver["webhookConfigs"]]
    if urls != want:
        problems.append(f"recovery receiver webhooks {urls} != one per recovery pod {want}")
    if any(w.get("sendResolved") is not True for w in receiver["webhookConfigs"]):
        problems.append("every recovery webhook must send resolved notifications")

    # etcd: the members of --initial-cluster are the StatefulSet's pods; recovery.ha.etcd lists each.
    etcd = _one(objects, "StatefulSet", gen.K8S_ETCD)
    members = etcd["spec"]["replicas"]
    etcd_service = services[etcd["spec"]["serviceName"]]
    if etcd_service["spec"].get("clusterIP") != "None" or not etcd_service["spec"].get(
        "publishNotReadyAddresses"
    ):
        problems.append("the etcd Service must be headless and publish not-ready members (bootstrap)")
    if etcd["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("etcd members must start in parallel (one alone never becomes ready)")
    if members < 3 or members % 2 == 0:
        problems.append(f"etcd has {members} members: use an odd number, 3 or more")
    domain = f"{etcd_service['metadata']['name']}.{namespace}.svc"
    container = etcd["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    etcd_pods = [f"{etcd['metadata']['name']}-{i}" for i in range(members)]
    initial = dict(m.split("=", 1) for m in _flag(args, "initial-cluster")[0].split(","))
    if initial != {pod: f"http://{pod}.{domain}:2380" for pod in etcd_pods}:
        problems.append(f"--initial-cluster {sorted(initial)} != the StatefulSet's pods {etcd_pods}")
    if _env_field(container, "POD_NAME") != "metadata.name" or _flag(args, "name") != ["$(POD_NAME)"]:
        problems.append("each member must be named after its pod: --name=$(POD_NAME)")
    if _flag(args, "initial-advertise-peer-urls") != [f"http://$(POD_NAME).{domain}:2380"]:
        problems.append("--initial-advertise-peer-urls must be the pod's own DNS name")
    if _flag(args, "advertise-client-urls") != [f"http://$(POD_NAME).{domain}:2379"]:
        problems.append("--advertise-client-urls must be the pod's own DNS name")
    config = _recovery_config(objects, recovery)["recovery"]
    if config["ha"]["etcd"] != [f"http://{pod}.{domain}:2379" for pod in etcd_pods]:
        problems.append(f"recovery.ha.etcd {config['ha']['etcd']} != the etcd pods {etcd_pods}")

    # Alertmanager peers (the operator's StatefulSet) and the Prometheus pair sending to every one.
    (am,) = _find(objects, "Alertmanager")
    if am["spec"]["replicas"] < 3:
        problems.append(f"Alertmanager has {am['spec']['replicas']} peers: the HA picture has 3")
    if am["spec"]["alertmanagerConfiguration"]["name"] != "tierwatch":
        problems.append("the Alertmanager must use the AlertmanagerConfig tierwatch as its global config")
    (prom,) = _find(objects, "Prometheus")
    if prom["spec"]["replicas"] < 2:
        problems.append(f"Prometheus has {prom['spec']['replicas']} replica(s): the HA picture is a pair")
    if prom["spec"].get("replicaExternalLabelName") not in config["replica_labels"]:
        problems.append(
            f"Prometheus' replica label {prom['spec'].get('replicaExternalLabelName')!r} is not one of "
            f"recovery.replica_labels {config['replica_labels']}"
        )
    targets = prom["spec"]["alerting"]["alertmanagers"]
    if [(t["namespace"], t["name"]) for t in targets] != [(namespace, "alertmanager-operated")]:
        problems.append(f"Prometheus must send to every peer (Service alertmanager-operated), not {targets}")
    for write in prom["spec"].get("remoteWrite", []):
        host = re.match(r"http://([^.]+)\.([^.]+)\.svc:(\d+)/", write["url"])
        if not host or host.group(1) not in services or host.group(2) != namespace:
            problems.append(f"remote_write {write['url']} is not a Service of the overlay")

    # Exporter shards: N pods, --shard <pod index>/N.
    shards = _one(objects, "StatefulSet", "tierwatch-shard")
    container = shards["spec"]["template"]["spec"]["containers"][0]
    shard_arg = container["args"][container["args"].index("--shard") + 1]
    found = re.fullmatch(r"\$\((\w+)\)/(\d+)", shard_arg)
    if not found or int(found.group(2)) != shards["spec"]["replicas"]:
        problems.append(f"--shard {shard_arg} must be $(INDEX)/{shards['spec']['replicas']} (the replicas)")
    elif _env_field(container, found.group(1)) != "metadata.labels['apps.kubernetes.io/pod-index']":
        problems.append(f"{found.group(1)} must be the pod's index")
    if _find(objects, "Deployment", "tierwatch-exporter"):
        problems.append("the single exporter Deployment must be gone (it would double every series)")

    # A PodDisruptionBudget for every replicated piece.
    budgets = _find(objects, "PodDisruptionBudget")
    for workload in (recovery, etcd, shards, am, prom):
        labels = _pod_labels(objects, workload)
        if not any(_selects(b["spec"]["selector"], labels) for b in budgets):
            problems.append(f"no PodDisruptionBudget selects the pods of {workload['kind']}")
    quorum = members // 2 + 1
    etcd_budgets = [b for b in budgets if _selects(b["spec"]["selector"], _pod_labels(objects, etcd))]
    if [b["spec"].get("minAvailable") for b in etcd_budgets] != [quorum]:
        problems.append(f"the etcd PodDisruptionBudget must keep quorum: minAvailable {quorum}")
    return problems


def test_ha_overlay_holds_together(ha: list[Obj]) -> None:
    assert ha_problems(ha) == []
    recovery = _one(ha, "StatefulSet", "tierwatch-recovery")
    assert recovery["spec"]["replicas"] == gen.RECOVERY_REPLICAS >= 2
    assert _one(ha, "StatefulSet", gen.K8S_ETCD)["spec"]["replicas"] == gen.ETCD_MEMBERS == 3
    assert not _find(ha, "Deployment") and not _find(ha, "PersistentVolumeClaim", "tierwatch-recovery-state")
    # the base Service still has every recovery replica behind it: each is scraped as job tierwatch-recovery
    service = _one(ha, "Service", "tierwatch-recovery")
    assert service["metadata"]["labels"]["tierwatch/job"] == "tierwatch-recovery"
    assert _selects(
        {"matchLabels": service["spec"]["selector"]}, recovery["spec"]["template"]["metadata"]["labels"]
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda o: _one(o, "StatefulSet", "tierwatch-recovery")["spec"].update(replicas=3),
            "recovery receiver",
        ),
        (lambda o: _one(o, "StatefulSet", "tierwatch-recovery")["spec"].update(replicas=1), "HA needs 2"),
        (lambda o: _one(o, "StatefulSet", "tierwatch-etcd")["spec"].update(replicas=5), "--initial-cluster"),
        (lambda o: _one(o, "StatefulSet", "tierwatch-etcd")["spec"].update(replicas=5), "recovery.ha.etcd"),
        (lambda o: _one(o, "StatefulSet", "tierwatch-etcd")["spec"].update(replicas=5), "minAvailable 3"),
        (lambda o: _one(o, "StatefulSet", "tierwatch-shard")["spec"].update(replicas=3), "--shard"),
        (lambda o: _find(o, "Alertmanager")[0]["spec"].update(replicas=1), "peers"),
        (
            lambda o: _find(o, "Prometheus")[0]["spec"].update(replicaExternalLabelName="pod"),
            "replica_labels",
        ),
        (lambda o: _one(o, "Service", "tierwatch-etcd")["spec"].pop("publishNotReadyAddresses"), "headless"),
        (
            lambda o: o.remove(_one(o, "PodDisruptionBudget", "tierwatch-recovery")),
            "PodDisruptionBudget selects the pods of StatefulSet",
        ),
    ],
)
def test_ha_checks_fail_when_a_count_changes_alone(ha: list[Obj], change: Any, expected: str) -> None:
    objects = copy.deepcopy(ha)
    change(objects)
    problems = ha_problems(objects)
    assert any(expected in p for p in problems), problems


def test_generator_follows_the_replica_counts() -> None:
    """Changing RECOVERY_REPLICAS / ETCD_MEMBERS and regenerating changes the lists with them."""
    source = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    patch = gen.recovery_receiver_patch(gen.alertmanager_config(source), gen.k8s_recovery_urls(3))
    assert patch[0]["op"] == "test" and patch[0]["value"] == "recovery"
    assert [w["url"].split(".")[0] for w in patch[1]["value"]] == [
        f"http://tierwatch-recovery-{i}" for i in range(3)
    ]
    config = gen.with_ha(
        {"recovery": {"action_timeout": "60s", "cooldown": "10m"}}, gen.k8s_etcd_endpoints(5)
    )
    assert list(config["recovery"]) == ["action_timeout", "ha", "replica_labels", "cooldown"]
    assert len(config["recovery"]["ha"]["etcd"]) == 5
    with pytest.raises(ValueError, match="already has an ha section"):
        gen.with_ha(config, [])


def test_ha_recovery_config_passes_check_config(ha: list[Obj], tmp_path: Path) -> None:
    recovery = _one(ha, "StatefulSet", "tierwatch-recovery")
    config = _recovery_config(ha, recovery)
    path = tmp_path / "recovery.yml"
    path.write_text(yaml.safe_dump(config))
    assert tierwatch_cli(["check-config", "--no-secrets", str(path)]) == 0
    # the rest is examples/recovery.yml unchanged
    example = yaml.safe_load((ROOT / "examples" / "recovery.yml").read_text())
    assert {k: v for k, v in config["recovery"].items() if k not in ("ha", "replica_labels")} == example[
        "recovery"
    ]
    assert config["clusters"] == example["clusters"]
    # and a wrong ha section is refused, naming the key
    config["recovery"]["ha"]["lease_ttl"] = "1s"
    path.write_text(yaml.safe_dump(config))
    assert tierwatch_cli(["check-config", "--no-secrets", str(path)]) == 1


def test_ha_shards_cover_every_cluster_once(ha: list[Obj]) -> None:
    shards = _one(ha, "StatefulSet", "tierwatch-shard")
    (volume,) = [v for v in shards["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    data = _one(ha, "ConfigMap", volume["configMap"]["name"])["data"]
    names = [c["name"] for c in yaml.safe_load(data["tierwatch.yml"])["clusters"]]
    total = shards["spec"]["replicas"]
    owned = [[n for n in names if shard_of(n, total) == i] for i in range(total)]
    assert sorted(n for part in owned for n in part) == sorted(names)
    assert all(owned), f"a shard of the example watches nothing: {owned}"


@pytest.mark.slow
def test_ha_objects_pass_the_schemas(ha: list[Obj], crd_validator: list[str], tmp_path: Path) -> None:  # noqa: F811
    core = [o for o in ha if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert {"PodDisruptionBudget", "NetworkPolicy", "StatefulSet", "ClusterRole"} <= {o["kind"] for o in core}
    operator = [o for o in ha if o["kind"] in ("Prometheus", "Alertmanager", "AlertmanagerConfig")]
    code, report = _validate_crds(crd_validator, operator, tmp_path)
    assert code == 0, json.dumps(report, indent=1)
    # the validator looks inside them: a misspelt field of the pair is refused
    broken = copy.deepcopy(operator)
    next(o for o in broken if o["kind"] == "Prometheus")["spec"]["replica_external_label_name"] = "replica"
    code, report = _validate_crds(crd_validator, broken, tmp_path)
    assert code == 1 and any("replica_external_label_name" in e for r in report for e in r["errors"])


def etcd_forms_one_cluster(args: dict[str, list[str]], hosts: dict[str, str]) -> list[Obj]:
    """Start Debian's etcd with each member's deploy-file arguments, every ``host:port`` of a member
    mapped to a loopback port of its own; wait until all are healthy; return the member list."""
    ports = {m: {2379: free_port(), 2380: free_port(), 2381: free_port()} for m in args}
    with Stack() as stack:
        for member, member_args in args.items():
            argv = [lab_etcd.binary()]
            for arg in member_args:
                for other, host in hosts.items():  # the members' names -> their loopback ports
                    for port, local in ports[other].items():
                        arg = arg.replace(f"//{host}:{port}", f"//127.0.0.1:{local}")
                for port, local in ports[member].items():  # its own listeners
                    arg = arg.replace(f"//0.0.0.0:{port}", f"//127.0.0.1:{local}")
                if arg.startswith("--data-dir="):
                    arg = f"--data-dir={stack.directory('etcd', member)}"
                argv.append(arg)
            assert not [a for a in argv if "//" in a and "//127.0.0.1:" not in a], argv
            stack.spawn(member, [*argv, "--log-level=warn"])

        def healthy() -> bool:
            for process in stack.processes:
                process.check_alive()
            try:
                return all(
                    httpx.get(f"http://127.0.0.1:{ports[m][2379]}/health", timeout=2).json()["health"]
                    == "true"
                    for m in args
                )
            except httpx.HTTPError:
                return False

        wait_for(healthy, 40, "etcd members started from the deploy file's arguments healthy", interval=0.3)
        first = next(iter(args))
        answer = httpx.post(
            f"http://127.0.0.1:{ports[first][2379]}/v3/cluster/member/list", json={}, timeout=5
        )
        members = answer.json()["members"]
        assert sorted(m["clientURLs"][0] for m in members) == sorted(
            f"http://127.0.0.1:{ports[m][2379]}" for m in args
        )
        return members


def test_etcd_statefulset_arguments_form_one_cluster(ha: list[Obj]) -> None:
    """The StatefulSet's pods, started with its own arguments (pod DNS names mapped to loopback ports),
    form one cluster whose members are named after the pods."""
    etcd = _one(ha, "StatefulSet", gen.K8S_ETCD)
    container = etcd["spec"]["template"]["spec"]["containers"][0]
    pods = [f"{etcd['metadata']['name']}-{i}" for i in range(etcd["spec"]["replicas"])]
    domain = f"{etcd['spec']['serviceName']}.{etcd['metadata']['namespace']}.svc"
    args = {pod: [a.replace("$(POD_NAME)", pod) for a in container["args"]] for pod in pods}
    members = etcd_forms_one_cluster(args, {pod: f"{pod}.{domain}" for pod in pods})
    assert sorted(m["name"] for m in members) == pods


def test_etcd_start_check_fails_on_a_member_outside_the_initial_cluster(ha: list[Obj]) -> None:
    """The live check is real: a member whose name is not in --initial-cluster does not start."""
    etcd = _one(ha, "StatefulSet", gen.K8S_ETCD)
    container = etcd["spec"]["template"]["spec"]["containers"][0]
    pods = [f"{etcd['metadata']['name']}-{i}" for i in range(etcd["spec"]["replicas"])]
    domain = f"{etcd['spec']['serviceName']}.{etcd['metadata']['namespace']}.svc"
    args = {pod: [a.replace("$(POD_NAME)", pod) for a in container["args"]] for pod in pods}
    args[pods[-1]] = [a.replace(f"--name={pods[-1]}", "--name=tierwatch-etcd-9") for a in args[pods[-1]]]
    with pytest.raises(StackError, match=rf"{pods[-1]} exited with code"):
        etcd_forms_one_cluster(args, {pod: f"{pod}.{domain}" for pod in pods})


def test_etcd_compose_arguments_form_one_cluster() -> None:
    services = _compose_ha()["services"]
    names = _by_image(services, "quay.io/coreos/etcd")
    commands = {name: services[name]["command"] for name in names}
    assert all(c[0] == "/usr/local/bin/etcd" for c in commands.values())
    members = etcd_forms_one_cluster({n: c[1:] for n, c in commands.items()}, {n: n for n in names})
    assert sorted(m["name"] for m in members) == names


# ---- compose: compose.yaml with compose.ha.yaml over it ----


def _volume_target(mount: str) -> str:
    return mount.split(":")[1]


def merge_compose(base: Obj, override: Obj) -> Obj:
    """``docker compose -f base -f override`` for the keys compose.ha.yaml uses (compose spec, "Merge"):
    ``command`` and ``hostname`` replace, ``volumes`` merge by container path, ``depends_on`` adds; new
    services, volumes and secrets are added. Any other key of an existing service is refused here, so
    this stays the compose rule, not a guess."""
    out = copy.deepcopy(base)
    for name, service in override.get("services", {}).items():
        if name not in out["services"]:
            out["services"][name] = copy.deepcopy(service)
            continue
        merged = out["services"][name]
        for key, value in service.items():
            if key in ("command", "hostname"):
                merged[key] = value
            elif key == "volumes":
                targets = {_volume_target(m) for m in value}
                merged[key] = [m for m in merged.get(key, []) if _volume_target(m) not in targets] + value
            elif key == "depends_on":
                merged[key] = list(dict.fromkeys([*merged.get(key, []), *value]))
            else:
                raise AssertionError(f"compose.ha.yaml sets {key!r} of {name}: add compose's merge rule here")
    for section in ("volumes", "secrets"):
        out[section] = {**out.get(section, {}), **override.get(section, {})}
    return out


def _compose_ha() -> Obj:
    base = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return merge_compose(base, yaml.safe_load((COMPOSE / "compose.ha.yaml").read_text()))


def _by_image(services: Obj, image: str) -> list[str]:
    return sorted(n for n, s in services.items() if s["image"].split(":")[0] == image)


def _mounted(service: Obj, path: str) -> Path:
    """The compose file mounted at ``path`` in the container."""
    (source,) = [m.split(":")[0] for m in service["volumes"] if _volume_target(m) == path]
    return COMPOSE / source


def compose_ha_problems(compose: Obj) -> list[str]:
    """What does not hold together in the compose HA variant."""
    problems: list[str] = []
    services = compose["services"]
    recovery = sorted(n for n, s in services.items() if s.get("command", [None])[0] == "recover")
    alertmanagers = _by_image(services, "prom/alertmanager")
    prometheus = _by_image(services, "prom/prometheus")
    etcd = _by_image(services, "quay.io/coreos/etcd")
    if len(recovery) < 2 or len(alertmanagers) < 3 or len(prometheus) < 2 or len(etcd) < 3:
        problems.append(
            f"recovery {recovery}, alertmanager {alertmanagers}, prometheus {prometheus}, etcd {etcd}"
        )

    # Alertmanager: each peer lists every other peer, reads the HA config, which sends to every replica.
    for name in alertmanagers:
        command = services[name]["command"]
        peers = sorted(
            a.split("=", 1)[1].rsplit(":", 1)[0] for a in command if a.startswith("--cluster.peer=")
        )
        if peers != [p for p in alertmanagers if p != name]:
            problems.append(f"{name}: --cluster.peer {peers} != the other peers")
        config_path = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
        config = yaml.safe_load(_mounted(services[name], config_path).read_text())
        (receiver,) = [r for r in config["receivers"] if r["name"] == "recovery"]
        urls = [w["url"] for w in receiver["webhook_configs"]]
        want = [f"http://{r}:{_listen_port(services[r])}/webhook" for r in recovery]
        if urls != want:
            problems.append(f"{name}: recovery receiver {urls} != one per recovery replica {want}")

    # Prometheus pair: distinct replica labels the recovery service drops; every peer; every replica.
    labels = []
    for name in prometheus:
        command = services[name]["command"]
        config_path = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
        config = yaml.safe_load(_mounted(services[name], config_path).read_text())
        labels.append(config["global"].get("external_labels", {}))
        targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
        if sorted(t.split(":")[0] for t in targets) != alertmanagers:
            problems.append(f"{name}: sends to {targets}, not to every peer {alertmanagers}")
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
        if sorted(t.split(":")[0] for t in jobs["tierwatch-recovery"]) != recovery:
            problems.append(f"{name}: scrapes recovery replicas {jobs['tierwatch-recovery']}, not {recovery}")
        for write in config.get("remote_write", []):
            if re.match(r"http://([^:/]+)", write["url"]).group(1) not in services:  # type: ignore[union-attr]
                problems.append(f"{name}: remote_write {write['url']} is not a compose service")

    # Recovery replicas: the same HA config on every replica, its etcd the compose members, distinct names.
    configs = set()
    for name in recovery:
        command = services[name]["command"]
        configs.add(_mounted(services[name], command[command.index("--config") + 1]))
    if len(configs) != 1:
        problems.append(f"the recovery replicas read different configs: {sorted(map(str, configs))}")
    config = yaml.safe_load(next(iter(configs)).read_text())["recovery"]
    if config.get("ha", {}).get("etcd") != [f"http://{e}:2379" for e in etcd]:
        problems.append(f"recovery.ha.etcd {config.get('ha', {}).get('etcd')} != the etcd services {etcd}")
    if sorted(services[r].get("hostname", "") for r in recovery) != recovery:
        problems.append("each recovery replica needs its own hostname (its name in the leader key)")
    for label in labels:
        if set(label) - set(config["replica_labels"]):
            problems.append(f"external label {label} is not one of recovery.replica_labels")
    if len({json.dumps(label, sort_keys=True) for label in labels}) != len(labels):
        problems.append(f"the Prometheus replicas are not told apart: {labels}")
    volumes = {
        tuple(m for m in services[r]["volumes"] if _volume_target(m) == "/var/lib/tierwatch")
        for r in recovery
    }
    if len(volumes) != len(recovery):
        problems.append("each recovery replica needs its own state_dir volume")

    # etcd: --initial-cluster is exactly the members, each named after its service.
    for name in etcd:
        args = services[name]["command"]
        initial = dict(m.split("=", 1) for m in _flag(args, "initial-cluster")[0].split(","))
        if initial != {e: f"http://{e}:2380" for e in etcd}:
            problems.append(f"{name}: --initial-cluster {sorted(initial)} != the etcd services {etcd}")
        if _flag(args, "name") != [name] or _flag(args, "advertise-client-urls") != [f"http://{name}:2379"]:
            problems.append(f"{name}: --name and --advertise-client-urls must be the service's own")
        if _flag(args, "initial-advertise-peer-urls") != [f"http://{name}:2380"]:
            problems.append(f"{name}: --initial-advertise-peer-urls must be the service's own")
    return problems


def _listen_port(service: Obj) -> str:
    command = service["command"]
    return command[command.index("--listen") + 1].rsplit(":", 1)[1]


def test_compose_ha_holds_together() -> None:
    compose = _compose_ha()
    check_compose_references(compose)
    assert compose_ha_problems(compose) == []
    services = compose["services"]
    assert _by_image(services, "prom/alertmanager") == list(gen.COMPOSE_ALERTMANAGER_PEERS)
    assert _by_image(services, "quay.io/coreos/etcd") == list(gen.COMPOSE_ETCD_SERVICES)
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports)) and all(p.startswith("127.0.0.1:") for p in ports)


def _drop_service(compose: Obj, name: str) -> None:
    del compose["services"][name]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: _drop_service(c, "alertmanager-3"), "--cluster.peer"),
        (lambda c: _drop_service(c, "alertmanager-3"), "not to every peer"),
        (lambda c: _drop_service(c, "recover-2"), "one per recovery replica"),
        (lambda c: _drop_service(c, "etcd-3"), "--initial-cluster"),
        (lambda c: _drop_service(c, "etcd-3"), "recovery.ha.etcd"),
        (lambda c: c["services"]["recover-2"].update(hostname="recover"), "own hostname"),
        (
            lambda c: c["services"]["recover-2"].update(
                volumes=[
                    "./recovery-ha.yml:/etc/tierwatch/recovery-ha.yml:ro",
                    "recovery-state:/var/lib/tierwatch",
                ]
            ),
            "own state_dir",
        ),
    ],
)
def test_compose_ha_checks_fail_when_a_count_changes_alone(change: Any, expected: str) -> None:
    compose = _compose_ha()
    change(compose)
    problems = compose_ha_problems(compose)
    assert any(expected in p for p in problems), problems


def test_compose_merge_refuses_keys_it_does_not_model() -> None:
    base = {"services": {"a": {"image": "x", "volumes": ["./f:/etc/f:ro", "v:/data"]}}}
    merged = merge_compose(base, {"services": {"a": {"volumes": ["./g:/etc/f:ro"], "command": ["run"]}}})
    assert merged["services"]["a"] == {
        "image": "x",
        "volumes": ["v:/data", "./g:/etc/f:ro"],
        "command": ["run"],
    }
    with pytest.raises(AssertionError, match="environment"):
        merge_compose(base, {"services": {"a": {"environment": {"X": "1"}}}})


def test_compose_ha_configs_pass_the_real_tools(tmp_path: Path) -> None:
    services = _compose_ha()["services"]
    promtool = _tool("promtool", "Debian package prometheus (scripts/setup installs it)")
    for name in _by_image(services, "prom/prometheus"):
        command = services[name]["command"]
        source = _mounted(
            services[name], next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
        )
        config = yaml.safe_load(source.read_text())
        rules_mount = next(m for m in services[name]["volumes"] if m.startswith("../../rules:"))
        assert config["rule_files"] == [_volume_target(rules_mount) + "/*.yml"]
        config["rule_files"] = [str(ROOT / "rules" / "*.yml")]
        (tmp_path / source.name).write_text(yaml.safe_dump(config))
        result = _run([promtool, "check", "config", str(tmp_path / source.name)])
        assert result.returncode == 0, result.stdout + result.stderr
        found = re.findall(r"SUCCESS: (\d+) rules found", result.stdout)
        assert len(found) == len(list((ROOT / "rules").glob("*.yml"))) and all(int(n) > 0 for n in found)
    amtool = _tool("amtool", "Debian package prometheus-alertmanager (scripts/setup installs it)")
    result = _run([amtool, "check-config", str(COMPOSE / "alertmanager-ha.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    secret_targets = {s["target"] for s in services["alertmanager-3"]["secrets"]}
    files = set(re.findall(r"_file: (\S+)", (COMPOSE / "alertmanager-ha.yml").read_text()))
    assert files and files <= secret_targets
    # the HA recovery config: check-config, and the same as recovery.yml but for recovery.ha
    assert tierwatch_cli(["check-config", "--no-secrets", str(COMPOSE / "recovery-ha.yml")]) == 0
    single = yaml.safe_load((COMPOSE / "recovery.yml").read_text())
    ha = yaml.safe_load((COMPOSE / "recovery-ha.yml").read_text())
    assert ha["clusters"] == single["clusters"]
    assert {k: v for k, v in ha["recovery"].items() if k not in ("ha", "replica_labels")} == single[
        "recovery"
    ]
    for name in ("recover", "recover-2"):
        targets = {s["target"] for s in services[name]["secrets"]}
        assert (
            set(
                re.findall(
                    r"(?:password_file|bearer_token_file): (\S+)", (COMPOSE / "recovery-ha.yml").read_text()
                )
            )
            <= targets
        )
