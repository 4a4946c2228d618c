"""A bounded load test of the endpoint, on loopback only.

Sends the dev corpus's short clips (``manifest.jsonl``, clips up to ``--max-clip-s``) with 1, 4 and 8 concurrent
clients and prints, per level, throughput (requests/s and audio seconds per second) and p50/p95 latency; then the
p50 latency of one ~10 s clip sent alone, against the bare engine path's time for the same clip in this process
(the engine's prepare + transcribe, and transcribe alone), the two alternating so both see the same load.

Without ``--url`` it starts its own local Ray and Serve (``configs/serve.yaml``'s args) on a free 127.0.0.1 port and
also reports the model deployment's batches and model calls per level; with ``--url`` it loads a running server
(which must be on loopback). Every level stops after ``--requests`` requests or ``--max-seconds``, whichever first.

    python -m serve_app.loadtest                    # self-hosted, 1/4/8 clients, 32 requests per level
    python -m serve_app.loadtest --url http://127.0.0.1:8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "dev"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Clip:
    """One audio file of the corpus: its name, bytes and duration (s)."""

    name: str
    data: bytes
    duration_s: float


@dataclass
class LevelResult:
    """Figures of one concurrency level: latencies in seconds, throughput per second of wall time."""

    clients: int
    requests: int
    errors: int
    wall_s: float
    throughput_rps: float
    audio_s_per_s: float
    p50_s: float
    p95_s: float
    batches: Optional[int] = None
    model_calls: Optional[int] = None


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def load_clips(corpus: Path, max_clip_s: float) -> list[Clip]:
    """The corpus clips no longer than ``max_clip_s``, in manifest order."""
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [Clip(r["path"], (corpus / r["path"]).read_bytes(), float(r["duration_s"]))
            for r in rows if float(r["duration_s"]) <= max_clip_s]


def nearest_clip(corpus: Path, target_s: float) -> Clip:
    """The corpus clip whose duration is closest to ``target_s``."""
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    best = min(rows, key=lambda r: abs(float(r["duration_s"]) - target_s))
    return Clip(best["path"], (corpus / best["path"]).read_bytes(), float(best["duration_s"]))


class Client:
    """Posts clips to ``{url}/v1/audio/transcriptions`` (response_format=json)."""

    def __init__(self, url: str, api_key: Optional[str], timeout_s: float = 120.0):
        import requests

        self.url = url.rstrip("/") + "/v1/audio/transcriptions"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._requests = requests

    def send(self, clip: Clip) -> tuple[bool, float]:
        """(success, latency in s) of one request."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        t0 = time.perf_counter()
        try:
            r = session.post(self.url, headers=self.headers, data={"model": "whisper-1"},
                             files={"file": (Path(clip.name).name, clip.data)}, timeout=self.timeout_s)
            ok = r.status_code == 200
        except self._requests.RequestException:
            ok = False
        return ok, time.perf_counter() - t0


def run_level(client: Client, clips: list[Clip], clients: int, n_requests: int, max_seconds: float,
              stats=None) -> LevelResult:
    """``clients`` threads send clips (cycling through ``clips``) until ``n_requests`` were sent or
    ``max_seconds`` passed."""
    lock = threading.Lock()
    counter = {"next": 0}
    latencies: list[float] = []
    audio = {"s": 0.0, "errors": 0}
    deadline = time.monotonic() + max_seconds
    before = stats() if stats else None

    def worker():
        while time.monotonic() < deadline:
            with lock:
                i = counter["next"]
                if i >= n_requests:
                    return
                counter["next"] += 1
            clip = clips[i % len(clips)]
            ok, latency = client.send(clip)
            with lock:
                if ok:
                    latencies.append(latency)
                    audio["s"] += clip.duration_s
                else:
                    audio["errors"] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = stats() if stats else None
    return LevelResult(
        clients=clients, requests=len(latencies), errors=audio["errors"], wall_s=round(wall, 3),
        throughput_rps=round(len(latencies) / wall, 3), audio_s_per_s=round(audio["s"] / wall, 3),
        p50_s=round(percentile(latencies, 0.5), 3), p95_s=round(percentile(latencies, 0.95), 3),
        batches=(after["batches"] - before["batches"]) if stats else None,
        model_calls=(after["model_calls"] - before["model_calls"]) if stats else None,
    )


class BareTranscriber:
    """The server's path in this process, without Ray or HTTP: the same engine calls (prepare, then transcribe)
    with the same model, decoding, chunking and input limits."""

    def __init__(self, cfg):
        from pipelines.core.engine import Engine

        self.cfg = cfg
        self.engine = Engine(cfg.model, cfg.decoding)

    def run(self, clip: Clip) -> tuple[float, float]:
        """(prepare + transcribe, transcribe alone) wall times in seconds for ``clip``; prepare is decode + VAD
        chunk, transcribe includes the stitch."""
        from pipelines.core.engine import FileSpec, prepare
        from serve_app.preparation import input_limits

        t0 = time.perf_counter()
        prepared = prepare(clip.data, FileSpec("clip", clip.name, pack_group="clip"), self.cfg.chunking,
                           input_limits(self.cfg))
        t1 = time.perf_counter()
        self.engine.transcribe([prepared])
        return time.perf_counter() - t0, time.perf_counter() - t1


def single_clip(client: Client, bare: BareTranscriber, clip: Clip, repeats: int) -> tuple[float, float, float]:
    """p50 latencies (s) of ``clip`` sent alone: served, bare full path, bare transcribe only. Served and bare runs
    alternate, so both see the same machine load; the first of each warms up and is not counted."""
    served, full, model_only = [], [], []
    for i in range(repeats + 1):
        ok, latency = client.send(clip)
        f, m = bare.run(clip)
        if i and ok:
            served.append(latency)
        if i:
            full.append(f)
            model_only.append(m)
    nan = float("nan")
    return (statistics.median(served) if served else nan, statistics.median(full) if full else nan,
            statistics.median(model_only) if model_only else nan)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(config_path: Path, overrides: list[str]) -> dict:
    """The app args of the Serve config file ``config_path``, with ``overrides`` appended."""
    import yaml

    args = yaml.safe_load(config_path.read_text())["applications"][0]["args"]
    return dict(args, overrides=list(args.get("overrides") or []) + list(overrides))


def start_local_server(args: dict, num_cpus: Optional[int]):
    """Start a local Ray and Serve on a free loopback port with the app built from ``args``.

    Returns:
        (url, ServeConfig, stats callable, api_key or None).
    """
    import ray
    from ray import serve

    from serve_app.app import ServeAppArgs, build_app, resolve_api_key, serve_config_from_args

    cfg = serve_config_from_args(ServeAppArgs.model_validate(args))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="raywhisper", route_prefix="/")
    handle = serve.get_deployment_handle("TranscriberDeployment", app_name="raywhisper")
    return f"http://127.0.0.1:{port}", cfg, (lambda: handle.stats.remote().result()), resolve_api_key(cfg)


def parse_args(argv: Optional[list[str]] = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line (see the module doc): the parser (for its errors) and the options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on loopback (default: start one here)")
    parser.add_argument("--api-key", help="API key for --url")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "serve.yaml",
                        help="Serve config file whose app args configure the local server and the bare engine path")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at most)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time budget per level (s)")
    parser.add_argument("--max-clip-s", type=float, default=12.0, help="longest clip sent in the levels (s)")
    parser.add_argument("--single-target-s", type=float, default=10.0, help="duration of the single-clip test (s)")
    parser.add_argument("--single-repeats", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a ServeConfig field of the app args (repeatable), e.g. decoding.beam_size=1")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser, parser.parse_args(argv)


def report(cfg, opts: argparse.Namespace, n_clips: int, levels: list[LevelResult], single: Clip,
           p50s: tuple[float, float, float]) -> dict:
    """Print the figures; return them as a dict."""
    served_p50, bare_full, bare_model = p50s
    print(f"load test: {n_clips} clips <= {opts.max_clip_s:g} s from {opts.corpus}, "
          f"model {cfg.model.name} ({cfg.model.device}, {cfg.model.compute_type}), "
          f"beam_size {cfg.decoding.beam_size}, max_batch_size {cfg.deployment.max_batch_size}, "
          f"batch_wait {cfg.deployment.batch_wait_timeout_s} s")
    print(f"{'clients':>7} {'ok':>4} {'err':>4} {'wall s':>7} {'req/s':>6} {'audio s/s':>9} {'p50 s':>6} {'p95 s':>6}"
          f" {'batches':>7} {'model calls':>11}")
    for lv in levels:
        print(f"{lv.clients:>7} {lv.requests:>4} {lv.errors:>4} {lv.wall_s:>7.2f} {lv.throughput_rps:>6.2f} "
              f"{lv.audio_s_per_s:>9.2f} {lv.p50_s:>6.3f} {lv.p95_s:>6.3f} {lv.batches if lv.batches is not None else '-':>7}"
              f" {lv.model_calls if lv.model_calls is not None else '-':>11}")
    base = levels[0].throughput_rps if levels else float("nan")
    for lv in levels[1:]:
        print(f"throughput at {lv.clients} clients: {lv.throughput_rps / base:.2f}x one client's")
    ratio = served_p50 / bare_full
    print(f"single clip {single.name} ({single.duration_s:g} s): served p50 {served_p50:.3f} s; bare engine p50 "
          f"{bare_full:.3f} s (prepare + transcribe), {bare_model:.3f} s (transcribe only); "
          f"ratio {ratio:.2f}x (vs transcribe only {served_p50 / bare_model:.2f}x)")
    return {
        "levels": [asdict(lv) for lv in levels],
        "single_clip": {"name": single.name, "duration_s": single.duration_s, "served_p50_s": round(served_p50, 3),
                        "bare_full_p50_s": round(bare_full, 3), "bare_transcribe_p50_s": round(bare_model, 3),
                        "ratio_vs_full": round(ratio, 3), "ratio_vs_transcribe": round(served_p50 / bare_model, 3)},
    }


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the load test; prints the figures and returns them as a dict."""
    parser, opts = parse_args(argv)
    from serve_app.app import ServeAppArgs, serve_config_from_args

    stats = None
    args = app_args(opts.config, opts.overrides)
    if opts.url:
        host = urlparse(opts.url).hostname
        if host not in LOOPBACK:
            parser.error(f"--url must be on loopback ({sorted(LOOPBACK)}), got {host!r}")
        cfg = serve_config_from_args(ServeAppArgs.model_validate(args))
        url, api_key = opts.url, opts.api_key
    else:
        url, cfg, stats, api_key = start_local_server(args, opts.num_cpus)

    clips = load_clips(opts.corpus, opts.max_clip_s)
    client = Client(url, api_key)
    try:
        for clip in clips[:2]:  # warm up the path (first-request costs)
            client.send(clip)
        levels = [run_level(client, clips, n, opts.requests, opts.max_seconds, stats) for n in opts.clients]
        single = nearest_clip(opts.corpus, opts.single_target_s)
        p50s = single_clip(client, BareTranscriber(cfg), single, opts.single_repeats)
    finally:
        if stats is not None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    result = report(cfg, opts, len(clips), levels, single, p50s)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
