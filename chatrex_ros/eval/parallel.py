"""Evaluate many bags: here, in N worker processes, or as Ray tasks; the main process pools the records.

Each bag's evaluation is the single-bag one (:func:`chatrex_ros.eval.offline.evaluate_bag`) and sends back
its records and timings, never metrics to average: :func:`chatrex_ros.eval.pooling.pool` scores everything
in the fixed bag order, so the metrics do not depend on the executor, the number of workers or which bag
finished first. Only the clock measurements (``timing``) differ between runs, as they do between two
serial runs.

Worker processes are started with the ``spawn`` method: a forked child would inherit the threads (and
locks) that torch, OpenCV or a model already started in the parent. Each worker builds the backends once,
from the picklable :class:`~chatrex_ros.eval.backends.ModelSpec`, and keeps them for the bags it gets.

A bag that fails (corrupt, ground truth matching nothing, a model error on one of its frames) becomes an
outcome with its error and the others go on; a worker process that dies takes its bag down with it, and
the bags it left unfinished are retried, one fresh process each, so the report names the bag that kills
its worker.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from chatrex_ros.eval.backends import ModelSpec
from chatrex_ros.eval.bags import BagJob
from chatrex_ros.eval.offline import evaluate_bag, progress_bar
from chatrex_ros.eval.pooling import BagOutcome, evaluated_image_ids, failed, pool
from chatrex_ros.eval.result import EvaluationResult
from chatrex_ros.models.base import LanguageBackend, ProposalPipeline

EXECUTORS = ("process", "ray")
RAY_INSTALL = "pip install 'chatrex_ros[ray]'"
START_METHOD = "spawn"
MODEL_STAGE = "building the models"

Models = tuple[ProposalPipeline, LanguageBackend | None]
_MODELS: dict[ModelSpec, Models | BaseException] = {}
"""A worker's backends, built on its first bag (a failure is kept too: every bag would fail the same way)."""
_BAR_POSITION: int | None = None
"""A worker process's terminal line for its per-bag bar (the overall bar has line 0)."""


@dataclass
class ManyBags:
    """A many-bag evaluation: the pooled result (with a section per bag) and each bag's own outcome."""

    result: EvaluationResult
    outcomes: list[BagOutcome]

    @property
    def failures(self) -> list[BagOutcome]:
        """The bags that could not be evaluated, in bag order."""
        return [o for o in self.outcomes if not o.ok]


def evaluate_bags(
    jobs: Sequence[BagJob],
    models: ModelSpec,
    executor: str = "process",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> ManyBags:
    """Evaluate every job's bag and pool the records (``workers`` None or 1 with ``process``: in this process).

    Raises what building the models raises (in this process), or RuntimeError when every worker failed
    to build them; a bag's own failure is reported in its outcome instead.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not jobs:
        raise ValueError("no bag to evaluate")
    started = time.perf_counter()
    ray = _import_ray() if executor == "ray" else None  # before any output: a missing Ray is one line
    bar = _overall_bar(len(jobs), progress)
    outcomes: list[BagOutcome] = []

    def done(outcome: BagOutcome) -> None:
        outcomes.append(outcome)
        bar.update(1)
        if not outcome.ok:
            bar.set_postfix_str(f"{sum(not o.ok for o in outcomes)} failed")

    try:
        if executor == "ray":
            info: dict[str, Any] = {"kind": "ray", "workers": workers, "ray_address": ray_address}
            _run_ray(ray, jobs, models, workers, ray_address, done)
        elif (workers or 1) == 1:
            info = {"kind": "serial", "workers": 1}
            _run_serial(jobs, models, progress, done)
        else:
            info = {"kind": "process", "workers": workers, "start_method": START_METHOD}
            _run_processes(jobs, models, int(workers or 1), progress, done)
    finally:
        bar.close()
    model_failures = [o for o in outcomes if o.error.startswith(MODEL_STAGE)]
    if outcomes and len(model_failures) == len(outcomes):
        raise RuntimeError(f"{model_failures[0].error} (in every worker)")
    return ManyBags(pool(outcomes, time.perf_counter() - started, info), sorted(outcomes, key=lambda o: o.job.index))


def evaluate_with(job: BagJob, models: Models, progress: bool = False, position: int | None = None) -> BagOutcome:
    """One bag with built backends: its records and ground truth, or its error.

    The error is returned, never raised: the other bags go on.
    """
    try:
        gt, queries = job.load_inputs()
        pipeline, language = models
        result = evaluate_bag(
            job.bag,
            gt,
            pipeline,
            language,
            queries,
            job.image_topic,
            job.stamp_tolerance_ns,
            job.max_frames,
            progress=progress,
            progress_label=job.label,
            progress_position=position,
            count_queries=job.count_queries,
            queries_file=job.queries,
        )
    except Exception as error:  # a corrupt bag, a wrong ground truth, a model error: this bag's outcome
        return failed(job, error)
    return BagOutcome(job, result, gt, queries, evaluated_image_ids(result, gt))


def evaluate_job(job: BagJob, models: ModelSpec, progress: bool = False) -> BagOutcome:
    """The worker's entry point (a process pool's or a Ray task's): backends built once per process."""
    built = _MODELS.get(models)
    if built is None:
        try:
            built = models.build()
        except Exception as error:  # kept: the next bag of this worker fails the same way, without a rebuild
            built = error
        _MODELS[models] = built
    if isinstance(built, BaseException):
        return failed(job, f"{MODEL_STAGE}: {type(built).__name__}: {built}")
    return evaluate_with(job, built, progress, _BAR_POSITION)


def _run_serial(jobs: Sequence[BagJob], models: ModelSpec, progress: bool, done: Callable[[BagOutcome], None]) -> None:
    built = models.build()  # a configuration error is the command's error, as for one bag
    for job in jobs:
        done(evaluate_with(job, built, progress, position=1))


def _init_worker(slots: Any) -> None:
    """Give this worker process the next free terminal line for its per-bag progress bars."""
    global _BAR_POSITION
    with slots.get_lock():
        slots.value += 1
        _BAR_POSITION = int(slots.value)


def _run_processes(
    jobs: Sequence[BagJob], models: ModelSpec, workers: int, progress: bool, done: Callable[[BagOutcome], None]
) -> None:
    context = multiprocessing.get_context(START_METHOD)
    crashed: list[tuple[BagJob, BaseException]] = []
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(context.Value("i", 0),),
    ) as executor:
        futures: dict[Future[BagOutcome], BagJob] = {
            executor.submit(evaluate_job, job, models, progress): job for job in jobs
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: futures[f].index):
                try:
                    outcome = future.result()
                except Exception as error:  # BrokenProcessPool: a worker died (killed, out of memory, crashed)
                    crashed.append((futures[future], error))
                    continue
                done(outcome)
    for job, first_error in sorted(crashed, key=lambda item: item[0].index):
        done(_alone(job, models, context, first_error))


def _alone(job: BagJob, models: ModelSpec, context: Any, first_error: BaseException) -> BagOutcome:
    """A bag whose worker died (it, or a bag beside it): once more in a process of its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        try:
            return executor.submit(evaluate_job, job, models, False).result()
        except Exception as error:
            return failed(job, f"its worker process died ({type(error).__name__}: {error}; before: {first_error})")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"--executor ray needs Ray: {RAY_INSTALL}") from None
    return ray


def _run_ray(
    ray: Any,
    jobs: Sequence[BagJob],
    models: ModelSpec,
    workers: int | None,
    address: str | None,
    done: Callable[[BagOutcome], None],
) -> None:
    """Each bag as a Ray task (one CPU each); at most ``workers`` in flight when given."""
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address)
            else:  # a local instance for this run only: no dashboard, workers' output stays in Ray's logs
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except Exception as error:  # unreachable address, no room for a local instance: the command's error
            raise RuntimeError(f"cannot start Ray ({address or 'a local instance'}): {error}") from error
    try:
        task: Any = ray.remote(num_cpus=1, max_retries=0)(evaluate_job)
        queue = list(jobs)
        limit = workers or len(queue)
        in_flight: dict[Any, BagJob] = {}
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                job = queue.pop(0)
                in_flight[task.remote(job, models, False)] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                job = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # the task's worker died, or Ray lost it
                    outcome = failed(job, f"its Ray task failed ({type(error).__name__}: {error})")
                done(outcome)
    finally:
        if started_here:
            ray.shutdown()


def _overall_bar(total: int, enabled: bool) -> Any:
    """Bags done, on the first terminal line (the per-bag bars go below it)."""
    return progress_bar(total, enabled, "bags", position=0, unit="bag", leave=True)
