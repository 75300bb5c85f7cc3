"""Token sampling on the CPU, and the exact definition every backend's sampler reproduces.

Input: fp32 logits ``[batch, vocab]``, the generation ``step`` (0 for the token after the prompt, then 1, 2, ...)
and the sampler's settings. Output: int32 token ids ``[batch]``. Row ``r`` of the batch is sampled as follows.

Greedy (``temperature == 0``): ``argmax(logits[r])``; ties go to the lowest token id. Nothing else applies.

Sampling (``temperature > 0``), fp32 throughout unless stated:

1. ``z = logits[r] / temperature``.
2. top-k (``top_k > 0``): keep the tokens with ``z >= t``, ``t`` = the ``top_k``-th largest ``z``. Ties at ``t`` are
   all kept, so more than ``top_k`` tokens may survive. ``top_k >= vocab`` keeps everything.
3. top-p (``0 < top_p < 1``): ``prob = softmax(z)`` over the kept tokens (``exp(z - max)`` / sum). Walk the kept
   tokens by ``prob`` descending, summing in fp32; the first token at which the running sum reaches ``top_p``
   has probability ``tau`` (if rounding never lets the sum reach ``top_p``, ``tau`` is the smallest kept
   probability). Keep the tokens with ``prob >= tau``: ties at ``tau`` are kept, and at least one token is.
   ``top_p == 1`` skips this step.
4. Gumbel-max: ``token = argmax over kept i of (z_i + g_i)`` (fp32 sum), ties to the lowest id, where
   ``g_i = -log(-log(u_i))`` and ``u_i`` comes from Philox4x32-10 (Random123) with
   key ``(seed & 0xffffffff, seed >> 32)`` and counter ``(i // 4, r, step, 0)``: ``x`` = output word ``i % 4`` (one
   block gives the words of 4 consecutive tokens), ``u = (x >> 8) * 2^-24 + 2^-25``, which lies strictly inside
   (0, 1).
   ``u`` and ``g`` are computed in float64 (where ``u`` is exact; in fp32 the largest ``u`` would round to 1.0),
   then ``g`` is rounded to fp32.

Gumbel-max draws token ``i`` with probability ``softmax(z over kept)_i``, the same distribution as
"softmax, then sample". Because every random number is a pure function of ``(seed, step, row, token)``, the same
inputs always give the same token, on any backend, and a GPU kernel computes it with one parallel arg-max: no
sort and no prefix sum for plain temperature sampling (top-k and top-p need a threshold search, not a full sort).
"""

from __future__ import annotations

import numpy as np

PHILOX_MULTIPLIER_0 = np.uint64(0xD2511F53)
PHILOX_MULTIPLIER_1 = np.uint64(0xCD9E8D57)
PHILOX_KEY_BUMP_0 = np.uint64(0x9E3779B9)
PHILOX_KEY_BUMP_1 = np.uint64(0xBB67AE85)
PHILOX_ROUNDS = 10
_LOW_32_BITS = np.uint64(0xFFFFFFFF)
_SHIFT_32 = np.uint64(32)

MAX_SEED = 2**64 - 1
MAX_COUNTER_WORD = 2**32 - 1


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32-10 block function.

    counter: uint32 ``[..., 4]``; key: uint32 ``[..., 2]`` (broadcast against counter's leading dims).
    Returns uint32 ``[..., 4]``. Products of two 32-bit words are formed exactly in uint64.
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError(f"philox4x32_10 needs counter [..., 4] and key [..., 2], got {counter.shape} and {key.shape}")
    if counter.dtype != np.uint32 or key.dtype != np.uint32:
        raise ValueError(f"philox4x32_10 needs uint32 counter and key, got {counter.dtype} and {key.dtype}")
    c0, c1, c2, c3 = (counter[..., j].astype(np.uint64) for j in range(4))
    k0, k1 = (key[..., j].astype(np.uint64) for j in range(2))
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + PHILOX_KEY_BUMP_0) & _LOW_32_BITS
            k1 = (k1 + PHILOX_KEY_BUMP_1) & _LOW_32_BITS
        product_0 = c0 * PHILOX_MULTIPLIER_0
        product_1 = c2 * PHILOX_MULTIPLIER_1
        c0, c1, c2, c3 = (
            (product_1 >> _SHIFT_32) ^ c1 ^ k0,
            product_1 & _LOW_32_BITS,
            (product_0 >> _SHIFT_32) ^ c3 ^ k1,
            product_0 & _LOW_32_BITS,
        )
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def philox_key(seed: int) -> np.ndarray:
    """uint32 ``[2]`` Philox key of a 64-bit seed: (low word, high word)."""
    _check_seed(seed)
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    """float64 uniforms in (0, 1) from uint32 words: ``(x >> 8) * 2^-24 + 2^-25`` (exact in float64)."""
    top_24_bits = (np.asarray(bits, dtype=np.uint32) >> np.uint32(8)).astype(np.float64)
    return top_24_bits * 2.0**-24 + 2.0**-25


def gumbel_noise(seed: int, step: int, rows, vocab: int) -> np.ndarray:
    """fp32 Gumbel noise ``g = -log(-log(u))`` at generation step ``step``.

    rows: one row index (returns ``[vocab]``) or a 1-D sequence of them (returns ``[len(rows), vocab]``).
    """
    _check_counter_word("step", step)
    _check_counter_word("vocab", vocab)
    row_array = np.asarray(rows)
    if row_array.ndim > 1 or not np.issubdtype(row_array.dtype, np.integer):
        raise ValueError(f"rows must be an integer or a 1-D sequence of integers, got {rows!r}")
    for row in row_array.reshape(-1).tolist():
        _check_counter_word("row", row)
    blocks = (vocab + 3) // 4
    counter = np.zeros(row_array.shape + (blocks, 4), dtype=np.uint32)
    counter[..., 0] = np.arange(blocks, dtype=np.uint32)
    counter[..., 1] = row_array.astype(np.uint32)[..., None]
    counter[..., 2] = step
    words = philox4x32_10(counter, philox_key(seed)).reshape(row_array.shape + (4 * blocks,))[..., :vocab]
    return (-np.log(-np.log(uniform_from_bits(words)))).astype(np.float32)


class Sampler:
    """Chooses one token per row of logits, exactly as the module docstring defines.

    temperature: 0 for greedy, else > 0. top_k: 0 disables, else keep the k best. top_p: 1 disables, else in (0, 1).
    seed: 0 <= seed < 2^64, selects the random stream.
    """

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
        temperature = float(temperature)
        top_p = float(top_p)
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
        _check_seed(seed)
        self.temperature = temperature
        self.top_k = int(top_k)
        self.top_p = top_p
        self.seed = int(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"seed={self.seed})")

    def sample(self, logits, step: int) -> np.ndarray:
        """logits: float ``[batch, vocab]`` (cast to fp32); step: generation step >= 0. Returns int32 ``[batch]``.

        The noise of all rows is drawn at once: about 100 bytes of scratch per logit.
        """
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"logits must be [batch, vocab] with vocab > 0, got shape {logits.shape}")
        if not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        logits = logits.astype(np.float32, copy=False)
        if np.isnan(logits).any():
            raise ValueError("logits contain NaN")
        if np.isposinf(logits).any():
            raise ValueError("logits contain +inf")
        if not np.isfinite(logits).any(axis=1).all():
            raise ValueError("logits: some row has no finite value (all -inf)")
        _check_counter_word("step", step)
        if self.greedy:
            return np.argmax(logits, axis=1).astype(np.int32)
        with np.errstate(over="ignore"):
            z = logits / np.float32(self.temperature)
        if np.isposinf(z).any():
            raise ValueError(f"temperature {self.temperature} is too small: logits / temperature overflows fp32")
        batch, vocab = z.shape
        kept = np.isfinite(z)
        if 0 < self.top_k < vocab:
            kth_largest = np.partition(z, vocab - self.top_k, axis=1)[:, vocab - self.top_k, None]
            kept &= z >= kth_largest
        if self.top_p < 1.0:
            kept = np.stack([top_p_mask(z[row], kept[row], self.top_p) for row in range(batch)])
        scores = np.where(kept, z + gumbel_noise(self.seed, step, np.arange(batch), vocab), np.float32(-np.inf))
        return np.argmax(scores, axis=1).astype(np.int32)


def top_p_mask(z: np.ndarray, kept: np.ndarray, top_p: float) -> np.ndarray:
    """bool ``[vocab]``: the tokens of ``kept`` that survive the top-p (nucleus) filter on fp32 ``z [vocab]``."""
    kept_z = np.where(kept, z, np.float32(-np.inf))
    exponentials = np.exp(kept_z - kept_z.max(), dtype=np.float32)
    prob = exponentials / exponentials.sum(dtype=np.float32)
    descending = np.sort(prob[kept])[::-1]
    running_sum = np.cumsum(descending, dtype=np.float32)
    cut = min(int(np.searchsorted(running_sum, np.float32(top_p), side="left")), descending.shape[0] - 1)
    return kept & (prob >= descending[cut])


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")


def _check_counter_word(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (0 <= value <= MAX_COUNTER_WORD):
        raise ValueError(f"{name} must be an integer in [0, 2^32), got {value!r}")
