"""One seed's training loop: started fresh or from its resumable checkpoint, in either backend.

The learner comes from ``train_config.make_learner`` (the backend picked there, once); the loop
calls only the ``shared.learner.MetaRLLearner`` methods, so the same code drives both backends and
both rollout paths (``rl_loop.meta_iteration`` for ``runner``, ``rl_loop.native_iteration_fn`` for
``native``). A resume checkpoint holds the state in a canonical layout, so a run may continue in
the other backend (``TrainConfig.backend`` is the one field allowed to change).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.env_runner import MetaEnvironment, get_distribution
from shared.weights import check_weights
from ssm_metarl import checkpoint, plots, scaleout
from ssm_metarl.compile_time import BAR_FORMAT, compile_seconds
from ssm_metarl.progress import progress as bar
from ssm_metarl.rl_loop import meta_iteration, native_iteration_fn
from ssm_metarl.runinfo import RETURN_MEANING, run_info
from ssm_metarl.train_config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    expected_layout,
    initial_weights,
    make_learner,
    report_config,
)
from ssm_metarl.train_evaluation import run_evaluation
from ssm_metarl.train_reports import compile_line, print_report, save_checkpoint, write_json, write_metrics


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a resumable checkpoint was saved after ``iteration`` meta-iterations."""

    def __init__(self, iteration: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after {iteration} meta-iterations; resumable checkpoint {checkpoint}")
        self.iteration, self.checkpoint = iteration, checkpoint


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[list[bool]]:
    """The first Ctrl-C asks the loop to stop after the current iteration (and save); a second stops at once."""
    stop = [False]
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop[0]:
            raise KeyboardInterrupt
        stop[0] = True
        print("\nCtrl-C: stopping after this meta-iteration to save a resumable checkpoint "
              "(press Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def check_resumable(saved: dict[str, Any], config: TrainConfig, where: str) -> None:
    """``saved`` (a resume checkpoint's config) continues as ``config``: only the backend may differ."""
    wanted = dataclasses.asdict(config)
    # a field added since the checkpoint was written counts as its default
    saved = {**{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in saved}, **saved}
    differ = sorted(k for k in set(saved) | set(wanted)
                    if k not in RESUMABLE_CHANGES and saved.get(k, "<absent>") != wanted.get(k, "<absent>"))
    if differ:
        listed = ", ".join(f"{k}: saved {saved.get(k, '<absent>')!r}, wanted {wanted.get(k, '<absent>')!r}"
                           for k in differ)
        raise ValueError(f"{where} was written for an incompatible configuration ({listed}); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change on --resume")


def iteration_fn(config: TrainConfig, learner: Any, meta_env: MetaEnvironment) -> Callable[[], dict[str, float]]:
    """One meta-iteration per call on the configured rollout path."""
    if config.objective != "maml":
        from ssm_metarl import incontext
        return incontext.iteration_fn(config, learner, meta_env)
    if config.rollouts == "native":
        return native_iteration_fn(learner, meta_env, config.meta_batch, config.episodes)
    return lambda: meta_iteration(learner, meta_env, config.meta_batch, config.episodes)


class TrainingSession:
    """One seed's training in ``directory``: started fresh or from its resumable checkpoint.

    ``step()`` runs one meta-iteration; ``save_state(k)`` writes the resumable checkpoint after ``k``
    iterations; ``loop`` trains to ``config.iterations``; ``finish`` evaluates and writes the reports.
    """

    def __init__(self, config: TrainConfig, directory: Path, ranks: scaleout.Ranks | None = None) -> None:
        self.config, self.directory = config, directory
        self.writes = ranks is None or ranks.writes  # under torchrun only rank 0 writes
        self.distribution = get_distribution(config.task)
        self.resume_path = directory / checkpoint.RESUME_FILE
        state = checkpoint.load(self.resume_path) if self.resume_path.is_file() else None
        if state is not None:
            where = f"resume checkpoint {str(self.resume_path)!r}"
            check_resumable(state.config, config, where)
            check_weights(state.params, expected_layout(config, self.distribution), where)
        weights = state.params if state else initial_weights(config, self.distribution)
        shards = ranks.task_shards() if ranks is not None and config.objective != "maml" else None
        self.learner = make_learner(config, self.distribution, weights, shards)
        self.meta_env = MetaEnvironment(self.distribution, seed=config.seed)
        self.metrics: list[dict[str, Any]] = list(state.metrics) if state else []
        if state is not None:
            try:
                checkpoint.restore_optimizer_and_rng(state, self.learner, self.meta_env.rng)
            except ValueError as err:
                raise ValueError(f"resume checkpoint {str(self.resume_path)!r}: {err}") from None
        self.start = state.iteration if state else 0
        self.resumed_after_training = state is not None and state.iteration == config.iterations
        if ranks is None or config.objective != "maml":  # in-context learners hold their shards themselves
            self.step = iteration_fn(config, self.learner, self.meta_env)
        else:  # this rank's slice of the tasks (ssm_metarl/scaleout.py)
            self.step = ranks.iteration_fn(self.learner, self.meta_env, config.meta_batch, config.episodes)

    def save_state(self, iteration: int) -> None:
        if not self.writes:
            return
        checkpoint.save(self.resume_path, checkpoint.capture(
            self.learner, iteration, self.meta_env.rng, self.metrics, dataclasses.asdict(self.config)))

    def loop(self, checkpoint_every: int, on_iteration: Callable[[int], None] | None = None) -> float:
        """Train to the end; returns the seconds spent compiling (``jax.jit`` / ``torch.compile``).

        Raises :class:`TrainingInterrupted` after saving, on the first Ctrl-C.
        """
        config = self.config
        compile_before = compile_seconds(config.backend)
        progress = bar(range(self.start, config.iterations), desc=f"{config.task} ({config.backend})", unit="it",
                        initial=self.start, total=config.iterations, bar_format=BAR_FORMAT, disable=not self.writes)
        with deferred_interrupt() as stop:
            for iteration in progress:
                started = time.perf_counter()
                result = self.step()
                self.metrics.append({"iteration": iteration, **result, "seconds": time.perf_counter() - started,
                                     "backend": config.backend})
                progress.set_postfix(pre=f"{result['pre_return']:.1f}", post=f"{result['post_return']:.1f}")
                if on_iteration is not None:
                    on_iteration(iteration)
                done = iteration + 1
                if stop[0]:
                    self.save_state(done)
                    progress.close()
                    raise TrainingInterrupted(done, self.resume_path)
                if done % checkpoint_every == 0 and done < config.iterations:
                    self.save_state(done)
        progress.close()
        if not self.resumed_after_training:
            self.save_state(config.iterations)  # an interrupt during evaluation resumes here
        return compile_seconds(config.backend) - compile_before

    def finish(self, compile_seconds: float, final: Path) -> dict[str, Any]:
        """Write metrics and checkpoint, evaluate on the held-out tasks, plot; ``evaluation.json`` last."""
        if self.config.objective != "maml":
            from ssm_metarl import incontext
            return incontext.finish(self, compile_seconds, final)
        config, directory, metrics = self.config, self.directory, self.metrics
        train_seconds = float(sum(m["seconds"] for m in metrics))
        print(compile_line(config, compile_seconds, train_seconds))
        info = run_info(config.backend)
        write_metrics(directory, metrics, config, info, compile_seconds)
        save_checkpoint(directory / "checkpoint.safetensors", self.learner, config)
        report = run_evaluation(self.learner, config, self.distribution)
        report = {"run": info, "config": report_config(config), "return": RETURN_MEANING.get(config.task, ""),
                  **report, "train_seconds": train_seconds, "compile_seconds": compile_seconds}
        plots.learning_curve(metrics, report_config(config), directory / "learning_curve.png")
        plots.adaptation(report, report_config(config), config.backend, directory / "adaptation.png")
        write_json(directory / "evaluation.json", report)  # last: its presence marks the run complete
        self.resume_path.unlink(missing_ok=True)
        print_report(report, self.distribution, final)
        return report
