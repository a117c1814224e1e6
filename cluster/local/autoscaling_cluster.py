"""A local Ray autoscaling cluster: Ray's autoscaler and its fake multi-node provider, on this machine.

    eval "$(python -m cluster.local.autoscaling_cluster start)"   # exports RAY_ADDRESS, SRFT_LOCAL_CLUSTER
    python -m jobs.label ... critic.num_gpus_per_actor=1 critic.pool.max=3
    python -m cluster.local.autoscaling_cluster status
    python -m cluster.local.autoscaling_cluster stop               # only this cluster's processes

The head runs `ray start --head --autoscaling-config=...` with ``RAY_FAKE_CLUSTER=1``: the
autoscaler (Ray's `monitor.py`, the code that drives cluster/aws.yaml and KubeRay) launches a
worker "node" as one more raylet on this machine when demand is pending, and terminates it after
`idle_timeout_minutes`. The node types come from cluster/local/autoscaling.yaml.

Why not `ray.cluster_utils.AutoscalingCluster`: its start and shutdown run `ray stop --force`, which
kills every Ray of this user on the machine (other people's tests and jobs), and the `example.yaml`
it reads is missing from the 2.60 wheel. This builds the same config by hand and differs in three
ways: a private temp dir (so sessions and sockets are this cluster's own), free ports (the fake
provider joins workers to `provider.gcs_address`, which defaults to port 6379), and a stop that
signals only the processes whose command line names that temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

CONFIG = Path(__file__).with_name("autoscaling.yaml")
STATE = "cluster.json"  # in the cluster's dir: addresses and the config it runs
TOKEN = "auth_token"  # in the cluster's dir: its own token (Ray 2.60's `ray start` enables token auth)


@dataclass
class LocalCluster:
    dir: str  # private root: Ray's temp dir (sessions, logs, sockets) and this file's state
    gcs_address: str  # for drivers: RAY_ADDRESS=<this> python -m jobs.label ...
    dashboard_url: str  # for `ray job submit --address` and the state API
    config: str  # the autoscaling config the head runs

    def env(self) -> dict[str, str]:
        """What a driver (or `ray job submit`, with RAY_ADDRESS=dashboard_url) needs to join."""
        return {"RAY_ADDRESS": self.gcs_address, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": os.path.join(self.dir, TOKEN), "SRFT_LOCAL_CLUSTER": self.dir}

    def stop(self, keep_dir: bool = False) -> list[int]:
        return stop(self.dir, keep_dir=keep_dir)

    @contextlib.contextmanager
    def connected(self, **init_kwargs):
        """`ray.init` this process to the cluster for the block, also when Ray was imported before
        the token settings were in the environment (Ray caches its config and the token at first
        use). On the way out: `ray.shutdown()`, and this process's environment and Ray's caches as
        they were. Left set, the token path outlives the cluster's dir, and the next Ray this
        process starts dies at once on the missing token file."""
        import ray
        from ray._raylet import AuthenticationTokenLoader, Config

        def settle() -> None:
            Config.initialize("")  # re-reads RAY_AUTH_MODE, as Ray's own _enable_token_auth does
            AuthenticationTokenLoader.instance().reset_cache()

        saved = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        settle()
        try:
            ray.init(address=self.gcs_address, **init_kwargs)
            yield
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            settle()


def _free_ports(n: int) -> list[int]:
    """n distinct ports the kernel says are free now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_bin() -> str:
    # The `ray` next to this interpreter: the venv's, whatever PATH says.
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def start(config_path: str | os.PathLike = CONFIG, root: str | None = None, timeout_s: float = 90.0,
          idle_timeout_minutes: float | None = None, attempts: int = 3) -> LocalCluster:
    """Start the head and its autoscaler; returns once a driver can connect."""
    import ray

    # Short root: Ray's unix sockets live under it, and their paths must stay under 107 bytes.
    root = root or tempfile.mkdtemp(prefix="srft-as-", dir="/tmp")
    os.makedirs(root, exist_ok=True)
    config = yaml.safe_load(Path(config_path).read_text())
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    head = dict(config["available_node_types"][config["head_node_type"]]["resources"])
    ip = ray.util.get_node_ip_address()
    (gcs, dashboard, agent_http, agent_grpc, client, runtime_env, metrics, node_manager,
     object_manager) = _free_ports(9)
    # The fake provider starts each worker raylet against this address (default: port 6379).
    config["provider"]["gcs_address"] = f"{ip}:{gcs}"
    config_file = os.path.join(root, "autoscaling.json")
    Path(config_file).write_text(json.dumps(config, indent=2))

    cmd = [
        _ray_bin(), "start", "--head", f"--autoscaling-config={config_file}", f"--temp-dir={root}",
        f"--node-ip-address={ip}", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--ray-client-server-port={client}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", "--min-worker-port=0", "--max-worker-port=0",
        f"--num-cpus={head.pop('CPU', 0)}", f"--num-gpus={head.pop('GPU', 0)}", "--disable-usage-stats",
    ]
    if "object_store_memory" in head:
        cmd.append(f"--object-store-memory={int(head.pop('object_store_memory'))}")
    if head:
        cmd.append(f"--resources={json.dumps(head)}")
    # The autoscaler reads its config every AUTOSCALER_UPDATE_INTERVAL_S (default 5 s); 1 s makes
    # launches and removals follow demand closely, as AutoscalingCluster does.
    # Ray 2.60's `ray start` turns token auth on, with ~/.ray/auth_token shared by every head of
    # this user; this cluster gets a token of its own, and its autoscaled nodes inherit the setting.
    token_path = os.path.join(root, TOKEN)
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(uuid.uuid4().hex)
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):  # a head of its own, not what the shell points at
        env.pop(name, None)
    cluster = LocalCluster(dir=root, gcs_address=f"{ip}:{gcs}", dashboard_url=f"http://127.0.0.1:{dashboard}",
                           config=config_file)
    Path(root, STATE).write_text(json.dumps(asdict(cluster), indent=2))  # first: `stop` works on a failed start
    # A raylet gives its dashboard agent ~15 s to write its port files and aborts when the agent
    # (a Python process importing aiohttp, grpc, ...) is slower, as on a loaded machine; `ray start`
    # then fails. That start-up failure alone is retried, from a clean slate.
    for attempt in range(1, attempts + 1):
        with open(os.path.join(root, f"ray-start-{attempt}.log"), "w") as log:
            try:
                proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                                      check=False)
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
        if ok:
            return cluster
        stop(root, keep_dir=True)
        print(f"[local-cluster] ray start failed (attempt {attempt}/{attempts}); see "
              f"{root}/ray-start-{attempt}.log", file=sys.stderr)
    raise RuntimeError(f"ray start failed {attempts} times; logs under {root}")
    return cluster


def load(root: str) -> LocalCluster:
    return LocalCluster(**json.loads(Path(root, STATE).read_text()))


def own_pids(root: str) -> list[int]:
    """Processes of this cluster: every Ray process (GCS, raylets of the head and of the launched
    nodes, autoscaler, dashboard, workers) names the session dir under `root` on its command line."""
    root = os.path.realpath(root)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone, or not ours to read
        if root in cmdline:
            pids.append(int(entry.name))
    return pids


def stop(root: str, keep_dir: bool = False, grace_s: float = 10.0) -> list[int]:
    """SIGTERM this cluster's processes, SIGKILL what is left after `grace_s`; returns their pids.
    Never `ray stop`: that kills every Ray of this user on the machine."""
    pids = own_pids(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in own_pids(root):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while own_pids(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not own_pids(root):
            break
    if not keep_dir:
        shutil.rmtree(root, ignore_errors=True)
    return pids


def status(cluster: LocalCluster) -> dict:
    """Alive nodes by type and the cluster's resources, from the GCS (a short-lived driver)."""
    import ray

    with cluster.connected(logging_level="ERROR", log_to_driver=False):
        nodes = [n for n in ray.nodes() if n["Alive"]]
        return {
            "gcs_address": cluster.gcs_address,
            "dashboard_url": cluster.dashboard_url,
            # Launched nodes carry their type's labels (autoscaling.yaml); the head has none.
            "nodes": [{"node_id": n["NodeID"], "type": n.get("Labels", {}).get("srft-group", "head"),
                       "CPU": n["Resources"].get("CPU", 0), "GPU": n["Resources"].get("GPU", 0)} for n in nodes],
            "resources": ray.cluster_resources(),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local.autoscaling_cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a head with its autoscaler; prints export lines for the shell")
    s.add_argument("--config", default=str(CONFIG), help="autoscaling config (default: %(default)s)")
    s.add_argument("--dir", default=None, help="private root for Ray's files (default: a new /tmp/srft-as-*)")
    for name in ("stop", "status"):
        q = sub.add_parser(name, help=f"{name} the cluster started in --dir (default: $SRFT_LOCAL_CLUSTER)")
        q.add_argument("--dir", default=os.environ.get("SRFT_LOCAL_CLUSTER"))
        if name == "stop":
            q.add_argument("--keep-dir", action="store_true", help="keep the logs under --dir")
    a = p.parse_args(argv)
    if a.cmd == "start":
        if not Path(a.config).is_file():
            print(f"error: --config={a.config}: no such file", file=sys.stderr)
            return 2
        c = start(a.config, a.dir)
        print("export " + " ".join(f"{k}={v}" for k, v in c.env().items()))
        print(f"# dashboard and `ray job submit --address`: {c.dashboard_url}", file=sys.stderr)
        return 0
    if not a.dir or not Path(a.dir, STATE).is_file():
        print(f"error: --dir={a.dir}: not a cluster started by this script (no {STATE}); "
              "pass --dir or set SRFT_LOCAL_CLUSTER", file=sys.stderr)
        return 2
    if a.cmd == "status":
        print(json.dumps(status(load(a.dir)), indent=2))
        return 0
    pids = stop(a.dir, keep_dir=a.keep_dir)
    print(f"stopped {len(pids)} processes of {a.dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
