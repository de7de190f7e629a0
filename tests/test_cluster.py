"""Offline checks of the cluster definitions in cluster/.

cluster/aws.yaml goes through the same steps `ray up` runs before it launches anything: Ray's JSON schema, Ray's
config preparation and validation, node-resource autodetection and the AWS bootstrap (IAM, key pair, subnets,
security group), the last two against moto's in-memory AWS. Then every node type is launched in moto to prove
that its node_config is a valid EC2 request. The KubeRay manifests are checked field by field.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS_YAML = ROOT / "cluster" / "aws.yaml"
RAYCLUSTER_YAML = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB_YAML = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
CLUSTER_FILES = [AWS_YAML, RAYCLUSTER_YAML, RAYJOB_YAML, ROOT / "cluster" / "README.md"]

# (GPUs, vCPUs) per instance type, from the AWS EC2 instance-type specifications (accelerated computing and
# general purpose pages). Every instance type used in cluster/ must be listed here.
INSTANCE_SPECS = {
    "m7i.4xlarge": (0, 16),
    "m7i.8xlarge": (0, 32),
    "p4de.24xlarge": (8, 96),   # 8x A100 80GB
    "p5.48xlarge": (8, 192),    # 8x H100 80GB
    "g6e.xlarge": (1, 4),       # 1x L40S 48GB
}


@pytest.fixture(scope="module")
def aws_config() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


def _node_types(config: dict) -> dict:
    return config["available_node_types"]


def _worker_types(config: dict) -> dict:
    return {k: v for k, v in _node_types(config).items() if k != config["head_node_type"]}


# ---- Ray's own validation ----------------------------------------------------------------------------------------

def test_aws_yaml_validates_against_ray_schema(aws_config):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())  # shipped in the wheel
    jsonschema.validate(aws_config, schema)
    # The schema forbids unknown keys, so a typo is caught; make sure that is so for this file's shape.
    broken = copy.deepcopy(aws_config)
    broken["available_node_types"]["head"]["max_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_aws_yaml_passes_ray_config_preparation(aws_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws_config))
    validate_config(prepared)  # schema + head type present + sum(min_workers) <= max_workers
    types = _node_types(prepared)
    assert prepared["head_node_type"] == "head" and types["head"]["max_workers"] == 0
    # Ray merges the common setup commands into both head and worker setup, in order.
    assert prepared["head_setup_commands"][: len(aws_config["setup_commands"])] == aws_config["setup_commands"]
    assert prepared["worker_setup_commands"][: len(aws_config["setup_commands"])] == aws_config["setup_commands"]
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]


def test_every_worker_type_can_grow_and_shrink(aws_config):
    workers = _worker_types(aws_config)
    assert workers, "no worker node types"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, f"{name}: min_workers > 0 keeps paid nodes up while idle"
        assert 1 <= node_type["max_workers"] <= aws_config["max_workers"], f"{name}: max_workers out of range"
    gpus = {name: t["resources"].get("GPU", 0) for name, t in workers.items()}
    assert 8 in gpus.values(), "no 8-GPU node type for the paper-scale job"
    assert 1 in gpus.values(), "no single-GPU node type for sweeps"
    spot = [n for n, t in workers.items() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert any(gpus[n] == 8 for n in spot) and any(gpus[n] == 1 for n in spot), f"spot types: {spot}"


def test_declared_resources_match_instance_types(aws_config):
    for name, node_type in _node_types(aws_config).items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_SPECS, f"{name}: add {instance} to INSTANCE_SPECS with its GPU/vCPU counts"
        gpus, vcpus = INSTANCE_SPECS[instance]
        declared = node_type["resources"]
        assert declared.get("GPU", 0) == gpus, f"{name}: declares GPU={declared.get('GPU', 0)}, {instance} has {gpus}"
        assert 0 <= declared.get("CPU", vcpus) <= vcpus, f"{name}: declares more CPUs than {instance} has"


def test_head_runs_no_training(aws_config):
    head = _node_types(aws_config)[aws_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU 0 so no task or actor is placed there"
    assert head["resources"].get("GPU", 0) == 0
    assert INSTANCE_SPECS[head["node_config"]["InstanceType"]][0] == 0, "the head should be a CPU instance"


# ---- security rules, read from the files ---------------------------------------------------------------------

_CREDENTIAL_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                      # AWS access key ids
    re.compile(r"aws_(access_key_id|secret_access_key|session_token)", re.I),
    re.compile(r"^\s*aws_credentials\s*:", re.M),                    # Ray's provider key for inline credentials
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}", re.I),  # an inlined Ray token
]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    for pattern in _CREDENTIAL_PATTERNS:
        assert not pattern.search(text), f"{path.name} matches {pattern.pattern}"


def test_security_group_adds_no_public_ingress(aws_config):
    provider = aws_config["provider"]
    for rule in provider.get("security_group", {}).get("IpPermissions", []):
        public = [r for r in rule.get("IpRanges", []) if r.get("CidrIp") == "0.0.0.0/0"]
        public += [r for r in rule.get("Ipv6Ranges", []) if r.get("CidrIpv6") == "::/0"]
        if public:
            assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), f"public ingress rule {rule}"
    for name, node_type in _node_types(aws_config).items():
        # With user-supplied groups this file would no longer say what is open; keep Ray's managed group.
        assert "SecurityGroupIds" not in node_type["node_config"], f"{name}: unmanaged security group"


def test_nodes_use_instance_profiles_and_imdsv2(aws_config):
    for name, node_type in _node_types(aws_config).items():
        node_config = node_type["node_config"]
        profile = node_config.get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no IamInstanceProfile"
        assert node_config.get("MetadataOptions", {}).get("HttpTokens") == "required", f"{name}: IMDSv1 allowed"
        for mapping in node_config.get("BlockDeviceMappings", []):
            assert mapping["Ebs"].get("Encrypted") is True, f"{name}: unencrypted volume"


def test_token_auth_stays_on(aws_config):
    start_commands = aws_config["head_start_ray_commands"] + aws_config["worker_start_ray_commands"]
    ray_starts = [c for c in start_commands if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token" in command, f"ray start without token auth: {command}"
    assert "--env RAY_AUTH_MODE=token" in aws_config["docker"]["run_options"]
    assert aws_config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token", "token file not mounted"
    for path in CLUSTER_FILES:
        assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled", path.read_text()), f"{path.name} disables auth"


def test_dashboard_and_mlflow_stay_private(aws_config):
    head_commands = " ".join(aws_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_commands, "dashboard must listen on loopback (reach it by SSH tunnel)"
    mlflow = [c for c in aws_config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1, "the head should start one MLflow server"
    assert re.search(r"--backend-store-uri sqlite:///\S+", mlflow[0])
    assert re.search(r"--default-artifact-root s3://\S+", mlflow[0])
    assert "--port 5000" in mlflow[0]


# ---- Ray's AWS bootstrap and node launch against moto ----------------------------------------------------------

@pytest.fixture(scope="module")
def moto_aws(aws_config, tmp_path_factory):
    """Run `ray up`'s config bootstrap in moto, then launch one node of every type; return what AWS now holds."""
    pytest.importorskip("moto", reason="moto is needed for the offline AWS bootstrap test (pip install '.[dev]')")
    import boto3
    from moto import mock_aws
    from ray.autoscaler._private.aws import config as aws_bootstrap
    from ray.autoscaler._private.aws import node_provider as aws_provider
    from ray.autoscaler._private.aws import utils as aws_utils
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

    region, listed = aws_config["provider"]["region"], []
    caches = (aws_utils.resource_cache, aws_utils.client_cache, aws_bootstrap._get_subnets_or_die)

    def list_once(*args, **kwargs):  # DescribeInstanceTypes is slow in moto; Ray asks twice
        if not listed:
            listed.append(original_list(*args, **kwargs))
        return copy.deepcopy(listed[0])

    original_list = aws_provider.list_ec2_instances
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # the bootstrap writes an SSH key to ~/.ssh
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(key, "testing")  # moto's fake credentials, never sent anywhere
        mp.setenv("AWS_DEFAULT_REGION", region)
        mp.setattr(aws_provider, "list_ec2_instances", list_once)
        for cached in caches:
            cached.cache_clear()  # drop boto3 objects cached by an earlier test or session
        try:
            detect = copy.deepcopy(aws_config)
            for node_type in _node_types(detect).values():
                node_type["resources"] = {}
            detected = aws_provider.AWSNodeProvider.fillout_available_node_types_resources(detect)
            bootstrapped = _bootstrap_config(copy.deepcopy(aws_config), no_config_cache=True)

            ec2, iam = boto3.client("ec2", region_name=region), boto3.client("iam", region_name=region)
            state = {
                "detected": {k: v["resources"] for k, v in _node_types(detected).items()},
                "config": bootstrapped,
                "profiles_after_bootstrap": iam.list_instance_profiles()["InstanceProfiles"],
                "roles_after_bootstrap": iam.list_roles()["Roles"],
                "groups": ec2.describe_security_groups(
                    Filters=[{"Name": "group-name", "Values": [aws_config["provider"]["security_group"]["GroupName"]]}]
                )["SecurityGroups"],
                "subnets": {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets()["Subnets"]},
                "offerings": {t: {o["Location"] for o in ec2.describe_instance_type_offerings(
                    LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [t]}]
                )["InstanceTypeOfferings"]} for t in {n["node_config"]["InstanceType"] for n in _node_types(aws_config).values()}},
            }

            # Launch one node per type with the bootstrapped node_config. The instance profiles are created by
            # the operator beforehand (cluster/README.md); moto cannot resolve the SSM AMI alias, so that one
            # field is swapped for one of moto's AMIs.
            for profile in {t["node_config"]["IamInstanceProfile"]["Name"] for t in _node_types(bootstrapped).values()}:
                iam.create_instance_profile(InstanceProfileName=profile)
            ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            provider = aws_provider.AWSNodeProvider(bootstrapped["provider"], bootstrapped["cluster_name"])
            for name, node_type in _node_types(bootstrapped).items():
                node_config = dict(copy.deepcopy(node_type["node_config"]), ImageId=ami)
                kind = "head" if name == bootstrapped["head_node_type"] else "worker"
                provider.create_node(node_config, {TAG_RAY_NODE_KIND: kind, TAG_RAY_USER_NODE_TYPE: name,
                                                   TAG_RAY_NODE_NAME: f"{bootstrapped['cluster_name']}-{name}"}, 1)
            instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
            state["launched"] = {
                next(t["Value"] for t in i["Tags"] if t["Key"] == TAG_RAY_USER_NODE_TYPE): i for i in instances
            }
            state["volumes"] = ec2.describe_volumes()["Volumes"]
        finally:
            for cached in caches:
                cached.cache_clear()
    return state


def test_ray_detects_the_declared_gpus(aws_config, moto_aws):
    """Ray's own autodetection (from EC2 instance-type data) agrees with the declared GPUs and the table."""
    for name, node_type in _node_types(aws_config).items():
        detected = moto_aws["detected"][name].get("GPU", 0)
        instance = node_type["node_config"]["InstanceType"]
        assert detected == INSTANCE_SPECS[instance][0] == node_type["resources"].get("GPU", 0), name
        assert moto_aws["detected"][name]["CPU"] == INSTANCE_SPECS[instance][1], name


def test_bootstrap_opens_only_ssh_to_the_outside(aws_config, moto_aws):
    groups = moto_aws["groups"]
    assert len(groups) == 1, "bootstrap should create exactly one security group for the cluster"
    group = groups[0]
    assert group["IpPermissions"], "security group has no rules at all"
    for rule in group["IpPermissions"]:
        if rule.get("UserIdGroupPairs"):  # traffic between cluster members
            assert {p["GroupId"] for p in rule["UserIdGroupPairs"]} == {group["GroupId"]}
            assert not rule.get("IpRanges") and not rule.get("Ipv6Ranges")
            continue
        assert (rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), rule
    for node_type in _node_types(moto_aws["config"]).values():
        assert node_type["node_config"]["SecurityGroupIds"] == [group["GroupId"]]


def test_bootstrap_keeps_the_configured_identity_and_zones(aws_config, moto_aws):
    # With IamInstanceProfile set, Ray must not create its default role (EC2 + S3 full access) or profile.
    assert moto_aws["profiles_after_bootstrap"] == [] and moto_aws["roles_after_bootstrap"] == []
    assert "IamInstanceProfile" not in moto_aws["config"]["head_node"]
    zones = set(aws_config["provider"]["availability_zone"].split(","))
    for name, node_type in _node_types(moto_aws["config"]).items():
        subnets = node_type["node_config"]["SubnetIds"]
        assert subnets and {moto_aws["subnets"][s] for s in subnets} <= zones, name
        assert node_type["node_config"]["KeyName"], name
    assert Path(moto_aws["config"]["auth"]["ssh_private_key"]).is_file()
    for instance, offered_in in moto_aws["offerings"].items():
        assert zones <= offered_in, f"{instance} is not offered in {sorted(zones - offered_in)}"


def test_every_node_type_launches(aws_config, moto_aws):
    launched = moto_aws["launched"]
    assert set(launched) == set(_node_types(aws_config))
    zones = set(aws_config["provider"]["availability_zone"].split(","))
    for name, node_type in _node_types(aws_config).items():
        instance, node_config = launched[name], node_type["node_config"]
        assert instance["InstanceType"] == node_config["InstanceType"]
        assert instance["IamInstanceProfile"]["Arn"].endswith("/" + node_config["IamInstanceProfile"]["Name"])
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["Placement"]["AvailabilityZone"] in zones
        is_spot = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        assert (instance.get("InstanceLifecycle") == "spot") == is_spot, name
    assert moto_aws["volumes"] and all(v["Encrypted"] for v in moto_aws["volumes"])


# ---- KubeRay manifests ---------------------------------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} is empty"
    return docs


def _one(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _ray_version_of_aws_images(aws_config) -> set[str]:
    docker = aws_config["docker"]
    return {docker[k].split(":")[1].split("-")[0] for k in ("head_image", "worker_image")}


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def _check_cluster_spec(spec: dict, path: Path, aws_config: dict) -> list[int]:
    """Checks shared by the RayCluster and the RayJob's rayClusterSpec; returns each worker group's GPU count."""
    where = path.name
    assert spec["enableInTreeAutoscaling"] is True, f"{where}: autoscaling off"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication off"
    version = spec["rayVersion"]
    assert {version} == _ray_version_of_aws_images(aws_config), f"{where}: rayVersion differs from cluster/aws.yaml"

    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: the head must advertise 0 CPUs"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress"), f"{where}: public head"
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}), f"{where}: GPU on the head"

    gpu_counts = []
    for group in spec["workerGroupSpecs"]:
        name = f"{where}/{group['groupName']}"
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        assert group["maxReplicas"] >= 1, f"{name}: can never scale up"
        pod = group["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        gpus = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
        assert gpus == int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)), f"{name}: GPU request != limit"
        selected = pod.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        if selected:
            assert selected in INSTANCE_SPECS, f"{name}: add {selected} to INSTANCE_SPECS"
            assert gpus == INSTANCE_SPECS[selected][0], f"{name}: {gpus} GPUs requested on {selected}"
        if gpus:
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), f"{name}: no GPU toleration"
        gpu_counts.append(gpus)
    assert 8 in gpu_counts, f"{where}: no 8-GPU worker group"

    defined = {(d["kind"], d["metadata"]["name"]) for d in _docs(path)}
    for pod in _pods(spec):
        assert ("ServiceAccount", pod.get("serviceAccountName")) in defined, f"{where}: undefined ServiceAccount"
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in defined, f"{where}: undefined claim {claim}"
        for container in pod["containers"]:
            image = container["image"]
            assert image.startswith("rayproject/ray:") and image.split(":")[1].split("-")[0] == version, image
            for env in container.get("env", []):
                assert not (env["name"] == "RAY_AUTH_MODE" and env.get("value") != "token"), f"{where}: auth changed"
    return gpu_counts


def test_raycluster_manifest(aws_config):
    cluster = _one(RAYCLUSTER_YAML, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert 1 in _check_cluster_spec(cluster["spec"], RAYCLUSTER_YAML, aws_config), "no single-GPU group for sweeps"


def test_rayjob_manifest(aws_config):
    job = _one(RAYJOB_YAML, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:2] == ["python", "pipelines/extend.py"], spec["entrypoint"]
    assert entrypoint[entrypoint.index("--config") + 1] == "endprompt_ray/presets/llama3-8b-64k.yaml"
    assert (ROOT / entrypoint[1]).is_file() and (ROOT / entrypoint[entrypoint.index("--config") + 1]).is_file()
    assert spec["shutdownAfterJobFinishes"] is True, "the job's GPU cluster must go away when the job ends"
    assert spec.get("activeDeadlineSeconds", 0) > 0
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"].endswith(".zip")
    _check_cluster_spec(spec["rayClusterSpec"], RAYJOB_YAML, aws_config)


def test_paper_preset_fits_both_clusters(aws_config):
    """The llama3-8b-64k preset, with the RayJob's `--set` overrides, fits the GPU nodes and the shared storage."""
    from endprompt_ray.config.loader import load_config

    tokens = _one(RAYJOB_YAML, "RayJob")["spec"]["entrypoint"].split()
    preset = ROOT / tokens[tokens.index("--config") + 1]
    cfg = load_config(preset, [tokens[i + 1] for i, t in enumerate(tokens) if t == "--set"])  # unknown key: error
    assert cfg.storage_path.startswith("s3://") and cfg.tracking_uri.startswith("http://")
    assert cfg.train.use_gpu
    workers = cfg.train.num_workers if isinstance(cfg.train.num_workers, int) else cfg.train.num_workers[1]
    eight_gpu = [t for t in _worker_types(aws_config).values() if t["resources"].get("GPU") == 8]
    for node_type in eight_gpu:  # each paper-scale type alone can host all workers, GPU:1 + CPU:cpus_per_worker each
        assert workers <= 8 * node_type["max_workers"]
        assert 8 * cfg.train.cpus_per_worker <= node_type["resources"]["CPU"]
    output_dir = Path(cfg.run.output_dir)
    if output_dir.is_absolute():  # the driver writes there and other nodes read: it must be shared on every node
        mounts = [o.split()[1].split(":")[1] for o in aws_config["docker"]["run_options"] if o.startswith("--volume")]
        assert any(output_dir.is_relative_to(m) for m in mounts), f"{output_dir} is not mounted in the containers"
        assert any(m in c and "mount" in c for m in mounts for c in aws_config["initialization_commands"])
        for path, kind in ((RAYCLUSTER_YAML, "RayCluster"), (RAYJOB_YAML, "RayJob")):
            spec = _one(path, kind)["spec"]
            for pod in _pods(spec.get("rayClusterSpec", spec)):
                paths = [m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])]
                assert any(output_dir.is_relative_to(m) for m in paths), f"{kind}: a pod lacks {output_dir}"
