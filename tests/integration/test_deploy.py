"""deploy/ holds together: the generated files equal the generator's output; the Kubernetes manifests
(rendered by kustomize) pass Kubernetes' schemas (kubernetes-validate) and the prometheus-operator's
(the npm package @kubernetes-models/prometheus-operator); the PrometheusRules are rules/ exactly and
pass promtool; the AlertmanagerConfig says what alertmanager/alertmanager.yml says; scrape jobs carry the
job names the rules expect; the sharded overlay covers every cluster once; the Dockerfile and the
compose stack reference only what exists."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tierwatch import __version__
from tierwatch.cli import main as tierwatch_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
VALIDATOR = K8S / "validate"
OVERLAYS = ("base", "overlays/sharded", "overlays/ha")
K8S_VERSION = "1.35.0"
SECRET = "tierwatch-secrets"
SECRET_KEYS = {"redis", "pg", "pg-admin", "recovery-token", "slack-webhook-url"}
JOBS = {"tierwatch", "tierwatch-recovery", "node"}
Obj = dict[str, Any]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tierwatch_deploy_generate", K8S / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


class _KustomizeLoader(yaml.SafeLoader):
    """kustomize writes YAML 1.2, where a bare ``=`` is a string (YAML 1.1's "value" tag to PyYAML)."""


_KustomizeLoader.add_constructor(
    "tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node)
)


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return path


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kwargs)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """``kubectl kustomize`` of the base and of each overlay: name -> objects."""
    kubectl = _tool("kubectl", "it ships kustomize (`kubectl kustomize`), used to render deploy/kubernetes")
    out = {}
    for overlay in OVERLAYS:
        result = _run([kubectl, "kustomize", str(K8S / overlay)])
        assert result.returncode == 0, f"kustomize {overlay} failed:\n{result.stderr}"
        out[overlay] = [d for d in yaml.load_all(result.stdout, Loader=_KustomizeLoader) if d]
    return out


@contextlib.contextmanager
def _validator_lock(exclusive: bool) -> Iterator[None]:
    """Test files run in parallel (pytest-xdist): installing node_modules (exclusive) never overlaps a
    validation reading it (shared)."""
    with open(VALIDATOR / "node_modules.lock", "a") as lock:  # git-ignored with node_modules
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def crd_validator() -> list[str]:
    """The command that validates operator objects: node + the committed script, its packages installed
    (``npm ci`` once per package-lock.json: a stamp in node_modules records which)."""
    node = _tool("node", "Node.js runs the prometheus-operator schema validators")
    npm = _tool("npm", "npm installs @kubernetes-models/prometheus-operator")
    lock_hash = hashlib.sha256((VALIDATOR / "package-lock.json").read_bytes()).hexdigest()
    stamp = VALIDATOR / "node_modules" / ".tierwatch-installed"
    with _validator_lock(exclusive=True):
        if not stamp.is_file() or stamp.read_text() != lock_hash:
            result = _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=VALIDATOR)
            if result.returncode != 0:
                pytest.fail(
                    f"npm ci in {VALIDATOR} failed (the npm registry must be reachable):\n{result.stderr}"
                )
            stamp.write_text(lock_hash)
    return [node, str(VALIDATOR / "validate_crds.mjs")]


def _validate_crds(command: list[str], objects: list[Obj], tmp_path: Path) -> tuple[int, list[Obj]]:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(objects))
    with _validator_lock(exclusive=False):
        result = _run([*command, str(path)])
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = _find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_specs(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, o["spec"]["template"]["spec"]) for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def _is_tierwatch(workload: Obj) -> bool:
    """A workload running the tierwatch image (the HA overlay also runs etcd and VictoriaMetrics)."""
    return workload["metadata"]["labels"].get("app.kubernetes.io/name") == "tierwatch"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- generated files ----


def test_generated_files_are_up_to_date() -> None:
    problems = gen.stale(gen.render())
    assert not problems, "generated files are stale: run python deploy/kubernetes/generate.py\n" + "\n".join(
        problems
    )


def test_prometheusrules_are_the_rules_files_exactly(rendered: dict[str, list[Obj]]) -> None:
    for objects in rendered.values():
        rules = _find(objects, "PrometheusRule")
        by_source = {r["metadata"]["annotations"]["tierwatch/source"]: r for r in rules}
        files = sorted((ROOT / "rules").glob("*.yml"))
        assert sorted(by_source) == [f"rules/{p.name}" for p in files]
        for path in files:
            assert (
                by_source[f"rules/{path.name}"]["spec"]["groups"]
                == yaml.safe_load(path.read_text())["groups"]
            )


def test_prometheusrules_pass_promtool(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    promtool = _tool("promtool", "Debian package prometheus (scripts/setup installs it)")
    paths = []
    for rule in _find(rendered["base"], "PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        paths.append(str(path))
    assert len(paths) == len(list((ROOT / "rules").glob("*.yml")))
    result = _run([promtool, "check", "rules", *paths])
    assert result.returncode == 0, result.stdout + result.stderr


def _secret_refs(value: Any) -> list[tuple[str, str]]:
    """Every SecretKeySelector ({name, key}) inside ``value``."""
    if isinstance(value, dict):
        if set(value) == {"name", "key"}:
            return [(value["name"], value["key"])]
        return [ref for v in value.values() for ref in _secret_refs(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _secret_refs(v)]
    return []


def _walk(route: Obj) -> list[Obj]:
    return [route, *(r for child in route.get("routes", []) for r in _walk(child))]


def test_alertmanagerconfig_says_what_alertmanager_yml_says(rendered: dict[str, list[Obj]]) -> None:
    source = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    objects = rendered["base"]
    spec = _one(objects, "AlertmanagerConfig", "tierwatch")["spec"]

    pairs = list(zip(_walk(source["route"]), _walk(spec["route"]), strict=True))
    for src, dst in pairs:
        assert dst["receiver"] == src.get("receiver", dst["receiver"])
        for snake, camel in gen._ROUTE_KEYS.items():
            assert dst.get(camel) == src.get(snake), (snake, src)
        assert dst.get("matchers", []) == [gen.parse_matcher(m) for m in src.get("matchers", [])]
    assert [r["receiver"] for _, r in pairs[1:]] == [
        "deadmans-switch",
        "recovery",
        "pager",
        "pager",  # its child route: one page per load-balancer pair
        "tickets",
        "chat",
    ]

    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in source["receivers"]]
    assert len(spec["inhibitRules"]) == len(source["inhibit_rules"])
    for src, dst in zip(source["inhibit_rules"], spec["inhibitRules"], strict=True):
        assert dst["sourceMatch"] == [gen.parse_matcher(m) for m in src["source_matchers"]]
        assert dst["targetMatch"] == [gen.parse_matcher(m) for m in src["target_matchers"]]
        assert dst["equal"] == src["equal"]

    # Every secret is a key of the one Secret the README tells users to create.
    refs = _secret_refs(spec)
    assert refs and {name for name, _ in refs} == {SECRET} and {key for _, key in refs} <= SECRET_KEYS

    # The recovery webhook reaches the recovery Service of the rendered manifests.
    recovery = next(r for r in spec["receivers"] if r["name"] == "recovery")["webhookConfigs"][0]
    service = _one(objects, "Service", "tierwatch-recovery")
    port = service["spec"]["ports"][0]["port"]
    assert (
        recovery["url"] == f"http://tierwatch-recovery.{service['metadata']['namespace']}.svc:{port}/webhook"
    )
    assert recovery["httpConfig"]["authorization"]["credentials"] == {"name": SECRET, "key": "recovery-token"}
    assert recovery["sendResolved"] is True


def test_alertmanager_translation_refuses_what_it_cannot_express() -> None:
    base = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    for mutate in (
        lambda c: c["route"]["routes"][0].update(match={"alertname": "Watchdog"}),  # deprecated form
        lambda c: c.update(templates=["/etc/alertmanager/*.tmpl"]),
        lambda c: c["receivers"][1].update(email_configs=[{"to": "ops@example.com"}]),
        lambda c: c["route"]["routes"][0].update(matchers=["alertname=Watchdog"]),  # unquoted value
    ):
        config = json.loads(json.dumps(base))
        mutate(config)
        with pytest.raises(ValueError):
            gen.alertmanager_config(config)


def test_dashboards_become_labelled_configmaps(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    maps = [
        c for c in _find(rendered["base"], "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")
    ]
    by_source = {c["metadata"]["annotations"]["tierwatch/source"]: c for c in maps}
    boards = sorted((ROOT / "dashboards").glob("*.json"))
    assert sorted(by_source) == [f"dashboards/{p.name}" for p in boards]
    for path in boards:
        assert by_source[f"dashboards/{path.name}"]["data"] == {path.name: path.read_text()}
        assert by_source[f"dashboards/{path.name}"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = tmp_path / "Tierwatch Overview.json"
    board.write_text('{"title": "x"}\n')
    cm = gen.dashboard_configmap(board)
    assert cm["metadata"]["name"] == "tierwatch-dashboard-tierwatch-overview"
    assert cm["data"] == {board.name: '{"title": "x"}\n'}
    board.write_text("not json")
    with pytest.raises(json.JSONDecodeError):
        gen.dashboard_configmap(board)


# ---- schemas ----


def test_core_objects_pass_kubernetes_schemas(rendered: dict[str, list[Obj]]) -> None:
    checked = 0
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                continue
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {exc.message} at {exc.path}"
                )
            checked += 1
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
    } <= kinds
    assert checked >= 15


def test_kubernetes_validate_rejects_a_broken_deployment(rendered: dict[str, list[Obj]]) -> None:
    deployment = json.loads(json.dumps(_one(rendered["base"], "Deployment", "tierwatch-recovery")))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9490"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.slow
def test_operator_objects_pass_the_operator_schemas(
    rendered: dict[str, list[Obj]], crd_validator: list[str], tmp_path: Path
) -> None:
    objects = [
        o for objects in rendered.values() for o in objects if o["apiVersion"].startswith("monitoring.")
    ]
    code, report = _validate_crds(crd_validator, objects, tmp_path)
    problems = [f"{r['kind']} {r['name']}: {e}" for r in report for e in r["errors"]]
    assert code == 0 and not problems, "\n".join(problems)
    assert len(report) == len(objects)
    kinds = {
        "PrometheusRule",
        "ServiceMonitor",
        "PodMonitor",
        "AlertmanagerConfig",
        "Prometheus",
        "Alertmanager",
    }
    assert {r["kind"] for r in report} == kinds


def test_operator_schema_check_rejects_broken_objects(
    rendered: dict[str, list[Obj]], crd_validator: list[str], tmp_path: Path
) -> None:
    objects = json.loads(json.dumps(rendered["base"]))
    rule = _find(objects, "PrometheusRule")[0]
    rule["spec"]["groups"][1]["rules"][0]["for"] = "5 minutes"
    monitor = _one(objects, "ServiceMonitor", "tierwatch-exporter")
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "5s"  # unknown field: snake_case
    am = _one(objects, "AlertmanagerConfig", "tierwatch")
    am["spec"]["route"]["routes"][1]["group_wait"] = "0s"  # unknown field in a child route
    am["spec"]["receivers"][0]["webhookConfigs"][0]["sendResolved"] = "yes"
    code, report = _validate_crds(crd_validator, [rule, monitor, am], tmp_path)
    assert code == 1
    errors = {r["kind"]: " | ".join(r["errors"]) for r in report}
    assert "/for: must match pattern" in errors["PrometheusRule"]
    assert "scrape_interval" in errors["ServiceMonitor"]
    assert "group_wait" in errors["AlertmanagerConfig"] and "must be boolean" in errors["AlertmanagerConfig"]


# ---- what the manifests mean ----


def test_scrape_jobs_are_named_as_the_rules_expect(rendered: dict[str, list[Obj]]) -> None:
    kit_rules = (ROOT / "rules" / "kit.rules.yml").read_text()
    assert 'job="tierwatch"' in kit_rules and 'job="tierwatch-recovery"' in kit_rules
    for overlay, objects in rendered.items():
        jobs = set()
        for monitor in _find(objects, "ServiceMonitor"):
            spec = monitor["spec"]
            services = [
                s
                for s in _find(objects, "Service")
                if _matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])
            ]
            assert len(services) == 1, f"{overlay}: {monitor['metadata']['name']} selects {len(services)}"
            service = services[0]
            jobs.add(service["metadata"]["labels"][spec["jobLabel"]])
            ports = {p["name"] for p in service["spec"]["ports"]}
            assert {e["port"] for e in spec["endpoints"]} <= ports
            pods = [
                o
                for o in [*(o for o, _ in _pod_specs(objects)), *_find(objects, "DaemonSet")]
                if _matches(service["spec"]["selector"], o["spec"]["selector"]["matchLabels"])
            ]
            assert pods, f"{overlay}: Service {service['metadata']['name']} selects no workload"
        assert jobs == JOBS, overlay


def test_workloads_are_safe_and_reference_what_exists(rendered: dict[str, list[Obj]]) -> None:
    for overlay, objects in rendered.items():
        configmaps = {c["metadata"]["name"]: c for c in _find(objects, "ConfigMap")}
        claims = {c["metadata"]["name"] for c in _find(objects, "PersistentVolumeClaim")}
        for workload, pod in _pod_specs(objects):
            where = f"{overlay}: {workload['kind']} {workload['metadata']['name']}"
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            assert pod["automountServiceAccountToken"] is False
            if not _is_tierwatch(workload):  # another engine: pinned, unprivileged, probed
                for container in pod["containers"]:
                    assert re.fullmatch(r"[\w./-]+:v\d+\.\d+\.\d+", container["image"]), where
                    ctx = container["securityContext"]
                    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
                    assert container["readinessProbe"] and container["livenessProbe"], where
                continue
            volumes = {v["name"]: v for v in pod["volumes"]}
            for volume in volumes.values():
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps, where
                    data = configmaps[volume["configMap"]["name"]]["data"]
                    assert {i["key"] for i in volume["configMap"].get("items", [])} <= set(data), where
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == SECRET, where
                    assert {i["key"] for i in volume["secret"]["items"]} <= SECRET_KEYS, where
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, where
            for template in workload["spec"].get("volumeClaimTemplates", []):  # a claim per pod
                volumes[template["metadata"]["name"]] = {"persistentVolumeClaim": template}
            for container in pod["containers"]:
                assert container["image"] == f"tierwatch:{__version__}", where
                ctx = container["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
                assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
                assert container["livenessProbe"]["httpGet"]["path"] == "/health"
                mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
                _check_config_mounts(where, workload, container, mounts, configmaps)

        # The state_dir is on persistent storage: the one claim of the single process (Recreate: never
        # two pods on one inbox), or a claim per replica of the HA StatefulSet.
        (recovery,) = [
            w
            for w in _find(objects, "Deployment") + _find(objects, "StatefulSet")
            if w["metadata"]["name"] == "tierwatch-recovery"
        ]
        config = yaml.safe_load(configmaps[_config_map_name(recovery)]["data"]["recovery.yml"])["recovery"]
        mounts = {
            m["mountPath"]: m["name"]
            for m in recovery["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        }
        volumes = {v["name"]: v for v in recovery["spec"]["template"]["spec"]["volumes"]}
        if recovery["kind"] == "Deployment":
            assert recovery["spec"]["replicas"] == 1 and recovery["spec"]["strategy"]["type"] == "Recreate"
            assert "ha" not in config
            assert "persistentVolumeClaim" in volumes[mounts[config["state_dir"]]]
        else:
            assert recovery["spec"]["replicas"] >= 2 and config["ha"]["etcd"], overlay
            claims_per_pod = {t["metadata"]["name"] for t in recovery["spec"]["volumeClaimTemplates"]}
            assert mounts[config["state_dir"]] in claims_per_pod, overlay


def _config_map_name(workload: Obj) -> str:
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    return next(v["configMap"]["name"] for v in volumes if v["name"] == "config")


def _check_config_mounts(
    where: str, workload: Obj, container: Obj, mounts: dict[str, Obj], configmaps: dict[str, Obj]
) -> None:
    """The --config file is in the mounted ConfigMap (for a StatefulSet: one per pod name), and every
    secret file the config names is a mounted Secret key."""
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    volume = mounts[str(config_path.parent)]
    data = configmaps[volume["configMap"]["name"]]["data"]
    if "$(POD_NAME)" in str(config_path):  # a file per pod of the StatefulSet
        pods = [f"{workload['metadata']['name']}-{i}" for i in range(workload["spec"]["replicas"])]
        names = [config_path.name.replace("$(POD_NAME)", pod) for pod in pods]
        assert sorted(names) == sorted(data), f"{where}: pods {pods} vs ConfigMap keys {sorted(data)}"
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env["POD_NAME"] == "metadata.name"
    else:
        names = [config_path.name]
    configs = [yaml.safe_load(data[name]) for name in names]
    secret_mounts = {p: v for p, v in mounts.items() if "secret" in v}
    for config in configs:
        files = re.findall(
            r"'(?:password_file|admin_password_file|bearer_token_file)': '([^']+)'", str(config)
        )
        assert files, where
        for file in files:
            path = Path(file)
            assert str(path.parent) in secret_mounts, f"{where}: {file} is not on a mounted Secret"
            keys = {i["path"] for i in secret_mounts[str(path.parent)]["secret"]["items"]}
            assert path.name in keys, f"{where}: {file} is not a key of the mounted Secret"


def test_sharded_overlay_covers_every_cluster_once(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    objects = rendered["overlays/sharded"]
    assert not _find(objects, "Deployment", "tierwatch-exporter")
    sts = _one(objects, "StatefulSet", "tierwatch-shard")
    data = _one(objects, "ConfigMap", _config_map_name(sts))["data"]
    replicas = sts["spec"]["replicas"]
    assert replicas == gen.SHARDS and sorted(data) == [f"tierwatch-shard-{i}.yml" for i in range(replicas)]
    example = yaml.safe_load((ROOT / "examples" / "tierwatch.yml").read_text())
    shards = [yaml.safe_load(data[f"tierwatch-shard-{i}.yml"]) for i in range(replicas)]
    seen = [c["name"] for shard in shards for c in shard["clusters"]]
    assert sorted(seen) == sorted(c["name"] for c in example["clusters"])
    by_name = {c["name"]: c for c in example["clusters"]}
    for i, shard in enumerate(shards):
        assert {k: v for k, v in shard.items() if k != "clusters"} == {
            k: v for k, v in example.items() if k != "clusters"
        }
        assert all(c == by_name[c["name"]] for c in shard["clusters"])
        path = tmp_path / f"shard-{i}.yml"
        path.write_text(data[f"tierwatch-shard-{i}.yml"])
        assert tierwatch_cli(["check-config", "--no-secrets", str(path)]) == 0


def test_split_config_balances_whole_clusters(tmp_path: Path) -> None:
    clusters = [
        {"name": f"c{i}", "tier": "app", "targets": [{"name": f"t{i}-{j}"} for j in range(n)]}
        for i, n in enumerate([1, 7, 3, 3, 2])
    ]
    shards = gen.split_config({"monitor": {"interval": "5s"}, "clusters": clusters}, 3)
    assert [[c["name"] for c in s["clusters"]] for s in shards] == [["c1"], ["c2", "c4"], ["c0", "c3"]]
    assert all(s["monitor"] == {"interval": "5s"} for s in shards)
    with pytest.raises(ValueError, match="never split"):
        gen.split_config({"clusters": clusters}, 6)
    config = tmp_path / "in.yml"
    config.write_text((ROOT / "examples" / "tierwatch.yml").read_text())
    assert gen.main(["shard", str(config), "--shards", "3", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"tierwatch-shard-{i}.yml" for i in range(3)
    ]


# ---- the image ----


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_pinned_non_root_and_runs_tierwatch() -> None:
    instructions = _dockerfile()
    froms = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    assert all(
        re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", f) for f in froms
    ), froms
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "numeric USER, so runAsNonRoot can verify it"
    assert [json.loads(a) for op, a in final if op == "ENTRYPOINT"] == [["tierwatch"]]
    assert [json.loads(a) for op, a in final if op == "CMD"] == [
        ["serve", "--config", "/etc/tierwatch/tierwatch.yml", "--listen", "0.0.0.0:9489"]
    ]
    assert sorted(p for op, a in final if op == "EXPOSE" for p in a.split()) == ["9489", "9490"]
    assert any(op == "HEALTHCHECK" and "/health" in a + str(final) for op, a in final)
    installs = [a for op, a in instructions if op == "RUN" and "pip install" in a]
    assert len(installs) == 1 and re.search(r"pip install \.(\s|$)", installs[0]), (
        "pip install . without extras"
    )
    secretish = re.compile(r"(PASSWORD|TOKEN|SECRET|API_KEY|CREDENTIAL)", re.IGNORECASE)
    assert not [a for op, a in instructions if op in ("ENV", "ARG", "LABEL") and secretish.search(a)]


def _copied_sources() -> list[str]:
    sources = []
    for op, args in _dockerfile():
        if op == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    return sources


def test_image_copies_only_what_pyproject_builds_from() -> None:
    assert sorted(_copied_sources()) == ["README.md", "exporter/", "pyproject.toml"]
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!exporter/"} <= set(ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'readme = "README.md"' in pyproject and 'packages = ["exporter/tierwatch"]' in pyproject


def test_image_sources_build_the_package(tmp_path: Path) -> None:
    """What the Dockerfile copies is enough to build tierwatch (pip fetches hatchling like the build)."""
    src = tmp_path / "src"
    for source in _copied_sources():
        target = src / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"), str(src)]
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "out").glob("tierwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tierwatch/cli.py" in names and "tierwatch/recovery/service.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tierwatch = tierwatch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ---- compose ----


def _compose() -> Obj:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_compose_references_exist() -> None:
    compose = _compose()
    check_compose_references(compose)
    services = compose["services"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in services["prometheus"]["volumes"]}
    assert (COMPOSE / "../../rules").resolve() == ROOT / "rules" and "../../rules" in mounts
    assert "../../dashboards" in [m.split(":")[0] for m in services["grafana"]["volumes"]]


def check_compose_references(compose: Obj) -> None:
    """Every dependency, mounted file, volume and secret a service names exists; built images are ours."""
    services = compose["services"]
    volumes = set(compose.get("volumes", {}))
    secrets = compose["secrets"]
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
            elif source.startswith("/"):  # a host path (node_exporter reads the host): read-only
                assert ":ro" in mount, f"{name}: host path {source} must be mounted read-only"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert secret["source"] in secrets, f"{name}: secret {secret['source']} is not declared"
        if "build" in service:
            assert (COMPOSE / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert service["image"] == f"tierwatch:{__version__}"
    assert {"tierwatch", "recover", "prometheus", "alertmanager", "grafana"} <= set(services)


def test_compose_secrets_are_made_by_init_secrets_and_ignored_by_git(tmp_path: Path) -> None:
    secrets = _compose()["secrets"]
    result = _run(["sh", str(COMPOSE / "init-secrets"), str(tmp_path / "s")])
    assert result.returncode == 0, result.stderr
    made = {p.name for p in (tmp_path / "s").iterdir()}
    assert {Path(s["file"]).name for s in secrets.values()} == made
    assert all(Path(s["file"]).parent == Path("secrets") for s in secrets.values())
    ignored = _run(["git", "check-ignore", "-q", str(COMPOSE / "secrets" / "redis")], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/compose/secrets/ must be git-ignored"


def _listen_port(service: Obj) -> str:
    command = service["command"]
    return command[command.index("--listen") + 1].rsplit(":", 1)[1]


def test_compose_prometheus_scrapes_the_kits_jobs(tmp_path: Path) -> None:
    services = _compose()["services"]
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["tierwatch"] == [f"tierwatch:{_listen_port(services['tierwatch'])}"]
    assert jobs["tierwatch-recovery"] == [f"recover:{_listen_port(services['recover'])}"]
    peers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert len(peers) >= 2 and all(am.split(":")[0] in services for am in peers)  # a cluster, every peer
    rules_mount = next(m for m in services["prometheus"]["volumes"] if m.startswith("../../rules:"))
    assert config["rule_files"] == [rules_mount.split(":")[1] + "/*.yml"]
    promtool = _tool("promtool", "Debian package prometheus (scripts/setup installs it)")
    config["rule_files"] = [str(ROOT / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.findall(r"SUCCESS: (\d+) rules found", result.stdout)
    assert len(found) == len(list((ROOT / "rules").glob("*.yml"))) and all(int(n) > 0 for n in found)


def test_compose_alertmanager_reaches_the_recovery_service() -> None:
    services = _compose()["services"]
    text = (COMPOSE / "alertmanager.yml").read_text()
    config = yaml.safe_load(text)
    recovery = next(r for r in config["receivers"] if r["name"] == "recovery")["webhook_configs"][0]
    assert recovery["url"] == f"http://recover:{_listen_port(services['recover'])}/webhook"
    secret_targets = {s["target"] for s in services["alertmanager"]["secrets"]}
    files = set(re.findall(r"_file: (\S+)", text))
    assert files and files <= secret_targets
    amtool = _tool("amtool", "Debian package prometheus-alertmanager (scripts/setup installs it)")
    result = _run([amtool, "check-config", str(COMPOSE / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_tierwatch_configs_fit_the_compose_network() -> None:
    compose = _compose()
    services = compose["services"]
    exporter = yaml.safe_load((COMPOSE / "tierwatch.yml").read_text())
    recovery = yaml.safe_load((COMPOSE / "recovery.yml").read_text())
    assert exporter["clusters"] == recovery["clusters"]
    for service_name, file in (("tierwatch", "tierwatch.yml"), ("recover", "recovery.yml")):
        service = services[service_name]
        assert tierwatch_cli(["check-config", "--no-secrets", str(COMPOSE / file)]) == 0
        assert any(m.startswith(f"./{file}:/etc/tierwatch/{file}") for m in service["volumes"])
        targets = {s["target"] for s in service["secrets"]}
        text = (COMPOSE / file).read_text()
        secret_files = set(re.findall(r"(?:password_file|bearer_token_file): (\S+)", text))
        assert secret_files and secret_files <= targets, (service_name, secret_files - targets)
        sockets = re.findall(r"stats_socket: (\S+?)[,}]", text)
        assert sockets, file
        for socket in sockets:
            assert any(
                m.endswith(f":{Path(socket).parent}") or f":{Path(socket).parent}:" in m
                for m in service["volumes"]
            )
    for cluster in exporter["clusters"]:
        for target in cluster["targets"]:
            host = re.match(r"\w+://(?:[^@/]*@)?([^:/]+)", target["url"])
            assert host and host.group(1) in services, target["url"]
            assert target["name"] == host.group(1), "target names are the compose service names"


def test_compose_haproxy_config_is_valid() -> None:
    haproxy = _tool("haproxy", "Debian package haproxy (scripts/setup installs it)")
    result = _run([haproxy, "-c", "-f", str(COMPOSE / "haproxy" / "haproxy.cfg")], env={"LB_NAME": "lb-1"})
    assert result.returncode == 0, result.stdout + result.stderr
    recovery = yaml.safe_load((COMPOSE / "recovery.yml").read_text())["recovery"]["clusters"]
    cfg = (COMPOSE / "haproxy" / "haproxy.cfg").read_text()
    assert f"backend {recovery['cache-main']['write_backend']}" in cfg
    assert f"backend {recovery['web']['app_backend']}" in cfg


def test_compose_grafana_loads_the_dashboards_from_prometheus() -> None:
    services = _compose()["services"]
    mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"])
    provisioning = COMPOSE / "../../dashboards/provisioning"
    assert mounts["../../dashboards/provisioning"] == "/etc/grafana/provisioning"
    providers = [
        p
        for f in (provisioning / "dashboards").glob("*.y*ml")
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [mounts["../../dashboards"]]
    sources = [
        d
        for f in (provisioning / "datasources").glob("*.y*ml")
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    prometheus = next(d for d in sources if d["type"] == "prometheus")
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)/?", prometheus["url"]).groups()  # type: ignore[union-attr]
    assert host in services and f"127.0.0.1:{port}:{port}" in services[host]["ports"]
