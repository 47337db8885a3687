"""The demo corpus: synthetic emotional speech with ground truth (``python -m ser_core corpus``).

No emotional speech ships in any package, so the project makes its own, reproducibly from a
seed, with Debian's espeak-ng (many voices × variants). Each utterance has

* a **label** (ang / hap / sad / neu) carried by the **voice**: pitch level and range, speaking
  rate, loudness and pauses are drawn from per-class prosody profiles that overlap (no single
  feature separates the classes), plus per-voice offsets and optional background noise;
* **words** from templates. Most utterances say words of their own emotion ("furious",
  "wonderful", "miserable"), but some say another emotion's words (``conflict``: "I'm really
  happy right now" said angrily — the label follows the voice) and some have no emotional word at
  all, so that neither modality alone suffices. ``text_emotion`` records what the words say;
* the emotion-bearing words with their index in the transcript and their times, found by
  forced alignment of the known text to the synthesised audio (``ser_core.asr.align``);
* optionally a talking-face video (``--video``, see ``corpus_faces``) whose brows, eyes and
  mouth carry the label, with the expressive regions recorded.

``--words-decide`` makes a companion set for training (not the default corpus): every utterance
says its own emotion's word (neutral: no emotional word) and is spoken *calmly*: its prosody is the
neutral profile moved only ``--voice-strength`` of the way towards its label's (0 = the neutral
voice, 1 = the full profile), so the voice alone hardly tells anger from neutral and the words
decide. Mixed with the default corpus it teaches a model that when the voice is calm the words
carry the emotion, so the attention over words has something to find (issue 11). At strength 0
it contradicts the default corpus's neutral sentences with emotional words (their label follows
the neutral voice), which ``train --leave-out-conflicts`` then leaves out; above 0 it does not.
Same seed → same voice split as the default corpus, other utterances (ids ``words_…``). Written to
the cache's ``demo_calm`` folder, it is the corpus ``demo-calm`` of a training mix.

Splits are by voice: test and validation voices never speak in training.

Layout written::

    <out>/manifest.csv    path,label,transcript,speaker,session,split,duration,video,
                          text_emotion,conflict,emotion_words,voice,prosody
    <out>/corpus.json     seed, parameters, counts per class and split, tool versions
    <out>/faces.json      per-utterance face regions (with --video)
    <out>/wav/<id>.wav    16 kHz mono PCM16
    <out>/video/<id>.mp4  with --video
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import InputError
from .paths import SAMPLES_DIR, calm_corpus_dir, default_corpus_dir

SAMPLE_RATE = 16000
CLASSES = ("ang", "hap", "neu", "sad")
#: how far the calm-voice set's voices lean towards their label's prosody (``--voice-strength``)
CALM_VOICE_STRENGTH = 0.35

# --- words ---------------------------------------------------------------------------------
EMOTION_WORDS = {
    "ang": ["furious", "angry", "outraged", "livid", "hate", "disgusted", "mad", "irritated"],
    "hap": ["happy", "wonderful", "delighted", "thrilled", "love", "fantastic", "glad", "cheerful"],
    "sad": ["sad", "miserable", "lonely", "heartbroken", "hopeless", "gloomy", "unhappy", "depressed"],
}
NOUNS = ["meeting", "letter", "weekend", "garden", "result", "train", "report", "party", "news",
         "dinner", "project", "phone call", "holiday", "exam", "neighbour", "car"]
TIMES = ["today", "this morning", "right now", "again", "last night", "this week"]
# {w} = an emotion word, {n} = a noun, {t} = a time expression
EMOTIONAL_TEMPLATES = [
    "I am really {w} about the {n}",
    "I feel so {w} {t}",
    "Honestly the {n} made me {w}",
    "I'm {w} right now",
    "We were all {w} after the {n}",
    "You know I am {w} about this {n}",
    "That {n} left me {w} {t}",
]
NEUTRAL_TEMPLATES = [
    "The {n} starts at nine {t}",
    "Please put the {n} on the table",
    "We talked about the {n} {t}",
    "I think the {n} is on Tuesday",
    "She sent me the {n} {t}",
    "The {n} is in the other room",
    "They moved the {n} to the second floor",
]

# --- voices --------------------------------------------------------------------------------
ESPEAK_LANGS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                "en-us-nyc"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]

# Per-class prosody (espeak-ng units): pitch base 0–99, pitch range 0–99, speed wpm,
# amplitude 0–200, word gap (10 ms units). Means and spreads overlap on purpose.
PROSODY = {
    #        pitch       range       speed        amp          gap
    "ang": ((58, 9), (62, 14), (190, 18), (165, 22), (0.5, 0.6)),
    "hap": ((68, 9), (80, 12), (178, 16), (130, 18), (0.5, 0.6)),
    "neu": ((47, 8), (38, 12), (160, 14), (105, 14), (1.0, 0.8)),
    "sad": ((32, 8), (22, 10), (128, 14), (75, 14), (5.0, 2.0)),
}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng language × variant and personal offsets."""

    name: str
    pitch_offset: float
    speed_scale: float


@dataclass
class Plan:
    """Everything needed to synthesise one utterance (drawn from the seed in the parent)."""

    id: str
    label: str
    voice: Voice
    transcript: str
    text_emotion: str
    emotion_index: int | None
    pitch: int
    range: int
    speed: int
    amplitude: int
    gap: int
    snr_db: float | None
    seed: int
    split: str
    video: bool


def make_voices() -> list[Voice]:
    """The voice pool (deterministic): every language × variant with fixed personal offsets."""
    rng = np.random.default_rng(12345)
    voices = []
    for lang in ESPEAK_LANGS:
        for variant in ESPEAK_VARIANTS:
            voices.append(Voice(f"{lang}+{variant}", float(rng.normal(0, 6)), float(rng.uniform(0.92, 1.08))))
    return voices


def split_voices(voices: list[Voice], seed: int) -> dict[str, str]:
    """Voice → split: ~20 % test, ~10 % validation, the rest train (never shared)."""
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(len(voices))
    n_test = max(1, round(0.2 * len(voices)))
    n_val = max(1, round(0.1 * len(voices)))
    split = {}
    for rank, i in enumerate(order):
        split[voices[i].name] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def _sentence(rng: np.random.Generator, text_emotion: str) -> tuple[str, int | None]:
    """A transcript and the index of its emotion word (None for a sentence without one)."""
    noun, when = NOUNS[rng.integers(len(NOUNS))], TIMES[rng.integers(len(TIMES))]
    if text_emotion == "none":
        template = NEUTRAL_TEMPLATES[rng.integers(len(NEUTRAL_TEMPLATES))]
        return template.format(n=noun, t=when), None
    word = EMOTION_WORDS[text_emotion][rng.integers(len(EMOTION_WORDS[text_emotion]))]
    template = EMOTIONAL_TEMPLATES[rng.integers(len(EMOTIONAL_TEMPLATES))]
    text = template.format(w=word, n=noun, t=when)
    return text, text.split().index(word)


def calm_profile(label: str, strength: float) -> tuple[tuple[float, float], ...]:
    """The neutral prosody moved ``strength`` (0–1) of the way towards ``label``'s: means blended,
    spreads the neutral ones."""
    return tuple((n_mean + strength * (l_mean - n_mean), n_sd)
                 for (n_mean, n_sd), (l_mean, _) in zip(PROSODY["neu"], PROSODY[label]))


def plan_corpus(n: int, seed: int, video: bool, words_decide: bool = False,
                voice_strength: float = CALM_VOICE_STRENGTH) -> list[Plan]:
    """Draw every utterance's label, voice, words and prosody from one seeded generator.

    ``words_decide``: the companion set of the module docstring (calm voices at
    ``voice_strength``, the label's own words), drawn from its own stream so that its utterances
    differ from the default corpus's while the voice split (from ``seed``) is the same."""
    if not 0.0 <= voice_strength <= 1.0:
        raise InputError(f"The voice strength must lie between 0 and 1, not {voice_strength!r}.")
    rng = np.random.default_rng([seed, 1] if words_decide else seed)
    voices = make_voices()
    split = split_voices(voices, seed)
    plans = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]  # balanced classes
        voice = voices[rng.integers(len(voices))]
        # what the words say: mostly the label's own emotion; some conflict, some no word
        r = rng.random()
        emotional = [c for c in EMOTION_WORDS if c != label]
        if words_decide:  # the words are the label; neutral = no emotional word
            text_emotion = "none" if label == "neu" else label
        elif label == "neu":
            text_emotion = "none" if r < 0.75 else emotional[rng.integers(len(emotional))]
        elif r < 0.6:
            text_emotion = label
        elif r < 0.8:
            text_emotion = emotional[rng.integers(len(emotional))]
        else:
            text_emotion = "none"
        transcript, index = _sentence(rng, text_emotion)
        (pm, ps), (rm, rs), (sm, ss), (am, as_), (gm, gs) = (
            calm_profile(label, voice_strength) if words_decide else PROSODY[label])
        plans.append(Plan(
            id=f"{'words' if words_decide else 'demo'}_{i:05d}", label=label, voice=voice, transcript=transcript,
            text_emotion=text_emotion, emotion_index=index,
            pitch=int(np.clip(rng.normal(pm, ps) + voice.pitch_offset, 2, 97)),
            range=int(np.clip(rng.normal(rm, rs), 0, 99)),
            speed=int(np.clip(rng.normal(sm, ss) * voice.speed_scale, 90, 260)),
            amplitude=int(np.clip(rng.normal(am, as_), 30, 200)),
            gap=int(np.clip(round(rng.normal(gm, gs)), 0, 12)),
            snr_db=None if rng.random() < 0.5 else float(rng.uniform(12, 35)),
            seed=int(rng.integers(2**31)), split=split[voice.name], video=video,
        ))
    return plans


# --- synthesis -----------------------------------------------------------------------------
def synthesize(plan: Plan) -> np.ndarray:
    """espeak-ng speaks the transcript with the plan's prosody → float32 16 kHz mono."""
    import soxr

    ssml = (f'<speak><prosody range="{_range_word(plan.range)}">{plan.transcript}</prosody></speak>')
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        cmd = ["espeak-ng", "-m", "-v", plan.voice.name, "-p", str(plan.pitch), "-s", str(plan.speed),
               "-a", str(plan.amplitude), "-g", str(plan.gap), "-w", str(wav), ssml]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    rng = np.random.default_rng(plan.seed)
    # a little silence around the speech, as in a recording
    lead, tail = (int(rng.uniform(0.05, 0.25) * SAMPLE_RATE) for _ in range(2))
    audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(tail, np.float32)])
    if plan.snr_db is not None:
        speech_power = float(np.mean(audio[audio != 0] ** 2)) if np.any(audio) else 1e-6
        noise = rng.normal(0, np.sqrt(speech_power / 10 ** (plan.snr_db / 10)), audio.shape)
        audio = audio + noise.astype(np.float32)
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return audio.astype(np.float32)


def _range_word(value: int) -> str:
    """espeak-ng's SSML pitch range keyword for a 0–99 value."""
    return ["x-low", "low", "medium", "high", "x-high"][min(4, value // 20)]


def _render(args: tuple[Plan, str]) -> dict:
    """Worker: synthesise, align, (render the face), write files; returns the manifest row."""
    from .asr import align

    plan, out = args
    out_dir = Path(out)
    audio = synthesize(plan)
    wav_rel = f"wav/{plan.id}.wav"
    sf.write(out_dir / wav_rel, audio, SAMPLE_RATE, subtype="PCM_16")
    audio16 = sf.read(out_dir / wav_rel, dtype="float32")[0]  # what a loader will see
    words = align(audio16, plan.transcript)
    emotion_words = []
    if plan.emotion_index is not None:
        w = words[plan.emotion_index]
        emotion_words.append({"word": w.text, "index": plan.emotion_index,
                              "start": round(w.start, 3), "end": round(w.end, 3)})
    face = None
    video_rel = ""
    if plan.video:
        from .corpus_faces import face_style_for, render_face_video

        video_rel = f"video/{plan.id}.mp4"
        # one face per voice, stable across processes (crc32, not the salted built-in hash)
        style = face_style_for(np.random.default_rng(zlib.crc32(plan.voice.name.encode())))
        face = render_face_video(out_dir / video_rel, audio16, SAMPLE_RATE, plan.label, style,
                                 np.random.default_rng(plan.seed + 1))
    return {
        "path": wav_rel, "label": plan.label, "transcript": plan.transcript,
        "speaker": plan.voice.name, "session": plan.split, "split": plan.split,
        "duration": round(len(audio16) / SAMPLE_RATE, 3), "video": video_rel,
        "text_emotion": plan.text_emotion,
        "conflict": str(plan.text_emotion not in ("none", plan.label)).lower(),
        "emotion_words": json.dumps(emotion_words),
        "voice": plan.voice.name,
        "prosody": json.dumps({"pitch": plan.pitch, "range": plan.range, "speed": plan.speed,
                               "amplitude": plan.amplitude, "gap": plan.gap, "snr_db": plan.snr_db}),
        "_face": face,
    }


def generate_corpus(
    out_dir: Path | str = None,
    n_utterances: int = 2000,
    seed: int = 0,
    video: bool = False,
    workers: int = 2,
    progress: bool = True,
    force: bool = False,
    plans: list[Plan] | None = None,
    words_decide: bool = False,
    voice_strength: float = CALM_VOICE_STRENGTH,
) -> Path:
    """Write the demo corpus (or its ``words_decide`` companion set); returns the manifest path.
    Same seed → same files."""
    from tqdm import tqdm

    if plans is None and (isinstance(n_utterances, bool) or not isinstance(n_utterances, int) or n_utterances < 1):
        raise InputError(f"The number of utterances must be a whole number >= 1, not {n_utterances!r}.")
    if plans is not None and not plans:
        raise InputError("No utterances to generate (the plan list is empty).")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"The seed must be a whole number >= 0, not {seed!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a whole number >= 1, not {workers!r}.")
    out = Path(out_dir) if out_dir else default_corpus_dir()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another --out.")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out} is not empty; pass --force to overwrite it.")
        _remove_own_outputs(out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    plans = plans if plans is not None else plan_corpus(n_utterances, seed, video, words_decide,
                                                                  voice_strength)
    if any(p.video for p in plans):
        (out / "video").mkdir(exist_ok=True)
    started = time.perf_counter()
    jobs = [(p, str(out)) for p in plans]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(tqdm(pool.map(_render, jobs, chunksize=8), total=len(jobs),
                             desc="demo corpus", disable=not progress))
    else:
        rows = [_render(j) for j in tqdm(jobs, desc="demo corpus", disable=not progress)]
    faces = {}
    for plan, row in zip(plans, rows):
        face = row.pop("_face")
        if face is not None:
            faces[plan.id] = face
    fields = list(rows[0])
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if faces:
        (out / "faces.json").write_text(json.dumps(faces))
    summary = {
        "seed": seed, "utterances": len(rows), "video": video, "words_decide": words_decide,
        "voice_strength": voice_strength if words_decide else None,
        "classes": dict(sorted(Counter(r["label"] for r in rows).items())),
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "voices": {s: len({r["speaker"] for r in rows if r["split"] == s}) for s in ("train", "val", "test")},
        "text_emotion": dict(sorted(Counter(r["text_emotion"] for r in rows).items())),
        "conflict": sum(r["conflict"] == "true" for r in rows),
        "prosody_profiles": {k: [list(v) for v in p] for k, p in PROSODY.items()},
        "espeak_ng": _espeak_version(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    return out / "manifest.csv"


# What generate_corpus writes: --force replaces these and leaves anything else in the folder alone
# (so `--out ~ --force` cannot delete a home folder).
OWN_OUTPUTS = ("wav", "video", "manifest.csv", "corpus.json", "faces.json")


def _remove_own_outputs(out: Path) -> None:
    for name in OWN_OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "missing"


def write_samples(out_dir: Path | str = SAMPLES_DIR, seed: int = 7) -> Path:
    """The committed example set: 12 short clips, 3 per class, incl. conflicts, no-word
    utterances, and one talking-face video per class. Deterministic."""
    rng = np.random.default_rng(seed)
    pool = plan_corpus(400, seed, video=False)
    chosen: list[Plan] = []
    for label in CLASSES:
        mine = [p for p in pool if p.label == label and p.split == "test"]
        kinds = {
            "congruent": [p for p in mine if p.text_emotion == label],
            "conflict": [p for p in mine if p.text_emotion not in ("none", label)],
            "none": [p for p in mine if p.text_emotion == "none"],
        }
        picks = [kinds["congruent"] or mine, kinds["conflict"] or mine, kinds["none"] or mine]
        for j, options in enumerate(picks):
            p = options[int(rng.integers(len(options)))]
            p.video = j == 0
            chosen.append(p)
    # --force replaces only the generator's own outputs, so samples/README.md stays
    return generate_corpus(Path(out_dir), plans=chosen, workers=1, progress=False, force=True)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus", help="generate the synthetic demo corpus (espeak-ng)",
        description="Generate the demo corpus reproducibly from a seed: four classes carried by "
                    "prosody and words, conflicts, voice-disjoint splits, optional face videos.")
    p.add_argument("--out", default=None,
                   help=f"the folder (default {default_corpus_dir()}; with --words-decide {calm_corpus_dir()})")
    p.add_argument("--n", type=int, default=2000, help="number of utterances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video", action="store_true", help="also render a talking-face video per utterance")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    p.add_argument("--words-decide", action="store_true",
                   help="the calm-voice set for training (`train --corpus demo-calm`): every sentence says "
                        "its label's word, every voice calm (see --voice-strength)")
    p.add_argument("--voice-strength", type=float, default=CALM_VOICE_STRENGTH,
                   help="with --words-decide: how far the calm voice leans towards its label's prosody "
                        "(0 = neutral, 1 = the full profile)")
    p.add_argument("--samples", action="store_true", help="(re)write the committed sample set in samples/")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if shutil.which("espeak-ng") is None:
        raise InputError("espeak-ng is not installed: `apt-get install espeak-ng` (or run setup.sh).")
    if args.samples:
        print(f"wrote {write_samples()}")
        return 0
    if args.out is None:
        args.out = str(calm_corpus_dir() if args.words_decide else default_corpus_dir())
    if args.words_decide and Path(args.out).resolve() == default_corpus_dir().resolve():
        raise InputError("The calm-voice set must not replace the demo corpus: give it its own --out.")
    manifest = generate_corpus(args.out, args.n, args.seed, args.video, args.workers, True, args.force,
                               words_decide=args.words_decide, voice_strength=args.voice_strength)
    summary = json.loads((manifest.parent / "corpus.json").read_text())
    print(f"wrote {manifest}")
    print(json.dumps({k: summary[k] for k in ("utterances", "classes", "splits", "voices", "conflict",
                                              "seconds")}))
    return 0


