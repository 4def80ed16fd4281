"""Checks a built TFRecord set against its manifest and draws examples (`tfrecords_tools.inspect`).

`validate` reads every record of every shard (no image decoding: the records' CRCs vouch for
the bytes) and compares what it finds with manifest.json and metadata.csv: schema version,
encoding and stored size of each record, the record count of each shard, the image ids, and
the counts per fold / split / class and of boxes. `show` decodes the first examples and draws
their boxes.
"""

import io
import os

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from chestxray_tf import fileio, geometry
from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib

_SUMMARY_KEYS = ("schema_version", "image/encoding", "image/height", "image/width", "image_id",
                 "labels", "box_labels", "fold", "split")
_BOX_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                "#f032e6")


def _records(path):
    """Parsed records of one shard, without the image bytes."""
    return tf.data.TFRecordDataset(path).map(
        lambda r: {k: v for k, v in example.parse(r).items() if k in _SUMMARY_KEYS})


def _read_shard(path):
    """The summaries of the records of `path` as numpy dicts; an unreadable shard is named."""
    try:
        return list(_records(path).as_numpy_iterator())
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"shard {path} is unreadable: {e.message.splitlines()[0]}") from e


def validate(path):
    """Reads every record of a built set and checks it against manifest.json and metadata.csv.

    Args:
        path: the set's folder or its manifest.json.

    Returns:
        dict: num_images, shards (file -> records read), counts (recomputed from the records,
        equal to the manifest's).

    Raises:
        ValueError listing every mismatch found (or naming an unreadable shard).
    """
    manifest = manifest_lib.read_manifest(path)
    metadata = manifest_lib.read_metadata(path)
    problems, rows, box_labels, per_shard = [], [], [], {}
    for shard, file in zip(manifest["shards"], manifest["shard_paths"]):
        if not os.path.exists(file):
            problems.append(f"shard {file} is missing")
            continue
        records = _read_shard(file)
        per_shard[shard["file"]] = len(records)
        if len(records) != shard["count"]:
            problems.append(f"shard {file} holds {len(records)} records, the manifest says "
                            f"{shard['count']}")
        for position, r in enumerate(records):
            image_id = r["image_id"].decode()
            if (r["schema_version"], r["image/encoding"].decode(), r["image/height"],
                    r["image/width"]) != (manifest["schema_version"], manifest["encoding"],
                                          manifest["image_size"], manifest["image_size"]):
                problems.append(
                    f"record {image_id} in {file}: schema {r['schema_version']}, encoding "
                    f"{r['image/encoding'].decode()}, size {r['image/height']}x"
                    f"{r['image/width']} differ from the manifest's")
            rows.append({"image_id": image_id, "fold": int(r["fold"]),
                         "split": r["split"].decode(), "has_box": len(r["box_labels"]) > 0,
                         "num_boxes": len(r["box_labels"]), "shard": shard["file"],
                         "shard_index": position,
                         **dict(zip(labels_lib.CLASS_NAMES, r["labels"].tolist()))})
            box_labels += r["box_labels"].tolist()
    found = pd.DataFrame(rows, columns=["image_id", "fold", "split", "has_box", "num_boxes",
                                        "shard", "shard_index", *labels_lib.CLASS_NAMES])
    problems += _compare_ids(found, metadata)
    counts = manifest_lib.count_summary(found, box_labels)
    if counts != manifest["counts"]:
        diff = sorted(k for k in counts if counts[k] != manifest["counts"].get(k))
        problems.append(f"counts {diff} recomputed from the records differ from the manifest's")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10
                                 else [])
        raise ValueError(f"{manifest['dir']}: {len(problems)} problems:\n  " + "\n  ".join(shown))
    return {"num_images": len(found), "shards": per_shard, "counts": counts}


def _compare_ids(found, metadata):
    """Mismatches between the records and metadata.csv (ids, shard and position, fold, split,
    labels)."""
    problems = []
    duplicated = sorted(set(found.loc[found["image_id"].duplicated(), "image_id"]))
    if duplicated:
        problems.append(f"{len(duplicated)} images have several records, e.g. {duplicated[:3]}")
    only_records = sorted(set(found["image_id"]) - set(metadata["image_id"]))
    only_table = sorted(set(metadata["image_id"]) - set(found["image_id"]))
    if only_records:
        problems.append(f"{len(only_records)} records are not in metadata.csv, e.g. "
                        f"{only_records[:3]}")
    if only_table:
        problems.append(f"{len(only_table)} rows of metadata.csv have no record, e.g. "
                        f"{only_table[:3]}")
    columns = ["fold", "split", "num_boxes", "shard", "shard_index", *labels_lib.CLASS_NAMES]
    both = found.drop_duplicates("image_id").merge(metadata, on="image_id",
                                                   suffixes=("", "_csv"))
    for column in columns:
        differ = both.loc[both[column].astype(str) != both[f"{column}_csv"].astype(str),
                          "image_id"]
        if len(differ):
            problems.append(f"{column} of {len(differ)} images differs between the records and "
                            f"metadata.csv, e.g. {sorted(differ)[:3]}")
    return problems


SHOW_SIZE = 512  # `show` draws at least this size, so the class names stay readable


def draw_boxes(pixels, boxes_yxyx, box_labels, min_size=0):
    """uint8 [S, S] grey image -> RGB PIL image with its boxes and class names drawn; an image
    smaller than `min_size` is up-sampled first (bilinear). Each name sits on a dark band
    inside the image (moved in from the border, never clipped)."""
    image = Image.fromarray(pixels).convert("RGB")
    if image.width < min_size:
        image = image.resize((min_size, min_size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    size = image.width
    font = ImageFont.load_default(size=max(10, size // 40))
    boxes = list(zip(geometry.yxyx_to_xywh(np.reshape(boxes_yxyx, (-1, 4)), size),
                     (_BOX_COLOURS[int(label) % len(_BOX_COLOURS)] for label in box_labels),
                     (labels_lib.CLASS_NAMES[int(label)] for label in box_labels)))
    for (x, y, _, _), colour, name in boxes:
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        tx = min(max(0, x + 2), size - (right - left) - 4)
        ty = min(max(0, y + 1), size - bottom - 4)
        draw.rectangle([tx, ty, tx + right - left + 2, ty + bottom + 2], fill="#000000")
        draw.text((tx + 1, ty), name, fill=colour, font=font)
    for (x, y, w, h), colour, _ in boxes:  # outlines last: a name never hides a box
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=max(1, size // 256))
    return image


def show(path, num_examples, output_dir, boxed_first=True):
    """Writes the first `num_examples` decoded images with their boxes drawn, as PNGs.

    Args:
        path: the set's folder or manifest.json.
        num_examples: how many images.
        output_dir: where `<image_id>` PNGs go (drawn at >= SHOW_SIZE px). A file there
            that holds another drawing is never overwritten (`FileExistsError`); the same
            drawing again (a re-run) is left as it is.
        boxed_first: take images with boxes first (in shard order), then the others.

    Returns:
        the list of written paths.
    """
    manifest = manifest_lib.read_manifest(path)
    os.makedirs(output_dir, exist_ok=True)
    records = tf.data.TFRecordDataset(manifest["shard_paths"]).map(example.parse)
    boxed, plain = [], []
    for features in records:
        has_boxes = boxed_first and features["boxes"].shape[0] > 0
        (boxed if has_boxes else plain).append(features)
        del plain[num_examples:]
        if len(boxed) == num_examples or (not boxed_first and len(plain) == num_examples):
            break
    chosen = (boxed + plain)[:num_examples]
    written = []
    for features in chosen:
        pixels = example.decode_image(features, manifest["encoding"]).numpy()[..., 0]
        out = os.path.join(output_dir, features["image_id"].numpy().decode())
        buffer = io.BytesIO()
        draw_boxes(pixels, features["boxes"].numpy(), features["box_labels"].numpy(),
                   SHOW_SIZE).save(buffer, format="PNG")
        if os.path.exists(out):
            with open(out, "rb") as f:
                if f.read() != buffer.getvalue():
                    raise FileExistsError(f"{out} exists and is not this drawing: choose "
                                          "another --show_dir (nothing is overwritten)")
        else:
            fileio.atomic_write(out, buffer.getvalue(), overwrite=False)
        written.append(out)
    return written
