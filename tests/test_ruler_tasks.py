"""RULER task facts: names, parameters, templates, value formats, needle placement, per-family sample structure."""

import re
from collections import Counter

import pytest

from endprompt_ray.eval.ruler import ALL_TASKS, generate_samples, tasks as T, words
from endprompt_ray.eval.ruler.fitting import TokenCounter, TooShort
from endprompt_ray.eval.ruler.fwe import fwe_vocab_size, word_counts, zeta
from endprompt_ray.eval.ruler.niah import singular
from endprompt_ray.eval.ruler.samples import BUILDERS, build_samples, sample_seed
from endprompt_ray.eval.ruler.sources import BuildContext

SYNTHETIC_YAML = {  # NVIDIA/RULER scripts/synthetic.yaml
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1), "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1), "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4),
}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def counter(tiny_tokenizer):
    return TokenCounter(tiny_tokenizer)


def one(task, length, counter, sources, seed=42):
    return generate_samples(task, length, 1, counter, sources, seed)[0]


def test_task_list_and_parameters():
    assert ALL_TASKS == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
    for name, (hay, k_type, v_type, k, v, q) in SYNTHETIC_YAML.items():
        p = T.TASKS[name].params
        assert (p["type_haystack"], p["type_needle_k"], p["type_needle_v"], p["num_needle_k"], p["num_needle_v"],
                p["num_needle_q"]) == (hay, k_type, v_type, k, v, q)
    assert dict(T.TASKS["vt"].params) == {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}
    assert dict(T.TASKS["cwe"].params) == {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10, "num_fewshot": 1}
    assert dict(T.TASKS["fwe"].params) == {"alpha": 2.0}
    assert (T.TASKS["qa_1"].params["dataset"], T.TASKS["qa_2"].params["dataset"]) == ("squad", "hotpotqa")
    ttg = {t: T.TASKS[t].tokens_to_generate for t in ALL_TASKS}
    assert {ttg["niah_single_1"], ttg["vt"], ttg["cwe"], ttg["fwe"], ttg["qa_1"]} == {128, 30, 120, 50, 32}
    assert [T.TASKS[t].metric for t in ("niah_multivalue", "vt", "cwe", "fwe", "qa_2")] == \
        ["string_match_all"] * 4 + ["string_match_part"]
    assert [T.TASKS[t].requires for t in ("niah_single_1", "niah_single_2", "niah_multikey_2", "qa_1", "qa_2")] == \
        [None, "essay", None, "squad", "hotpotqa"]


def test_reference_strings():
    assert T.NEEDLE == "One of the special magic {type_needle_v} for {key} is: {value}."
    assert T.NOISE == "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    assert T.NIAH_ANSWER_PREFIX == " The special magic {type_needle_v} for {query} mentioned in the provided text are"
    assert T.QA_ANSWER_PREFIX == " Answer:" and T.DOCUMENT_PROMPT == "Document {i}:\n{document}"
    assert T.CWE_ANSWER_PREFIX == " Answer: The top 10 words that appear most often in the list are:"
    # NVIDIA/RULER constants.py since 4a216f4 (the "assgined" typo fixed), unchanged at c3f5e3b
    assert T.VT_ANSWER_PREFIX == (" Answer: According to the chain(s) of variable assignment in the text above, "
                                  "{num_v} variables are assigned the value {query}, they are: ")
    assert T.DEPTHS[:5] == (0, 3, 5, 8, 10) and len(T.DEPTHS) == 40 and T.DEPTHS[-1] == 100
    assert singular(T.NIAH_TEMPLATE).startswith("A special magic {type_needle_v} is hidden within the following text.")
    assert "What is the special magic" in singular(T.NIAH_TEMPLATE)
    assert singular(T.NIAH_ANSWER_PREFIX).endswith("mentioned in the provided text is")


def test_value_formats():
    import random

    rng = random.Random(0)
    for _ in range(50):
        assert re.fullmatch(r"[1-9]\d{6}", words.random_number(rng))
        assert UUID4.match(words.random_uuid(rng))
        word = words.random_word(rng)  # adjectives may contain hyphens themselves ("teeny-tiny")
        assert any(word[:i] in words.adjectives() and word[i + 1:] in words.nouns()
                   for i, ch in enumerate(word) if ch == "-")
    assert len(words.common_word_pool()) == len(set(words.common_word_pool())) > 5000


def test_niah_single_prompt_and_needle(counter, sources):
    s = one("niah_single_1", 1024, counter, sources)
    (value,) = s.answers
    assert re.fullmatch(r"\d{7}", value)
    assert s.prompt.startswith("A special magic number is hidden within the following text. Make sure to memorize "
                               "it. I will quiz you about the number afterwards.\n")
    key = re.search(r"What is the special magic number for (\S+) mentioned in the provided text\?", s.prompt)[1]
    assert s.prompt.endswith(f"? The special magic number for {key} mentioned in the provided text is")
    assert f"One of the special magic numbers for {key} is: {value}." in s.prompt  # the needle keeps the plural
    assert T.NOISE in s.prompt


def test_niah_multi_variants(counter, sources):
    mv = one("niah_multivalue", 2048, counter, sources)
    key = re.search(r"special magic numbers for (\S+) mentioned", mv.prompt)[1]
    assert mv.prompt.startswith("Some special magic numbers are hidden") and len(set(mv.answers)) == 4
    assert all(f"for {key} is: {v}." in mv.prompt for v in mv.answers)
    assert mv.prompt.endswith(f"The special magic numbers for {key} mentioned in the provided text are")

    mq = one("niah_multiquery", 2048, counter, sources)
    query = re.search(r"What are all the special magic numbers for (.+) mentioned in the provided text\?", mq.prompt)[1]
    keys = query.replace(", and ", ", ").split(", ")
    assert query.count(", ") == 3 and ", and " in query and len(mq.answers) == 4
    assert sorted(mq.answers) == sorted(re.search(rf"for {re.escape(k)} is: (\d+)\.", mq.prompt)[1] for k in keys)

    mk = one("niah_multikey_1", 2048, counter, sources)
    assert mk.prompt.count("One of the special magic numbers for ") == 4 and len(mk.answers) == 1

    mk3 = one("niah_multikey_3", 2048, counter, sources)
    lines = [x for x in mk3.prompt.split("\n") if x.startswith("One of the special magic uuids for ")]
    assert len(lines) > 5 and all(UUID4.match(x.split()[-1].rstrip(".")) for x in lines)
    assert UUID4.match(mk3.answers[0]) and mk3.prompt.startswith("A special magic uuid is hidden")


def test_needle_depths(counter, sources):
    for task in ("niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multivalue"):
        for s in generate_samples(task, 4096, 3, counter, sources):
            head = s.prompt.index("\n") + 1
            context = s.prompt[head:s.prompt.rindex("\nWhat ")]
            for value, depth in s.depths.items():
                needle = next(x for x in re.split(r"(?<=\.)[ \n]", context) if x.endswith(f" is: {value}."))
                assert depth == pytest.approx(100 * context.find(needle) / len(context), abs=0.01)
            if task == "niah_single_2":  # essay haystack: inserted at one of the 40 reference depths
                assert min(abs(s.depths[s.answers[0]] - d) for d in T.DEPTHS) < 4


def test_vt_chain_and_example(counter, sources):
    s = one("vt", 2048, counter, sources)
    assert len(s.answers) == 5 and all(re.fullmatch(r"[A-Z]{5}", v) for v in s.answers)
    value = re.search(rf"VAR {s.answers[0]} = (\d{{5}})\n", s.prompt)[1]
    for a, b in zip(s.answers, s.answers[1:]):
        assert f"VAR {b} = VAR {a} " in s.prompt
    assert s.prompt.endswith(f"5 variables are assigned the value {value}, they are: ")
    assert "assgined" not in s.prompt  # the worked example uses the same prefix
    example, question = s.prompt.split("\n\nMemorize and track", 1)  # the worked example comes first
    ex_names = example.split()[-5:]
    assert all(re.fullmatch(r"[A-Z]{3}", v) for v in ex_names) and T.VT_ICL_VALUE not in example
    assert example.startswith("Memorize and track the chain(s) of variable assignment hidden in the following text.")


@pytest.mark.parametrize("length,example,repeats", [(2048, (20, 3, 1), (6, 1)), (8192, (40, 10, 3), (30, 3))])
def test_cwe_word_frequencies(counter, sources, length, example, repeats):
    s = one("cwe", length, counter, sources)
    shot, main = s.prompt.split("\nBelow is a numbered list", 1)
    listing = re.search(r"most often\.\n(.*)\nQuestion", shot, re.S)[1]
    ex_counts = Counter(re.findall(r"\d+\. (\S+)", listing))
    assert len(ex_counts) == example[0] and sorted(set(ex_counts.values())) == [example[2], example[1]]
    counts = Counter(re.findall(r"\d+\. (\S+)", re.search(r"most often\.\n(.*)\nQuestion", main, re.S)[1]))
    assert sorted(set(counts.values())) == [repeats[1], repeats[0]]
    assert sorted(s.answers) == sorted(w for w, c in counts.items() if c == repeats[0]) and len(s.answers) == 10
    assert s.prompt.endswith(T.CWE_ANSWER_PREFIX)


def test_fwe_zipf_counts(counter, sources):
    assert zeta(2.0) == pytest.approx(3.14159265358979 ** 2 / 6, rel=1e-9)
    assert list(word_counts(1000, 5, 2.0)) == [int(1000 * k ** -2 / zeta(2.0)) for k in range(1, 6)]
    s = one("fwe", 4096, counter, sources)
    text = re.search(r"coded words\. (.*)\nQuestion", s.prompt, re.S)[1].split(" ")
    counts = Counter(text)
    assert len(counts) <= 80 and counts.most_common(1)[0][0] == "..."
    assert [w for w, _ in counts.most_common(4)[1:]] == s.answers
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in counts if w != "...")


def test_qa_documents(counter, sources):
    for task in ("qa_1", "qa_2"):
        s = one(task, 4096, counter, sources)
        docs = re.findall(r"Document (\d+):\n", s.prompt)
        assert docs == [str(i) for i in range(1, len(docs) + 1)] and len(docs) > 3
        assert s.prompt.startswith("Answer the question based on the given documents.")
        assert re.search(r"\n\nQuestion: Which code is given in the report for station [a-z ]+\? Answer:$", s.prompt)
        assert any(a in s.prompt for a in s.answers)


def test_fwe_vocabulary_is_the_budget_over_50(counter, sources):
    """Reference (9f1c84d): max_seq_length -= tokens_to_generate; vocab_size = max_seq_length // 50."""
    by_hand = {300: 250 // 50, 512: 462 // 50, 1024: 974 // 50, 4096: 4046 // 50, 8192: 8142 // 50}
    assert by_hand == {300: 5, 512: 9, 1024: 19, 4096: 80, 8192: 162}
    assert {n: fwe_vocab_size(n, T.TASKS["fwe"].tokens_to_generate) for n in by_hand} == by_hand
    # The real builder's vocabulary: with enough words every rank occurs (rank k needs n >= zeta(2) * k^2 words).
    spec = T.TASKS["fwe"]
    for length, size in ((1024, 19), (4096, 80)):
        ctx = BuildContext(counter, length, length - 50, sample_seed(3, "fwe", length, 0), 3, 0, sources)
        words = re.search(r"coded words\. (.*)\nQuestion", BUILDERS["freq_words_extraction"](spec, ctx).render(
            int(1.7 * size ** 2))[0], re.S)[1].split(" ")
        assert len(set(words)) == size
    with pytest.raises(TooShort) as err:  # 299 - 50 = 249 tokens hold a vocabulary of 4 < 5
        generate_samples("fwe", 299, 1, counter, sources)
    assert (err.value.what, err.value.needed) == ("length", 300)


def test_cwe_search_starts_at_the_ten_common_words(counter, sources):
    """Reference: the binary search's lower bound is `incremental` = 10 words, the 10 common ones with no others."""
    spec = T.TASKS["cwe"]
    ctx = BuildContext(counter, 8192, 8192 - 120, sample_seed(5, "cwe", 8192, 0), 5, 0, sources)
    draft = BUILDERS["common_words_extraction"](spec, ctx)
    assert draft.n_min == 10
    prompt, extras = draft.render(10)
    listing = re.findall(r"\d+\. (\S+)", prompt.rsplit("most often.\n", 1)[1].split("\nQuestion")[0])
    assert len(listing) == 300 and Counter(listing) == {w: 30 for w in extras["answers"]}


def test_cwe_runs_at_4096_with_the_tiny_tokenizer(counter, sources):
    """The 300 common-word entries of most draws exceed 4096 tokens here; redraws find ones that fit."""
    samples = generate_samples("cwe", 4096, 2, counter, sources, seed=42)
    assert [s.index for s in samples] == [0, 1] and any(s.draw > 0 for s in samples)
    for s in samples:
        assert s.prompt_tokens + 120 <= 4096 and s.fill >= 0.95 and len(s.answers) == 10
        main = s.prompt.split("\nBelow is a numbered list", 1)[1]
        counts = Counter(re.findall(r"\d+\. (\S+)", re.search(r"most often\.\n(.*)\nQuestion", main, re.S)[1]))
        assert {counts[w] for w in s.answers} == {30} and set(counts.values()) <= {30, 3}


def _fits(counter, task, length, seed, index, draw, sources) -> bool:
    """Whether this draw's smallest haystack fits the budget, by building it and tokenising it directly."""
    spec = T.TASKS[task]
    budget = length - spec.tokens_to_generate
    ctx = BuildContext(counter, length, budget, sample_seed(seed, task, length, index, draw), seed, index, sources)
    draft = BUILDERS[spec.family](spec, ctx)
    return counter.prompt(draft.render(draft.n_min)[0]) <= budget


def test_unfittable_draw_is_redrawn_and_counted(counter, sources, caplog):
    assert not _fits(counter, "cwe", 4096, 42, 0, 0, sources)  # sample 0's first draw cannot fit at all
    with caplog.at_level("WARNING", logger="endprompt_ray.eval.ruler.samples"):
        built = build_samples("cwe", 4096, 1, counter, sources, seed=42)
    (s,) = built.samples
    assert s.draw > 0 and _fits(counter, "cwe", 4096, 42, 0, s.draw, sources)
    assert not any(_fits(counter, "cwe", 4096, 42, 0, d, sources) for d in range(s.draw))  # the first that fits
    assert (built.redraws, built.redrawn, built.dropped) == (s.draw, 1, {})
    assert f"cwe @ 4096: 1 of 1 samples did not fit at their first random draw ({s.draw} redraws)" in caplog.text


def test_sample_without_a_fitting_draw_is_dropped_and_counted(counter, sources):
    draws = build_samples("cwe", 4096, 3, counter, sources, seed=42).samples
    assert [s.draw for s in draws] == [25, 5, 34]  # pins the seeded draws the case below relies on
    built = build_samples("cwe", 4096, 3, counter, sources, seed=42, max_draws=30)
    assert [s.index for s in built.samples] == [0, 1] and built.dropped == {2: 30}
    assert not any(_fits(counter, "cwe", 4096, 42, 2, d, sources) for d in range(30))
    assert built.redraws == 25 + 5 + 29 and built.redrawn == 3
    assert built.stats() == {"requested": 3, "built": 2, "redrawn": 3, "redraws": 59, "dropped": [2]}
    assert "1 found no fitting draw and were dropped (sample: draws tried 2: 30), so the score covers 2 samples" \
        in built.note()


def test_task_that_never_fits_is_skipped_after_its_draws(counter, sources):
    with pytest.raises(TooShort, match=r"needs a prompt of at least \d+ tokens \(the smallest of 20 random draws\)") \
            as err:
        build_samples("vt", 512, 2, counter, sources)  # the worked example alone is longer: stops after 20 draws
    assert err.value.draws == 20 and err.value.needed > 512 - 30
    with pytest.raises(TooShort, match="needs a prompt of at least") as err:  # the first sample's only draw fails
        build_samples("cwe", 4096, 1, counter, sources, seed=42, max_draws=1)
    assert err.value.draws == 1 and err.value.needed > 4096 - 120
