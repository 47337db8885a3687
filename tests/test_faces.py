"""ser_core.encoders.faces: face crops from a real photo in a video; clear errors otherwise."""

from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from ser_core.encoders.faces import FaceTrack, extract_faces
from ser_core.errors import InputError

# Where the face is in skimage's astronaut photo (512 x 512), by eye: x 170-270, y 60-165.
FACE_CENTRE = (222, 115)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB frames as an mp4 (mp4v) with OpenCV."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def shifted(image: np.ndarray, dx: int) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, 0]])
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory) -> tuple[Path, list[int]]:
    """3 s at 10 fps of the astronaut photo sliding right by 2 px a frame."""
    image = data.astronaut()
    shifts = [2 * i for i in range(30)]
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    return write_video(path, [shifted(image, dx) for dx in shifts]), shifts


@pytest.fixture(scope="module")
def astronaut_track(astronaut_video) -> FaceTrack:
    return extract_faces(astronaut_video[0], fps=5.0, size=64)


def test_faces_found_with_plausible_boxes(astronaut_track):
    track = astronaut_track
    n = len(track)
    assert n == 15  # 3 s sampled at 5 frames per second
    assert track.crops.shape == (n, 64, 64, 3) and track.crops.dtype == np.uint8
    np.testing.assert_allclose(track.times, 0.2 * np.arange(n), atol=1e-6)
    assert track.detected.all()
    assert track.frame_size == (512, 512)
    assert track.boxes.shape == (n, 4)
    x, y, w, h = track.boxes[0]
    assert 60 <= w <= 180 and 60 <= h <= 180
    assert abs(x + w / 2 - FACE_CENTRE[0]) < 30 and abs(y + h / 2 - FACE_CENTRE[1]) < 30
    # the crop is a face, not background: skin tones dominate (red > blue)
    crop = track.crops[0].astype(float)
    assert crop[..., 0].mean() > crop[..., 2].mean() + 20


def test_boxes_follow_the_moving_face(astronaut_track, astronaut_video):
    _, shifts = astronaut_video
    frame_index = np.round(astronaut_track.times * 10).astype(int)
    expected_dx = np.asarray(shifts)[frame_index]
    centres = astronaut_track.boxes[:, 0] + astronaut_track.boxes[:, 2] / 2
    moved = centres - centres[0]
    assert np.abs(moved - expected_dx).max() < 12  # 56 px of motion tracked within a few px
    assert np.corrcoef(moved, expected_dx)[0, 1] > 0.95


def test_missing_detections_reuse_last_box_and_leading_frames_are_dropped(tmp_path):
    image = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    blank = np.full_like(image, 90)
    # 0-0.4 s blank, 0.5-1.4 s face, 1.5-1.9 s blank (10 fps)
    frames = [blank] * 5 + [image] * 10 + [blank] * 5
    track = extract_faces(write_video(tmp_path / "gaps.mp4", frames), fps=10.0, size=32)
    assert track.frames_checked == 20
    assert track.times[0] == pytest.approx(0.5)  # the blank start is dropped
    assert track.detected[:10].all() and not track.detected[10:].any()
    assert len(track) == 15
    np.testing.assert_array_equal(track.boxes[10:], np.repeat(track.boxes[9:10], 5, axis=0))
    assert track.crops.shape == (15, 32, 32, 3)


def test_gray_and_size(tmp_path):
    image = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    path = write_video(tmp_path / "short.mp4", [image] * 5, fps=5.0)
    track = extract_faces(path, fps=5.0, size=48, gray=True)
    assert track.crops.shape == (5, 48, 48, 1)


def test_max_frames_spreads_samples(tmp_path):
    image = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    path = write_video(tmp_path / "two_s.mp4", [image] * 20, fps=10.0)
    track = extract_faces(path, fps=10.0, max_frames=4)
    assert len(track) == 4 and track.fps == pytest.approx(2.0)
    np.testing.assert_allclose(track.times, [0.0, 0.5, 1.0, 1.5], atol=1e-6)


def test_bytes_and_file_like(tmp_path, astronaut_video):
    image = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    path = write_video(tmp_path / "short.mp4", [image] * 5, fps=5.0)
    blob = path.read_bytes()
    upload = io.BytesIO(blob)
    upload.name = "upload.mp4"
    for source in (blob, upload):
        track = extract_faces(source, fps=5.0)
        assert len(track) == 5 and track.detected.all()


def expect_input_error(source, *words: str, **kwargs) -> None:
    t0 = time.perf_counter()
    with pytest.raises(InputError) as info:
        extract_faces(source, **kwargs)
    assert time.perf_counter() - t0 < 10.0
    for word in words:
        assert word.lower() in str(info.value).lower(), str(info.value)


def test_blank_video_has_no_face(tmp_path):
    frames = [np.full((240, 320, 3), 40 + 10 * i, np.uint8) for i in range(10)]
    expect_input_error(write_video(tmp_path / "blank.mp4", frames), "no face was found")


def test_corrupt_and_empty_files(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    expect_input_error(corrupt, "could not be read")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    expect_input_error(text, "could not be read")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    expect_input_error(empty, "empty")
    expect_input_error(b"", "empty")
    expect_input_error(tmp_path / "missing.mp4", "no video file")
    expect_input_error(None, "no video")


def test_truncated_video(tmp_path, astronaut_video):
    blob = astronaut_video[0].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(blob[: len(blob) // 3])  # mp4v from OpenCV: the index (moov) is at the end
    expect_input_error(path, "could not be read")


def test_duration_limit(astronaut_video):
    expect_input_error(astronaut_video[0], "3.0 s long", "limit is 1 s", max_seconds=1.0)


def test_small_face_in_a_wide_frame(tmp_path):
    """A 720p frame, mostly flat background, the face ~100 px: still found, box in source pixels."""
    photo = data.astronaut()
    frames = []
    for i in range(5):
        frame = np.full((720, 1280, 3), 60, np.uint8)
        frame[100:612, 300 + 10 * i : 812 + 10 * i] = photo
        frames.append(frame)
    track = extract_faces(write_video(tmp_path / "wide.mp4", frames, fps=5.0), fps=5.0)
    assert len(track) == 5 and track.detected.all() and track.frame_size == (1280, 720)
    x, y, w, h = track.boxes[0]
    assert abs(x + w / 2 - (300 + FACE_CENTRE[0])) < 30
    assert abs(y + h / 2 - (100 + FACE_CENTRE[1])) < 30
