"""Experiment tracking from rank 0: `tracking=none|mlflow|tensorboard|wandb`.

Every backend gets the resolved config (redacted: no secrets) once and the step metrics as they
are produced (`train/<name>` per optimizer step, `eval/loss` per evaluation). The tracking run is
named after the training run's folder (`<run_name>-<identity[:16]>-<start>`), so a run resumed
after a worker death or by `resume=auto` continues the same tracking run:

  mlflow       `tracking_uri`, else $MLFLOW_TRACKING_URI, else a file store at
               <checkpoint_storage>/mlruns (local storage only). MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true; a
               file store that the user chose is allowed for this process. The run is found again by
               its tag `srft.run`; re-done steps after a resume are logged again at the same step.
  tensorboard  event files under <tracking_uri or <checkpoint_storage>/tensorboard>/<run folder>/; a
               remote (s3://) folder gets a local copy that is uploaded at every checkpoint and at the
               end. A resumed writer purges the events after the checkpoint's step (purge_step).
  wandb        `wandb.init(project=tracking_project, id=<run folder name>, resume="allow")`; offline
               with WANDB_MODE=offline. Not installed here: untested, documented in docs/train.md.

The packages are imported only when chosen; `check(cfg)` fails early (UserError) when the chosen
one is not installed. The loop holds its tracker through `SafeTracker`: a backend that fails stops
tracking, never the training run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline import fsys
from pipeline.errors import UserError

log = logging.getLogger(__name__)

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}


def check(cfg, storage: str) -> None:
    """Driver side, before any work: the backend is installed and has somewhere to write."""
    if cfg.tracking == "none":
        return
    package = PACKAGES[cfg.tracking]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"tracking={cfg.tracking} needs the {package!r} package: pip install {package} "
                        "(or tracking=none)")
    if cfg.tracking == "mlflow" and not (cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")) \
            and urlparse(storage).scheme not in ("", "file"):
        raise UserError(f"tracking=mlflow with checkpoint storage {storage}: set tracking_uri (an MLflow "
                        "server, or a local file store) or MLFLOW_TRACKING_URI")


def default_uri(cfg, storage: str) -> str | None:
    """Where the backend writes when tracking_uri is not set: beside the run folders in the
    checkpoint storage, which outlives the output's versions (`pipeline/commit.py`)."""
    if cfg.tracking_uri:
        return fsys.absolute(cfg.tracking_uri) if "://" not in cfg.tracking_uri else cfg.tracking_uri
    if cfg.tracking == "mlflow":
        return os.environ.get("MLFLOW_TRACKING_URI") or fsys.join(storage, "mlruns")
    if cfg.tracking == "tensorboard":
        return fsys.join(storage, "tensorboard")
    return None


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """No tracking."""

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class MlflowTracker(Tracker):
    def __init__(self, uri: str, project: str, run_name: str):
        if urlparse(uri).scheme in ("", "file"):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the user chose a file store
            if urlparse(uri).scheme == "":
                uri = "file://" + os.path.abspath(uri)
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(project)
        found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`srft.run` = '{run_name}'",
                                   output_format="list")
        if found:
            self.run = mlflow.start_run(run_id=found[0].info.run_id)
        else:
            self.run = mlflow.start_run(run_name=run_name, tags={"srft.run": run_name})

    def log_config(self, config: dict) -> None:
        params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(config).items()}
        from mlflow.exceptions import MlflowException

        try:
            self.mlflow.log_params(params)
        except MlflowException as e:  # a resumed run may not change a param: keep the first values
            log.info("mlflow params kept from the first attempt: %s", e)
        self.mlflow.log_dict(config, "config.json")

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics(numeric(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class TensorboardTracker(Tracker):
    def __init__(self, logdir: str, run_name: str, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.remote = None
        target = fsys.join(logdir, run_name)
        if urlparse(target).scheme not in ("", "file"):
            self.remote, local = target, tempfile.mkdtemp(prefix="srft-tb-")
        else:
            local = target.removeprefix("file://")
        self.local = local
        # purge_step: events after the resumed checkpoint's step (from the killed attempt) are dropped.
        self.writer = SummaryWriter(local, purge_step=start_step + 1 if start_step > 0 else None)

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log_metrics(self, metrics: dict, step: int) -> None:
        for k, v in numeric(metrics).items():
            self.writer.add_scalar(k, v, step)

    def sync(self) -> None:
        self.writer.flush()
        if self.remote:
            fs, path = fsys.filesystem(self.remote)
            fs.create_dir(path, recursive=True)
            pafs.copy_files(self.local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def close(self) -> None:
        self.sync()
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


class WandbTracker(Tracker):
    def __init__(self, directory: str | None, project: str, run_name: str):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, id=run_name[-64:], resume="allow", dir=directory)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(cfg, run_name: str, start_step: int) -> Tracker:
    """The tracker of rank 0; `cfg.tracking_uri` is already resolved (`default_uri`)."""
    if cfg.tracking == "mlflow":
        return MlflowTracker(cfg.tracking_uri, cfg.tracking_project, run_name)
    if cfg.tracking == "tensorboard":
        return TensorboardTracker(cfg.tracking_uri, run_name, start_step)
    if cfg.tracking == "wandb":
        return WandbTracker(cfg.tracking_uri, cfg.tracking_project, run_name)
    return Tracker()


class SafeTracker:
    """Tracking must not kill a training run: the first failure is logged, tracking stops, and
    the summary says why."""

    def __init__(self, open_fn):
        self.error = None
        self.tracker = self._call(open_fn)

    def _call(self, fn, *args):
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any backend failure
            self.error = f"{type(e).__name__}: {e}"
            log.error("tracking disabled: %s", self.error)
            return None

    def __getattr__(self, name):
        def call(*args):
            if self.tracker is not None:
                self._call(getattr(self.tracker, name), *args)
        return call
