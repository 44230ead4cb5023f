"""scikit-learn's digits, the labeled data every zoo classifier is trained and judged on."""
from __future__ import annotations

import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (train_images, train_labels, test_images, test_labels); images are 8x8 in [0, 1].

    The split is seeded and fixed: the held-out part is never trained on, and is the
    evaluation split of every zoo workload.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def render(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Resizes 8x8 digits to `size` x `size` (bilinear), normalized, with `channels` channels."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(images[:, None])
    if size != images.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    return x.expand(-1, channels, -1, -1).contiguous().numpy()


def tokens(images: np.ndarray) -> np.ndarray:
    """Turns 8x8 digits into 64 tokens for the transformer encoder: 2x2 patches of a 16x16 rendering."""
    x = render(images, 1, 16)[:, 0]  # (n, 16, 16)
    patches = x.reshape(len(x), 8, 2, 8, 2).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(patches.reshape(len(x), 64, 4))


def canvases(images: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, list]:
    """Digits 16-48 pixels wide pasted at seeded random places on a size x size canvas
    (3 channels), for the detector; returns (images, [(cx, cy, w, h, label)] in pixels).
    The digits' size in pixels does not depend on the canvas, so a detector trained on small
    canvases sees objects of the same scale on large ones."""
    import torch
    from torch.nn import functional as F

    rng = np.random.default_rng(seed)
    out = np.full((len(images), 3, size, size), -0.3 / 0.4, np.float32)
    boxes = []
    for i, (img, label) in enumerate(zip(images, labels)):
        s = int(rng.integers(16, 49))
        x0, y0 = (int(v) for v in rng.integers(0, size - s, 2))
        digit = F.interpolate(torch.from_numpy(img[None, None]), size=(s, s), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
        out[i, :, y0:y0 + s, x0:x0 + s] = (digit - 0.3) / 0.4
        boxes.append((x0 + s / 2, y0 + s / 2, s, s, int(label)))
    return out, boxes
