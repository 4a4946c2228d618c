"""The one transcriber (DESIGN.md, invariant 1): a ``faster_whisper.WhisperModel`` loaded once, transcribing
batches of chunks that may come from many files.

Per batch of up to ``batch_size`` chunks sharing a language and prompt: log-Mel features (padded to Whisper's
30 s window), one encoder call, one batched beam search with timestamps, openai/whisper's temperature fallback
for the chunks that fail its compression-ratio / log-probability tests (re-decoded together at the next
temperature), the no-speech test, segment splitting at timestamp tokens, and word timestamps from
cross-attention alignment. The pieces are faster-whisper's own (``get_prompt``,
``_split_segments_by_timestamps``, ``add_word_timestamps``), driven as ``BatchedInferencePipeline.forward`` does,
but with timestamps and fallback kept on so accuracy matches ``WhisperModel.transcribe``.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from pipelines.config import DecodingConfig, ModelConfig
from pipelines.core.errors import ModelLoadError, TranscriptionError
from pipelines.core.models import resolve_model_path
from pipelines.core.packing import PackedWindow, build_window, plan_windows, split_window
from pipelines.core.schema import Segment, Word

log = logging.getLogger(__name__)

N_FRAMES = 3000  # mel frames in Whisper's 30 s window: 30 s * 16000 / hop 160
MAX_ROUNDS = 12  # decode rounds per call; each round finishes or shortens every piece, so this is a safety net
MIN_REMAINDER_SAMPLES = 1600  # 0.1 s: a shorter rest after the last timestamp is not decoded again


@dataclass(frozen=True)
class Chunk:
    """One piece of audio to transcribe.

    ``samples``: float32, shape (n_samples,), 16 kHz mono, at most 30 s. ``key`` names the file it came from and
    ``index`` its place in that file; ``offset_s`` is where it starts in the file (seconds). ``language`` and
    ``prompt`` override the config's for this chunk's file. Chunks are packed into shared windows only with chunks
    of the same ``pack_group`` (the job uses the file's folder: same source, same speakers; None packs with
    any other None).
    """

    key: str
    index: int
    offset_s: float
    samples: np.ndarray
    language: Optional[str] = None
    prompt: Optional[str] = None
    pack_group: Optional[str] = None

    @property
    def duration_s(self) -> float:
        """Duration in seconds at 16 kHz."""
        return self.samples.shape[0] / 16000


@dataclass(frozen=True)
class ChunkResult:
    """The transcription of one :class:`Chunk`; segment and word times are seconds of chunk time (0 = chunk start)."""

    key: str
    index: int
    offset_s: float
    duration_s: float
    language: str
    language_probability: float
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class _Piece:
    """Work item: decode chunk ``chunk`` from mel frame ``seek`` on, prompted with ``context`` (token ids)."""

    chunk: int
    seek: int
    context: list[int]


@dataclass(frozen=True)
class _Pending:
    """A piece still to decode: ``samples`` of input chunk ``origin`` starting ``start_s`` into it; ``solo`` keeps it
    out of packed windows; ``context`` is its prompt (token ids) in a packed window (where pieces sharing one
    prompt are packed together); ``alone_context``, when set, replaces it when the piece is decoded alone (the text
    decoded so far, for a resumed piece)."""

    origin: int
    start_s: float
    samples: np.ndarray
    solo: bool
    context: list[int]
    alone_context: Optional[list[int]] = None

    @property
    def prompt_alone(self) -> list[int]:
        """The prompt (token ids) when this piece is decoded alone."""
        return self.context if self.alone_context is None else self.alone_context


def batch_sizes(n: int, batch_size: int, workers: int = 1) -> list[int]:
    """Sizes of the batches that ``n`` items are cut into: at most ``batch_size`` each, as few as that allows, but a
    multiple of ``workers`` batches (as far as ``n`` allows) of near-equal size, so that every worker gets work.

    On a CPU the encoder's cost per 30 s window does not grow when a batch is split (tiny.en int8 with 2 threads:
    0.26-0.30 s a window at batch 1 or 4, a little more at 8), so splitting a batch over workers costs nothing and
    keeps every core busy. Example: ``batch_sizes(10, 8, 2) == [5, 5]``; ``batch_sizes(3, 8, 2) == [2, 1]``.
    """
    if n <= 0:
        return []
    n_batches = math.ceil(n / batch_size)
    if workers > 1:
        n_batches = min(n, math.ceil(n_batches / workers) * workers)
    size, extra = divmod(n, n_batches)
    return [size + (1 if b < extra else 0) for b in range(n_batches)]


def _shift(seg: Segment, offset_s: float) -> Segment:
    """``seg`` with its and its words' times moved by ``offset_s`` seconds."""
    if not offset_s:
        return seg
    words = tuple(Word(w.word, round(w.start + offset_s, 3), round(w.end + offset_s, 3), w.probability)
                  for w in seg.words)
    return replace(seg, start=round(seg.start + offset_s, 3), end=round(seg.end + offset_s, 3), words=words)


@dataclass
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


class Transcriber:
    """faster-whisper model, loaded once in ``__init__``; :meth:`transcribe_chunks` does the work.

    Used unchanged by the batch job's actor pool and the Serve deployment.

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be found or loaded, or ``require_cuda`` is set and no CUDA device is seen.
    """

    def __init__(self, model_cfg: ModelConfig, decoding: DecodingConfig, batch_size: int = 8):
        self.model_cfg = model_cfg
        self.decoding = decoding
        self.batch_size = batch_size
        if model_cfg.require_cuda and model_cfg.device in ("cuda", "auto"):
            import ctranslate2

            if ctranslate2.get_cuda_device_count() < 1:
                raise ModelLoadError(
                    "model.require_cuda is set but CTranslate2 sees no CUDA device on this worker "
                    "(check the actor's num_gpus, CUDA_VISIBLE_DEVICES and the CUDA/cuDNN libraries)"
                )
        path = resolve_model_path(model_cfg.name)
        try:
            self.model = WhisperModel(
                path,
                device=model_cfg.device,
                compute_type=model_cfg.compute_type,
                cpu_threads=model_cfg.cpu_threads,
                num_workers=model_cfg.num_workers,
                download_root=model_cfg.download_root,
                local_files_only=model_cfg.local_files_only,
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise ModelLoadError(f"cannot load model {model_cfg.name!r} ({path}): {exc}") from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        self.calls = 0  # generate batches run, for tests and metrics
        self.chunks_seen = 0  # 30 s windows decoded (packed windows and pieces alone)
        #: what the last :meth:`transcribe_chunks` call did: ``rounds``, ``windows`` (30 s windows decoded),
        #: ``packed_windows`` (of those, windows holding several pieces), ``resumed`` (rests of unfinished pieces
        #: decoded again in a later round) and ``rest_windows`` (windows those rests were decoded in)
        self.last_stats: dict[str, int] = {}
        self._count_lock = threading.Lock()
        # CTranslate2 holds num_workers model replicas (inter_threads) and releases the GIL while it runs, so that
        # many batches of a round run at once from as many Python threads.
        self.workers = max(1, model_cfg.num_workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ct2") if self.workers > 1 else None

    # ----------------------------------------------------------------------------------------------------- helpers
    def tokenizer(self, language: str, task: Optional[str] = None) -> Tokenizer:
        """The (cached) tokenizer for ``language`` and ``task`` (default: the configured task)."""
        key = (language, task or self.decoding.task)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(self.model.hf_tokenizer, self.multilingual, task=key[1], language=language)
        return self._tokenizers[key]

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-Mel features of one chunk, padded/trimmed to the 30 s window: float32, shape (n_mels, 3000)."""
        return pad_or_trim(self.model.feature_extractor(samples)[..., :-1], N_FRAMES)

    def detect_language(self, chunks: Sequence[Chunk]) -> list[tuple[str, float]]:
        """Language code and probability for each chunk, from one encoder pass over the batch.

        An English-only model answers ``("en", 1.0)`` without running.
        """
        if not self.multilingual:
            return [("en", 1.0)] * len(chunks)
        out: list[tuple[str, float]] = []
        for start in range(0, len(chunks), self.batch_size):
            part = chunks[start : start + self.batch_size]
            encoded = self.model.encode(np.stack([self.features(c.samples) for c in part]))
            for ranked in self.model.model.detect_language(encoded):
                token, prob = ranked[0]
                out.append((token[2:-2], float(prob)))
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

        With ``model.num_workers`` > 1 the batches of a round run at once on as many threads (CTranslate2 model
        replicas); see :func:`batch_sizes`.

        ``decoding`` overrides the transcriber's decoding options for this call only (the Serve endpoint's
        per-request ``temperature``, ``language``...).

        Raises:
            TranscriptionError: the model failed on a batch (the cause is chained).
        """
        if not chunks:
            return []
        opts = decoding or self.decoding
        languages = self._resolve_languages(chunks, opts)
        run_opts = opts.model_copy(update={"word_timestamps": True}) if opts.pack_short_chunks else opts
        collected: list[list[Segment]] = [[] for _ in chunks]
        pending = [_Pending(i, 0.0, c.samples, False, self._initial_context(c, languages[c.key][0], opts))
                   for i, c in enumerate(chunks)]
        stats = {"rounds": 0, "windows": 0, "packed_windows": 0, "resumed": 0, "rest_windows": 0}
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            stats["rounds"] += 1
            pending = self._round(chunks, pending, languages, run_opts, opts, collected, stats)
        self.last_stats = stats
        if pending:
            log.warning("gave up on %d unfinished pieces after %d rounds", len(pending), MAX_ROUNDS)
        results = []
        for chunk, segs in zip(chunks, collected):
            segs = sorted(segs, key=lambda s: (s.start, s.end))
            if not opts.word_timestamps:
                segs = [replace(s, words=()) for s in segs]
            lang = languages[chunk.key]
            results.append(ChunkResult(chunk.key, chunk.index, chunk.offset_s, chunk.duration_s, lang[0], lang[1],
                                       tuple(replace(s, id=k) for k, s in enumerate(segs))))
        return results

    def _round(self, chunks: Sequence[Chunk], pending: list["_Pending"], languages: dict[str, tuple[str, float]],
               run_opts: DecodingConfig, opts: DecodingConfig, collected: list[list[Segment]],
               stats: dict[str, int]) -> list["_Pending"]:
        """Decode every pending piece once (packed where allowed); add their segments (chunk time) to
        ``collected``; return the pieces for the next round (remainders after an early stop, missed packed
        pieces)."""
        # 1. group pieces into runnable items: packed windows, or pieces alone
        items: list[tuple[Chunk, Optional[PackedWindow], list[int]]] = []
        groups: dict[tuple, list[int]] = {}
        for k, p in enumerate(pending):
            language = languages[chunks[p.origin].key][0]
            if opts.pack_short_chunks and not p.solo and p.samples.shape[0] <= opts.pack_max_chunk_s * 16000:
                groups.setdefault((language, tuple(p.context), chunks[p.origin].pack_group), []).append(k)
            else:
                items.append((Chunk(str(k), 0, 0.0, p.samples, language), None, [k]))
        for (language, _, _), members in groups.items():
            for plan in plan_windows([pending[k].samples.shape[0] / 16000 for k in members], opts.pack_window_s,
                                     opts.pack_gap_s):
                idx = [members[j] for j in plan]
                if len(idx) == 1:
                    items.append((Chunk(str(idx[0]), 0, 0.0, pending[idx[0]].samples, language), None, idx))
                    continue
                window = build_window(list(range(len(idx))), [pending[k].samples for k in idx], opts.pack_gap_s)
                items.append((Chunk(f"w{len(items)}", 0, 0.0, window.samples, language), window, idx))

        stats["windows"] += len(items)
        stats["packed_windows"] += sum(window is not None for _, window, _ in items)
        stats["rest_windows"] += sum(any(pending[k].start_s > 0 for k in idx) for _, _, idx in items)

        # 2. one decode pass over all items, batched per language
        runnable = [item[0] for item in items]
        contexts = [pending[idx[0]].context if window is not None else pending[idx[0]].prompt_alone
                    for _, window, idx in items]
        work = sorted((_Piece(i, 0, contexts[i]) for i in range(len(items))),
                      key=lambda w: (runnable[w.chunk].language, len(w.context)))
        outcome: dict[int, tuple[list[dict], Optional[_Piece]]] = {}
        item_languages = {c.key: (c.language, 1.0) for c in runnable}

        def decode(batch: list[_Piece]) -> list[tuple[list[dict], Optional[_Piece]]]:
            try:
                return self._decode_pieces(batch, runnable, runnable[batch[0].chunk].language, run_opts)
            except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError/ValueError
                keys = sorted({chunks[pending[k].origin].key for w in batch for k in items[w.chunk][2]})
                raise TranscriptionError(f"model failed on a batch of {len(batch)} pieces from {keys}: {exc}") from exc

        batches = list(self._batches(work, runnable, item_languages))
        if self._pool is not None and len(batches) > 1:
            decoded_batches = list(self._pool.map(decode, batches))
        else:
            decoded_batches = [decode(batch) for batch in batches]
        for batch, decoded in zip(batches, decoded_batches):
            outcome.update({w.chunk: out for w, out in zip(batch, decoded)})

        # 3. back to pieces: segments in chunk time, remainders and misses for the next round
        following: list[_Pending] = []
        for i, (item_chunk, window, idx) in enumerate(items):
            subs, follow = outcome[i]
            segments = self._segments(subs, item_chunk.language, run_opts)
            seek_s = follow.seek / self.model.frames_per_second if follow is not None else None
            if window is None:
                per_member, starts, durations = [segments], [0.0], [item_chunk.duration_s]
            else:
                per_member, starts, durations = split_window(segments, window), window.starts_s, window.durations_s
            for position, (k, segs, start, dur) in enumerate(zip(idx, per_member, starts, durations)):
                p = pending[k]
                unfinished = seek_s is not None and seek_s < start + dur
                if window is not None and unfinished:
                    # The window's decode stopped before this piece's end: decode the whole piece again in the
                    # next round rather than resume mid-sentence without the text before it (which makes tiny
                    # models invent a first word). Alone if nothing of the window finished before it.
                    following.append(replace(p, solo=p.solo or position == 0))
                    continue
                collected[p.origin].extend(_shift(s, p.start_s) for s in segs)
                if unfinished:
                    # a piece decoded alone resumes at the stop, conditioned on its text so far
                    # (WhisperModel.transcribe's condition_on_previous_text)
                    done_s = max(0.0, seek_s - start)
                    rest = p.samples[int(round(done_s * 16000)):]
                    if rest.shape[0] >= MIN_REMAINDER_SAMPLES:
                        stats["resumed"] += 1
                        if opts.pack_short_chunks:
                            # the rest is short (it began inside a <= 30 s piece): pack it with others under the
                            # chunk's own prompt (p.context: with packing on, a piece's packing prompt is always its
                            # chunk's); alone, it is conditioned on its text so far
                            following.append(_Pending(p.origin, p.start_s + done_s, rest, False, p.context,
                                                      follow.context))
                        else:
                            following.append(_Pending(p.origin, p.start_s + done_s, rest, True, follow.context))
                elif window is not None and not segs:
                    following.append(replace(p, solo=True))
        return following

    def _segments(self, subs: list[dict], language: str, opts: DecodingConfig) -> list[Segment]:
        tokenizer = self.tokenizer(language, opts.task)
        out = []
        for sub in subs:
            text = tokenizer.decode([t for t in sub["tokens"] if t < tokenizer.eot])
            words = tuple(Word(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                          for w in sub.get("words") or [])
            out.append(Segment(id=len(out), start=float(sub["start"]), end=float(sub["end"]), text=text,
                               avg_logprob=float(sub["avg_logprob"]),
                               compression_ratio=float(get_compression_ratio(text)),
                               no_speech_prob=float(sub["no_speech_prob"]), temperature=float(sub["temperature"]),
                               words=words))
        return out

    def _initial_context(self, chunk: Chunk, language: str, opts: DecodingConfig) -> list[int]:
        text = chunk.prompt if chunk.prompt is not None else opts.initial_prompt
        return self.tokenizer(language, opts.task).encode(" " + text.strip()) if text else []

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

    def _batches(self, work: list["_Piece"], chunks: Sequence[Chunk],
                 languages: dict[str, tuple[str, float]]) -> Iterable[list["_Piece"]]:
        """Consecutive runs of ``work`` sharing a language, cut into batches of at most ``batch_size``.

        With several workers a run is cut into a multiple of ``workers`` batches of near-equal size (on a CPU the
        cost per window does not grow with smaller batches, so keeping every worker busy pays more than full batches).
        """
        runs: list[list[_Piece]] = []
        for piece in work:
            lang = languages[chunks[piece.chunk].key][0]
            if runs and lang == languages[chunks[runs[-1][0].chunk].key][0]:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        for run in runs:
            start = 0
            for size in batch_sizes(len(run), self.batch_size, self.workers):
                yield run[start:start + size]
                start += size

    def _decode_pieces(self, batch: list["_Piece"], chunks: Sequence[Chunk], language: str, opts: DecodingConfig):
        """One encoder + beam search call over ``batch``; returns per piece (segments, continuation or None).

        Segment dicts carry ``start``/``end`` in chunk time, ``tokens``, ``words`` and the decode's scores.
        """
        model = self.model
        tokenizer = self.tokenizer(language, opts.task)
        fps = model.frames_per_second
        # CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch: keep the
        # most recent tokens of each context, as many as the shortest context has.
        n_context = min(len(w.context) for w in batch)
        prompts = [
            model.get_prompt(tokenizer, w.context[len(w.context) - n_context:] if n_context else [],
                             without_timestamps=opts.without_timestamps, hotwords=opts.hotwords)
            for w in batch
        ]
        pieces = [chunks[w.chunk].samples[w.seek * model.feature_extractor.hop_length:] for w in batch]
        features = np.stack([self.features(p) for p in pieces])
        encoder_output = model.encode(features)
        decoded = self._generate_with_fallback(encoder_output, features, prompts, tokenizer, opts)
        with self._count_lock:
            self.calls += 1
            self.chunks_seen += len(batch)

        per_piece: list[list[dict]] = []
        sizes: list[int] = []
        seeks: list[int] = []
        for w, dec in zip(batch, decoded):
            total_frames = self._total_frames(chunks[w.chunk])
            size = min(N_FRAMES, max(1, total_frames - w.seek))
            sizes.append(size)
            if self._is_silent(dec, opts):
                per_piece.append([])
                seeks.append(w.seek + size)
                continue
            subs, seek, single_timestamp_ending = model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=dec.tokens,
                time_offset=w.seek / fps,
                segment_size=size,
                segment_duration=size / fps,
                seek=w.seek,
            )
            kept = [sub for sub in subs if tokenizer.decode([t for t in sub["tokens"] if t < tokenizer.eot]).strip()]
            for sub in kept:
                sub.update(avg_logprob=dec.avg_logprob, no_speech_prob=dec.no_speech_prob,
                           temperature=dec.temperature)
            per_piece.append(kept)
            seeks.append(w.seek + size if single_timestamp_ending else seek)

        if opts.word_timestamps and any(per_piece):
            # add_word_timestamps needs one entry per batch item, each with at least one segment: give silent
            # pieces a placeholder without tokens (aligned to nothing) and drop it afterwards.
            padded = [subs or [{"tokens": [], "start": 0.0, "end": 0.0, "seek": w.seek, "placeholder": True}]
                      for subs, w in zip(per_piece, batch)]
            model.add_word_timestamps(padded, tokenizer, encoder_output, sizes, opts.prepend_punctuations,
                                      opts.append_punctuations, 0.0)
            for i, subs in enumerate(per_piece):
                # An unfinished decode resumes at its last timestamp (not at the last word's end, as
                # WhisperModel.transcribe does with word timestamps: DTW often stretches the last word to the
                # window's end, which would skip the rest). Words are clipped to that point to stay in order.
                if seeks[i] < batch[i].seek + sizes[i]:
                    limit = seeks[i] / fps
                    for sub in subs:
                        sub["end"] = min(sub["end"], limit)
                        for word in sub.get("words") or []:
                            word["end"] = min(word["end"], limit)
                            word["start"] = min(word["start"], word["end"])

        outcomes = []
        for w, dec, subs, seek in zip(batch, decoded, per_piece, seeks):
            follow = None
            if w.seek < seek < self._total_frames(chunks[w.chunk]):
                text_tokens = [t for sub in subs for t in sub["tokens"] if t < tokenizer.eot]
                context = [] if dec.temperature > 0.5 else w.context + text_tokens  # prompt_reset_on_temperature
                follow = _Piece(w.chunk, seek, context)
            outcomes.append((subs, follow))
        return outcomes

    def _total_frames(self, chunk: Chunk) -> int:
        return int(round(chunk.samples.shape[0] / self.model.feature_extractor.hop_length))

    @staticmethod
    def _is_silent(dec: _Decoded, opts: DecodingConfig) -> bool:
        """openai/whisper's no-speech test: high no_speech_prob and a low log-probability."""
        if opts.no_speech_threshold is None or dec.no_speech_prob <= opts.no_speech_threshold:
            return False
        return not (opts.log_prob_threshold is not None and dec.avg_logprob > opts.log_prob_threshold)

    @staticmethod
    def _needs_fallback(dec: _Decoded, opts: DecodingConfig) -> bool:
        needs = False
        if opts.compression_ratio_threshold is not None and dec.compression_ratio > opts.compression_ratio_threshold:
            needs = True
        if opts.log_prob_threshold is not None and dec.avg_logprob < opts.log_prob_threshold:
            needs = True
            if opts.no_speech_threshold is not None and dec.no_speech_prob > opts.no_speech_threshold:
                needs = False  # silence, not a failed decode
        return needs

    def _generate_with_fallback(self, encoder_output, features: np.ndarray, prompts: list[list[int]],
                                tokenizer: Tokenizer, opts: DecodingConfig):
        """Batched version of ``WhisperModel.generate_with_fallback``: every chunk starts at the first temperature;
        the ones that fail move on together to the next; the best candidate is kept when all fail."""
        model = self.model
        longest = max(len(p) for p in prompts)
        max_length = min(model.max_length, longest + opts.max_new_tokens) if opts.max_new_tokens else model.max_length
        suppress = list(get_suppressed_tokens(tokenizer, list(opts.suppress_tokens))) if opts.suppress_tokens else []
        max_initial_timestamp_index = int(round(opts.max_initial_timestamp / model.time_precision))
        n = features.shape[0]
        candidates: list[list[_Decoded]] = [[] for _ in range(n)]
        final: list[Optional[_Decoded]] = [None] * n
        pending = list(range(n))
        for t_index, temperature in enumerate(opts.temperatures):
            if not pending:
                break
            if temperature > 0:
                kwargs = {"beam_size": 1, "num_hypotheses": opts.best_of, "sampling_topk": 0,
                          "sampling_temperature": temperature}
            else:
                kwargs = {"beam_size": opts.beam_size, "patience": opts.patience}
            enc = encoder_output if len(pending) == n else model.encode(features[pending])
            outputs = model.model.generate(
                enc,
                [prompts[i] for i in pending],
                length_penalty=opts.length_penalty,
                repetition_penalty=opts.repetition_penalty,
                no_repeat_ngram_size=opts.no_repeat_ngram_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=opts.suppress_blank,
                suppress_tokens=suppress,
                max_initial_timestamp_index=max_initial_timestamp_index,
                **kwargs,
            )
            still: list[int] = []
            last = t_index == len(opts.temperatures) - 1
            for i, out in zip(pending, outputs):
                tokens = list(out.sequences_ids[0])
                seq_len = len(tokens)
                avg_logprob = out.scores[0] * (seq_len**opts.length_penalty) / (seq_len + 1)
                text = tokenizer.decode(tokens).strip()
                dec = _Decoded(tokens, float(avg_logprob), float(out.no_speech_prob), float(temperature),
                               float(get_compression_ratio(text)))
                candidates[i].append(dec)
                if self._needs_fallback(dec, opts) and not last:
                    still.append(i)
                elif self._needs_fallback(dec, opts):
                    final[i] = self._best_candidate(candidates[i], temperature, opts)
                else:
                    final[i] = dec
            pending = still
        return final

    @staticmethod
    def _best_candidate(candidates: list[_Decoded], temperature: float, opts: DecodingConfig) -> _Decoded:
        """When every temperature failed: the highest log-probability among those under the compression-ratio
        threshold (or among all), reported at the last temperature, as faster-whisper does."""
        thr = opts.compression_ratio_threshold
        pool = [c for c in candidates if thr is None or c.compression_ratio <= thr] or candidates
        best = max(pool, key=lambda c: c.avg_logprob)
        return _Decoded(best.tokens, best.avg_logprob, best.no_speech_prob, temperature, best.compression_ratio)
