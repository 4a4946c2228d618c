"""Running on a cluster (issue 8).

- A local Ray cluster (``ray start --head`` on 127.0.0.1, its own ports, temp dir and auth token) and jobs sent to
  it with ``ray job submit --working-dir .`` exactly as docs/scaling.md shows: real clips are transcribed and the
  output is complete; a GPU config fails fast with its message. The cluster advertises one GPU that no CUDA device
  backs, which is the "actor given a GPU cannot see CUDA" case on this CPU-only machine.
- ``cluster.yaml`` through Ray's own cluster-config schema validation.
- The KubeRay manifests in ``deploy/`` parsed and checked against the KubeRay ``ray.io/v1`` field names.

Only this module's cluster is stopped, by the PID of its ``ray start --block`` (never ``ray stop``, which stops
every Ray on the machine).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import CORPUS, JFK_PHRASE, ROOT, corpus_rows

VENV_BIN = Path(sys.executable).parent
RAY_CLI = VENV_BIN / "ray"

#: The runtime environment docs/scaling.md's `ray job submit` uses: keep the uploaded working dir small.
RUNTIME_ENV = {"excludes": [".git", ".venv", "out", "samples", "mlruns", ".pytest_cache", "__pycache__"]}

#: Four real clips (flac 44.1 kHz stereo, flac, mp3, LibriSpeech flac), 34 s of speech.
CLIPS = ["jfk/jfk.flac", "ljspeech/LJ001-0002.flac", "ljspeech/LJ001-0003.mp3", "librispeech/2412-153948-0000.flac"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


class LocalRayCluster:
    """``ray start --head --block`` on 127.0.0.1 for one test module.

    Every port is a free one (the dashboard / job API included), the temp dir is private and short (Unix socket
    paths), and ``RAY_AUTH_TOKEN`` is private, so it neither collides with nor talks to any other Ray on the
    machine. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray keep the node address on loopback instead of
    swapping 127.0.0.1 for the machine's IP; ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` makes SIGTERM stop it at
    once. The venv's ``bin`` leads ``PATH``, as in an activated venv, so ``python`` in a job's entry point is the
    venv's (the driver inherits the cluster's environment).
    """

    def __init__(self, num_cpus: int = 2, num_gpus: int = 0):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rwc", dir="/tmp"))
        self.ports = {name: _free_port() for name in (
            "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
            "object-manager-port")}
        self.address = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH="",
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            RAY_USAGE_STATS_ENABLED="0",
            AUTOSCALER_METRIC_PORT=str(_free_port()),
            DASHBOARD_METRIC_PORT=str(_free_port()),
            RAYWHISPER_TEST_CLUSTER=str(self.temp_dir),  # marks this cluster's processes for stop()
        )
        self.env = env
        self.cmd = [
            str(RAY_CLI), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}", f"--temp-dir={self.temp_dir}", "--object-store-memory=300000000",
            "--disable-usage-stats",
        ] + [f"--{name}={port}" for name, port in self.ports.items()]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> "LocalRayCluster":
        log = open(self.temp_dir / "ray-start.log", "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.temp_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.start_log()}")
            try:
                urllib.request.urlopen(self.address + "/api/version", timeout=2)
                return self
            except urllib.error.HTTPError:  # 401 without the token: the job server is up
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the dashboard did not come up at {self.address} in {timeout_s:.0f} s")

    def start_log(self) -> str:
        path = self.temp_dir / "ray-start.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def ray(self, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster from the repository root (stdout and stderr together)."""
        return subprocess.run([str(RAY_CLI), *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout_s)

    def submit(self, *entrypoint: str, submission_id: str, wait: bool = True,
               timeout_s: float = 240) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir . --runtime-env-json ... [--no-wait] -- <entrypoint>`` (docs/scaling.md's)."""
        return self.ray("job", "submit", "--address", self.address, "--submission-id", submission_id,
                        "--working-dir", ".", "--runtime-env-json", json.dumps(RUNTIME_ENV),
                        *([] if wait else ["--no-wait"]), "--", *entrypoint, timeout_s=timeout_s)

    def _own_processes(self):
        import psutil

        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("RAYWHISPER_TEST_CLUSTER") == marker:
                    yield proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def stop(self) -> None:
        """Stop this cluster only: SIGTERM to its ``ray start --block`` (which shuts its processes down), then
        SIGKILL to any process left that carries this cluster's marker (job drivers, workers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for _ in range(20):
            left = list(self._own_processes())
            if not left:
                break
            for proc in left:
                try:
                    proc.kill()
                except Exception:  # noqa: BLE001 - gone already
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster with 2 CPUs and one GPU that no CUDA device backs."""
    cluster = LocalRayCluster(num_cpus=2, num_gpus=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert not list(cluster._own_processes()), "processes of the test cluster are still running"


@pytest.fixture()
def clips_manifest(tmp_path) -> Path:
    """A JSONL manifest of :data:`CLIPS` with absolute paths (the job runs in Ray's copy of the working dir)."""
    refs = {r["path"]: r["reference"] for r in corpus_rows()}
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(
        json.dumps({"audio_filepath": str(CORPUS / clip), "id": clip, "text": refs[clip]}) + "\n" for clip in CLIPS
    ))
    return path


# --------------------------------------------------------------------------------------------- local cluster
@pytest.mark.ray
def test_job_submit_transcribes_clips_on_a_local_cluster(ray_cluster, clips_manifest, tmp_path):
    import pandas as pd

    out = tmp_path / "out"
    job_id = f"raywhisper-test-{uuid.uuid4().hex[:8]}"
    # as in docs/scaling.md: submit without waiting, follow the log to the end, then ask for the status
    res = ray_cluster.submit("python", "-m", "pipelines.transcribe", "--manifest", str(clips_manifest),
                             "--output", str(out), submission_id=job_id, wait=False, timeout_s=60)
    assert res.returncode == 0, res.stdout[-3000:]
    logs = ray_cluster.ray("job", "logs", "--address", ray_cluster.address, "--follow", job_id, timeout_s=240)
    assert f"{len(CLIPS)} files: {len(CLIPS)} ok, 0 empty, 0 error" in logs.stdout, logs.stdout[-6000:]
    status = ray_cluster.ray("job", "status", "--address", ray_cluster.address, job_id, timeout_s=60)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout[-2000:]

    df = pd.read_parquet(out)
    assert sorted(df["id"]) == sorted(CLIPS)  # each manifest row exactly once
    assert (df["status"] == "ok").all(), df[["id", "status", "error_message"]].to_string()
    assert (df["duration_s"] > 0).all() and df["text"].str.len().gt(0).all()
    jfk = df.set_index("id").loc["jfk/jfk.flac"]
    assert JFK_PHRASE in _words(jfk["text"])
    runs = list((out / "_runs").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["ok"] == len(CLIPS)


@pytest.mark.ray
def test_gpu_job_without_cuda_fails_fast_under_job_submit(ray_cluster, clips_manifest, tmp_path):
    out = tmp_path / "out-gpu"
    job_id = f"raywhisper-test-gpu-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    res = ray_cluster.submit("python", "-m", "pipelines.transcribe", "--config", "configs/gpu.yaml",
                             "--manifest", str(clips_manifest), "--output", str(out), submission_id=job_id,
                             timeout_s=120)
    took_s = time.monotonic() - t0
    assert res.returncode != 0, res.stdout[-4000:]
    assert f"Job '{job_id}' failed" in res.stdout
    assert "exit code 2" in res.stdout
    assert "sees no CUDA device" in res.stdout and "would run on the CPU" in res.stdout, res.stdout[-4000:]
    assert "ray.get_gpu_ids()=['0']" in res.stdout  # Ray did give the probe the (fake) GPU
    # stopped before any work: nothing written (the output lock, taken before Ray starts, is released again)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    assert took_s < 90


@pytest.mark.ray
def test_gpu_config_run_directly_without_gpus_fails_fast(tmp_path, clips_manifest):
    """`python -m pipelines.transcribe --config configs/gpu.yaml` on this GPU-less machine: the local Ray it starts
    has no GPU and no autoscaler, so the job stops right after Ray starts, with exit code 2 and the message."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rwd", dir="/tmp"))
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "out"
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pipelines.transcribe", "--config", "configs/gpu.yaml", "--set", "ray.num_cpus=1",
             "--manifest", str(clips_manifest), "--output", str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-4000:]
    assert "error: transcribe.num_gpus=1 per transcription actor, but the Ray cluster has 0 GPU(s)" in res.stderr
    assert "configs/local.yaml" in res.stderr
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())  # lock released


# --------------------------------------------------------------------------------------------- cluster.yaml
def _load_cluster_yaml() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _ray_validate(raw: dict) -> dict:
    """What `ray up` does before it launches anything: fill in the provider's defaults, then check the result
    against ray/autoscaler/ray-schema.json (plus Ray's cross-field checks)."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_schema_validation():
    import jsonschema
    import ray.autoscaler

    raw = _load_cluster_yaml()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # the file as written
    prepared = _ray_validate(raw)  # and as `ray up` completes it
    assert prepared["provider"]["type"] == "aws"


def test_the_validator_does_reject_a_bad_cluster_yaml():
    """The check above can fail: a misspelt node-type field and a bad head type are refused."""
    import jsonschema

    bad = _load_cluster_yaml()
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError):
        _ray_validate(bad)
    bad = _load_cluster_yaml()
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        _ray_validate(bad)


def test_cluster_yaml_node_groups():
    raw = _load_cluster_yaml()
    types = raw["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    head, cpu, gpu = types["head"], types["cpu_worker"], types["gpu_worker"]
    assert raw["head_node_type"] == "head"
    assert head["resources"] == {"CPU": 0}  # no work on the head
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is on-demand
    for worker in (cpu, gpu):
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert 0 <= worker["min_workers"] <= worker["max_workers"]
    assert re.match(r"^(g5|g6)\.", gpu["node_config"]["InstanceType"])
    assert gpu["docker"]["worker_image"].endswith("-gpu")
    assert gpu["max_workers"] + cpu["max_workers"] <= raw["max_workers"]
    # the project is installed on every node, with the extras the job and Serve need
    installs = raw["setup_commands"] + gpu["worker_setup_commands"]
    assert all("raywhisper[serve,s3]" in cmd for cmd in installs if "pip install" in cmd)
    # the GPU group can hold configs/gpu.yaml's transcription actors, one per GPU
    from pipelines.config import load_config

    cfg = load_config(ROOT / "configs" / "gpu.yaml")
    assert cfg.transcribe.max_actors == gpu["max_workers"]
    assert raw["docker"]["image"].startswith("rayproject/ray:")


# --------------------------------------------------------------------------------------------- KubeRay manifests
# Field names of the KubeRay ray.io/v1 API, from its Go types (ray-project/kuberay ray-operator/apis/ray/v1:
# rayjob_types.go, rayservice_types.go, raycluster_types.go), which generate the CRDs. A field outside these sets
# is a typo the API server would drop or refuse. Newer KubeRay releases add fields; add them here when used.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId",
    "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYSERVICE_SPEC = {
    "serveConfigV2", "rayClusterConfig", "serveService", "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
}
RAYCLUSTER_SPEC = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend",
}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy",
}
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode",
}
CONFIGS_DIR = "/home/ray/raywhisper/configs"


def _load_manifest(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def _check_cluster_spec(spec: dict, gpu_group: str, mounts_configs: bool) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["rayVersion"] == __import__("ray").__version__  # the image's Ray = the driver's Ray
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP and {"rayStartParams", "template"} <= set(head)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # map[string]string
    pods = [head["template"]]
    names = []
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(group)
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        names.append(group["groupName"])
        pods.append(group["template"])
    assert len(set(names)) == len(names)
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == gpu_group)
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    for pod in pods:
        ray_container = pod["spec"]["containers"][0]  # KubeRay runs Ray in the first container
        assert ray_container["image"] and ray_container["name"]
        if mounts_configs:  # the configs folder the entry point reads, from the ConfigMap made of configs/
            mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            assert volumes[mounts[CONFIGS_DIR]]["configMap"]["name"] == "raywhisper-configs"


def test_rayjob_manifest():
    job = _load_manifest("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert {"entrypoint", "rayClusterSpec"} <= set(spec)
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)  # a YAML string holding a runtime env
    # the same entry point and config as `ray job submit`, reading the mounted configs folder
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "pipelines.transcribe"]
    config = entry[entry.index("--config") + 1]
    assert config == f"{CONFIGS_DIR}/gpu.yaml" and (ROOT / "configs" / "gpu.yaml").exists()
    assert {"--manifest", "--output"} <= set(entry)
    _check_cluster_spec(spec["rayClusterSpec"], gpu_group="gpu-transcribe", mounts_configs=True)


def test_rayservice_manifest():
    from ray.serve.schema import ServeDeploySchema

    from pipelines.config import load_config

    svc = _load_manifest("rayservice.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    spec = svc["spec"]
    assert set(spec) <= RAYSERVICE_SPEC, set(spec) - RAYSERVICE_SPEC
    assert {"serveConfigV2", "rayClusterConfig"} <= set(spec)
    assert isinstance(spec["serveConfigV2"], str)  # a multi-line YAML string, not a mapping
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    assert serve_config.http_options.host == "0.0.0.0"  # reachable through the Kubernetes service
    (app,) = serve_config.applications
    assert app.import_path == "serve_app.app:build_app"
    # the endpoint's model is the batch job's GPU model (configs/gpu.yaml), so both transcribe alike
    gpu = load_config(ROOT / "configs" / "gpu.yaml")
    assert app.args["model"] == {k: v for k, v in gpu.model.model_dump().items() if k in app.args["model"]}
    assert app.args["model"]["name"] == gpu.model.name and app.args["model"]["device"] == "cuda"
    assert app.args["deployment"]["num_gpus"] == 1
    _check_cluster_spec(spec["rayClusterConfig"], gpu_group="gpu-serve", mounts_configs=False)


def test_rayservice_args_build_a_serve_config():
    """The args are what serve_app.app.build_app reads (runs once serve_app is in the tree)."""
    app_module = pytest.importorskip("serve_app.app")
    svc = _load_manifest("rayservice.yaml")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    cfg = app_module.serve_config_from_args(app_module.ServeAppArgs.model_validate(app["args"]))
    assert cfg.model.device == "cuda" and cfg.deployment.num_gpus == 1
