"""The training loop: one custom loop for every `tf.distribute` strategy.

`train(config, workdir)` trains the model named by `config.model.name` with its loss (both
from `chestxray_tf.models.registry`) on the images the config's protocol selects:

* the step is a `tf.function` around `strategy.run` (as TF Model Garden's trainers do), not
  `model.fit`, which fails under `MultiWorkerMirroredStrategy` in Keras 3
  (keras-team/keras#20585); the input comes from `distribute_datasets_from_function`;
* the per-example loss is averaged over the global batch and the model's L2 penalties are
  scaled by the number of replicas (`tf.nn.compute_average_loss`,
  `tf.nn.scale_regularization_loss`);
* checkpoints (`tf.train.CheckpointManager`: model, optimizer and its step counter) every
  `checkpoint_every_steps`; re-running the same command resumes at the saved step, in the
  same data order (each epoch's order is a function of the seed and the epoch, and the
  consumed batches of the interrupted epoch are skipped);
* a non-finite loss stops the run before anything is saved, so the last checkpoint on disk
  is the last good one; `TrainingDivergedError` says at which step;
* TensorBoard under `WORKDIR/logs`: the loss and its terms, the learning rate, images/s,
  the validation AUC and heat-map overlays of a few validation images every epoch.
"""

import json
import math
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from chestxray_tf.metrics import auc as auc_lib
from chestxray_tf.models import registry
from chestxray_tf.training import data, optimizers, strategy as strategy_lib, summaries

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "checkpoints/best"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def save_config(config, workdir):
    """Writes the resolved config as WORKDIR/config.json (a temporary file renamed into place:
    a kill never leaves half a file; any `tf.io.gfile` path, e.g. gs://)."""
    tf.io.gfile.makedirs(workdir)
    path = os.path.join(workdir, "config.json")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def latest_checkpoint(folder):
    """The checkpoint to resume from in `folder`, or None when it holds none.

    Raises:
        FileNotFoundError: `folder`/checkpoint names a checkpoint whose files are missing
            (TensorFlow would only log it, and the run would start again from step 0).
    """
    path = tf.train.latest_checkpoint(folder)
    state = os.path.join(folder, "checkpoint")
    if path is None and tf.io.gfile.exists(state):
        named = tf.train.get_checkpoint_state(folder).model_checkpoint_path
        raise FileNotFoundError(
            f"{state} names the checkpoint {named}, whose files are missing: restore them, "
            "point model_checkpoint_path in that file at a whole checkpoint of the folder, or "
            "remove the folder to start again from step 0")
    return path


def _checkpoint_dir(workdir, strategy, name):
    """Chief: WORKDIR/name. Other workers write to a private folder (the collective save
    needs every worker to write) that is never read."""
    if strategy.extended.should_checkpoint:
        return os.path.join(workdir, name)
    return os.path.join(workdir, "tmp_worker", f"{name}_{strategy.cluster_resolver.task_id}")


def build_state(config, strategy, steps_per_epoch):
    """Model, optimizer (slots built) and checkpoint, created in the strategy's scope; the
    initial weights are a function of `config.seed`."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = registry.build_model(config)
        optimizer = optimizers.make_optimizer(config.train, steps_per_epoch)
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


def _learning_rate(optimizer):
    # Through NumPy: float() of a Keras variable fails when it wraps a distributed variable
    # (MirroredStrategy, MultiWorkerMirroredStrategy).
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr(optimizer.iterations) if callable(lr) else lr))


class Trainer:
    """Holds the state of one run; `run()` trains to `config.train.num_steps`."""

    def __init__(self, config, workdir):
        self.config = config
        self.workdir = workdir
        self.strategy = strategy_lib.get_strategy(config.train.strategy, config.train.tpu_address)
        self.chief = self.strategy.extended.should_checkpoint
        self.global_batch = config.train.batch_size * self.strategy.num_replicas_in_sync
        self.split = data.select(config.data)
        if not self.split.train:
            raise ValueError(f"the config's selection ({config.data.protocol}) holds no "
                             f"training image in {config.data.manifest}")
        self.steps_per_epoch = (config.train.steps_per_epoch or
                                max(1, len(self.split.train) // self.global_batch))
        self.model, self.optimizer, self.checkpoint = build_state(config, self.strategy,
                                                                  self.steps_per_epoch)
        self.loss_fn = registry.make_loss(config)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, _checkpoint_dir(workdir, self.strategy, CHECKPOINT_DIR),
            max_to_keep=config.train.keep_checkpoints)
        if self.chief:
            save_config(config, workdir)
        self.writer = (tf.summary.create_file_writer(os.path.join(workdir, "logs", "train"))
                       if self.chief else tf.summary.create_noop_writer())
        self._train_step = self._make_train_step()
        self._predict = tf.function(lambda images: self.model(images, training=False))

    # ------------------------------------------------------------------ data

    def _dataset_fn(self, epoch, skip_batches):
        def dataset_fn(input_context):
            return data.dataset(
                self.config.data, self.split.train, training=True,
                grid=self.config.model.grid, batch_size=self.global_batch,
                input_context=input_context, seed=self.config.seed + epoch,
                skip_batches=skip_batches)
        return dataset_fn

    def _iterator(self, epoch, skip_batches):
        dataset = self.strategy.distribute_datasets_from_function(
            self._dataset_fn(epoch, skip_batches))
        return iter(dataset)

    # ------------------------------------------------------------------ step

    def _make_train_step(self):
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        global_batch = self.global_batch
        strategy = self.strategy

        def replica_step(batch):
            with tf.GradientTape() as tape:
                outputs = model(batch["image"], training=True)
                per_example, terms = loss_fn(batch, outputs)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                regularization = (tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                                  if model.losses else tf.constant(0.0))
                total = loss + regularization
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            logs = {"loss": total, "regularization": regularization}
            for name, value in terms.items():
                logs[name] = tf.nn.compute_average_loss(value, global_batch_size=global_batch)
            return logs

        if self.config.train.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_step(iterator):
            """-> (logs summed over replicas, records skipped before this step's examples)."""
            batch = next(iterator)
            skipped = strategy.reduce("SUM", batch.pop("skipped_records"), axis=0)
            batch.pop("image_id")  # strings stay out of the step: XLA takes no string arguments
            logs = strategy.run(replica_step, args=(batch,))
            return {k: strategy.reduce("SUM", v, axis=None) for k, v in logs.items()}, skipped

        return train_step

    # ------------------------------------------------------------------ validation

    def validate(self, step):
        """Validation AUC and heat-map overlays in TensorBoard; returns the mean AUC (or None)."""
        ids = self.split.val[:self.config.train.num_val_images]
        if not ids or not self.chief:
            return None
        dataset = data.dataset(self.config.data, ids, training=False,
                               batch_size=self.config.eval.batch_size)
        labels, probs, first = [], [], None
        for batch in dataset:
            outputs = self._predict(batch["image"])
            labels.append(batch["labels"].numpy())
            probs.append(outputs["image_probs"].numpy())
            if first is None:
                first = (batch, outputs)
        result = auc_lib.roc_auc_exact(np.concatenate(labels), np.concatenate(probs))
        with self.writer.as_default(step=step):
            if np.isfinite(result.mean):
                tf.summary.scalar("val/auc_mean", result.mean)
            n = self.config.train.num_summary_images
            batch, outputs = first
            maps = outputs[registry.map_key(self.config)][:n]
            top = tf.argmax(outputs["image_probs"][:n], axis=-1)
            tf.summary.image("val/heatmap_top_class",
                             summaries.heatmap_overlay(batch["image"][:n],
                                                       tf.gather(maps, top, axis=-1,
                                                                 batch_dims=1)),
                             max_outputs=n)
        return result.mean

    # ------------------------------------------------------------------ loop

    def run(self):
        """Trains until `config.train.num_steps`; returns the last logged values."""
        config = self.config.train
        # Every worker resumes from the chief's checkpoint: a worker's own folder may be missing
        # (a new machine) or behind (killed while saving), and workers at different steps would
        # mix different weights in one all-reduce.
        restored = latest_checkpoint(os.path.join(self.workdir, CHECKPOINT_DIR))
        if restored:
            try:
                self.checkpoint.restore(restored)
            except (tf.errors.OpError, ValueError, IndexError) as e:
                raise ValueError(f"checkpoint {restored} cannot be restored to resume the run: "
                                 f"{e}") from e
        step = int(self.optimizer.iterations.numpy())
        if restored:
            logging.info("resumed from %s at step %d", restored, step)
        best = self._read_best()
        bar = tqdm(total=config.num_steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=not (config.progress_bar and self.chief))
        sums, count, tick, last = {}, 0, time.time(), {}
        while step < config.num_steps:
            epoch, skip = divmod(step, self.steps_per_epoch)
            iterator = self._iterator(epoch, skip)
            end = min((epoch + 1) * self.steps_per_epoch, config.num_steps)
            skipped = 0
            while step < end:
                logs, skipped_now = self._train_step(iterator)
                logs = {k: float(v) for k, v in logs.items()}
                skipped += int(skipped_now)
                step += 1
                if not all(math.isfinite(v) for v in logs.values()):
                    bar.close()
                    raise TrainingDivergedError(
                        f"non-finite loss at step {step} ({logs}); training stopped, the last "
                        f"good checkpoint is {self.manager.latest_checkpoint}")
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.update(1)
                if step % config.log_every_steps == 0 or step == end:
                    elapsed = max(time.time() - tick, 1e-9)
                    last = {k: v / count for k, v in sums.items()}
                    last["images_per_second"] = count * self.global_batch / elapsed
                    last["learning_rate"] = _learning_rate(self.optimizer)
                    self._write_scalars(step, last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}",
                                    img_s=f"{last['images_per_second']:.1f}")
                    sums, count, tick = {}, 0, time.time()
                if step % config.checkpoint_every_steps == 0:
                    self.manager.save(checkpoint_number=step)
                if config.eval_every_steps and step % config.eval_every_steps == 0:
                    best = self._validate_and_keep_best(step, best)
            if self.config.data.skip_corrupt:
                self._report_skips(epoch, skip, step, skipped)
            if not config.eval_every_steps:
                best = self._validate_and_keep_best(step, best)
        bar.close()
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(
                f"-{step}"):
            self.manager.save(checkpoint_number=step)
        self.writer.flush()
        return last

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

    def _best_file(self):
        return os.path.join(self.workdir, BEST_DIR, "best.json")

    def _read_best(self):
        path = self._best_file()
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                return json.load(f)["val_auc_mean"]
        return -math.inf

    def _validate_and_keep_best(self, step, best):
        """Saves a checkpoint (every worker takes part), validates on the chief, and copies the
        checkpoint to WORKDIR/checkpoints/best when its validation AUC is the best so far."""
        path = self.manager.save(checkpoint_number=step)
        value = self.validate(step)
        if value is None or not math.isfinite(value) or value <= best:
            return best
        best_dir = os.path.join(self.workdir, BEST_DIR)
        if tf.io.gfile.exists(best_dir):
            tf.io.gfile.rmtree(best_dir)
        tf.io.gfile.makedirs(best_dir)
        for name in tf.io.gfile.glob(path + ".*"):
            tf.io.gfile.copy(name, os.path.join(best_dir, os.path.basename(name)))
        with tf.io.gfile.GFile(self._best_file(), "w") as f:
            json.dump({"step": step, "val_auc_mean": value,
                       "checkpoint": os.path.basename(path)}, f)
        return value


def train(config, workdir):
    """Trains `config` in `workdir` (resuming when it holds a checkpoint)."""
    return Trainer(config, workdir).run()
