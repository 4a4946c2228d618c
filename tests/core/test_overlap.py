"""The transcriber's overlap of CPU work with model work (``model.prefetch_batches``), on real speech without a GPU:
the overlapped path keeps results in input order and agrees with the serial one, a failing batch still names its
files, and the next batch's log-Mel features really are computed while the model decodes the current one."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.core.audio import decode_audio
from pipelines.core.engine import Engine, FileSpec, prepare
from pipelines.core.errors import TranscriptionError
from pipelines.core.transcriber import Chunk, Transcriber
from pipelines.core.wer import word_error_rate
from tests.compare import assert_spans_close, assert_texts_agree
from tests.conftest import corpus_rows

BATCH = 2  # small batches: a handful of clips make several batches per round


@pytest.fixture(scope="module")
def rows():
    """Six short LJ Speech clips (2-10 s) with their references."""
    return [r for r in corpus_rows() if r["path"].startswith("ljspeech/LJ001-00")][:6]


@pytest.fixture(scope="module")
def chunks(rows, corpus):
    return [Chunk(r["path"], 0, 0.0, decode_audio(corpus / r["path"]).samples) for r in rows]


def make(job_config, workers: int, prefetch: int) -> Transcriber:
    """tiny.en with ``workers`` CTranslate2 workers and ``prefetch`` extra threads; each clip decoded alone
    (packing off), ``BATCH`` clips a model call."""
    model = job_config.model.model_copy(update={"num_workers": workers, "prefetch_batches": prefetch,
                                                "cpu_threads": 1, "batch_size": BATCH})
    return Transcriber(model, job_config.decoding.model_copy(update={"pack_short_chunks": False}))


@pytest.fixture(scope="module")
def serial(job_config, chunks):
    """The non-overlapped path: one worker, one thread; its transcriber and results."""
    tr = make(job_config, 1, 0)
    return tr, tr.transcribe_chunks(chunks)


def _text(result) -> str:
    return "".join(s.text for s in result.segments).strip()


def _spans(result) -> list[dict]:
    return [{"start": s.start, "end": s.end} for s in result.segments]


class Recorder:
    """The real :class:`~pipelines.core.whisper.WhisperAdapter`, with the wall-clock interval of every
    ``features`` and ``generate`` call recorded as ``(name, thread, start, end)``."""

    def __init__(self, whisper):
        self._whisper = whisper
        self.events: list[tuple[str, str, float, float]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._whisper, name)

    def _timed(self, name, *args, **kwargs):
        start = time.perf_counter()
        out = getattr(self._whisper, name)(*args, **kwargs)
        with self._lock:
            self.events.append((name, threading.current_thread().name, start, time.perf_counter()))
        return out

    def features(self, *args, **kwargs):
        return self._timed("features", *args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._timed("generate", *args, **kwargs)

    def features_done_before_first_generate(self) -> int:
        """Clips whose features were computed before the first model search returned."""
        first = min(end for name, _, _, end in self.events if name == "generate")
        return sum(name == "features" and end <= first for name, _, _, end in self.events)


@pytest.mark.parametrize("workers,prefetch", [(1, 1), (2, 2)])
def test_overlapped_results_match_the_serial_path(job_config, rows, chunks, serial, workers, prefetch):
    """Same keys in input order, same segments within tolerance, WER within half a point of the serial path."""
    serial_tr, expected = serial
    tr = make(job_config, workers, prefetch)
    assert tr.threads == workers + prefetch
    results = tr.transcribe_chunks(chunks)
    assert [(r.key, r.index) for r in results] == [(c.key, c.index) for c in chunks]
    assert_texts_agree({r.key: (_text(a), _text(r)) for a, r in zip(expected, results)})
    for a, r in zip(expected, results):
        assert_spans_close(_spans(a), _spans(r), r.key)
    refs = [r["reference"] for r in rows]
    wer = word_error_rate(refs, [_text(r) for r in results])
    assert wer <= word_error_rate(refs, [_text(r) for r in expected]) + 0.005 and wer < 0.10, wer
    if workers == 1:
        assert tr.calls == serial_tr.calls  # the same batches: overlap changes when they run, not what they hold


def test_next_batch_features_are_computed_while_the_model_decodes(job_config, chunks):
    """With one worker and one prefetched batch, the second batch's features are done before the first batch's
    search returns; without prefetch they are not (the instrument sees the difference)."""
    done = {}
    for prefetch in (0, 1):
        tr = make(job_config, 1, prefetch)
        recorder = Recorder(tr.whisper)
        tr.whisper = recorder
        tr.transcribe_chunks(chunks)
        done[prefetch] = recorder.features_done_before_first_generate()
        threads = {thread for _, thread, _, _ in recorder.events}
        assert len(threads) == 1 + prefetch
    assert done[0] == BATCH  # serial: only the first batch's own features
    assert done[1] == 2 * BATCH  # overlapped: the next batch's too


def test_a_failing_batch_names_its_files_and_the_rest_are_transcribed(job_config, corpus, rows):
    """A model failure on one clip, with overlap on: the call raises TranscriptionError naming that clip (cause
    chained); the engine then transcribes each file alone, so only that file fails; the transcriber still works."""
    bad = rows[1]["path"]
    tr = make(job_config, 1, 1)
    files = [prepare(corpus / r["path"], FileSpec(r["path"], r["path"]), job_config.chunking) for r in rows[:3]]
    bad_samples = files[1].chunk_samples[0].shape[0]
    real_features = tr.whisper.features

    class Broken(Recorder):
        def features(self, samples):
            if samples.shape[0] == bad_samples:
                raise RuntimeError("CUDA failed with error out of memory")
            return real_features(samples)

    tr.whisper = Broken(tr.whisper)
    chunks = [c for f in files for c in f.chunks()]
    with pytest.raises(TranscriptionError, match=bad) as info:
        tr.transcribe_chunks(chunks)
    assert isinstance(info.value.__cause__, RuntimeError)
    outcomes = Engine(tr.model_cfg, tr.decoding, tr).transcribe_isolated(files)
    assert [o.key for o in outcomes] == [r["path"] for r in rows[:3]]
    assert [o.failure is not None for o in outcomes] == [False, True, False]
    assert bad in outcomes[1].failure.message and outcomes[1].failure.error_type == "TranscriptionError"
    assert all(o.transcript.text for o in outcomes if o.failure is None)
