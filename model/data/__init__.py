"""Datasets: readers for FloW-Img / VOC / COCO / YOLO layouts, checking, loaders, synthetic data.

``load_dataset(src)`` detects the layout, checks every image and box, and returns a
``DetectionDataset`` of COCO-style ``DetectionSplit``s with a ``DataReport``.
"""

from __future__ import annotations

from model.data.dataset import DetectionDataset, DetectionSplit, load_dataset
from model.data.raw import DataError
from model.data.validate import DataReport

__all__ = ["DataError", "DataReport", "DetectionDataset", "DetectionSplit", "load_dataset"]
