"""Print a few transcript lines of an output folder (used by ``make demo``).

    python -m pipelines.show OUTPUT_DIR [--rows 10]
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from pipelines.core.wer import word_error_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.show", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="output folder of the job")
    parser.add_argument("--rows", type=int, default=10, help="rows to print")
    args = parser.parse_args(argv)
    df = pd.read_parquet(args.output)
    print(f"Parquet dataset: {os.path.abspath(args.output)} ({len(df)} rows)")
    print(df["status"].value_counts().to_string())
    for row in df.sort_values("id").head(args.rows).itertuples():
        body = row.text if row.status != "error" else f"[{row.error_type}] {row.error_message}"
        print(f"- {row.id} [{row.status}, {row.duration_s or 0:.1f} s, {len(row.segments)} segments]: {body}")
    scored = df[(df["status"] == "ok") & df["reference"].fillna("").str.strip().astype(bool)]
    if len(scored):
        wer = word_error_rate(scored["reference"].tolist(), scored["text"].tolist())
        print(f"WER against the references ({len(scored)} files, Whisper English normaliser): {wer:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
