"""Evaluate a model directory on RULER, passkey, perplexity (and LongBench): `endprompt_ray.jobs.evaluate` as a
script, for `ray job submit --working-dir . -- python pipelines/evaluate.py ...` and the README's commands.

    python pipelines/evaluate.py --model DIR --suites passkey,report_code,ppl --lengths 256,1024,2048
    python pipelines/evaluate.py --help                                           # every option
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout even when not pip-installed

from endprompt_ray.jobs.evaluate import build_parser, main, parse_args  # noqa: E402

__all__ = ["build_parser", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
