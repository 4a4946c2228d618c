"""One batched decode pass: prompts, one encoder call, one beam search with openai/whisper's temperature fallback,
the no-speech test, segments cut at timestamp tokens, word timestamps, and where each piece resumes.

This is ``WhisperModel.generate_segments`` for a batch of pieces (``BatchedInferencePipeline.forward`` with
timestamps and fallback kept on, so accuracy matches ``WhisperModel.transcribe``), on the model's pieces exposed
by :class:`~pipelines.core.whisper.WhisperAdapter`. :class:`~pipelines.core.transcriber.Transcriber` plans what to
decode (packing, rounds, resuming); this module decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipelines.core.constants import N_FRAMES
from pipelines.core.options import DecodingConfig
from pipelines.core.schema import Segment, Word
from pipelines.core.whisper import EncoderOutput, SearchParams, SubSegment, Tokenizer, WhisperAdapter

#: Above this temperature a resumed piece is prompted with nothing (openai/whisper's prompt_reset_on_temperature).
PROMPT_RESET_TEMPERATURE = 0.5


@dataclass(frozen=True)
class Piece:
    """Work item: decode audio ``item`` from mel frame ``seek`` on, prompted with ``context`` (token ids)."""

    item: int
    seek: int
    context: list[int]


@dataclass(frozen=True)
class Decoded:
    """The kept decode of one piece: tokens, scores and the temperature that produced it."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


#: What :func:`decode_pieces` returns per piece: its segments (dicts, times in seconds of the item's audio) and the
#: piece to decode next when the decode stopped before the audio's end (else None).
Outcome = tuple[list[SubSegment], Optional[Piece]]


# ----------------------------------------------------------------------------------------- the fallback tests
def is_silent(dec: Decoded, opts: DecodingConfig) -> bool:
    """openai/whisper's no-speech test: high no_speech_prob and a low log-probability."""
    if opts.no_speech_threshold is None or dec.no_speech_prob <= opts.no_speech_threshold:
        return False
    return not (opts.log_prob_threshold is not None and dec.avg_logprob > opts.log_prob_threshold)


def needs_fallback(dec: Decoded, opts: DecodingConfig) -> bool:
    """openai/whisper's test for a failed decode: text that repeats itself (compression ratio above the threshold)
    or a low log-probability that is not explained by silence."""
    needs = False
    if opts.compression_ratio_threshold is not None and dec.compression_ratio > opts.compression_ratio_threshold:
        needs = True
    if opts.log_prob_threshold is not None and dec.avg_logprob < opts.log_prob_threshold:
        needs = True
        if opts.no_speech_threshold is not None and dec.no_speech_prob > opts.no_speech_threshold:
            needs = False  # silence, not a failed decode
    return needs


def best_candidate(candidates: list[Decoded], temperature: float, opts: DecodingConfig) -> Decoded:
    """When every temperature failed: the highest log-probability among those under the compression-ratio
    threshold (or among all), reported at the last temperature, as faster-whisper does."""
    thr = opts.compression_ratio_threshold
    pool = [c for c in candidates if thr is None or c.compression_ratio <= thr] or candidates
    best = max(pool, key=lambda c: c.avg_logprob)
    return Decoded(best.tokens, best.avg_logprob, best.no_speech_prob, temperature, best.compression_ratio)


def search_params(whisper: WhisperAdapter, prompts: Sequence[Sequence[int]], tokenizer: Tokenizer,
                  opts: DecodingConfig) -> SearchParams:
    """The search settings of ``opts`` for a batch with these ``prompts`` (``max_new_tokens`` counts from the
    longest prompt)."""
    longest = max(len(p) for p in prompts)
    max_length = (min(whisper.max_length, longest + opts.max_new_tokens) if opts.max_new_tokens
                  else whisper.max_length)
    return SearchParams(
        beam_size=opts.beam_size, best_of=opts.best_of, patience=opts.patience, length_penalty=opts.length_penalty,
        repetition_penalty=opts.repetition_penalty, no_repeat_ngram_size=opts.no_repeat_ngram_size,
        max_length=max_length, suppress_blank=opts.suppress_blank,
        suppress_tokens=whisper.suppressed_tokens(tokenizer, opts.suppress_tokens),
        max_initial_timestamp_index=int(round(opts.max_initial_timestamp / whisper.time_precision)),
    )


def generate_with_fallback(whisper: WhisperAdapter, encoded: EncoderOutput, features: np.ndarray,
                           prompts: list[list[int]], tokenizer: Tokenizer, opts: DecodingConfig) -> list[Decoded]:
    """Batched ``WhisperModel.generate_with_fallback``: every item starts at the first temperature; the ones that
    fail :func:`needs_fallback` move on together to the next (re-encoded from ``features``, float32, shape
    (batch, n_mels, N_FRAMES)); the :func:`best_candidate` is kept when all fail. One result per item, in order."""
    params = search_params(whisper, prompts, tokenizer, opts)
    n = features.shape[0]
    candidates: list[list[Decoded]] = [[] for _ in range(n)]
    final: list[Optional[Decoded]] = [None] * n
    pending = list(range(n))
    for t_index, temperature in enumerate(opts.temperatures):
        if not pending:
            break
        enc = encoded if len(pending) == n else whisper.encode(features[pending])
        generations = whisper.generate(enc, [prompts[i] for i in pending], temperature, params)
        still: list[int] = []
        last = t_index == len(opts.temperatures) - 1
        for i, gen in zip(pending, generations):
            text = whisper.text(tokenizer, gen.tokens).strip()
            dec = Decoded(gen.tokens, gen.avg_logprob, gen.no_speech_prob, float(temperature),
                          whisper.compression_ratio(text))
            candidates[i].append(dec)
            if needs_fallback(dec, opts) and not last:
                still.append(i)
            elif needs_fallback(dec, opts):
                final[i] = best_candidate(candidates[i], temperature, opts)
            else:
                final[i] = dec
        pending = still
    return final  # type: ignore[return-value] - every item is set once the last temperature ran


# -------------------------------------------------------------------------------------------- one decode pass
def decode_pieces(whisper: WhisperAdapter, batch: list[Piece], audio: Sequence[np.ndarray], language: str,
                  opts: DecodingConfig) -> list[Outcome]:
    """One encoder + search call over ``batch`` (pieces of ``audio``: float32 arrays, shape (n,), each at most a
    30 s window from the piece's ``seek`` on); returns per piece its segments and continuation (see
    :data:`Outcome`). Segment dicts carry ``start``/``end`` in seconds of the item's audio, ``tokens``, ``words``
    (with ``opts.word_timestamps``) and the decode's ``avg_logprob``, ``no_speech_prob`` and ``temperature``.

    Raises:
        RuntimeError, ValueError: from CTranslate2.
    """
    tokenizer = whisper.tokenizer(language, opts.task)
    # CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch: keep the
    # most recent tokens of each context, as many as the shortest context has.
    n_context = min(len(p.context) for p in batch)
    prompts = [whisper.prompt(tokenizer, p.context[len(p.context) - n_context:] if n_context else [],
                              without_timestamps=opts.without_timestamps, hotwords=opts.hotwords) for p in batch]
    features = np.stack([whisper.features(audio[p.item][p.seek * whisper.hop_length:]) for p in batch])
    encoded = whisper.encode(features)
    decoded = generate_with_fallback(whisper, encoded, features, prompts, tokenizer, opts)
    totals = [total_frames(whisper, audio[p.item]) for p in batch]
    sizes = [min(N_FRAMES, max(1, total - p.seek)) for p, total in zip(batch, totals)]
    per_piece, seeks = _split(whisper, tokenizer, batch, decoded, sizes, opts)
    if opts.word_timestamps:
        _align_words(whisper, tokenizer, encoded, batch, per_piece, sizes, seeks, opts)
    outcomes: list[Outcome] = []
    for p, dec, segs, seek, total in zip(batch, decoded, per_piece, seeks, totals):
        follow = None
        if p.seek < seek < total:
            text_tokens = [t for seg in segs for t in whisper.text_tokens(tokenizer, seg["tokens"])]
            context = [] if dec.temperature > PROMPT_RESET_TEMPERATURE else p.context + text_tokens
            follow = Piece(p.item, seek, context)
        outcomes.append((segs, follow))
    return outcomes


def total_frames(whisper: WhisperAdapter, samples: np.ndarray) -> int:
    """Mel frames of ``samples`` (float32, shape (n,))."""
    return int(round(samples.shape[0] / whisper.hop_length))


def _split(whisper: WhisperAdapter, tokenizer: Tokenizer, batch: list[Piece], decoded: list[Decoded],
           sizes: list[int], opts: DecodingConfig) -> tuple[list[list[SubSegment]], list[int]]:
    """Each piece's segments with text (none for a silent decode) and the frame it resumes from."""
    per_piece: list[list[SubSegment]] = []
    seeks: list[int] = []
    for p, dec, size in zip(batch, decoded, sizes):
        if is_silent(dec, opts):
            per_piece.append([])
            seeks.append(p.seek + size)
            continue
        split = whisper.split_segments(tokenizer, dec.tokens, p.seek, size)
        kept = [seg for seg in split.segments if whisper.text(tokenizer, seg["tokens"]).strip()]
        for seg in kept:
            seg.update(avg_logprob=dec.avg_logprob, no_speech_prob=dec.no_speech_prob, temperature=dec.temperature)
        per_piece.append(kept)
        seeks.append(p.seek + size if split.single_timestamp_ending else split.seek)
    return per_piece, seeks


def _align_words(whisper: WhisperAdapter, tokenizer: Tokenizer, encoded: EncoderOutput, batch: list[Piece],
                 per_piece: list[list[SubSegment]], sizes: list[int], seeks: list[int], opts: DecodingConfig) -> None:
    """Word timestamps for every segment, in place. An unfinished decode resumes at its last timestamp (not at the
    last word's end, as ``WhisperModel.transcribe`` does with word timestamps: DTW often stretches the last word to
    the window's end, which would skip the rest), so its words are clipped to that point to stay in order."""
    if not any(per_piece):
        return
    whisper.add_word_timestamps(per_piece, tokenizer, encoded, sizes, opts.prepend_punctuations,
                                opts.append_punctuations)
    for p, segs, size, seek in zip(batch, per_piece, sizes, seeks):
        if seek < p.seek + size:
            limit = seek / whisper.frames_per_second
            for seg in segs:
                seg["end"] = min(seg["end"], limit)
                for word in seg.get("words") or []:
                    word["end"] = min(word["end"], limit)
                    word["start"] = min(word["start"], word["end"])


def to_segments(whisper: WhisperAdapter, segs: list[SubSegment], tokenizer: Tokenizer) -> list[Segment]:
    """Typed :class:`~pipelines.core.schema.Segment` objects of :func:`decode_pieces`' dicts (same times)."""
    out = []
    for seg in segs:
        text = whisper.text(tokenizer, seg["tokens"])
        words = tuple(Word(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                      for w in seg.get("words") or [])
        out.append(Segment(id=len(out), start=float(seg["start"]), end=float(seg["end"]), text=text,
                           avg_logprob=float(seg["avg_logprob"]), compression_ratio=whisper.compression_ratio(text),
                           no_speech_prob=float(seg["no_speech_prob"]), temperature=float(seg["temperature"]),
                           words=words))
    return out
