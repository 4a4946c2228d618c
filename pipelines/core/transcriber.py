"""The one transcriber (docs/architecture.md, invariant 1): a Whisper model loaded once (through
:class:`~pipelines.core.whisper.WhisperAdapter`), transcribing batches of chunks that may come from many files.

It plans the work in rounds: short chunks sharing a language and prompt are packed into shared 30 s windows
(:mod:`pipelines.core.packing`), every window or piece is decoded once per round in batches of up to
``model.batch_size`` (:func:`pipelines.core.decoding.decode_pieces`: one encoder call, one batched beam search with
timestamps, openai/whisper's temperature fallback, the no-speech test, segments and word timestamps), packed
windows are split back per chunk, and decodes that stopped early are resumed in the next round.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.coverage import Coverage, chunk_coverage, gaps, word_spans
from pipelines.core.decoding import Outcome, Piece, decode_pieces, to_segments
from pipelines.core.errors import TranscriptionError
from pipelines.core.options import DecodingConfig, ModelConfig
from pipelines.core.packing import split_window
from pipelines.core.rounds import (MIN_REMAINDER_SAMPLES, Item, Pending, batch_sizes, batches, plan_items, settle,
                                   split_sentences)
from pipelines.core.schema import Segment
from pipelines.core.whisper import WhisperAdapter

__all__ = ["Chunk", "ChunkResult", "Transcriber", "batch_sizes"]

log = logging.getLogger(__name__)

MAX_ROUNDS = 12  # decode rounds per call; each round finishes or shortens every piece, so this is a safety net


@dataclass(frozen=True)
class Chunk:
    """One piece of audio to transcribe.

    ``samples``: float32, shape (n_samples,), 16 kHz mono, at most 30 s. ``key`` names the file it came from and
    ``index`` its place in that file; ``offset_s`` is where it starts in the file (seconds). ``language`` and
    ``prompt`` override the config's for this chunk's file. Chunks are packed into shared windows only with chunks
    of the same ``pack_group`` (the job uses the file's folder: same source, same speakers; None packs with
    any other None). ``speech`` holds the VAD speech runs inside the chunk as ``(start, end)`` seconds of chunk
    time (None: unknown, the VAD did not run), for the dropped-speech guard and the coverage measures.
    """

    key: str
    index: int
    offset_s: float
    samples: np.ndarray
    language: Optional[str] = None
    prompt: Optional[str] = None
    pack_group: Optional[str] = None
    speech: Optional[tuple[tuple[float, float], ...]] = None

    @property
    def duration_s(self) -> float:
        """Duration in seconds (at :data:`~pipelines.core.constants.SAMPLE_RATE`)."""
        return self.samples.shape[0] / SAMPLE_RATE


@dataclass(frozen=True)
class ChunkResult:
    """The transcription of one :class:`Chunk`; segment and word times are seconds of chunk time (0 = chunk start).
    ``coverage`` measures its words against its VAD speech (None when the chunk's speech is unknown) and
    ``redecoded`` counts the stretches the dropped-speech guard decoded again."""

    key: str
    index: int
    offset_s: float
    duration_s: float
    language: str
    language_probability: float
    segments: tuple[Segment, ...]
    coverage: Optional[Coverage] = None
    redecoded: int = 0


class Transcriber:
    """A Whisper model, loaded once in ``__init__``; :meth:`transcribe_chunks` does the work.

    Used unchanged by the batch job's actor pool and the Serve deployment. Chunks go to the model
    ``model_cfg.batch_size`` at a time.

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be found or loaded, or ``require_cuda`` is set and no CUDA device is seen.
    """

    def __init__(self, model_cfg: ModelConfig, decoding: DecodingConfig):
        self.model_cfg = model_cfg
        self.decoding = decoding
        self.batch_size = model_cfg.batch_size
        self.whisper = WhisperAdapter.load(model_cfg)
        self.multilingual = self.whisper.is_multilingual
        self.calls = 0  # generate batches run, for tests and metrics
        self.chunks_seen = 0  # 30 s windows decoded (packed windows and pieces alone)
        #: what the last :meth:`transcribe_chunks` call did: ``rounds``, ``windows`` (30 s windows decoded),
        #: ``packed_windows`` (of those, windows holding several pieces), ``resumed`` (rests of unfinished pieces
        #: decoded again in a later round), ``rest_windows`` (windows those rests were decoded in) and
        #: ``redecoded`` (stretches of speech without words that the dropped-speech guard decoded again)
        self.last_stats: dict[str, int] = {}
        self._count_lock = threading.Lock()
        # CTranslate2 holds num_workers model replicas (inter_threads) and releases the GIL while it runs, so that
        # many batches of a round run at once from as many Python threads. prefetch_batches more threads keep a
        # batch queued at CTranslate2 while others do their CPU work (features before, words and segments after).
        self.workers = max(1, model_cfg.num_workers)
        self.threads = self.workers + model_cfg.prefetch_batches
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ct2") if self.threads > 1 else None

    def detect_language(self, chunks: Sequence[Chunk]) -> list[tuple[str, float]]:
        """Language code and probability for each chunk, from one encoder pass per batch.

        An English-only model answers ``("en", 1.0)`` without running.
        """
        if not self.multilingual:
            return [("en", 1.0)] * len(chunks)
        out: list[tuple[str, float]] = []
        for start in range(0, len(chunks), self.batch_size):
            part = chunks[start : start + self.batch_size]
            encoded = self.whisper.encode(np.stack([self.whisper.features(c.samples) for c in part]))
            out.extend(self.whisper.detect_language(encoded))
        return out

    # -------------------------------------------------------------------------------------------------- main entry
    def transcribe_chunks(self, chunks: Sequence[Chunk], decoding: Optional[DecodingConfig] = None) -> list[ChunkResult]:
        """Transcribe ``chunks`` (from any number of files) in batches; results come back in input order.

        A file's language is the chunk's ``language``, else ``decoding.language``, else detected on the file's
        first chunk given here (so pass all chunks of a file in one call).

        Work goes in rounds. Each round decodes every pending piece once: with ``decoding.pack_short_chunks``,
        short pieces sharing a language and prompt are packed into shared 30 s windows (see
        :mod:`pipelines.core.packing`) and their words split back per piece. As in ``WhisperModel.transcribe``, a
        decode of a piece alone that stops at a timestamp before the end of its audio (an unfinished last
        segment) is resumed from that timestamp in the next round; with packing on, that rest (at most 30 s,
        usually a few seconds: Whisper stops at a segment boundary) is packed with other pieces of its group under
        the chunk's own prompt, and conditioned on the text so far only when it ends up alone (on the dev corpus
        this took 90 windows down to 80 at the same WER). When a packed window stops early, the pieces it did not
        finish are packed again whole in the next round (alone if the window finished none). A packed piece that
        got no words at all is decoded alone in the next round, so packing never turns speech into an empty
        transcript.

        Then the dropped-speech guard (``decoding.redecode_uncovered``, for chunks whose VAD ``speech`` is known):
        Whisper sometimes ends a decode early (a closing timestamp, then end-of-text, seconds before the audio
        ends) and the rest of that audio gets no words. Each stretch between words that holds at least
        ``decoding.uncovered_speech_s`` of VAD speech (:func:`pipelines.core.coverage.gaps`) is decoded again alone,
        conditioned on the chunk's text before it, in further rounds. A chunk with no words at all is not: it was
        already decoded alone. Each result carries its :class:`~pipelines.core.coverage.Coverage` afterwards.

        The batches of a round are cut first (:func:`batch_sizes`: a multiple of ``model.num_workers``), then run
        on ``model.num_workers + model.prefetch_batches`` threads: each thread takes the next batch and does its
        features, encoder, search, fallback and word alignment; CTranslate2 runs ``num_workers`` of those model
        calls at once (its replicas) and queues the rest, so with ``prefetch_batches`` > 0 a thread's CPU work
        (log-Mel features of the next batch, words and segments of a finished one) overlaps the model's work on
        the others. Results do not depend on the threads: they come back in input order.

        ``decoding`` overrides the transcriber's decoding options for this call only (the Serve endpoint's
        per-request ``temperature``, ``language``...).

        Raises:
            TranscriptionError: the model failed on a batch (the cause is chained).
        """
        if not chunks:
            return []
        opts = decoding or self.decoding
        languages = self._resolve_languages(chunks, opts)
        guard = opts.redecode_uncovered and any(c.speech is not None for c in chunks)
        run_opts = (opts.model_copy(update={"word_timestamps": True}) if opts.pack_short_chunks or guard
                    else opts)
        collected: list[list[Segment]] = [[] for _ in chunks]
        contexts = [self._initial_context(c, languages[c.key][0], opts) for c in chunks]
        stats = {"rounds": 0, "windows": 0, "packed_windows": 0, "resumed": 0, "rest_windows": 0, "redecoded": 0}
        self._rounds(chunks, [Pending(i, 0.0, c.samples, False, contexts[i]) for i, c in enumerate(chunks)],
                     languages, run_opts, opts, collected, stats)
        redecoded = [0] * len(chunks)
        if guard:
            again = self._uncovered_pieces(chunks, collected, contexts, languages, opts)
            for p in again:
                redecoded[p.origin] += 1
            stats["redecoded"] = len(again)
            self._rounds(chunks, again, languages, run_opts, opts, collected, stats)
        self.last_stats = stats
        return [self._result(chunk, segs, languages[chunk.key], n, opts)
                for chunk, segs, n in zip(chunks, collected, redecoded)]

    def _rounds(self, chunks: Sequence[Chunk], pending: list[Pending], languages: dict[str, tuple[str, float]],
                run_opts: DecodingConfig, opts: DecodingConfig, collected: list[list[Segment]],
                stats: dict[str, int]) -> None:
        """Decode rounds until nothing is pending (at most :data:`MAX_ROUNDS`), segments into ``collected``."""
        for _ in range(MAX_ROUNDS):
            if not pending:
                return
            stats["rounds"] += 1
            pending = self._round(chunks, pending, languages, run_opts, opts, collected, stats)
        if pending:
            log.warning("gave up on %d unfinished pieces after %d rounds", len(pending), MAX_ROUNDS)

    def _result(self, chunk: Chunk, segs: list[Segment], language: tuple[str, float], redecoded: int,
                opts: DecodingConfig) -> ChunkResult:
        """The chunk's result: its segments in order (words dropped unless asked for), measured against its speech.
        Decoded without timestamp tokens, a segment is a whole window: it is cut into sentences by its words."""
        if opts.without_timestamps:
            segs = [piece for seg in segs for piece in split_sentences(seg)]
        segs = sorted(segs, key=lambda s: (s.start, s.end))
        coverage = (None if chunk.speech is None else
                    chunk_coverage(chunk.speech, segs, chunk.duration_s, opts.uncovered_speech_s))
        if not opts.word_timestamps:
            segs = [replace(s, words=()) for s in segs]
        return ChunkResult(chunk.key, chunk.index, chunk.offset_s, chunk.duration_s, language[0], language[1],
                           tuple(replace(s, id=k) for k, s in enumerate(segs)), coverage, redecoded)

    def _uncovered_pieces(self, chunks: Sequence[Chunk], collected: list[list[Segment]], contexts: list[list[int]],
                          languages: dict[str, tuple[str, float]], opts: DecodingConfig) -> list[Pending]:
        """The dropped-speech guard's work: each stretch between words of a chunk holding at least
        ``opts.uncovered_speech_s`` of its VAD speech, as a piece decoded alone (the audio from the word before it
        to the word after it, or the chunk's edge), prompted with the chunk's prompt and its text before the
        stretch (as a resumed decode is)."""
        out: list[Pending] = []
        for i, (chunk, segs) in enumerate(zip(chunks, collected)):
            if chunk.speech is None or not segs:
                continue  # unknown speech; or no words at all: the chunk was already decoded alone
            for gap in gaps(chunk.speech, word_spans(segs), chunk.duration_s):
                if gap.speech_s < opts.uncovered_speech_s:
                    continue
                samples = chunk.samples[int(round(gap.start * SAMPLE_RATE)):int(round(gap.end * SAMPLE_RATE))]
                if samples.shape[0] < MIN_REMAINDER_SAMPLES:
                    continue
                log.debug("%s chunk %d: %.1f s of speech without words in %.1f-%.1f s; decoding it again",
                          chunk.key, chunk.index, gap.speech_s, gap.start, gap.end)
                before = text_before(segs, gap.start)
                tokenizer = self.whisper.tokenizer(languages[chunk.key][0], opts.task)
                context = contexts[i] + (self.whisper.encode_text(tokenizer, before) if before.strip() else [])
                out.append(Pending(i, gap.start, samples, True, context))
        return out

    # ------------------------------------------------------------------------------------------------ one round
    def _round(self, chunks: Sequence[Chunk], pending: list[Pending], languages: dict[str, tuple[str, float]],
               run_opts: DecodingConfig, opts: DecodingConfig, collected: list[list[Segment]],
               stats: dict[str, int]) -> list[Pending]:
        """Decode every pending piece once (packed where allowed); add their segments (chunk time) to
        ``collected``; return the pieces for the next round (remainders after an early stop, missed packed
        pieces)."""
        items = plan_items(pending, [languages[chunks[p.origin].key][0] for p in pending],
                           [chunks[p.origin].pack_group for p in pending], opts)
        stats["windows"] += len(items)
        stats["packed_windows"] += sum(item.window is not None for item in items)
        stats["rest_windows"] += sum(any(pending[k].start_s > 0 for k in item.members) for item in items)
        outcome = self._decode_items(chunks, pending, items, run_opts)
        following: list[Pending] = []
        for i, item in enumerate(items):
            segs, follow = outcome[i]
            segments = to_segments(self.whisper, segs, self.whisper.tokenizer(item.language, run_opts.task))
            seek_s = follow.seek / self.whisper.frames_per_second if follow is not None else None
            if item.window is None:
                per_member, starts, durations = [segments], [0.0], [item.duration_s]
            else:
                per_member = split_window(segments, item.window)
                starts, durations = item.window.starts_s, item.window.durations_s
            for position, (k, member_segs, start, dur) in enumerate(zip(item.members, per_member, starts, durations)):
                following.extend(settle(pending[k], member_segs, start, dur, seek_s, follow, item.window, position,
                                        opts, collected, stats))
        return following

    def _decode_items(self, chunks: Sequence[Chunk], pending: list[Pending], items: list[Item],
                      run_opts: DecodingConfig) -> dict[int, Outcome]:
        """One decode pass over all ``items``, batched per language (on the worker threads); the outcome per item.

        Raises:
            TranscriptionError: the model failed on a batch (names the files it held).
        """
        audio = [item.samples for item in items]
        work = sorted((Piece(i, 0, item.prompt(pending)) for i, item in enumerate(items)),
                      key=lambda w: (items[w.item].language, len(w.context)))

        def decode(batch: list[Piece]) -> list[Outcome]:
            try:
                return self._decode_pieces(batch, audio, items[batch[0].item].language, run_opts)
            except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError/ValueError
                keys = sorted({chunks[pending[k].origin].key for w in batch for k in items[w.item].members})
                raise TranscriptionError(f"model failed on a batch of {len(batch)} pieces from {keys}: {exc}") from exc

        planned = list(batches(work, [item.language for item in items], self.batch_size, self.workers))
        if self._pool is not None and len(planned) > 1:
            decoded = list(self._pool.map(decode, planned))
        else:
            decoded = [decode(batch) for batch in planned]
        return {w.item: out for batch, outs in zip(planned, decoded) for w, out in zip(batch, outs)}

    def _decode_pieces(self, batch: list[Piece], audio: Sequence[np.ndarray], language: str,
                       opts: DecodingConfig) -> list[Outcome]:
        """One model call over ``batch`` (:func:`pipelines.core.decoding.decode_pieces`), counted."""
        outcomes = decode_pieces(self.whisper, batch, audio, language, opts)
        with self._count_lock:
            self.calls += 1
            self.chunks_seen += len(batch)
        return outcomes

    # ----------------------------------------------------------------------------------------------------- helpers
    def _initial_context(self, chunk: Chunk, language: str, opts: DecodingConfig) -> list[int]:
        text = chunk.prompt if chunk.prompt is not None else opts.initial_prompt
        if not text:
            return []
        return self.whisper.encode_text(self.whisper.tokenizer(language, opts.task), " " + text.strip())

    def _resolve_languages(self, chunks: Sequence[Chunk], opts: DecodingConfig) -> dict[str, tuple[str, float]]:
        languages: dict[str, tuple[str, float]] = {}
        to_detect: dict[str, Chunk] = {}
        for chunk in chunks:
            if chunk.key in languages or chunk.key in to_detect:
                continue
            given = chunk.language or opts.language
            if given:
                languages[chunk.key] = (given if self.multilingual else "en", 1.0)
            elif not self.multilingual:
                languages[chunk.key] = ("en", 1.0)
            else:
                to_detect[chunk.key] = min((c for c in chunks if c.key == chunk.key), key=lambda c: c.index)
        if to_detect:
            detected = self.detect_language(list(to_detect.values()))
            languages.update(zip(to_detect.keys(), detected))
        return languages


def text_before(segments: Sequence[Segment], time_s: float) -> str:
    """The text of ``segments`` (chunk time, in order) that ends by ``time_s``: whole words where the segment has
    them, else whole segments."""
    parts: list[str] = []
    for seg in segments:
        if seg.words:
            parts.extend(w.word for w in seg.words if w.end <= time_s + 1e-3)
        elif seg.end <= time_s + 1e-3:
            parts.append(seg.text)
    return "".join(parts)
