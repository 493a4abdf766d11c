"""How a batched answer's next token is chosen (infer/sampling.py): its own temperature, top_k, top_p, seed and
min_tokens, on logits made here (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.infer.sampling import choose, new_random

END = 3  # the end-of-turn token of these logits
PROBABILITIES = np.array([0.5, 0.3, 0.15, 0.05])  # token 0 most likely, END least


def draws(options: GenerationOptions, n: int = 6000, generated: int = 5) -> np.ndarray:
    random = new_random(options)
    chosen = [choose(np.log(PROBABILITIES), options, random, generated, [END]) for _ in range(n)]
    return np.bincount(chosen, minlength=len(PROBABILITIES)) / n


def test_greedy_takes_the_most_likely_token_and_holds_back_the_end_until_min_tokens():
    logits = np.log(np.array([0.1, 0.2, 0.1, 0.6]))  # END most likely
    assert choose(logits, GenerationOptions(), None, 0, [END]) == END
    held = GenerationOptions(min_new_tokens=4)
    assert choose(logits, held, None, 3, [END]) == 1  # 3 generated < 4: the next most likely
    assert choose(logits, held, None, 4, [END]) == END
    assert logits[END] == pytest.approx(np.log(0.6))  # the caller's logits are left as they were


def test_sampling_draws_in_proportion_within_top_k_and_top_p():
    assert draws(GenerationOptions(temperature=1.0, top_k=0, seed=1)) == pytest.approx(PROBABILITIES, abs=0.03)
    two = np.array([0.5, 0.3, 0, 0]) / 0.8  # either cut leaves the two most likely, renormalized
    assert draws(GenerationOptions(temperature=1.0, top_k=2, seed=2)) == pytest.approx(two, abs=0.03)
    assert draws(GenerationOptions(temperature=1.0, top_k=0, top_p=0.7, seed=3)) == pytest.approx(two, abs=0.03)
    assert draws(GenerationOptions(temperature=1.0, top_k=1, seed=4))[0] == 1.0
    hot, cold = (draws(GenerationOptions(temperature=t, top_k=0, seed=5)) for t in (3.0, 0.3))
    assert hot[END] > PROBABILITIES[END] + 0.05 and cold[0] > PROBABILITIES[0] + 0.2


def test_top_p_finds_the_nucleus_beyond_the_first_64_tokens():
    flat = np.zeros(5000)  # every token equally likely: top_p 0.5 keeps half of them
    options = GenerationOptions(temperature=1.0, top_k=0, top_p=0.5, seed=6)
    random = new_random(options)
    chosen = {choose(flat, options, random, 5, []) for _ in range(3000)}
    assert 1000 < len(chosen) <= 2501


def test_a_seed_repeats_its_draws_and_another_seed_draws_others():
    def answer(seed: int) -> list[int]:
        options = GenerationOptions(temperature=1.0, top_k=0, seed=seed)
        random = new_random(options)
        return [choose(np.log(PROBABILITIES), options, random, 5, [END]) for _ in range(40)]

    assert answer(11) == answer(11)
    assert answer(11) != answer(12)
    assert new_random(GenerationOptions(temperature=0, seed=11)) is None  # greedy draws nothing
