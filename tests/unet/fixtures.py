#!/usr/bin/env python3
"""Fixtures of the unet-predict tests, built with the real libraries (onnx, tifffile, numpy,
scikit-image), never with hpcstage's own code.

    fixtures.py model OUT.onnx [--3d]        the tiny U-Net of templates/tools/unet-tiny-model
                                             (encoder, decoder, skip connection) whose weights
                                             separate bright disks from background
    fixtures.py disks IMAGE TRUTH [--size N] [--z N] [--seed N] [--channels N] [--ome]
                                             bright disks on noise, and their true labels
    fixtures.py touching IMAGE TRUTH         two disks touching over a neck, and a speck
    fixtures.py compare MASK TRUTH           JSON: objects found and true, IoU of each true
                                             object with its best match
    fixtures.py inspect MASK                 JSON: what tifffile sees in a mask
    fixtures.py equal A B                    JSON: shapes and the number of pixels that differ
    fixtures.py bad-mask KIND OUT [--like MASK]   masks a validator must refuse
"""

import argparse
import json
import os
import sys

import numpy as np


def unet_model(out, three_d=False):
    """The tiny U-Net shipped for trying the template (templates/tools/unet-tiny-model)."""
    import runpy

    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../templates/tools/unet-tiny-model")
    sys.argv = [tool, out] + (["--3d"] if three_d else [])
    runpy.run_path(tool, run_name="__main__")


def disks(image_path, truth_path, size, z, seed, channels, ome):
    """Disks (radius 7..12, bright ~0.9) on noise (~0.1): the image and its true labels."""
    import tifffile

    rng = np.random.default_rng(seed)
    shape = (z, size, size) if z > 1 else (size, size)
    truth = np.zeros(shape, dtype=np.uint16)
    yy, xx = np.mgrid[:size, :size]
    n = 0
    attempts = 0
    centres = []
    while attempts < 2000 and n < max(3, size * size // 2500):
        attempts += 1
        r = rng.uniform(7, 12)
        cy, cx = rng.uniform(r + 2, size - r - 2, 2)
        if any(np.hypot(cy - a, cx - b) < r + rb + 4 for a, b, rb in centres):
            continue
        centres.append((cy, cx, r))
        n += 1
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if z > 1:
            z0 = rng.integers(0, z)
            for k in range(max(0, z0 - 1), min(z, z0 + 2)):
                truth[k][disk] = n
        else:
            truth[disk] = n
    img = np.where(truth > 0, 0.9, 0.1) + rng.normal(0, 0.05, shape)
    img = np.clip(img * 4000, 0, 65535).astype(np.uint16)
    if channels > 1:
        # Channel 0 carries the disks; others are noise.
        extra = [np.clip(rng.normal(500, 50, shape), 0, 65535).astype(np.uint16) for _ in range(channels - 1)]
        img = np.stack([img] + extra, axis=-3)
    axes = ("Z" if z > 1 else "") + ("C" if channels > 1 else "") + "YX"
    if ome:
        tifffile.imwrite(image_path, img, ome=True, photometric="minisblack",
                         metadata={"axes": axes, "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65,
                                   "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
                                   **({"PhysicalSizeZ": 2.0} if z > 1 else {})})
    else:
        tifffile.imwrite(image_path, img, photometric="minisblack", metadata={"axes": axes})
    tifffile.imwrite(truth_path, truth)


def touching(image_path, truth_path):
    """Two disks of radius 11 whose centres are 18 px apart (they touch over a neck), and a
    3 x 3 speck: two true objects; the speck is noise below the minimum size."""
    import tifffile

    rng = np.random.default_rng(7)
    size = 96
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), dtype=np.uint16)
    for n, (cy, cx) in enumerate([(48, 36), (48, 54)], start=1):
        truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= 121) & (truth == 0)] = n
    bright = truth > 0
    bright[10:13, 10:13] = True
    img = np.where(bright, 0.9, 0.1) + rng.normal(0, 0.05, truth.shape)
    tifffile.imwrite(image_path, np.clip(img * 4000, 0, 65535).astype(np.uint16))
    tifffile.imwrite(truth_path, truth)


def compare(mask_path, truth_path):
    import tifffile

    mask = tifffile.imread(mask_path)
    truth = tifffile.imread(truth_path)
    if mask.shape != truth.shape:
        return {"error": f"shape {mask.shape} != truth {truth.shape}"}
    ious = []
    for t in range(1, int(truth.max()) + 1):
        obj = truth == t
        hits = np.unique(mask[obj])
        hits = hits[hits > 0]
        best = 0.0
        for m in hits:
            other = mask == m
            best = max(best, float((obj & other).sum() / (obj | other).sum()))
        ious.append(round(best, 4))
    return {"objects": int(len(np.unique(mask)) - (1 if (mask == 0).any() else 0)),
            "max_label": int(mask.max()), "truth": int(truth.max()), "ious": ious,
            "min_iou": min(ious) if ious else None}


def inspect(mask_path):
    import tifffile

    with tifffile.TiffFile(mask_path) as tif:
        page = tif.pages[0]
        series = tif.series[0]
        ome = tif.ome_metadata or ""
        return {"is_ome": tif.is_ome, "has_ome_xml": "<OME" in ome, "shape": list(series.shape),
                "axes": series.axes, "dtype": str(series.dtype), "compression": page.compression.name,
                "physical_size_x": ("PhysicalSizeX=" in ome)}


def equal(a_path, b_path):
    import tifffile

    a = tifffile.imread(a_path)
    b = tifffile.imread(b_path)
    return {"shapes": [list(a.shape), list(b.shape)],
            "differing": int((a != b).sum()) if a.shape == b.shape else None}


def bad_mask(kind, out, like):
    """truncated | wrong-size | float: masks that are not what they claim to be."""
    import tifffile

    mask = tifffile.imread(like)
    if kind == "truncated":
        data = open(like, "rb").read()
        open(out, "wb").write(data[: len(data) // 2])
    elif kind == "wrong-size":
        tifffile.imwrite(out, mask[..., : mask.shape[-2] // 2, :], ome=True, compression="zlib")
    elif kind == "float":
        tifffile.imwrite(out, mask.astype(np.float32) - 0.5, ome=True, compression="zlib")
    else:
        sys.exit(f"unknown kind {kind}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("out")
    m.add_argument("--3d", dest="three_d", action="store_true")
    d = sub.add_parser("disks")
    d.add_argument("image")
    d.add_argument("truth")
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--z", type=int, default=1)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--channels", type=int, default=1)
    d.add_argument("--ome", action="store_true")
    t = sub.add_parser("touching")
    t.add_argument("image")
    t.add_argument("truth")
    c = sub.add_parser("compare")
    c.add_argument("mask")
    c.add_argument("truth")
    i = sub.add_parser("inspect")
    i.add_argument("mask")
    e = sub.add_parser("equal")
    e.add_argument("a")
    e.add_argument("b")
    b = sub.add_parser("bad-mask")
    b.add_argument("kind")
    b.add_argument("out")
    b.add_argument("--like", required=True)
    a = p.parse_args()
    if a.cmd == "model":
        unet_model(a.out, a.three_d)
    elif a.cmd == "disks":
        disks(a.image, a.truth, a.size, a.z, a.seed, a.channels, a.ome)
    elif a.cmd == "touching":
        touching(a.image, a.truth)
    elif a.cmd == "compare":
        print(json.dumps(compare(a.mask, a.truth)))
    elif a.cmd == "inspect":
        print(json.dumps(inspect(a.mask)))
    elif a.cmd == "equal":
        print(json.dumps(equal(a.a, a.b)))
    elif a.cmd == "bad-mask":
        bad_mask(a.kind, a.out, a.like)


if __name__ == "__main__":
    main()
