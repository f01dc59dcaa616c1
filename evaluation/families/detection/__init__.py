"""Road-user detection and counting on camera frames: images in, boxes with classes and scores out
(pilot `cctv-road-users`)."""

from evaluation.families.detection import metrics, scenarios  # noqa: F401 - they register themselves
from evaluation.families.detection.contract import DETECT
from evaluation.families.detection.data import ROAD_USERS, Frames
from evaluation.families.detection.family import ObjectDetection

__all__ = ["DETECT", "ObjectDetection", "Frames", "ROAD_USERS"]
