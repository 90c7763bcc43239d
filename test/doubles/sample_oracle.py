"""TEST DOUBLES for a UPN checkpoint and the ChatRex-7B checkpoint on the sample bag, loadable by name.

``chatrex-ros eval --proposal-backend python:doubles.sample_oracle:SampleTruthProposer --language-backend
python:doubles.sample_oracle:SampleOracle`` runs the real CLI, bag reading, parser and scoring with answers
whose scores are known exactly. They stand in for model checkpoints outside the package: both read the
sample ground truth (``chatrex_ros/data``) and recognise a frame by its pixels.

The oracle answers in the model's output grammar with deliberate, known errors:

* detect, a category of the frame: all its boxes; ``over_detect`` (default "cup") gets one extra distractor box;
* detect, a sample referring phrase: its target box;
* detect, ``false_positive_phrase`` (default "unicorn", absent from every frame): two distractor boxes;
* detect, any other phrase: no box (a correct rejection when the phrase is a negative query);
* count: as many boxes as there are instances, but ``miscount`` (default "tower") one box short.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from chatrex_ros.core.types import RawProposals
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
from chatrex_ros.eval.sample import load_sample_image, sample_annotations_path, sample_queries_path

# Tiny boxes in the top-left corner: they overlap no annotated object with IoU >= 0.5, nor each other > 0.8.
DISTRACTORS = np.array([[1 + 6 * i, 1, 5 + 6 * i, 5] for i in range(5)], dtype=np.float32)
_DETECT = re.compile(r"Please detect (.*) in this image\. Answer the question with object indexes\.")
_COUNT = re.compile(r"How many (.*) are there in this image\? Answer the question with the number of objects")


def fingerprint(rgb: np.ndarray) -> str:
    """A frame's identity: the hash of its pixels."""
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


class SampleTruthProposer:
    """Proposes each sample frame's annotated boxes (best scores, file order) plus 5 distractors."""

    name = "sample_truth_proposer_test_double"

    def __init__(self) -> None:
        gt = GroundTruth.load(sample_annotations_path())
        self.boxes = {fingerprint(load_sample_image(i)): gt.boxes(i.id).astype(np.float32) for i in gt.images}

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        truth = self.boxes[fingerprint(image_rgb)]
        boxes = np.vstack([truth, DISTRACTORS])
        scores = np.concatenate([0.95 - 0.01 * np.arange(len(truth)), 0.5 - 0.01 * np.arange(len(DISTRACTORS))])
        return RawProposals(boxes, scores.astype(np.float32))


class SampleOracle:
    """Answers detect and count prompts about the sample frames from the ground truth (errors: module docstring)."""

    name = "sample_oracle_test_double"

    def __init__(self, over_detect: str = "cup", false_positive_phrase: str = "unicorn", miscount: str = "tower"):
        gt = GroundTruth.load(sample_annotations_path())
        self.objects = {fingerprint(load_sample_image(i)): gt.objects(i.id) for i in gt.images}
        self.referring = {
            q.phrase: gt.object(q.annotation_id).box
            for q in load_queries(sample_queries_path(), gt)
            if q.annotation_id is not None
        }
        self.over_detect, self.false_positive_phrase, self.miscount = over_detect, false_positive_phrase, miscount
        self.prompts: list[str] = []

    def generate(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, prompt: str, max_new_tokens: int = 512) -> str:
        self.prompts.append(prompt)
        objects = self.objects[fingerprint(image_rgb)]
        boxes = np.asarray(boxes_xyxy)
        count = _COUNT.match(prompt)
        if count:
            phrase = count.group(1)
            indices = [_nearest(boxes, o.box) for o in objects if o.category == phrase]
            if phrase == self.miscount:
                indices = indices[:-1]
            return f"There are {len(indices)} {_group(phrase, indices)}"
        detect = _DETECT.fullmatch(prompt)
        if detect is None:
            return "I can only detect and count."
        answer = ""
        for phrase in detect.group(1).split("; "):
            if phrase in self.referring:
                indices = [_nearest(boxes, self.referring[phrase])]
            elif phrase == self.false_positive_phrase:
                indices = [len(boxes) - 1, len(boxes) - 2]  # two distractors: the lowest-scored proposals
            else:
                indices = [_nearest(boxes, o.box) for o in objects if o.category == phrase]
                if indices and phrase == self.over_detect:
                    indices.append(len(boxes) - 1)
            if indices:
                answer += _group(phrase, indices)
        return answer or "There is no such object in the image."


def _group(phrase: str, indices: list[int]) -> str:
    return f"<ground>{phrase}</ground><objects>{''.join(f'<obj{i}>' for i in indices)}</objects>"


def _nearest(boxes: np.ndarray, box: tuple[float, float, float, float]) -> int:
    return int(np.argmin(np.abs(boxes - np.asarray(box)).sum(axis=1)))
