"""The head's side of the Ray backend: one thread that keeps a GenerationSlot per GPU of the cluster busy.

It plays the local Worker's part for the job service (start, stop, wake, request_cancel, model, workers). The
SQLite store stays the source of truth: a slot gets a job only by claiming it there (jobs/store.py: priority,
owners in turn, submission order), and a result is accepted only while the attempt that produced it is still
the job's running attempt, so a late result from a worker given up for lost changes nothing.

Every Ray call is made from the dispatcher thread. Each pass of its loop:
  1. every 2 s, looks for alive nodes with GPUs that have fewer slots than GPUs / gpus_per_worker, and starts
     one (a second slot on a node starts once the first is ready: they share its data folder);
  2. gives each idle slot the next job from the store (a slot with none releases its memory);
  3. passes on cancels (`ray.cancel`: the slot sees it at the next step);
  4. waits for the first answer (a result, readiness, progress) or a wake (a new job, a cancel), in slices of
     WAIT_S, and files every answer that is in: a result is filed the moment it arrives, a cancel passed on
     within WAIT_S;
  5. every 0.5 s, asks each busy slot for its step.
A slot whose actor or node is lost (RayActorError) is killed and dropped; its job is queued again for another
attempt with the same seed, or fails with `worker_lost` after [cluster] max_attempts starts. The server starts
answering at once: until a slot has loaded the model, `model` raises WorkersStarting (health says "starting").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import Config, ConfigError
from ..jobs.files import JobFiles
from ..jobs.model_info import ModelInfo
from ..jobs.previews import Previews
from ..jobs.store import CANCELLED, FAILED, SUCCEEDED, JobRecord, JobStore
from ..request.errors import RequestError
from ..request.model import image_paths
from .slot import GenerationSlot

log = logging.getLogger(__name__)

DISCOVER_EVERY_S = 2.0
PROGRESS_EVERY_S = 0.5
WAIT_S = 0.02  # one slice of waiting for answers; a wake (new job, cancel) is seen within it
NAMESPACE = "sparsectrl-previs"
# Node-loss detection for a Ray this server starts itself (address = ""): about 1.5 s instead of Ray's ~20 s
# default. A real cluster's head sets these as RAY_health_check_* variables on `ray start --head` (docs/cluster.md).
FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 500,
    "health_check_initial_delay_ms": 0,
}
WORKER_LOST = "worker_lost"


class ClusterError(ConfigError):
    """The Ray cluster cannot be used (not reachable, no GPU worker came up); the message says what to do."""


class WorkersStarting(RequestError):
    """No worker of the cluster has loaded the model yet: the server answers, but cannot check or run a job."""

    def __init__(self, why: str):
        super().__init__("workers_starting", why)


@dataclass
class _Slot:
    name: str  # NODE/INDEX: the node id's first 8 hex digits and the slot's number on it
    node_id: str
    address: str
    actor: Any
    state: str = "starting"  # starting | idle | running | failed
    info: ModelInfo | None = None
    host: str = ""
    error: str | None = None
    job: JobRecord | None = None
    run_ref: Any = None
    progress_ref: Any = None
    used: bool = False  # ran a job since its memory was last released


class RayDispatcher:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        files: JobFiles,
        after_job: Callable[[], object] | None = None,
        previews: Previews | None = None,
    ):
        self.config, self.cluster, self.store, self.files = config, config.cluster, store, files
        self.previews = previews  # where the workers' live previews go (they come with the progress)
        self.after_job = after_job
        self._slots: dict[str, _Slot] = {}
        self._refs: dict[Any, tuple[str, _Slot]] = {}  # ObjectRef -> (ready | run | progress, slot)
        self._cancels: set[str] = set()
        self._lock = threading.Lock()  # guards _slots and _cancels for the HTTP threads' reads
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._first_ready = threading.Event()
        self._model: ModelInfo | None = None
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="sparsectrl-ray-dispatcher", daemon=True)

    # -- the job service's side -------------------------------------------------------------------------------

    def start(self) -> None:
        """Join (or start) Ray and start the dispatcher; returns at once. Health says "starting" until a slot has
        loaded the model, and why if none could; a ClusterError only when Ray cannot be joined."""
        self.connect()
        self._prepare_worker_data()
        self._started_at = time.monotonic()
        self._thread.start()

    def starting(self) -> str | None:
        """Why no job can be checked yet (the workers are loading the model, or none can), or None once one can."""
        if self._model is not None:
            return None
        with self._lock:
            failed = [s for s in self._slots.values() if s.state == "failed"]
            alive = [s for s in self._slots.values() if s.state != "failed"]
        if failed and not alive:
            return f"the cluster's workers could not load the model: {failed[0].error}"
        waited = time.monotonic() - self._started_at
        if not alive and waited > self.cluster.start_timeout_s:
            return (
                f"no GPU worker of the Ray cluster has started in {waited:.0f} s ([cluster] start_timeout_s): are GPU "
                "nodes joined (`ray status` lists their GPUs)?"
            )
        what = f"{len(alive)} worker(s) loading the model" if alive else "waiting for a GPU node to join"
        return f"the cluster's workers are starting ({what}, {waited:.0f} s so far): try again in a moment"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the dispatcher: running jobs are cancelled on their workers and queued again for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if ray.is_initialized():
            ray.shutdown()

    def wake(self) -> None:
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancels.add(job_id)
        self._wake.set()

    @property
    def model(self) -> ModelInfo:
        if self._model is None:
            raise WorkersStarting(self.starting() or "no worker of the Ray cluster has loaded the model yet")
        return self._model

    def workers(self) -> list[dict[str, Any]]:
        with self._lock:
            slots = sorted(self._slots.values(), key=lambda s: s.name)
            return [
                {
                    "name": s.name,
                    "node": f"{s.host or s.address} ({s.node_id[:8]})",
                    "state": s.state,
                    "job": s.job.id if s.job else None,
                    "model": s.info.name if s.info else None,
                    "device": s.info.device if s.info else None,
                    "error": s.error,
                }
                for s in slots
            ]

    # -- connecting -------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the configured Ray cluster (or start a private one); `serve` calls it before listening, so a
        cluster that cannot be reached is one `error:` line."""
        if ray.is_initialized():
            return
        try:
            if self.cluster.address:
                ray.init(address=self.cluster.address, namespace=NAMESPACE)
            else:
                ray.init(namespace=NAMESPACE, include_dashboard=False, _system_config=FAST_HEALTH_CHECKS)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(
                f"cannot join the Ray cluster at {self.cluster.address or '(a private one)'}: {e} "
                "([cluster] address; start the head with `ray start --head`, docs/cluster.md)"
            ) from None

    def _worker_data_dir(self) -> str:
        return self.cluster.worker_data_dir or str(self.config.data_dir)

    def _prepare_worker_data(self) -> None:
        """The tiny model and its ControlNet, built here before any slot would: slots of nodes sharing this
        machine's folder (tests, a one-box trial) would otherwise all build them at once."""
        if self.config.model.is_tiny:
            from ..engine.tiny import build_tiny_all

            build_tiny_all(Path(self._worker_data_dir()).expanduser() / "models" / "tiny")

    # -- the loop ---------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_discover = next_progress = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_discover:
                        self._discover()
                        next_discover = now + DISCOVER_EVERY_S
                    self._assign()
                    self._pass_on_cancels()
                    if now >= next_progress:
                        self._ask_progress()
                        next_progress = now + PROGRESS_EVERY_S
                    self._wait_and_file()
                except Exception:  # noqa: BLE001 - one bad answer must not stop the cluster's queue
                    log.exception("the Ray dispatcher hit an error; going on")
                    time.sleep(1.0)
        finally:
            self._shut_down()

    def _wait_and_file(self) -> None:
        """Wait for the first answer or a wake, in WAIT_S slices (a cancel or new job is passed on within one),
        then file every answer that is in: a finished job is taken the moment its result arrives."""
        if not self._refs:
            self._wake.wait(WAIT_S * 10)
            self._wake.clear()
            return
        done, _ = ray.wait(list(self._refs), num_returns=1, timeout=WAIT_S)
        if self._wake.is_set():
            self._wake.clear()
        if not done:
            return
        done, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        for ref in done:
            entry = self._refs.pop(ref, None)
            if entry is not None:  # None: dropped with its slot by an answer filed before it
                kind, slot = entry
                getattr(self, f"_on_{kind}")(slot, ref)

    def _discover(self) -> None:
        """A slot for every GPU (share) of every alive node; a node's next slot once its others are ready."""
        per_gpu = self.cluster.gpus_per_worker
        nodes = ray.nodes()
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        for slot in [s for s in self._slots.values() if s.node_id not in alive and s.state != "running"]:
            self._drop_slot(slot)  # its node left (a running one's job is handled through its run)
            log.warning("worker %s dropped: its node left the cluster", slot.name)
        for node in nodes:
            if node["NodeID"] not in alive:
                continue
            node_id = node["NodeID"]
            wanted = int(node.get("Resources", {}).get("GPU", 0) / per_gpu + 1e-9)
            with self._lock:
                mine = [s for s in self._slots.values() if s.node_id == node_id]
            if len(mine) >= wanted or any(s.state == "starting" for s in mine):
                continue
            if any(s.state == "failed" for s in mine):
                continue  # it could not load the model there; health says why
            used = {s.name for s in mine}
            index = next(i for i in range(wanted + len(used) + 1) if f"{node_id[:8]}/{i}" not in used)
            name = f"{node_id[:8]}/{index}"
            actor = GenerationSlot.options(
                num_gpus=per_gpu,
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(self.config, self._worker_data_dir())
            slot = _Slot(name, node_id, node.get("NodeManagerAddress", ""), actor)
            with self._lock:
                self._slots[name] = slot
            self._refs[actor.ready.remote()] = ("ready", slot)
            log.info("worker %s starting on node %s", name, slot.address)

    def _assign(self) -> None:
        idle = [s for s in self._slots.values() if s.state == "idle"]
        for i, slot in enumerate(idle):
            job = self.store.claim_next(worker=slot.name)
            if job is None:
                for waiting in idle[i:]:
                    if waiting.used:  # nothing to run: the slot releases its memory now, off any job's path
                        waiting.actor.release_memory.remote()
                        waiting.used = False
                return
            try:
                images = {path: self.files.read_image(job.id, path) for path in image_paths(job.request)}
            except OSError as e:  # its files are gone (removed by hand): the job cannot run anywhere
                self.store.finish(job.id, FAILED, "generation_failed", f"its condition images cannot be read: {e}")
                continue
            slot.run_ref = slot.actor.run.remote(job.id, job.attempt, job.request, images)
            slot.job, slot.state, slot.used = job, "running", True
            self._refs[slot.run_ref] = ("run", slot)
            if job.cancel_requested:
                self.request_cancel(job.id)
            log.info("job %s (attempt %d) runs on %s", job.id, job.attempt, slot.name)

    def _pass_on_cancels(self) -> None:
        with self._lock:
            cancels = set(self._cancels)
        for slot in self._slots.values():
            if slot.job is not None and slot.job.id in cancels:
                ray.cancel(slot.run_ref)
                with self._lock:
                    self._cancels.discard(slot.job.id)

    def _ask_progress(self) -> None:
        for slot in self._slots.values():
            if slot.state == "running" and slot.progress_ref is None:
                slot.progress_ref = slot.actor.progress.remote()
                self._refs[slot.progress_ref] = ("progress", slot)

    # -- answers ----------------------------------------------------------------------------------------------

    def _on_ready(self, slot: _Slot, ref) -> None:
        try:
            ready = ray.get(ref)
        except RayActorError as e:
            self._fail_slot(slot, _cause(e))
            return
        slot.info, slot.host, slot.state = ready["model"], ready["host"], "idle"
        if self._model is None:
            self._model = slot.info
            self._first_ready.set()
        log.info("worker %s ready on %s: %s on %s", slot.name, slot.host, slot.info.name, slot.info.device)

    def _on_progress(self, slot: _Slot, ref) -> None:
        slot.progress_ref = None
        try:
            progress = ray.get(ref)
        except (RayActorError, RayTaskError):
            return  # a lost worker shows through its run
        if progress is not None:
            job_id, attempt, step, preview = progress
            self.store.set_progress(job_id, step, attempt=attempt)
            if preview is not None and self.previews is not None and self.store.is_current(job_id, attempt):
                self.previews.offer_encoded(job_id, preview)  # the worker's newest, of the running attempt

    def _on_run(self, slot: _Slot, ref) -> None:
        job = slot.job
        assert job is not None
        try:
            result = ray.get(ref)
        except RayActorError:
            self._lost(slot, job)
            return
        except (TaskCancelledError, RayTaskError) as e:
            if isinstance(e, TaskCancelledError) or "JobCancelled" in str(type(e.cause) if e.cause else e):
                self._finish_cancelled(slot, job)
            else:
                self._finish(slot, job, FAILED, "generation_failed", str(e).splitlines()[-1][:500])
            return
        if "error" in result:
            self._finish(slot, job, FAILED, *result["error"])
        elif self.store.is_current(job.id, job.attempt):
            if self.previews is not None and result.get("preview") is not None:
                self.previews.offer_encoded(job.id, result["preview"])  # the last step's (progress had not got it)
            self.files.write_outputs(job.id, result["video"], result["frames"], result.get("take", {}))
            self._finish(slot, job, SUCCEEDED)
            log.info("job %s succeeded on %s in %.3f s (seed %d)", job.id, slot.name, result["seconds"], result["seed"])
        else:
            self._idle(slot)  # not this job's running attempt any more: its word counts for nothing

    def _finish_cancelled(self, slot: _Slot, job: JobRecord) -> None:
        if self._stopping.is_set():
            self.store.requeue(job.id, job.attempt, give_back=True)
            self._idle(slot)
            log.info("job %s stopped with the server: queued again", job.id)
        else:
            self._finish(slot, job, CANCELLED)
            log.info("job %s cancelled", job.id)

    def _finish(self, slot: _Slot, job: JobRecord, status: str, code: str | None = None, message: str | None = None):
        if status != SUCCEEDED:
            self.files.remove_outputs(job.id)
        if not self.store.finish(job.id, status, code, message, attempt=job.attempt) and status == SUCCEEDED:
            self.files.remove_outputs(job.id)
        if code:
            log.error("job %s failed on %s: %s (%s)", job.id, slot.name, code, message)
        if self.previews is not None:
            self.previews.finish(job.id)  # its newest preview in its file, the memory copy let go
        self._idle(slot)
        if self.after_job is not None:
            self.after_job()

    def _idle(self, slot: _Slot) -> None:
        with self._lock:
            if slot.job is not None:
                self._cancels.discard(slot.job.id)
            slot.job, slot.run_ref = None, None
            slot.state = "idle" if slot.name in self._slots else slot.state

    def _lost(self, slot: _Slot, job: JobRecord) -> None:
        """The slot's actor or node is gone mid-job: fence it off, then another attempt, or worker_lost."""
        self._drop_slot(slot)
        if job.attempt >= self.cluster.max_attempts:
            self.store.finish(
                job.id,
                FAILED,
                WORKER_LOST,
                f"the worker running this job was lost {job.attempt} times (its node went away or its process "
                f"died; [cluster] max_attempts = {self.cluster.max_attempts}): see docs/cluster.md",
                attempt=job.attempt,
            )
            log.error("job %s: worker %s lost, attempts used up: failed (worker_lost)", job.id, slot.name)
        elif self.store.requeue(job.id, job.attempt):
            log.warning(
                "job %s: worker %s lost mid-job: queued again (attempt %d done)", job.id, slot.name, job.attempt
            )

    def _fail_slot(self, slot: _Slot, why: str) -> None:
        slot.state, slot.error = "failed", why
        log.error("worker %s could not start: %s", slot.name, why)

    def _drop_slot(self, slot: _Slot) -> None:
        for ref, (_, owner) in list(self._refs.items()):
            if owner is slot:
                del self._refs[ref]
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        with self._lock:
            self._slots.pop(slot.name, None)
            slot.job, slot.run_ref, slot.progress_ref = None, None, None

    def _shut_down(self) -> None:
        """Cancel what runs, wait a little for the cancels to land, queue those jobs again, end the actors."""
        running = [s for s in self._slots.values() if s.state == "running" and s.run_ref is not None]
        for slot in running:
            ray.cancel(slot.run_ref)
        refs = [s.run_ref for s in running]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=10) if refs else ([], [])
        for slot in running:
            if slot.run_ref in done:
                self._on_run(slot, slot.run_ref)  # finished, or cancelled and queued again
            elif slot.job is not None:
                self.store.requeue(slot.job.id, slot.job.attempt, give_back=True)
                log.info("job %s stopped with the server: queued again", slot.job.id)
        for slot in list(self._slots.values()):
            self._drop_slot(slot)


def _cause(error: BaseException) -> str:
    """The first line that says why an actor failed to start (its constructor's exception)."""
    text = str(error)
    for line in reversed(text.splitlines()):
        if "Error" in line and ":" in line:
            return line.strip()[:500]
    return text.splitlines()[-1][:500] if text else type(error).__name__
