"""Shared fixtures: a local Ray, the tiny tokenizer/model, and demo data files in RULER's formats."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# every test (and every process it starts) gets its own local Ray, never the cluster a `ray start` on this machine
# recorded, which a plain ray.init() would join (or wait minutes for, had it died)
os.environ["RAY_ADDRESS"] = "local"

FIRST = "test_dependencies.py"  # a missing package must fail in seconds, not after the slow end-to-end tests


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name != FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from endprompt_ray.models.loading import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def tiny_dir():
    from endprompt_ray.models.loading import tiny_model_dir

    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    from endprompt_ray.eval.ruler.demo_data import write_demo_essay, write_demo_hotpotqa, write_demo_squad

    root = tmp_path_factory.mktemp("ruler_data")
    return {"essay": str(write_demo_essay(root / "essay.txt", num_documents=150)),
            "squad": str(write_demo_squad(root / "squad.json", num_articles=30)),
            "hotpotqa": str(write_demo_hotpotqa(root / "hotpot.json", num_questions=60))}


@pytest.fixture(scope="session")
def sources(demo_files):
    from endprompt_ray.eval.ruler.sources import Sources

    return Sources(demo_files["essay"], demo_files["squad"], demo_files["hotpotqa"])


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh sqlite tracking URI as the process default, restored afterwards."""
    import mlflow

    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)


@pytest.fixture
def one_thread():
    """Tiny models decode far faster on one thread; OpenMP spinning across busy cores dominates otherwise."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
