"""The cluster launcher configs, cluster.yaml (AWS) and cluster-onprem.yaml (your own machines), pass
Ray's own config validation once their placeholders are filled the way docs/cluster.md fills them,
and keep the security choices they state: token authentication on, MLflow on a non-public address,
nothing but SSH open to the outside.

The validation is `ray up`'s first two steps: `prepare_config` (Ray's provider defaults.yaml merged
in; for `local`, the head_ip/worker_ips checks) and `validate_config` (ray-schema.json plus the
cross-field rules). For AWS, `ray up` then runs the provider's bootstrap (boto3: instance types, IAM
role, key pair, subnets, security group), which needs an AWS account and the network, so that part is
not run here. Nothing here starts Ray.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
AWS, ONPREM = "cluster.yaml", "cluster-onprem.yaml"

# Example values for every placeholder, as a user would export them before rendering.
VALUES = {
    AWS: {
        "AWS_REGION": "us-west-2",
        "AMI_ID": "ami-0123456789abcdef0",
        "RAY_VERSION": ray.__version__,
        "S3_BUCKET": "example-orchestrate",
        "WORKER_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/orchestrate-worker",
        "MLFLOW_BACKEND_STORE_URI": "sqlite:////home/ubuntu/mlflow/mlflow.db",
    },
    ONPREM: {
        "HEAD_IP": "10.0.0.10",
        "WORKER_IPS": "10.0.0.11, 10.0.0.12",
        "SSH_USER": "alice",
        "SSH_PRIVATE_KEY": "~/.ssh/id_ed25519",
        "RAY_VERSION": ray.__version__,
        "MLFLOW_BACKEND_STORE_URI": "sqlite:////home/alice/mlflow/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": "/srv/mlflow/artifacts",
    },
}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def text_of(name: str) -> str:
    return (REPO / name).read_text()


def envsubst_list(name: str) -> list[str]:
    """The variables of the `envsubst '...'` command the file's header tells users to run."""
    match = re.search(r"envsubst '([^']*)'", re.sub(r"\n#\s*", " ", text_of(name)))
    assert match, f"{name}: no `envsubst '<variables>'` command in its header"
    return PLACEHOLDER.findall(match.group(1))


def placeholders_used(name: str) -> set[str]:
    """${NAME}s outside comments: the ones the YAML itself needs filled."""
    code = "\n".join(line for line in text_of(name).splitlines() if not line.lstrip().startswith("#"))
    return set(PLACEHOLDER.findall(code))


def render(name: str) -> str:
    """The file as `envsubst '<list>'` renders it: only the listed variables are replaced (as
    ${NAME} or $NAME), so $HOME, $RAY_HEAD_IP and $! in the commands reach the nodes' shells
    untouched. Uses the real envsubst where installed (gettext), else the same substitution here."""
    values, names = VALUES[name], envsubst_list(name)
    if shutil.which("envsubst"):
        return subprocess.run(["envsubst", " ".join("${%s}" % n for n in names)], input=text_of(name),
                              env={**os.environ, **values}, capture_output=True, text=True,
                              check=True).stdout
    listed = "|".join(map(re.escape, names))
    pattern = re.compile(rf"\$(?:\{{({listed})\}}|({listed})(?![A-Za-z0-9_]))")
    return pattern.sub(lambda m: values[m.group(1) or m.group(2)], text_of(name))


def rendered(name: str) -> dict:
    return yaml.safe_load(render(name))


def ray_validated(config: dict) -> dict:
    """What `ray up` checks before it contacts a machine (see the module docstring)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key) or []]


def mlflow_server_command(config: dict) -> str:
    found = [cmd for cmd in config["head_start_ray_commands"] if "mlflow server" in cmd]
    assert len(found) == 1, f"expected one `mlflow server` in head_start_ray_commands, found {found}"
    return found[0]


def option(command: str, name: str) -> str:
    match = re.search(rf"{name}[ =](\S+)", command)
    assert match, f"{name} not given in: {command}"
    return match.group(1)


# Ray's validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_cluster_config_passes_ray_validation_after_substitution(name):
    prepared = ray_validated(rendered(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_every_placeholder_is_in_the_documented_envsubst_list_and_gets_filled(name):
    names = envsubst_list(name)
    assert set(names) == placeholders_used(name), f"{name}: the envsubst list in its header is stale"
    assert set(names) == set(VALUES[name])
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert [n for n in names if n not in docs] == [], "docs/cluster.md must name every placeholder"
    leftover = PLACEHOLDER.findall(yaml.safe_dump(rendered(name)))
    assert leftover == [], f"{name}: unfilled after rendering: {leftover}"


@pytest.mark.parametrize("key", ["resources", "node_config"])
def test_validation_rejects_a_node_type_without_a_required_key(key):
    config = rendered(AWS)
    del config["available_node_types"]["gpu_1x"][key]
    with pytest.raises(jsonschema.ValidationError, match=key):
        ray_validated(config)


@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_validation_rejects_a_misspelt_top_level_key(name):
    config = rendered(name)
    config["head_start_commands"] = config.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError, match="head_start_commands"):
        ray_validated(config)


@pytest.mark.parametrize("key", ["head_ip", "worker_ips"])
def test_onprem_validation_rejects_a_missing_machine_address(key):
    config = rendered(ONPREM)
    del config["provider"][key]
    with pytest.raises(click.ClickException):
        ray_validated(config)


def test_aws_head_node_type_must_be_one_of_the_node_types():
    config = rendered(AWS)
    config["head_node_type"] = "head"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_validated(config)


# What the files promise ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_every_ray_start_keeps_token_authentication_on(name):
    config = rendered(name)
    starts = [cmd for cmd in start_commands(config) if "ray start" in cmd]
    assert len(starts) == 2, starts  # the head's and the workers'
    for cmd in starts:
        assert re.search(r"RAY_AUTH_MODE=token\s+ray start", cmd), f"no RAY_AUTH_MODE=token on: {cmd}"
    for cmd in all_commands(config):
        assert not re.search(r"RAY_AUTH_MODE\W*(disabled|none|off)", cmd, re.I), cmd
    assert not re.search(r"RAY_AUTH_MODE\W*disabled", text_of(name), re.I)
    # The token reaches every node as a file, never as text in the config.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in render(name)


@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_mlflow_server_binds_to_a_non_public_address(name):
    command = mlflow_server_command(rendered(name))
    host = ipaddress.ip_address(option(command, "--host"))
    assert host.is_loopback or (host.is_private and not host.is_unspecified), host
    assert option(command, "--port") == "5000"  # what docs/cluster.md tunnels to


def test_aws_mlflow_artefacts_go_to_s3():
    command = mlflow_server_command(rendered(AWS))
    assert option(command, "--artifacts-destination").startswith("s3://example-orchestrate/")


def test_aws_security_group_opens_only_ssh():
    config = rendered(AWS)
    # Ray creates this group itself and gives it two inbound rules: TCP 22 and all traffic from the
    # group's own members; IpPermissions are added to those. (Ray's code that does it needs boto3.)
    rules = config["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        assert (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), rule
    # A node type naming its own SecurityGroupIds would bypass that group and its rules.
    for node_type, spec in config["available_node_types"].items():
        assert "SecurityGroupIds" not in spec["node_config"], node_type


def test_aws_has_two_gpu_worker_groups_of_different_sizes_that_scale_from_zero():
    node_types = ray_validated(rendered(AWS))["available_node_types"]
    gpus = {name: spec["resources"]["GPU"] for name, spec in node_types.items()
            if spec["resources"].get("GPU")}
    assert len(gpus) == 2 and len(set(gpus.values())) == 2, gpus
    for name in gpus:
        assert node_types[name]["min_workers"] == 0 < node_types[name]["max_workers"], name
    assert node_types["cpu_head"]["max_workers"] == 0  # the head is never a worker


@pytest.mark.parametrize("name", [AWS, ONPREM])
def test_every_node_installs_the_tested_versions_from_the_constraints_file(name):
    config = rendered(name)
    installs = [cmd for cmd in all_commands(config) if "pip install" in cmd and "-e ~/orchestrate" in cmd]
    assert installs and all("-c ~/orchestrate/constraints.txt" in cmd for cmd in installs), installs
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    import mlflow
    import ray
    import torch

    assert pins["ray"] == ray.__version__ and pins["mlflow"] == mlflow.__version__
    assert pins["torch"] == torch.__version__.split("+")[0]
