"""The run's counts and timings (:class:`RunSummary`), what the CLI prints at the end and the job writes to
``DIR/_runs/<run_id>.json`` (docs/resume.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from pipelines.core.schema import STATUS_EMPTY, STATUS_OK

#: How many error rows the rendered summary lists (the errors table has them all).
ERRORS_SHOWN = 20


@dataclass
class RunSummary:
    """Counts and timings of one run. ``files``/``ok``/``empty``/``error`` count the rows this run wrote (transcribed
    or copied); ``audio_s`` is the audio it transcribed, so ``real_time_factor`` = wall / audio (lower is faster)
    and ``x_real_time`` = audio / wall. ``output`` describes the manifest's rows in the folder after the run;
    ``ray_logs`` is the file that took Ray's own driver-side logging (a quiet console; its folder holds Ray Data's
    and the workers' logs), None with ``--verbose``."""

    run_id: str
    files: int = 0
    ok: int = 0
    empty: int = 0
    error: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    hash_s: float = 0.0
    errors: list[dict] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    manifest_rows: int = 0
    kept: int = 0
    transcribed: int = 0
    copied: int = 0
    worker_died: int = 0
    held_back: int = 0
    taken_out: dict[str, int] = field(default_factory=dict)
    parts_set_aside: list[str] = field(default_factory=list)
    output: Optional[dict] = None
    max_error_rate: Optional[float] = None
    error_rate_exceeded: bool = False
    ray_logs: Optional[str] = None
    uncovered: list[str] = field(default_factory=list)  # ids of rows with speech still without words

    def add(self, table: pa.Table, transcribed: bool = True) -> None:
        """Count the rows of a written table (``transcribed``: their audio counts towards ``audio_s``)."""
        names = ["id", "status", "duration_s", "error_type", "error_message", "uncovered_spans"]
        cols = table.select([n for n in names if n in table.column_names]).to_pylist()
        for row in cols:
            if row.get("uncovered_spans"):
                self.uncovered.append(row["id"])
            self.files += 1
            status = row["status"]
            if status == STATUS_OK:
                self.ok += 1
            elif status == STATUS_EMPTY:
                self.empty += 1
            else:
                self.error += 1
                self.errors.append({k: row[k] for k in ("id", "error_type", "error_message")})
            if transcribed:
                self.audio_s += row["duration_s"] or 0.0

    @property
    def real_time_factor(self) -> float:
        """Wall time per second of audio transcribed (NaN without audio)."""
        return self.wall_s / self.audio_s if self.audio_s else float("nan")

    @property
    def x_real_time(self) -> float:
        """Seconds of audio transcribed per second of wall time (NaN before the run ends)."""
        return self.audio_s / self.wall_s if self.wall_s else float("nan")

    def to_dict(self) -> dict:
        """The summary as JSON-ready data (``DIR/_runs/<run_id>.json``)."""
        return {
            "run_id": self.run_id, "files": self.files, "ok": self.ok, "empty": self.empty, "error": self.error,
            "audio_s": self.audio_s, "audio_hours": self.audio_s / 3600, "wall_s": self.wall_s,
            "ray_start_s": self.ray_start_s, "hash_s": self.hash_s, "real_time_factor": self.real_time_factor,
            "x_real_time": self.x_real_time, "manifest_rows": self.manifest_rows, "kept": self.kept,
            "transcribed": self.transcribed, "copied": self.copied, "worker_died": self.worker_died,
            "held_back": self.held_back,
            "taken_out": self.taken_out, "parts_set_aside": self.parts_set_aside, "output": self.output,
            "max_error_rate": self.max_error_rate, "error_rate_exceeded": self.error_rate_exceeded,
            "errors": self.errors, "parts": self.parts, "ray_logs": self.ray_logs,
            "files_with_uncovered_speech": len(self.uncovered), "uncovered_ids": self.uncovered[:ERRORS_SHOWN],
        }

    def render(self) -> str:
        """The summary as the lines the CLI prints: counts, the plan, speed, the output's state, the error-rate
        alarm, the first error rows and where Ray's own logs are."""
        taken = ", ".join(f"{n} {why}" for why, n in sorted(self.taken_out.items()))
        lines = [
            f"run {self.run_id}: {self.files} files: {self.ok} ok, {self.empty} empty, {self.error} error; "
            f"{len(self.uncovered)} with speech left without words"
            + (f" (e.g. {self.uncovered[:3]}: see uncovered_spans)" if self.uncovered else ""),
            f"manifest {self.manifest_rows} rows: {self.kept} already done, {self.transcribed} transcribed, "
            f"{self.copied} copied from identical audio"
            + (f"; {sum(self.taken_out.values())} old rows set aside ({taken})" if self.taken_out else "")
            + (f"; {len(self.parts_set_aside)} parts set aside (--overwrite)" if self.parts_set_aside else "")
            + (f"; {self.held_back} left as they were (their audio could not be reached: rerun later)"
               if self.held_back else ""),
            f"audio {self.audio_s / 3600:.3f} h ({self.audio_s:.1f} s) in {self.wall_s:.1f} s wall "
            f"(Ray start {self.ray_start_s:.1f} s, hashing {self.hash_s:.1f} s): {self.x_real_time:.1f}x real time, "
            f"real-time factor {self.real_time_factor:.4f}",
        ]
        if self.output is not None:
            o = self.output
            lines.append(f"output now: {o['rows']} rows for the manifest: {o['ok']} ok, {o['empty']} empty, "
                         f"{o['error']} error ({o['error_rate']:.1%}); errors table {o['errors_table']}")
            if o["missing"] or o["doubled"]:
                lines.append(f"  NOT EXACTLY ONCE: {len(o['missing'])} ids missing, {len(o['doubled'])} ids doubled "
                             f"(e.g. {(o['missing'] + o['doubled'])[:3]}): rerun the same command")
        if self.error_rate_exceeded:
            lines += ["", f"!!! ERROR RATE {self.output['error_rate']:.1%} IS ABOVE guards.max_error_rate "
                          f"{self.max_error_rate:.1%}: {self.output['error']} OF {self.manifest_rows} ROWS FAILED !!!",
                      "!!! see the errors below and the errors table; the job exits with code 3 !!!", ""]
        for err in self.errors[:ERRORS_SHOWN]:
            lines.append(f"  error {err['id']}: {err['error_type']}: {err['error_message']}")
        if len(self.errors) > ERRORS_SHOWN:
            lines.append(f"  ... and {len(self.errors) - ERRORS_SHOWN} more error rows "
                         "(status == 'error' in the output)")
        if self.ray_logs:
            lines.append(f"Ray's logs: {self.ray_logs} (Ray Data's and the workers' in the same folder; --verbose "
                         "shows them here)")
        return "\n".join(lines)
