"""Drawn talking faces for the demo corpus: one short mp4 per utterance.

A face is drawn with OpenCV on a small square canvas. The emotion is carried by the
expressive regions the facial-action literature names (brows, eyes, mouth):

* angry   - brows lowered and drawn together, eyes narrowed, lips pressed / corners down a little
* happy   - smile (mouth corners up, wider mouth), cheeks raised (eyes squint a little)
* sad     - inner brow corners raised, mouth corners down, lids a little lowered
* neutral - level brows, open eyes, straight mouth

The mouth opening follows the speech energy envelope frame by frame; the head jitters by a
few pixels. The face is shaded (darker eye sockets and sides, lighter nose bridge and cheeks)
so that OpenCV's frontal-face Haar cascade finds it, as it would a photographed face.

`FaceStyle` is what differs per voice (skin tone, size, position); `Expression` is what
differs per emotion. `render_face_video` writes the mp4 and returns the face regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = 160
FPS = 20
REGION_NAMES = ("left_brow", "right_brow", "left_eye", "right_eye", "mouth")

# Skin tones in BGR, light to dark (a spread of the Fitzpatrick range, picked by eye).
_SKIN_TONES = [
    (200, 215, 240), (170, 195, 230), (140, 175, 215), (110, 150, 195),
    (85, 120, 170), (60, 90, 135), (45, 65, 100),
]


# Hair colours in BGR: black, dark brown, brown, auburn, dark blond, grey.
_HAIR = [(20, 20, 25), (25, 35, 55), (35, 55, 90), (30, 50, 110), (70, 110, 150), (120, 120, 125)]


@dataclass(frozen=True)
class FaceStyle:
    """How one voice's face looks: fixed for all its utterances."""

    skin: tuple[int, int, int]  # BGR
    background: tuple[int, int, int]  # BGR
    hair: tuple[int, int, int]  # BGR
    face_width: float  # pixels
    center_x: float
    center_y: float


@dataclass(frozen=True)
class Expression:
    """Geometry of one emotion's face, in units of the face width (signs: + is up / open)."""

    brow_inner: float  # inner brow corner raise (sad +, angry -)
    brow_outer: float  # outer brow corner raise
    brow_gap: float  # half distance between inner brow ends
    eye_open: float  # lid opening (1 = neutral)
    mouth_curve: float  # corner lift (happy +, sad -)
    mouth_width: float  # half width of the mouth
    cheek_raise: float  # 0..1, lifts lower lids and brightens cheeks (happy)


# Action-unit-like expression prototypes; per-utterance noise is added in `expression_for`.
EXPRESSIONS: dict[str, Expression] = {
    "neu": Expression(0.0, 0.0, 0.085, 1.0, 0.0, 0.16, 0.0),
    "ang": Expression(-0.07, 0.035, 0.055, 0.55, -0.025, 0.14, 0.0),
    "hap": Expression(0.015, 0.015, 0.09, 0.8, 0.075, 0.21, 1.0),
    "sad": Expression(0.075, -0.04, 0.08, 0.75, -0.06, 0.15, 0.0),
}


def face_style_for(rng: np.random.Generator) -> FaceStyle:
    """Draw one voice's face: skin tone, background, face size and position."""
    skin = np.array(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], float)
    skin = np.clip(skin + rng.normal(0, 8, 3), 20, 250)
    skin_luma = float(skin.mean())
    # background contrasts with the skin so the face outline is visible
    bg_level = rng.uniform(30, 90) if skin_luma > 130 else rng.uniform(150, 220)
    background = np.clip(bg_level + rng.normal(0, 15, 3), 0, 255)
    hair = np.array(_HAIR[int(rng.integers(len(_HAIR)))], float) * rng.uniform(0.8, 1.2)
    width = rng.uniform(0.58, 0.70) * FRAME_SIZE
    return FaceStyle(
        skin=tuple(int(v) for v in skin),
        background=tuple(int(v) for v in background),
        hair=tuple(int(v) for v in np.clip(hair, 0, 255)),
        face_width=float(width),
        center_x=float(FRAME_SIZE / 2 + rng.uniform(-6, 6)),
        center_y=float(FRAME_SIZE / 2 + 6 + rng.uniform(-5, 5)),
    )


def expression_for(label: str, rng: np.random.Generator, intensity: float = 1.0) -> Expression:
    """The class prototype scaled by ``intensity`` (blended with neutral) plus a little noise."""
    neutral, target = asdict(EXPRESSIONS["neu"]), asdict(EXPRESSIONS[label])
    values = {}
    for key in target:
        value = neutral[key] + intensity * (target[key] - neutral[key])
        values[key] = value + rng.normal(0, 0.006 if key != "eye_open" else 0.05)
    values["eye_open"] = float(np.clip(values["eye_open"], 0.35, 1.1))
    values["cheek_raise"] = float(np.clip(values["cheek_raise"], 0.0, 1.0))
    return Expression(**values)


def _shaded_face(style: FaceStyle) -> np.ndarray:
    """Background, hair and the face oval with soft shading (sides and sockets darker)."""
    size = FRAME_SIZE
    image = np.empty((size, size, 3), np.float32)
    image[:] = style.background
    w = style.face_width
    h = w * 1.32
    cx, cy = style.center_x, style.center_y
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # hair: a larger dark oval behind and above the face
    hair = ((xx - cx) / (0.58 * w)) ** 2 + ((yy - cy + 0.12 * h) / (0.56 * h)) ** 2 <= 1.0
    image[hair] = style.hair
    r2 = ((xx - cx) / (0.5 * w)) ** 2 + ((yy - cy) / (0.5 * h)) ** 2
    face = r2 <= 1.0
    # Lambert-like falloff towards the outline
    shade = 1.0 - 0.35 * np.clip(r2, 0, 1) ** 1.5
    # eye sockets and the sides of the nose are darker, the bridge and cheeks lighter
    for side in (-1, 1):
        ex, ey = cx + side * 0.2 * w, cy - 0.08 * h
        socket = ((xx - ex) / (0.17 * w)) ** 2 + ((yy - ey) / (0.1 * h)) ** 2
        shade -= 0.28 * np.exp(-socket)
        cheek = ((xx - cx - side * 0.24 * w) / (0.14 * w)) ** 2 + ((yy - cy - 0.12 * h) / (0.09 * h)) ** 2
        shade += 0.08 * np.exp(-cheek)
    bridge = ((xx - cx) / (0.05 * w)) ** 2 + ((yy - cy + 0.02 * h) / (0.16 * h)) ** 2
    shade += 0.15 * np.exp(-bridge)
    skin = np.array(style.skin, np.float32)
    # a multiplicative and an absolute part, so dark skin keeps the contrast the cascade needs
    image[face] = np.clip(skin * shade[face, None] + 70.0 * (shade[face, None] - 1.0), 0, 255)
    # hairline over the forehead
    fringe = face & (yy < cy - 0.36 * h) & (((xx - cx) / (0.5 * w)) ** 2 + ((yy - cy + 0.5 * h) / (0.2 * h)) ** 2 <= 1)
    image[fringe] = style.hair
    return image.astype(np.uint8)


def _box(points: np.ndarray, pad: float) -> tuple[int, int, int, int]:
    x0, y0 = points.min(axis=0) - pad
    x1, y1 = points.max(axis=0) + pad
    return (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))


def draw_face(
    base: np.ndarray,
    style: FaceStyle,
    expression: Expression,
    mouth_open: float,
    offset: tuple[float, float],
    blink: float = 0.0,
) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """One frame: features drawn on the shaded face, shifted by ``offset`` (head jitter).

    ``mouth_open`` in 0..1 (speech energy), ``blink`` in 0..1 closes the lids.
    Returns the frame (BGR uint8) and the bounding box of each expressive region,
    ``(x0, y0, x1, y1)`` in pixels of this frame.
    """
    dx, dy = offset
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    frame = cv2.warpAffine(base, shift, (FRAME_SIZE, FRAME_SIZE), borderMode=cv2.BORDER_REPLICATE)
    w = style.face_width
    h = w * 1.32
    cx, cy = style.center_x + dx, style.center_y + dy
    e = expression
    skin = np.array(style.skin, float)
    dark = tuple(int(v) for v in np.clip(np.array(style.hair, float) * 0.8, 0, 255))
    boxes: dict[str, tuple[int, int, int, int]] = {}
    shift_bits = 4  # sub-pixel drawing
    scale = 1 << shift_bits

    def pts(points: np.ndarray) -> np.ndarray:
        return np.round(points * scale).astype(np.int32)

    if e.cheek_raise > 0.1:  # raised cheeks: lighter, rounder apples of the cheeks
        for side in (-1, 1):
            centre = (cx + side * 0.23 * w, cy + 0.1 * h - 0.03 * h * e.cheek_raise)
            color = tuple(int(v) for v in np.clip(skin * (1.0 + 0.12 * e.cheek_raise) + [0, 0, 12], 0, 255))
            cv2.ellipse(frame, tuple(pts(np.array(centre))), (int(0.1 * w * scale), int(0.06 * h * scale)),
                        0, 0, 360, color, -1, cv2.LINE_AA, shift_bits)
    for side, name in ((-1, "left"), (1, "right")):  # viewer's left / right
        ex, ey = cx + side * 0.2 * w, cy - 0.08 * h
        eye_w = 0.11 * w
        lid = max(0.0, e.eye_open * (1.0 - blink))
        eye_h = 0.055 * h * lid
        lower = 0.03 * h * e.cheek_raise  # raised cheeks push the lower lid up
        # eye: white, iris, pupil, lids as an almond polygon
        top = [(ex + t * eye_w, ey - eye_h * (1 - t * t)) for t in np.linspace(-1, 1, 9)]
        bottom = [(ex + t * eye_w, ey + max(0.25 * eye_h, eye_h * 0.8 - lower) * (1 - t * t))
                  for t in np.linspace(1, -1, 9)]
        almond = np.array(top + bottom)
        if lid > 0.08:
            cv2.fillPoly(frame, [pts(almond)], (225, 230, 235), cv2.LINE_AA, shift_bits)
            iris_r = min(0.055 * w, max(1.0, eye_h * 1.1))
            cv2.circle(frame, tuple(pts(np.array((ex, ey)))), int(iris_r * scale), (40, 45, 60), -1,
                       cv2.LINE_AA, shift_bits)
            cv2.circle(frame, tuple(pts(np.array((ex, ey)))), int(iris_r * 0.45 * scale), (10, 10, 10), -1,
                       cv2.LINE_AA, shift_bits)
        cv2.polylines(frame, [pts(np.array(top))], False, (25, 25, 30), 2, cv2.LINE_AA, shift_bits)
        boxes[f"{name}_eye"] = _box(almond, 2)
        # brow: inner end near the midline, outer end at the side
        inner = np.array((cx + side * (e.brow_gap * w), ey - 0.1 * h - e.brow_inner * h))
        outer = np.array((cx + side * 0.33 * w, ey - 0.095 * h - e.brow_outer * h))
        middle = (inner + outer) / 2 + np.array((0, -0.025 * h))
        brow = np.array([inner, middle, outer])
        cv2.polylines(frame, [pts(brow)], False, dark, max(2, int(round(0.04 * w))), cv2.LINE_AA, shift_bits)
        boxes[f"{name}_brow"] = _box(brow, 0.03 * w)
    # nose: shadowed sides and nostrils
    nose_tip = cy + 0.1 * h
    nose_dark = tuple(int(v) for v in np.clip(skin * 0.7, 0, 255))
    for side in (-1, 1):
        cv2.line(frame, tuple(pts(np.array((cx + side * 0.05 * w, cy - 0.02 * h)))),
                 tuple(pts(np.array((cx + side * 0.07 * w, nose_tip)))), nose_dark, 1, cv2.LINE_AA, shift_bits)
        cv2.circle(frame, tuple(pts(np.array((cx + side * 0.045 * w, nose_tip + 0.01 * h)))),
                   int(0.018 * w * scale), (30, 30, 40), -1, cv2.LINE_AA, shift_bits)
    # mouth: corners lifted by mouth_curve; opening from the energy envelope
    my = cy + 0.27 * h
    half = e.mouth_width * w * (1.0 - 0.15 * mouth_open)
    opening = (0.01 + 0.12 * float(np.clip(mouth_open, 0, 1))) * h
    t = np.linspace(-1, 1, 13)
    corner_lift = e.mouth_curve * h
    base_y = my - corner_lift * t * t  # a parabola: corners up for a smile, down for sadness
    upper = np.stack([cx + half * t, base_y - 0.35 * opening * (1 - t * t)], axis=1)
    lower = np.stack([cx + half * t, base_y + 0.65 * opening * (1 - t * t) + 0.004 * h], axis=1)[::-1]
    lips = np.concatenate([upper, lower])
    lip_color = tuple(int(v) for v in np.clip(skin * np.array([0.55, 0.5, 0.8]), 0, 255))
    cv2.polylines(frame, [pts(lips)], True, lip_color, 2, cv2.LINE_AA, shift_bits)
    cv2.fillPoly(frame, [pts(lips)], (20, 15, 45), cv2.LINE_AA, shift_bits)
    boxes["mouth"] = _box(lips, 2)
    frame = cv2.GaussianBlur(frame, (3, 3), 0.8)
    return frame, boxes


def energy_envelope(audio: np.ndarray, sample_rate: int, n_frames: int, fps: int = FPS) -> np.ndarray:
    """RMS energy per video frame, scaled to 0..1 against the clip's loud frames."""
    hop = sample_rate / fps
    rms = np.zeros(n_frames, np.float32)
    for i in range(n_frames):
        chunk = audio[int(i * hop): int((i + 1) * hop)]
        if chunk.size:
            rms[i] = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
    ref = float(np.percentile(rms, 95)) if n_frames else 0.0
    if ref <= 1e-6:
        return np.zeros(n_frames, np.float32)
    # gate out the noise floor: energy 20 dB below the loud frames keeps the mouth closed
    level = np.clip((20 * np.log10(np.maximum(rms, 1e-9) / ref) + 20) / 20, 0, 1)
    return level.astype(np.float32)


def render_face_video(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    label: str,
    style: FaceStyle,
    rng: np.random.Generator,
    intensity: float = 1.0,
    fps: int = FPS,
) -> dict:
    """Write an mp4 ('mp4v') of a face saying ``audio`` with the expression of ``label``.

    Returns the regions: ``{"fps", "size", "frames", "regions": {name: [x0,y0,x1,y1]},
    "offsets": [[dx, dy], ...]}``; the box of a region in frame i is its fixed box shifted by
    ``offsets[i]`` (see `regions_at`). The fixed boxes cover the region's extent over the clip.
    """
    n_frames = max(1, int(np.ceil(len(audio) / sample_rate * fps)))
    envelope = energy_envelope(audio, sample_rate, n_frames, fps)
    expression = expression_for(label, rng, intensity)
    base = _shaded_face(style)
    # head jitter: a smoothed random walk of a few pixels
    steps = rng.normal(0, 0.6, size=(n_frames, 2))
    walk = np.cumsum(steps, axis=0)
    walk -= np.linspace(0, 1, n_frames)[:, None] * walk[-1]  # drift back to the start
    offsets = np.clip(walk, -4, 4)
    blink_at = set()
    t = int(rng.integers(fps // 2, 3 * fps))
    while t < n_frames:
        blink_at.update({t, t + 1})
        t += int(rng.integers(2 * fps, 5 * fps))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (FRAME_SIZE, FRAME_SIZE))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an mp4 writer for {path}")
    union: dict[str, list[int]] = {}
    try:
        for i in range(n_frames):
            dx, dy = float(offsets[i, 0]), float(offsets[i, 1])
            frame, boxes = draw_face(base, style, expression, float(envelope[i]), (dx, dy),
                                     blink=1.0 if i in blink_at else 0.0)
            writer.write(frame)
            for name, (x0, y0, x1, y1) in boxes.items():
                # store relative to zero head offset
                rel = [x0 - int(np.floor(dx)), y0 - int(np.floor(dy)), x1 - int(np.floor(dx)), y1 - int(np.floor(dy))]
                if name in union:
                    u = union[name]
                    union[name] = [min(u[0], rel[0]), min(u[1], rel[1]), max(u[2], rel[2]), max(u[3], rel[3])]
                else:
                    union[name] = rel
    finally:
        writer.release()
    return {
        "fps": fps,
        "size": [FRAME_SIZE, FRAME_SIZE],
        "frames": n_frames,
        "regions": {name: union[name] for name in REGION_NAMES},
        "offsets": [[int(np.floor(x)), int(np.floor(y))] for x, y in offsets],
        "expression": {k: round(float(v), 4) for k, v in asdict(expression).items()},
    }


def regions_at(face: dict, frame: int) -> dict[str, tuple[int, int, int, int]]:
    """Bounding boxes ``(x0, y0, x1, y1)`` of the expressive regions in one frame."""
    dx, dy = face["offsets"][min(frame, len(face["offsets"]) - 1)]
    return {name: (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy) for name, b in face["regions"].items()}
