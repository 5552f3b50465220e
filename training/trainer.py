"""Run :func:`training.loop.train_loop` under Ray Train's ``TorchTrainer`` (or in-process).

Ray path: the data goes to the object store once (``ray.put``); every worker builds the model on its
device (a GPU when the worker has one), ``train_loop`` wraps it in DDP when there is more than one
worker, and after each epoch rank 0 writes a checkpoint (model, optimizer, early-stopping state, best
weights, history) that ``ray.train.report`` hands to Ray. With ``FailureConfig(max_failures=N)`` a
dead worker group restarts and resumes from the last complete checkpoint at the next epoch.

The same ``train_loop`` runs without Ray (``ray.enabled: false``) for quick experiments and for GPU
measurements on a machine without Ray.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import torch

from nba.errors import NBAError

from .config import RayConfig
from .loop import (
    InteractionData,
    TrainConfig,
    TrainResult,
    build,
    selection_of,
    train_loop,
)


class TrainingFailed(NBAError):
    """The training run failed (after Ray's retries)."""


def _scalar_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _worker(config: dict) -> None:
    """Per-worker entry point of the TorchTrainer."""
    import ray
    import ray.train
    import ray.train.torch

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    data: InteractionData = ray.get(config["data"])
    cfg = TrainConfig(**config["cfg"])
    device = ray.train.torch.get_device()
    cfg = cfg.model_copy(update={"device": str(device)})
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location=device, weights_only=False)
    fault = config.get("fault_injection") or {}
    if fault.get("trace") and rank == 0:
        with open(fault["trace"], "a") as f:
            f.write(f"start {resume['epoch'] if resume else 0}\n")

    interval = config.get("checkpoint_every_s", 0.0)
    last = [time.monotonic()]

    def on_epoch(epoch: int, metrics: dict, snapshot) -> None:
        # Ray Train's report waits for the controller to take the previous one, which it polls every
        # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a report per epoch costs up to 2 s an epoch, more than
        # an epoch of a small bank. So the workers report (with a checkpoint) at most every
        # ``checkpoint_every_s`` seconds of training, and after the last epoch, which the driver reads; the
        # per-epoch metrics travel in the checkpoint's history. A failure loses at most that much work.
        state = snapshot()
        due = state["epoch"] >= cfg.epochs or time.monotonic() - last[0] >= interval
        if ctx.get_world_size() > 1:  # every worker must report the same times: rank 0 decides
            flag = torch.tensor([int(due)], device=device)
            torch.distributed.broadcast(flag, src=0)
            due = bool(flag.item())
        if not due:
            return
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save(state, Path(tmp) / "state.pt")
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(_scalar_metrics(metrics), checkpoint=ckpt)
        last[0] = time.monotonic()
        # Chaos drill / test hook: die hard once, a moment after the checkpoint of this epoch was
        # reported (the moment lets Ray's controller register it, as it would during a next epoch).
        marker = fault.get("marker")
        if fault.get("kill_after_epoch") == epoch and marker and not os.path.exists(marker):
            Path(marker).write_text(str(epoch))
            time.sleep(fault.get("delay_s", 3.0))
            os.kill(os.getpid(), signal.SIGKILL)

    train_loop(cfg, data, on_epoch=on_epoch, resume=resume)


def _result_from_state(cfg: TrainConfig, data: InteractionData, state: dict, seconds: float) -> TrainResult:
    model, _, _, _ = build(cfg.model_copy(update={"device": "cpu"}), data, torch.device("cpu"))
    model.load_state_dict(state["best_model"] if state["best_model"] is not None else state["model"])
    es = state["early_stopping"]
    choice, selection = selection_of(es, state["history"])
    best = {"metric": es.get("best_metrics"), "loss": es.get("loss_best_metrics")}.get(choice) or (
        state["history"][-1] if state["history"] else {})
    return TrainResult(model, state["history"], best, selection["best_epoch"], seconds, selection)


def init_ray(ray_cfg: RayConfig) -> None:
    """Connect to ``ray.address`` / ``$RAY_ADDRESS``, or start a local Ray (once per process)."""
    import ray
    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False, configure_logging=False)


def fit(cfg: TrainConfig, data: InteractionData, ray_cfg: RayConfig, storage: Path, name: str,
        on_epoch=None, fault_injection: dict | None = None) -> TrainResult:
    """Train with ``ray_cfg`` (TorchTrainer) or in-process when Ray is disabled."""
    t0 = time.perf_counter()
    if not ray_cfg.enabled:
        return train_loop(cfg, data, on_epoch=(lambda e, m, s: on_epoch(e, m)) if on_epoch else None)

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray(ray_cfg)
    resources = ray.cluster_resources()
    use_gpu = ray_cfg.use_gpu if ray_cfg.use_gpu is not None else resources.get("GPU", 0) >= 1
    cpus = ray_cfg.cpus_per_worker or max(1, int(resources.get("CPU", 1)) // ray_cfg.num_workers)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg.model_dump(), "data": ray.put(data), "threads": cpus,
                           "fault_injection": fault_injection, "checkpoint_every_s": ray_cfg.checkpoint_every_s},
        scaling_config=ray.train.ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(storage).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=ray_cfg.keep_checkpoints)),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; keep the cause readable
        raise TrainingFailed(f"training failed under Ray Train: {e}") from e
    if result.checkpoint is None:
        raise TrainingFailed("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    if on_epoch:
        for m in state["history"]:
            on_epoch(m["epoch"], m)
    return _result_from_state(cfg, data, state, time.perf_counter() - t0)
