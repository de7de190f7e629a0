"""JSON and JSONL files for evaluation data: malformed input raises EvalInputError naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from endprompt_ray.eval.errors import EvalInputError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) per non-blank line; callers check the fields and cite the line number."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalInputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            yield lineno, obj


def read_json(path: str | Path, expected: str | None = None) -> Any:
    """The parsed file; bad JSON names the file and line, and what the file should hold when `expected` says."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        hint = f"; expected {expected}" if expected else ""
        raise EvalInputError(f"{path}:{err.lineno}: not valid JSON ({err.msg}){hint}") from err


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
