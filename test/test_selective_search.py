"""The weight-free proposer: the balanced mode's two processes give the one-process output, always the same."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from chatrex_ros.eval.groundtruth import GroundTruth
from chatrex_ros.eval.sample import load_sample_image, sample_annotations_path
from chatrex_ros.models import selective_search
from chatrex_ros.models.selective_search import SelectiveSearchBackend, interleave_rankings


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    gt = GroundTruth.load(sample_annotations_path())
    return [load_sample_image(image) for image in gt.images[:3]]


@pytest.fixture
def own_helper(monkeypatch):
    """A helper process of this test's own, so a test that kills it leaves the module's one alone."""
    helper = selective_search._SearchHelper()
    monkeypatch.setattr(selective_search, "_HELPER", helper)
    yield helper
    helper.stop()


def _boxes(backend: SelectiveSearchBackend, images: list[np.ndarray]) -> list[np.ndarray]:
    return [backend.propose(image).boxes for image in images]


def test_two_processes_give_exactly_the_one_process_proposals(photos, own_helper) -> None:
    one = SelectiveSearchBackend(workers=1)
    two = SelectiveSearchBackend(workers=2)
    expected = _boxes(one, photos)
    got = _boxes(two, photos)
    assert own_helper._process is not None and own_helper._process.poll() is None, "the helper process ran"
    assert two.provider == "balanced mode, 2 processes" and not two.fallback_reason
    for want, have in zip(expected, got, strict=True):
        assert want.shape[0] > 50
        np.testing.assert_array_equal(want, have)


def test_the_same_frame_gives_the_same_proposals_whatever_ran_before(photos, own_helper) -> None:
    backend = SelectiveSearchBackend()
    first = backend.propose(photos[0]).boxes
    _boxes(backend, photos[1:])
    np.random.default_rng(3).random(10)
    np.testing.assert_array_equal(backend.propose(photos[0]).boxes, first)


def test_balanced_boxes_are_in_original_pixels_with_rank_scores(photos, own_helper) -> None:
    image = photos[1]
    height, width = image.shape[:2]
    out = SelectiveSearchBackend(long_side=160).propose(image)
    assert out.boxes.shape[0] == out.scores.shape[0] > 0
    assert np.all(out.boxes[:, :2] >= 0) and np.all(out.boxes[:, 2] <= width) and np.all(out.boxes[:, 3] <= height)
    assert out.boxes[:, 2].max() > 0.9 * width, "scaled back from the 160 px copy"
    assert np.all(np.diff(out.scores) < 0)
    assert len({tuple(box) for box in out.boxes.tolist()}) == out.boxes.shape[0], "no region twice"


def test_a_dead_helper_means_one_process_with_the_same_output_and_says_why(photos, own_helper) -> None:
    backend = SelectiveSearchBackend()
    expected = backend.propose(photos[0]).boxes
    own_helper._process.kill()
    own_helper._process.wait()
    np.testing.assert_array_equal(backend.propose(photos[0]).boxes, expected)
    assert "helper process failed" in backend.fallback_reason and "exited" in backend.fallback_reason
    assert backend.provider.startswith("balanced mode, 1 process (helper process failed")
    np.testing.assert_array_equal(backend.propose(photos[0]).boxes, expected)  # and it goes on


def test_a_script_read_from_stdin_still_gets_the_second_process() -> None:
    """multiprocessing's spawn would need an importable __main__; the helper is a `python -m` child."""
    script = textwrap.dedent(
        """
        import numpy as np
        from chatrex_ros.models.selective_search import SelectiveSearchBackend
        rng = np.random.default_rng(0)
        image = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
        backend = SelectiveSearchBackend()
        print(backend.propose(image).boxes.shape[0], backend.provider)
        """
    )
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, provider = result.stdout.split(" ", 1)
    assert int(count) > 0 and provider.strip() == "balanced mode, 2 processes", result.stdout + result.stderr


def test_interleaving_alternates_and_keeps_a_shared_region_at_its_first_place() -> None:
    hsv = np.array([[0, 0, 5, 5], [1, 1, 2, 2], [9, 9, 1, 1]], np.int32)
    lab = np.array([[3, 3, 4, 4], [0, 0, 5, 5]], np.int32)
    merged = interleave_rankings(hsv, lab)
    assert merged.tolist() == [[0, 0, 5, 5], [3, 3, 4, 4], [1, 1, 2, 2], [9, 9, 1, 1]]
    assert interleave_rankings(lab, np.empty((0, 4), np.int32)).tolist() == lab.tolist()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": "fastest"}, "balanced, fast, quality, single"),
        ({"workers": 3}, "1 or 2"),
        ({"long_side": 32}, "64..4096"),
    ],
)
def test_bad_settings_are_refused_with_the_allowed_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SelectiveSearchBackend(**kwargs)


def test_opencv_modes_run_in_one_process(photos) -> None:
    backend = SelectiveSearchBackend(mode="single", long_side=200, workers=2)
    assert backend.provider == "single mode, 1 process"
    out = backend.propose(photos[2])
    assert out.boxes.shape[0] > 0
    np.testing.assert_array_equal(out.boxes, backend.propose(photos[2]).boxes)
