"""deploy/kuberay/: the Kubernetes manifests (a KubeRay RayJob and RayCluster, an MLflow server),
checked without a Kubernetes cluster (none is used here, and none was ever applied to one):

- against KubeRay's own CRD schemas: the openAPIV3Schema of ray.io_rayjobs.yaml and
  ray.io_rayclusters.yaml of KubeRay v1.7.0, with jsonschema, unknown fields rejected as
  `kubectl apply`'s strict field validation rejects them. The CRD files are not in this repository
  (nothing taken from a public repository is committed here): they are read from the folder
  $KUBERAY_CRDS, else ../shared/kuberay/v1.7.0/ beside the checkout, checked against their pinned
  sha256, and those tests skip, saying so, when the files are absent;
- against what the manifests promise (issue 21): no training on the head, GPU workers scaling
  from zero, token authentication, credentials only from Secrets, nothing exposed outside the
  cluster, the cluster deleted after the job;
- the MLflow server's command line, run for real (its Host-header check admits the Service's name).

Not checked: KubeRay's CEL rules (a test asserts the manifests set no field that carries one),
the operator's own checks beyond what is asserted below, the core Kubernetes schemas (Pod,
Service, Deployment), and everything that needs a cluster: scheduling, GPUs, the autoscaler, S3.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator import cli
from orchestrator.schema import Resources
from support import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kuberay"
RAYJOB, RAYCLUSTER, MLFLOW, SECRETS = "rayjob.yaml", "raycluster.yaml", "mlflow.yaml", "secrets.example.yaml"
MANIFESTS = (RAYJOB, RAYCLUSTER, MLFLOW, SECRETS)

KUBERAY = "v1.7.0"  # the release whose CRDs the manifests are checked against
CRDS = {  # kind: (file, sha256), as in KubeRay's ray-operator/config/crd/bases/ at that tag
    "RayJob": ("ray.io_rayjobs.yaml", "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"),
    "RayCluster": ("ray.io_rayclusters.yaml", "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"),
}

# Example values for the ${NAME} placeholders, as a user exports them before `envsubst`.
VALUES = {"ORCHESTRATE_IMAGE": "registry.example.com/orchestrate:0123abc",
          "S3_BUCKET": "example-orchestrate", "AWS_REGION": "us-west-2"}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Environment variables that carry a credential or an address with one: only from a Secret.
SECRET_ENV = re.compile(r"^(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|MLFLOW_TRACKING_URI|"
                        r"MLFLOW_BACKEND_STORE_URI|.*TOKEN.*|.*PASSWORD.*|.*SECRET.*)$")


# The manifests, rendered ---------------------------------------------------------------------------

def text_of(name: str) -> str:
    return (DEPLOY / name).read_text()


def envsubst_list(name: str) -> list[str]:
    """The variables of the `envsubst '...'` command in the file's header (none: nothing to fill)."""
    match = re.search(r"envsubst '([^']*)'", text_of(name))
    return PLACEHOLDER.findall(match.group(1)) if match else []


def render(name: str) -> str:
    """The file as `envsubst '<its list>'` renders it (the manifests use only the ${NAME} form)."""
    listed = envsubst_list(name)
    return PLACEHOLDER.sub(lambda m: VALUES[m.group(1)] if m.group(1) in listed else m.group(0), text_of(name))


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render(name)) if doc]


def one(name: str, kind: str) -> dict:
    found = [doc for doc in documents(name) if doc["kind"] == kind]
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def ray_cluster_of(manifest: dict) -> dict:
    """The Ray cluster's spec: a RayJob's rayClusterSpec, a RayCluster's spec."""
    return manifest["spec"].get("rayClusterSpec", manifest["spec"])


def cluster_spec(name: str) -> dict:
    return ray_cluster_of(one(name, {RAYJOB: "RayJob", RAYCLUSTER: "RayCluster"}[name]))


def pod_specs(name: str) -> list[dict]:
    """Every pod template's spec in a file."""
    specs = []
    for doc in documents(name):
        if doc["kind"] in ("RayJob", "RayCluster"):
            spec = ray_cluster_of(doc)
            specs += [spec["headGroupSpec"]["template"]["spec"]]
            specs += [group["template"]["spec"] for group in spec.get("workerGroupSpecs", [])]
        elif doc["kind"] == "Deployment":
            specs.append(doc["spec"]["template"]["spec"])
    return specs


def containers(name: str) -> list[dict]:
    return [c for spec in pod_specs(name) for c in spec["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {var["name"]: var for var in container.get("env", [])}


# KubeRay's CRD schemas ------------------------------------------------------------------------------

def crd_folder() -> Path:
    return Path(os.environ.get("KUBERAY_CRDS") or REPO.parent / "shared" / "kuberay" / KUBERAY)


def strict(node):
    """The schema with unknown fields rejected wherever Kubernetes rejects them: an object schema
    that lists its properties and neither allows more nor preserves unknown fields. (Kubernetes
    prunes such fields silently on its own; `kubectl apply` asks the server for strict field
    validation, which rejects them.)"""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


@functools.cache
def crd_schema(kind: str) -> dict:
    """The served, stored v1 openAPIV3Schema of the pinned release's CRD for `kind`."""
    folder = crd_folder()
    if not all((folder / file).is_file() for file, _ in CRDS.values()):
        pytest.skip(f"KubeRay {KUBERAY} CRDs not found in {folder}: put {' and '.join(f for f, _ in CRDS.values())} "
                    f"there, or name the folder that holds them in KUBERAY_CRDS")
    file, sha256 = CRDS[kind]
    data = (folder / file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256, f"{folder / file} is not KubeRay {KUBERAY}'s {file}"
    crd = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2.3 MB of YAML
    assert crd["spec"]["group"] == "ray.io" and crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return v1["schema"]["openAPIV3Schema"]


@functools.cache
def validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(strict(crd_schema(kind)))  # OpenAPI 3.0's schemas are Draft 4's


def schema_errors(manifest: dict) -> list[str]:
    """What KubeRay's CRD schema says is wrong with a manifest, one line per field: its path, then why."""
    kind = manifest.get("kind")
    if manifest.get("apiVersion") != "ray.io/v1" or kind not in CRDS:
        return [f"$: apiVersion/kind {manifest.get('apiVersion')}/{kind} is not one of ray.io/v1 {sorted(CRDS)}"]
    found = []
    for error in validator(kind).iter_errors(manifest):
        if error.validator == "additionalProperties":
            unknown = set(error.instance) - set(error.schema.get("properties", {}))
            found += [f"{error.json_path}.{key}: unknown field" for key in sorted(unknown)]
        elif error.validator == "required":
            missing = re.match(r"'(.+)' is a required property", error.message).group(1)
            found.append(f"{error.json_path}.{missing}: required, missing")
        else:
            found.append(f"{error.json_path}: {error.message}")
    return sorted(found)


def fields_with_cel_rules(schema: dict, instance, path: str = "$") -> list[str]:
    """The fields a manifest sets whose schema carries x-kubernetes-validations (CEL, not run here)."""
    found = [path] if "x-kubernetes-validations" in schema else []
    if isinstance(instance, dict):
        for key, value in instance.items():
            if key in schema.get("properties", {}):
                found += fields_with_cel_rules(schema["properties"][key], value, f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            found += fields_with_cel_rules(schema["items"], value, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("name", [RAYJOB, RAYCLUSTER])
def test_manifest_passes_kuberays_crd_schema(name):
    (manifest,) = documents(name)
    assert schema_errors(manifest) == []
    assert fields_with_cel_rules(crd_schema(manifest["kind"]), manifest) == []


def _worker(manifest):
    return ray_cluster_of(manifest)["workerGroupSpecs"][0]


def _head(manifest):
    return ray_cluster_of(manifest)["headGroupSpec"]


RAYJOB_GROUP = "$.spec.rayClusterSpec.workerGroupSpecs[0]"
BROKEN = {  # what is broken: (file, how, the line the schema check must give)
    "replicas-not-a-number": (RAYJOB, lambda m: _worker(m).update(replicas="two"),
                              f"{RAYJOB_GROUP}.replicas: 'two' is not of type 'integer'"),
    "num-cpus-not-a-string": (RAYJOB, lambda m: _head(m)["rayStartParams"].update({"num-cpus": 0}),
                              "$.spec.rayClusterSpec.headGroupSpec.rayStartParams['num-cpus']: "
                              "0 is not of type 'string'"),
    "misspelt-spec-field": (RAYJOB, lambda m: m["spec"].update(shutdownAfterJobFinish=True),
                            "$.spec.shutdownAfterJobFinish: unknown field"),
    "unknown-container-field": (RAYJOB, lambda m: _worker(m)["template"]["spec"]["containers"][0].update(resource={}),
                                f"{RAYJOB_GROUP}.template.spec.containers[0].resource: unknown field"),
    "worker-without-template": (RAYJOB, lambda m: _worker(m).pop("template"),
                                f"{RAYJOB_GROUP}.template: required, missing"),
    "worker-without-group-name": (RAYCLUSTER, lambda m: _worker(m).pop("groupName"),
                                  "$.spec.workerGroupSpecs[0].groupName: required, missing"),
    "head-without-template": (RAYCLUSTER, lambda m: _head(m).pop("template"),
                              "$.spec.headGroupSpec.template: required, missing"),
    "auth-mode-not-allowed": (RAYCLUSTER, lambda m: m["spec"]["authOptions"].update(mode="on"),
                              "$.spec.authOptions.mode: 'on' is not one of ['disabled', 'token']"),
    "gpu-count-not-a-quantity": (RAYCLUSTER, lambda m: _worker(m)["template"]["spec"]["containers"][0]
                                 ["resources"]["limits"].update({"nvidia.com/gpu": "one"}),
                                 "$.spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits"
                                 "['nvidia.com/gpu']: 'one' does not match '^(\\\\+|-)?(([0-9]+"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifest_fails_the_schema_naming_the_field(case):
    name, breaks, expected = BROKEN[case]
    (manifest,) = documents(name)
    breaks(manifest)
    (error,) = schema_errors(manifest)
    assert error.startswith(expected)


def test_rayStartParams_is_optional_in_kuberay_1_7_so_the_head_rule_below_is_ours():
    (manifest,) = documents(RAYJOB)
    del _worker(manifest)["rayStartParams"], _head(manifest)["rayStartParams"]
    assert schema_errors(manifest) == []


# What the manifests promise (no CRD needed) ---------------------------------------------------------

def test_rayjob_and_raycluster_run_the_same_cluster():
    assert cluster_spec(RAYJOB) == cluster_spec(RAYCLUSTER)


@pytest.mark.parametrize("name", [RAYJOB, RAYCLUSTER])
def test_head_takes_no_cpus_for_training_and_autoscaling_is_on(name):
    spec = cluster_spec(name)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("name", [RAYJOB, RAYCLUSTER])
def test_gpu_workers_scale_from_zero_and_hold_a_trial_of_all_models(name):
    resources = Resources(**yaml.safe_load((REPO / "experiments" / "all_models.yaml").read_text())["resources"])
    groups = cluster_spec(name)["workerGroupSpecs"]
    assert groups
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        gpus, cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
        assert gpus >= 1 and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]  # Kubernetes: equal
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0
        # a worker and the trial's driver fit on a pod, a whole trial on the group at its largest
        assert resources.gpus_per_worker <= gpus and resources.cpus_per_worker + resources.driver_cpus <= cpus
        assert resources.per_trial()["GPU"] <= gpus * group["maxReplicas"]


def test_rayjob_runs_the_sweep_with_s3_storage_and_deletes_its_cluster_after():
    spec = one(RAYJOB, "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    # KubeRay's submitter runs the entrypoint's words through bash; `ray job submit` quotes them
    # back into one command line (shlex.join) that the head runs in a shell.
    words = shlex.split(shlex.join(shlex.split(spec["entrypoint"])))
    assert words[:2] == ["bash", "-c"] and len(words) == 3, words
    cd, rest = words[2].split(" && ", 1)
    assert cd == "cd /app"  # the Dockerfile's WORKDIR
    argv = shlex.split(rest)
    assert argv[:2] == ["exec", "orchestrate"]
    args = cli.build_parser().parse_args(argv[2:])
    assert args.command == "sweep" and args.file == "experiments/all_models.yaml"
    assert (REPO / args.file).is_file()
    assert args.storage == f"s3://{VALUES['S3_BUCKET']}/ray_results"
    assert not args.resume and not args.tracking_uri  # the tracking URI comes from the Secret
    assert "MLFLOW_TRACKING_URI" in env_of(cluster_spec(RAYJOB)["headGroupSpec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize("name", [RAYJOB, RAYCLUSTER])
def test_token_authentication_is_on_with_the_tokens_secret(name):
    spec = cluster_spec(name)
    assert spec["authOptions"] == {"mode": "token", "secretName": "orchestrate-ray-token"}
    # KubeRay refuses token mode below Ray 2.52.0; the image runs the pinned Ray.
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert spec["rayVersion"] == pins["ray"]
    assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0)
    for container in containers(name):  # KubeRay sets both; nothing here overrides them
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env_of(container)), container["name"]


def secret_keys() -> dict[str, set[str]]:
    return {doc["metadata"]["name"]: set(doc["stringData"]) for doc in documents(SECRETS)}


@pytest.mark.parametrize("name", [RAYJOB, RAYCLUSTER, MLFLOW])
def test_credentials_come_only_from_the_example_secrets(name):
    secrets = secret_keys()
    for container in containers(name):
        env = env_of(container)
        for var in env.values():
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if SECRET_ENV.match(var["name"]):
                assert ref and "value" not in var, f"{name}: {container['name']}: {var['name']} not from a Secret"
            if ref:
                assert ref["key"] in secrets.get(ref["name"], ()), f"{name}: {ref} is not in {SECRETS}"
        # S3 (Ray storage; MLflow's artefacts) needs the keys in every container that uses it
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), container["name"]
    if name != MLFLOW:
        assert cluster_spec(name)["authOptions"]["secretName"] in secrets


def test_no_file_in_deploy_holds_a_credential():
    for path in sorted(DEPLOY.iterdir()):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path  # an AWS access key id
        for userinfo in re.findall(r"://([^/\s'\"@]+)@", text):  # user:password@ in a URI
            assert userinfo.partition(":")[2] in ("", "REPLACE_ME", "..."), (path, userinfo)
    for doc in documents(SECRETS):
        for key, value in doc["stringData"].items():
            assert "REPLACE_ME" in value or key == "MLFLOW_TRACKING_URI", (doc["metadata"]["name"], key)


def test_nothing_is_exposed_outside_the_cluster():
    for name in MANIFESTS:
        for doc in documents(name):
            assert doc["kind"] != "Ingress", name
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
                assert not doc["spec"].get("externalIPs"), name
    for name in (RAYJOB, RAYCLUSTER):
        head = cluster_spec(name)["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
        for spec in pod_specs(name):
            assert not spec.get("hostNetwork") and spec["securityContext"]["runAsNonRoot"] is True
    # MLflow has no login: only Ray head pods (where the sweep driver runs) may reach it.
    deployment, policy = one(MLFLOW, "Deployment"), one(MLFLOW, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"ray.io/node-type": "head"}}}]


def mlflow_container() -> dict:
    (container,) = one(MLFLOW, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def mlflow_option(container: dict, option: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith(option + "=")]
    return value


def test_mlflow_server_reads_its_store_from_a_secret_and_its_service_is_the_tracking_uri():
    container = mlflow_container()
    assert container["command"] == ["mlflow", "server"]
    assert not any(arg.startswith("--backend-store-uri") for arg in container["args"])
    assert env_of(container)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "orchestrate-mlflow-db"
    assert mlflow_option(container, "--artifacts-destination") == f"s3://{VALUES['S3_BUCKET']}/mlflow-artifacts"
    service, deployment = one(MLFLOW, "Service"), one(MLFLOW, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = service["spec"]["ports"]
    (tracking,) = [d for d in documents(SECRETS) if d["metadata"]["name"] == "orchestrate-tracking"]
    assert tracking["stringData"]["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{port['port']}"
    assert mlflow_option(container, "--port") == str(port["port"])


@pytest.mark.slow  # an MLflow server's start: 50-70 s on this 2-core machine under load
def test_mlflow_server_command_admits_the_services_name_and_no_other_host(tmp_path):
    """The Deployment's own command line and environment, run here: the store is a sqlite file and
    the artefacts a folder instead of the Secret's database and S3, the port a free one."""
    container, port = mlflow_container(), free_port()
    replaced = ("--port=", "--artifacts-destination=", "--workers=")  # one worker: this machine is small
    args = [arg for arg in container["args"] if not arg.startswith(replaced)]
    args += [f"--port={port}", f"--artifacts-destination={tmp_path / 'artifacts'}", "--workers=1"]
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", *container["command"][1:], *args], cwd=tmp_path,
                              env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)

    def status(host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", headers={"Host": host})
        return conn.getresponse().status

    try:
        deadline = time.time() + 120
        while True:
            try:
                status("localhost")
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(1)
        assert status("orchestrate-mlflow:5000") == 200  # the Service, from the same namespace
        assert status("orchestrate-mlflow.ml.svc.cluster.local:5000") == 200  # its full name
        assert status(f"localhost:{port}") == 200  # kubectl port-forward
        assert status("attacker.example:5000") == 403
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_dockerfile_installs_the_tested_versions_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    (install,) = [line for line in text.splitlines() if line.startswith("RUN pip install")]
    assert "-c constraints.txt ." in install
    assert re.search(r"^FROM python:3\.11[-\w.]*$", text, re.M)  # constraints.txt was frozen on CPython 3.11
    assert "CPython 3.11" in (REPO / "constraints.txt").read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M) and re.search(r"^USER 1000$", text, re.M)
    assert "wget" in text  # KubeRay's probes
    allowed = [line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists() and path in allowed, path


def test_placeholders_and_docs_agree():
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    for name in MANIFESTS:
        used = set(PLACEHOLDER.findall("\n".join(line for line in text_of(name).splitlines()
                                                 if not line.lstrip().startswith("#"))))
        assert set(envsubst_list(name)) == used, f"{name}: the envsubst list in its header is stale"
        assert not PLACEHOLDER.findall(render(name).split("\napiVersion", 1)[1]), name
        assert name in docs
    assert all(variable in docs for variable in VALUES) and "Dockerfile" in docs
    assert "docs/kubernetes.md" in (REPO / "README.md").read_text()
    assert "KUBERAY_CRDS" in docs and KUBERAY in docs
