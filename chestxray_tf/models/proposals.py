"""The predefined square region proposals of Hermoza et al. 2020 (Sec. 4.2: "regions of size 64,
128 and 256, all with ratio 1 and strides of 8, 16 and 32, to produce a total of N = 395 region
proposals").

The strides are in pixels of the H/4 saliency map (the authors' `SimpleAnchorGenerator` runs on
that map): a stride st gives a grid of m / st cells over the side m = S/4 of the map, i.e. centres
every S / (m / st) input pixels (32, 64, 128 at S = 512), placed on both image borders
(m / st + 1 positions per axis: 17, 9, 5). A proposal of size s is the square centre +- round(s/2)
clipped to the image, so N = 17^2 + 9^2 + 5^2 = 289 + 81 + 25 = 395 at any S: for other image sizes
sizes and strides scale by S / 512 (the same relative geometry).
"""

import numpy as np

SIZES = (64, 128, 256)
STRIDES = (8, 16, 32)
REFERENCE_SIZE = 512


def proposal_boxes(image_size=512, sizes=SIZES, strides=STRIDES):
    """The N fixed proposals, float32 [N, 4] (y1, x1, y2, x2) in pixels of the input image.

    Ordered by level (sizes), then by the row, then by the column of the centre.

    Args:
        image_size: S; sizes and strides are given at S = 512 and scaled by S / 512.
        sizes: square sides in input pixels at S = 512.
        strides: centre spacings in pixels of the S/4 map at S = 512.
    """
    if int(image_size) != image_size or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    if len(sizes) != len(strides) or not sizes:
        raise ValueError(f"sizes {sizes!r} and strides {strides!r} must be non-empty and of the "
                         "same length")
    scale = image_size / REFERENCE_SIZE
    map_size = REFERENCE_SIZE / 4
    levels = []
    for size, stride in zip(sizes, strides):
        if not (size > 0 and stride > 0 and (map_size / stride).is_integer()):
            raise ValueError(f"need size > 0 and a stride dividing {map_size:g} (the map side at "
                             f"512 px), got size {size!r}, stride {stride!r}")
        cells = int(map_size / stride)
        centres = np.arange(cells + 1) * (image_size / cells)
        half = np.round(size * scale / 2)
        if half < 1:
            raise ValueError(f"proposal size {size} scaled to image_size {image_size} is under "
                             "2 pixels")
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        cy, cx = cy.ravel(), cx.ravel()
        levels.append(np.stack([cy - half, cx - half, cy + half, cx + half], axis=-1))
    return np.clip(np.concatenate(levels), 0, image_size).astype(np.float32)
