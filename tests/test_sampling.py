import numpy as np
import pytest

from pydsv4.sampling import (
    Sampler,
    gumbel_noise,
    philox4x32_10,
    philox_key,
    top_p_mask,
    uniform_from_bits,
)


def words(hex_words: str) -> np.ndarray:
    return np.array([int(word, 16) for word in hex_words.split()], dtype=np.uint32)


# Random123's kat_vectors, "philox4x32 10" lines: counter (4 words), key (2 words), expected output (4 words).
PHILOX_KNOWN_ANSWERS = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    np.testing.assert_array_equal(philox4x32_10(words(counter), words(key)), words(expected))


def test_philox_batched_matches_one_at_a_time():
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2**32, size=(5, 3, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    batched = philox4x32_10(counters, key)
    assert batched.shape == (5, 3, 4) and batched.dtype == np.uint32
    for index in np.ndindex(5, 3):
        np.testing.assert_array_equal(batched[index], philox4x32_10(counters[index], key))


def test_philox_rejects_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match="counter"):
        philox4x32_10(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        philox4x32_10(np.zeros(4, np.int64), np.zeros(2, np.uint32))


def test_philox_key_splits_seed_into_low_and_high_words():
    np.testing.assert_array_equal(philox_key(0x0123456789ABCDEF), [0x89ABCDEF, 0x01234567])


def test_uniforms_stay_strictly_inside_unit_interval():
    u = uniform_from_bits(np.array([0, 0xFF, 0x100, 0xFFFFFFFF], dtype=np.uint32))
    assert u[0] == 2.0**-25 and u[1] == u[0] and u[2] == 2.0**-24 + 2.0**-25
    assert 0 < u.min() and u.max() < 1
    assert np.isfinite(-np.log(-np.log(u))).all()


def test_gumbel_noise_has_gumbel_moments_and_follows_counter():
    noise = gumbel_noise(seed=7, step=3, rows=2, vocab=200_000)
    assert noise.dtype == np.float32 and noise.shape == (200_000,)
    assert abs(noise.mean() - np.euler_gamma) < 0.01
    assert abs(noise.std() - np.pi / np.sqrt(6)) < 0.01
    # tokens 1232..1235 take the 4 words of the block at counter (1232 // 4, row, step, 0), in order
    words = philox4x32_10(np.array([308, 2, 3, 0], dtype=np.uint32), philox_key(7))
    expected = (-np.log(-np.log(uniform_from_bits(words)))).astype(np.float32)
    np.testing.assert_array_equal(noise[1232:1236], expected)
    assert len(set(expected.tolist())) == 4


def test_gumbel_noise_of_several_rows_stacks_single_rows():
    stacked = gumbel_noise(seed=3, step=1, rows=[0, 5, 2], vocab=33)
    assert stacked.shape == (3, 33)
    for position, row in enumerate([0, 5, 2]):
        np.testing.assert_array_equal(stacked[position], gumbel_noise(3, 1, row, 33))
    assert not np.array_equal(stacked[0], stacked[2])
    # a vocab that is not a multiple of 4 takes the first words of its last block: a prefix of a longer row
    np.testing.assert_array_equal(stacked[1], gumbel_noise(3, 1, 5, 36)[:33])


def test_greedy_takes_lowest_id_among_ties():
    logits = np.zeros((3, 10), np.float32)
    logits[0, [3, 7]] = 2.0
    logits[1, [9, 0]] = 1.0
    logits[2, 5] = -1.0
    np.testing.assert_array_equal(Sampler().sample(logits, step=0), [3, 0, 0])


def test_greedy_ignores_seed_and_step():
    logits = np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32)
    expected = np.argmax(logits, axis=1)
    for seed, step in [(0, 0), (5, 9), (2**63, 12345)]:
        np.testing.assert_array_equal(Sampler(seed=seed).sample(logits, step), expected)


def test_top_k_one_equals_greedy():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 300)).astype(np.float32) * 4
    greedy = Sampler().sample(logits, 0)
    for seed in range(3):
        for step in range(5):
            tokens = Sampler(temperature=1.5, top_k=1, seed=seed).sample(logits, step)
            np.testing.assert_array_equal(tokens, greedy)


def test_sampling_matches_its_definition_row_by_row():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 64)).astype(np.float32)
    sampler = Sampler(temperature=0.6, seed=11)
    tokens = sampler.sample(logits, step=4)
    for row in range(3):
        z = logits[row] / np.float32(0.6)
        assert tokens[row] == np.argmax(z + gumbel_noise(11, 4, row, 64))


def test_top_k_keeps_ties_at_threshold():
    logits = np.array([[5, 5, 5, 1, 0, 4]], np.float32)
    sampler = Sampler(temperature=10.0, top_k=2, seed=0)
    seen = {int(sampler.sample(logits, step)[0]) for step in range(300)}
    assert seen == {0, 1, 2}


def nucleus(probabilities, top_p):
    z = np.log(np.array(probabilities, np.float32))
    return set(np.flatnonzero(top_p_mask(z, np.ones(z.shape, bool), top_p)).tolist())


def test_top_p_keeps_shortest_prefix_reaching_p():
    probabilities = [0.05, 0.5, 0.15, 0.3]
    assert nucleus(probabilities, 0.4) == {1}
    assert nucleus(probabilities, 0.75) == {1, 3}
    assert nucleus(probabilities, 0.85) == {1, 3, 2}
    assert nucleus(probabilities, 0.99) == {0, 1, 2, 3}


def test_top_p_keeps_ties_at_tau_and_at_least_one_token():
    assert nucleus([0.3, 0.1, 0.3, 0.3], 0.5) == {0, 2, 3}
    assert nucleus([0.25, 0.25, 0.25, 0.25], 0.01) == {0, 1, 2, 3}
    assert nucleus([0.97, 0.01, 0.01, 0.01], 1e-6) == {0}


def test_top_p_renormalizes_over_top_k_survivors():
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    # Over the top-2 survivors the probabilities are 4/7 and 3/7: p = 0.5 keeps only the first.
    assert set(np.flatnonzero(top_p_mask(z, np.array([True, True, False, False]), 0.5))) == {0}
    # Over all four, 0.4 < 0.5 so the second is needed too.
    assert set(np.flatnonzero(top_p_mask(z, np.ones(4, bool), 0.5))) == {0, 1}


def test_top_p_sampling_draws_only_from_nucleus():
    logits = np.log(np.array([[0.05, 0.5, 0.15, 0.3]], np.float32))
    sampler = Sampler(temperature=1.0, top_p=0.75, seed=4)
    seen = {int(sampler.sample(logits, step)[0]) for step in range(300)}
    assert seen == {1, 3}


def chi_square(counts, probabilities):
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# Critical value of chi-square at 5 degrees of freedom for p = 1e-4: a correct sampler (fixed seeds, so
# deterministic) passes; one off by a few percent on any of 6 tokens fails at 24k samples, by ~10% at 4k.
CHI_SQUARE_5_DOF_P_1E4 = 25.74


@pytest.mark.parametrize("seed", [0, 123456789])
def test_frequencies_over_rows_and_steps_match_softmax(seed):
    base = np.array([1.0, 0.2, -0.5, 2.0, 0.0, 1.3], np.float32)
    temperature = 0.7
    logits = np.tile(base, (1000, 1))
    sampler = Sampler(temperature=temperature, seed=seed)
    tokens = np.concatenate([sampler.sample(logits, step) for step in range(24)])
    counts = np.bincount(tokens, minlength=6).astype(np.float64)
    z = base.astype(np.float64) / temperature
    softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert chi_square(counts, softmax) < CHI_SQUARE_5_DOF_P_1E4
    wrong_temperature = np.exp(base - base.max()) / np.exp(base - base.max()).sum()
    assert chi_square(counts, wrong_temperature) > 10 * CHI_SQUARE_5_DOF_P_1E4


def test_frequencies_over_steps_match_softmax_of_top_k_survivors():
    base = np.array([[0.5, 3.0, 1.0, -2.0, 2.5, 0.0, 1.5, 2.0, -1.0]], np.float32)
    sampler = Sampler(temperature=1.3, top_k=6, seed=99)
    tokens = np.array([sampler.sample(base, step)[0] for step in range(4000)])
    survivors = np.argsort(-base[0])[:6]
    assert set(np.unique(tokens)) == set(survivors.tolist())
    counts = np.bincount(tokens, minlength=9)[survivors].astype(np.float64)
    z = base[0, survivors].astype(np.float64) / 1.3
    softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert chi_square(counts, softmax) < CHI_SQUARE_5_DOF_P_1E4


def test_same_seed_same_tokens_different_seed_differs():
    logits = np.zeros((64, 1000), np.float32)
    first = [Sampler(temperature=1.0, seed=42).sample(logits, step) for step in range(3)]
    again = [Sampler(temperature=1.0, seed=42).sample(logits, step) for step in range(3)]
    other = [Sampler(temperature=1.0, seed=43).sample(logits, step) for step in range(3)]
    np.testing.assert_array_equal(first, again)
    assert (np.array(first) != np.array(other)).mean() > 0.9
    assert (first[0] != first[1]).mean() > 0.9, "consecutive steps must draw fresh noise"
    assert len(set(first[0].tolist())) > 50, "rows must draw independent noise"


def test_masked_tokens_are_never_drawn():
    logits = np.full((32, 20), -np.inf, np.float32)
    logits[:, [4, 11]] = 0.0
    for step in range(5):
        assert set(Sampler(temperature=2.0, seed=1).sample(logits, step).tolist()) <= {4, 11}


@pytest.mark.parametrize("kwargs, argument", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
])
def test_invalid_settings_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Sampler(**kwargs)


@pytest.mark.parametrize("logits, problem", [
    (np.array([[0.0, np.nan]], np.float32), "NaN"),
    (np.array([[0.0, np.inf]], np.float32), r"\+inf"),
    (np.array([[-np.inf, -np.inf]], np.float32), "no finite"),
    (np.zeros(5, np.float32), r"\[batch, vocab\]"),
    (np.zeros((2, 0), np.float32), r"\[batch, vocab\]"),
    (np.zeros((1, 5), np.int32), "floating"),
])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_invalid_logits_raise(logits, problem, temperature):
    with pytest.raises(ValueError, match=f"logits.*{problem}|{problem}.*logits"):
        Sampler(temperature=temperature).sample(logits, 0)


def test_invalid_step_raises():
    with pytest.raises(ValueError, match="step"):
        Sampler().sample(np.zeros((1, 4), np.float32), -1)


def test_tiny_temperature_overflow_raises():
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=1e-38).sample(np.array([[1e3, 0.0]], np.float32), 0)
