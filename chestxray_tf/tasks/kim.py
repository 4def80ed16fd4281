"""Kim, Jung, Lee, *Weakly Supervised Thoracic Disease Localization via Disease Masks* (paper
002; brief `briefs/kim.md`, issue #17) as ONE Task trained in six stages of one model
(`models.kim.build_kim`):

  s0      gradient  the base classifier "kim_base" on the original images: ResNet-50 -> CAM
                    head -> sigmoid, weighted BCE of Eq. 10 (Table 1 "ResNet-50")
  anchor  compute   A = the mean of 2,000 random "No Finding" training images (Sec. 3.2),
                    written to the model ("anchor" layer) and to anchor.npy / anchor.png
  s1      gradient  the aligner "kim_aligner" (ResNet-18 -> 5 parameters of Eq. 6), loss
                    L_e + L_p of Eq. 9 on B(G(W_A(I))) with s0's frozen stage features; SGD
  s2      gradient  the classifier "kim_classifier" on the aligned images W_A(I) (aligner
                    frozen in-graph), from ImageNet, Eq. 10 ("ResNet-50+Alignment"); its hook
                    switches the model's main outputs to the aligned classifier
  s3      compute   the disease masks psi of Eq. 3 from s2's CAMs of the training split
                    (`model.masks`: "disease"; "pseudo": the pseudo-disease masks of Table 2;
                    "none": psi = 0, the 10-epoch control), set in the classifier's CAM head;
                    masks.npy, masks.json (N_c, fallbacks), masks.png (Fig. 3)
  s4      gradient  s2 retrained with f' = psi f + f (Eqs. 4-5) ("ResNet-50+Alignment+DM")

Evaluation (brief §2.5-2.6, §3.5): the main map "cam" is the CAM of the stage's classifier in
the ORIGINAL frame (warped back by A^-1 in-graph, so export and predict serve it too),
min-max normalised, binarised at 180/255 (`eval.region_threshold`; 60/255 is the other
setting of Wang et al. [18]), a box per 8-connected region, best IoU > T at 0.3 / 0.5 / 0.7.
"""

import json
import os

from absl import logging
import ml_collections
import numpy as np

from chestxray_tf import fileio
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES, NUM_CLASSES
from chestxray_tf.losses.kim import LOSS_FORMS, WBCE_SCOPES, batch_weighted_bce, \
    make_alignment_loss
from chestxray_tf.models import kim as kim_model, kim_anchor, kim_masks, resnet
from chestxray_tf.tasks import base, kim_figures

# resnet_v1 configurations a config names.
BACKBONES = {"resnet50": resnet.RESNET50, "resnet18": resnet.RESNET18,
             "resnet34": resnet.RESNET34, "resnet50_tiny": resnet.RESNET50_TINY,
             "resnet18_tiny": resnet.RESNET18_TINY}
MASK_KINDS = ("disease", "pseudo", "none")
# The published row of each (stage, masks): Table 1-4's methods (`published/kim.json`).
PAPER_ROWS = {"s0": "ResNet-50", "anchor": "ResNet-50", "s1": "ResNet-50",
              "s2": "ResNet-50+Alignment"}
MASK_ROWS = {"disease": "paper", "pseudo": "Base model+PDM", "none": "ResNet-50+Alignment"}
PDM_REGIONS = os.path.join(os.path.dirname(kim_model.__file__), "kim_pdm_regions.json")
# Wang et al. [18]'s two binarisation thresholds on the [0, 255]-normalised map.
WANG_THRESHOLDS = {180: 180 / 255, 60: 60 / 255}
# Five epochs of the official training split (86,524 train_val images minus 10% validation
# patients, about 77,870 images): 12,170 steps at batch 32 (s0, s2, s4), 24,340 at 16 (s1).
CLASSIFIER_STEPS = 12_170
ALIGNER_STEPS = 24_340


def _choice(field, value, choices):
    if value not in choices:
        raise ValueError(f"config.{field} must be one of {choices}, got {value!r}")


class Kim(base.Task):
    """Kim et al. (see the module docstring); the map is "cam", the scores "image_probs"."""
    name = "kim"
    map_key = "cam"
    uses_boxes = False  # labels, the anchor and disease masks from CAMs; boxes only in evaluation
    jit_compile_on_gpu = True  # every stage compiles (docs/benchmarks.md, "XLA")

    def __init__(self, config, stats=None):
        super().__init__(config, stats)
        self._alignment = None  # s1's loss, made with the model (`build_model`)

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        m = config.model = ml_collections.ConfigDict()
        m.backbone = "resnet50"              # the classifiers (S0, S2, S4)
        m.aligner_backbone = "resnet18"      # the alignment network (S1)
        m.strides = ml_collections.config_dict.placeholder(tuple)  # None: the backbone's
        m.weights = ml_collections.config_dict.placeholder(str)
        m.weights = "imagenet"               # both ResNet-50s: None / "imagenet" / a file
        m.aligner_weights = ml_collections.config_dict.placeholder(str)  # a local file or None
        m.num_classes = NUM_CLASSES          # K, the 14 findings of ChestX-ray14
        m.bounded = False                    # aligner: unbounded parameters (erratum 4)
        m.hidden = 0                         # aligner head: GAP -> Dense(5); 256: erratum 13
        m.fill_value = -1.0                  # outside the original image (black in [-1, 1])
        m.attention = "class"                # psi_c per class | "union" (erratum 6)
        m.cam_size = 128                     # R of the maps in the original frame
        m.num_anchor_images = kim_anchor.NUM_ANCHOR_IMAGES # "No Finding" images averaged into the anchor
        m.masks = "disease"                  # disease (Eq. 3) | pseudo (Table 2) | none
        m.mask_confidence = kim_masks.CONFIDENCE   # P_c >= 0.8
        m.mask_min_images = kim_masks.MIN_IMAGES   # fallback: the 10 most confident
        m.mask_renormalise = True            # T: M / max M before >= 0.5 (erratum 8)
        m.mask_binary = False                # T: soft psi = M~ 1[M~ >= 0.5]
        m.pdm_regions = PDM_REGIONS          # lung / heart polygons (JSON) for "pseudo"
        config.loss = ml_collections.ConfigDict()
        config.loss.wbce_scope = "batch"     # |P|, |N| over the batch's label matrix
        config.loss.alignment_form = "mse"   # mse (brief §2.3) | literal (Eqs. 7-8 printed)
        config.stages = ml_collections.ConfigDict()
        classifier = {"optimizer": "adam", "learning_rate": 1e-4, "batch_size": 32,
                      "num_steps": CLASSIFIER_STEPS, "lr_decay_epochs": 0}
        config.stages.s0 = ml_collections.ConfigDict(classifier) # S0: the base classifier
        config.stages.s1 = ml_collections.ConfigDict(  # S1: the alignment network
            {"optimizer": "sgd", "learning_rate": 1e-3, "momentum": 0.0, "batch_size": 16,
             "num_steps": ALIGNER_STEPS, "lr_decay_epochs": 0, "select_by": "val_loss"})
        config.stages.s2 = ml_collections.ConfigDict(classifier) # S2: the classifier on aligned images
        config.stages.s4 = ml_collections.ConfigDict(classifier) # S4: the classifier with the disease masks
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(backbone="resnet50_tiny", aligner_backbone="resnet18_tiny",
                            strides=(1, 2, 2, 1), weights=None, aligner_weights=None,
                            cam_size=config.data.image_size, mask_min_images=2)
        for stage in config.stages.values():
            stage.batch_size = min(stage.batch_size, config.train.batch_size)

    # -------------------------------------------------------------- model
    def _backbone(self, field):
        """The resnet_v1 configuration of `config.model.<field>` (`model.strides` applies to
        the classifiers' `backbone` only)."""
        name = self.config.model[field]
        _choice(f"model.{field}", name, tuple(BACKBONES))
        structure = dict(BACKBONES[name])
        if self.config.model.strides is not None and field == "backbone":
            structure["strides"] = tuple(self.config.model.strides)
        return structure

    def build_model(self, pretrained=True):
        m = self.config.model
        _choice("model.masks", m.masks, MASK_KINDS)
        _choice("loss.wbce_scope", self.config.loss.wbce_scope, WBCE_SCOPES)
        _choice("loss.alignment_form", self.config.loss.alignment_form, LOSS_FORMS)
        model = kim_model.build_kim(
            self.config.data.image_size, backbone=self._backbone("backbone"),
            aligner_backbone=self._backbone("aligner_backbone"), num_classes=m.num_classes,
            weights=m.weights if pretrained else None,
            aligner_weights=m.aligner_weights if pretrained else None, bounded=m.bounded,
            hidden=m.hidden, fill_value=m.fill_value, attention=m.attention,
            cam_size=m.cam_size)
        self._alignment = self.make_alignment_loss(model)
        return model

    # -------------------------------------------------------------- losses
    def classifier_loss(self, prefix):
        """Eq. 10 on the `<prefix>_probs` output (base: S0; aligned: S2, S4)."""
        def loss(batch, outputs):
            per_example = batch_weighted_bce(batch["labels"], outputs[f"{prefix}_probs"],
                                             scope=self.config.loss.wbce_scope)
            return per_example, {"wbce": per_example}
        return loss

    def make_alignment_loss(self, model):
        """Eq. 9 of W_A(I) -> (loss [B], terms), with the frozen stage features of `model`'s
        base classifier (s0) and its anchor weight (written by the anchor stage)."""
        perceptual = resnet.stage_outputs_model(
            model.get_layer("kim_base").get_layer("kim_base_backbone"))
        anchor = model.get_layer("anchor").image
        size = self.config.data.image_size
        if size % 32:
            raise ValueError(f"data.image_size {size} must be a multiple of 32 (G pools "
                             "S/32 x S/32, 16 at 512 px)")
        return make_alignment_loss(perceptual, anchor, size // 32,
                                   form=self.config.loss.alignment_form)

    def alignment_loss(self, batch, outputs):
        """s1's loss: Eq. 9 of the model's "aligned" output (the model this task built)."""
        del batch
        if self._alignment is None:
            raise RuntimeError("the kim task's alignment loss needs the model: call "
                               "build_model first")
        return self._alignment(outputs["aligned"])

    @staticmethod
    def use_aligned_classifier(model, step):
        """S2 / S4 hook: the main outputs are the aligned classifier's from now on."""
        del step
        model.get_layer("stage_switch").aligned.assign(1.0)

    # -------------------------------------------------------------- stages
    def stages(self):
        return [
            self.gradient_stage("s0", self.classifier_loss("base"), trainable=("kim_base",)),
            base.Stage("anchor", kind="compute", compute=self.compute_anchor),
            self.gradient_stage("s1", self.alignment_loss, trainable=("kim_aligner",)),
            self.gradient_stage("s2", self.classifier_loss("aligned"),
                                trainable=("kim_classifier",),
                                hooks=(self.use_aligned_classifier,)),
            base.Stage("s3", kind="compute", compute=self.compute_masks),
            self.gradient_stage("s4", self.classifier_loss("aligned"),
                                trainable=("kim_classifier",),
                                hooks=(self.use_aligned_classifier,)),
        ]

    def compute_anchor(self, context):
        """The anchor stage: A = the mean of N = min(2000, available) random "No Finding"
        training images (seed `config.seed`), at the model's size and normalisation."""
        table = manifest_lib.read_metadata(self.config.data.manifest)
        table = table[table["image_id"].isin(set(context.split.train))]
        normal = table.loc[table[list(CLASS_NAMES)].sum(axis=1) == 0, "image_id"].tolist()
        if not normal:
            raise ValueError(f"the training split of {self.config.data.manifest} holds no "
                             "'No Finding' image to average into the anchor")
        ids = kim_anchor.choose_anchor_images(normal, self.config.model.num_anchor_images,
                                              seed=self.config.seed)
        anchor = kim_anchor.anchor_image(b["image"].numpy() for b in context.dataset(ids))
        context.model.get_layer("anchor").image.assign(anchor)
        os.makedirs(context.stage_dir, exist_ok=True)
        np.save(os.path.join(context.stage_dir, "anchor.npy"), anchor)
        kim_figures.save_anchor_png(os.path.join(context.stage_dir, "anchor.png"), anchor)
        return {"num_images": len(ids), "num_candidates": len(normal)}

    def compute_masks(self, context):
        """s3: psi by `model.masks` (Eq. 3 over s2's CAMs of the training split, the pseudo
        masks, or zeros), set in the aligned classifier's CAM head and written to the stage
        folder with the counts and a Fig. 3-like figure."""
        m = self.config.model
        head = context.model.get_layer("kim_classifier").get_layer("cam_head")
        grid = int(head.masks.shape[0])
        summary = {"masks": m.masks}
        if m.masks == "disease":
            accumulator = kim_masks.DiseaseMaskAccumulator(
                confidence=m.mask_confidence, min_images=m.mask_min_images)
            for batch in context.dataset(context.split.train):
                outputs = context.model(batch["image"], training=False)
                accumulator.update(outputs["aligned_cam_scores"].numpy(),
                                   outputs["aligned_probs"].numpy())
            masks = accumulator.masks(renormalise=m.mask_renormalise, binary=m.mask_binary)
            summary.update(counts=dict(accumulator.counts), fallback=accumulator.fallback)
            for name, used in accumulator.fallback.items():
                if used:
                    logging.warning("disease mask %s: %d images with P >= %.2f, fewer than %d: "
                                    "the %d most confident used", name, accumulator.counts[name],
                                    m.mask_confidence, m.mask_min_images, m.mask_min_images)
        elif m.masks == "pseudo":
            masks = kim_masks.pseudo_masks_from_file(m.pdm_regions, grid)
        else:
            masks = np.zeros(tuple(head.masks.shape))
        head.set_masks(masks)
        os.makedirs(context.stage_dir, exist_ok=True)
        np.save(os.path.join(context.stage_dir, "masks.npy"), masks.astype(np.float32))
        fileio.atomic_write_json(os.path.join(context.stage_dir, "masks.json"), summary)
        anchor = context.model.get_layer("anchor").image.numpy()
        kim_figures.plot_masks(masks, anchor, summary.get("counts"),
                    os.path.join(context.stage_dir, "masks.png"))
        return summary

    # -------------------------------------------------------------- evaluation
    def comparison_row(self, stage, variant=""):
        del variant
        if stage in PAPER_ROWS:
            return PAPER_ROWS[stage]
        return MASK_ROWS[self.config.model.masks]

    def report_details(self, model):
        m, switch = self.config.model, model.get_layer("stage_switch")
        masks = model.get_layer("kim_classifier").get_layer("cam_head").masks.numpy()
        options = [["main outputs", "aligned classifier (S2/S4)"
                    if float(switch.aligned.numpy()) > 0.5 else "base classifier (S0)"],
                   ["masks", m.masks], ["attention", m.attention],
                   ["mask T", f"renormalise={m.mask_renormalise}, binary={m.mask_binary}"],
                   ["weighted BCE counts", self.config.loss.wbce_scope],
                   ["alignment loss form", self.config.loss.alignment_form],
                   ["aligner", f"bounded={m.bounded}, hidden={m.hidden}"],
                   ["binarisation threshold", f"{self.config.eval.region_threshold:.4f}"]]
        rows = [[name, f"{(masks[..., CLASS_NAMES.index(name)] > 0).mean():.3f}",
                 f"{masks[..., CLASS_NAMES.index(name)].max():.3f}"] for name in BOXED_CLASSES]
        return {"Options of this run": {"columns": ["option", "value"], "rows": options},
                "Disease masks psi in the checkpoint": {
                    "columns": ["class", "area (fraction of cells > 0)", "max"], "rows": rows}}

