"""Real text that every install has, for perplexity by length: installed packages' source code, and the King James
Bible when Debian's `bible-kjv` is installed.

Repository-level code is a standard long-context corpus. A package document is one directory's `.py` files (not its
subdirectories') concatenated in sorted order, each behind a `# file: <path>` line, cut at `max_chars`; directories
shorter than `min_chars` are left out and the documents kept are spread evenly over the sorted directories, so the
same package version always gives the same documents. Each document records its package and version.

The Bible is one document per book, read through the `bible` command of Debian's bible-kjv (its data, in
bible-kjv-text, is compressed): `apt-get install bible-kjv`. Where it is missing the source is skipped with its
reason in the report, never silently.

    python -m endprompt_ray.corpora.real_text real_text.jsonl   # then --ppl-documents real_text.jsonl
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from endprompt_ray.errors import ConfigError

PACKAGES = ("transformers", "torch", "ray")  # installed with the project
BIBLE = "bible-kjv"
DEFAULT_SOURCES = (*PACKAGES, BIBLE)
MIN_CHARS = 80_000  # about 20K tokens of code for a Llama tokenizer: enough for a 16K window
MAX_CHARS = 200_000
BIBLE_RANGE = "gen1:1-rev22:21"
_CHAPTER_HEAD = re.compile(r"^(\S.*\S) (\d+)$")  # "Genesis 1", "1 Samuel 3": a chapter's heading line


@dataclass
class RealDocument:
    text: str
    source: str  # the package or BIBLE
    version: str  # the package's (or Debian data file's) version
    name: str  # the directory inside the package, or the book


@dataclass
class RealTextReport:
    documents: list[RealDocument]
    skipped: dict[str, str] = field(default_factory=dict)  # source -> why it gave no documents

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for doc in self.documents:
            out[doc.source] = out.get(doc.source, 0) + 1
        return out

    def describe(self) -> str:
        kept = ", ".join(f"{n} from {s}" for s, n in self.counts().items()) or "none"
        skipped = "; ".join(f"{s}: {why}" for s, why in self.skipped.items())
        return f"documents: {kept}" + (f"; skipped {len(self.skipped)} source(s): {skipped}" if skipped else "")


def package_dir(package: str) -> Path:
    """The installed package's directory, found without importing it (torch and ray are slow to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"real-text source {package!r} is not an installed package; pip install it or choose "
                          f"from {', '.join(DEFAULT_SOURCES)}")
    return Path(next(iter(spec.submodule_search_locations)))


def _directory_text(root: Path, directory: Path, max_chars: int) -> str:
    parts, size = [], 0
    for f in sorted(directory.glob("*.py")):
        part = f"# file: {f.relative_to(root).as_posix()}\n{f.read_text('utf-8', errors='replace')}\n"
        parts.append(part)
        size += len(part)
        if size >= max_chars:
            break
    return "".join(parts)[:max_chars]


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over `items` (first and last included), all of them if there are fewer."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def package_documents(package: str, max_documents: int = 8, min_chars: int = MIN_CHARS,
                      max_chars: int = MAX_CHARS) -> list[RealDocument]:
    """Up to `max_documents` directory documents of an installed package (see the module docstring)."""
    if not 0 < min_chars <= max_chars:
        raise ConfigError(f"need 0 < min_chars <= max_chars, got {min_chars} and {max_chars}")
    root, version = package_dir(package), importlib.metadata.version(package)
    directories = sorted([root, *(d for d in root.rglob("*") if d.is_dir() and d.name != "__pycache__")])
    texts = [(d, _directory_text(root, d, max_chars)) for d in directories]
    long_enough = [(d, t) for d, t in texts if len(t) >= min_chars]
    return [RealDocument(t, package, version, d.relative_to(root).as_posix() or ".")
            for d, t in spread(long_enough, max_documents)]


def bible_books(text: str) -> list[tuple[str, str]]:
    """(book, text) from the `bible` command's output, split where a book's chapter 1 begins."""
    books: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = _CHAPTER_HEAD.match(line)
        if head and head.group(2) == "1":
            books.append((head.group(1), []))
        if books:
            books[-1][1].append(line)
    return [(name, "\n".join(lines).strip() + "\n") for name, lines in books]


def bible_documents(max_documents: int = 8, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                    command: str = "bible", data_dir: str | None = None) -> list[RealDocument]:
    """Books of the King James Bible of at least `min_chars` characters, evenly spread; raises FileNotFoundError
    when the `bible` command is not installed."""
    executable = shutil.which(command)
    if executable is None:
        raise FileNotFoundError(f"no {command!r} command: install Debian's bible-kjv (apt-get install bible-kjv)")
    args = [executable, *(["-p", data_dir] if data_dir else []), BIBLE_RANGE]
    text = subprocess.run(args, capture_output=True, text=True, check=True, env={"COLUMNS": "100000"}).stdout
    books = [(name, body[:max_chars]) for name, body in bible_books(text) if len(body) >= min_chars]
    if not books:
        raise FileNotFoundError(f"{command} {BIBLE_RANGE} printed no book of {min_chars}+ characters; is its data "
                                "(bible-kjv-text) installed?")
    return [RealDocument(body, BIBLE, "kjv", name) for name, body in spread(books, max_documents)]


def real_text(sources=DEFAULT_SOURCES, max_documents: int = 8, min_chars: int = MIN_CHARS,
              max_chars: int = MAX_CHARS) -> RealTextReport:
    """Documents of every source, up to `max_documents` each; an unavailable Bible is skipped with its reason."""
    unknown = [s for s in sources if s != BIBLE and importlib.util.find_spec(s) is None]
    if unknown:
        raise ConfigError(f"real-text source(s) {', '.join(unknown)} are not installed packages; choose from "
                          f"{', '.join(DEFAULT_SOURCES)} or any installed package")
    report = RealTextReport([])
    for source in sources:
        if source == BIBLE:
            try:
                report.documents += bible_documents(max_documents, min_chars, max_chars)
            except (FileNotFoundError, subprocess.CalledProcessError) as err:
                report.skipped[BIBLE] = str(err)
            continue
        docs = package_documents(source, max_documents, min_chars, max_chars)
        if docs:
            report.documents += docs
        else:
            report.skipped[source] = f"no directory of {min_chars}+ characters of Python source"
    return report


def write_real_text(path: str | Path, sources=DEFAULT_SOURCES, max_documents: int = 8, min_chars: int = MIN_CHARS,
                    max_chars: int = MAX_CHARS) -> RealTextReport:
    """A .jsonl file (`text`, `source`, `version`, `name` per line) that eval/perplexity.py reads as documents."""
    report = real_text(sources, max_documents, min_chars, max_chars)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for doc in report.documents:
            f.write(json.dumps({"text": doc.text, "source": doc.source, "version": doc.version, "name": doc.name},
                               ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write real-text documents (package source, the KJV Bible) as "
                                                 "jsonl for perplexity by length")
    parser.add_argument("out", help="the .jsonl file to write")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated (default %(default)s)")
    parser.add_argument("--documents", type=int, default=8, help="per source (default %(default)s)")
    parser.add_argument("--min-chars", type=int, default=MIN_CHARS)
    parser.add_argument("--max-chars", type=int, default=MAX_CHARS)
    args = parser.parse_args(argv)
    report = write_real_text(args.out, args.sources.split(","), args.documents, args.min_chars, args.max_chars)
    print(f"{args.out}: {report.describe()}")


if __name__ == "__main__":
    main()
