"""The batch job's command line: a manifest of audio in, Parquet transcripts out, on Ray Data; rerun it to finish
what is left (docs/job.md, docs/resume.md).

    python -m pipelines.transcribe --manifest URI --output DIR [--config configs/local.yaml] [--set key=value ...]
        [--retry-errors] [--overwrite] [--break-lock] [--run-id ID] [--webhook-url URL] [--verbose]

The run itself is :func:`pipelines.job.run.run_job`; this module parses the flags, sets up the console
(:mod:`pipelines.job.console`: the job's own lines and summary; Ray's logging in Ray's session log folder unless
``--verbose``), prints the summary and maps errors to exit codes. Works the same run directly or under
``ray job submit`` (it joins the cluster it finds).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from pipelines.config import load_config
from pipelines.core.errors import ConfigError, ManifestError, OutputIntegrityError, StorageError
from pipelines.job.console import configure_console
from pipelines.job.run import run_job
from pipelines.job.webhook import job_event, post_webhook
from pipelines.redact import scrub_text

DEFAULT_CONFIG = "configs/local.yaml"
#: Exit code of a run whose error rate passed ``guards.max_error_rate`` (2 is a bad config or manifest, or
#: storage that cannot be used).
EXIT_ERROR_RATE = 3
#: Exit code of a run after which the output does not hold exactly one row per manifest row (ids missing or
#: doubled; the error names them): rerun the same command.
EXIT_NOT_EXACTLY_ONCE = 4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line's flags (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.transcribe",
        description="Transcribe a manifest of audio into Parquet with Ray Data and faster-whisper. Rerun the same "
                    "command to finish an interrupted job: rows already done in --output are kept.",
        epilog="exit codes: 0 done; 2 bad config or manifest, unusable storage, or --output locked by another "
               "run (the message names it); 3 error rate above guards.max_error_rate; 4 the output does not hold "
               "exactly one row per manifest row after the run (the ids are named): rerun the same command",
    )
    parser.add_argument("--manifest", required=True,
                        help="JSONL/CSV/Parquet manifest, a folder or a glob of audio files (local or fsspec URL)")
    parser.add_argument("--output", required=True, help="output folder for the Parquet dataset (local or URL)")
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.batch_size=16 (repeatable)")
    parser.add_argument("--run-id", default=None, help="run id recorded in every row (default: time + random)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="also redo the rows whose current row in --output is an error row")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh: set every current part of --output aside under _replaced/<run_id>/")
    parser.add_argument("--break-lock", action="store_true",
                        help="take --output's lock (_lock.json) even if its run's heartbeat is fresh; only when "
                             "sure that run is dead (a stale lock, or one of a process gone from this host, is "
                             "taken over without it)")
    parser.add_argument("--webhook-url", default=None,
                        help="POST a JSON event here once when the run ends (succeeded, failed or stopped); "
                             "see docs/jobs.md")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and Ray Data's own logging (progress, execution plans, worker output) on "
                             "the console; by default it goes to Ray's session log folder, named in the summary")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code: 0 done; 2 bad config or manifest, unusable storage, or the output
    folder locked by another run (the message names its run id, host, pid and heartbeat age); 3 error rate above
    ``guards.max_error_rate``; 4 (:data:`EXIT_NOT_EXACTLY_ONCE`) the output does not hold exactly one row per
    manifest row after the run (the message names the first missing and doubled ids). SIGTERM (``ray job stop``)
    ends the run as Ctrl-C does: the rows in hand are written and the lock released. With ``--webhook-url`` the
    run's end is POSTed there once (:mod:`pipelines.job.webhook`), also when it fails or is stopped."""
    args = parse_args(argv)
    configure_console(args.verbose)
    _exit_on_sigterm()
    outcome: dict = {"status": "failed", "code": 1, "summary": None, "error": None}
    try:
        code = _run(args, outcome)
        outcome.update(code=code, status="succeeded" if code == 0 else "failed")
        return code
    except (KeyboardInterrupt, SystemExit) as exc:
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        outcome.update(status="stopped", code=code, error=f"stopped ({type(exc).__name__})")
        raise
    except BaseException as exc:
        outcome["error"] = scrub_text(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if args.webhook_url:
            post_webhook(args.webhook_url, job_event(args.run_id, outcome["status"], outcome["code"], args.output,
                                                     outcome["summary"], outcome["error"]))


def _exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit in the main thread (as Ray's driver does once ``ray.init`` ran), so a run
    stopped before Ray starts still releases its lock."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def _run(args: argparse.Namespace, outcome: dict) -> int:
    """Load the config, run the job and print its summary; fills ``outcome`` (summary, error) for the webhook."""
    config_path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        cfg = load_config(config_path, args.overrides)
        summary = run_job(cfg, args.manifest, args.output, args.run_id,
                          overwrite=args.overwrite, retry_errors=args.retry_errors, break_lock=args.break_lock,
                          verbose=args.verbose)
    except (ConfigError, ManifestError, StorageError) as exc:
        outcome["error"] = scrub_text(f"error: {exc}")
        print(outcome["error"], file=sys.stderr)
        return 2
    except OutputIntegrityError as exc:
        if getattr(exc, "summary", None) is not None:
            outcome["summary"] = exc.summary.to_dict()
            print(scrub_text(exc.summary.render()))
        outcome["error"] = scrub_text(f"error: {exc}")
        print(outcome["error"], file=sys.stderr)
        return EXIT_NOT_EXACTLY_ONCE
    outcome["summary"] = summary.to_dict()
    print(scrub_text(summary.render()))
    print(scrub_text(f"transcripts: {args.output} (pandas.read_parquet({args.output!r}))"))
    if summary.error_rate_exceeded:
        outcome["error"] = "the error rate is above guards.max_error_rate"
        return EXIT_ERROR_RATE
    return 0


if __name__ == "__main__":
    sys.exit(main())
