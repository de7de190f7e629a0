"""The recall corpus: every recalled value was stated earlier in its episode, in varied forms."""

import re

import numpy as np

from endprompt_ray.corpora.recall import recall_episode


def _episodes(count=400, seed=0):
    rng = np.random.default_rng(seed)
    return [recall_episode(rng, window_words=80) for _ in range(count)]


def test_every_recalled_value_was_stated_before_its_recall():
    checked = 0
    for episode in _episodes():
        body, recalls = episode.rsplit("\n", 1)
        if recalls.startswith("Again: "):  # a recurring span: its cue and rest occur in the body as one run
            assert recalls.removeprefix("Again: ").removesuffix(".") in body, episode
            checked += 1
            continue
        # each recall ends with its value and a period; the value is in the body, after the entity's name
        for entity, value in re.findall(r"([A-Z][a-z]+ [A-Z][a-z]+)\S*[^.]*? ([\w-]+)\.(?: |$)", recalls):
            assert entity in body and value in body, (entity, value, episode)
            assert body.index(entity) <= body.rindex(value), episode
            checked += 1
    assert checked >= 400


def test_episodes_are_seeded_and_vary_in_form():
    episodes = _episodes(200)
    assert episodes == _episodes(200) and episodes != _episodes(200, seed=1)
    recall_lines = [e.rsplit("\n", 1)[1] for e in episodes]
    forms = {"Q: What is the", "Recall the", "So the", "Again:", "'s "}
    assert all(any(form in line for line in recall_lines) for form in forms)
    values = " ".join(recall_lines)
    assert re.search(r" \d{2}\.", values) and re.search(r" \d{6}\.", values)  # 2 to 6 digits
    assert re.search(r" [A-Z]\d-[A-Z]\d\.", values)  # identifiers
