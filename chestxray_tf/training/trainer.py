"""The stage runner: one custom loop for every task, stage and `tf.distribute` strategy.

`train(config, workdir)` builds the Task of `config.task` (`chestxray_tf.tasks`) with the
counts of its training selection, then runs the task's stages in order under
WORKDIR/stages/<i>_<name>/ (`chestxray_tf.workdir`):

* a finished stage (done.json) is skipped; a stage that starts fresh starts from the previous
  stage's final checkpoint; a stage with checkpoints of its own resumes at its step, in the
  same data order (each epoch's order is a function of the seed and the epoch, and the
  consumed batches of the interrupted epoch are skipped);
* a gradient stage trains only the layers its `trainable` globs select (`tasks.base.
  select_trainable`: the rest are frozen, bit-identical, batch norm in inference mode) with a
  fresh optimizer of its own settings; a compute stage runs its function with the weights
  fixed and checkpoints the model (variables it wrote included);
* the step is a `tf.function` around `strategy.run` (as TF Model Garden's trainers do), not
  `model.fit`, which fails under `MultiWorkerMirroredStrategy` in Keras 3
  (keras-team/keras#20585); the input comes from `distribute_datasets_from_function`; the
  per-example loss is averaged over the global batch and the model's L2 penalties are scaled
  by the number of replicas;
* the model is built under the dtype policy of `train.precision` (`training.precision`:
  float32, mixed_bfloat16, or mixed_float16 with loss scaling); variables and outputs stay
  float32;
* a non-finite loss stops the run before anything is saved (`TrainingDivergedError`);
* each validation (every epoch, or `eval_every_steps`) measures the validation AUC and, when
  the stage's schedule or `select_by` needs it, the validation loss; the plateau schedule
  (`training.schedules.Plateau`) adjusts the lr from it and may end the stage; the best
  checkpoint by `select_by` is copied to checkpoints/best;
* TensorBoard under the stage's logs/: the loss and its terms, lr, images/s, validation AUC
  and loss, heat-map overlays of a few validation images.
"""

import math
import os
import signal
import threading
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from chestxray_tf import fileio, run_identity, tasks as tasks_lib, workdir as workdir_lib
from chestxray_tf.data import manifest as manifest_lib, pipeline, selection
from chestxray_tf.metrics import auc as auc_lib
from chestxray_tf.models.layers import synchronize_batch_norm
from chestxray_tf.tasks.base import DataStats, StageContext, select_trainable
from chestxray_tf.training import (defaults, optimizers, precision as precision_lib, schedules,
                                   strategy as strategy_lib, summaries)

SELECT_BY = ("val_auc", "val_loss")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def save_config(config, workdir):
    """Writes the resolved config as WORKDIR/config.json atomically (any tf.io.gfile path)."""
    tf.io.gfile.makedirs(workdir)
    fileio.atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def training_stats(config, split):
    """`DataStats` of the training selection (counts from metadata.csv)."""
    table = manifest_lib.read_metadata(config.data.manifest)
    return DataStats.from_table(table[table["image_id"].isin(split.train)])


def _learning_rate(optimizer):
    # Through NumPy: float() of a Keras variable fails when it wraps a distributed variable.
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr(optimizer.iterations) if callable(lr) else lr))


def _checkpoint_dir(folder, strategy):
    """Chief: `folder`. Other workers write to a private folder (the collective save needs every
    worker to write) that is never read."""
    if strategy.extended.should_checkpoint:
        return folder
    return os.path.join(folder, "tmp_worker", str(strategy.cluster_resolver.task_id))


class Run:
    """One training run of a task: its strategy, split, task and model; `run()` runs the
    stages."""

    def __init__(self, config, workdir):
        self.config = defaults.resolve_paths(config)
        self.workdir = workdir
        self.precision = precision_lib.of_config(config)
        self.strategy = strategy_lib.get_strategy(config.train.strategy, config.train.tpu_address)
        self.chief = self.strategy.extended.should_checkpoint
        self.split = selection.select(config.data)
        if not self.split.train:
            raise ValueError(f"the config's selection ({config.data.protocol}) holds no "
                             f"training image in {config.data.manifest}")
        self.task = tasks_lib.get_task(config.task)(config, training_stats(config, self.split))
        self.stages = self.task.stages()
        self._model = None
        stride = self.task.input_stride
        if stride and config.data.image_size % stride:
            logging.warning("data.image_size=%d is not a multiple of the backbone's stride %d: "
                            "the last %d pixel rows and columns do not reach the feature map; "
                            "use %d or %d", config.data.image_size, stride,
                            config.data.image_size % stride,
                            config.data.image_size // stride * stride,
                            (config.data.image_size // stride + 1) * stride)

    @property
    def model(self):
        """The task's model, built in the strategy's scope on first use (a run whose stages
        are all done builds none), under the run's dtype policy (`training.precision`); the
        initial weights are a function of `config.seed`."""
        if self._model is None:
            keras.utils.set_random_seed(self.config.seed)
            with self.strategy.scope(), precision_lib.policy_scope(self.precision):
                self._model = self.task.build_model()
                if self.config.train.get("sync_batch_norm", False):
                    synchronize_batch_norm(self._model)
        return self._model

    def stage_dir(self, index):
        return workdir_lib.stage_dir(self.workdir, index, self.stages[index].name)

    def dataset(self, ids, *, training, batch_size, **kwargs):
        return selection.dataset(self.config.data, ids, training=training,
                                 batch_size=batch_size, **self.task.targets(), **kwargs)

    def run(self):
        """Runs every stage not yet done; returns the last logged values of the last gradient
        stage run (empty when there was nothing to do). The chief holds the workdir's lock
        (`workdir.lock`) throughout, and a resume must be the same run (`run_identity`)."""
        if not self.chief:
            return self._run_stages()
        with workdir_lib.lock(self.workdir):
            run_identity.check(self.workdir, self.config, self.split)
            save_config(self.config, self.workdir)
            logging.info("%s", self.plan())
            last = self._run_stages()
            logging.info("%s", self.outcome())
            return last

    def plan(self):
        """What the run will do, in a few lines: task, strategy and devices, images per split,
        stages and their steps, workdir."""
        data = self.config.data
        lines = [f"train {self.config.task} ({self.config.name}) in {self.workdir}",
                 f"  strategy: {strategy_lib.describe(self.strategy)}, precision "
                 f"{self.precision}",
                 f"  images ({data.protocol} protocol of {data.manifest}): "
                 f"{len(self.split.train)} train, {len(self.split.val)} val, "
                 f"{len(self.split.test)} test"]
        for index, stage in enumerate(self.stages):
            if stage.kind == "gradient":
                batch = stage.train.batch_size * self.strategy.num_replicas_in_sync
                xla = resolve_jit_compile(stage.train.jit_compile, self.task)
                what = (f"{stage.train.num_steps} steps of {batch} images "
                        f"(~{stage.train.num_steps * batch / len(self.split.train):.1f} epochs), "
                        f"{stage.train.steps_per_loop} per call, XLA {'on' if xla else 'off'}, "
                        f"training {', '.join(stage.trainable)}")
            else:
                what = "computed with the weights fixed"
            lines.append(f"  stage {index} {stage.name} ({stage.kind}): {what}")
        return "\n".join(lines)

    def outcome(self):
        """Where the run's results are: checkpoints, logs, the best checkpoint."""
        last = self.stage_dir(len(self.stages) - 1)
        best = os.path.join(last, workdir_lib.CHECKPOINTS, workdir_lib.BEST)
        lines = [f"trained: {self.workdir}",
                 f"  checkpoints: {os.path.join(last, workdir_lib.CHECKPOINTS)} (last stage)",
                 f"  logs: tensorboard --logdir {os.path.join(self.workdir, 'stages')}"]
        if tf.io.gfile.exists(os.path.join(best, workdir_lib.BEST_FILE)):
            chosen = workdir_lib.read_json(os.path.join(best, workdir_lib.BEST_FILE))
            lines.append(f"  best: {best} (step {chosen['step']}, {chosen['select_by']} "
                         f"{chosen.get(chosen['select_by'], float('nan')):.4f})")
        lines.append(f"  next: python -m chestxray_tf.cli.evaluate --workdir {self.workdir}")
        return "\n".join(lines)

    def _run_stages(self):
        last, previous = {}, None
        for index, stage in enumerate(self.stages):
            folder = self.stage_dir(index)
            done = os.path.join(folder, workdir_lib.DONE_FILE)
            if tf.io.gfile.exists(done) and self._finished(index, workdir_lib.read_json(done)):
                logging.info("stage %d %s: done, skipped", index, stage.name)
                previous = folder
                continue
            own = workdir_lib.latest_checkpoint(os.path.join(folder, workdir_lib.CHECKPOINTS))
            if own is None and previous is not None:
                self._restore_weights(previous)
            logging.info("stage %d %s (%s) in %s", index, stage.name, stage.kind, folder)
            if stage.kind == "gradient":
                trainer = StageTrainer(self, stage, folder)
                last = trainer.run()
                summary = trainer.summary
            else:
                summary = self._compute(stage, folder)
            if self.chief:
                tf.io.gfile.makedirs(folder)
                fileio.atomic_write_json(done, {"stage": stage.name, "kind": stage.kind,
                                                **summary})
            previous = folder
        return last

    def _finished(self, index, done):
        """Whether a stage marked done stays done: a gradient stage whose `num_steps` was
        raised since (and that its plateau rule did not end) trains on, when no later stage
        has started from it."""
        stage = self.stages[index]
        if stage.kind != "gradient" or done.get("stopped_by_plateau"):
            return True
        if done.get("steps", 0) >= stage.train.num_steps:
            if done.get("steps", 0) > stage.train.num_steps:
                logging.warning("stage %d %s trained %d steps, more than num_steps=%d now: "
                                "nothing to do", index, stage.name, done["steps"],
                                stage.train.num_steps)
            return True
        for later in range(index + 1, len(self.stages)):
            folder = self.stage_dir(later)
            if tf.io.gfile.exists(folder):
                raise ValueError(
                    f"stage {stage.name} trained {done['steps']} of the {stage.train.num_steps} "
                    f"steps asked now, but {folder} already started from it: train on in a "
                    "new workdir, or remove the later stages' folders")
        logging.info("stage %d %s: num_steps raised from %d to %d, training on", index,
                     stage.name, done["steps"], stage.train.num_steps)
        return False

    def _restore_weights(self, folder):
        path = workdir_lib.latest_checkpoint(os.path.join(folder, workdir_lib.CHECKPOINTS))
        if path is None:
            raise FileNotFoundError(f"{folder} is marked done but holds no checkpoint: the "
                                    "next stage cannot start from it; remove its done.json "
                                    "to run it again")
        status = tf.train.Checkpoint(model=self.model).restore(path)
        status.expect_partial()
        logging.info("starting from %s", path)

    def _compute(self, stage, folder):
        context = StageContext(task=self.task, model=self.model, config=self.config,
                               split=self.split, stage_dir=folder,
                               dataset=lambda ids, **kw: self.dataset(
                                   ids, training=False,
                                   batch_size=kw.pop("batch_size", self.config.eval.batch_size),
                                   **kw))
        summary = dict(stage.compute(context) or {})
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model),
            _checkpoint_dir(os.path.join(folder, workdir_lib.CHECKPOINTS), self.strategy),
            max_to_keep=1)
        summary["checkpoint"] = manager.save(checkpoint_number=0)
        return summary


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training; a checkpoint of the last step was saved."""

    def __init__(self, signum, checkpoint):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: checkpoint {checkpoint} "
                         "saved; the same command resumes from it")
        self.signum = signum
        self.checkpoint = checkpoint


def check_train_config(train, stage):
    """Refuses out-of-range train settings before any work (a zero cadence would divide by
    zero after the first step)."""
    positive = ("batch_size", "checkpoint_every_steps", "log_every_steps", "keep_checkpoints",
                "steps_per_loop")
    bad = [f"{k}={train[k]!r}" for k in positive if not (isinstance(train[k], int) and train[k] > 0)]
    bad += [f"{k}={train[k]!r}" for k in ("num_steps", "eval_every_steps", "steps_per_epoch",
                                          "num_val_images")
            if not (isinstance(train[k], int) and train[k] >= 0)]
    if not (train.learning_rate > 0):
        bad.append(f"learning_rate={train.learning_rate!r}")
    if bad:
        raise ValueError(f"stage {stage}: train settings out of range: {', '.join(bad)} "
                         "(cadences and sizes must be positive integers, counts >= 0)")


class _Signals:
    """While active, SIGINT and SIGTERM set `received` instead of killing the process (main
    thread only; elsewhere the default handlers stay)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def resolve_jit_compile(setting, task):
    """`train.jit_compile`: True / False as set; None: the task's `jit_compile_on_gpu` when a
    GPU is visible, else off (XLA:CPU is slower than oneDNN here: docs/benchmarks.md)."""
    if setting is not None:
        return bool(setting)
    return bool(task.jit_compile_on_gpu and tf.config.list_logical_devices("GPU"))


def make_train_step(model, optimizer, loss_fn, strategy, global_batch, *, jit_compile=False,
                    hooks=(), normalization=None):
    """The training step: `train_step(iterator)` -> (logs summed over replicas, records
    skipped before this step's examples), a `tf.function` around `strategy.run`.

    The per-example loss of `loss_fn(batch, outputs)` is averaged over the global batch and
    the model's L2 penalties are scaled by the number of replicas; only
    `model.trainable_variables` (as they are now) are updated; `hooks` run first. With
    `normalization`, the batch's images are grey pixels (`pipeline.make_dataset(ship_grey=
    True)`) normalised on the device, inside the (XLA-compiled) replica step.
    """
    step = _step_fn(model, optimizer, loss_fn, strategy, global_batch, jit_compile=jit_compile,
                    hooks=hooks, normalization=normalization)
    return tf.function(step)


def make_train_loop(model, optimizer, loss_fn, strategy, global_batch, *, jit_compile=False,
                    hooks=(), normalization=None):
    """Several training steps in one call (as TF Model Garden's Orbit loops do):
    `train_loop(iterator, num_steps)` -> (logs summed over the steps run, records skipped,
    steps run, every loss finite); `num_steps` is a scalar tensor, so any length reuses one
    `tf.function` trace. The loop stops after the first step with a non-finite log value;
    nothing is read back to the host in between. Each step is `make_train_step`'s, traced
    once: the sums start from zeros shaped like its outputs, so the step appears only in the
    loop's body (one copy of the model's graph to optimise).
    """
    step = tf.function(_step_fn(model, optimizer, loss_fn, strategy, global_batch,
                                jit_compile=jit_compile, hooks=hooks,
                                normalization=normalization))
    zeros = []  # the sums' initial values, made on the first call

    @tf.function
    def loop(iterator, num_steps, sums, skipped):
        def body(done, sums, skipped, finite):
            logs, skipped_now = step(iterator)
            return (done + 1, {k: sums[k] + v for k, v in logs.items()},
                    skipped + skipped_now, finite & _all_finite(logs))

        return tf.while_loop(
            lambda done, sums, skipped, finite: (done < num_steps) & finite, body,
            (tf.constant(0, tf.int64), sums, skipped, tf.constant(True)),
            parallel_iterations=1)  # a step reads the weights the previous one wrote

    def train_loop(iterator, num_steps):
        if not zeros:
            logs, skipped = step.get_concrete_function(iterator).structured_outputs
            zeros.append((tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), logs),
                          tf.zeros(skipped.shape, skipped.dtype)))
        done, logs, skipped, finite = loop(iterator, num_steps, *zeros[0])
        return logs, skipped, done, finite

    return train_loop


def _all_finite(logs):
    return tf.reduce_all([tf.math.is_finite(v) for v in logs.values()])


def _step_fn(model, optimizer, loss_fn, strategy, global_batch, *, jit_compile, hooks,
             normalization):
    """One training step (not yet a `tf.function`): see `make_train_step`."""
    variables = model.trainable_variables

    def replica_step(batch):
        images = batch["image"]
        if normalization is not None:
            images = pipeline.normalize(images, normalization)
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            per_example, terms = loss_fn(batch, outputs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            regularization = (tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                              if model.losses else tf.constant(0.0))
            total = loss + regularization
            scaled = precision_lib.scale_loss(optimizer, total)
        precision_lib.apply_gradients(optimizer, tape.gradient(scaled, variables), variables)
        logs = {"loss": total, "regularization": regularization}
        for name, value in terms.items():
            logs[name] = tf.nn.compute_average_loss(value, global_batch_size=global_batch)
        return logs

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    def train_step(iterator):
        for hook in hooks:
            hook(model, optimizer.iterations)
        batch = next(iterator)
        skipped = strategy.reduce("SUM", batch.pop("skipped_records"), axis=0)
        batch.pop("image_id", None)  # strings stay out of the step: XLA takes no string arguments
        logs = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce("SUM", v, axis=None) for k, v in logs.items()}, skipped

    return train_step


class StageTrainer:
    """Trains one gradient stage of a `Run` to its `num_steps` (see the module docstring)."""

    def __init__(self, run, stage, folder):
        self.run_ = run
        self.stage = stage
        self.config = stage.train
        self.folder = folder
        self.model = run.model
        self.strategy = run.strategy
        self.chief = run.chief
        self.global_batch = self.config.batch_size * self.strategy.num_replicas_in_sync
        self.steps_per_epoch = (self.config.steps_per_epoch or
                                max(1, len(run.split.train) // self.global_batch))
        check_train_config(self.config, stage.name)
        if self.config.select_by not in SELECT_BY:
            raise ValueError(f"train.select_by must be one of {SELECT_BY}, got "
                             f"{self.config.select_by!r}")
        self.plateau = (schedules.Plateau.from_config(self.config)
                        if self.config.lr_schedule == "plateau" else None)
        self.trainable = select_trainable(self.model, stage.trainable)
        with self.strategy.scope():
            self.optimizer = precision_lib.wrap_optimizer(
                optimizers.make_optimizer(self.config, self.steps_per_epoch), run.precision)
            self.optimizer.build(self.model.trainable_variables)
        # Plateau and best-so-far state, checkpointed with the weights (exact resume); host
        # values, each worker its own.
        self.state = {"best": tf.Variable(-math.inf, dtype=tf.float64, trainable=False),
                      "plateau_best": tf.Variable(math.inf, dtype=tf.float64, trainable=False),
                      "plateau_wait": tf.Variable(0, dtype=tf.int64, trainable=False)}
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              **self.state)
        self.checkpoints = os.path.join(folder, workdir_lib.CHECKPOINTS)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, _checkpoint_dir(self.checkpoints, self.strategy),
            max_to_keep=self.config.keep_checkpoints)
        self.writer = (tf.summary.create_file_writer(os.path.join(folder, "logs"))
                       if self.chief else tf.summary.create_noop_writer())
        self._train_loop = self._make_train_loop()
        self._predict = tf.function(lambda images: self.model(images, training=False))
        self._val_loss = tf.function(self._val_loss_batch)
        self.summary = {}

    # ------------------------------------------------------------------ data

    def _dataset_fn(self, epoch, skip_batches):
        """The training input of `epoch` (from batch `skip_batches`) for one input context."""
        def dataset_fn(input_context):
            dataset = self.run_.dataset(self.run_.split.train, training=True,
                                        batch_size=self.global_batch, input_context=input_context,
                                        seed=self.run_.config.seed + epoch,
                                        skip_batches=skip_batches,
                                        ship_grey=self.run_.config.data.ship_grey)
            # Strings stay on the host: the rest is prefetched to the replicas' devices.
            return dataset.map(lambda batch: {k: v for k, v in batch.items() if k != "image_id"})
        return dataset_fn

    def _iterator(self, epoch, skip_batches):
        return iter(self.strategy.distribute_datasets_from_function(
            self._dataset_fn(epoch, skip_batches)))

    # ------------------------------------------------------------------ step

    def _make_train_loop(self):
        data = self.run_.config.data
        return make_train_loop(self.model, self.optimizer, self.stage.loss, self.strategy,
                               self.global_batch,
                               jit_compile=resolve_jit_compile(self.config.jit_compile,
                                                               self.run_.task),
                               hooks=self.stage.hooks,
                               normalization=data.normalization if data.ship_grey else None)

    # ------------------------------------------------------------------ validation

    def _val_loss_batch(self, batch):
        outputs = self.model(batch["image"], training=False)
        per_example, _ = self.stage.loss(batch, outputs)
        return outputs, tf.reduce_sum(per_example)

    @property
    def _needs_val_loss(self):
        return self.plateau is not None or self.config.select_by == "val_loss"

    def validate(self, step):
        """Validation AUC (and loss when needed) on the first `num_val_images` validation
        images; heat-map overlays in TensorBoard. Every worker computes it when it drives the
        lr (the plateau schedule), only the chief otherwise. Returns {"val_auc", "val_loss"}
        (None where not measured)."""
        ids = self.run_.split.val[:self.config.num_val_images]
        if not ids or not (self.chief or self.plateau is not None):
            return {"val_auc": None, "val_loss": None}
        task = self.run_.task
        labels, probs, first, loss_sum, count = [], [], None, 0.0, 0
        for batch in self.run_.dataset(ids, training=False,
                                       batch_size=self.run_.config.eval.batch_size):
            if self._needs_val_loss:
                outputs, batch_loss = self._val_loss(batch)
                loss_sum += float(batch_loss)
            else:
                outputs = self._predict(batch["image"])
            count += int(batch["labels"].shape[0])
            labels.append(batch["labels"].numpy())
            probs.append(task.scores(outputs).numpy())
            if first is None:
                first = (batch, outputs)
        auc = auc_lib.roc_auc_exact(np.concatenate(labels), np.concatenate(probs)).mean
        result = {"val_auc": float(auc) if np.isfinite(auc) else None,
                  "val_loss": loss_sum / count if self._needs_val_loss else None}
        with self.writer.as_default(step=step):
            for name, value in (("val/auc_mean", result["val_auc"]),
                                ("val/loss", result["val_loss"])):
                if value is not None:
                    tf.summary.scalar(name, value)
            n = self.config.num_summary_images
            batch, outputs = first
            maps = task.maps(outputs)[:n]
            top = tf.argmax(task.scores(outputs)[:n], axis=-1)
            tf.summary.image("val/heatmap_top_class",
                             summaries.heatmap_overlay(batch["image"][:n],
                                                       tf.gather(maps, top, axis=-1,
                                                                 batch_dims=1)),
                             max_outputs=n)
        return result

    # ------------------------------------------------------------------ loop

    def _restore(self):
        """Resumes from the stage's own checkpoint (the chief's: every worker resumes from it,
        as workers at different steps would mix different weights in one all-reduce)."""
        restored = workdir_lib.latest_checkpoint(self.checkpoints)
        if restored:
            try:
                self.checkpoint.restore(restored)
            except (tf.errors.OpError, ValueError, IndexError) as e:
                raise ValueError(f"checkpoint {restored} cannot be restored to resume the run: "
                                 f"{e}") from e
            logging.info("resumed from %s at step %d", restored,
                         int(self.optimizer.iterations.numpy()))
        return int(self.optimizer.iterations.numpy())

    def run(self):
        """Trains until the stage's `num_steps` (or its plateau stop rule); returns the last
        logged values."""
        config = self.config
        step = self._restore()
        if step >= config.num_steps and step:
            logging.warning("stage %s: its checkpoint is at step %d, num_steps=%d: nothing to "
                            "train (raise --config.train.num_steps to train on)",
                            self.stage.name, step, config.num_steps)
        bar = tqdm(total=config.num_steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=not (config.progress_bar and self.chief))
        last, stopped = {}, False
        with _Signals() as signals:
            while step < config.num_steps and not stopped:
                step, last, stopped = self._epoch(step, last, stopped, bar, signals)
        bar.close()
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(
                f"-{step}"):
            self.manager.save(checkpoint_number=step)
        self.writer.flush()
        self.summary = {"steps": step, "stopped_by_plateau": bool(stopped),
                        "trainable": self.trainable}
        return last

    def _loop_length(self, step, end):
        """Steps of the next `train_loop` call from `step`: at most `steps_per_loop`, and
        ending at the next log, validation or checkpoint step or at `end` (the epoch's or the
        stage's), so that every host-side event falls on a loop boundary."""
        config = self.config
        events = [end, step + config.steps_per_loop]
        for every in (config.log_every_steps, config.eval_every_steps,
                      config.checkpoint_every_steps):
            if every:
                events.append((step // every + 1) * every)
        return min(events) - step

    def _epoch(self, step, last, stopped, bar, signals):
        """Trains from `step` to the end of its epoch (or the stage), `steps_per_loop` steps
        per call; returns (step, last logs, stopped by the plateau rule). The logs are summed
        on the device and read at each log step; NaN checks, validation and checkpoints fall
        on loop boundaries."""
        config = self.config
        sums, count, tick = {}, 0, time.time()
        epoch, skip = divmod(step, self.steps_per_epoch)
        iterator = self._iterator(epoch, skip)
        end = min((epoch + 1) * self.steps_per_epoch, config.num_steps)
        skipped = tf.constant(0, tf.int64)
        while step < end and not stopped:
            if signals.received:
                path = self.manager.save(checkpoint_number=step)
                self.writer.flush()
                bar.close()
                raise Interrupted(signals.received, path)
            length = self._loop_length(step, end)
            logs, skipped_now, done, finite = self._train_loop(
                iterator, tf.constant(length, tf.int64))
            if not bool(finite):
                bar.close()
                raise TrainingDivergedError(
                    f"non-finite loss at step {step + int(done)} of stage {self.stage.name} "
                    f"({ {k: float(v) for k, v in logs.items()} } summed over steps {step + 1}-"
                    f"{step + int(done)}); training stopped, the last good checkpoint is "
                    f"{self.manager.latest_checkpoint}")
            step += length
            sums = logs if not sums else {k: sums[k] + v for k, v in logs.items()}
            skipped += skipped_now
            count += length
            bar.update(length)
            if step % config.log_every_steps == 0 or step == end:
                elapsed = max(time.time() - tick, 1e-9)
                last = {k: float(v) / count for k, v in sums.items()}
                last["images_per_second"] = count * self.global_batch / elapsed
                last["learning_rate"] = _learning_rate(self.optimizer)
                self._write_scalars(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}",
                                img_s=f"{last['images_per_second']:.1f}")
                if bar.disable and self.chief:
                    logging.info("stage %s step %d/%d: loss %.4f, lr %.3g, %.1f images/s",
                                 self.stage.name, step, config.num_steps, last["loss"],
                                 last["learning_rate"], last["images_per_second"])
                sums, count, tick = {}, 0, time.time()
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                stopped = self._validate_and_save(step)
            elif step % config.checkpoint_every_steps == 0:
                self.manager.save(checkpoint_number=step)
        if self.run_.config.data.skip_corrupt:
            self._report_skips(epoch, skip, step, int(skipped))
        if not config.eval_every_steps and not stopped:
            stopped = self._validate_and_save(step)
        return step, last, stopped

    def _report_skips(self, epoch, resumed_at, step, skipped):
        """End of an epoch with `data.skip_corrupt`: the records its input skipped (all
        workers), in the log and in TensorBoard (train/skipped_records)."""
        since = f" (since it resumed at batch {resumed_at})" if resumed_at else ""
        log = logging.warning if skipped else logging.info
        log("epoch %d%s: skipped %d corrupt records (data.skip_corrupt=True; the WARNINGs of "
            "the input pipeline name them)", epoch, since, skipped)
        self._write_scalars(step, {"skipped_records": skipped})

    def _write_scalars(self, step, values):
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"train/{name}", value)

    def _update_plateau(self, val_loss):
        """Applies the plateau rule to the optimizer's lr; True when the stage must stop."""
        state = schedules.PlateauState(
            learning_rate=_learning_rate(self.optimizer),
            best=float(self.state["plateau_best"].numpy()),
            wait=int(self.state["plateau_wait"].numpy()))
        new = self.plateau.update(state, val_loss)
        self.state["plateau_best"].assign(new.best)
        self.state["plateau_wait"].assign(new.wait)
        if new.learning_rate != state.learning_rate:
            self.optimizer.learning_rate.assign(new.learning_rate)
            logging.info("plateau: validation loss %.6g did not improve on %.6g; lr %.3g -> "
                         "%.3g", val_loss, new.best, state.learning_rate, new.learning_rate)
        if new.stop:
            logging.info("plateau at lr %.3g <= plateau_min_lr: stage %s stops",
                         new.learning_rate, self.stage.name)
        return new.stop

    def _validate_and_save(self, step):
        """Validates, applies the plateau rule, saves a checkpoint (every worker takes part),
        and copies it to checkpoints/best when it is the best by `select_by`. True when the
        plateau rule ends the stage."""
        result = self.validate(step)
        stop = False
        if self.plateau is not None and result["val_loss"] is not None:
            stop = self._update_plateau(result["val_loss"])
        path = self.manager.save(checkpoint_number=step)
        value = result[self.config.select_by]
        if value is None or not self.chief:
            return stop
        score = -value if self.config.select_by == "val_loss" else value
        if score > float(self.state["best"].numpy()):
            self.state["best"].assign(score)
            self._keep_best(path, step, result)
        return stop

    def _keep_best(self, path, step, result):
        """Copies checkpoint `path` to checkpoints/best without a moment with no whole best:
        its files (named by step) are copied in first, then best.json is switched to them
        atomically, then the previous best's files are removed."""
        best_dir = os.path.join(self.checkpoints, workdir_lib.BEST)
        tf.io.gfile.makedirs(best_dir)
        name = os.path.basename(path)
        result = {k: v for k, v in result.items() if v is not None}
        for source in tf.io.gfile.glob(path + ".*"):
            fileio.atomic_copy(source, os.path.join(best_dir, os.path.basename(source)))
        fileio.atomic_write_json(os.path.join(best_dir, workdir_lib.BEST_FILE),
                                 {"step": step, "select_by": self.config.select_by, **result,
                                  "checkpoint": name})
        for old in tf.io.gfile.listdir(best_dir):
            if old != workdir_lib.BEST_FILE and not old.startswith(name + "."):
                tf.io.gfile.remove(os.path.join(best_dir, old))

def stage_trainer(config, workdir, index=0):
    """The `StageTrainer` of stage `index` of the run of `config` in `workdir`, to drive one
    stage step by step (tests, notebooks); `train` runs them all."""
    run = Run(config, workdir)
    if run.chief:
        save_config(config, workdir)
    return StageTrainer(run, run.stages[index], run.stage_dir(index))


def train(config, workdir):
    """Trains `config` in `workdir`: every stage of its task not yet done (resuming a stage
    that was interrupted). Returns the last logged values."""
    return Run(config, workdir).run()
