"""cuda/sample.cu against pydsv4.sampling.Sampler, the definition of sampling.

Exactness: greedy, top-k (exact integer counts over the order-preserving keys of z), the Philox words, u and
g = fp32(-log(-log(u))) (double logs) and the Gumbel argmax are all exact, so the GPU's token equals the CPU's.
Two legitimate differences remain, and a mismatch must be explained by one of them:
  - near ties: the CPU's two best perturbed scores within 1e-5 relative (double logs rounded to fp32 on two
    libraries can differ at a rounding boundary);
  - the top-p cut: the CPU sums sorted probabilities one by one in fp32, the GPU sums fixed-point masses exactly
    in another order (but for the mass off the unstaged top-p lists, fp32 exponentials within ~1e-5 of it), so a
    row whose cumulative mass crosses top_p within TOP_P_SLACK can keep a token more or less: the GPU's token must
    then be the CPU's winner for a cut inside that window.
Mismatches must also be rare (at most MAX_MISMATCH of the rows over a test).
Invalid rows (NaN, +inf, no finite value: the CPU raises) give token -1.
"""

import re

import numpy as np
import pytest

from pydsv4.cuda import DeviceArray, DSV4Error, bindings, lib
from pydsv4.sampling import Sampler, gumbel_noise

pytestmark = pytest.mark.gpu("sample")

VOCAB = 129280
NEAR_TIE = 1e-5
TOP_P_SLACK = 1e-4
MAX_MISMATCH = 0.02
TOKEN_POISON = 0x7F  # bytes of an unwritten token: 0x7F7F7F7F, distinct from every id and from -1
# Random rows appended to a test's batch (0 or 48): past 30-40 rows the kernels change shape (narrower CTAs for greedy
# and temperature only, unstaged clusters of 2 for the top-k fast path and top-p alone), and the special rows must hold
# there too.
BATCH_FILLERS = [0, 48]
# Top-p alone past the pairs runs a CTA a row (one CTA an SM for 67-132 rows on a 132-SM device, two an SM beyond: 100
# and 140 fillers), with one list a row and its floor in half digits; the top-p tests that add these describe their
# rows for the pairs, and the same asserts hold.
TOP_P_ALONE_FILLERS = [100, 140]
# Temperature only runs in pairs of 512-thread CTAs from 3/4 of the rows the device holds that way to all of them (50-66
# rows on a 132-SM device: 48 fillers), in 256-thread CTAs past them (72 fillers), and at a 512-thread CTA a row where
# those leave at most a quarter of their last wave's SMs idle (99-132 rows, 231-264, ...: 100 fillers).
TEMPERATURE_ONLY_FILLERS = [0, 48, 72, 100]


# ---- runners -----------------------------------------------------------------------------------------------------


def upload_logits(logits, stream, stride=None, pad_value=np.nan):
    """[batch, stride] fp32 with the row tail past vocab filled with pad_value (which must never be read as data)."""
    batch, vocab = logits.shape
    stride = stride or -(-vocab // 4) * 4
    host = np.full((batch, stride), pad_value, np.float32)
    host[:, :vocab] = logits
    return DeviceArray.from_numpy(host, stream), stride


def run_sample(logits, stream, temperature=1.0, top_k=0, top_p=1.0, seed=0, step=0, stride=None, greedy_entry=False,
               pad_value=np.nan):
    batch, vocab = logits.shape
    dev, stride = upload_logits(logits, stream, stride, pad_value)
    out = DeviceArray.empty(batch + 1, np.int32).fill_bytes(TOKEN_POISON, stream)
    if greedy_entry:
        lib.dsv4_sample_greedy_f32(out, dev, batch, vocab, stride, stream)
    else:
        lib.dsv4_sample_tokens_f32(out, dev, batch, vocab, stride, np.float32(temperature), top_k, np.float32(top_p),
                                   seed, step, stream)  # fmt: skip
    tokens = out.to_numpy(stream)
    assert tokens[batch] == 0x7F7F7F7F, "the sampler wrote past its batch"
    assert (tokens[:batch] != 0x7F7F7F7F).all(), "the sampler left a row without a token"
    return tokens[:batch]


# ---- explaining differences --------------------------------------------------------------------------------------


def explained(logits_row, row, gpu_token, temperature, top_k, top_p, seed, step):
    """Whether the GPU's token for one row is the CPU's winner under a near tie or a top-p cut within slack."""
    z = logits_row.astype(np.float32) / np.float32(temperature)
    vocab = z.shape[0]
    kept = np.isfinite(z)
    if 0 < top_k < vocab:
        kept &= z >= np.partition(z, vocab - top_k)[vocab - top_k]
    scores = np.where(np.isfinite(z), z + gumbel_noise(seed, step, row, vocab), np.float32(-np.inf))
    if top_p < 1.0 and kept[gpu_token]:
        kept_z = np.where(kept, z, np.float32(-np.inf))
        e = np.exp(kept_z - kept_z.max(), dtype=np.float32)
        prob = e / e.sum(dtype=np.float32)
        order = np.flatnonzero(kept)[np.argsort(-prob[kept], kind="stable")]
        sorted_prob = prob[order]
        running = np.cumsum(sorted_prob, dtype=np.float32)
        last = len(order) - 1
        lo = min(int(np.searchsorted(running, np.float32(top_p - TOP_P_SLACK))), last)
        hi = min(int(np.searchsorted(running, np.float32(top_p + TOP_P_SLACK))), last)
        # A cut at c keeps order[:c_end + 1], c_end the last token whose prob ties with order[c]'s; its winner
        # is the best score there. The GPU's token is explained if it wins for some cut in [lo, hi].
        cuts = np.arange(lo, hi + 1)
        ends = np.searchsorted(-sorted_prob, -sorted_prob[cuts], side="right") - 1
        best = np.maximum.accumulate(scores[order])[ends]
        position = int(np.flatnonzero(order == gpu_token)[0])
        if ((ends >= position) & (best == scores[gpu_token])).any():
            return True
    s = np.where(kept, scores, -np.inf)
    if s.shape[0] < 2:
        return False
    best2 = np.sort(s)[-2:]
    near_tie = np.isfinite(best2).all() and abs(best2[1] - best2[0]) <= NEAR_TIE * abs(best2[1])
    return bool(near_tie and s[gpu_token] >= best2[0])


class MismatchLedger:
    """Counts rows compared and rows that differ (each must be explained) over one test."""

    def __init__(self):
        self.rows = 0
        self.mismatches = 0

    def compare(self, logits, gpu, temperature, top_k, top_p, seed, step):
        cpu = Sampler(temperature, top_k, top_p, seed).sample(logits, step)
        self.rows += len(cpu)
        for r in np.flatnonzero(gpu != cpu):
            assert explained(logits[r], int(r), int(gpu[r]), temperature, top_k, top_p, seed, step), (
                f"row {r}: GPU token {gpu[r]} != CPU token {cpu[r]} (T={temperature}, top_k={top_k}, "
                f"top_p={top_p}, seed={seed}, step={step}) and no near tie or top-p cut explains it"
            )
            self.mismatches += 1

    def assert_rare(self):
        assert self.mismatches <= MAX_MISMATCH * self.rows, f"{self.mismatches} of {self.rows} rows differ"


def random_logits(rng, batch, vocab, sigma):
    return (rng.standard_normal((batch, vocab)) * sigma).astype(np.float32)


# ---- parity with the CPU sampler -------------------------------------------------------------------------------

# (seed, step, batch, vocab, temperature, top_k, top_p, sigma of the logits)
CASES = [
    (0, 0, 1, VOCAB, 1.0, 0, 1.0, 2.0),
    (12345, 7, 64, VOCAB, 0.7, 0, 1.0, 2.0),
    (2**64 - 1, 2**32 - 1, 8, VOCAB, 1.0, 50, 1.0, 2.0),
    (42, 3, 8, VOCAB, 1.0, 0, 0.9, 3.0),
    (7, 100, 64, VOCAB, 0.8, 40, 0.95, 3.0),
    (99, 1, 16, 1000, 2.0, 100, 0.5, 1.0),
    (5, 2, 5, 1001, 1.0, 3, 0.99, 1.0),
    (11, 0, 4, VOCAB, 0.01, 0, 1.0, 1.0),
    (13, 9, 4, VOCAB, 1.0, 1, 1.0, 2.0),
    (17, 4, 4, VOCAB, 1.0, VOCAB, 1.0, 2.0),
    (19, 5, 3, VOCAB, 1.0, 0, 0.1, 0.5),
    (41, 3, 64, VOCAB, 1.0, 0, 0.1, 1.0),     # unstaged top-p: ~85% of the mass lies off the kept lists
    (43, 6, 48, VOCAB, 0.8, 0, 0.9, 3.0),     # unstaged top-p at the bench's rows
    (47, 2, 100, VOCAB, 0.8, 0, 0.9, 3.0),    # top-p alone at a CTA a row, one an SM (H100): prefetching ahead
    (53, 3, 100, VOCAB, 0.8, 50, 0.9, 3.0),   # top-k past the rows of pairs at one CTA an SM (H100)
    (59, 5, 256, VOCAB, 0.9, 0, 1.0, 2.0),    # temperature only at a CTA a row, in two waves (H100)
    (23, 6, 8, VOCAB, 1.3, 1000, 0.8, 6.0),
    (29, 8, 64, VOCAB, 1.0, 0, 0.99, 8.0),
    (31, 0, 3, 1, 1.0, 0, 0.5, 1.0),
    (37, 1, 6, 7, 0.5, 2, 0.7, 1.0),
]


@pytest.mark.parametrize("seed, step, batch, vocab, temperature, top_k, top_p, sigma", CASES)
def test_tokens_match_the_cpu_sampler(seed, step, batch, vocab, temperature, top_k, top_p, sigma, rng, stream):
    logits = random_logits(rng, batch, vocab, sigma)
    gpu = run_sample(logits, stream, temperature, top_k, top_p, seed, step)
    ledger = MismatchLedger()
    ledger.compare(logits, gpu, temperature, top_k, top_p, seed, step)
    ledger.assert_rare()


def test_many_settings_mismatches_are_rare(rng, stream):
    """Small rows, many (seed, step, T, top_k, top_p) draws: every token equal to the CPU's or explained."""
    ledger = MismatchLedger()
    for i in range(40):
        vocab = int(rng.choice([64, 1000, 4099, 20000]))
        batch = int(rng.integers(1, 9))
        temperature = float(rng.choice([0.3, 0.7, 1.0, 1.5]))
        top_k = int(rng.choice([0, 0, 1, 5, 50, vocab - 1, vocab + 5]))
        top_p = float(rng.choice([1.0, 1.0, 0.3, 0.8, 0.95, 0.999]))
        seed, step = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**32))
        logits = random_logits(rng, batch, vocab, float(rng.choice([0.5, 2.0, 5.0])))
        gpu = run_sample(logits, stream, temperature, top_k, top_p, seed, step)
        ledger.compare(logits, gpu, temperature, top_k, top_p, seed, step)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_ties_and_signed_zeros(fillers, rng, stream):
    """Logits on a coarse grid (many equal values, +0.0 and -0.0): top-k keeps every tie at its threshold."""
    batch = 8 + fillers
    logits = np.round(rng.standard_normal((batch, VOCAB)) * 2).astype(np.float32)
    logits[rng.random((batch, VOCAB)) < 0.5] *= -1.0  # flips the sign of some zeros too
    ledger = MismatchLedger()
    for top_k, top_p in [(5, 1.0), (1000, 1.0), (50000, 0.9), (0, 0.6)]:
        gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=3, step=top_k)
        ledger.compare(logits, gpu, 1.0, top_k, top_p, 3, top_k)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_top_k_candidates_and_the_radix_fallback(fillers, rng, stream):
    """Small top_k sorts the few z whose leading digit reaches the k-th largest's (at most 2048 per row); a row
    whose k-th largest lies too far below its max, or with more such z (ties), takes the radix path. Unstaged (with
    fillers), a CTA keeps the z whose digit reaches its first batch's k-th largest: ascending rows overflow that list
    and take the radix path, descending rows keep the fewest."""
    logits = random_logits(rng, 7 + fillers, VOCAB, 2.0)
    logits[1] = -np.abs(logits[1])  # the max 1e30 (~2^100), the rest negative: below the 512 first digits
    logits[1, 4321] = 1e30          # (128 octaves) the candidate search combines, so top_k > 1 falls back
    logits[2, rng.choice(VOCAB, 3000, replace=False)] = 9.0  # 3000 ties at the max: too many candidates
    logits[3, rng.choice(VOCAB, 1900, replace=False)] = 9.0  # 1900 ties: they fit
    logits[4, :] = 0.25
    logits[4, 9] = 0.5
    logits[5] = np.linspace(-8.0, 8.0, VOCAB, dtype=np.float32)
    logits[6] = logits[5, ::-1]
    ledger = MismatchLedger()
    for top_k, top_p in [(1, 1.0), (5, 1.0), (5, 0.9), (1500, 1.0), (1500, 0.8), (2048, 0.95), (2049, 0.95)]:
        gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=top_k, step=1)
        assert gpu[1] == 4321
        ledger.compare(logits, gpu, 1.0, top_k, top_p, top_k, 1)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_top_k_ties_around_the_kth_place(fillers, rng, stream):
    """Ties at the k-th largest z are all kept, wherever they sit: row 1 (k = 100) has 60 ties at places 70-129, row 2
    has 20 ties at places 90-109; k = 127 and 128 and a tiny k run on the same rows."""
    logits = random_logits(rng, 3 + fillers, VOCAB, 2.0)
    places = rng.permutation(VOCAB)
    logits[1, places[:69]] = 20.0 + np.arange(69, dtype=np.float32)
    logits[1, places[69:129]] = 15.0
    logits[2, places[:89]] = 20.0 + np.arange(89, dtype=np.float32)
    logits[2, places[89:109]] = 15.0
    ledger = MismatchLedger()
    for top_k, top_p in [(100, 1.0), (100, 0.999), (127, 0.95), (128, 0.95), (2, 1.0)]:
        gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=top_k, step=3)
        ledger.compare(logits, gpu, 1.0, top_k, top_p, top_k, 3)
    ledger.assert_rare()


def plant_close_scores(logits, noise, row, first, second, ulps):
    """Sets the z (T = 1) of tokens first < second of a row so that their exact scores RN(z + g) lie near 30, the
    second's `ulps` ulps above the first's (0: a tie), and returns the one that wins (the lowest id on a tie)."""
    logits[row, first] = np.float32(30.0) - noise[row, first]
    target = np.float32(logits[row, first] + noise[row, first])
    target = [np.nextafter(target, np.float32(-np.inf)), target, np.nextafter(target, np.float32(np.inf))][ulps + 1]
    z = np.float32(30.0) - noise[row, second]
    while np.float32(z + noise[row, second]) != target:
        z = np.nextafter(z, np.float32(np.inf if np.float32(z + noise[row, second]) < target else -np.inf))
    logits[row, second] = z
    return second if ulps > 0 else first


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_top_k_finish_regimes(fillers, rng, stream):
    """CTA 0's finish of the top-k fast paths over n candidates (every z at or above the k-th largest's leading digit,
    here [8, 10) at k = 60 and T = 1, the rest N(0, 1)): n = 100 (a few threads count each candidate while threads of
    their own bound its score), 300 (no room for the latter: the counting threads bound the scores) and 700 (more
    than a CTA's threads: sorted first), top-p on and off. Rows 4-6 hold 100 such z and two planted ones whose exact
    scores RN(z + g) tie (row 4) or differ by an ulp (rows 5 and 6) at the top, which bounds on g cannot part: the
    exact scores decide, the lowest id on a tie."""
    seed, step, top_k = 77, 9, 60
    batch = 7 + fillers
    logits = random_logits(rng, batch, VOCAB, 1.0)
    noise = gumbel_noise(seed, step, np.arange(7), VOCAB)
    for row, n in ((1, 100), (2, 300), (3, 700), (4, 102), (5, 102), (6, 102)):
        logits[row, rng.choice(VOCAB, n, replace=False)] = rng.uniform(8.0, 9.9, n).astype(np.float32)
    winners = [plant_close_scores(logits, noise, row, *np.sort(np.flatnonzero(logits[row] >= 8.0)[:2]), ulps)
               for row, ulps in ((4, 0), (5, 1), (6, -1))]  # scores near 30: the rest reach 9.9 + 17.33
    ledger = MismatchLedger()
    for top_p in (1.0, 0.9):
        gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=seed, step=step)
        if top_p == 1.0:
            cpu = Sampler(1.0, top_k, top_p, seed).sample(logits, step)
            assert list(gpu[4:7]) == winners and list(cpu[4:7]) == winners, (gpu[4:7], cpu[4:7], winners)
        ledger.compare(logits, gpu, 1.0, top_k, top_p, seed, step)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_top_k_floor_rises_only_past_k(fillers, rng, stream):
    """Unstaged, a CTA's floor starts at its first batch's k-th digit (the first 4096 z of its slice) and rises a digit
    once the CTA has seen k z in the digit above. k = 50, z (= logits / T) planted in one CTA's slice, the rest
    N(0, 0.8^2):
      - row 1: its first batch holds 20 z of 5.5 and 60 of 4.5 (its 50th largest: digit [4, 5)), then 29 more of 5.5,
        and at the slice's end 200 of 4.75: 49 z above the floor's digit, one short of a rise, so the late 4.75s (50th
        place, ties, most of the row's mass) stay on the list; a rise at k - 1 (or a logit counted twice) loses them.
      - row 2: its first batch holds 50 z of 4.5 (the floor's digit [4, 5)), then come 60 of 5.00001 (a rise to digit
        [5, 6) once 50 are counted) and at the slice's end 30 of 5.9: the row's max, inside the risen floor's digit.
    Rows 3 and 4 plant the same in the second CTA's slice."""
    slice_len = VOCAB // 2  # unstaged clusters of 2 CTAs
    z = random_logits(rng, 5 + fillers, VOCAB, 0.8)

    def plant(row, base, lo, hi, count, value):
        z[row, base + rng.choice(np.arange(lo, hi), count, replace=False)] = value

    for row, base in ((1, 0), (3, slice_len)):
        plant(row, base, 0, 4096, 80, 4.5)
        z[row, base + rng.choice(np.flatnonzero(z[row, base:base + 4096] == np.float32(4.5)), 20, replace=False)] = 5.5
        plant(row, base, 4096, 20000, 29, 5.5)
        plant(row, base, 50000, slice_len, 200, 4.75)
    for row, base in ((2, 0), (4, slice_len)):
        plant(row, base, 0, 4096, 50, 4.5)
        plant(row, base, 4096, 20000, 60, 5.00001)
        plant(row, base, 60000, slice_len, 30, 5.9)
    for temperature in (1.0, 0.8):
        logits = (z * np.float32(temperature)).astype(np.float32)
        for seed in range(4):
            gpu = run_sample(logits, stream, temperature, 50, 1.0, seed=seed, step=5)
            cpu = Sampler(temperature, 50, 1.0, seed).sample(logits, 5)
            assert (gpu[1:5] == cpu[1:5]).all(), f"T={temperature}, seed {seed}: GPU {gpu[1:5]}, CPU {cpu[1:5]}"
            ledger = MismatchLedger()
            ledger.compare(logits, gpu, temperature, 50, 1.0, seed, 5)
            ledger.assert_rare()


@pytest.mark.parametrize("batch", [160, 300])
def test_wide_batches_match_the_cpu_sampler(batch, rng, stream):
    """Past the rows that unstaged clusters of 2 CTAs hold in one wave on a 132-SM device, where each row takes a
    single CTA: 160 rows in one wave, 300 in two (264 CTAs resident; top-p alone starts one CTA of each SM in the first
    wave late: stagger_first_wave). Row 1 ascends (its lists overflow: the radix path), row 2 holds 3000 ties at its
    max (too many candidates), row 3 is all equal."""
    logits = random_logits(rng, batch, VOCAB, 3.0)
    logits[1] = np.linspace(-8.0, 8.0, VOCAB, dtype=np.float32)
    logits[2, rng.choice(VOCAB, 3000, replace=False)] = 40.0
    logits[3] = 0.5
    ledger = MismatchLedger()
    for top_k, top_p in [(50, 0.9), (0, 0.9), (50, 1.0)]:
        gpu = run_sample(logits, stream, 0.8, top_k, top_p, seed=top_k + 5, step=11)
        ledger.compare(logits, gpu, 0.8, top_k, top_p, top_k + 5, 11)
    ledger.assert_rare()


@pytest.mark.parametrize("batch", [100, 160])
def test_one_cta_a_row_keeps_its_list_again_from_a_higher_floor(batch, rng, stream):
    """Past the rows that pairs of CTAs hold at one CTA an SM, top-p alone takes one CTA a row (on a 132-SM device:
    at 100 rows one CTA an SM, whose lanes list their own logits; at 160 two, whose warps list theirs), whose floor is
    the half level-0 digit of its first 4096 z's 77th largest. Rows 0-15 put 120 z at 7.2 there (floor 7.0), 2680 more
    in [7.0, 7.5) and 1400 in [7.5, 10) elsewhere, the rest N(0, 1): 4200 z reach 7.0, more than the kept list holds,
    so the CTA keeps its lists again from 7.5, the z in [7.0, 7.5) back in the tail mass (~27% of the row's). At top_p
    0.5 the cut is ~9.0; a tail without them puts it at ~9.37, and ~26% of rows would then draw another token. The
    other rows are N(0, 3^2)."""
    planted = 16
    logits = random_logits(rng, batch, VOCAB, 3.0)
    logits[:planted] = random_logits(rng, planted, VOCAB, 1.0)
    for row in range(planted):
        logits[row, rng.choice(4096, 120, replace=False)] = 7.2
        rest = 4096 + rng.choice(VOCAB - 4096, 4080, replace=False)
        logits[row, rest[:2680]] = rng.uniform(7.0, 7.5, 2680)
        logits[row, rest[2680:]] = rng.uniform(7.5, 10.0, 1400)
    gpu = run_sample(logits, stream, 1.0, 0, 0.5, seed=61, step=9)
    assert (logits[np.arange(planted), gpu[:planted]] >= 8.5).all(), gpu[:planted]
    ledger = MismatchLedger()
    ledger.compare(logits, gpu, 1.0, 0, 0.5, 61, 9)
    ledger.assert_rare()


def test_overflowing_lists_recompute_the_max(rng, stream):
    """Unstaged, a CTA's floor comes from its slice's first batch: in an ascending row almost every z of the upper slice
    reaches it and the warps' reached lists overflow, losing the row's max; a warp whose list overflowed takes its max
    from its vectors again, since the radix path after it needs the max (the top-p masses, the Gumbel bound). T = 0.001
    spreads z so that the cut depends on the max (before the fix: row 0 drew token 129271 where the CPU draws
    129278)."""
    logits = random_logits(rng, 56, VOCAB, 2.0)
    logits[:8] = np.linspace(-8.0, 8.0, VOCAB, dtype=np.float32)
    ledger = MismatchLedger()
    for top_k, top_p in [(50, 0.5), (500, 0.5), (0, 0.5), (50, 1.0)]:
        gpu = run_sample(logits, stream, 0.001, top_k, top_p, seed=top_k + 1, step=4)
        ledger.compare(logits, gpu, 0.001, top_k, top_p, top_k + 1, 4)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_lists_of_a_slice_ending_inside_a_vector(fillers, rng, stream):
    """Unstaged, the vector a slice ends inside is listed after the loop by its thread's warp. That thread (lane 31 of
    warp 8 of CTA 1 at vocab 129279: the slice holds 64639 tokens, 16159 whole vectors) leaves the loop's last round
    early, while lanes 0-30 list vectors 16128-16158 in it, so its own count of the warp's list is stale until the warp
    reduces it. Listed alone with that count, its tokens took the slot of the round's first entry: here the row's
    winner, 129272, lost to 129276 (racecheck saw the two writes to one slot)."""
    vocab = VOCAB - 1
    logits = random_logits(rng, 1 + fillers, vocab, 2.0)
    logits[0, 129152:129272] = -10.0  # vectors 16128-16157 of CTA 1 list nothing: 129272 comes first in the round
    logits[0, 129272] = 40.0          # (vector 16158) the winner whatever the noise
    logits[0, 129276] = 30.0          # the first token of the vector the slice ends inside
    ledger = MismatchLedger()
    for top_k, top_p in [(5, 1.0), (0, 0.9)]:
        gpu = run_sample(logits, stream, 0.5, top_k, top_p, seed=5, step=2, stride=vocab + 1)
        assert gpu[0] == 129272
        ledger.compare(logits, gpu, 0.5, top_k, top_p, 5, 2)
    ledger.assert_rare()


def lane_tokens(thread):
    """The first 32 tokens that thread `thread` of a 512-thread CTA loads at a CTA a row: its vectors thread, thread +
    512, ..., 4 tokens each."""
    return (4 * (thread + 512 * np.arange(8))[:, None] + np.arange(4)).ravel()


@pytest.mark.parametrize("fillers", BATCH_FILLERS + [99])
def test_a_lane_whose_list_overflows(fillers, rng, stream):
    """Unstaged at one CTA an SM (pairs of CTAs; with 99 fillers on a 132-SM device, top-p alone at a CTA a row), each
    lane lists the logits of its own vectors that reach the floor, in 24 slots: thread 5 of CTA 0 (vectors 5, 517, ...,
    3589: tokens 20-23, 2068-2071, ...) holds 32 such logits here, the row's winner the last of them, so its list
    overflows and the row must leave the fast path rather than lose the winner."""
    logits = random_logits(rng, 1 + fillers, VOCAB, 2.0)
    tokens = lane_tokens(5)
    logits[0, tokens] = np.linspace(20.0, 30.0, tokens.size, dtype=np.float32)
    logits[0, tokens[-1]] = 40.0
    ledger = MismatchLedger()
    for top_k, top_p in [(50, 1.0), (50, 0.9), (0, 0.9)]:
        gpu = run_sample(logits, stream, 0.5, top_k, top_p, seed=7, step=3)
        assert gpu[0] == tokens[-1] == 14359
        ledger.compare(logits, gpu, 0.5, top_k, top_p, 7, 3)
    ledger.assert_rare()


def test_lanes_spilling_past_their_slots(rng, stream):
    """Top-p alone at a CTA a row, two an SM (160 rows on a 132-SM device): each lane lists its own logits in 11 slots,
    and those past them go on the CTA's spill list of 304. Row 0: thread 5 holds 32 logits that reach the floor (as in
    test_a_lane_whose_list_overflows), the winner the last of them: 21 spilled, the row stays on the fast path. Row 1:
    threads 0-15 each hold 32 (336 spilled): the spill list overflows, and the row leaves the fast path rather than
    lose its winner, thread 15's last."""
    batch = 160
    logits = random_logits(rng, batch, VOCAB, 3.0)
    tokens = lane_tokens(5)
    logits[0, tokens] = np.linspace(20.0, 30.0, tokens.size, dtype=np.float32)
    logits[0, tokens[-1]] = 40.0
    for thread in range(16):
        logits[1, lane_tokens(thread)] = np.linspace(20.0, 30.0, 32, dtype=np.float32)
    logits[1, lane_tokens(15)[-1]] = 40.0
    ledger = MismatchLedger()
    for seed in range(3):
        gpu = run_sample(logits, stream, 0.5, 0, 0.9, seed=seed, step=3)
        assert gpu[0] == tokens[-1] == 14359 and gpu[1] == lane_tokens(15)[-1] == 14399, gpu[:2]
        ledger.compare(logits, gpu, 0.5, 0, 0.9, seed, 3)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_top_p_close_scores(fillers, rng, stream):
    """Top-p without top-k bounds the kept z's scores within ~4e-5 and forms exact scores only where two bounds
    overlap: rows 1-3 plant two z whose exact scores tie (row 1) or differ by an ulp (rows 2 and 3) near 30, their z
    within 2 of each other (both in the nucleus at top_p 0.9), the rest N(0, 1). The exact scores decide, the lowest
    id on a tie."""
    seed, step = 31, 4
    logits = random_logits(rng, 4 + fillers, VOCAB, 1.0)
    noise = gumbel_noise(seed, step, np.arange(4), VOCAB)
    winners = []
    for row, ulps in ((1, 0), (2, 1), (3, -1)):
        picks = rng.choice(VOCAB, 64, replace=False)
        partner = next(c for c in picks[1:] if abs(noise[row, c] - noise[row, picks[0]]) < 2.0)
        winners.append(plant_close_scores(logits, noise, row, *sorted((picks[0], partner)), ulps))
    gpu = run_sample(logits, stream, 1.0, 0, 0.9, seed=seed, step=step)
    cpu = Sampler(1.0, 0, 0.9, seed).sample(logits, step)
    assert list(gpu[1:4]) == winners and list(cpu[1:4]) == winners, (gpu[1:4], cpu[1:4], winners)
    ledger = MismatchLedger()
    ledger.compare(logits, gpu, 1.0, 0, 0.9, seed, step)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS + TOP_P_ALONE_FILLERS)
def test_top_p_cut_inside_a_frontier_bin(fillers, rng, stream):
    """Unstaged (with fillers), top-p without top-k keeps a candidate for the token only when the mass of the z above
    it, from the mass bins before its own and from its bin-mates of greater z, stays short of the target. Rows 0-3:
    z = 10 once, then c at 9.010 and w at 9.005 (one mass bin: a bin spans 1/46), the rest N(-10, 1) (no fixed-point
    mass). At top_p 0.7 the target (0.7 of 1.742) lies between the mass above w without c (1) and with it (1.372): c is
    kept and w is not. w takes the row's largest Gumbel noise, so its score beats every kept one: a finish that left
    out w's bin-mates would return w."""
    seed, step, top_p = 53, 5, 0.7
    logits = np.concatenate([random_logits(rng, 4, VOCAB, 1.0) - 10.0, random_logits(rng, fillers, VOCAB, 3.0)])
    noise = gumbel_noise(seed, step, np.arange(4), VOCAB)
    planted = []
    for row in range(4):
        order = np.argsort(noise[row])
        high, c = (int(t) for t in rng.choice(order[: VOCAB // 2], 2, replace=False))  # noise below the median
        w = int(order[-1])
        logits[row, [high, c, w]] = [10.0, 9.010, 9.005]
        planted.append((high, c, w))
    gpu = run_sample(logits, stream, 1.0, 0, top_p, seed=seed, step=step)
    cpu = Sampler(1.0, 0, top_p, seed).sample(logits, step)
    for row, (high, c, w) in enumerate(planted):
        assert cpu[row] in (high, c) and gpu[row] == cpu[row], (row, gpu[row], cpu[row], (high, c, w))
    ledger = MismatchLedger()
    ledger.compare(logits, gpu, 1.0, 0, top_p, seed, step)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS + TOP_P_ALONE_FILLERS)
def test_top_p_candidates_and_the_radix_fallback(fillers, rng, stream):
    """Top-p without top-k histograms the masses by zmax - z, keeps every z in the bins before the one where the
    walk reaches top_p and sorts that bin's z (at most 2048) for the cut; a row whose crossing bin holds more (flat
    rows, many ties) takes the radix path. Unstaged (with fillers), the histogram covers only the z at or above the
    row's floor (each CTA keeps the z whose digit reaches its first batch's ~130th largest): a row whose nucleus
    reaches below it (flat rows, row 7, row 8 at top_p 0.99), or whose list overflows (rows 4 and 5: their first
    batches hold almost only the background), takes the radix path; in row 8 the floor is 5.0, exactly the cut's z,
    and the crossing bin also holds z of 4.99 below it, which no list holds. Unstaged, the finish gathers the bins that
    hold the frontier of the scores by z instead (at most 512 entries): rows 2 and 3, whose ties fill the max's bin,
    take the radix path. Row 9 crosses inside 300 ties of a bin (all kept, the cut their z). Row 10 holds 3000 z in
    [9, 9.4) in the second CTA's slice: unstaged, that CTA's list fills both exchange buffers it is copied into (2048
    entries each) for the first CTA, which finishes the row."""
    logits = random_logits(rng, 11 + fillers, VOCAB, 3.0)        # nucleus of a few hundred z: bins of range 0
    logits[1, :] = 0.25                                          # flat: the nucleus is most of the row
    logits[1, 9] = 0.5
    logits[2] = random_logits(rng, 1, VOCAB, 1.0)
    logits[2, rng.choice(VOCAB, 1900, replace=False)] = 9.0      # the crossing among 1900 ties: they fit
    logits[3] = random_logits(rng, 1, VOCAB, 1.0)
    logits[3, rng.choice(VOCAB, 3000, replace=False)] = 9.0      # 3000 ties: too many candidates
    logits[4, :] = -30.0                                         # below 2^-32 of the max: no mass, never kept
    logits[4, rng.choice(VOCAB, 1500, replace=False)] = 6.0      # the crossing 4 below the max: range 1 of 8
    logits[4, [17, 70000, VOCAB - 1, 3, 5]] = 10.0
    logits[5] = logits[4]
    logits[5, logits[5] == -30.0] = -10.0                        # tiny masses: in the total, not candidates
    logits[6, rng.random(VOCAB) < 0.5] = -np.inf                 # masked half
    logits[7] = random_logits(rng, 1, VOCAB, 0.5)                # a nucleus of 40K-129K z, 66-2048 in the crossing bin
    logits[8, :] = -30.0                                         # a cut at the unstaged floor, as described above
    first_batches = np.r_[0:8192, 64640:72832]                   # (the slices of 2 CTAs: 64640 z each)
    elsewhere = np.setdiff1d(np.arange(VOCAB), first_batches)
    ties = np.r_[rng.choice(8192, 140, replace=False), 64640 + rng.choice(8192, 140, replace=False)]
    picked = rng.choice(elsewhere, 1220 + 100 + 1, replace=False)
    logits[8, np.r_[ties, picked[:1220]]] = 5.0                  # 1500 ties: ~1440 of them reach 0.9 of the mass
    logits[8, picked[1220:1320]] = 4.99                          # the same mass bin, below the floor
    logits[8, picked[1320]] = 7.0
    logits[9, :] = -30.0
    logits[9, rng.choice(VOCAB, 305, replace=False)] = np.r_[np.full(5, 10.0), np.full(300, 9.0)]  # p 0.5: the 143rd
    logits[10] = random_logits(rng, 1, VOCAB, 1.0)
    second_slice = rng.choice(np.arange(64640, VOCAB), 3000, replace=False)
    logits[10, second_slice] = rng.uniform(9.0, 9.4, 3000)       # 99.3% of the mass
    ledger = MismatchLedger()
    for top_k, top_p in [(0, 0.9), (0, 0.5), (VOCAB, 0.99), (0, 0.999)]:
        gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=int(top_p * 1000), step=2)
        assert logits[4, gpu[4]] >= 6.0 and logits[5, gpu[5]] >= 6.0
        assert top_p > 0.9 or logits[8, gpu[8]] >= 5.0
        assert top_p > 0.99 or logits[10, gpu[10]] >= 9.0
        ledger.compare(logits, gpu, 1.0, top_k, top_p, int(top_p * 1000), 2)
    ledger.assert_rare()


def test_same_seed_same_tokens_and_seeds_differ(rng, stream):
    logits = random_logits(rng, 64, VOCAB, 1.0)
    first = run_sample(logits, stream, 1.0, 0, 0.9, seed=77, step=5)
    again = run_sample(logits, stream, 1.0, 0, 0.9, seed=77, step=5)
    assert (first == again).all(), "the same seed and step gave different tokens"
    other_seed = run_sample(logits, stream, 1.0, 0, 0.9, seed=78, step=5)
    other_step = run_sample(logits, stream, 1.0, 0, 0.9, seed=77, step=6)
    assert (first != other_seed).mean() > 0.9 and (first != other_step).mean() > 0.9


@pytest.mark.parametrize("sigma", [0.05, 1.0, 4.0, 30.0])
def test_temperature_only_matches_the_cpu_sampler(sigma, rng, stream):
    """Temperature only forms exact scores just for the tokens whose bound reaches the best seen so far (no staging):
    narrow and wide logits, cold and hot temperatures, every token equal to the CPU's or explained."""
    ledger = MismatchLedger()
    for temperature, seed in [(0.3, 1), (1.0, 2), (2.5, 3), (1e-30, 4)]:
        logits = random_logits(rng, 16, VOCAB, sigma)
        gpu = run_sample(logits, stream, temperature, seed=seed, step=int(sigma * 10))
        ledger.compare(logits, gpu, temperature, 0, 1.0, seed, int(sigma * 10))
    ledger.assert_rare()


# Greedy and temperature only run 256-thread CTAs instead of 512 beyond about 40 rows (the H100 holds 30 rows of 512),
# temperature only in pairs of CTAs at 50-66 rows: rows of ordinary logits appended to a batch of special rows put them
# through every kernel.
@pytest.mark.parametrize("fillers", TEMPERATURE_ONLY_FILLERS)
def test_temperature_only_ties_huge_and_invalid_rows(fillers, rng, stream):
    """Rows that defeat the score bounds: flat z (only the noise decides), z = 2e30 everywhere (z + g rounds to z, every
    token ties, so each one is a candidate and the lowest id wins), three huge z over a flat row, a masked row, a z
    of 2e38 (exact division, near overflow); and the rows on which the CPU raises (-1)."""
    logits = random_logits(rng, 9 + fillers, VOCAB, 2.0)
    logits[0] = 0.5
    logits[1] = 1e30
    logits[2] = -5.0
    logits[2, [77777, 3, VOCAB - 1]] = 1e30
    logits[3, rng.random(VOCAB) < 0.999] = -np.inf
    logits[4, 1234] = np.nan
    logits[5, 99999] = np.inf
    logits[6, :] = -np.inf
    logits[7, 77] = 3e38  # finite, but 3e38 / 0.5 overflows to +inf
    logits[8, 55] = 1e38  # 2e38: finite
    sampled = run_sample(logits, stream, 0.5, seed=6, step=4, stride=VOCAB + 4)
    assert sampled[1:3].tolist() == [0, 3]
    assert sampled[4:9].tolist() == [-1, -1, -1, -1, 55]
    valid = logits.copy()
    valid[:9] = 0.0  # the CPU raises on rows 4-7; the fillers keep their row indices (and noise)
    cpu = Sampler(0.5, 0, 1.0, 6).sample(valid, 4)
    for row in range(9, 9 + fillers):
        assert sampled[row] == cpu[row] or explained(logits[row], row, int(sampled[row]), 0.5, 0, 1.0, 6, 4)
    assert np.isfinite(logits[3, sampled[3]])
    for row in (0, 3):  # the CPU raises on the batch: sample each valid row alone, at its own row index
        cpu = Sampler(0.5, 0, 1.0, 6).sample(np.repeat(logits[row][None], row + 1, axis=0), 4)[row]
        assert sampled[row] == cpu or explained(logits[row], row, int(sampled[row]), 0.5, 0, 1.0, 6, 4)


@pytest.mark.parametrize("fillers", TEMPERATURE_ONLY_FILLERS)
def test_temperature_only_slice_tail(fillers, rng, stream):
    """A vocab that is not a multiple of 4: the last CTA's last 1-3 tokens are scored apart from the vector loop, so
    a winner, a NaN, a +inf, an overflow to +inf or a -inf there must count exactly as anywhere else."""
    vocab = VOCAB - 1  # the slices hold 16160 tokens, the last one 16159 (in pairs: 64640 and 64639)
    logits = random_logits(rng, 6 + fillers, vocab, 2.0)
    logits[0, vocab - 2] = 40.0  # far above the rest (sigma 2 / T 0.5): it wins whatever the noise
    logits[1, vocab - 1] = np.nan
    logits[2, vocab - 3] = np.inf
    logits[3, vocab - 1] = 3e38  # finite, but 3e38 / 0.5 overflows to +inf
    logits[4, :] = -np.inf
    logits[4, vocab - 3] = -1.0  # the only finite logit
    logits[5, : vocab - 3] = -np.inf  # only the tail is finite: the noise decides among its 3 tokens
    sampled = run_sample(logits, stream, 0.5, seed=8, step=1, stride=vocab + 1)
    assert sampled[:5].tolist() == [vocab - 2, -1, -1, -1, vocab - 3]
    valid = logits.copy()
    valid[1:4] = 0.0  # the CPU raises on rows 1-3; the other rows keep their row indices (and noise)
    cpu = Sampler(0.5, 0, 1.0, 8).sample(valid, 1)
    assert cpu[[0, 4]].tolist() == [vocab - 2, vocab - 3]
    assert sampled[5] == cpu[5] and sampled[5] >= vocab - 3
    for row in range(6, 6 + fillers):
        assert sampled[row] == cpu[row] or explained(logits[row], row, int(sampled[row]), 0.5, 0, 1.0, 8, 1)


@pytest.mark.parametrize("fillers", TEMPERATURE_ONLY_FILLERS)
def test_temperature_only_product_overflow(fillers, rng, stream):
    """z = x / T within an ulp of -FLT_MAX while z' = x * RN(1 / T) overflows to -inf: such a token loses to any
    ordinary z, and where there is none (the rest -inf) it is found again and ties, the lowest id winning."""
    temperature, x = np.float32(0.9079902), np.float32(-3.0897304e38)
    with np.errstate(over="ignore"):
        assert np.isfinite(x / temperature) and np.isinf(x * (np.float32(1) / temperature))
    logits = np.concatenate([np.full((3, VOCAB), -np.inf, np.float32), random_logits(rng, fillers, VOCAB, 2.0)])
    logits[0, [100000, 40000, 70000]] = x  # in three CTAs' slices
    logits[1, [5, 120000]] = x
    logits[1, 60000] = 0.0
    logits[2, :] = x
    sampled = run_sample(logits, stream, float(temperature), seed=3, step=2)
    assert sampled[:3].tolist() == [40000, 60000, 0]
    cpu = Sampler(float(temperature), 0, 1.0, 3).sample(logits, 2)
    assert cpu[:3].tolist() == [40000, 60000, 0]


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (5, 1.0), (0, 0.9)])
@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_row_padding_is_never_data(top_k, top_p, fillers, rng, stream):
    """Finite, huge values in each row's stride padding (vocab 1001 and 4099: the last 16-byte vector is partial,
    plus whole padding vectors) never become a token."""
    for vocab in (1001, 4099):
        logits = random_logits(rng, 4 + fillers, vocab, 1.0)
        stride = -(-vocab // 4) * 4 + 8
        gpu = run_sample(logits, stream, 0.7, top_k, top_p, seed=vocab, step=1, stride=stride, pad_value=1e30)
        assert (gpu < vocab).all() and (gpu >= 0).all(), gpu
        MismatchLedger().compare(logits, gpu, 0.7, top_k, top_p, vocab, 1)  # every difference explained


# ---- greedy ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, vocab", [(1, VOCAB), (64, VOCAB), (5, 1000), (3, 1001), (2, 1)])
def test_greedy_matches_argmax(batch, vocab, rng, stream):
    logits = random_logits(rng, batch, vocab, 3.0)
    expected = np.argmax(logits, axis=1).astype(np.int32)
    assert (run_sample(logits, stream, greedy_entry=True) == expected).all()
    assert (run_sample(logits, stream, temperature=0.0, top_k=5, top_p=0.5, seed=9) == expected).all()


def test_greedy_ties_go_to_the_lowest_id(rng, stream):
    slice_len = VOCAB // 8  # 16160: the positions of one CTA of the cluster
    logits = random_logits(rng, 4, VOCAB, 1.0)
    logits[0, [70000, 5, VOCAB - 1]] = 9.0
    logits[1, [2 * slice_len + 1, slice_len, slice_len - 1 + 2]] = 9.0  # ties across a slice boundary
    logits[2] = 0.5  # all equal
    logits[3, :] = -np.inf
    logits[3, [VOCAB - 1, VOCAB - 2]] = -3.0
    expected = [5, slice_len, 0, VOCAB - 2]
    assert run_sample(logits, stream, greedy_entry=True).tolist() == expected
    # top_k = 1 keeps exactly the ties at the max; Gumbel-max then picks among them as the CPU does
    ledger = MismatchLedger()
    ledger.compare(logits, run_sample(logits, stream, 1.0, 1, 1.0, seed=4, step=2), 1.0, 1, 1.0, 4, 2)
    assert ledger.mismatches == 0


# ---- masked and invalid logits -------------------------------------------------------------------------------


def test_masked_tokens_are_never_sampled(rng, stream):
    batch = 16
    logits = random_logits(rng, batch, VOCAB, 2.0)
    allowed = rng.random((batch, VOCAB)) < 0.002
    allowed[:, 0] = False
    logits[~allowed] = -np.inf
    ledger = MismatchLedger()
    for seed in range(12):
        for top_k, top_p in [(0, 1.0), (20, 1.0), (0, 0.7)]:
            gpu = run_sample(logits, stream, 1.0, top_k, top_p, seed=seed, step=seed)
            assert allowed[np.arange(batch), gpu].all(), "a masked (-inf) token was sampled"
            ledger.compare(logits, gpu, 1.0, top_k, top_p, seed, seed)
    ledger.assert_rare()


@pytest.mark.parametrize("fillers", BATCH_FILLERS)
def test_invalid_rows_give_minus_one(fillers, rng, stream):
    logits = random_logits(rng, 6 + fillers, VOCAB, 2.0)
    logits[0, 1234] = np.nan
    logits[1, 99999] = np.inf
    logits[2, :] = -np.inf
    logits[5, 77] = 3e38  # finite, but 3e38 / 0.5 overflows to +inf
    # rows 3 and 4 are valid; every row's stride padding holds NaN (upload_logits), which is not data
    sampled = run_sample(logits, stream, 0.5, 10, 0.9, seed=1, step=2, stride=VOCAB + 4)
    assert sampled[[0, 1, 2, 5]].tolist() == [-1, -1, -1, -1]
    for row in (3, 4):  # the CPU raises on the batch: sample each valid row alone, at its own row index
        cpu = Sampler(0.5, 10, 0.9, 1).sample(np.repeat(logits[row][None], row + 1, axis=0), 2)[row]
        assert sampled[row] == cpu or explained(logits[row], row, int(sampled[row]), 0.5, 10, 0.9, 1, 2)
    greedy = run_sample(logits, stream, greedy_entry=True, stride=VOCAB + 4)
    assert greedy[[0, 1, 2]].tolist() == [-1, -1, -1]
    assert greedy[3:].tolist() == np.argmax(logits[3:], axis=1).tolist()


# ---- arguments ---------------------------------------------------------------------------------------------------


def test_empty_batch_is_a_no_op(stream):
    out = DeviceArray.empty(2, np.int32).fill_bytes(TOKEN_POISON, stream)
    assert lib.dsv4_sample_tokens_f32(out, None, 0, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0, stream) == 0
    assert lib.dsv4_sample_greedy_f32(None, None, 0, VOCAB, VOCAB, stream) == 0
    assert (out.to_numpy(stream) == 0x7F7F7F7F).all()


A = 0x7F0000000000  # a fake aligned device address: the checks reject before any launch


@pytest.mark.parametrize(
    "args, status, message",
    [
        ((None, A, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_NULL_POINTER, "tokens is NULL"),
        ((A, None, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_NULL_POINTER, "logits is NULL"),
        ((A, A + 4, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_ALIGNMENT, "logits = 0x[0-9a-f]+ is not 16"),
        ((A + 2, A, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_ALIGNMENT, "tokens = 0x[0-9a-f]+ is not 4"),
        ((A, A, -1, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_SHAPE, "batch = -1"),
        ((A, A, 2, 0, 4, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_SHAPE, "vocab = 0"),
        ((A, A, 2, 400000, 400000, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_SHAPE, "vocab = 400000"),
        ((A, A, 2, 1001, 1001, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_STRIDE, "logits_stride = 1001"),
        ((A, A, 2, 1001, 1000, 1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_STRIDE, "logits_stride = 1000"),
        ((A, A, 2, VOCAB, VOCAB, -1.0, 0, 1.0, 0, 0), bindings.DSV4_ERR_ARGUMENT, "temperature = -1"),
        ((A, A, 2, VOCAB, VOCAB, float("nan"), 0, 1.0, 0, 0), bindings.DSV4_ERR_ARGUMENT, "temperature = nan"),
        ((A, A, 2, VOCAB, VOCAB, 1.0, -1, 1.0, 0, 0), bindings.DSV4_ERR_ARGUMENT, "top_k = -1"),
        ((A, A, 2, VOCAB, VOCAB, 1.0, 0, 0.0, 0, 0), bindings.DSV4_ERR_ARGUMENT, "top_p = 0"),
        ((A, A, 2, VOCAB, VOCAB, 1.0, 0, 1.5, 0, 0), bindings.DSV4_ERR_ARGUMENT, "top_p = 1.5"),
        ((A, A, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, -1), bindings.DSV4_ERR_ARGUMENT, "step = -1"),
        ((A, A, 2, VOCAB, VOCAB, 1.0, 0, 1.0, 0, 2**32), bindings.DSV4_ERR_ARGUMENT, "step = 4294967296"),
    ],
)
def test_bad_arguments_raise(args, status, message):
    with pytest.raises(DSV4Error) as info:
        lib.dsv4_sample_tokens_f32(*args, None)
    assert info.value.status == status, info.value
    assert info.value.message.startswith("dsv4_sample_tokens_f32: "), info.value.message
    assert re.search(message, info.value.message), info.value.message


def test_greedy_bad_arguments_raise():
    with pytest.raises(DSV4Error, match="logits_stride = 6") as info:
        lib.dsv4_sample_greedy_f32(A, A, 1, 5, 6, None)
    assert info.value.status == bindings.DSV4_ERR_STRIDE
