"""Face crops from a video: OpenCV's Haar frontal-face cascade on frames sampled at ``fps``.

MESM (Sec. 4.2) locates the face in each image frame (with MTCNN) before its VGG; MTCNN's
weights do not install here, so we use the Haar cascade that ships with OpenCV.

Policy for frames without a detection: a sampled frame in which no face is found reuses the
last detected box (its crop is cut from that frame at that box, ``detected`` is False), so
the track keeps a regular time axis. Sampled frames *before* the first detection are dropped
(there is no box to reuse yet; ``times`` then starts at the first detection). A video with no
detection at all raises :class:`InputError`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Union

import cv2
import numpy as np

from ser_core.audio import max_seconds_limit
from ser_core.errors import InputError

VIDEO_MAX_BYTES = 500 * 1024 * 1024
DETECT_SIDE = 360  # frames are shrunk so their shorter side is at most this for detection
DECODE_TIMEOUT_S = 60.0
CASCADE = "haarcascade_frontalface_default.xml"

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Any]


@dataclass
class FaceTrack:
    """The speaker's face over time.

    crops: ``[N, size, size, 3]`` uint8 RGB (``[N, size, size, 1]`` when ``gray``).
    times: ``[N]`` seconds from the start of the video.
    boxes: ``[N, 4]`` int (x, y, w, h) of the face in the source frame (the reused box where
        ``detected`` is False).
    detected: ``[N]`` bool, True where the face was found in that very frame.
    frame_size: (width, height) of the source frames.
    fps: the sampling rate actually used (lowered to fit ``max_frames``).
    frames_checked: how many frames were sampled and searched.
    """

    crops: np.ndarray
    times: np.ndarray
    boxes: np.ndarray
    detected: np.ndarray
    frame_size: tuple[int, int]
    fps: float
    frames_checked: int

    def __len__(self) -> int:
        return int(self.crops.shape[0])


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, CASCADE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face cascade is missing: {path}")
    return cascade


def detect_face(frame_bgr: np.ndarray) -> tuple[int, int, int, int] | None:
    """The most confident frontal face in a BGR frame as (x, y, w, h) in its pixels, or None."""
    height, width = frame_bgr.shape[:2]
    scale = min(1.0, DETECT_SIDE / min(height, width))
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # the smallest face searched for: 24 px at detection scale (the cascade's own window), i.e.
    # 1/15 of the frame's shorter side for frames larger than DETECT_SIDE
    min_side = 24
    faces, _, confidence = _cascade().detectMultiScale3(
        gray, scaleFactor=1.15, minNeighbors=5, minSize=(min_side, min_side),
        outputRejectLevels=True,
    )
    if len(faces) == 0:
        return None
    # the most confident detection (the cascade's last-stage weight), not the largest: false
    # positives on clothing or background can be bigger than the face but score far lower
    x, y, w, h = faces[int(np.argmax(np.asarray(confidence).reshape(-1)))]
    return (int(round(x / scale)), int(round(y / scale)), int(round(w / scale)),
            int(round(h / scale)))


def crop_square(box: tuple[int, int, int, int], width: int, height: int,
                margin: float = 0.1) -> tuple[int, int, int]:
    """(x0, y0, side) of the square a face crop takes from a ``width`` × ``height`` frame:
    ``box`` (x, y, w, h) grown by ``margin`` per side and moved inside the frame."""
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    side = max(1, min(side, width, height))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


def crop_face(frame_bgr: np.ndarray, box: tuple[int, int, int, int], size: int,
              margin: float = 0.1, gray: bool = False) -> np.ndarray:
    """Square crop around ``box`` grown by ``margin`` per side, moved inside the frame, resized."""
    height, width = frame_bgr.shape[:2]
    x0, y0, side = crop_square(box, width, height, margin)
    patch = frame_bgr[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (size, size), interpolation=interp)
    if gray:
        return cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(patch, cv2.COLOR_BGR2RGB)


def _video_path(source: VideoSource, workdir: str, max_bytes: int) -> tuple[str, str]:
    """A path OpenCV can open (bytes and file-like objects are written to ``workdir``)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"There is no video file at {str(path)!r}.")
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"The video {path.name!r} is empty (0 bytes).")
        if size > max_bytes:
            raise InputError(
                f"The video {path.name!r} is {size / 1e6:.1f} MB; the limit is "
                f"{max_bytes / 1e6:.0f} MB."
            )
        return str(path), path.name
    name = "the video"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "getvalue") or hasattr(source, "read"):
        raw = getattr(source, "name", None)
        if isinstance(raw, str) and raw:
            name = os.path.basename(raw)
        data = source.getvalue() if hasattr(source, "getvalue") else source.read(max_bytes + 1)
        data = bytes(data or b"")
    elif source is None:
        raise InputError("No video was given.")
    else:
        raise InputError(f"Cannot read a video from a {type(source).__name__}.")
    if not data:
        raise InputError("The video is empty (0 bytes).")
    if len(data) > max_bytes:
        raise InputError(
            f"The video is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB."
        )
    suffix = Path(name).suffix if name != "the video" and Path(name).suffix else ".mp4"
    path = os.path.join(workdir, "video" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    return path, name


def extract_faces(
    video: VideoSource,
    fps: float = 5.0,
    size: int = 64,
    max_frames: int = 300,
    gray: bool = False,
    margin: float = 0.1,
    max_seconds: float | None = None,
    max_bytes: int = VIDEO_MAX_BYTES,
) -> FaceTrack:
    """Sample ``video`` at ``fps`` frames per second and crop the speaker's face from each.

    ``video`` is a path, bytes or a file-like object. At most ``max_frames`` frames are sampled
    (the rate is lowered to spread them over the whole video). Videos longer than the audio
    duration limit (``SER_MAX_SECONDS``, 60 s) are refused. Raises :class:`InputError` for an
    unreadable video, a video without frames, or one in which no face is found.
    """
    if fps <= 0 or size <= 0 or max_frames <= 0:
        raise ValueError("fps, size and max_frames must be positive")
    limit_s = max_seconds_limit(max_seconds)
    with tempfile.TemporaryDirectory(prefix="ser-video-") as workdir:
        path, name = _video_path(video, workdir, max_bytes)
        what = "The video" if name == "the video" else f"The video {name!r}"
        cap = cv2.VideoCapture(
            path, cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10_000],
        )
        try:
            if not cap.isOpened():
                raise InputError(
                    f"{what} could not be read: it is damaged or not a video. "
                    "Use MP4, AVI, MKV, MOV or WebM."
                )
            return _sample(cap, what, fps, size, max_frames, gray, margin, limit_s)
        finally:
            cap.release()


def _sample(cap: cv2.VideoCapture, what: str, fps: float, size: int, max_frames: int,
            gray: bool, margin: float, limit_s: float) -> FaceTrack:
    native_fps = cap.get(cv2.CAP_PROP_FPS)
    native_ok = np.isfinite(native_fps) and 0 < native_fps <= 1000
    n_frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    duration = n_frames / native_fps if native_ok and n_frames > 0 else None
    if duration is not None and duration > limit_s:
        raise InputError(
            f"{what} is {duration:.1f} s long; the limit is {limit_s:g} s. "
            "Cut it to a shorter clip and try again."
        )
    rate = min(fps, native_fps) if native_ok else fps
    if duration is not None and duration * rate > max_frames:
        rate = max_frames / duration

    crops, times, boxes, detected = [], [], [], []
    width = height = 0
    last_box: tuple[int, int, int, int] | None = None
    index, checked = -1, 0
    next_t = 0.0
    deadline = time.monotonic() + DECODE_TIMEOUT_S
    while checked < max_frames:
        if not cap.grab():
            break
        index += 1
        t = index / native_fps if native_ok else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if t > limit_s:  # the header understated the length
            raise InputError(
                f"{what} is longer than {limit_s:g} s, the limit. Cut it to a shorter clip and try again."
            )
        if time.monotonic() > deadline:
            raise InputError(f"{what} took too long to read; use a shorter video.")
        # take the first frame at or after each sampling instant (half a frame of slack)
        if t + (0.5 / native_fps if native_ok else 0.0) < next_t:
            continue
        ok, frame = cap.retrieve()
        if not ok or frame is None or frame.ndim != 3:
            continue
        next_t += 1.0 / rate
        while next_t <= t:  # a gap in the stream: skip the instants already passed
            next_t += 1.0 / rate
        checked += 1
        height, width = frame.shape[:2]
        box = detect_face(frame)
        if box is None and last_box is None:
            continue  # before the first detection: dropped (see module docstring)
        found = box is not None
        last_box = box if found else last_box
        crops.append(crop_face(frame, last_box, size, margin, gray))
        times.append(t)
        boxes.append(last_box)
        detected.append(found)

    if checked == 0:
        raise InputError(f"{what} has no readable frames: it is damaged or empty.")
    if not crops:
        raise InputError(
            f"No face was found in the video ({checked} frames checked). Use a video in which "
            "the speaker's face is visible and turned to the camera."
        )
    return FaceTrack(
        crops=np.stack(crops).astype(np.uint8),
        times=np.asarray(times, dtype=np.float64),
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
        detected=np.asarray(detected, dtype=bool),
        frame_size=(int(width), int(height)),
        fps=float(rate),
        frames_checked=checked,
    )
