"""A tiny Li et al. config for the training, evaluation and export tests."""

from chestxray_tf.training import defaults


def tiny_config(manifest, **train):
    """Tiny ResNet-v2 at 64 px, P = 4, global batch 4, a few steps; `train` overrides
    config.train fields."""
    config = defaults.base_config()
    config.name = "tiny"
    config.model.update(backbone="resnet_v2_tiny", weights=None, grid=4, head_width=16)
    config.data.update(manifest=str(manifest), image_size=64, shuffle_buffer=64,
                       annotated_fraction=0.8, unannotated_fraction=0.4, num_parallel_calls=2)
    config.train.update(strategy="default", batch_size=4, num_steps=10, lr_decay_epochs=0,
                        checkpoint_every_steps=5, log_every_steps=2, num_val_images=16,
                        num_summary_images=2, progress_bar=False)
    config.train.update(**train)
    config.eval.update(batch_size=8, gallery_images=2)
    return config
