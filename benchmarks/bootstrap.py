"""What the test-set bootstrap costs (model/bootstrap.py): 1000 resamples of one run, and the
paired bootstrap of two arms of two seeds each, against one COCOeval.evaluate() of the same set.

    python benchmarks/bootstrap.py

Synthetic detections: each image holds a few objects, detections near them and stray ones, one
class, scores uniform — the sizes of the quick start's test split (60 images) and of a
FloW-Img-sized one (600 images, hundreds of low-score detections each, as test_conf 0.01 gives).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402 (a script)

from model.bootstrap import bootstrap_ci, paired_bootstrap, per_image_eval  # noqa: E402
from model.coco_eval import cocoeval  # noqa: E402


def synthetic(n_images: int, dets_per_image: int, seed: int) -> tuple[dict, list[dict]]:
    """The same objects for every seed (one test split), each seed's own detections."""
    rng = np.random.default_rng(0)
    det_rng = np.random.default_rng(seed + 1)
    images = [{"id": i + 1, "width": 1920, "height": 1080, "file_name": f"{i}.jpg"}
              for i in range(n_images)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.integers(1, 6)):
            x, y, w, h = rng.uniform(0, 1800), rng.uniform(0, 1000), *rng.uniform(8, 40, 2)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            dets.append({"image_id": im["id"], "category_id": 1,
                         "score": float(det_rng.uniform()),
                         "bbox": [x + det_rng.normal(0, 2), y + det_rng.normal(0, 2), w, h]})
        for _ in range(dets_per_image):
            dets.append({"image_id": im["id"], "category_id": 1,
                         "score": float(det_rng.uniform()),
                         "bbox": [*det_rng.uniform(0, 1800, 1), *det_rng.uniform(0, 1000, 1),
                                  *det_rng.uniform(8, 40, 2)]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "b"}]}, dets


def main() -> None:
    print("| test images | detections | COCOeval.evaluate+accumulate (s) | bootstrap_ci, 1000 "
          "resamples (s) | paired 2x2 runs, 1000 resamples (s) |")
    print("|---|---|---|---|---|")
    for n, per in ((60, 20), (600, 300)):
        runs = []
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ev = cocoeval(*synthetic(n, per, 0))
        t_eval = time.perf_counter() - t0
        runs.append(per_image_eval(ev))
        for seed in (1, 2, 3):
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(per_image_eval(cocoeval(*synthetic(n, per, seed))))
        t0 = time.perf_counter()
        bootstrap_ci(runs[0])
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        paired_bootstrap(runs[:2], runs[2:])
        t_pair = time.perf_counter() - t0
        print(f"| {n} | {len(runs[0].det_score)} | {t_eval:.2f} | {t_one:.2f} | {t_pair:.2f} |")


if __name__ == "__main__":
    main()
