// Token sampling over fp32 logits [batch, vocab], exactly as defined at the top of pydsv4/sampling.py:
// greedy argmax (ties to the lowest id), or z = logits / T, the top-k and top-p filters, and Gumbel-max with
// Philox4x32-10 noise g_i = fp32(-log(-log(u_i))) (u, g in double), u_i from word i % 4 of the block at counter
// (i / 4, row, step, 0), key = seed: one block serves the 4 tokens of a 16-byte vector of z.
//
// Greedy and temperature only (no top-k, no top-p: generate's default): one pass over the logits, nothing staged. Each
// CTA of a row's cluster takes a slice; for temperature only, it forms the Gumbel-max of its slice from cheap bounds on
// every score and double logs for the few tokens whose bound reaches the best the row's CTAs have seen so far
// (gumbel_pass). Every warp writes its best into CTA 0's shared memory, and one cluster barrier ends the launch. These
// run CTAs of kThreads threads while the rows' clusters (nearly) fit the device at once, of kNarrowThreads beyond;
// temperature only also runs in pairs of CTAs or at a CTA a row, one an SM, where those fill the device
// (launch_sample). Flash vocab on the H100, T only: 1 row 5.6, 8 rows 5.9, 64 rows 18.7 us (the staged path took 11.6,
// 12.4, 43.0); 64 rows in pairs of CTAs at one an SM (launch_sample) 16.5, and 14.5 with only the first eighth of each
// slice prefetched (prefetch_slice). Before the threshold was shared by the row (20.7 us at 64 rows), latency-bound at
// 64 rows (ncu: ~75 instructions a 4-token vector in a step that stops at the vectors' reach, of which the Philox block
// ~45; about 2 of 4 issue slots a cycle used): the top stalls were the closing cluster barrier (warps and CTAs end at
// different times, 25% of samples) and the first use of a load (24%); more loads in flight (a cp.async or bulk-copy
// ring) or more warps an SM measured slower (see gumbel_pass).
//
// Top-k and / or top-p: one cluster of kCluster CTAs per row: CTA r holds the slice [r * slice, (r + 1) * slice) of z
// in shared memory (one read of the logits), and the CTAs agree on every decision by exchanging per-CTA results through
// distributed shared memory: each CTA writes its contribution into its own exchange buffer, the cluster
// barrier publishes it, and every CTA combines the kCluster buffers in the same order, so all of them take the
// same branch (two buffers alternate, so a buffer is rewritten only after everyone has read it).
//  1. load z, its max (lowest id on ties) and whether the row is invalid (NaN, +inf, or no finite value);
//     greedy stops here (and stages nothing in shared memory);
//  2. top-k threshold t = the k-th largest z: radix select over the order-preserving 32-bit key of z, digits of
//     11, 11, 10 bits, exact integer counts per digit (shared-memory atomics, summed over the cluster);
//  3. top-p threshold: the largest z_p such that the mass of the kept tokens with z >= z_p reaches
//     top_p * (total kept mass): the same radix descent over masses exp(z - max) in fixed point (2^31 for the
//     max), summed as integers, so the result does not depend on the order of the atomics;
//  4. Gumbel-max over the kept tokens, 4 at a time; a vector whose 4 z are all below (max z + its noise) - 17.5
//     cannot win (g < 17.33 always) and skips its Philox block and logs, and a token whose upper bound (gumbel_reach,
//     from the Philox word, no logs) stays below the thread's best skips the logs. The CTAs push their best
//     (score, id) into CTA 0.
// Top-k fast path (0 < top_k <= 2048, the usual case), replacing 2-4: the load pass also counts the first
// digit; from the digits at and below the max's, the cluster finds the k-th largest's first digit d0 and, when
// at most 2048 z of the row have a first digit >= d0, every CTA pushes those candidates (key, id) into CTA 0,
// which applies top-k, top-p (the same fixed-point masses and cut as 3) and Gumbel-max to them alone (finish_top_k):
// two cluster barriers instead of up to eight, and no further pass over the row. Rows with more candidates
// (ties), or whose k-th largest lies too far below the max, take 2-4.
// Top-p fast path (top-p without top-k), replacing 3: after the max, every CTA histograms its z by zmax - z
// (1024 bins over the 22.2 below the max where fixed-point masses are nonzero: mass and count per bin), CTA r sums
// the cluster's bins of its eighth, and all CTAs find the bin where the walk from the max first reaches
// ceil(top_p * the row's mass). Everything in the bins before it is kept; its own z (at most 2048) are pushed to
// every CTA, and each finds the same cut among them from the mass before the bin (crossing_cut). Then 4 as usual:
// three cluster barriers and one pass over shared memory in place of three radix levels that each pull 128 KB of
// histograms per CTA, and the nucleus may be of any size.
// Where one row's time goes (H100, Flash vocab, T = 0.8, logits N(0, 3^2), %globaltimer at each phase's end, us):
//   T,k,p (k 50, p 0.9) 12.2: load and level-0 histogram 4.1, max exchange 1.2, candidate digit 1.4, push 1.9, CTA
//     0's sort 0.9, cut 0.9, Gumbel-max 0.7, end 0.5;
//   T,p (p 0.9) 21.8: load 3.3, max exchange 1.2, mass histogram 4.1 (three shared atomics a token; then one float
//     at a time, see crossing_mass_bin), its two exchanges and the crossing bin 3.3, push 2.7, sort and cut 1.3,
//     Gumbel-max pass 2.6, end 1.7.
// Staged CTAs run 2 an SM, and 30 rows' clusters of 8 fit the H100 at once (clusters of 4 or 8 CTAs fill 124 of its 132
// SMs), so 64 rows take 3 waves: T,k,p 42.5 us, T,p 74.5 us. Beyond those 30 rows the top-k fast path runs unstaged
// clusters of 2 CTAs (all 64 rows in one wave), whose load pass keeps the few z the push may take in a list and
// compares every other logit with a floor only: T,k,p at 31 / 48 / 64 rows 26.1 / 34.0 / 42.5 -> 25.4 / 27.1 / 29.3 us.
// A 64-row trace (%globaltimer, us): first batch and its k-th digit 3.2-4.1, the rest of the slice 11-13, the warps'
// lists divided and counted 1.4-2.8, max exchange 0.4-1.0, candidate digit 1.4, push 1.3, CTA 0's sort, cut and
// Gumbel-max 3.9. Top-p without top-k runs the same unstaged clusters beyond 30 rows: its load pass keeps the z at or
// above a floor guessed from the first batch and sums the mass of every other z on the way, and the cut comes from the
// kept lists (now unstaged_top_p; a nucleus reaching below the floor takes the radix path): T,p at 48 / 64 rows 57.2 /
// 74.5 -> 43.0 / 45.3 us (31 rows 46.6 staged, 47.0 unstaged) with a second pass over the logits (from L2) for the
// row's mass, 34.1 / 35.6 without it. Up to 66 rows (one wave at one CTA an SM) the unstaged kernel runs with more
// registers and more loads in flight (launch_sample): T,k,p at 48 / 64 rows 24.5 / 26.2 us, T,p 32.0 / 34.6; with
// first batches of 2 vectors a thread instead of 4 (kFirstBatchVectors), T,k,p 24.4 / 25.5, T,p 31.4 / 33.6. A 64-row
// trace of T,k,p before that change (%globaltimer, us after the wait): first batch and its k-th digit 3.4, the rest
// of the slice to 13.7-16.4, the lists divided and counted to 16.1-18.5, max exchange 1.3, candidate digit 1.1, push
// 1.2, CTA 0's sort of ~85 candidates 1.0, cut 1.0, Gumbel-max 0.65, its reduction 0.15-1.6. The unstaged top-k path
// now needs one cluster barrier after the load pass (unstaged_top_k): T,k,p at 48 / 64 rows 24.4 / 25.4 -> 23.3 / 24.0
// us. Its trace (64 rows, us after the wait, CTA 0): lists done 15.0-16.5, pushed 16.1-17.6, barrier passed 17.4-18.2,
// the row's digit 0.35 later, its ~85-92 candidates gathered 0.45 later, weighed and ranked 1.6 (0.7 of it the Philox
// blocks and double logs), the cut and the best score 1.3 (clock64: ~2300 cycles of a warp's serial loads, scan and
// shuffles; measured the same: the best score by two redux.sync in place of warp_best, 24.1 / 24.8 against 24.0 /
// 24.0, and the lanes' loops unrolled 4 entries at a time, 24.0 either way). See launch_sample for what wider batches
// measured otherwise. The load pass's floor now rises as the CTA sees more z, and its lists' stores take their shared
// address from a register (filtered_sample): T,k,p at 48 / 64 rows 23.2 / 24.0 -> 21.0 / 21.8 us, T,p 31.4 / 33.9 ->
// 29.9 / 32.0. CTA 0's finish no longer sorts its candidates (finish_top_k): T,k,p at 1 / 32 / 48 / 64 rows 12.2 /
// 21.8 / 21.1 / 21.8 -> 11.2 / 20.8 / 20.1 / 21.6 us (96 / 128 / 256 rows 32.3 / 35.5 / 72.2 -> 31.4 / 34.7 / 71.8).
// At 64 rows the finish (barrier to token) took 3.0 us against 3.8, but the load pass 1.2 us longer: the next launch
// prefetches its slices into L2 on the SMs that rank 1 leaves while CTA 0 finishes, so a shorter finish leaves more of
// the next slices to the load pass, which then runs at about the device's read bandwidth. The top-p fast paths' cut in
// the crossing bin counts the same way (crossing_cut): T,p at 1 / 48 / 64 rows 21.1 / 29.9 / 32.2 -> 20.7 / 29.4 /
// 31.6 us (T,k,p at 1 row 11.1-11.3 across these builds). Fewer instructions in the unstaged load pass (for_each_z,
// and the listing's slots from three ballots): T,k,p at 48 / 64 rows 20.2 / 21.6 -> 19.3 / 20.9 us, T,p 29.4 / 31.6 ->
// 28.6 / 30.9.
// The unstaged top-p path's cut and Gumbel-max by CTA 0 alone after one cluster barrier (unstaged_top_p, in place of
// three more barriers and every CTA's part of them), and the ends of the paths on barriers whose arrival fences only
// the threads that wrote to another CTA (fence_cluster): T,p at 48 / 64 / 96 / 128 / 160 / 256 rows 28.6 / 31.0 /
// 56.0 / 45.9 / 62.3 / 71.4 -> 28.4 / 30.7 / 56.7 / 45.7 / 58.4 / 67.1 us, T,k,p 19.2 / 21.0 / 30.0 / 33.8 / 48.7 /
// 61.6 -> 19.1 / 20.7 / 29.4 / 33.0 / 47.8 / 60.5. The unstaged paths' first write to another CTA now waits on a
// cluster barrier arrived at after the first batch (racecheck: a write to a CTA "that might not have entered yet").
// The unstaged paths' exchanges after the load pass now go one way as st.async pushes counted on the receiver's
// mbarrier (push_u32), with no cluster barrier or fence after the load pass: T,k,p at 32 / 48 / 64 rows 17.43 / 18.01 /
// 19.19 -> 17.20 / 17.73 / 18.87 us, T,p 27.91 / 27.70 / 28.70 -> 27.45 / 27.38 / 28.35 (H100, the bench's timing).
// At one CTA an SM the load pass lists the logits reaching its floor in each lane's own slots, with no vote (kLaneLists
// in filtered_sample): T,k,p at 48 / 64 rows 17.82 / 19.07 -> 16.78 / 18.04 us, T,p 27.52 / 28.55 -> 25.24 / 26.62.
// There, both CTAs of the unstaged top-p path form the close Gumbels of their own kept lists (CTA 1 pushes them)
// instead of CTA 0 forming every Philox block in its finish (unstaged_top_p): T,p at 32 / 48 / 64 rows 25.29 / 25.22 /
// 26.57 -> 23.44 / 23.60 / 25.75 us; the token without a pass to count the contenders, 22.86 / 22.91 / 25.03; the
// listed logits kept in one range a warp (filtered_sample), 21.90 / 21.96 / 24.26; the tail's terms without a select
// (tail_term) and the lane lists counted by their slot address alone (filtered_sample), 20.98 / 21.97 / 23.94 (T,k,p
// 15.70 / 16.39 / 17.79); CTA 0's cut and Gumbel-max from the frontier of its entries by z (unstaged_top_p), 20.52 /
// 21.90 / 23.32.
// The row walk of top-p in the CPU definition sums sorted probabilities one by one in fp32; here the masses are
// exact integer sums of fixed-point values (but for the unstaged top-p fast path's mass off its lists, a sum of
// fp32 exponentials within ~1e-5 of that part of the total), so a row whose cumulative mass crosses top_p within
// rounding of the cut can keep one token more or less (rare; tests bound it). Everything else is exact: counts, keys,
// Philox words, u, and g (double logs rounded to fp32) match the CPU's.
// Invalid rows (NaN or +inf in z, all -inf), on which the CPU sampler raises, get token -1.
#include <cooperative_groups.h>

#include <atomic>
#include <climits>

#include "common.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kCluster = 8;                      // CTAs per row (portable cluster size)
constexpr int kWideBatchRanks = 2;               // the filtered path's CTAs per row beyond one wave (launch_sample)
constexpr int kThreads = 512;
constexpr int kNarrowThreads = 256;              // greedy and temperature only, at large batch (launch_sample)
constexpr int kWarps = kThreads / dsv4::kWarpSize;
constexpr int kBins = 2048;                      // 11-bit digits
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kLevels = 3;                       // digits of 11, 11 and 10 bits
constexpr int64_t kMaxSlice = 40960;             // floats of z per CTA: 160 KB of shared memory
constexpr float kGumbelBound = 17.5f;            // > -log(-log(1 - 2^-25)) = 17.33, the largest g
constexpr float kMassScale = 2147483648.0f;      // 2^31: exp(z - max) <= 1 in fixed point, fits 32 bits
constexpr int kLoadBatch = 8;                    // 16-byte logit loads per thread in flight (greedy)
constexpr int kSampleLoadBatch = 4;              // sampling: with the division's registers, 8 would spill
// The unstaged filtered kernel while its rows' clusters fit the device at one CTA an SM (launch_sample): up to 128
// registers, so its load pass keeps 8 vectors in flight a thread. With a leading part of each slice prefetched
// (prefetch_slice), 6 took T,k,p at 48 / 64 rows 18.8 / 20.05 us against 18.1 / 19.25; with the pushes
// (unstaged_top_k), 10 took T,k,p 18.6 / 19.9 against 17.75 / 18.95, T,p 28.0 / 29.0 against 27.5 / 28.5.
// That depends on the compiler issuing a batch's 8 loads together: a build without top-p's tail terms (timing only)
// issued them one by one (SASS from cuobjdump -sass) and its load pass (a token written right after it) took 24.1 us
// at 64 rows for T,k,p against 17.0, 25.0 for T,p against 20.1. Check the SASS of a load-pass variant before its time.
// Measured and not kept: the next batch's 8 loads issued before the current batch's visits (two register buffers in
// turn, 112 registers, no spill), T,k,p at 32 / 48 / 64 rows 16.29 / 16.88 / 18.02 -> 16.86 / 18.50 / 19.26 us, T,p
// 21.85 / 21.99 / 24.31 -> 21.81 / 23.11 / 24.91. Again with the 9 / 16 prefetch of T,p (prefetch_sixteenths), two
// runs, us at 32 / 48 / 64 rows against T,k,p 15.75-15.81 / 16.40-16.49 / 17.81-17.82, T,p 19.81-19.82 / 20.55-20.59 /
// 22.57-22.59: 6 took T,k,p 16.75-16.77 / 17.40-17.47 / 18.83-18.84, T,p 20.39-20.40 / 21.15-21.20 / 23.03-23.18; 10
// took T,k,p 16.44-16.48 / 16.92-16.95 / 18.30-18.34, T,p 20.28-20.31 / 21.13-21.19 / 22.93-22.99.
constexpr int kWideLoadBatch = 8;
// Temperature only: 16-byte vectors per thread per step (and as many loading ahead). 2 takes 62 registers; 3 measured
// no faster (64 rows, 256 threads, before the vectors' reaches: 22.4 us either way), 1 slower (27.4 -> 29.9 us, an
// earlier kernel).
constexpr int kGumbelBatch = 2;
// Temperature only in pairs of CTAs (launch_sample: up to 128 registers, one CTA an SM). Flash vocab on the H100, 64
// rows: 2 vectors 17.1 us, 3 16.75, 4 16.5 (96 registers), 6 17.7 (124 registers); 8 spills.
constexpr int kPairGumbelBatch = 4;
constexpr int kWindowBins = 512;                 // top-k fast path: level-0 bins combined, from the max's down
// Top-p fast path: bins of zmax - z over [0, 22.25), where every nonzero fixed-point mass lies (exp(z - max) 2^31
// rounds to 0 below ln 2^-32 = -22.18); CTA r of the cluster combines bins [r, r + 1) * kMassBinsPerCta.
constexpr int kMassBins = 1024;
constexpr float kMassBinsPerUnit = kMassBins / 22.25f;
constexpr int kMassBinsPerCta = kMassBins / kCluster;

constexpr int kLevel0Shift = 21;  // the key's bits below level 0's digit
__device__ __forceinline__ int digit_shift(int level) { return level == 0 ? kLevel0Shift : level == 1 ? 10 : 0; }
__device__ __forceinline__ uint32_t digit_mask(int level) { return level < 2 ? 0x7FFu : 0x3FFu; }

// What one CTA contributes to a cluster-wide combination. 16-byte aligned: read back as 4-bin vectors.
struct alignas(16) Exchange {
    uint32_t hist[2][kBins];  // counts in [0]; masses as (high 16 bits, low 16 bits) in [0] and [1]
    float value;              // max z of the slice (phase 1)
    int index;                // its lowest token id
    int bad;                  // NaN or +inf seen
    int overflow;             // unstaged fast paths: the CTA's kept list overflowed
};
// Top-k fast path: a CTA's candidate list (and CTA 0's gathered list) lives in an exchange buffer's histogram.
constexpr int kMaxCandidates = sizeof(Exchange::hist) / sizeof(unsigned long long);  // 2048
// Unstaged fast paths (see filtered_sample), in dynamic shared memory: the z a CTA keeps in its load pass (32 KB), and
// the logits that reach the floor: at two CTAs an SM in each warp's list (44 KB), at one in each lane's (96 KB).
constexpr int kKeptCapacity = 4096;
constexpr int kListLost = 1 << 24;  // added to the kept count by a warp whose list overflowed: the row leaves the path
// Unstaged top-p: about as many z a CTA aims to keep (the digits are coarse: a pair's CTA at one CTA an SM keeps z >= 8
// or z >= 7.5 of N(0, 3.75^2) z, ~1060 or ~1470; at two, level-0 digits, z >= 8 or z >= 7, ~1060 or ~2000). A row whose
// nucleus reaches below the higher floor takes the radix path: in NumPy, 3 of 1500 such rows at top_p 0.9 (level-0
// floors; nuclei of 1137 z at the median, 2175 at most), and one of the bench's 96-row sets (set 4, row 86: cut 7.97,
// both floors 8), which made its T,p time 54.4 us against 42.1 at 128 rows. A budget of 1536 (floors at 7: no such row
// in 1500) took T,p at 32 / 48 / 64 / 96 / 128 rows 21.47 / 21.95 / 24.09 / 54.12 / 41.87 -> 22.38 / 22.68 / 24.69 /
// 40.87 / 43.63 us (H100): the longer lists cost the finish where no row leaves the path.
// Half digits for the pairs at one CTA an SM (filtered_sample's half_digits; level-0 digits before, so the ~40% of CTAs
// whose first batch put the floor at 7 now take 7.5): in NumPy, on the bench's sets at 32 / 48 / 64 rows, no nucleus
// reaches below the higher floor either way (the closest cut lies 0.078 above it, both floors 8), and a row's two lists
// hold 2433 z on average against 2834, 2893 against 3937 at the 90th percentile. H100, the bench's timing, three runs:
// T,p at 32 / 48 / 64 rows 19.84-19.93 / 20.53-20.75 / 22.60-22.67 -> 18.76-18.81 / 19.88-20.90 / 21.46-21.48 us
// (T,k,p, whose floor is the top-k's: 15.69-15.75 / 16.37-16.46 / 17.84-17.93 -> 15.51-15.59 / 16.30-16.40 /
// 17.78-17.80).
constexpr int kListBudget = 1024;
// Unstaged top-p: the entries CTA 0's finish gathers from the bins that hold the frontier (unstaged_top_p; ~8 for the
// bench's rows, ~200 for flat ones).
constexpr int kGatherCapacity = 512;
// Unstaged top-p at one CTA a row (Mode::kTopP: past the rows pairs hold at one CTA an SM, launch_sample): the floor is
// the half level-0 digit (the key's top 12 bits: z >= 7 or >= 7.5 where level-0 digits give 7 or 8) of the first
// batch's largest z whose count scaled to the row reaches kRowListBudget. The level-0 digit of kListBudget's rank
// (floor 8 for the bench's rows) sent every row whose nucleus reaches below z = 8 to the radix path: 2 of the bench's
// 512 rows (cut 7.96), each ~140 us of a CTA walking the row's levels while the others load. In NumPy, on the bench's
// sets at 256 / 512 / 1024 rows, this floor is 7.5 for ~84% of rows, 8 for ~12.5% and 7 for 3-4%, no nucleus reaches
// below it, and the lists hold ~2870 z (~2130 at z >= 8); a list that overflows kKeptCapacity at floor 7 (~3970 z) is
// kept again from 7.5 (filtered_sample). Flash vocab on the H100, the bench's timing, T,p at 200 / 256 / 512 / 1024
// rows, no row off the path at any budget (a probe that marks them): budget 2400 62.3 / 69.7 / 135.5 / 267.9 us, 2700
// 64.1 / 70.8 / 137.1 / 270.7 (level-0 floor: 60.0 / 67.9 / 212.8 / 292.6, radix rows included). One wave ends with
// its slowest rows, those at floor 7. Measured and not kept: 4 vectors a thread in the first batch (8192 z: fewer rows
// at 7 or 8), 2560 z, 72.5 / 142.0 / 286.3 at 256 / 512 / 1024 rows (in the top-k kernel's instance, which then
// spilled); lists over 3400 z kept again from the next half digit as well, budget 2400 / 2700 / 3000: 71.6 / 73.1 /
// 80.1 at 256 rows and 137.1 / 139.3 / 141.6 at 512.
constexpr int kRowListBudget = 2400;
constexpr int kRowFloorShift = 20;  // half level-0 digits: 4096 of them, over ex[0].hist[0] and [1]
// The warps' lists of the top-k path at two CTAs an SM (up to ~310 of a warp's 8080 logits reached floor 7 at one CTA
// a row when top-p alone listed there too).
constexpr int kWarpReached = 352;
constexpr int kLaneSlots = 24;  // (16 overflowed the bench's T,p rows: see filtered_sample)
// Top-p alone at two CTAs an SM lists each lane's own logits too (filtered_sample), in fewer slots a lane: two CTAs an
// SM hold 113 KB each, 34.5 KB of them Shared, 32 KB the kept list. A lane's logits past its slots go on the CTA's
// spill list. The bench's rows list ~5.6 logits a lane (~7.8 at floor 7): ~4 spilled a row (~80 at floor 7).
constexpr int kSharedSmLaneSlots = 11;
constexpr int kSpillCapacity = 304;
// At one CTA an SM the unstaged top-p path also keeps the close Gumbels of both CTAs' kept lists (unstaged_top_p),
// after the lanes' lists: this CTA's [kKeptCapacity], then (CTA 0) its peer's [kKeptCapacity]. At two, the warps'
// lists (top-k), or the lanes' and the spill list (top-p alone), whichever is larger.
constexpr size_t unstaged_smem(int ctas_per_sm) {
    return kKeptCapacity * sizeof(unsigned long long) +
           (ctas_per_sm == 1 ? size_t(kLaneSlots) * kThreads * sizeof(uint2) + 2 * kKeptCapacity * sizeof(float)
                             : max(size_t(kWarps) * kWarpReached,
                                   size_t(kSharedSmLaneSlots) * kThreads + kSpillCapacity) * sizeof(uint2));
}
// The unstaged fast paths' first batch: 16-byte vectors a thread (4096 z a CTA). Flash vocab on the H100, 64 rows: 4
// vectors took T,k,p 26.1 us, T,p 34.7, 2 vectors 25.5 and 33.6; 1 vector (a floor from 2048 z) 95.5 and 33.5: the
// bench's rows then overflow the warps' lists of T,k,p, which takes the radix path. With the rising floor, 1 vector
// (96% of the warps' floors rise two digits) took T,k,p at 48 / 64 rows 22.4 / 22.4 against 21.0-21.2 / 21.8, T,p
// 29.8 / 32.0 against 30.0-30.1 / 32.2. Measured and not kept: the list loop's first batch (8 vectors a thread)
// loaded with the first batch and used from registers (no re-read from L2): T,k,p at 48 / 64 rows 19.1 / 20.8 ->
// 21.4 / 22.0, T,p 28.4 / 30.7 -> 29.7 / 32.4; stamps (64 rows, us after the wait): the first batch's digit 3.2 -> 4.1,
// the loop's end 12.0 -> 13.3. With a leading part of each slice prefetched (prefetch_slice), 4 vectors and 1 took
// T,k,p at 48 / 64 rows 19.55 / 20.0 and 19.1 / 19.7 against 18.1 / 19.25, T,p 28.5 / 29.9 and 27.65 / 28.55 against
// 27.7 / 28.75; with the pushes (unstaged_top_k), 3 vectors took T,k,p 18.1 / 19.3 against 17.75 / 18.95, T,p 27.9 /
// 28.8 against 27.5 / 28.5.
// What the first batch costs top-p at one CTA an SM (H100, the bench's timing, 64 rows; probes that fix the floor at z
// = 8, for timing only): no first batch 21.37 us; its loads and divisions alone 21.71; with its histogram 22.03; with
// local_kth_digit too (floor max(8, its digit)) 23.10; HEAD 23.88. So local_kth_digit's barriers, whose first waits
// for the slowest warp's loads, cost ~1.1 us, and the floor's noise ~0.8: the first batch's kListBudget-scaled rank
// (the 65th largest of 4096 z of N(0, 3.75^2)) lies within ~0.2 of the digit boundary 8, so ~40% of CTAs took floor 7
// and listed ~2000 z instead of ~1060 (now 7.5 and ~1470 in half digits: see kListBudget). Measured and not kept:
//  - each warp's own floor, with no first batch and no barrier: the list loop's first batch (8 vectors a lane, the
//    loop running on from the next) counted by its vectors' maxima, from the digit of the warp's largest z down to
//    the one reaching kListBudget 1024 / n_local; the CTA's floor the highest of its warps' and each warp's tail
//    rescaled to it in unstaged_top_p (parity-correct: test_sample 85 passed). T,p at 32 / 48 / 64 rows 20.97 / 22.12
//    / 23.91 -> 22.19 / 23.43 / 24.23 us, T,k,p 0.3 us slower: in NumPy 53% of the warps take floor 7, so the lists
//    grow (~1560 z); those below the CTA's floor dropped after the loop (one more barrier), 22.47 / 23.70 / 24.72. With
//    that loop as an instance of its own, ptxas issued its 8 loads one at a time (T,p 27.7 us at 64 rows). From 2
//    vectors a lane (256 z a warp) the highest warp floor is too noisy: in NumPy 4.7% of CTAs land on 10, above the
//    bench's nuclei, which then take the radix path;
//  - local_kth_digit with one barrier, every warp finding the digit itself (a warp sum per 128 bins, then the crossing
//    group's bins): T,p at 32 / 48 / 64 / 128 rows 20.75 / 22.02 / 23.75 / 41.74 -> 21.19 / 22.60 / 24.17 / 42.19 us,
//    T,k,p 15.56 / 16.31 / 17.66 / 32.08 -> 16.05 / 16.74 / 18.12 / 32.94 (with 64 contiguous bins a lane, 32-way bank
//    conflicts: 4 us slower).
// Re-measured with the 9 / 16 prefetch of T,p (two runs, us at 32 / 48 / 64 rows, against T,k,p 15.75-15.81 / 16.40-
// 16.49 / 17.81-17.82, T,p 19.81-19.82 / 20.55-20.59 / 22.57-22.59): 1 vector, T,k,p 16.45-16.49 / 16.89-16.90 /
// 18.00-18.10, T,p 19.56-19.57 / 20.37-20.40 / 22.32 and 23.20 (two runs apart by 0.9 us: perhaps a noisier floor
// sending rows to the radix path, not checked); 3, T,k,p 16.19-16.21 / 16.85-16.86 / 18.19-18.24, T,p 20.24-20.26 /
// 21.01-21.06 / 22.76-22.77.
constexpr int kFirstBatchVectors = 2;
// The unstaged top-k fast path's floor rises at most this many level-0 digits over the first batch's (filtered_sample).
constexpr int kMaxFloorRaises = 8;

constexpr int kPhiloxRounds = 10;

struct SampleArgs {
    int32_t* tokens;          // [batch]
    const float* logits;      // [batch, stride]
    int64_t vocab, stride, slice;
    float temperature;        // 0: greedy
    float reciprocal_temperature;  // RN(1 / temperature), formed on the host: a constant-bank operand
    int64_t top_k;            // active when 0 < top_k < vocab
    float top_p;              // active when < 1
    uint32_t round_key[kPhiloxRounds][2];  // Philox key schedule of (seed low, seed high): in the constant bank
    // Rounds 0 and 1 at counter (group, row, step, 0), from the host (philox_words): hi(step M1) ^ round_key[0][0]
    // (round 0's first word, but for the row) and lo(step M1) ^ round_key[1][0] (round 0's second word, with the key
    // it meets in round 1).
    uint32_t step_high_key, step_low_key;
    // Top-p alone at a CTA a row, two an SM, in more than one wave (stagger_first_wave): the first wave's CTAs
    // [0, stagger_ctas) (0: none), of which one an SM starts stagger_ns late.
    uint32_t stagger_ctas, stagger_ns;
};

// Order-preserving map float -> uint32 (larger float, larger key); -0.0 maps like +0.0 as the floats compare
// (-0.0 + 0.0 is +0.0): flip every bit of a negative float, only the sign bit of a positive one.
__device__ __forceinline__ uint32_t float_to_key(float f) {
    const uint32_t b = __float_as_uint(__fadd_rn(f, 0.0f));
    return b ^ (static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u);
}

__device__ __forceinline__ float key_to_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The warp's largest x (NaN excluded), in one redux.sync on the keys instead of five shuffle rounds.
__device__ __forceinline__ float warp_max(float x) {
    return key_to_float(__reduce_max_sync(0xFFFFFFFFu, float_to_key(fmaxf(x, -INFINITY))));
}

// Fixed-point mass of z: exp(z - max) * 2^31 rounded (0 below 2^-32 of the max's).
__device__ __forceinline__ uint32_t fixed_mass(float v, float zmax) {
    return __float2uint_rn(expf(__fsub_rn(v, zmax)) * kMassScale);
}

constexpr float kLog2e = 1.44269504f;

__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Unstaged top-p fast path: exp(min(z - keep_min, 0)) of a logit x, as exp2 of x log2(e) / T - keep_min log2(e):
// slope = log2(e) / T, offset = keep_min log2(e) (see unstaged_top_p). The load pass adds every logit's, with no
// select (a listed logit's is 1 or, within logit_floor's rounding below keep_min, just below it), and the lists' are
// taken back after it. Against a select of 0 for the logits at or above logit_floor (H100, the bench's timing), T,p
// at 32 / 48 / 64 rows 21.91 / 22.02 / 24.19 -> 21.47 / 21.95 / 24.09 us (another run: 21.85 / 21.99 / 24.31 ->
// 21.45 / 21.89 / 24.16); T,k,p unchanged.
__device__ __forceinline__ float tail_term(float x, float slope, float offset) {
    return ex2_approx(fminf(fmaf(x, slope, -offset), 0.0f));
}

// Top-p fast path: the bin of a finite z <= zmax, non-increasing in z (each step rounds monotonically).
__device__ __forceinline__ int mass_bin(float v, float zmax) {
    return min(kMassBins - 1, __float2int_rz(__fmul_rn(__fsub_rn(zmax, v), kMassBinsPerUnit)));
}

// A 64-bit store at a shared-memory address held in a register (the compiler otherwise re-forms a cluster CTA's shared
// window base, S2R SR_CgaCtaId and three more instructions, at every store of the load pass's reached lists).
__device__ __forceinline__ void store_shared(uint32_t address, uint2 value) {
    asm volatile("st.shared.v2.u32 [%0], {%1, %2};" ::"r"(address), "r"(value.x), "r"(value.y) : "memory");
}

// Cluster barrier halves without the release fence that barrier.cluster.arrive implies on every thread (a thread that
// publishes writes to another CTA fences them itself, fence_cluster, before it arrives; a CTA barrier before one
// thread's fence covers the writes of the CTA's threads), and the wait (acquire). In place of cluster.sync() at the
// unstaged top-p path's barriers: T,p at 48 / 64 rows 29.25 / 31.56 -> 28.33 / 30.97 us (one fence: ~1100 cycles).
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
__device__ __forceinline__ void fence_cluster() { asm volatile("fence.acq_rel.cluster;" ::: "memory"); }

// One-way pushes between the CTAs of a cluster (dsv4::push_u32 and its kin), without a cluster barrier or fence: the
// sender's stores are counted on the receiver's mbarrier (Shared::push_bar) and one sender thread arrives on it with
// the bytes its CTA pushes. The barrier is initialised before the arrival at the cluster barrier after the first
// batch, whose wait comes before any push. One phase a launch: the first.
using dsv4::arrive_pushed;
using dsv4::init_push_barrier;
using dsv4::peer_address;
using dsv4::push_u32;
using dsv4::wait_pushed;
__device__ __forceinline__ void push_u64(uint32_t address, unsigned long long value, uint32_t bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.u64 [%0], %1, [%2];" ::"r"(address),
                 "l"(value), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void push_v4(uint32_t address, uint4 value, uint32_t bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.u32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(
                     address),
                 "r"(value.x), "r"(value.y), "r"(value.z), "r"(value.w), "r"(bar)
                 : "memory");
}

// The slot of each lane of the warp that takes one (every lane calls), from one atomic on *count a warp.
__device__ __forceinline__ int warp_slot(bool take, int* count) {
    const int lane = threadIdx.x % dsv4::kWarpSize;
    const uint32_t takers = __ballot_sync(0xFFFFFFFFu, take);
    int at = 0;
    if (lane == 0 && takers != 0u) at = atomicAdd(count, __popc(takers));
    return __shfl_sync(0xFFFFFFFFu, at, 0) + __popc(takers & ((1u << lane) - 1u));
}

// Candidate entry of the top-k fast path: key in the high word, ~token in the low, so that descending order is z
// descending, then token id ascending (the order of every tie-break here).
__device__ __forceinline__ unsigned long long candidate(uint32_t key, uint32_t token) {
    return (static_cast<unsigned long long>(key) << 32) | static_cast<uint32_t>(~token);
}
__device__ __forceinline__ uint32_t candidate_key(unsigned long long c) { return static_cast<uint32_t>(c >> 32); }
__device__ __forceinline__ int candidate_token(unsigned long long c) {
    return static_cast<int>(~static_cast<uint32_t>(c));
}

// Philox4x32-10 (Random123): rounds kFirstRound .. 9 on the words (c0, c1, c2, c3), under the round keys of a key
// (k0, k1): round r uses (k0 + r 0x9E3779B9, k1 + r 0xBB67AE85), formed once on the host (dsv4_sample_tokens_f32), so
// each round's XORs take them straight from the kernel's parameters.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
template <int kFirstRound>
__device__ __forceinline__ uint4 philox_rounds(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                               const uint32_t (&round_key)[kPhiloxRounds][2]) {
#pragma unroll
    for (int round = kFirstRound; round < kPhiloxRounds; ++round) {
        // One 32 x 32 -> 64-bit product each (IMAD.WIDE.U32), not a high and a low half apart.
        const uint64_t p0 = uint64_t(c0) * kPhiloxM0, p1 = uint64_t(c2) * kPhiloxM1;
        c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ round_key[round][0];
        c1 = static_cast<uint32_t>(p1);
        c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ round_key[round][1];
        c3 = static_cast<uint32_t>(p0);
    }
    return make_uint4(c0, c1, c2, c3);
}

// The Philox words of tokens 4 group .. 4 group + 3 of a row: the block at counter (group, row, step, 0). Rounds 0
// and 1 are written out for that counter: round 0's product of the step comes from the host (SampleArgs), and
// round 1's product of round 0's first word depends on the row alone (the same for every block of a CTA's slice).
// Two 64-bit products and a XOR fewer a block than the generic rounds.
__device__ __forceinline__ uint4 philox_words(uint32_t group, uint32_t row, const SampleArgs& a) {
    const uint64_t p0 = uint64_t(group) * kPhiloxM0;
    const uint32_t round0_c0 = a.step_high_key ^ row;
    const uint32_t round0_c2 = static_cast<uint32_t>(p0 >> 32) ^ a.round_key[0][1];  // round 0's c3 input is 0
    const uint64_t q0 = uint64_t(round0_c0) * kPhiloxM0, q1 = uint64_t(round0_c2) * kPhiloxM1;
    return philox_rounds<2>(static_cast<uint32_t>(q1 >> 32) ^ a.step_low_key, static_cast<uint32_t>(q1),
                            static_cast<uint32_t>(q0 >> 32) ^ static_cast<uint32_t>(p0) ^ a.round_key[1][1],
                            static_cast<uint32_t>(q0), a.round_key);
}

__device__ __forceinline__ float gumbel_of_word(uint32_t x) {
    const double u = double(x >> 8) * 0x1p-24 + 0x1p-25;  // exact, strictly inside (0, 1)
    return __double2float_rn(-log(-log(u)));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float gumbel(uint32_t token, uint32_t row, const SampleArgs& a) {
    return gumbel_of_word(word_of(philox_words(token / 4, row, a), token % 4));
}

// z = x / T rounded to nearest, as __fdiv_rn(x, t), from r = RN(1 / T): q = RN(x r) is within an ulp of x / T, and
// Markstein's correction RN(q + RN(x - q T) r) is then RN(x / T) while nothing overflows or underflows: |x| in
// [2^-60, 2^60) with T in [2^-40, 2^40] (moderate_t, the same for the whole launch). Other x (0, +-inf, NaN, tiny
// or huge) take __fdiv_rn. Checked bit for bit against x / T on the CPU: 9e7 random x of that range over 18
// temperatures, and every x in [1, 2) at T = 0.8. Against __fdiv_rn alone: T only, 64 rows 45.7 -> 43.9 us.
__device__ __forceinline__ float divide_by_temperature(float x, float t, float r, bool moderate_t) {
    const uint32_t magnitude = __float_as_uint(x) & 0x7FFFFFFFu;
    if (moderate_t && magnitude - 0x21800000u < 0x5D800000u - 0x21800000u) {  // 2^-60, 2^60
        const float q = __fmul_rn(x, r);
        return fmaf(fmaf(-q, t, x), r, q);
    }
    return __fdiv_rn(x, t);
}

// Bounds on a token's score RN(z + g) (g = gumbel_of_word(x)) without double logs, from x and z' = RN(x RN(1 / T)),
// within an ulp of z. With w = 1 - u = (n + 1/2) 2^-24, n = 2^24 - 1 - (x >> 8): -log u lies in [w, w / (1 - w)], so
// g <= -log w and, for w <= 1/2 (where w / (1 - w) <= w (1 + 2w)), g >= -log w - 2w. gumbel_reach returns
//   reach = z' - log w                     (an upper bound on the score, up to rounding),
//   floor = reach - 2w for w <= 1/2, else -inf (a lower bound, up to rounding);
// above 1/2 reach takes w' = 1/2 - 2^-25 < w. For n < 2^23, m = n + 1/2 has 24 significant bits, so it is exact in fp32
// (formed from the bits of 2^23 + n, without a conversion instruction), and -log w = 24 ln 2 - ln 2 log2 m, where
// log2 m is lg2.approx.f32 (absolute error < 2^-22); the caller passes z' + 24 ln 2 (one FFMA with the division).
// score_slack(v) (v = reach or floor) covers that error, z - z', every fp32 rounding (g's own included) and the ln 2
// rounding, using |z'| <= |v| + 18.4: reach + slack(reach) >= score >= floor - slack(floor). The slack grows with |v|,
// so the largest reach of a group, plus its slack, bounds every score of the group.
constexpr float kLn2 = 0.693147182f;
constexpr float kReachShift = 24.0f * kLn2;  // the -log 2^-24 of w = m 2^-24, added with z'
struct GumbelReach {
    float reach, floor;
};
__device__ __forceinline__ GumbelReach gumbel_reach(float z_shifted, uint32_t x) {
    const uint32_t n = (~x) >> 8;
    const float m = __uint_as_float(0x4B000000u | min(n, 0x7FFFFFu)) - 8388607.5f;
    float log2_m;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(log2_m) : "f"(m));
    const float reach = fmaf(log2_m, -kLn2, z_shifted);
    return {reach, n < 0x800000u ? fmaf(m, -0x1p-23f, reach) : -INFINITY};
}
__device__ __forceinline__ float score_slack(float v) { return fmaf(fabsf(v), 0x1p-20f, 1e-3f + 19.0f * 0x1p-20f); }

// The upper bound on a score, NaN for z' = -inf (it is never a candidate).
__device__ __forceinline__ float score_upper(float reach) { return reach + score_slack(reach); }

// Close bounds on the score RN(z + g) of an exact finite z (g = gumbel_of_word(x)) in fp32, for the finishes, which
// bound a few hundred candidates: their lower and upper bounds lie ~4e-5 apart, against the reach's 2w + 2e-3, so the
// candidates that contend for the row (and need double logs) are one almost always. With a = x >> 8, u = (a + 1/2)
// 2^-24 and e = -log u, g = -log e:
//  - u < 1/2: m = a + 1/2 is exact in fp32, e = ln 2 (24 - log2 m);
//  - u >= 1/2: w = 1 - u = (n + 1/2) 2^-24 (n = 2^24 - 1 - a) is exact; e = w (1 + w/2 + ... + w^6/7) for w < 1/16
//    (relative truncation below 1e-9), else -ln 2 log2 RN(1 - w) (e >= 0.0645, RN(1 - w) within 2^-25);
// then g = -ln 2 log2 e, every log2 by lg2.approx.f32 (absolute error < 2^-22). Measured on the H100 over all 2^24
// values of a against the double -log(-log u): |g' - g| <= 1.99e-6 (a tenth of kCloseGumbelError), and no score of
// 11 z from -2.5e9 to 3e7 outside its bounds. close_slack(s') covers g' - g, g's own rounding (half an ulp of 17.33,
// 2^-20) and both sums' roundings (|s| 2^-23).
constexpr float kCloseGumbelError = 2e-5f;
__device__ __forceinline__ float close_gumbel(uint32_t x) {
    const uint32_t a = x >> 8;
    const bool high = a >= 0x800000u;  // u >= 1/2
    const uint32_t n = high ? 0xFFFFFFu - a : a;
    const float m = __uint_as_float(0x4B000000u | n) - 8388607.5f;  // n + 1/2, exact
    const float w = m * 0x1p-24f;
    float log2_arg, series = 1.0f / 7.0f;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(log2_arg) : "f"(high ? 1.0f - w : m));
#pragma unroll
    for (int k = 6; k >= 1; --k) series = fmaf(series, w, 1.0f / k);
    const float e = high ? (w < 0.0625f ? w * series : -kLn2 * log2_arg) : kLn2 * (24.0f - log2_arg);
    float log2_e;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(log2_e) : "f"(e));
    return -kLn2 * log2_e;
}
__device__ __forceinline__ float close_slack(float s) { return fmaf(fabsf(s), 0x1p-22f, 2.0f * kCloseGumbelError); }
struct ScoreBounds {
    float lower, upper;
};
// From g = close_gumbel(x), formed ahead.
__device__ __forceinline__ ScoreBounds bounds_of_close_gumbel(float z, float g) {
    const float s = z + g;
    return {s - close_slack(s), s + close_slack(s)};
}
__device__ __forceinline__ ScoreBounds close_score_bounds(float z, uint32_t x) {
    return bounds_of_close_gumbel(z, close_gumbel(x));
}

// (v, i) becomes the better of itself and (ov, oi): larger value, then lower id.
__device__ __forceinline__ void take_better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
    for (int offset = dsv4::kWarpSize / 2; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, v, offset);
        const int oi = __shfl_xor_sync(0xFFFFFFFFu, i, offset);
        take_better(v, i, ov, oi);
    }
}

struct PeerList {  // what CTA 1 pushes with its list
    float value;  // its max z
    int index;    // and that z's lowest token id
    int bad;      // a NaN or +inf z seen
    int n;        // entries on its list; -1: the list overflowed
    float floor;  // every z of its slice at or above it is on the list
    float tail;   // the mass of its other z, in units of exp(floor) (a pair never keeps its list again: see tail_floor)
};

struct PeerRegion {  // what CTA 1 of the unstaged top-k fast path pushes with its region (unstaged_top_k)
    int count;     // entries in its region of CTA 0's gather buffer
    uint32_t top;  // the digit of its max z
    float max;     // that z
    int ok;        // its share of the row is complete (and, into CTA 1, CTA 0's)
    uint32_t window[dsv4::kWarpSize];  // its counts of the digits top, top - 1, ..., top - 31
};

struct alignas(16) Shared {
    Exchange ex[2];
    unsigned long long warp_scan[kWarps];
    float warp_value[kWarps];
    int warp_index[kWarps];
    int warp_bad[kWarps];
    // decisions broadcast to the CTA
    float zmax;
    int imax;
    int bad;
    int kept_overflow;  // unstaged top-k fast path: some CTA's kept list overflowed
    uint32_t digit;
    unsigned long long above;  // z (counts) or mass (top-p fast path) before the chosen digit / bin or range
    int crossing_range;                      // top-p fast path: the range where the walk crosses, its target,
    unsigned long long crossing_target;      // and how many z the crossing bin holds (unstaged_top_p: the target, and
                                             // the lists' mass in above)
    uint32_t crossing_count;
    int count;  // fast paths: entries in this CTA's gathered candidate list
    int kept;   // unstaged fast paths: z this CTA kept in its load pass (may exceed kKeptCapacity: overflow)
    int spilled;  // unstaged top-p alone at two CTAs an SM: entries taken on the spill list (may exceed its capacity)
    float list_floor;  // unstaged top-p fast path: every z of the slice at or above it is on the kept list
    float tail_floor;  // its tail mass (the z off the list) is in units of exp(tail_floor): list_floor but re-kept
    uint32_t raise_count[kMaxFloorRaises];  // unstaged top-k fast path: logits seen above each raised floor's digit
    // top-p fast path: this CTA's range of bins combined over the cluster (mass and count), and its total mass
    unsigned long long bin_mass[kMassBinsPerCta];
    uint32_t bin_count[kMassBinsPerCta];
    unsigned long long range_mass;
    // CTA 0 only: the candidates of the final argmax, pushed by every CTA
    float cand_value[kCluster];
    int cand_index[kCluster];
    // Unstaged top-k fast path (unstaged_top_k): in CTA 0, what CTA 1 pushed with its region (in CTA 1, only ok: CTA
    // 0's flag); CTA 0's count of the entries it gathers.
    PeerRegion peer_region;
    int gathered;
    // finish_top_k: each warp's largest lower bound on a kept score (as a key) and best contender (score key, ~token),
    // how many candidates contend, and one of them (the winner when it is alone); crossing_cut: each warp's least key
    // kept and mass; unstaged_top_p: each warp's entries in the frontier's bins (warp_floor) and sum of the lists'
    // masses (warp_top)
    uint32_t warp_floor[kWarps];
    unsigned long long warp_top[kWarps];
    int contenders, sole;
    // Unstaged top-p fast path (unstaged_top_p): each warp's tail mass and largest lower bound on a score in its bins;
    // CTA 0: what CTA 1 pushed with its list; CTA 1: CTA 0's verdict (nonzero: the row's token is written)
    float warp_tail[kWarps];
    uint32_t warp_bound[kWarps];
    PeerList peer;
    int verdict;
    unsigned long long push_bar;  // unstaged paths, two CTAs a row: counts what the peer pushes (push_u32)
};

// The sum of x over lanes 0 .. this one of the warp (every lane calls).
template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T x) {
    const int lane = threadIdx.x % dsv4::kWarpSize;
#pragma unroll
    for (int offset = 1; offset < dsv4::kWarpSize; offset <<= 1) {
        const T y = __shfl_up_sync(0xFFFFFFFFu, x, offset);
        if (lane >= offset) x += y;
    }
    return x;
}

// Inclusive scan of one u64 per thread in thread order; also returns the block total. Measured and not kept: the sums
// over the warps by redux.sync (lane w takes warp w's, in 22-bit pieces) in place of each warp's walk over them, T,p at
// 1 / 96 / 256 / 512 / 1024 rows 20.49-20.53 / 29.51-29.58 / 58.78-58.94 / 112.02-112.12 / 203.89-204.20 -> 20.27-20.35
// / 29.50-29.52 / 58.91-59.03 / 112.38-112.62 / 204.87-205.19 us (the staged kernel then spilled 4 bytes).
__device__ __forceinline__ unsigned long long block_scan(unsigned long long x, unsigned long long& total,
                                                         Shared& sh) {
    const int lane = threadIdx.x % dsv4::kWarpSize, warp = threadIdx.x / dsv4::kWarpSize;
    x = warp_inclusive_sum(x);
    if (lane == dsv4::kWarpSize - 1) sh.warp_scan[warp] = x;
    __syncthreads();
    unsigned long long base = 0;
    total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        const unsigned long long s = sh.warp_scan[w];
        base += w < warp ? s : 0ull;
        total += s;
    }
    return base + x;
}

// This CTA's z in a filtered launch: staged in shared memory by the load pass (kStaged; the slice's tail past n_local
// holds -inf), or re-read from the row's logits (from L2: the load pass has just read them) and divided again, the same
// values bit for bit.
template <bool kStaged>
struct SliceZ {
    // Vectors a thread has in flight in for_each_z: shared memory needs no batches (and they would spill registers).
    static constexpr int kBatch = kStaged ? 1 : kSampleLoadBatch;
    const float4* vectors;  // [ceil(n_local / 4)]: shared memory (kStaged), else the logits from the slice's begin
    int n_local;
    float t, reciprocal_t;
    bool moderate_t;
    __device__ __forceinline__ float4 load(int v) const { return kStaged ? vectors[v] : __ldg(vectors + v); }
    static constexpr bool kWholeBatches = false;  // (see for_each_z)
    // z of vector v from what load(v) returned; -inf past the slice.
    __device__ __forceinline__ float4 finish(float4 x, int v) const {
        if constexpr (kStaged) {
            return x;
        } else {
            float e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
            for (int c = 0; c < 4; ++c)
                e[c] = 4 * v + c < n_local ? divide_by_temperature(e[c], t, reciprocal_t, moderate_t) : -INFINITY;
            return make_float4(e[0], e[1], e[2], e[3]);
        }
    }
};

// The slice's logits themselves (no division), for for_each_z, kLoadBatch vectors a thread in flight, in whole batches
// (the vector the slice ends inside: visit_partial); the batch kBatchesAhead batches on prefetched into L2 as each
// batch loads (0: none).
template <int kLoadBatch, int kBatchesAhead = 0>
struct SliceLogits {
    static constexpr int kBatch = kLoadBatch;
    static constexpr bool kWholeBatches = true;
    static constexpr int kAhead = kBatchesAhead;
    const float4* vectors;  // [ceil(n_local / 4)]: the logits from the slice's begin
    int n_local;
    __device__ __forceinline__ float4 load(int v) const { return __ldg(vectors + v); }
    __device__ __forceinline__ float4 finish(float4 x, int) const { return x; }
    // After for_each_z, the vector the slice ends inside (n_local % 4 != 0), if any: visit(its logits, its index) by
    // every lane of its thread's warp, the others with a vector of -inf (the warp converged: a visitor's warp-uniform
    // state, such as the list loop's count, is whole again only after the loop, as lanes past the last whole vector
    // leave a batch early; a lone thread's visit with its own stale count took slots the others had filled). Against
    // that lone visit, T,k,p at 48 / 64 rows 17.61 / 18.84 -> 17.66 / 18.87 us, T,p 27.13 / 28.10 -> 27.30 / 28.31.
    template <typename Visit>
    __device__ __forceinline__ void visit_partial(Visit visit) const {
        const int whole = n_local / 4, owner = whole % kThreads;
        if (n_local % 4 == 0 || threadIdx.x / dsv4::kWarpSize != owner / dsv4::kWarpSize) return;
        float4 x = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        if (threadIdx.x == owner) {
            x = load(whole);
            x = make_float4(x.x, 4 * whole + 1 < n_local ? x.y : -INFINITY, 4 * whole + 2 < n_local ? x.z : -INFINITY,
                            -INFINITY);
        }
        __syncwarp();
        visit(x, whole);
    }
};

struct NoBatchEnd {
    __device__ void operator()() const {}
};
// visit(z of vector v, v) over the slice's vectors, Z::kBatch loads a thread in flight; batch_end() after each batch.
// Vector v goes to thread v % kThreads. With Z::kAhead, each warp's lane 0 prefetches into L2 the warp's part
// (Z::kBatch x 32 vectors, 2 KB at 4) of the batch Z::kAhead batches on: a thread's loads alone keep 32 KB of a
// 512-thread CTA's logits in flight at 4, which leaves an SM that holds one such CTA short of its share of the DRAM
// bandwidth. Top-p alone (Mode::kTopP) at one CTA an SM (67-132 rows on the H100) prefetches 1 batch ahead. Measured on
// the instance it then ran in (4 vectors a batch, warps' lists), with 3 sixteenths prefetched first
// (prefetch_sixteenths), T,p at 80 / 96 / 128 rows 37.6 / 38.3 / 39.9 -> 35.9 / 36.3 / 37.0 us (2 batches ahead 36.0 /
// 36.3 / 38.6, 4 ahead 36.7 / 37.3 / 49.6; 2 ahead with none first 37.3 / 38.0 / 40.2-45.1); on its own instance now (8
// vectors a batch, 4 KB a warp's part, lanes' lists: launch_sample), none ahead took 31.4 / 32.5 / 35.7-35.9 / 36.1 us
// at 67 / 96 / 128 / 132 rows against 29.6 / 31.4 / 35.3 / 35.9-36.1. At two CTAs an SM the loads suffice: 1 ahead at
// 256 / 512 / 1024 rows 62.0 / 120.3 / 231.8 -> 64.0 / 122.0 / 229.8. Measured and not kept: 1 batch ahead (of 8
// vectors) in the pairs at one CTA an SM, T,k,p at 32 / 48 / 64 rows 15.7 / 16.4 / 17.8 -> 17.0 / 18.0 / 19.1 us, T,p
// 19.8 / 20.5 / 22.5 -> 21.1 / 22.1 / 23.6. Rolling loads (each vector's register loaded again, a batch on, as soon as
// it is visited) spilled at 64 registers and at 8 vectors a batch; on top-p alone's own instance at 4 / 6 vectors a
// batch (92 / 112 registers), T,p at 67 / 96 / 128 rows 33.7 / 34.9 / 37.2 and 31.9 / 33.9 / 36.2 us against 28.1 /
// 30.7 / 33.7 for the loop as it is (8 vectors). With Z::kWholeBatches, the vectors wholly inside the slice come in
// batches with no bound checks (a lane past the last loads it again and skips it); the vector the slice ends inside, if
// any, is the caller's (SliceLogits::visit_partial: the unstaged list loop only). The list loop took ~89 instructions a
// vector at 64 rows (ncu source counters, T,k,p): ~10 of them the bound checks, the zeroed registers and the predicated
// loads of a batch's vectors. Without them, and with the listing's slots from three ballots (filtered_sample), the
// one-CTA-an-SM kernel holds 92 registers against 96, and T,k,p at 48 / 64 / 96 / 128 rows took 20.2 / 21.6 / 31.5 /
// 34.7 -> 19.3 / 20.9 / 30.0 / 33.7 us, T,p 29.4 / 31.6 / 57.1 / 45.6 -> 28.6 / 30.9 / 56.1 / 45.8. Measured slower: a
// warp-uniform loop (lanes past the slice visit a stale vector, marked dead) so that the listing's votes take a full
// mask with no divergence checks, T,k,p at 48 / 64 rows 19.3 / 20.9 -> 19.5 / 21.1 us. Also measured slower: the
// batches wholly inside the slice for every thread in a loop of their own with no per-vector check (the one-CTA-an-SM
// kernel only), T,k,p at 32 / 48 / 64 rows 15.67 / 16.37 / 17.74 -> 15.69 / 16.71 / 18.13 us, T,p 20.94 / 22.07 / 23.99
// -> 20.75 / 21.89 / 23.84; and (no change) a running max.NaN over the listing's vectors in place of a NaN test a
// vector. Also measured and not kept, for top-p alone at two CTAs an SM (whose warps' loops end ~3.8 us apart at 256
// rows): units of 4 x 32 vectors that the warps take in turn from a shared counter, so that they end together, the tail
// summed in 64-bit fixed point a unit (so that it does not depend on which warp took which; the tokens repeated over 20
// launches at 160 / 264 / 300 / 512 rows). T,p at 96 / 128 / 256 / 300 / 512 / 1024 rows 30.59-30.69 / 33.64-33.69 /
// 59.90-60.05 / 86.12-86.16 / 114.00-114.15 / 208.08-208.41 us against 30.59-30.63 / 33.65-33.80 / 60.09-60.23 /
// 85.52-85.54 / 113.84-113.88 / 207.74-207.85: the spread is not what the launch waits on.
template <typename Z, typename Visit, typename BatchEnd = NoBatchEnd>
__device__ __forceinline__ void for_each_z(const Z& z, Visit visit, BatchEnd batch_end = {}) {
    if constexpr (Z::kWholeBatches) {
        const int whole = z.n_local / 4;
        for (int first = threadIdx.x; first < whole; first += Z::kBatch * kThreads) {
            if constexpr (Z::kAhead > 0) {
                constexpr int kWarpPart = Z::kBatch * dsv4::kWarpSize;  // vectors
                const int batch_first = first - static_cast<int>(threadIdx.x);
                const int part_first = batch_first + Z::kAhead * Z::kBatch * kThreads +
                                       static_cast<int>(threadIdx.x / dsv4::kWarpSize) * kWarpPart;
                if (threadIdx.x % dsv4::kWarpSize == 0 && part_first < whole)
                    dsv4::prefetch_l2_bulk(z.vectors + part_first,
                                           static_cast<uint32_t>(sizeof(float4) * min(kWarpPart, whole - part_first)));
            }
            float4 loaded[Z::kBatch];
#pragma unroll
            for (int b = 0; b < Z::kBatch; ++b) loaded[b] = z.load(min(first + b * kThreads, whole - 1));
#pragma unroll
            for (int b = 0; b < Z::kBatch; ++b) {
                const int v = first + b * kThreads;
                if (v >= whole) break;
                visit(z.finish(loaded[b], v), v);
            }
            batch_end();
        }
    } else {
        for (int first = threadIdx.x; 4 * first < z.n_local; first += Z::kBatch * kThreads) {
            float4 loaded[Z::kBatch];
#pragma unroll
            for (int b = 0; b < Z::kBatch; ++b) {
                const int v = first + b * kThreads;
                loaded[b] = 4 * v < z.n_local ? z.load(v) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int b = 0; b < Z::kBatch; ++b) {
                const int v = first + b * kThreads;
                if (4 * v >= z.n_local) break;
                visit(z.finish(loaded[b], v), v);
            }
            batch_end();
        }
    }
}

// Radix descent over the keys of this CTA's z (and, through the cluster, of the row).
// kMass = false: the key of the target-th largest z (counts). kMass = true: the largest key v such that the
// fixed-point mass of the kept z with key >= v reaches ceil(top_p * total kept mass); returns false when the
// total never reaches it (then everything kept stays).
template <bool kMass, int kRanks, typename Z>
__device__ bool radix_select(const Z& z, float kept_min, float zmax, unsigned long long target,
                             float top_p, int& phase, cg::cluster_group& cluster, Shared& sh, uint32_t& key_out) {
    const int tid = threadIdx.x;
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int level = 0; level < kLevels; ++level) {
        const int shift = digit_shift(level);
        const uint32_t dmask = digit_mask(level);
        Exchange& mine = sh.ex[phase & 1];
        for (int b = tid; b < kBins; b += kThreads) {
            mine.hist[0][b] = 0u;
            if (kMass) mine.hist[1][b] = 0u;
        }
        __syncthreads();
        for_each_z(z, [&](float4 zv, int vec) {
            const float e[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const float v = e[c];
                const uint32_t key = float_to_key(v);
                // (kMass keeps finite z >= kept_min; counts take every z of the slice, -inf included)
                if (kMass ? !(v > -INFINITY && v >= kept_min) : 4 * vec + c >= z.n_local) continue;
                if ((key & mask) != prefix) continue;
                const uint32_t bin = (key >> shift) & dmask;
                if (kMass) {
                    const uint32_t m = fixed_mass(v, zmax);
                    if (m == 0u) continue;  // below 2^-32 of the max: adds nothing
                    atomicAdd(&mine.hist[0][bin], m >> 16);
                    atomicAdd(&mine.hist[1][bin], m & 0xFFFFu);
                } else {
                    atomicAdd(&mine.hist[0][bin], 1u);
                }
            }
        });
        cluster.sync();  // every CTA's histogram is complete and visible

        // Thread t owns bins kBins-1-4t .. kBins-4-4t (descending), summed over the cluster in rank order: one
        // 16-byte load per rank (and per mass half), all issued before the first use.
        const int low_bin = kBins - kBinsPerThread * (tid + 1);
        uint4 high[kRanks], low[kRanks];
#pragma unroll
        for (int r = 0; r < kRanks; ++r) {
            const Exchange* remote = cluster.map_shared_rank(&mine, r);
            high[r] = *reinterpret_cast<const uint4*>(&remote->hist[0][low_bin]);
            if (kMass) low[r] = *reinterpret_cast<const uint4*>(&remote->hist[1][low_bin]);
        }
        unsigned long long h[kBinsPerThread], mine_sum = 0;
#pragma unroll
        for (int i = 0; i < kBinsPerThread; ++i) {  // bin low_bin + 3 - i: vector component 3 - i
            unsigned long long s = 0;
#pragma unroll
            for (int r = 0; r < kRanks; ++r) {
                const uint32_t hi = word_of(high[r], 3 - i);
                s += kMass ? (static_cast<unsigned long long>(hi) << 16) + word_of(low[r], 3 - i) : hi;
            }
            h[i] = s;
            mine_sum += s;
        }
        unsigned long long total;
        const unsigned long long inclusive = block_scan(mine_sum, total, sh);
        if (kMass && level == 0) {
            target = static_cast<unsigned long long>(ceil(double(top_p) * double(total)));
            if (total < target) {  // uniform: every thread of every CTA sees the same total
                ++phase;
                return false;
            }
        }
        // The thread whose bins hold the crossing picks the digit: the largest bin where the mass (count) of
        // everything above plus the bin reaches the target. The sums are exact integers, so exactly one thread
        // crosses at every level (above < target <= above + the bins under the prefix).
        const unsigned long long exclusive = inclusive - mine_sum;
        if (above + inclusive >= target && above + exclusive < target) {
            unsigned long long c = above + exclusive;
#pragma unroll
            for (int i = 0; i < kBinsPerThread; ++i) {
                const int bin = kBins - 1 - kBinsPerThread * tid - i;
                if (c + h[i] >= target) {
                    sh.digit = static_cast<uint32_t>(bin);
                    sh.above = c;
                    break;
                }
                c += h[i];
            }
        }
        __syncthreads();
        prefix |= sh.digit << shift;
        mask |= dmask << shift;
        above = sh.above;
        ++phase;
    }
    key_out = prefix;
    return true;
}

// Top-k fast path, step 1: the level-0 digit d0 of the k-th largest z from the load pass's histograms (every CTA's
// ex[0].hist[0]), combining only the kWindowBins bins at and below the max's bin (nothing lies above it). Returns
// false, the same on every CTA, when the window does not reach k or more than kMaxCandidates z have digit >= d0.
template <int kRanks>
__device__ bool candidate_digit(unsigned long long k, float zmax, cg::cluster_group& cluster, Shared& sh,
                                uint32_t& digit) {
    const int tid = threadIdx.x;
    const int high_bin = static_cast<int>((float_to_key(zmax) >> digit_shift(0)) | 3u) - kBinsPerThread * tid;
    const bool active = tid < kWindowBins / kBinsPerThread && high_bin >= kBinsPerThread - 1;
    uint4 counts[kRanks];
#pragma unroll
    for (int r = 0; r < kRanks; ++r) {
        const Exchange* remote = cluster.map_shared_rank(&sh.ex[0], r);
        counts[r] = active ? *reinterpret_cast<const uint4*>(&remote->hist[0][high_bin - 3]) : make_uint4(0, 0, 0, 0);
    }
    unsigned long long h[kBinsPerThread], mine_sum = 0;
#pragma unroll
    for (int i = 0; i < kBinsPerThread; ++i) {  // bin high_bin - i: vector component 3 - i
        unsigned long long s = 0;
#pragma unroll
        for (int r = 0; r < kRanks; ++r) s += word_of(counts[r], 3 - i);
        h[i] = s;
        mine_sum += s;
    }
    unsigned long long total;
    const unsigned long long inclusive = block_scan(mine_sum, total, sh);
    if (total < k) return false;
    const unsigned long long exclusive = inclusive - mine_sum;
    if (inclusive >= k && exclusive < k) {
        unsigned long long c = exclusive;
#pragma unroll
        for (int i = 0; i < kBinsPerThread; ++i) {
            if (c + h[i] >= k) {
                sh.digit = static_cast<uint32_t>(high_bin - i);
                sh.above = c + h[i];  // z with digit >= d0
                break;
            }
            c += h[i];
        }
    }
    __syncthreads();
    digit = sh.digit;
    return sh.above <= kMaxCandidates;
}

// Unstaged fast paths: the digit (of the key's top log2(kDigits) bits) of the k-th largest z this CTA has counted into
// ex[0].hist so far (its own bins only, no cluster; kDigits > kBins runs on into ex[0].hist[1]), or 0 when it has
// counted fewer than k. Every z of the row at or above the k-th largest has a digit at least this high.
template <int kDigits>
__device__ uint32_t local_kth_digit(unsigned long long k, Shared& sh) {
    static_assert(kDigits % (4 * kThreads) == 0 && kDigits <= 2 * kBins, "whole vectors of ex[0].hist a thread");
    constexpr int kVectors = kDigits / (4 * kThreads);
    const int tid = threadIdx.x;
    __syncthreads();  // every warp's counts have landed (a partial count gives a lower floor: longer lists)
    const int low_bin = kDigits - 4 * kVectors * (tid + 1);
    uint4 counts[kVectors];  // [j]: bins low_bin + 4 j .. + 3
    unsigned long long mine = 0;
#pragma unroll
    for (int j = 0; j < kVectors; ++j) {
        counts[j] = *reinterpret_cast<const uint4*>(&sh.ex[0].hist[0][0] + low_bin + 4 * j);
        mine += counts[j].x + counts[j].y + counts[j].z + counts[j].w;
    }
    unsigned long long total;
    const unsigned long long inclusive = block_scan(mine, total, sh);
    if (tid == 0) sh.digit = 0u;
    __syncthreads();
    if (inclusive >= k && inclusive - mine < k) {
        unsigned long long c = inclusive - mine;
#pragma unroll
        for (int i = 4 * kVectors - 1; i >= 0; --i) {  // bin low_bin + i, from the top
            c += word_of(counts[i / 4], i % 4);
            if (c >= k) {
                sh.digit = static_cast<uint32_t>(low_bin + i);
                break;
            }
        }
    }
    __syncthreads();
    return sh.digit;
}

// The logits bounding digit d (the key's bits from `shift` up; level 0 by default) of z = RN(x / T) (a moderate T): a
// logit below `below` has a z of digit < d, one at or above `above` a z of digit >= d (the margins cover the roundings
// of d's least z times T and of the division and, near 0, the smallest subnormal). False when d is past the last digit,
// or that product is not finite and moderate (so also for the digits whose least key is a NaN's).
__device__ __forceinline__ bool digit_logit_bounds(uint32_t digit, float t, float& below, float& above,
                                                   int shift = kLevel0Shift) {
    const float scaled = __fmul_rn(key_to_float(digit << shift), t);
    below = fmaf(-fabsf(scaled), 0x1p-20f, scaled) - 0x1p-100f;
    above = fmaf(fabsf(scaled), 0x1p-20f, scaled) + 0x1p-100f;
    return digit < (1u << (32 - shift)) && fabsf(scaled) < 0x1p100f;
}

// The top-p fast paths' histogram of z by mass_bin in shared memory: bin b's count and fixed-point mass as its high
// and low 16 bits (32-bit shared atomics that cannot overflow). In an exchange buffer (of): the mass in hist[0][b] and
// hist[0][kMassBins + b], the count in hist[1][b].
struct MassBins {
    uint32_t* count;  // [kMassBins]
    uint32_t* high;   // [kMassBins]
    uint32_t* low;    // [kMassBins]
    __device__ static MassBins of(Exchange& ex) { return {ex.hist[1], ex.hist[0], ex.hist[0] + kMassBins}; }
    __device__ void clear() const {
        for (int b = threadIdx.x; b < kMassBins; b += kThreads) count[b] = 0u, high[b] = 0u, low[b] = 0u;
    }
    // A z of fixed-point mass m into bin b.
    __device__ void add(int b, uint32_t m) const {
        atomicAdd(&count[b], 1u);
        if (m == 0u) return;
        atomicAdd(&high[b], m >> 16);
        atomicAdd(&low[b], m & 0xFFFFu);
    }
};
// Bin b of the histograms in ex of the cluster's first kRanks CTAs, summed in rank order (every load issued first).
template <int kRanks>
__device__ __forceinline__ void combined_mass_bin(cg::cluster_group& cluster, Exchange& ex, int b,
                                                  unsigned long long& mass, uint32_t& count) {
    uint32_t high[kRanks], low[kRanks], c[kRanks];
#pragma unroll
    for (int r = 0; r < kRanks; ++r) {
        const Exchange* remote = cluster.map_shared_rank(&ex, r);
        high[r] = remote->hist[0][b], low[r] = remote->hist[0][kMassBins + b], c[r] = remote->hist[1][b];
    }
    mass = 0, count = 0;
#pragma unroll
    for (int r = 0; r < kRanks; ++r) {
        mass += (static_cast<unsigned long long>(high[r]) << 16) + low[r];
        count += c[r];
    }
}

// Top-p fast path, step 1 (no top-k; the CTAs' z in shared memory, zmax known): the bin b of zmax - z in which the
// walk over the row's z from the max first reaches target = ceil(top_p * the row's fixed-point mass), and the mass
// of the z in bins < b (all of them kept). Every CTA histograms its slice (mass and count per bin), CTA r combines
// the cluster's bins of its range, and every CTA then scans the range totals and the crossing range's bins in the
// same order. Returns false, the same on every CTA, when more than kMaxCandidates z lie in bin b.
__device__ bool crossing_mass_bin(const float* z, int n_local, float zmax, float top_p, cg::cluster_group& cluster,
                                  Shared& sh, int& bin_out, unsigned long long& mass_above,
                                  unsigned long long& target) {
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const int rank = static_cast<int>(cluster.block_rank());
    const MassBins bins = MassBins::of(sh.ex[0]);
    bins.clear();
    __syncthreads();
    // A 16-byte vector of z at a time (the staged tail past n_local is -inf), against one float: T,p 1 row 21.7 -> 21.0
    // us, 64 rows 75.7 -> 74.5 (two vectors in flight: 21.2, 74.6).
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int v = tid; 4 * v < n_local; v += kThreads) {
        const float4 zv = z4[v];
        const float e[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            if (e[c] > -INFINITY) bins.add(mass_bin(e[c], zmax), fixed_mass(e[c], zmax));
        }
    }
    cluster.sync();  // every CTA's histogram is complete

    // This CTA's range, summed over the cluster in rank order: thread t < kMassBinsPerCta owns one bin.
    unsigned long long mass = 0;
    if (tid < kMassBinsPerCta) {
        uint32_t count;
        combined_mass_bin<kCluster>(cluster, sh.ex[0], rank * kMassBinsPerCta + tid, mass, count);
        sh.bin_mass[tid] = mass, sh.bin_count[tid] = count;
    }
    unsigned long long range_mass;
    block_scan(mass, range_mass, sh);
    if (tid == 0) sh.range_mass = range_mass;
    cluster.sync();  // every range is combined

    // The ranges in rank order (warp 0): the one where the walk crosses, and the mass before it.
    if (warp == 0) {
        unsigned long long m = lane < kCluster ? cluster.map_shared_rank(&sh, lane)->range_mass : 0ull;
#pragma unroll
        for (int offset = 1; offset < kCluster; offset <<= 1) {
            const unsigned long long other = __shfl_up_sync(0xFFFFFFFFu, m, offset);
            if (lane >= offset) m += other;
        }
        const unsigned long long total = __shfl_sync(0xFFFFFFFFu, m, kCluster - 1);
        const unsigned long long goal = static_cast<unsigned long long>(ceil(double(top_p) * double(total)));
        const int q = __ffs(__ballot_sync(0xFFFFFFFFu, lane < kCluster && m >= goal)) - 1;  // total >= goal
        const unsigned long long before = q > 0 ? __shfl_sync(0xFFFFFFFFu, m, q - 1) : 0ull;
        if (lane == 0) sh.crossing_range = q, sh.above = before, sh.crossing_target = goal;
    }
    __syncthreads();
    const int q = sh.crossing_range;
    target = sh.crossing_target;
    const unsigned long long before = sh.above;
    mass = 0;
    uint32_t count = 0;
    if (tid < kMassBinsPerCta) {
        const Shared* remote = cluster.map_shared_rank(&sh, q);
        mass = remote->bin_mass[tid], count = remote->bin_count[tid];
    }
    unsigned long long unused;
    const unsigned long long inclusive = before + block_scan(mass, unused, sh);
    if (inclusive >= target && inclusive - mass < target) {  // exactly one bin crosses
        sh.digit = static_cast<uint32_t>(q * kMassBinsPerCta + tid);
        sh.above = inclusive - mass;
        sh.crossing_count = count;
    }
    __syncthreads();
    bin_out = static_cast<int>(sh.digit);
    mass_above = sh.above;
    return sh.crossing_count <= kMaxCandidates;
}

// Walks the entries of sorted[0, n) (descending) with keys >= cut in order, adding their fixed-point masses to base;
// returns the key of the entry at which the sum first reaches target (exactly one entry crosses; ties at it are kept
// too, as their keys are equal), or 0 when it never does. Thread tid owns entries [tid * per, (tid + 1) * per).
// target_of(total): the target given the total mass of those entries (the same on every thread).
template <typename TargetOf>
__device__ uint32_t crossing_key(const unsigned long long* sorted, int n, uint32_t cut, float zmax,
                                 unsigned long long base, TargetOf target_of, Shared& sh) {
    const int per = (n + kThreads - 1) / kThreads;
    const int first = threadIdx.x * per;
    unsigned long long mine = 0, total;
    for (int i = first; i < first + per; ++i)
        if (i < n && candidate_key(sorted[i]) >= cut) mine += fixed_mass(key_to_float(candidate_key(sorted[i])), zmax);
    unsigned long long c = base + block_scan(mine, total, sh) - mine;
    const unsigned long long target = target_of(total);
    if (threadIdx.x == 0) sh.digit = 0u;
    __syncthreads();
    for (int i = first; i < first + per && c < target; ++i) {
        if (i < n && candidate_key(sorted[i]) >= cut) {
            c += fixed_mass(key_to_float(candidate_key(sorted[i])), zmax);
            if (c >= target) sh.digit = candidate_key(sorted[i]);
        }
    }
    __syncthreads();
    return sh.digit;
}

// Top-k fast paths, the finish (one warp of CTA 0): all[0, n) (n >= 1) holds every z top-k keeps in descending order,
// the row's max first; score[i] and mass[i] are the Gumbel score and fixed-point mass of all[i] (Weights). The kept
// prefix under top-k, then top-p as the radix path defines it (the shortest prefix whose fixed-point masses reach
// ceil(top_p * total), extended over ties), then the best score of what is kept. Lane l walks entries [l per, (l + 1)
// per) in order, so the cut takes one warp scan and no barrier. Returns the token, on every lane.
__device__ int finish_candidates(const unsigned long long* all, const float* score, const uint32_t* mass, int n,
                                 const SampleArgs& a) {
    const int lane = threadIdx.x % dsv4::kWarpSize;
    const int per = (n + dsv4::kWarpSize - 1) / dsv4::kWarpSize, first = lane * per, end = min(first + per, n);
    uint32_t cut = n >= a.top_k ? candidate_key(all[a.top_k - 1]) : 0u;  // key 0: keep every candidate
    if (a.top_p < 1.0f) {
        unsigned long long mine = 0;
        for (int i = first; i < end; ++i)
            if (candidate_key(all[i]) >= cut) mine += mass[i];
        const unsigned long long inclusive = warp_inclusive_sum(mine);
        const unsigned long long total = __shfl_sync(0xFFFFFFFFu, inclusive, dsv4::kWarpSize - 1);
        const unsigned long long target = static_cast<unsigned long long>(ceil(double(a.top_p) * double(total)));
        // Exactly one entry crosses (the sums are exact integers and the max's mass is 2^31 >= target > 0).
        unsigned long long c = inclusive - mine;
        uint32_t crossing = 0u;
        for (int i = first; i < end && c < target; ++i) {
            if (candidate_key(all[i]) >= cut) {
                c += mass[i];
                if (c >= target) crossing = candidate_key(all[i]);
            }
        }
        cut = max(cut, __reduce_max_sync(0xFFFFFFFFu, crossing));
    }
    float best = -INFINITY;
    int best_i = INT_MAX;
    for (int i = first; i < end; ++i)
        if (candidate_key(all[i]) >= cut) take_better(best, best_i, score[i], candidate_token(all[i]));
    warp_best(best, best_i);
    return best_i;
}

// What the finish of the top-k fast paths needs of a candidate besides its key: its Gumbel score RN(z + g) (as the
// Gumbel-max of 4 compares them) and its fixed-point mass under the row's max.
struct Weights {
    uint32_t row;
    const SampleArgs& a;
    float zmax;
    __device__ float score(unsigned long long c) const {
        return __fadd_rn(key_to_float(candidate_key(c)), gumbel(static_cast<uint32_t>(candidate_token(c)), row, a));
    }
    __device__ uint32_t mass(unsigned long long c) const { return fixed_mass(key_to_float(candidate_key(c)), zmax); }
};

// The n candidates of in[] (distinct; kThreads < n <= kMaxCandidates) in descending order, in place, by the CTA: a
// bitonic sort padded with zeros to the next power of two (in[] has room: kMaxCandidates is one). The unsorted cuts
// (finish_top_k, crossing_cut) take fewer; a rank counted for each candidate (as they count) sorted ~85 of them in
// 1.0 us, against 1.4 with a thread a candidate, before they replaced it.
__device__ void sort_descending(unsigned long long* in, int n) {
    int n_pad = 1;
    while (n_pad < n) n_pad <<= 1;
    for (int i = n + threadIdx.x; i < n_pad; i += kThreads) in[i] = 0ull;  // below every candidate
    __syncthreads();
    for (int size = 2; size <= n_pad; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n_pad / 2; i += kThreads) {
                const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                const unsigned long long x = in[lo], y = in[hi];
                if ((x < y) == ((lo & size) == 0)) in[lo] = y, in[hi] = x;
            }
            __syncthreads();
        }
    }
}

// The unsorted cuts (finish_top_k, crossing_cut): the candidates in[0, n) (n <= kThreads) as keys and fixed-point
// masses under zmax, into keys[0, n4) and masses[0, n4) (n4 = n rounded up to 4; zeros past n: below every candidate,
// no mass). Ends with the CTA barrier after which they are complete.
__device__ void stage_keys_and_masses(const unsigned long long* in, int n, float zmax, uint32_t* keys,
                                      uint32_t* masses) {
    const int tid = threadIdx.x;
    if (tid < (n + 3) / 4 * 4) {
        const uint32_t key = tid < n ? candidate_key(in[tid]) : 0u;
        keys[tid] = key;
        masses[tid] = tid < n ? fixed_mass(key_to_float(key), zmax) : 0u;
    }
    __syncthreads();
}

// How many of the staged keys exceed keys[c] (c < n) and their masses' sum, by `lanes` threads of a warp (this one
// their lane `part`), which all return the totals. Every thread of the warp calls.
struct Greater {
    uint32_t count;
    unsigned long long mass;
};
__device__ __forceinline__ Greater greater_than(const uint32_t* keys, const uint32_t* masses, int n, int c, int part,
                                                int lanes) {
    Greater g{0u, 0ull};
    if (c < n) {
        const uint32_t key = keys[c];
        const uint4* keys4 = reinterpret_cast<const uint4*>(keys);  // 16-byte aligned
        const uint4* masses4 = reinterpret_cast<const uint4*>(masses);
#pragma unroll 2
        for (int j = part; j < (n + 3) / 4; j += lanes) {  // broadcast reads
            const uint4 kk = keys4[j], mm = masses4[j];
            g.count += (kk.x > key) + (kk.y > key) + (kk.z > key) + (kk.w > key);
            g.mass += static_cast<unsigned long long>(kk.x > key ? mm.x : 0u) + (kk.y > key ? mm.y : 0u);
            g.mass += static_cast<unsigned long long>(kk.z > key ? mm.z : 0u) + (kk.w > key ? mm.w : 0u);
        }
    }
    for (int offset = lanes / 2; offset > 0; offset /= 2) {
        g.count += __shfl_xor_sync(0xFFFFFFFFu, g.count, offset);
        g.mass += __shfl_xor_sync(0xFFFFFFFFu, g.mass, offset);
    }
    return g;
}

// The warp's sum of one fixed-point mass a lane, exact for sums below 2^54 (the fast paths' are at most 2^44: two CTAs'
// kKeptCapacity entries of at most 2^31 each), as the low 22 bits (32 of them sum below 2^27) and the rest: two
// redux.sync.
__device__ __forceinline__ unsigned long long warp_mass(unsigned long long mass) {
    const uint32_t low = __reduce_add_sync(0xFFFFFFFFu, static_cast<uint32_t>(mass) & 0x3FFFFFu);
    const uint32_t high = __reduce_add_sync(0xFFFFFFFFu, static_cast<uint32_t>(mass >> 22));
    return (static_cast<unsigned long long>(high) << 22) + low;
}

// Top-k fast paths, the finish of CTA 0 (every thread calls; returns the token on every thread): in[0, n) holds every
// z top-k keeps (distinct entries, in no order), out[] kMaxCandidates free entries. For n <= kThreads nothing is
// sorted:
//  - each candidate c counts the candidates whose key exceeds its own (above_c) and adds their fixed-point masses
//    (mass_above_c), `lanes` threads a candidate. Top-k keeps c iff above_c < k (ties extended, as the k-th largest's
//    key cuts); the kept masses sum to total (exact integers); top-p keeps c iff mass_above_c < ceil(top_p * total):
//    the walk over the sorted list that finish_candidates takes crosses the target in the key group where the masses
//    of the greater keys stop being short of it.
//  - meanwhile threads of their own form each candidate's Philox word and close bounds on its score
//    (close_score_bounds, no double logs). The candidates kept whose upper bound reaches the largest lower bound of a
//    kept candidate contend; when one does it wins, else the contenders' exact scores decide (the lowest id on ties).
//    With gumbel_reach's bounds in their place, one contended in 74% of the bench's rows (~90 candidates), two in 17%:
//    T,k,p at 64 rows 20.8 -> 20.6 us with the close bounds (T,p, whose finish bounds ~1000 entries the same way, 30.7
//    -> 28.8; 128 rows 45.8 -> 44.4).
// Four CTA barriers, no serial walk. A 64-row T,k,p launch (%globaltimer, CTA 0): 3.0 us from the cluster barrier to
// the token, against 3.8 for a sort (ranking with the scores' double logs 1.7 us) and finish_candidates' walk by one
// warp (1.3 us). Measured slower: 64-bit shared atomics for the kept mass and the best score (a compare-and-swap loop
// under contention, ~1.5 us), and the double logs of every candidate beside the counts (~1 us a thread).
// Larger n (ties, or k near kMaxCandidates): sort_descending and finish_candidates.
__device__ int finish_top_k(unsigned long long* in, unsigned long long* out, int n, const Weights& weigh, Shared& sh) {
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    if (n > kThreads) {
        sort_descending(in, n);
        const unsigned long long* sorted = in;
        float* scores = reinterpret_cast<float*>(out);
        uint32_t* masses = reinterpret_cast<uint32_t*>(scores + kMaxCandidates);
        for (int i = tid; i < n; i += kThreads) scores[i] = weigh.score(sorted[i]), masses[i] = weigh.mass(sorted[i]);
        __syncthreads();
        if (warp == 0) {
            const int token = finish_candidates(sorted, scores, masses, n, weigh.a);
            if (lane == 0) sh.sole = token;
        }
        __syncthreads();
        return sh.sole;
    }
    // out[]: keys and masses (stage_keys_and_masses), bounds and words [n], kThreads entries each
    uint32_t* keys = reinterpret_cast<uint32_t*>(out);
    uint32_t* masses = keys + kThreads;
    float* upper = reinterpret_cast<float*>(masses + kThreads);
    float* lower = upper + kThreads;
    uint32_t* words = reinterpret_cast<uint32_t*>(lower + kThreads);
    if (tid == 0) sh.contenders = 0;
    stage_keys_and_masses(in, n, weigh.zmax, keys, masses);
    // lanes a candidate, as many as leave a warp-aligned thread a candidate for the bounds (else its lane 0 forms them)
    auto scorers_from = [n](int l) { return (l * n + dsv4::kWarpSize - 1) / dsv4::kWarpSize * dsv4::kWarpSize; };
    const bool own_scorers = scorers_from(1) + n <= kThreads;
    int lanes = 1;
    while (own_scorers && lanes < dsv4::kWarpSize && scorers_from(2 * lanes) + n <= kThreads) lanes *= 2;
    auto bound = [&](int c) {
        const unsigned long long entry = in[c];
        const float v = key_to_float(candidate_key(entry));
        const int token = candidate_token(entry);
        const uint32_t x = word_of(philox_words(static_cast<uint32_t>(token / 4), weigh.row, weigh.a), token % 4);
        const ScoreBounds b = close_score_bounds(v, x);
        upper[c] = b.upper, lower[c] = b.lower, words[c] = x;
    };
    const int c = tid / lanes, part = tid % lanes;  // (a candidate's lanes share a warp)
    const int scorer = tid - scorers_from(lanes);
    if (own_scorers && scorer >= 0 && scorer < n) bound(scorer);
    const Greater greater = greater_than(keys, masses, n, c, part, lanes);
    const bool counts = c < n && part == 0;  // this thread holds candidate c's counts
    const bool top_k_keeps = counts && greater.count < static_cast<unsigned long long>(weigh.a.top_k);
    if (!own_scorers && counts) bound(c);
    const unsigned long long kept_mass = warp_mass(top_k_keeps ? masses[c] : 0u);
    if (lane == 0) sh.warp_scan[warp] = kept_mass;
    __syncthreads();
    bool kept = top_k_keeps;
    if (weigh.a.top_p < 1.0f) {
        unsigned long long total = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) total += sh.warp_scan[w];
        kept &= greater.mass < static_cast<unsigned long long>(ceil(double(weigh.a.top_p) * double(total)));
    }
    const uint32_t floor_key = __reduce_max_sync(0xFFFFFFFFu, kept ? float_to_key(lower[c]) : 0u);
    if (lane == 0) sh.warp_floor[warp] = floor_key;
    __syncthreads();
    uint32_t best_floor = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) best_floor = max(best_floor, sh.warp_floor[w]);
    const bool contends = kept && float_to_key(upper[c]) >= best_floor;
    const int token = counts ? candidate_token(in[c]) : 0;
    if (contends && atomicAdd(&sh.contenders, 1) == 0) sh.sole = token;  // (the winner when it is alone)
    __syncthreads();
    if (sh.contenders == 1) return sh.sole;
    // Exact scores of the contenders, RN(z + g): the largest, then the lowest id (the highest ~token).
    const uint32_t score_key =
        contends ? float_to_key(__fadd_rn(key_to_float(keys[c]), gumbel_of_word(words[c]))) : 0u;
    const uint32_t top_key = __reduce_max_sync(0xFFFFFFFFu, score_key);
    const uint32_t top_id =
        __reduce_max_sync(0xFFFFFFFFu, contends && score_key == top_key ? ~static_cast<uint32_t>(token) : 0u);
    if (lane == 0) sh.warp_top[warp] = static_cast<unsigned long long>(top_key) << 32 | top_id;
    __syncthreads();
    unsigned long long best = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) best = max(best, sh.warp_top[w]);
    return candidate_token(best);
}

// Top-p fast paths, the cut among the n entries of in[] (distinct; the crossing mass bin's, gathered by every CTA): the
// key of the entry at which a walk from `base` over them in descending order, adding their fixed-point masses under
// zmax, first reaches target (ties at it are kept too, as their keys are equal), or 0 when it never does, on every
// thread. For n <= kThreads without a sort: it is the least key whose greater keys' masses leave base short of target
// (as top-p keeps in finish_top_k). Larger n: sort_descending and crossing_key. out[]: kMaxCandidates free entries.
__device__ uint32_t crossing_cut(unsigned long long* in, unsigned long long* out, int n, float zmax,
                                 unsigned long long base, unsigned long long target, Shared& sh) {
    if (n > kThreads) {
        sort_descending(in, n);
        return crossing_key(in, n, 0u, zmax, base, [target](unsigned long long) { return target; }, sh);
    }
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    uint32_t* keys = reinterpret_cast<uint32_t*>(out);
    uint32_t* masses = keys + kThreads;
    stage_keys_and_masses(in, n, zmax, keys, masses);
    int lanes = 1;
    while (lanes < dsv4::kWarpSize && 2 * lanes * n <= kThreads) lanes *= 2;
    const int c = tid / lanes, part = tid % lanes;  // (a candidate's lanes share a warp)
    const Greater greater = greater_than(keys, masses, n, c, part, lanes);
    const bool counts = c < n && part == 0;
    const bool kept = counts && base + greater.mass < target;
    const uint32_t least = __reduce_min_sync(0xFFFFFFFFu, kept ? keys[c] : UINT32_MAX);
    const unsigned long long mass = warp_mass(counts ? masses[c] : 0u);
    if (lane == 0) sh.warp_floor[warp] = least, sh.warp_top[warp] = mass;
    __syncthreads();
    uint32_t cut = UINT32_MAX;
    unsigned long long total = base;
#pragma unroll 4  // (unrolled whole, the staged kernel spilled 8 bytes)
    for (int w = 0; w < kWarps; ++w) cut = min(cut, sh.warp_floor[w]), total += sh.warp_top[w];
    return total < target ? 0u : cut;
}

// One candidate into the gather buffer (ex[1]) of CTA 0 or, with kEveryRank, of every CTA: a slot from an atomic on
// the receiver's count.
template <bool kEveryRank, int kRanks>
__device__ __forceinline__ void deliver_candidate(unsigned long long entry, cg::cluster_group& cluster, Shared& sh) {
#pragma unroll
    for (int r = 0; r < (kEveryRank ? kRanks : 1); ++r) {
        unsigned long long* gathered = cluster.map_shared_rank(reinterpret_cast<unsigned long long*>(sh.ex[1].hist), r);
        gathered[atomicAdd(cluster.map_shared_rank(&sh.count, r), 1)] = entry;
    }
}

// Fast paths, the push: every z of this CTA's slice for which take(z) holds (finite z only, at most kMaxCandidates
// in the row) goes into the gather buffer (ex[1], which no other CTA reads; a slot from an atomic on the receiver's
// count) of CTA 0 or, with kEveryRank, of every CTA. Ends with the cluster barrier after which the receivers hold
// them all.
template <bool kEveryRank, typename Take>
__device__ void push_candidates(const float4* z4, int n_local, int64_t begin, Take take, cg::cluster_group& cluster,
                                Shared& sh) {
    const int tid = threadIdx.x;
    const float* z = reinterpret_cast<const float*>(z4);
    for (int first = tid; 4 * first < n_local; first += kLoadBatch * kThreads) {
        uint32_t takers = 0;  // bit 4 b + c: element c of vector first + b * kThreads
#pragma unroll
        for (int b = 0; b < kLoadBatch; ++b) {
            const int v = first + b * kThreads;
            const float4 zv = 4 * v < n_local ? z4[v] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            const float e[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (4 * v + c < n_local && e[c] > -INFINITY && take(e[c])) takers |= 1u << (4 * b + c);
        }
        for (; takers != 0u; takers &= takers - 1u) {  // rare
            const int bit = __ffs(takers) - 1;
            const int j = 4 * (first + (bit / 4) * kThreads) + bit % 4;
            const unsigned long long entry = candidate(float_to_key(z[j]), static_cast<uint32_t>(begin + j));
            deliver_candidate<kEveryRank, kCluster>(entry, cluster, sh);
        }
    }
    cluster.sync();  // every candidate has arrived
}

// The unstaged top-k fast path's push: the entries of this CTA's kept list whose digit is at least d0, into CTA 0.
// Measured slower: CTA 0 pulling them from every list through distributed shared memory (one cluster barrier fewer on
// its path, but a read of every entry of the other CTA's list): T,k,p at 48 / 64 rows 24.4 / 26.0 -> 24.8 / 26.5 us,
// and the same for top-p's crossing bin, T,p 32.3 / 34.8 -> 32.6 / 35.2.
template <int kRanks>
__device__ void push_kept(const unsigned long long* kept, int n, uint32_t d0, cg::cluster_group& cluster, Shared& sh) {
    for (int i = threadIdx.x; i < n; i += kThreads)
        if ((candidate_key(kept[i]) >> digit_shift(0)) >= d0) deliver_candidate<false, kRanks>(kept[i], cluster, sh);
    cluster.sync();  // every candidate has arrived
}

// The digit of the k-th largest among z counted per digit (counts(b) of digit b), searched by the calling warp alone
// over the 32 digits top, top - 1, ..., top - 31 (lane l: digit top - l), and how many of them lie at or above it.
// Returns false when those digits hold fewer than k.
template <typename Counts>
__device__ __forceinline__ bool kth_digit_near(uint32_t top, unsigned long long k, Counts counts, uint32_t& digit,
                                               uint32_t& above) {
    const int lane = threadIdx.x % dsv4::kWarpSize;
    const uint32_t mine = counts(static_cast<int>(top) - lane);
    const uint32_t inclusive = warp_inclusive_sum(mine);  // over the lanes, from the top digit down
    const uint32_t reached = __ballot_sync(0xFFFFFFFFu, inclusive >= k);
    if (reached == 0u) return false;
    const int at = __ffs(reached) - 1;
    digit = top - at;
    above = __shfl_sync(0xFFFFFFFFu, inclusive, at);
    return true;
}

// Unstaged top-k fast path, with no cluster barrier after the load pass (called right after it: ex[0].hist[0] counts
// this CTA's kept list by level-0 digit, sh.warp_value and sh.warp_bad hold its warps' max z and invalid z). Every CTA
// takes d, the digit of its own k-th largest z, from the 32 digits at and below its max's (every warp alone,
// kth_digit_near): its entries with digit >= d include every z of its slice that the row keeps, which are at least the
// row's k-th largest, so at least the CTA's own. CTA 1 pushes those entries into region 1 of CTA 0's gather buffer
// (ex[1]) and, as a PeerRegion, their count, its max, those 32 digits' counts and a flag: its list is complete (no
// overflow), its z are valid, its k-th largest lies within those digits and its entries fit the region. CTA 0 pushes
// its own flag into CTA 1, which leaves once it has it (if both are up; its pushes may still be in flight: memcheck and
// racecheck see nothing). If both are up, every warp of CTA 0 finds the row's k-th digit d0 in its own and CTA 1's
// counts (the row's max digit is at most 31 above it: the larger d is at most d0), then CTA 0 gathers its kept list's
// entries and region 1's at or above it and finishes (finish_top_k). Pushes in place of a cluster barrier after the
// load pass (whose fence_cluster took ~1100 cycles): T,k,p at 32 / 48 / 64 rows 17.43 / 18.01 / 19.19 -> 17.20 / 17.73
// / 18.87 us (H100, the bench's timing); CTA 0's flag pushed only after its wait (CTA 1 then leaving with nothing in
// flight), 17.26 / 17.74 / 19.03; CTA 0 gathering its own entries from its kept list rather than a region of its own,
// and no CTA barrier before its wait, 17.13 / 17.70 / 18.86 (kept, for fewer steps). The path it replaced (a max
// exchange, the row's candidate digit from the CTAs' whole histograms and a push of those candidates alone, ~85 for the
// bench's rows against ~250 a CTA here, then the cut and the Gumbel-max over the CTA) spent ~7 us of a 64-row T,k,p
// launch after the load pass. Returns true when this CTA is done; false, the same on every CTA, when a flag is down (an
// overflowing, invalid or spread slice, or more ties than a region holds): the max exchange and the paths after it
// follow.
// What bounds a 64-row T,k,p launch (Flash vocab on the H100, timed as the bench times; variants that end early with a
// wrong token; before the pushes): the load pass, the kept lists and one cluster barrier, then CTA 0 writes a token,
// 17.35 us (48 rows 16.6); with the pushes, the barrier and CTA 0's gather but no finish_top_k, 19.07 (18.0); the whole
// path 20.67 (18.95). So the finish costs ~1.6 us of the period, and the 0.8 line (~18.7 us) lies below the path
// without it.
// Measured and not kept: the kept lists' digits counted in the pass that keeps them (no pass over the kept list, one
// CTA barrier fewer) with CTA 0 staging the keys and masses as it gathers (no staging pass), 20.60 -> 20.69-20.75 us at
// 64 rows: the stamps of the steps did not move (the kept lists done 13.4 -> 13.6 us after the wait).
// scratch: [2 kMaxCandidates] entries, free (the load pass's reached lists).
template <int kRanks>
__device__ bool unstaged_top_k(const unsigned long long* kept, unsigned long long* scratch, uint32_t row,
                               const SampleArgs& a, cg::cluster_group& cluster, Shared& sh) {
    constexpr int kRegion = kMaxCandidates / kRanks;
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const int rank = static_cast<int>(cluster.block_rank());
    const unsigned long long k = static_cast<unsigned long long>(a.top_k);
    unsigned long long* regions = reinterpret_cast<unsigned long long*>(sh.ex[1].hist);  // [kRanks][kRegion]
    static_assert(kRanks <= 2, "CTA 0's one peer pushes (push_u32)");
    if constexpr (kRanks > 1) cluster_wait();  // (arrived after the first batch: every CTA has started)
    // Entries of list[0, n) whose digit reaches d, to store(slot, entry) (slots from *count).
    auto compact = [&](const unsigned long long* list, int n, uint32_t d, int* count, auto store) {
        for (int i = tid; i - lane < n; i += kThreads) {
            const unsigned long long entry = i < n ? list[i] : 0ull;
            const bool take = i < n && (candidate_key(entry) >> digit_shift(0)) >= d;
            const int at = warp_slot(take, count);
            if (take) store(at, entry);
        }
    };
    static_assert(kWarps <= dsv4::kWarpSize, "a lane per warp");
    const uint32_t max_key = __reduce_max_sync(0xFFFFFFFFu, lane < kWarps ? float_to_key(sh.warp_value[lane]) : 0u);
    const uint32_t top = max_key >> digit_shift(0);
    const int n_kept = sh.kept;  // > kKeptCapacity: the list overflowed (and the histogram is empty)
    uint32_t d = 0, pushed = 0;
    const bool found = kth_digit_near(top, k, [&](int b) { return b >= 0 ? sh.ex[0].hist[0][b] : 0u; }, d, pushed);
    const bool fits = n_kept <= kKeptCapacity && found && pushed <= kRegion;
    const bool ok = fits && !__any_sync(0xFFFFFFFFu, lane < kWarps && sh.warp_bad[lane]);
    // (every warp holds the same d, pushed, top and flag: CTA 0 needs no CTA barrier before the wait)
    auto window = [&](int b) { return b >= 0 && top - b < dsv4::kWarpSize ? sh.ex[0].hist[0][b] : 0u; };
    if constexpr (kRanks > 1) {
        const uint32_t peer_bar = peer_address(&sh.push_bar, 1 - rank);
        if (rank == 0 && tid == 0) {  // its flag into CTA 1
            push_u32(peer_address(&sh.peer_region.ok, 1), ok, peer_bar);
            arrive_pushed(peer_bar, sizeof(int));
        }
        if (rank == 1) {  // its region and PeerRegion into CTA 0
            if (fits) {
                const uint32_t region = peer_address(regions + kRegion, 0);
                compact(kept, n_kept, d, &sh.count,
                        [&](int at, unsigned long long e) { push_u64(region + 8u * at, e, peer_bar); });
            }
            if (warp == 0) {
                PeerRegion& to = sh.peer_region;
                push_u32(peer_address(&to.window[lane], 0), window(static_cast<int>(top) - lane), peer_bar);
                if (lane == 0) {
                    push_u32(peer_address(&to.count, 0), pushed, peer_bar);
                    push_u32(peer_address(&to.top, 0), top, peer_bar);
                    push_u32(peer_address(&to.max, 0), __float_as_uint(key_to_float(max_key)), peer_bar);
                    push_u32(peer_address(&to.ok, 0), ok, peer_bar);
                }
            }
            __syncthreads();  // sh.count: the entries pushed (`pushed`, unless the counts are wrong: no hang then)
            if (tid == 0) arrive_pushed(peer_bar, 8u * sh.count + sizeof(PeerRegion));
        }
        wait_pushed(&sh.push_bar);  // CTA 0: the peer's region and PeerRegion; CTA 1: CTA 0's flag
    }
    if (!ok || (kRanks > 1 && !sh.peer_region.ok)) {  // (the same on every thread of the cluster)
        if (tid == 0) sh.count = 0;  // (the fallback's push counts from 0: its cluster barrier comes first)
        return false;
    }
    if (rank != 0) return true;

    const PeerRegion* peer = kRanks > 1 ? &sh.peer_region : nullptr;
    const uint32_t row_top = peer ? max(top, peer->top) : top;
    const float zmax = fmaxf(key_to_float(max_key), peer ? peer->max : -INFINITY);
    uint32_t d0 = 0, above = 0;
    kth_digit_near(row_top, k, [&](int b) {
        const uint32_t below_peer_top = peer ? peer->top - static_cast<uint32_t>(b) : UINT32_MAX;
        return window(b) + (below_peer_top < dsv4::kWarpSize ? peer->window[below_peer_top] : 0u);
    }, d0, above);
    auto gather = [&](int at, unsigned long long e) { scratch[at] = e; };
    compact(kept, n_kept, d0, &sh.gathered, gather);  // (d0 >= d: the row's k-th largest is at least this CTA's)
    if (peer) compact(regions + kRegion, peer->count, d0, &sh.gathered, gather);
    __syncthreads();
    const int n = sh.gathered;
    const int token = finish_top_k(scratch, scratch + kMaxCandidates, n, Weights{row, a, zmax}, sh);
    if (tid == 0) a.tokens[row] = token;
    return true;
}

// Unstaged top-p fast path: the close Gumbels (close_gumbel of their Philox words) of list[0, n), 4 entries a thread
// (so that their Philox chains overlap), to sink(i4, g) for entries 4 i4 .. 4 i4 + 3 (those past n: another entry's).
template <typename Sink>
__device__ __forceinline__ void form_close_gumbels(const unsigned long long* list, int n, uint32_t row,
                                                   const SampleArgs& a, Sink sink) {
    for (int i4 = threadIdx.x; 4 * i4 < n; i4 += kThreads) {
        float g[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int token = candidate_token(list[min(4 * i4 + k, n - 1)]);
            g[k] = close_gumbel(word_of(philox_words(static_cast<uint32_t>(token / 4), row, a), token % 4));
        }
        sink(i4, make_float4(g[0], g[1], g[2], g[3]));
    }
}

// Unstaged top-p fast path (top-p without top-k, kRanks <= 2 CTAs a row, nothing staged), by CTA 0 alone, with no
// cluster barrier after the load pass. Called right after the load pass: kept[0, sh.kept) holds every z of this CTA's
// slice at or above its floor sh.list_floor (sh.kept > kKeptCapacity: the list overflowed; at one CTA an SM, maybe a
// few just below it), and sh.warp_value / warp_index / warp_bad / warp_tail hold its warps' max z, invalid z and tail
// mass: the mass of the rest of the slice (z below the floor keep_min, off the list) that the load pass summed as fp32
// exp(z - keep_min) = exp2(x log2(e) / T - keep_min log2(e)), the max not being known yet. CTA 1 pushes (push_u32) its
// list into CTA 0's exchange buffers (4096 entries: the whole of kKeptCapacity; the arrival at the cluster barrier
// after the first batch, whose wait comes first here, says they are free) with its max, floor and tail as a PeerList,
// and waits for CTA 0's verdict, pushed back. Pushes in place of the cluster barriers for the list and the verdict: T,p
// at 32 / 48 / 64 rows 27.91 / 27.70 / 28.70 -> 27.45 / 27.38 / 28.35 us. CTA 0, given the row's max, adds the
// fixed-point masses of both lists and of the tails (rescaled by exp(keep_min - zmax) 2^31) and keeps the entries at
// or above the row's floor (the larger; above it, each list holds every z of its slice) whose greater z leave the mass
// short of ceil(top_p * the row's mass): a z below the floor never comes first in a walk from the max, so the cut is
// the one a walk over the whole row finds. The token is the best kept score, found from the frontier of the entries by
// z (see the finish below) with close bounds on every entry's score (no double logs), the entries whose upper bound
// reaches the largest kept lower bound contending, and double logs only when more than one does.
// Pairs at one CTA an SM (kKeptGumbels) take those bounds from close Gumbels formed ahead: each CTA forms those of its
// own list after its load pass (form_close_gumbels; CTA 0 while the peer's list is on its way, CTA 1 before pushing
// them with its list), so CTA 0's finish forms Philox blocks only for double logs. H100, Flash vocab, the bench's
// timing: T,p at 32 / 48 / 64 rows 25.29 / 25.22 / 26.57 -> 23.44 / 23.60 / 25.75 us (T,k,p unchanged, 16.28 / 16.75 /
// 17.93). A mutant that read the peer's Gumbels at the own list's index failed 5 tests.
// Measured and not kept: each warp forming the close Gumbels of its own range of the list at the end of the load pass
// (after the lane lists' loop, before the CTA's barrier), so that CTA 1 pushes them with its list at once. H100, the
// bench's timing, two runs, T,p at 32 / 64 rows 19.71-19.95 / 22.41-22.53 -> 20.24-20.54 / 22.91-23.07 us, and with
// the next launch let in before those Gumbels 20.32-20.44 / 22.90-23.05. Stamps (%globaltimer, 64 rows, CTA 0 medians,
// us after the wait): the lists done 13.54 -> 15.04, the bins cleared 15.66 -> 15.87, the peer's list in 16.08 ->
// 16.80. Formed by the warps, the Gumbels cost ~1.5 us of the load pass, and the step that forms them here costs ~1.3
// (of its 2.1 us, ~0.8 are the CTA's max, the clears and a barrier, which remain).
// The frontier finish replaced a walk of the mass bins to the crossing bin, whose entries gave the cut (crossing_cut),
// then the bounds of the entries above it and a pass for the contenders (four more CTA barriers): T,p at 32 / 48 / 64 /
// 96 / 128 / 256 rows 20.93 / 22.13 / 23.91 / 54.46 / 42.05 / 67.34 -> 20.52 / 21.90 / 23.32 / 53.72 / 40.77 / 67.73
// us (T,k,p and 1 row unchanged). Its steps at 64 rows (early exits, a token written at once, us): the peer's list and
// Gumbels in 18.74, pass A 20.31, the scan and pass B 22.52, the whole 23.32 (the bins' masses as one 64-bit shared
// atomic, a compare-and-swap loop in SASS, ATOMS.CAST.SPIN.64: pass A 3.6 us, the whole 27.2). The walk it replaced
// had passed the crossing bin at 20.67 of 23.85. Only a frontier entry in the bin that holds the cut sums its
// bin-mates (the others are decided by the bins' prefixes): 20.60 / 21.99 / 23.37 / 40.70 -> 20.04 / 21.22 / 22.87 /
// 40.36 at 32 / 48 / 64 / 128 rows. Warp 0's decision run twice (timing only) took 1.7 us more at 64 rows, as did pass
// B twice. Measured and not kept (us at 32 / 48 / 64 / 128 rows, against 20.02 / 21.18 / 22.82 / 40.51 in the same
// run): the candidates listed in pass A, those whose upper bound reaches the max's lower bound (every bin after the
// max's follows it) or in the max's bin, with pass B only when one of them lies in the bin of the cut, 19.84 / 21.24
// / 22.68 / 40.66 (mutants of it failed 2 and 6 tests); the bins' largest bounds taken only from such entries (two
// atomics an entry fewer), 20.39 / 21.48 / 23.15 / 40.72 against 20.07 / 21.25 / 22.91 / 40.34.
// Measured and not kept: a list budget of 768 (kListBudget) on top of it, 22.09 / 22.31 / 24.75 us: the bench's rows
// (a nucleus of ~900) still fit, but a row whose nucleus reaches below the higher floor takes the radix path (~3x).
// The token without a pass over the entries to count the contenders: the entry of the largest lower bound is one, and
// each thread's two largest upper bounds count (up to 2) those it holds, so a total of 1 names the token: 23.62 /
// 23.61 / 25.79 -> 22.86 / 22.91 / 25.03 us (a mutant that always took that entry failed test_top_p_close_scores).
// Measured and not kept on top of it: the cut of a crossing bin of at most 32 entries by warp 0 alone (shuffles, no
// barrier), 22.34 / 22.87 / 25.51. At 5778f68 (64 rows): a token written right after the load pass 17.35 us against
// 23.87 for the whole, so this finish costs ~6.5 us; that load pass without the first batch (the floor fixed at z = 8,
// timing only) 16.35, and without the listing's stores as well 15.31. Early exits from this finish (a token written
// at once, 64 rows, us) at that time: after the load
// pass 18.7, the peer's list in 20.0, the crossing bin 21.9, the gather 22.6, the cut 24.1, the best lower bound 24.8,
// the whole 25.8; T,k,p after its load pass 17.0 (its whole 18.1).
// At c63a5ab (64 rows): a token right after the load pass 17.24 us, against 22.72-22.86 for the whole. Measured and not
// kept there: each CTA finding a superset of its own frontier before the exchange, from close bounds on its entries'
// scores (the entries whose upper bound reaches the lower bound of its max's score, ~7 of ~1000 for the bench's rows;
// of those, the ones no entry of a larger z surely beats, ~2.6), CTA 1 pushing its list first and its frontier after,
// CTA 0 summing every entry's fixed-point mass and, per frontier entry of either CTA, the mass of the entries of a
// larger z (8 such sums in each thread's registers, one atomic pair a warp), then warp 0 keeping the frontier entries
// short of the target and taking the token among them (test_sample 87 passed): T,p at 32 / 48 / 64 rows 21.52-21.63 /
// 22.47-22.54 / 23.31-23.39 against 19.94-20.12 / 21.15-21.21 / 22.77-22.82. Its steps at 64 rows (a token written
// at once): after the frontiers' exchange 19.7 us, after the mass pass 22.5. With the masses added into shared
// buckets by the number of frontier entries of z at least an entry's (atomics: a few buckets take most entries), 24.1
// at 64 rows; those atomics aggregated per warp and bucket (a loop of ballots and reductions), 26.1.
// The tails' terms are within ~4e-6 of exp(z - keep_min) for |z| < 32 (the roundings of log2(e) / T, keep_min log2(e)
// and the exponent, and ex2.approx), and a CTA's fp32 sum of its ~65000 terms (a thread's, then its warps' in order;
// the listed logits' terms, at most 1 each, added and taken back by the same thread) within ~1e-5 of it: the total is
// off by less than ~1e-5 of the tail's part of it, against the 2^-32 (of the max's mass) of every fixed-point term and
// the CPU's fp32 walk. Exact fixed-point masses of the whole slice took a second pass over the logits (from L2): T,p
// at 64 rows 47.3 us against 35.6.
// The path it replaced ran the max exchange and three more cluster barriers (every CTA's masses and bins, the crossing
// bin's entries pushed to every CTA, the CTAs' best scores), ~12.8 us of a 64-row launch from the end of the lists;
// an earlier try at one barrier had every CTA copy its list into every other CTA's ex[1] (2048 entries: the bench's
// rows overflowed it, 64 rows 105 us on the radix path) and work on both lists. A 64-row T,p launch here before the
// pushes (%globaltimer,
// medians over CTA 0s, us after the wait; clock64 cycles at 1.98 GHz): lists done 14.9, the peer's list in 16.6, the
// masses and bins 17.9 (2600 cycles), the crossing bin 19.2 (2300), the verdict's fence 19.7 (1100), the crossing
// bin's entries gathered with the sure entries' bounds 22.3 (5600), the cut 23.6 (2500), the crossing bin's bounds
// 24.3, the contenders 25.9 (3000); the launch ends at 30.7 us a row. Every step is a few entries a thread and far
// slower than its instructions' latencies add up to; what stalls it is not known (ncu's stall samples of the finish
// were too few to tell). Measured and not kept: the chunk's Philox blocks formed for all its entries, taken or not, so
// that their chains overlap (64 rows 30.65 -> 31.09 us, the gather step as long); one entry at a time in every loop
// (no chunks; the crossing bin gathered in a pass of its own, the bounds in another): T,p at 48 / 64 / 96 rows 28.2 /
// 30.7 / 56.7 -> 28.3 / 29.3 / 56.2 us, but the one-rank kernel at 2 CTAs an SM then spilled 36 bytes, and T,k,p at
// 160 / 256 rows went 47.9 / 60.5 -> 50.1 / 63.4 (T,p 58.8 / 67.1 -> 58.5 / 69.6); as __noinline__, 122-170 bytes.
// One entry at a time in the mass loop and in the gather pass alone (no spill): T,p at 48 / 64 / 160 / 256 rows 28.3 /
// 30.8 / 58.4 / 67.1 -> 28.2 / 30.0 / 59.3 / 67.0 us.
// What bounds a 64-row T,p launch (as for unstaged_top_k): the load pass, the lists and CTA 1's list in CTA 0, then
// a token at once, 20.98 us (48 rows 19.8), against 28.73 (27.7) for the whole path: this finish costs ~7.7 us.
// ncu's warp-state samples by source line (one 64-row launch, --warp-sampling-interval 0): of this function's, 51% are
// warps waiting at a barrier while others work, 14% fixed-latency dependencies and 13% instruction fetch (no_inst:
// the finish's code is cold, run once a launch), against 3% over the kernel's lines after this function, the load
// pass's among them.
// At one CTA a row (8479ae6, H100, the bench's timing): a token right after the load pass took 35.5 / 39.0 / 66.1 /
// 129.0 us at 96 / 128 / 256 / 512 rows against 38.0 / 39.6 / 69.3 / 135.2 for the whole. With the load pass
// shortened (3 / 16 prefetched first, 1 batch ahead at one CTA an SM: prefetch_sixteenths, for_each_z), a token
// written at each step, at 80 / 128 / 256 rows: after the load pass 29.3 / 30.8 / 55.2, at this function's start 29.3
// / 31.1 / 55.1, after pass A 33.3 / 34.3 / 59.7, after the scan 34.3 / 35.4 / 60.8, after pass B 35.8 / 36.7 / 62.5,
// the whole 36.1 / 37.1 / 63.0: this finish now costs ~6.3 us at 128 rows, pass A the most. (The load pass with its
// list loop's work left out, timing only: 20.4 / 26.4 / 50.3 us, against a 28.6 us copy at 128 rows.) Measured and
// not kept: pass A's masses alone, then the scan, the bin that holds the cut, and the bounds of only the entries in it
// and before it (~1100 Philox blocks of a row's ~2870; two more CTA barriers and a pass over the entries), at 8479ae6
// 39.7 / 41.4 / 61.0 / 69.2 / 137.1 us at 96 / 128 / 192 / 256 / 512 rows against 38.0 / 39.6 / 60.7 / 69.3 / 135.2,
// and with the shorter load pass 38.0 / 38.8 / 64.8 / 125.9 at 80 / 128 / 256 / 512 rows against 36.3 / 37.1 / 62.9
// / 121.9: the Philox blocks are not what pass A waits on. Not tried: its five shared atomics an entry into the few
// crowded bins aggregated per warp and bin.
// At b6abeee, a CTA a row at two CTAs an SM, 256 rows (one wave), stamps (%globaltimer, thread 0 and each warp's lane
// 0 of every CTA, the bench's launch; medians, us): the warps' loops end 42.0 after the CTA's start (3.8 between the
// first and the last), then 2.1 to the lists kept, 0.6 to this function, pass A 4.1, the scan 1.6, pass B 1.1, warp
// 0's cut and token 0.7; the launch's last token at 60.4. With stand-in Gumbels in place of the Philox words (timing
// only), pass A took 2.3 and T,p at 256 / 512 rows 57.9 / 115.7 us against 60.4 / 114.5: here the Philox words and
// close Gumbels are ~1.9 us of pass A. Measured and not kept: each warp forming the close Gumbels of its range of the
// kept list right after its own keep (in ex[1], which top-p alone leaves unused; keep_lists_again's rows formed them
// again), so that the early warps form theirs while the last ones still load and pass A reads them. Pass A took 2.4,
// but the lists took 5.4 from the last warp's loop end (against 2.1): H100, the bench's timing, two runs, T,p at 96 /
// 128 / 256 / 512 / 1024 rows 31.7 / 34.7 / 62.2-62.3 / 116.3 / 212.5 us against 30.9 / 33.8-33.9 / 60.5-60.8 /
// 114.5-114.8 / 208.5-209.0, and at two CTAs an SM only 30.9 / 33.9 / 62.3-62.4 / 116.0-116.3 / 212.2-212.6.
// Also measured and not kept: top-p alone's bins in ex[0] and ex[1] (free on that path), cleared before its load pass
// (no clear and no barrier here) and with no counts (pass B counting the gathered entries, the capacity checked
// after it): stamps at 256 rows, pass A 4.1 -> 3.9 us and the scan 1.6 -> 1.4, but pass B 1.1 -> 1.4; three runs,
// T,p at 96 / 128 / 256 / 512 / 1024 rows 30.8-30.9 / 33.7-33.9 / 60.6-60.7 / 114.7-115.0 / 208.8-209.1 us against
// 30.9-31.0 / 33.8-34.0 / 60.5-60.7 / 114.5-114.9 / 208.8-208.9.
// ncu at 256 rows (source counters): this function issued ~15.5 K warp instructions a CTA, ~2.6 K of them each warp's
// own walk over the 16 warps' sums after the scan's barrier, and ~1 K the peer's entry addresses, formed at one rank
// too. Now a one-rank entry is a load of kept[]; the mass and the largest lower bound before each warp and the gathered
// count come from the lanes (lane w takes warp w's) by redux.sync, and the max and the invalid flag at the start by
// warp_best; the bins are cleared in 16-byte stores. H100, the bench's timing, T,p at 96 / 128 / 256 / 512 / 1024 rows,
// us, against 30.48-30.67 / 33.63-33.81 / 60.03-60.23 / 113.79-114.22 / 207.30-207.85: the one-rank entries 29.96-30.18
// / 33.19-33.25 / 59.52-59.90 / 113.00-113.15 / 206.32-206.54; with the warps' sums by redux.sync 29.70-29.87 /
// 32.89-33.21 / 59.15-59.34 / 112.46-112.70 / 205.00-205.33; with warp_best at the start 29.58-29.70 / 32.80-32.85 /
// 58.99-59.08 / 112.22-112.26 / 204.35-204.47; with the 16-byte clears 29.51-29.65 / 32.67-32.88 / 58.78-59.08 /
// 112.02-112.32 / 203.89-204.66. Then the lists' and the row's mass and the target formed by warp 0 alone (lane w
// takes warp w's sums) and read by every thread after the barrier that follows, in place of each warp's walk over the
// 16 warps: T,p at 256 / 512 / 1024 rows 58.79-58.92 / 111.96-112.04 / 203.97-204.28 -> 58.45-58.70 / 111.53-111.72 /
// 202.96-203.26 us. Measured and not kept: those sums by redux.sync in every warp (ptxas then spilled 28 bytes at two
// CTAs an SM: 60.41-60.45 / 115.85-115.95 / 213.27-213.30 at 256 / 512 / 1024 rows, though 29.38-29.40 / 32.57-32.67
// at 96 / 128), or in place of the sums before each warp (29.87-29.92 / 33.05-33.07 /
// 59.48-59.51 / 112.95-112.96 / 205.62-205.67); the bins cleared by filtered_sample before its last barrier, so that
// this function needs no barrier of its own at one rank (within 0.2 us either way). Stamps (a probe build, globaltimer
// at thread 0, median over the rows; 0.9 us slower at 256 rows) at 96 / 256 / 512 rows, us from the last warp's loop
// end: the keep 1.8 / 2.2 / 2.0, to this function 0.5 / 0.6 / 0.6, the bins' clear 0.5, pass A 2.7 / 2.7 / 2.9, the
// scan 0.9 / 0.9 / 1.0, pass B 0.8 / 0.8 / 0.9, warp 0 0.6 / 0.7 / 0.7. By count of its operations pass A is ~110
// instructions an entry (the Philox block ~45): at 96 rows (one CTA an SM, ~6 entries a lane) its 2.7 us is about half
// the issue rate of four warps a scheduler. Measured and not kept, T,p at 64 / 96 / 256 / 512 / 1024 rows against
// 20.92-20.94 / 29.36-29.37 / 58.54-58.59 / 111.59-111.61 / 203.09-203.15 us: the cut first (pass A the masses alone,
// the scan marking the bins past the cut, then the bounds only of the entries in the bins before it, and the largest
// lower bound of the bins kept whole in place of the bins' prefix; 24-54% of the bench's lists lie before the cut),
// 22.25-22.26 / 30.58-30.59 / 59.64-59.77 / 112.87-112.89 / 205.16-205.34: those entries are spread over every warp's
// lanes, so no warp skips a Philox block, and the passes add two barriers. Against 29.32-29.39 / 58.51-58.59 /
// 111.47-111.58 at 96 / 256 / 512 rows, pass A's Philox blocks formed outside the branch, two entries at a time,
// 29.69-29.70 / 59.04-59.09 / 112.37-112.52; four (ptxas spilled 8 bytes), 29.83-30.01 / 60.67-60.68 / 116.85-116.86.
// Returns true when this CTA is done (the token written); false, the same on every CTA, when a list overflowed, a z is
// invalid, the lists' mass above the row's floor falls short of the target, or the frontier's bins hold more than
// kGatherCapacity entries: the max exchange and the radix path follow (its levels clear the exchange buffers they use).
// scratch: the load pass's reached lists, free (32 KB or more).
template <int kRanks, int kCtasPerSm>
__device__ bool unstaged_top_p(const unsigned long long* kept, unsigned long long* scratch, uint32_t row,
                               const SampleArgs& a, cg::cluster_group& cluster, Shared& sh) {
    static_assert(kRanks <= 2, "one peer list fits CTA 0's exchange buffers");
    constexpr bool kKeptGumbels = kCtasPerSm == 1 && kRanks == 2;  // the lists' close Gumbels formed ahead (see above)
    // kKeptGumbels: this CTA's [kKeptCapacity] and CTA 0's copy of its peer's, after the lane lists (unstaged_smem).
    float* own_gumbels = reinterpret_cast<float*>(scratch + size_t(kLaneSlots) * kThreads);
    float* peer_gumbels = own_gumbels + kKeptCapacity;
    static_assert(2 * kMaxCandidates == kKeptCapacity, "the exchange buffers hold a whole kept list");
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    // Lane w < kWarps takes warp w's max z and whether it saw an invalid z; the tails' fp32 sum stays in warp order.
    float own_max = lane < kWarps ? sh.warp_value[lane] : -INFINITY, own_tail = 0.0f;
    int own_index = lane < kWarps ? sh.warp_index[lane] : INT_MAX;
    warp_best(own_max, own_index);
    const int own_bad = __any_sync(0xFFFFFFFFu, lane < kWarps && sh.warp_bad[lane]);
#pragma unroll 4
    for (int w = 0; w < kWarps; ++w) own_tail += sh.warp_tail[w];
    const int own_n = sh.kept <= kKeptCapacity ? sh.kept : -1;
    const float own_floor = sh.list_floor;
    if constexpr (kRanks > 1) {
        cluster_wait();  // (arrived after the first batch: CTA 0's exchange buffers are free)
        if (cluster.block_rank() != 0) {  // its list and PeerList into CTA 0 (push_u32), then the verdict
            const uint32_t leader_bar = peer_address(&sh.push_bar, 0);
            const int vectors = own_bad ? 0 : max(0, (own_n + 1) / 2);  // two entries a vector
            const int gumbel_vectors = kKeptGumbels && !own_bad ? (max(own_n, 0) + 3) / 4 : 0;
            if constexpr (kKeptGumbels)  // its close Gumbels first: CTA 0 forms its own meanwhile
                form_close_gumbels(kept, own_bad ? 0 : max(own_n, 0), row, a,
                                   [&](int i4, float4 g) {
                                       push_v4(peer_address(peer_gumbels + 4 * i4, 0),
                                               make_uint4(__float_as_uint(g.x), __float_as_uint(g.y),
                                                          __float_as_uint(g.z), __float_as_uint(g.w)),
                                               leader_bar);
                                   });
            const uint4* from = reinterpret_cast<const uint4*>(kept);
            for (int p = tid; p < vectors; p += kThreads)
                push_v4(peer_address(reinterpret_cast<uint4*>(sh.ex[2 * p / kMaxCandidates].hist) +
                                         p % (kMaxCandidates / 2), 0),
                        from[p], leader_bar);
            if (tid == 0) {
                const PeerList list{own_max, own_index, own_bad, own_n, own_floor, own_tail};
                static_assert(sizeof(PeerList) % sizeof(uint32_t) == 0, "pushed a word at a time");
                const uint32_t* words = reinterpret_cast<const uint32_t*>(&list);
                const uint32_t peer = peer_address(&sh.peer, 0);
#pragma unroll
                for (int w = 0; w < int(sizeof(PeerList) / sizeof(uint32_t)); ++w)
                    push_u32(peer + 4u * w, words[w], leader_bar);
                arrive_pushed(leader_bar, (vectors + gumbel_vectors) * sizeof(uint4) + sizeof(PeerList));
            }
            wait_pushed(&sh.push_bar);  // CTA 0's verdict has arrived
            return sh.verdict != 0;
        }
    }
    // CTA 0. scratch: the gathered entries [kGatherCapacity] (key, index, fixed-point mass, bin), the mass bins
    // [kMassBins] (count, mass; then the mass of the bins before, as high and low words), and their largest lower
    // bounds (keys, then the largest of the bins before) and upper bounds (keys, then whether gathered): see the finish
    // below.
    uint4* gathered = reinterpret_cast<uint4*>(scratch);                           // [kGatherCapacity]
    uint32_t* bin_count = reinterpret_cast<uint32_t*>(gathered + kGatherCapacity);  // [kMassBins] x 3
    const MassBins bins{bin_count, bin_count + kMassBins, bin_count + 2 * kMassBins};
    uint32_t* bin_lower = bin_count + 3 * kMassBins;                               // [kMassBins]
    uint32_t* bin_upper = bin_lower + kMassBins;                                   // [kMassBins]
    static_assert(kGatherCapacity * sizeof(uint4) + 5 * kMassBins * sizeof(uint32_t) <=
                      kWarps * kWarpReached * sizeof(uint2),
                  "scratch holds them");
    for (int i = tid; i < 5 * kMassBins / 4; i += kThreads)  // bins, bin_lower and bin_upper: 16-byte stores
        reinterpret_cast<uint4*>(bin_count)[i] = make_uint4(0u, 0u, 0u, 0u);
    if (tid == 0) sh.count = 0;
    PeerList peer{-INFINITY, INT_MAX, 0, 0, -INFINITY, 0.0f};
    if constexpr (kKeptGumbels)  // (usually while the peer's list is still on its way)
        form_close_gumbels(kept, own_bad ? 0 : max(own_n, 0), row, a,
                           [&](int i4, float4 g) { reinterpret_cast<float4*>(own_gumbels)[i4] = g; });
    __syncthreads();  // the bins are clear (and this CTA's close Gumbels formed)
    if constexpr (kRanks > 1) {
        wait_pushed(&sh.push_bar);  // the peer's list (and its close Gumbels) has arrived
        peer = sh.peer;
    }
    float zmax = own_max;
    int imax = own_index;
    take_better(zmax, imax, peer.value, peer.index);
    bool fast = !own_bad && !peer.bad && zmax > -INFINITY && own_n >= 0 && peer.n >= 0;
    const float row_floor = fmaxf(own_floor, peer.floor);
    const uint32_t floor_key = float_to_key(row_floor);
    const int n_own = max(own_n, 0), n = n_own + max(peer.n, 0);
    auto entry = [&](int i) {  // the peer's entry j in ex[j / kMaxCandidates]
        if constexpr (kRanks == 1) return kept[i];
        const int j = i - n_own;
        return j < 0 ? kept[i]
                     : reinterpret_cast<const unsigned long long*>(sh.ex[j / kMaxCandidates].hist)[j % kMaxCandidates];
    };
    // Entries i = tid + kThreads k of [0, n), kChunk a thread at a time, loaded first: visit(e, valid, i), warp-uniform
    // trips. Pairs take 3: H100, the bench's timing, two runs, T,p at 64 / 96 / 256 / 512 rows against 20.98-21.06 /
    // 29.45-29.51 / 58.46-58.69 / 111.49-111.74 us with 4 in pairs and at one rank alike: 3, 20.74-20.75 / 29.46-29.48
    // / 58.50-58.55 / 111.50-111.82; 2, 20.86-20.89 / 29.60-29.71 / 58.67-58.72 / 111.63-111.84; 8 spilled at two CTAs
    // an SM (56 bytes).
    constexpr int kChunk = kRanks > 1 ? 3 : 4;
    auto for_each_entry = [&](auto visit) {
        for (int first = tid - lane; first < n; first += kChunk * kThreads) {
            unsigned long long e[kChunk];
            bool valid[kChunk];
            int at[kChunk];
#pragma unroll
            for (int k = 0; k < kChunk; ++k) {
                at[k] = first + lane + k * kThreads;
                valid[k] = at[k] < n;
                e[k] = valid[k] ? entry(at[k]) : 0ull;
            }
            visit(e, valid, at);
        }
    };
    // The kept entries are those at or above the row's floor whose greater z leave the mass short of the target: M(> z)
    // < ceil(top_p * the row's mass), the cut that crossing_cut finds. The token is the kept entry of the best score,
    // which lies on the frontier of the entries ordered by z: no entry of a larger z scores more. Pass A adds the
    // masses and, per mass bin (by zmax - z, as crossing_mass_bin; non-increasing in z), the masses, counts and the
    // largest lower and upper bounds on a score (pass_a_bounds); a scan gives each bin the mass of the bins before it
    // and the largest lower bound there. An entry whose upper bound stays below that bound cannot be the token (an
    // entry of a larger z, so kept if it is, scores more): a bin whose largest upper bound reaches it holds the
    // frontier's entries, which pass B gathers with their bin-mates (a few bins, ~8 entries for the bench's rows). Warp
    // 0 then finds each frontier entry's M(> z) from its bin's prefix and its bin-mates, and the best kept score as
    // finish_top_k does: the entries whose upper bound reaches the largest kept lower bound contend, and double logs
    // only when more than one does.
    // Close bounds on the score of entry i, e (kKeptGumbels: from the Gumbels formed ahead, else its Philox word).
    auto bound_at = [&](unsigned long long e, int i) {
        const float z = key_to_float(candidate_key(e));
        if constexpr (kKeptGumbels)
            return bounds_of_close_gumbel(z, i < n_own ? own_gumbels[i] : peer_gumbels[i - n_own]);
        const int token = candidate_token(e);
        return close_score_bounds(z, word_of(philox_words(static_cast<uint32_t>(token / 4), row, a), token % 4));
    };
    // Pass A's bounds, which only pick the bins that hold the frontier: without kKeptGumbels, the reach's
    // (gumbel_reach: one lg2 in place of close_gumbel's two and its series; for u < 1/2 the upper bound is z + 0.69 +
    // slack, where g <= 0.37, and the lower -inf; above, 2w + 2e-3 apart). Warp 0 still takes close bounds for the
    // gathered entries. At one CTA a row (H100, the bench's timing, two runs), T,p at 96 / 128 / 256 / 512 / 1024 rows
    // 30.82 / 33.82-33.85 / 60.41-60.44 / 114.40-114.61 / 208.38-208.82 -> 30.65-30.68 / 33.68-33.70 / 60.07-60.14 /
    // 113.71-113.85 / 207.72-207.79 us; and with no atomicMax for a lower bound of -inf, 30.67-30.80 / 33.85-33.95 /
    // 60.25-60.31 / 113.85-114.11 / 207.74-207.82.
    auto pass_a_bounds = [&](unsigned long long e, int i, float z) {
        if constexpr (kKeptGumbels) return bound_at(e, i);
        const int token = candidate_token(e);
        const GumbelReach r = gumbel_reach(
            z + kReachShift, word_of(philox_words(static_cast<uint32_t>(token / 4), row, a), token % 4));
        return ScoreBounds{r.floor - score_slack(r.floor), score_upper(r.reach)};
    };
    unsigned long long target = 0, listed_mass = 0;
    int n_gathered = 0;
    if (fast) {
        unsigned long long mass = 0;
        for_each_entry([&](const unsigned long long (&e)[kChunk], const bool (&valid)[kChunk],
                           const int (&at)[kChunk]) {
#pragma unroll
            for (int k = 0; k < kChunk; ++k) {
                const uint32_t key = candidate_key(e[k]);
                const float v = key_to_float(key);
                const uint32_t m = valid[k] ? fixed_mass(v, zmax) : 0u;
                mass += m;
                if (valid[k] && key >= floor_key) {
                    const int b = mass_bin(v, zmax);
                    const ScoreBounds s = pass_a_bounds(e[k], at[k], v);
                    bins.add(b, m);
                    atomicMax(&bin_lower[b], float_to_key(s.lower));
                    atomicMax(&bin_upper[b], float_to_key(s.upper));
                }
            }
        });
        __syncthreads();  // the bins are complete
        // Thread t scans bins kBinsEach t, ... (from the max down): the warps' inclusive scans of the masses and of
        // the lower bounds, and their sums of the lists' masses, under one barrier.
        constexpr int kBinsEach = kMassBins / kThreads;
        unsigned long long own_mass[kBinsEach], inclusive = 0;
        uint32_t own_count[kBinsEach], own_lower[kBinsEach], inclusive_lower = 0;
#pragma unroll
        for (int j = 0; j < kBinsEach; ++j) {
            const int b = kBinsEach * tid + j;
            own_mass[j] = (static_cast<unsigned long long>(bins.high[b]) << 16) + bins.low[b];
            own_count[j] = bins.count[b], own_lower[j] = bin_lower[b];
            inclusive += own_mass[j], inclusive_lower = max(inclusive_lower, own_lower[j]);
        }
        const unsigned long long mine = inclusive;
#pragma unroll
        for (int offset = 1; offset < dsv4::kWarpSize; offset <<= 1) {
            const unsigned long long y = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
            const uint32_t y_lower = __shfl_up_sync(0xFFFFFFFFu, inclusive_lower, offset);
            if (lane >= offset) inclusive += y, inclusive_lower = max(inclusive_lower, y_lower);
            mass += __shfl_xor_sync(0xFFFFFFFFu, mass, offset);
        }
        uint32_t lower_before = __shfl_up_sync(0xFFFFFFFFu, inclusive_lower, 1);
        if (lane == 0) lower_before = 0u;
        if (lane == dsv4::kWarpSize - 1)
            sh.warp_scan[warp] = inclusive, sh.warp_bound[warp] = inclusive_lower, sh.warp_top[warp] = mass;
        __syncthreads();
        // Lane w < kWarps takes warp w's sums.
        unsigned long long mass_before = inclusive - mine + warp_mass(lane < warp ? sh.warp_scan[lane] : 0ull);
        lower_before = max(lower_before, __reduce_max_sync(0xFFFFFFFFu, lane < warp ? sh.warp_bound[lane] : 0u));
        uint32_t gathered_here = 0;
#pragma unroll
        for (int j = 0; j < kBinsEach; ++j) {
            const int b = kBinsEach * tid + j;
            const bool frontier = bin_upper[b] >= lower_before;
            gathered_here += frontier ? own_count[j] : 0u;
            bins.high[b] = static_cast<uint32_t>(mass_before >> 32), bins.low[b] = static_cast<uint32_t>(mass_before);
            bin_lower[b] = lower_before, bin_upper[b] = frontier;
            mass_before += own_mass[j], lower_before = max(lower_before, own_lower[j]);
        }
        const uint32_t warp_gathered = __reduce_add_sync(0xFFFFFFFFu, gathered_here);
        if (lane == 0) sh.warp_floor[warp] = warp_gathered;
        if (warp == 0) {  // the lists' mass and the target, for every warp (in sh.above and sh.crossing_target)
            const unsigned long long listed = warp_mass(lane < kWarps ? sh.warp_scan[lane] : 0ull);
            unsigned long long row_mass = warp_mass(lane < kWarps ? sh.warp_top[lane] : 0ull);
            // The tails: exp(floor - zmax) 2^31 per unit (0 when the floor lies 87 below the max).
            row_mass += __float2ull_rn(own_tail * (expf(sh.tail_floor - zmax) * kMassScale));
            if (kRanks > 1) row_mass += __float2ull_rn(peer.tail * (expf(peer.floor - zmax) * kMassScale));
            if (lane == 0)
                sh.above = listed,
                sh.crossing_target = static_cast<unsigned long long>(ceil(double(a.top_p) * double(row_mass)));
        }
        __syncthreads();
        listed_mass = sh.above, target = sh.crossing_target;
        n_gathered = static_cast<int>(__reduce_add_sync(0xFFFFFFFFu, lane < kWarps ? sh.warp_floor[lane] : 0u));
        fast = listed_mass >= target && n_gathered <= kGatherCapacity;
    }
    if (kRanks > 1 && tid == 0) {
        const uint32_t peer_bar = peer_address(&sh.push_bar, 1);
        push_u32(peer_address(&sh.verdict, 1), fast, peer_bar);
        arrive_pushed(peer_bar, sizeof(int));
    }
    if (!fast) return false;
    // Pass B: the entries of the bins that hold the frontier, as (key, index), with their masses and bins.
    const uint32_t below = (1u << lane) - 1u;
    for_each_entry([&](const unsigned long long (&e)[kChunk], const bool (&valid)[kChunk], const int (&at)[kChunk]) {
        uint32_t takers[kChunk];
        int bin[kChunk], taken = 0;
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
            const uint32_t key = candidate_key(e[k]);
            bin[k] = mass_bin(key_to_float(key), zmax);
            takers[k] = __ballot_sync(0xFFFFFFFFu, valid[k] && key >= floor_key && bin_upper[bin[k]] != 0u);
            taken += __popc(takers[k]);
        }
        int slot = 0;
        if (lane == 0 && taken > 0) slot = atomicAdd(&sh.count, taken);
        slot = __shfl_sync(0xFFFFFFFFu, slot, 0);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
            if ((takers[k] >> lane) & 1u) {
                const int i = slot + __popc(takers[k] & below);
                const uint32_t key = candidate_key(e[k]);
                gathered[i] = make_uint4(key, static_cast<uint32_t>(at[k]), fixed_mass(key_to_float(key), zmax),
                                         static_cast<uint32_t>(bin[k]));
            }
            slot += __popc(takers[k]);
        }
    });
    __syncthreads();
    if (warp != 0) return true;
    // Warp 0: lane l takes gathered entries l, l + 32, ... (at most kGatherCapacity / 32). frontier_kept: bit j of
    // its entry l + 32 j, a frontier entry that top-p keeps. best_lower: the largest lower bound of its kept entries
    // (a key), best_token that entry's token; upper_first, upper_second: the two largest upper bounds (keys).
    auto mass_before_bin = [&](uint32_t bin) {  // (listed_mass past the last bin)
        return bin < kMassBins ? (static_cast<unsigned long long>(bins.high[bin]) << 32) | bins.low[bin] : listed_mass;
    };
    uint32_t frontier_kept = 0u, best_lower = 0u, upper_first = 0u, upper_second = 0u;
    int best_token = INT_MAX;
    for (int i = lane, j = 0; i < n_gathered; i += dsv4::kWarpSize, ++j) {
        const uint4 own = gathered[i];
        const uint32_t key = own.x, b = own.w;
        const int index = static_cast<int>(own.y);
        const unsigned long long e = entry(index);
        const ScoreBounds s = bound_at(e, index);
        const uint32_t lower = float_to_key(s.lower), upper = float_to_key(s.upper);
        if (upper < bin_lower[b]) continue;  // an entry of a larger z scores more
        // M(> z) lies between the mass of the bins before b and of those up to b, less its own; only a bin that holds
        // the cut needs its bin-mates of greater z.
        unsigned long long above = mass_before_bin(b);
        const unsigned long long through = mass_before_bin(b + 1);
        if (above >= target) continue;  // below the cut
        if (through - own.z >= target) {
#pragma unroll 4
            for (int m = 0; m < n_gathered; ++m) {
                const uint4 other = gathered[m];
                above += other.w == b && other.x > key ? other.z : 0u;
            }
            if (above >= target) continue;
        }
        frontier_kept |= 1u << j;
        if (lower > best_lower || (lower == best_lower && candidate_token(e) < best_token))
            best_lower = lower, best_token = candidate_token(e);
        upper_second = max(upper_second, min(upper_first, upper));
        upper_first = max(upper_first, upper);
    }
    const uint32_t best_floor = __reduce_max_sync(0xFFFFFFFFu, best_lower);
    const uint32_t held = (upper_first >= best_floor) + (upper_second >= best_floor);
    int token = static_cast<int>(__reduce_min_sync(0xFFFFFFFFu, best_lower == best_floor
                                                                     ? static_cast<uint32_t>(best_token)
                                                                     : static_cast<uint32_t>(INT_MAX)));
    if (__reduce_add_sync(0xFFFFFFFFu, held) > 1) {  // the contenders' exact scores RN(z + g): the largest, lowest id
        float best = -INFINITY;
        int best_i = INT_MAX;
        for (int i = lane, j = 0; i < n_gathered; i += dsv4::kWarpSize, ++j) {
            if (!((frontier_kept >> j) & 1u)) continue;
            const int index = static_cast<int>(gathered[i].y);
            const unsigned long long e = entry(index);
            const float z = key_to_float(candidate_key(e));
            if (float_to_key(bound_at(e, index).upper) >= best_floor)
                take_better(best, best_i, __fadd_rn(z, gumbel(candidate_token(e), row, a)), candidate_token(e));
        }
        warp_best(best, best_i);
        token = best_i;
    }
    if (lane == 0) a.tokens[row] = token;
    return true;
}

// Temperature only: Gumbel-max over this CTA's slice in one pass over the logits, nothing staged. Each lane takes
// kGumbelBatch 16-byte vectors at a time (the next ones loading meanwhile) and forms their Philox blocks. A vector's
// reach comes first: gumbel_reach of (its largest logit * RN(1 / T), its largest Philox word), an upper bound on all 4
// of its scores (z' grows with the logit, g's bound with the word; the slack of that pair covers each token's, as
// score_slack grows with |v|). A step whose vectors' reaches, plus slack, all stay below the warp's threshold costs
// nothing more (3 of 4 steps at 64 rows of N(0, 3^2) logits, T = 0.8, when the threshold was the CTA's alone).
// Otherwise the step forms every token's reach and floor (no double logs). The threshold is the largest floor the row
// has seen (in such a step, every warp publishes its own into the shared memory of each CTA of the row's cluster, lane
// r an atomic into rank r's, whose results it does not wait for; each step it reads its own CTA's copy) or the best
// exact score the warp has formed: any token's floor bounds the row's best score from below, wherever the token lies.
// Then a token whose upper bound reaches the threshold (a tie included) goes on the warp's candidate list with that
// bound. When the list would overflow, and at the end (against the row's threshold then: usually one warp of the CTA
// has work left), the warp forms the exact scores of its candidates that still reach the threshold, one per lane (z by
// divide_by_temperature, g by double logs from the logit and Philox block fetched again). The pass runs over the
// slice's whole 16-byte vectors (a lane past the end takes the last one again: a duplicate of a real token, harmless to
// a maximum), and the slice's last n_local % 4 tokens, if any, are scored exactly, so the loop masks nothing.
// Per-token reaches in every step took 22.3 us at 64 rows; the vectors' reaches first, 20.9 (ncu: 10.0M -> 7.8M warp
// instructions), and with each vector's largest logit in place of its largest z', 20.7. Measured and not kept, 64 rows
// (the same run's reference in parentheses): floors in the first step only, raised later by the candidates' exact
// scores, 22.0 (22.2); the per-token pass only for the batch entries whose vectors reach, 21.7 (20.7); each warp taking
// its next steps from a shared counter, per CTA 22.8 or per row through rank 0's shared memory 23.7 (22.3); a ring of
// bulk copies (cp.async.bulk, 4 steps of 8 KB, mbarriers) in place of the register loads, 22.1 (20.7), 1 row 6.9
// (6.2); L2 prefetch of the next 4 steps in place of the whole slice, 20.4 (20.9) in one run and 21.0 (20.7) in
// another, 32 rows 15.5 (15.1); no prefetch, 22.8 (22.4); CTAs other than rank 0 leaving after their arrival at the
// closing barrier, 20.9 (20.9). The row's threshold in place of the CTA's (each warp's floors published into all 8
// CTAs): 64 rows 20.7 -> 18.7, 48 rows 18.1 -> 15.7, 32 rows 15.0 -> 14.0, 8 rows 6.7 -> 5.9, 1 row 6.1 -> 5.6;
// published into rank 0's copy only and read from there each step, 19.8 (20.7).
// z' is within an ulp of z for T in [kMinGumbelT, kMaxGumbelT] (RN(1 / T) is a normal float) unless the product
// overflows (an underflow costs less than the slack). A step with a NaN, an infinite or a huge reach (|z'| near
// 2^126 or beyond; the reach of -inf z' alone does not count) takes a per-thread detour: the exact z decides whether
// the row is invalid, and a finite z of a huge or infinite z' makes the token a candidate (reach +inf). A finite z
// whose z' overflowed to -inf (T < 1, |z| within an ulp of FLT_MAX) loses to every other finite score, so it matters
// only in a slice whose best is below -2^126 or missing: a warp that ends with no threshold above that scans its
// tokens again for such z.
// Returns this thread's best (exact score, lowest id on ties) and whether the CTA saw a NaN or +inf z.
constexpr int kWarpCandidates = dsv4::kWarpSize;
constexpr float kDetourFrom = 0x1p126f;
constexpr float kMinGumbelT = 0x1p-126f, kMaxGumbelT = 0x1p126f;  // other temperatures take the staged path

__device__ __forceinline__ float max_propagating_nan(float x, float y) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(y));
    return r;
}

// Greedy and temperature only: what a CTA shares (the staged path's Shared holds a row's exchange buffers, 16x more).
template <int kBlockWarps, int kRanks>
struct alignas(16) SharedUnstaged {
    uint32_t threshold_key;  // temperature only: float_to_key of the best lower bound on a score the row has published
    int bad;                 // a NaN or +inf z seen by this CTA (temperature only)
    // rank 0: every warp's best (value, lowest id) by rank and warp, and whether any CTA saw a NaN or +inf
    float winner_value[kRanks * kBlockWarps];
    int winner_index[kRanks * kBlockWarps];
    int winner_bad;
    // temperature only: each warp's candidate list, slice positions and upper bounds on their scores
    int candidates[kBlockWarps][kWarpCandidates];
    float candidate_upper[kBlockWarps][kWarpCandidates];
};

// This CTA's slice of its row (kRanks CTAs a row): tokens [begin, begin + n_local) (n_local is 0 for a CTA past the
// vocab).
struct Slice {
    int64_t row, begin;
    int n_local;
};
template <int kRanks>
__device__ __forceinline__ Slice this_slice(const SampleArgs& a) {
    const int64_t row = blockIdx.x / kRanks, begin = int64_t(cg::this_cluster().block_rank()) * a.slice;
    return {row, begin, static_cast<int>(max(int64_t(0), min(a.vocab - begin, a.slice)))};
}

template <int kBlockThreads, int kRanks, int kGumbelBatch>
__device__ void gumbel_pass(const SampleArgs& a, const Slice& slice,
                            SharedUnstaged<kBlockThreads / dsv4::kWarpSize, kRanks>& sh, float& best, int& best_i,
                            bool& bad) {
    constexpr int kStep = kGumbelBatch * kBlockThreads;  // vectors of the CTA per step
    const int lane = threadIdx.x % dsv4::kWarpSize, warp = threadIdx.x / dsv4::kWarpSize;
    int* candidates = sh.candidates[warp];
    float* candidate_upper = sh.candidate_upper[warp];
    const int64_t row = slice.row, begin = slice.begin;
    const int n_local = slice.n_local;
    const float* logits = a.logits + row * a.stride + begin;
    const float4* src = reinterpret_cast<const float4*>(logits);
    const float t = a.temperature, reciprocal_t = a.reciprocal_temperature;
    const bool moderate_t = t >= 0x1p-40f && t <= 0x1p40f;
    const uint32_t row32 = static_cast<uint32_t>(row), first_group = static_cast<uint32_t>(begin / 4);
    const int vectors = n_local / 4;  // whole vectors; the rest of the slice is scored exactly after the loop
    float floor_max = -INFINITY;      // the largest floor this lane has seen
    float threshold = -INFINITY;      // warp-uniform, as is count
    int count = 0;

    auto publish_threshold = [&] {
        if (lane < kRanks)  // lane r into rank r's copy (the row's CTAs are alive until the closing barrier)
            atomicMax(cg::this_cluster().map_shared_rank(&sh.threshold_key, lane), float_to_key(threshold));
    };
    auto take_row_threshold = [&] {  // a broadcast read; a value a step old is a lower bound all the same
        threshold = fmaxf(threshold, key_to_float(*reinterpret_cast<volatile uint32_t*>(&sh.threshold_key)));
    };
    auto take_token = [&](int j, float z) {  // z exact: the token's score, compared with this thread's best
        const uint32_t token = static_cast<uint32_t>(begin + j);
        take_better(best, best_i, __fadd_rn(z, gumbel(token, row32, a)), static_cast<int>(token));
    };
    auto evaluate_candidates = [&] {
        __syncwarp();
        if (lane < count && candidate_upper[lane] >= threshold) {
            const int j = candidates[lane];
            take_token(j, divide_by_temperature(__ldg(logits + j), t, reciprocal_t, moderate_t));
        }
        __syncwarp();
        count = 0;
        threshold = fmaxf(threshold, warp_max(best));
    };
    // The vectors of step `first` (first + b kBlockThreads, b < kGumbelBatch), clamped to the slice's whole vectors (a
    // lane past the end takes the last one again): unconditional loads, so that nothing waits for them before
    // score_step.
    auto vector_of = [&](int first, int b) { return min(first + b * kBlockThreads, vectors - 1); };
    auto load_step = [&](float4 (&loaded)[kGumbelBatch], int first) {
#pragma unroll
        for (int b = 0; b < kGumbelBatch; ++b) loaded[b] = __ldg(src + vector_of(first, b));
    };
    auto score_step = [&](const float4 (&loaded)[kGumbelBatch], int first) {
        uint4 words[kGumbelBatch];
        float vector_reach = -INFINITY;  // NaN if any logit is
#pragma unroll
        for (int b = 0; b < kGumbelBatch; ++b) {
            words[b] = philox_words(first_group + static_cast<uint32_t>(vector_of(first, b)), row32, a);
            const float e[4] = {loaded[b].x, loaded[b].y, loaded[b].z, loaded[b].w};
            const float e_max = max_propagating_nan(max_propagating_nan(e[0], e[1]), max_propagating_nan(e[2], e[3]));
            const uint32_t x_max = max(max(words[b].x, words[b].y), max(words[b].z, words[b].w));
            vector_reach = max_propagating_nan(
                vector_reach, gumbel_reach(fmaf(e_max, reciprocal_t, kReachShift), x_max).reach);
        }
        if (!__any_sync(0xFFFFFFFFu, score_upper(vector_reach) >= threshold ||
                                         (!(fabsf(vector_reach) < kDetourFrom) && vector_reach != -INFINITY))) {
            take_row_threshold();
            return;
        }
        float reach[kGumbelBatch][4];
        float reach_max = -INFINITY;  // NaN if any reach is
#pragma unroll
        for (int b = 0; b < kGumbelBatch; ++b) {
            const float e[4] = {loaded[b].x, loaded[b].y, loaded[b].z, loaded[b].w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const GumbelReach g = gumbel_reach(fmaf(e[c], reciprocal_t, kReachShift), word_of(words[b], c));
                reach[b][c] = g.reach;
                reach_max = max_propagating_nan(reach_max, g.reach);
                floor_max = fmaxf(floor_max, g.floor);
            }
        }
        if (!(fabsf(reach_max) < kDetourFrom) && reach_max != -INFINITY) {
            reach_max = -INFINITY;
#pragma unroll
            for (int b = 0; b < kGumbelBatch; ++b) {
                const float e[4] = {loaded[b].x, loaded[b].y, loaded[b].z, loaded[b].w};
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    if (!(fabsf(__fmul_rn(e[c], reciprocal_t)) < kDetourFrom)) {
                        const float z = fabsf(e[c]) < INFINITY ? __fdiv_rn(e[c], t) : __fmul_rn(e[c], reciprocal_t);
                        if (!(z < INFINITY)) sh.bad = 1;  // NaN or +inf (a register less in the loop)
                        reach[b][c] = z > -INFINITY ? INFINITY : -INFINITY;
                    }
                    reach_max = fmaxf(reach_max, reach[b][c]);
                }
            }
        }
        threshold = fmaxf(threshold, warp_max(floor_max - score_slack(floor_max)));
        publish_threshold();
        take_row_threshold();
        if (!__any_sync(0xFFFFFFFFu, score_upper(reach_max) >= threshold)) return;
        // Rare: the tokens whose upper bound reaches the threshold (bit 4 b + c) join the list, one a lane per round,
        // so that the list's overflow (and its double logs) is inlined once, not once per token of the step.
        uint32_t pending = 0u;
#pragma unroll
        for (int b = 0; b < kGumbelBatch; ++b) {
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (score_upper(reach[b][c]) >= threshold) pending |= 1u << (4 * b + c);
        }
        while (__any_sync(0xFFFFFFFFu, pending != 0u)) {
            const bool take = pending != 0u;
            const int bit = __ffs(pending) - 1;
            pending &= pending - 1u;
            const uint32_t takers = __ballot_sync(0xFFFFFFFFu, take);
            if (count + __popc(takers) > kWarpCandidates) evaluate_candidates();
            if (take) {
                float taken_reach = reach[0][0];
#pragma unroll
                for (int k = 1; k < 4 * kGumbelBatch; ++k)
                    if (bit == k) taken_reach = reach[k / 4][k % 4];
                const int at = count + __popc(takers & ((1u << lane) - 1u));
                candidates[at] = 4 * vector_of(first, bit / 4) + bit % 4;
                candidate_upper[at] = score_upper(taken_reach);
            }
            count += __popc(takers);
        }
    };

    // Two buffers in turn, so that the loads in flight need no register moves (a ring of cp.async stages in shared
    // memory, 3 steps ahead, measured slower: 64 rows 22.2 -> 24.3 us, more instructions and shared-memory waits). The
    // loop runs while the warp's first vector is in the slice, so every lane takes part in the collectives.
    float4 even[kGumbelBatch], odd[kGumbelBatch];
    int first = threadIdx.x;
    if (vectors > 0) load_step(even, first);
    cg::this_cluster().barrier_wait();  // the threshold's initial value (unstaged_sample), while the first loads fly
    while (first - lane < vectors) {
        load_step(odd, first + kStep);
        score_step(even, first);
        first += kStep;
        if (first - lane >= vectors) break;
        load_step(even, first + kStep);
        score_step(odd, first);
        first += kStep;
    }
    // The slice's last n_local % 4 tokens (the row's last CTA, when the vocab is not a multiple of 4), exactly.
    for (int j = 4 * vectors + threadIdx.x; j < n_local; j += kBlockThreads) {
        const float e = __ldg(logits + j);
        const float z = fabsf(e) < INFINITY ? __fdiv_rn(e, t) : __fmul_rn(e, reciprocal_t);
        if (!(z < INFINITY)) sh.bad = 1;
        else if (z > -INFINITY) take_token(j, z);
    }
    publish_threshold();
    __syncthreads();  // every warp has published its threshold and its invalid z
    take_row_threshold();
    bad = sh.bad;
    if (count > 0) evaluate_candidates();
    if (t < 1.0f && !(threshold > -kDetourFrom)) {  // see above: z' overflowed to -inf, z finite (rare)
        for (int j = threadIdx.x; j < n_local; j += kBlockThreads) {
            const float e = __ldg(logits + j);
            if (fabsf(e) < INFINITY && !(fabsf(__fmul_rn(e, reciprocal_t)) < INFINITY)) {
                const float z = __fdiv_rn(e, t);
                if (z > -INFINITY) take_token(j, z);
            }
        }
    }
}

// What a launch computes: greedy; temperature only (gumbel_pass, nothing staged); top-k and / or top-p, or an extreme
// temperature (z staged); top-p alone at one CTA a row (filtered_sample's kTopPAlone: its own instance, the floor in
// half digits).
enum class Mode { kGreedy, kTemperature, kFiltered, kTopP };

// Warm L2 with the first sixteenths / 16 of this CTA's slice while the previous kernel runs, in 4 KB requests (the
// last one rounded up to 16 bytes: inside the row's stride). Flash vocab on the H100, the whole slice against none:
// greedy 1 row 4.65 -> 4.35 us, T only 64 rows 43.9 -> 43.0 us, and the unstaged filtered paths at 64 rows T,k,p 21.4
// -> 20.7, T,p 31.1 -> 30.7. A whole slice is too much where the rows' CTAs fill the device: a CTA that starts long
// before the wait (a 48-row T,k,p trace: those that waited ~18 us) prefetches while the previous launch still reads
// its logits, and its loop then ran as slowly as a CTA's from DRAM (12.6 us against 10.5 for those that waited 2-6
// us); one that starts at the wait queues its first loads behind 258 KB of prefetches. The leading part gives the
// first loads their head start, and the loop's own loads fetch the rest. A plain read of 64 rows' logits in pairs of
// 512-thread CTAs took 12.6 us with the whole slice, 12.0 with none (from L2: 6.86, 5.98). Sixteenths per
// kernel (prefetch_sixteenths), swept at 1 / 32 / 48 / 64 / 128 rows on the H100, us, whole slice -> kept:
//   greedy, wide clusters (up to 40 rows) 6: 32 rows 10.2 -> 9.3; narrow CTAs 3: 48 / 64 / 128 rows 12.7 / 15.05 /
//     27.3 -> 11.35 / 14.85 / 25.3 (4 of 16: 14.98 at 64 rows);
//   T only, narrow CTAs 3: 48 / 128 rows 15.5 / 31.6 -> 13.85 / 30.85; pairs of CTAs 2: 64 rows 16.45 -> 14.4 (1: 14.6,
//     3 and 4: 14.55); wide clusters keep the whole slice (32 rows 14.0 against 14.25-14.4 with 1-4); a CTA a row 2
//     (launch_sample has the sweep);
//   T,k,p, unstaged at one CTA an SM, 9: 32 / 48 / 64 rows 19.2 / 18.9 / 20.6 -> 17.4 / 18.0 / 19.1 (6: 17.45 / 18.4 /
//     19.6, 8: 17.5 / 18.25 / 19.6, 10: 17.75 / 17.95 / 19.3; 10 with the next launch let in after the load pass, as
//     T,p does: 17.35 / 17.8 / 19.45, and the whole slice so: 17.5 / 18.2 / 20.1);
//   T,p, unstaged at one CTA an SM, 9 as well: with its finish as it is now, 32 / 48 / 64 rows 20.0-20.1 / 21.2 /
//     22.8-22.9 -> 20.0-20.1 / 20.7 / 22.6 (6: 20.1-20.3 / 21.1-21.3 / 22.9-23.0, 12: 20.1 / 20.8 / 23.1; two runs).
//     At 28.65 us a launch, with the finish it had then, it had kept the whole slice (3/4 28.85, 10/16 28.9, half
//     29.45, none 30.7); the staged filtered paths keep it (not measured otherwise); 1 row moved by none of these;
//   T,p at a CTA a row (Mode::kTopP) 3: its rows' logits outgrow L2 (50 MB) from ~100 rows on, so that the whole
//     slice of every CTA pushes out what others have prefetched; at 80 / 128 / 256 / 512 / 1024 rows, two runs, 37.5
//     / 39.6 / 69.4 / 135.4 / 267.8 -> 37.7 / 39.8 / 61.9 / 120.3 / 231.7 (none 38.3 / 40.7 / 64.0 / 122.2 / 232.2;
//     6: 37.6 / 39.6 / 62.4 / 122.2 / 238.0; 9: 37.7 / 39.5 / 63.2 / 125.5 / 248.0; 12: 37.6 / 39.4 / 65.7 / 129.9 /
//     258.2); with its list loop's prefetch ahead at one CTA an SM (for_each_z), at 80 / 112 / 128 / 132 rows 36.2 /
//     36.9 / 37.3 / 37.4 against the whole slice's 36.8 / 37.7 / 38.5 / 39.0 and none's 36.9 / 38.0 / 38.5 / 38.8.
//     At 133 / 160 rows (some SMs hold two rows) 55.1 / 57.9 -> 56.7 / 58.2, the row counts found slower. On its own
//     instance at one CTA an SM now (launch_sample), at 67 / 96 / 128 / 132 rows against 29.4-29.6 / 31.3-31.5 /
//     35.3-35.4 / 35.9-36.1: 6, 29.3-29.7 / 31.4 / 35.0-35.2 / 35.7-36.0 (within the noise); none, 30.7 / 33.5 / 38.7 /
//     39.5; whole, 30.2 / 31.8-32.0 / 37.5-37.6 / 38.4-38.5. Measured and not kept: its list loop's loads and ahead
//     prefetches with an L2 evict-first policy (createpolicy.fractional; so that the finish's cold code stays in L2),
//     at 80 / 128 / 256 / 512 rows 36.4 / 37.2 / 63.1 / 122.0 -> 36.6 / 37.4 / 61.5 / 119.4 (one run; the loads alone
//     36.2 / 37.2 / 62.2 / 120.7, the prefetches alone 36.6 / 37.5 / 62.3 / 120.5): nothing at one CTA an SM, where the
//     finish costs the most;
//   T,k,p unstaged at two CTAs an SM, in pairs (then 67-132 rows on the H100) 6 and at a CTA a row (past them, in waves
//     too: launch_sample) 3, for the same reason: 264 CTAs' whole slices are 68 MB in pairs, 136 MB at a CTA a row. The
//     bench's timing, two runs, at 100 / 128 / 133 / 160 / 200 / 264 / 265 / 320 / 400 / 512 / 1024 rows, whole slices
//     (a CTA a row up to 264 rows, pairs past them) 29.3 / 32.2 / 44.3-44.4 / 47.2 / 53.5-53.6 / 60.6-60.7 / 78.6-78.7
//     / 91.9-92.0 / 110.7-110.8 / 136.7-137.1 / 265.0-265.3 -> 27.8-27.9 / 30.5 / 39.2 / 41.3 / 46.1 / 52.8 / 72.4-72.6
//     / 77.7-77.8 / 90.5-90.7 / 100.6-100.7 / 195.9-196.0 us. 3 for both: 28.0 / 30.8 / 39.2 / 41.2-41.3 / 46.0-46.1 /
//     52.7-53.0 / 72.3 / 77.6 / 90.4 / 100.6-100.7 / 196.0-196.2; 6 for both: 27.8-27.9 / 30.5-30.6 / 39.6-39.7 / 41.9
//     / 47.0 / 53.9-54.0 / 71.8-71.9 / 80.0-80.1 / 93.0-93.1 / 106.3-106.6 / 210.1-210.5; 2 for both: 28.4 / 31.9-32.0
//     / 39.2-39.3 / 41.2 / 45.7-45.9 / 52.6 / 73.7 / 77.5-77.8 / 90.3-90.7 / 100.4-100.6 / 194.6-194.7; none, the CTAs
//     a row as they were, at 128 / 256 / 512 / 1024 rows: 32.4-32.5 / 53.2-53.3 / 116.8-116.9 / 218.7-219.0. The pairs
//     at two CTAs an SM are gone: a CTA a row at one CTA an SM took those rows (launch_sample), with 3 as well. 9, the
//     pairs' value at one CTA an SM: 67 / 96 / 100 / 128 / 132 rows 23.7 / 25.6-25.8 / 26.1 / 28.3-28.4 / 28.9 against
//     23.05-23.2 / 24.2-24.4 / 24.8-25.4 / 28.5 / 28.9-29.0 (two runs).
// Measured and not kept: the whole slice and the same slice of row (row + rows / 2) % rows, for the rows whose CTAs
// start late: slower everywhere (64 rows greedy 15.2 -> 17.65, T 16.5 -> 17.7, T,k,p 20.7 -> 20.9); T,k,p's leading
// 9 / 16 (or 6 / 16) and the rest prefetched once the first batch is counted: 32 / 48 / 64 rows 18.35 / 19.65 / 19.8
// (18.8 / 20.05 / 20.6) against 17.4 / 18.0 / 19.2 in the same run; with 9 / 16 and the next launch let in after the
// first batch, 18.05 / 17.9 / 19.05 against 17.4 / 17.95 / 19.15; 9 of every 16 pieces over the whole slice (the same
// bytes, spread), 18.7 / 18.35 / 19.0. The same launch with every logit already in L2 (one set of logits in place
// of the bench's rotating sets) took 17.5 us at 64 rows before any of this: what a perfect prefetch could give T,k,p.
// Its CTAs start in block order (a 64-row trace: blocks 0-7 waited ~17.6 us, 8-55 4.4-6.2 us and ended their loops at
// ~11.2, 56-127 under 4.2 and ended at ~12.6), but sixteenths by block (the first 16th of the grid 9, the rest of its
// first half 16, the second half 6) took 18.15 / 18.7 / 18.9 against 17.4 / 18.0 / 19.2 (first half 12, second 6:
// 17.65 / 18.4 / 19.4; 16 and 9: 18.65 / 19.15 / 19.3). Again with the pushes that shortened the finish
// (unstaged_top_k), T,k,p's 7 / 8 / 9 / 10 / 11 sixteenths at 32 / 48 / 64 rows: 17.1 / 17.95 / 19.25, 17.1 / 17.85 /
// 19.2, 17.1 / 17.65 / 18.85, 17.4 / 17.65 / 19.1, 17.9 / 17.95 / 19.25.
// Also measured and not kept (H100, the bench's timing, two runs each; us at 32 / 64 rows against 20.0-20.1 / 22.7-22.8
// for T,p): every logit load of the unstaged paths as ld.global.nc.L1::no_allocate with an L2 evict-first policy
// (createpolicy.fractional), so that the streamed logits would not push the finish's cold code out of L2 (ncu: 15%
// of T,p's stall samples wait on instruction fetch), with or without that policy on these prefetches: T,p 20.1-20.2
// / 23.0; T only at 32 rows 14.0 -> 15.65 (the next launch's prefetched lines go first). L1::no_allocate alone: T,p
// 20.0-20.1 / 23.0-23.1; T only at 32 rows 14.9.
constexpr int kPrefetchWhole = 16;
__device__ __forceinline__ void prefetch_slice(const SampleArgs& a, const Slice& slice, int sixteenths) {
    constexpr int64_t kPiece = 4096;
    const int64_t slice_bytes = 4 * int64_t(slice.n_local);
    const int64_t bytes = min(slice_bytes, (slice_bytes * sixteenths / kPrefetchWhole + kPiece - 1) / kPiece * kPiece);
    const char* first = reinterpret_cast<const char*>(a.logits + slice.row * a.stride + slice.begin);
    for (int64_t at = threadIdx.x * kPiece; at < bytes; at += blockDim.x * kPiece)
        dsv4::prefetch_l2_bulk(first + at, static_cast<uint32_t>((min(kPiece, bytes - at) + 15) & ~int64_t(15)));
}

// How much of its slice a CTA of this kernel prefetches (see prefetch_slice); lists: the filtered fast paths whose
// unstaged load pass lists logits (top-k with k <= kMaxCandidates, or top-p without top-k).
template <Mode kMode, int kBlockThreads, int kRanks, int kCtasPerSm>
__device__ __forceinline__ int prefetch_sixteenths(bool lists) {
    constexpr bool kNarrow = kBlockThreads == kNarrowThreads;
    if constexpr (kMode == Mode::kGreedy) return kNarrow ? 3 : 6;
    if constexpr (kMode == Mode::kTemperature) return kNarrow ? 3 : kRanks == kCluster ? kPrefetchWhole : 2;
    if constexpr (kMode == Mode::kTopP) return 3;
    if (kRanks != kCluster && lists) return kRanks == kWideBatchRanks ? 9 : 3;
    return kPrefetchWhole;
}

// Greedy and temperature only: one pass over the logits, nothing staged. Every warp's best goes straight into rank 0's
// winner slots (distributed shared memory), and one cluster barrier ends the launch.
template <bool kGreedy, int kBlockThreads, int kRanks, int kGumbelBatch>
__device__ void unstaged_sample(const SampleArgs& a) {
    constexpr int kBlockWarps = kBlockThreads / dsv4::kWarpSize;
    __shared__ SharedUnstaged<kBlockWarps, kRanks> sh;
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = static_cast<int>(cluster.block_rank());
    const int lane = threadIdx.x % dsv4::kWarpSize, warp = threadIdx.x / dsv4::kWarpSize;
    const Slice slice = this_slice<kRanks>(a);
    // Arriving at another barrier phase here publishes the initial values; its wait comes before their first use
    // (gumbel_pass's first threshold, or the winner slots), so nobody waits at the start. Before the prefetch, so that
    // the arrival's release has no bulk prefetch to wait for.
    if (threadIdx.x == 0) sh.threshold_key = float_to_key(-INFINITY), sh.bad = 0, sh.winner_bad = 0;
    cluster.barrier_arrive();
    prefetch_slice(a, slice,
                   prefetch_sixteenths<kGreedy ? Mode::kGreedy : Mode::kTemperature, kBlockThreads, kRanks, 1>(false));
    dsv4::await_previous_kernel();

    float best = -INFINITY;
    int best_i = INT_MAX;
    bool bad = false;
    if constexpr (kGreedy) {  // the max (lowest id on ties), kLoadBatch 16-byte loads a thread in flight
        // (The staged path's load loop has the same shape; one helper taking a lambda for both measured greedy at 64
        // rows 15.0 -> 15.6 us.)
        const float4* src = reinterpret_cast<const float4*>(a.logits + slice.row * a.stride + slice.begin);
        const int n_local = slice.n_local;
        for (int first = threadIdx.x; 4 * first < n_local; first += kLoadBatch * kBlockThreads) {
            float4 loaded[kLoadBatch];
#pragma unroll
            for (int b = 0; b < kLoadBatch; ++b) {
                const int v = first + b * kBlockThreads;
                loaded[b] = 4 * v < n_local ? __ldg(src + v) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int b = 0; b < kLoadBatch; ++b) {
                const int v = first + b * kBlockThreads;
                if (4 * v >= n_local) break;
                const float e[4] = {loaded[b].x, loaded[b].y, loaded[b].z, loaded[b].w};
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    if (4 * v + c < n_local) {  // the tail of the last vector lies inside the row's stride, unused
                        bad |= !(e[c] < INFINITY);  // NaN or +inf
                        if (e[c] > best) best = e[c], best_i = static_cast<int>(slice.begin) + 4 * v + c;
                    }
                }
            }
        }
        cluster.barrier_wait();  // (gumbel_pass waits before its first threshold)
    } else {
        gumbel_pass<kBlockThreads, kRanks, kGumbelBatch>(a, slice, sh, best, best_i, bad);
    }
    warp_best(best, best_i);
    bad = __any_sync(0xFFFFFFFFu, bad);
    if (lane == 0) {
        SharedUnstaged<kBlockWarps, kRanks>* leader = cluster.map_shared_rank(&sh, 0);
        leader->winner_value[rank * kBlockWarps + warp] = best;
        leader->winner_index[rank * kBlockWarps + warp] = best_i;
        if (bad) leader->winner_bad = 1;
        fence_cluster();
    }
    cluster_arrive_relaxed();
    cluster_wait();  // every warp's best has arrived, and no CTA leaves while others may still write to it
    if (rank == 0 && warp == 0) {
        float v = -INFINITY;
        int i = INT_MAX;
        for (int w = lane; w < kRanks * kBlockWarps; w += dsv4::kWarpSize)
            take_better(v, i, sh.winner_value[w], sh.winner_index[w]);
        warp_best(v, i);
        if (lane == 0) a.tokens[slice.row] = sh.winner_bad || v == -INFINITY ? -1 : i;
    }
}

// What keep_lists_again returns.
struct ListsKeptAgain {
    uint32_t raised;  // half digits
    float tail_mass;  // this thread's, with the z left out
};
// Top-p at one CTA a row (floors in half level-0 digits): a kept list that overflowed (the lists whole) is kept again
// from the next half digit up, its z there back in the tail at exp(z - keep_min) (tail_term stops at 1), until it fits
// (sh.kept is the overflowing count on entry). The tail stays in units of exp(keep_min) (sh.tail_floor). Against the
// radix path such a row takes ~140 us longer past one wave (launch_sample).
// entries (x, token): kLaneLists, this lane's slot j at entries[j kThreads] (the lane lists kept every listed z, those
// below keep_digit among them), and the CTA's spill list spill[spilled] (kept as the lanes' are); else the warp's
// list, entry i at entries[i] (kept from keep_digit up); j, i < listed.
template <bool kLaneLists>
__device__ __noinline__ ListsKeptAgain keep_lists_again(const uint2* entries, int listed, const uint2* spill,
                                                        int spilled, unsigned long long* kept,
                                                        uint32_t keep_digit, float t, float reciprocal_t,
                                                        bool moderate_t, float mass_slope, float mass_offset,
                                                        float tail_mass, Shared& sh) {
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize;
    uint32_t raised = 0;
    // A listed logit (valid: every lane calls) kept again if its digit reaches the raised floor; one left out for the
    // first time puts its term back in the tail.
    auto keep_again = [&](uint2 entry, bool valid) {
        const float x = valid ? __uint_as_float(entry.x) : -INFINITY;
        const float zz = divide_by_temperature(x, t, reciprocal_t, moderate_t);
        const uint32_t key = float_to_key(zz), digit = key >> kRowFloorShift;
        const bool keep = zz > -INFINITY && digit >= keep_digit + raised;
        const bool left_out_now = digit + 1 == keep_digit + raised || (kLaneLists && raised == 1 && digit < keep_digit);
        if (zz > -INFINITY && left_out_now) tail_mass += ex2_approx(fmaf(x, mass_slope, -mass_offset));
        const int at = warp_slot(keep, &sh.kept);
        if (keep && at < kKeptCapacity) kept[at] = candidate(key, entry.y);
    };
    for (int n = sh.kept; n > kKeptCapacity && n < kListLost && raised < kMaxFloorRaises; n = sh.kept) {
        __syncthreads();  // every thread has read sh.kept
        if (tid == 0) sh.kept = 0;
        __syncthreads();
        ++raised;
        if constexpr (kLaneLists) {
            const int steps = __reduce_max_sync(0xFFFFFFFFu, listed);
            for (int j = 0; j < steps; ++j)
                keep_again(j < listed ? entries[j * kThreads] : make_uint2(0u, 0u), j < listed);
            for (int i = tid; i - lane < spilled; i += kThreads)
                keep_again(i < spilled ? spill[i] : make_uint2(0u, 0u), i < spilled);
        } else {
            for (int i = lane; i - lane < listed; i += dsv4::kWarpSize)
                keep_again(i < listed ? entries[i] : make_uint2(0u, 0u), i < listed);
        }
        __syncthreads();
    }
    return {raised, tail_mass};
}

// Tickets of the CTAs that start on each SM (by %smid) in the first wave of a staggered launch, across launches: their
// parity gives the two CTAs of an SM different roles (stagger_first_wave).
constexpr int kMaxSmIds = 1024;
__device__ uint32_t g_first_wave_tickets[kMaxSmIds];
constexpr int64_t kFlashVocab = 129280;
constexpr int64_t kStaggerNsAtFlashVocab = 18000;  // the late CTAs' delay, in proportion to the vocab

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    return ns;
}

// Top-p alone at a CTA a row, two an SM, in waves: the CTAs of a wave load their rows together, then finish them (the
// cut and the token, ~14 us of ~55 at Flash vocab, no load in flight), so the DRAM idled ~10-12 us between waves, and
// CTAs that start as others end keep that lockstep. So in the first wave one CTA of each SM starts stagger_ns late;
// the later waves keep the offset, and one CTA's finish overlaps the other's loads. H100, the bench's timing, two
// runs, T,p at 300 / 400 / 512 / 768 / 1024 rows: 94.1-94.3 / 106.1-106.3 / 116.7-116.8 / 172.0-172.2 / 226.0-226.3
// us without; a delay of 10 us 90.4-90.6 / 105.9 / 116.4 / 167.0-167.3 / 216.2-216.4, 14 us 88.4-88.6 / 106.2-106.3
// / 115.5-115.6 / 163.1-163.5 / 211.2-211.4, 18 us 86.5-86.7 / 106.1-106.3 / 114.6-114.7 / 161.4-161.9 /
// 209.3-209.6, 24 us 86.9-87.1 / 110.0 / 119.7 / 167.7-167.9 / 215.7-215.8 (256 rows, one wave, not staggered:
// 60.6). Another run, at 300 / 512 / 768 / 1024 rows: 15 us 87.5 / 114.7-114.8 / 161.8-161.9 / 209.1-209.2, 18 us
// 86.0 / 114.3-114.4 / 160.7-160.9 / 208.3-208.4, 21 us 85.5 / 115.9 / 162.5-162.7 / 209.4. Measured and not kept: a
// fixed block range as the late half (CTAs 132-263, in place of the tickets), the same at 1024 rows but 118.3 against
// 114.6-115.0 at 512; a busy wait in place of __nanosleep, the same; T,k,p staggered by 18 us as well (its finish is
// shorter), at 300 / 512 / 1024 rows 73.5-73.7 / 104.7-104.9 / 194.7 against 76.2 / 100.7-100.9 / 196.1-196.2.
// Staggered within one wave as well (every CTA of 133-264 rows, one an SM late by 3 / 6 / 9 / 12 us; the late CTA's
// finish would run with the SM's issue slots to itself), two runs, T,p at 136 / 200 / 256 / 264 rows 48.9 / 54.4 /
// 60.0 / 60.9-61.0, 49.8-49.9 / 55.3-55.4 / 60.7-60.8 / 61.6-61.8, 50.9-51.0 / 56.3-56.5 / 61.4-61.6 / 62.2-62.3,
// 52.5-52.6 / 57.2-57.3 / 62.1-62.2 / 62.8-62.9 us against 47.3 / 53.3 / 58.6-58.7 / 59.4: a wave's loads end no
// earlier for it, so every delay lengthens the launch.
__device__ __forceinline__ void stagger_first_wave(const SampleArgs& a) {
    if (blockIdx.x >= a.stagger_ctas) return;
    if (threadIdx.x == 0) {
        uint32_t sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        if (atomicAdd(&g_first_wave_tickets[sm % kMaxSmIds], 1u) & 1u) {
            const unsigned long long start = global_ns();
            while (global_ns() - start < a.stagger_ns) __nanosleep(500);
        }
    }
    __syncthreads();
}

// Top-k and / or top-p, or an extreme temperature: kRanks CTAs of kThreads threads a row. With kCluster ranks (while
// the rows' clusters fit the device at once) the CTA's z is staged in shared memory. With kWideBatchRanks (beyond, for
// the top-k fast path and top-p alone: the staged CTAs run 2 an SM and 30 clusters of 8 fit the H100, so 64 rows took 3
// waves) nothing is staged: clusters of 2 fill all 132 SMs at one CTA an SM (a CTA a row past them, launch_sample), the
// load pass keeps the candidates in a list (see below), and a row that leaves the fast path (ties, a list that
// overflows, a nucleus below the list's floor) re-reads its slice's logits from L2 for every later pass. Top-p alone
// lets the next launch in (whose CTAs warm L2 with their own logits) only after its load pass: letting it in at the
// start measured 38.6 us at 64 rows against 35.6 (and with a second pass over the logits for the row's mass, 66.8
// against 58.8). The staged load and Gumbel-max loops are written out rather than run through for_each_z: measured
// faster (1 row T,k,p 12.4 -> 12.1 us, T,p 21.4 -> 20.9; 64 rows T,p 75.9 -> 74.3).
// kTopPAlone (Mode::kTopP, launched for top-p without top-k only): one CTA a row, the floor in half digits
// (kRowFloorShift), instances of its own (one and two CTAs an SM) so that the top-k path's code and registers stay as
// they were measured.
// (With the filters' flags constant in it, ptxas spilled 24 bytes; as run-time flags, none.)
template <int kRanks, int kCtasPerSm, bool kTopPAlone = false>
__device__ void filtered_sample(const SampleArgs& a) {
    static_assert(!kTopPAlone || kRanks == 1, "top-p alone has instances at one CTA a row");
    constexpr bool kStaged = kRanks == kCluster;
    // The load pass's lists: each lane's own (see below) in kSlots slots, past them (kSpills) the CTA's spill list.
    constexpr bool kLaneLists = !kStaged && (kCtasPerSm == 1 || kTopPAlone);
    constexpr int kSlots = kCtasPerSm == 1 ? kLaneSlots : kSharedSmLaneSlots;
    constexpr bool kSpills = kLaneLists && kCtasPerSm > 1;
    __shared__ Shared sh;
    extern __shared__ float4 z4[];  // kStaged: [slice / 4], this CTA's z
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = static_cast<int>(cluster.block_rank());
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const Slice slice = this_slice<kRanks>(a);
    const int64_t row = slice.row, begin = slice.begin;
    const int n_local = slice.n_local;
    const float t = a.temperature, reciprocal_t = a.reciprocal_temperature;
    const bool moderate_t = t >= 0x1p-40f && t <= 0x1p40f;
    const float4* logits = reinterpret_cast<const float4*>(a.logits + row * a.stride + begin);
    const SliceZ<false> from_logits{logits, n_local, t, reciprocal_t, moderate_t};
    const SliceZ<kStaged> z{kStaged ? z4 : logits, n_local, t, reciprocal_t, moderate_t};
    prefetch_slice(a, slice,
                   prefetch_sixteenths<kTopPAlone ? Mode::kTopP : Mode::kFiltered, kThreads, kRanks, kCtasPerSm>(
                       (a.top_k > 0 && a.top_k <= kMaxCandidates && a.top_k < a.vocab) ||
                       (!(a.top_k > 0 && a.top_k < a.vocab) && a.top_p < 1.0f)));
    // The unstaged top-p fast path lets the next launch in after its load pass (see above; at its start, as the other
    // paths do, with the whole slice prefetched: T,p at 32 / 48 / 64 rows 20.0-20.1 / 21.2 / 22.8-22.9 -> 23.5 /
    // 23.3-23.4 / 24.3 us). (top_k_active is formed below, after the wait: formed here and shared, both unstaged
    // paths measured 2 us slower at 31 and 64 rows, another register allocation.)
    const bool list_top_p = !kStaged && !(a.top_k > 0 && a.top_k < a.vocab) && a.top_p < 1.0f;
    if (list_top_p)
        dsv4::wait_previous_kernel();
    else
        dsv4::await_previous_kernel();
    if constexpr (kTopPAlone && kCtasPerSm == 2) stagger_first_wave(a);

    // The top-k fast path (small k): the load pass also builds the level-0 histogram. The top-p fast path (top-p
    // without top-k) tries a candidate search on masses after it.
    const bool top_k_active = a.top_k > 0 && a.top_k < a.vocab;
    const bool fast_top_k = top_k_active && a.top_k <= kMaxCandidates;
    const bool fast_top_p = kStaged && !top_k_active && a.top_p < 1.0f;
    // Unstaged, the top-p fast path keeps a list in the load pass as the top-k one does (see unstaged_top_p).
    const bool keeps_list = !kStaged && (fast_top_k || list_top_p);
    const bool counts_digits = fast_top_k || list_top_p;  // the load pass's digit histogram (unstaged: first batch)
    // Top-p at one CTA a row (kTopPAlone) and in pairs at one CTA an SM: the first batch's histogram and the floor in
    // half level-0 digits (kRowFloorShift; for the pairs see kListBudget).
    const bool half_digits = kTopPAlone || (kRanks > 1 && kCtasPerSm == 1 && list_top_p);
    const int floor_shift = half_digits ? kRowFloorShift : kLevel0Shift;
    uint32_t* const first_hist = &sh.ex[0].hist[0][0];  // [kBins], or [2 kBins] (half_digits) into ex[0].hist[1]
    int phase = 0;
    if (counts_digits) {
        for (int b = tid; b < (half_digits ? 2 * kBins : kBins); b += kThreads) first_hist[b] = 0u;
    }
    if (fast_top_k || fast_top_p || list_top_p) {
        if (tid == 0) {
            sh.count = 0, sh.gathered = 0, sh.kept = 0, sh.spilled = 0, sh.list_floor = -INFINITY;
            for (int r = 0; r < kMaxFloorRaises; ++r) sh.raise_count[r] = 0u;
            if (keeps_list && kRanks > 1) init_push_barrier(&sh.push_bar);
        }
        __syncthreads();
    }

    // 1. Load z (the tail of the last vector lies inside the row's stride and is not used: it becomes -inf, so the
    // Gumbel pass needs no bound check), and take the max z (lowest id on ties).
    float best = -INFINITY;
    int best_i = INT_MAX;
    bool bad = false;
    auto count_and_max = [&](float4 zv, int v) {
        const float e[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            if (4 * v + c < n_local) {
                bad |= !(e[c] < INFINITY);  // NaN or +inf
                if (e[c] > best) best = e[c], best_i = static_cast<int>(begin) + 4 * v + c;  // ids rise per thread
                if (counts_digits) atomicAdd(first_hist + (float_to_key(e[c]) >> floor_shift), 1u);
            }
        }
    };
    // Unstaged top-k fast path: with nothing staged, the push cannot pass over z again, so the load pass keeps (in
    // dynamic shared memory) every z whose digit reaches keep_digit, the digit of the k-th largest z among the CTA's
    // first batch of vectors: that is at most the digit d0 of the row's k-th largest, so the list holds every z the
    // push takes, and the level-0 histogram of the kept z is exact from keep_digit up, where candidate_digit looks.
    // Past the first batch a vector costs a compare of its largest logit with logit_floor (below it, no z reaches
    // keep_digit) and, where a lane's vector reaches it, a ballot per element: the logits that reach it go on the
    // warp's list as they are (no division in the loop, no divergence: N(0, 3^2) logits, T 0.8, k 50: 1.7% of the
    // logits reach the floor, so 89% of a warp's vectors hold one), and the warp divides and keeps them after the loop.
    // At one CTA an SM (kLaneLists), each lane lists its own: kLaneSlots slots a thread (96 KB), and per logit a
    // compare, a predicated store and an address step, no vote; after the loop, each lane's slot j in step j. A lane
    // with more than kLaneSlots sends the row to the radix path, as an overflowing warp's list does. Against the warps'
    // lists (H100, the bench's timing), T,k,p at 48 / 64 rows 17.82 / 19.07 -> 16.78 / 18.04 us, T,p 27.52 / 28.55 ->
    // 25.24 / 26.62 (87 registers against 94). Measured and not kept: every logit stored, unpredicated, to the lane's
    // next free slot (a sink slot past the last, where an overflowing lane's later logits land), T,k,p at 32 / 48 / 64
    // rows 16.21 / 16.86 / 18.01 -> 16.55 / 17.25 / 18.53 us, T,p 21.78 / 21.87 / 24.14 -> 21.63 / 21.90 / 24.26.
    // Top-p alone at two CTAs an SM (kSpills) lists each lane's own as well, in kSharedSmLaneSlots slots: while a lane
    // has a slot for each logit of the vector, a predicated store a logit with no bound check; else, in a branch of its
    // own, its last slots and then the CTA's spill list (an atomic a logit). A logit that finds the spill list full
    // sends the row to the radix path, as an overflowing lane does at one CTA an SM. Against the warps' lists (H100,
    // the bench's timing, two runs), T,p at 256 / 512 / 1024 rows 61.9-62.1 / 120.0-120.3 / 231.6-232.1 -> 60.5-60.9 /
    // 116.8-117.0 / 226.2-226.4 us; ncu at 1024 rows: 155 -> 129 M warp instructions (see launch_sample).
    // The floor rises (top-k): at the end of each batch of loads (for_each_z) every warp counts the logits its list
    // took in the batch that reach raise_at, the bound above which z lies in the digit over the floor's, into the CTA's
    // count for its floor (raise_count[raised], an atomic a warp), and reads back the total: once k logits are counted,
    // the CTA's own k-th largest z, and so the row's, lies in that digit or higher, and the warp's floor moves up a
    // digit (at most kMaxFloorRaises). A digit at or below the CTA's own k-th largest's keeps the path exact, as
    // keep_digit does: the lists hold every z from the highest floor a warp took up, whose digits' counts are then
    // exact and hold at least k z. The bench's rows rise one digit (2% of warps two), from z >= 8 to z >= 10 at T 0.8
    // (1.7% -> 0.4% of the logits reach it), at the end of the first (a quarter of the warps) or second batch of 8
    // vectors a thread. The lists' stores also take a shared address from a register (store_shared). Flash vocab on the
    // H100, us, before -> the stores alone -> both: T,k,p at 48 / 64 rows 23.2 / 24.0 -> 21.7 / 22.3 -> 21.0 / 21.8,
    // T,p (whose floor does not rise) 31.4 / 33.9 -> 29.9 / 32.1 -> 29.9 / 32.0; at 96 / 128 / 256 rows T,k,p 33.7 /
    // 36.7 / 74.0 -> 32.5 / 35.6 / 71.8 -> 32.2 / 35.4 / 72.1, T,p 58.5 / 47.3 / 94.4 -> 56.8 / 45.8 / 91.3 -> 57.2 /
    // 45.8 / 91.7. Measured and not kept (64 rows): the count per vector holding a logit at raise_at (a warp sum and an
    // atomic each; T,k,p 24.0 -> 25.3, before store_shared), per lane in the loop and summed at the batch's end (23.2),
    // also at half a batch (both: T,k,p 22.5, T,p 33.2: the raise comes earlier, the loop's code is worse), and one
    // loop for both filters with the floor's code skipped at run time for top-p (T,p 33.0: so the kernel at one CTA an
    // SM has a loop of each, while at two, where 64 registers spill more with two loops, T,p at 96 / 128 / 256 rows
    // measured 60.1 / 49.8 / 97.4).
    // Lists of each lane's own measured before (as kLaneLists but for both kernels' loops, NaN listed), Flash vocab on
    // the H100, 48 / 64 rows, us. 16 slots a lane in 64 KB more shared memory: T,k,p 19.15 / 20.87 -> 17.84 / 19.58,
    // but T,p 28.4 / 30.8 -> 47.2 / 67.8 (a lane of a CTA whose floor is one digit lower lists ~14: the overflow takes
    // the radix path); 24 slots (96 KB more): T,k,p 17.8 / 20.0, T,p 26.5 / 29.2. Slots shared by lanes l and l + 16
    // (one fills up, one down; 20 rows in the same 64 KB, the kept list cut to 3072) with top-p's floor at a 256th of a
    // digit (a list of ~1000 a CTA, as the pairs need): T,k,p 17.9 / 19.8, but T,p 80 / 110: a row whose nucleus
    // reaches below the larger of its CTAs' floors (each from 4096 z) takes the radix path, ~3x a fast row, and 1-2 of
    // the bench's 64 rows do; budgets of 1280 / 1408 trade those for pair overflows. Pairs for top-k only (warps' lists
    // for top-p, 72 KB): T,k,p 28.8 / 28.3; and lists of each lane's own for top-k only (15 slots and a sink a lane, 96
    // KB; a lane that reaches the sink lists its vectors again from L2; tests passed, with a planted overflow whose
    // mutant without the re-listing failed), warps' lists for top-p: T,k,p 28.9 / 28.0. Its stamps (64 rows, us after
    // the wait): warp 0's loop ends at 14.3 median, 16.9 p90, 20.4 max, against 12.0 / 12.8 / 13.5. Not the shared
    // memory: the same 96 KB with warps' lists alone took 19.0 / 20.7, as HEAD. In that kernel's SASS the one loop with
    // a batch of 8 loads is top-p's; loads as volatile asm (kept in order with the stores) left it as it was. So with a
    // loop of its own the lane listing loses what the fast variant (all modes in one loop) gained; why the compiler
    // builds it so is not known. (kLaneLists lists each lane's own in both loops of the one-CTA-an-SM kernel, top-k's
    // and top-p's.)
    // Measured and not kept: cheaper passes that only mark the vectors reaching the floor and list their logits after
    // the loop. Against this one before the rising floor and store_shared (Flash vocab, H100, us): T,k,p at 48 / 64
    // rows 23.2 / 24.1, T,p 31.5 / 33.9; at 96 / 128 / 256 rows T,k,p 33.8 / 36.7 / 74.0, T,p 58.6 / 47.4 / 94.5.
    // Stamps of a 64-row T,k,p launch timed as the bench times it (a graph of 64 launches over 8 sets, stamps stored to
    // global memory, not printed; medians over CTAs, us from the launch's first wait exit): this pass ends at 13.7, the
    // lists at 14.5, the launch at 21.4 (its slowest CTA 23.1, and the next launch's wait exit 25.2).
    //  - a bit a vector (64 a thread), the marked vectors read again from L2 onto the warps' lists, 4 or 8 a thread at
    //    a time: the pass ends at 10.1 but the lists at 13.5 (8 at a time). 4 at a time: T,k,p 22.4 / 23.8, T,p 29.7 /
    //    32.5 at 48 / 64 rows, but 96 / 128 / 256 rows T,k,p 36.7 / 41.6 / 82.7, T,p 60.9 / 54.9 / 107.3; 8 at a time:
    //    22.7 / 23.9 and 30.9 / 33.9, 96 / 128 / 256 rows T,k,p 40.0 / 45.2 / 87.7.
    //  - the marked vectors stored in a warp's area of shared memory (256 vectors, 128 at two CTAs an SM; past it, a
    //    bit a vector and a read from L2), then listed with one atomic a 128 logits: pass 11.0, lists 14.2-14.3 (~6000
    //    cycles to list ~80 vectors, clock64); T,k,p 23.0-23.2 / 23.4-23.5, T,p 30.9 / 33.4-33.6, but 96 / 128 / 256
    //    rows T,k,p 36.1 / 39.1 / 75.3, T,p 61.4 / 52.1 / 101.5.
    //  - the same area, its reaching logits moved into the kept list by one atomic a warp, then divided and kept by the
    //    CTA in thread order (a block scan, in place): lists 14.7; T,k,p 23.5-23.8 / 23.9, T,p 32.3 / 35.1.
    // The listing after the loop takes what the loop saves. ncu of that launch (cache control none): 9.4 M warp
    // instructions (~4600 a warp), stalls 32% fixed-latency dependencies ("wait"), 15% barriers, 12% short scoreboard,
    // 2% no instruction. The slowest CTAs, which set the launch's tail, are those whose first batch put the floor lower
    // (~140 marked vectors in a warp against a median of ~80).
    unsigned long long* kept = reinterpret_cast<unsigned long long*>(z4);  // [kKeptCapacity] (unstaged only)
    float tail_mass = 0.0f;  // unstaged top-p: this thread's part of the slice's mass off the kept list
    if constexpr (kStaged) {
        const float4* src = logits;
        for (int first = tid; 4 * first < n_local; first += kSampleLoadBatch * kThreads) {
            float4 loaded[kSampleLoadBatch];
#pragma unroll
            for (int b = 0; b < kSampleLoadBatch; ++b) {
                const int v = first + b * kThreads;
                loaded[b] = 4 * v < n_local ? __ldg(src + v) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int b = 0; b < kSampleLoadBatch; ++b) {
                const int v = first + b * kThreads;
                if (4 * v >= n_local) break;
                float e[4] = {loaded[b].x, loaded[b].y, loaded[b].z, loaded[b].w};
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const float zz = 4 * v + c >= n_local ? -INFINITY
                                                          : divide_by_temperature(e[c], t, reciprocal_t, moderate_t);
                    e[c] = zz;
                    if (4 * v + c < n_local) {
                        bad |= !(zz < INFINITY);  // NaN or +inf
                        if (zz > best) best = zz, best_i = static_cast<int>(begin) + 4 * v + c;  // ids rise per thread
                        if (fast_top_k) atomicAdd(&sh.ex[0].hist[0][float_to_key(zz) >> digit_shift(0)], 1u);
                    }
                }
                z4[v] = make_float4(e[0], e[1], e[2], e[3]);
            }
        }
    } else if (!keeps_list) {
        for_each_z(from_logits, count_and_max);
    } else {
        const int prefix = min(n_local, 4 * kFirstBatchVectors * kThreads);  // the first batch's tokens
        for_each_z(SliceZ<false>{logits, prefix, t, reciprocal_t, moderate_t}, count_and_max);
        // Top-p keeps the z whose digit reaches that of the first batch's kListBudget-th largest (kRowListBudget at
        // one CTA a row), scaled to the batch.
        const int64_t keep_rank =
            fast_top_k ? a.top_k
                       : (int64_t(kTopPAlone ? kRowListBudget : kListBudget) * prefix + n_local - 1) / max(n_local, 1);
        const uint32_t keep_digit =
            half_digits ? local_kth_digit<2 * kBins>(static_cast<unsigned long long>(keep_rank), sh)
                        : local_kth_digit<kBins>(static_cast<unsigned long long>(keep_rank), sh);
        // This CTA has started, and (top-p) its ex[] is free from here on: the wait at the start of unstaged_top_k /
        // unstaged_top_p matches this arrival, before their first write to another CTA (the reads are done: no fence).
        if (kRanks > 1) cluster_arrive_relaxed();
        // The least z of digit keep_digit (NaN below -inf's digit); a logit below logit_floor has a z below it.
        const float keep_min = key_to_float(keep_digit << floor_shift);
        float logit_floor, unused;
        const bool bounded = moderate_t && digit_logit_bounds(keep_digit, t, logit_floor, unused, floor_shift);
        if (tid == 0) sh.list_floor = keep_min, sh.tail_floor = keep_min;
        // Top-p: the mass of the slice's z off the list (z < keep_min), in units of exp(keep_min), as exp2 of
        // x log2(e) / T - keep_min log2(e) (see unstaged_top_p), so that the row's mass needs no second pass.
        const float mass_slope = kLog2e * reciprocal_t, mass_offset = keep_min * kLog2e;
        if (bounded) {
            if (fast_top_k)
                for (int b = tid; b < kBins; b += kThreads) sh.ex[0].hist[0][b] = 0u;  // recounted from the list below
            uint2* reached = reinterpret_cast<uint2*>(kept + kKeptCapacity) + warp * kWarpReached;  // (x, token)
            int n_reached = 0;  // the same on the warp's lanes still in the loop
            const uint32_t reached_at = dsv4::shared_address(reached);
            // kLaneLists: slot j of this thread at lane_slots[j kThreads] (x, token); the next at slot_at, which steps
            // on past end_slot once the lane's slots are full, so that it alone counts the lane's logits that reached
            // the floor (lane_reached). Against a count of its own beside it (two instructions a logit less in SASS),
            // H100, the bench's timing, T,k,p at 32 / 48 / 64 rows 16.18 / 16.75 / 17.97 -> 15.70 / 16.39 / 17.79 us,
            // T,p 21.47 / 21.86 / 24.13 -> 20.98 / 21.97 / 23.94. Measured on top of it and not kept (T,k,p 0.3-0.7
            // us slower at 32 / 48 / 64 rows, T,p within 0.3 either way): the step before the store (which then
            // takes its address one slot back, an immediate offset), and top-p's NaN found from its tail (NaN
            // terms, min.NaN) in place of the max of each vector; the listing step as one PTX block (predicated
            // store, then the step in place), T,k,p 0.1-0.25 us slower.
            const uint2* lane_slots = reinterpret_cast<const uint2*>(kept + kKeptCapacity) + tid;
            const uint32_t first_slot = dsv4::shared_address(lane_slots);
            const uint32_t end_slot = first_slot + 8u * kThreads * kSlots;
            // kSpills: the CTA's spill list [kSpillCapacity], after the lanes' slots
            uint2* const spill = reinterpret_cast<uint2*>(kept + kKeptCapacity) + kSlots * kThreads;
            uint32_t slot_at = first_slot;
            auto lane_reached = [&] { return static_cast<int>((slot_at - first_slot) / (8u * kThreads)); };
            // Top-k: the warp's floor rises from keep_digit to keep_digit + raised (see above).
            const unsigned long long k = static_cast<unsigned long long>(a.top_k);
            uint32_t raised = 0;  // the same on the warp's lanes still in the loop
            float raise_at;
            bool raising = fast_top_k && digit_logit_bounds(keep_digit + 1, t, unused, raise_at);
            int counted = 0;  // entries of the warp's list counted by raise_floor
            const SliceLogits<kCtasPerSm == 1 ? kWideLoadBatch : kSampleLoadBatch, kTopPAlone && kCtasPerSm == 1>
                slice_logits{logits, n_local};
            auto list_reaching = [&](float4 xv, int v) {  // (the first batch again, from L2)
                const float x_max =
                    max_propagating_nan(max_propagating_nan(xv.x, xv.y), max_propagating_nan(xv.z, xv.w));
                bad |= x_max != x_max;
                if (list_top_p) {
                    tail_mass += tail_term(xv.x, mass_slope, mass_offset) + tail_term(xv.y, mass_slope, mass_offset);
                    tail_mass += tail_term(xv.z, mass_slope, mass_offset) + tail_term(xv.w, mass_slope, mass_offset);
                }
                if constexpr (kSpills) {
                    if (slot_at + 3u * 8u * kThreads < end_slot) {  // a slot for each of the vector's logits
#pragma unroll
                        for (int c = 0; c < 4; ++c) {
                            const float x = c == 0 ? xv.x : c == 1 ? xv.y : c == 2 ? xv.z : xv.w;
                            const bool take = x >= logit_floor;
                            const uint32_t token = static_cast<uint32_t>(begin + 4 * v + c);
                            if (take) store_shared(slot_at, make_uint2(__float_as_uint(x), token));
                            slot_at += take ? 8u * kThreads : 0u;
                        }
                    } else {
                        // The lane's last slots, then the spill list; a logit that finds no room there moves slot_at
                        // past end_slot, which sends the row to the radix path (lane_reached() > kSlots).
#pragma unroll
                        for (int c = 0; c < 4; ++c) {
                            const float x = c == 0 ? xv.x : c == 1 ? xv.y : c == 2 ? xv.z : xv.w;
                            if (!(x >= logit_floor)) continue;
                            const uint2 entry =
                                make_uint2(__float_as_uint(x), static_cast<uint32_t>(begin + 4 * v + c));
                            if (slot_at < end_slot) {
                                store_shared(slot_at, entry);
                                slot_at += 8u * kThreads;
                            } else {
                                const int at = atomicAdd(&sh.spilled, 1);
                                if (at < kSpillCapacity)
                                    spill[at] = entry;
                                else
                                    slot_at = end_slot + 8u * kThreads;
                            }
                        }
                    }
                    return;
                } else if constexpr (kLaneLists) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const float x = c == 0 ? xv.x : c == 1 ? xv.y : c == 2 ? xv.z : xv.w;
                        const bool take = x >= logit_floor;
                        const uint32_t token = static_cast<uint32_t>(begin + 4 * v + c);
                        if (take && slot_at < end_slot) store_shared(slot_at, make_uint2(__float_as_uint(x), token));
                        slot_at += take ? 8u * kThreads : 0u;
                    }
                    return;
                }
                const uint32_t lanes = __activemask();  // (past the slice's end, lanes leave the loop)
                if (!__any_sync(lanes, x_max >= logit_floor)) return;  // the usual case for a lane
                const float e[4] = {xv.x, xv.y, xv.z, xv.w};
                bool reach[4];
                int reaching = 0;  // this lane's logits that reach the floor (the tail's -inf never does)
#pragma unroll
                for (int c = 0; c < 4; ++c) reach[c] = e[c] >= logit_floor, reaching += reach[c];
                // The lanes' slots in order, from the three bits of their counts: three ballots in place of four.
                const uint32_t below = (1u << lane) - 1u;
                const uint32_t ones = __ballot_sync(lanes, reaching & 1), twos = __ballot_sync(lanes, reaching & 2),
                               fours = __ballot_sync(lanes, reaching & 4);
                int at = n_reached + __popc(ones & below) + 2 * __popc(twos & below) + 4 * __popc(fours & below);
                n_reached += __popc(ones) + 2 * __popc(twos) + 4 * __popc(fours);
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    if (reach[c] && at < kWarpReached)
                        store_shared(reached_at + 8u * at,
                                     make_uint2(__float_as_uint(e[c]), static_cast<uint32_t>(begin + 4 * v + c)));
                    at += reach[c];
                }
            };
            auto raise_floor = [&] {  // at a batch's end
                if (!raising) return;
                const uint32_t lanes = __activemask();
                uint32_t mine = 0;
                if constexpr (kLaneLists) {
                    const int listed = min(lane_reached(), kSlots);
                    for (int j = counted; j < listed; ++j)
                        mine += __uint_as_float(lane_slots[j * kThreads].x) >= raise_at;
                    counted = listed;
                } else {
                    __syncwarp(lanes);  // the lanes' list entries are visible
                    const int listed = min(n_reached, kWarpReached);
                    for (int i = counted + lane; i < listed; i += dsv4::kWarpSize)
                        mine += __uint_as_float(reached[i].x) >= raise_at;
                    counted = listed;
                }
                const uint32_t above = __reduce_add_sync(lanes, mine);
                const int leader = __ffs(lanes) - 1;
                uint32_t seen = 0;
                if (lane == leader) seen = atomicAdd(&sh.raise_count[raised], above) + above;
                seen = __shfl_sync(lanes, seen, leader);
                if (seen < k) return;
                ++raised;  // raise_at was valid: so is the bound below the same digit
                digit_logit_bounds(keep_digit + raised, t, logit_floor, unused);
                raising = raised < kMaxFloorRaises && digit_logit_bounds(keep_digit + raised + 1, t, unused, raise_at);
            };
            if (kCtasPerSm > 1 || raising)  // (a loop of each at one CTA an SM: see above)
                for_each_z(slice_logits, list_reaching, raise_floor);
            else
                for_each_z(slice_logits, list_reaching);
            n_reached = __reduce_max_sync(0xFFFFFFFFu, n_reached);
            slice_logits.visit_partial(list_reaching);
            n_reached = __reduce_max_sync(0xFFFFFFFFu, n_reached);
            raised = __reduce_max_sync(0xFFFFFFFFu, raised);
            if (kLaneLists ? __any_sync(0xFFFFFFFFu, lane_reached() > kSlots) : n_reached > kWarpReached) {
                // Overflow: the list lost z, perhaps the max, a NaN or a +inf, which the max exchange and the radix
                // path after it need: the warp's threads take them from their vectors again (from L2).
                if (lane == 0) atomicAdd(&sh.kept, kListLost);
                for_each_z(from_logits, [&](float4 zv, int v) {
                    const float e[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
                    for (int c = 0; c < 4; ++c) {  // (past the slice, z is -inf)
                        bad |= 4 * v + c < n_local && !(e[c] < INFINITY);
                        if (e[c] > best) best = e[c], best_i = static_cast<int>(begin) + 4 * v + c;
                    }
                });
            }
            // Each listed logit divided, and kept when its digit reaches the warp's floor (else, top-p, its mass off
            // the list): every lane calls (warp_slot).
            auto divide_and_keep = [&](uint2 entry, bool valid) {
                const float zz = valid ? divide_by_temperature(__uint_as_float(entry.x), t, reciprocal_t, moderate_t)
                                       : -INFINITY;
                bad |= !(zz < INFINITY);
                take_better(best, best_i, zz, static_cast<int>(entry.y));
                const uint32_t key = float_to_key(zz);
                const bool keep = zz > -INFINITY && (key >> floor_shift) >= keep_digit + raised;
                const int at = warp_slot(keep, &sh.kept);
                if (keep && at < kKeptCapacity) kept[at] = candidate(key, entry.y);
                if (list_top_p && keep) tail_mass -= tail_term(__uint_as_float(entry.x), mass_slope, mass_offset);
            };
            // Top-p's lane lists (and spill list): a listed logit divided and kept at slot at, its term off the tail.
            auto keep_listed = [&](uint2 entry, int at) {
                tail_mass -= tail_term(__uint_as_float(entry.x), mass_slope, mass_offset);
                const float zz = divide_by_temperature(__uint_as_float(entry.x), t, reciprocal_t, moderate_t);
                bad |= !(zz < INFINITY);
                take_better(best, best_i, zz, static_cast<int>(entry.y));
                if (at < kKeptCapacity) kept[at] = candidate(float_to_key(zz), entry.y);
            };
            if constexpr (kLaneLists) {
                const int listed = min(lane_reached(), kSlots);
                if (list_top_p) {
                    // Top-p keeps every logit listed, each lane's at its offset in one range a warp (one atomic): a z
                    // listed below keep_min (within the rounding that logit_floor allows) adds its fixed-point mass
                    // to the row's in unstaged_top_p instead of its term to the tail, and lies below every floor
                    // there. Against divide_and_keep a step (a vote and an atomic each): T,p at 32 / 48 / 64 rows
                    // 22.73 / 22.74 / 24.91 -> 21.90 / 21.96 / 24.26 us. Measured and not kept: each lane's terms off
                    // its tail and its entries copied to their kept slots, then the warp's range divided and kept in
                    // place a slot a lane (~6 steps a warp in place of its longest lane list's ~11; no spill): T,p at
                    // 96 / 256 / 512 / 1024 rows 29.31-29.47 / 58.50-58.69 / 111.57-111.80 / 202.97-203.10 ->
                    // 29.09-29.19 / 58.60-58.89 / 111.76-111.95 / 202.86-202.95 us; this loop unrolled 2 or 4 times,
                    // within 0.2 us either way at 64 / 96 / 256 / 512 rows.
                    // The warp's lanes' listed logits before this lane's. (Written out: through warp_inclusive_sum the
                    // compiler schedules this kernel otherwise, not timed; as it is, its PTX is that measured.)
                    int before = listed;
#pragma unroll
                    for (int offset = 1; offset < dsv4::kWarpSize; offset <<= 1) {
                        const int y = __shfl_up_sync(0xFFFFFFFFu, before, offset);
                        if (lane >= offset) before += y;
                    }
                    const int warp_listed = __shfl_sync(0xFFFFFFFFu, before, dsv4::kWarpSize - 1);
                    before -= listed;
                    int at = 0;
                    if (lane == 0 && warp_listed > 0) at = atomicAdd(&sh.kept, warp_listed);
                    at = __shfl_sync(0xFFFFFFFFu, at, 0) + before;
                    for (int j = 0; j < listed; ++j, ++at) keep_listed(lane_slots[j * kThreads], at);
                } else {  // slot j of every lane in step j
                    const int steps = __reduce_max_sync(0xFFFFFFFFu, listed);
                    for (int j = 0; j < steps; ++j)
                        divide_and_keep(j < listed ? lane_slots[j * kThreads] : make_uint2(0u, 0u), j < listed);
                }
            } else {
                for (int i = lane; i - lane < min(n_reached, kWarpReached); i += dsv4::kWarpSize)
                    divide_and_keep(i < n_reached ? reached[i] : make_uint2(0u, 0u), i < n_reached);
            }
            __syncthreads();
            // The spill list, as the lanes' lists: top-p keeps every entry, top-k those reaching the floor.
            const int spilled = kSpills ? min(sh.spilled, kSpillCapacity) : 0;
            for (int i = tid; i - lane < spilled; i += kThreads) {
                const bool valid = i < spilled;
                const uint2 entry = valid ? spill[i] : make_uint2(0u, 0u);
                if (list_top_p) {
                    const int at = warp_slot(valid, &sh.kept);
                    if (valid) keep_listed(entry, at);
                } else {
                    divide_and_keep(entry, valid);
                }
            }
            if (spilled > 0) __syncthreads();
            if constexpr (kTopPAlone) {
                if (sh.kept > kKeptCapacity && sh.kept < kListLost) {
                    const ListsKeptAgain again =
                        keep_lists_again<kLaneLists>(kLaneLists ? lane_slots : reached,
                                                     kLaneLists ? min(lane_reached(), kSlots)
                                                                : min(n_reached, kWarpReached),
                                                     spill, spilled, kept, keep_digit, t, reciprocal_t, moderate_t,
                                                     mass_slope, mass_offset, tail_mass, sh);
                    raised = again.raised, tail_mass = again.tail_mass;
                }
                if (tid == 0) sh.list_floor = key_to_float((keep_digit + raised) << floor_shift);
            }
            // The kept z crowd a few bins: one atomic a warp per distinct digit.
            const int n_kept = !fast_top_k || sh.kept > kKeptCapacity ? 0 : sh.kept;  // (an overflow leaves the path)
            for (int i = tid; i - lane < n_kept; i += kThreads) {
                const uint32_t d = i < n_kept ? candidate_key(kept[i]) >> digit_shift(0) : UINT32_MAX;
                const uint32_t peers = __match_any_sync(0xFFFFFFFFu, d);
                if (i < n_kept && lane == __ffs(peers) - 1) atomicAdd(&sh.ex[0].hist[0][d], __popc(peers));
            }
        } else {  // -inf or no z at keep_digit, or an extreme T or z: the radix path, after the max
            for_each_z(from_logits, [&](float4 zv, int v) {
                if (4 * v >= prefix) count_and_max(zv, v);
            });
            if (tid == 0) sh.kept = kKeptCapacity + 1;
        }
    }
    if (list_top_p) dsv4::allow_next_kernel();  // the logits' last read on the fast path
    warp_best(best, best_i);
    bad = __any_sync(0xFFFFFFFFu, bad);
#pragma unroll
    for (int offset = dsv4::kWarpSize / 2; offset > 0 && list_top_p; offset >>= 1)
        tail_mass += __shfl_xor_sync(0xFFFFFFFFu, tail_mass, offset);
    if (lane == 0) {
        sh.warp_value[warp] = best, sh.warp_index[warp] = best_i, sh.warp_bad[warp] = bad;
        sh.warp_tail[warp] = tail_mass;
    }
    __syncthreads();
    if constexpr (!kStaged) {
        unsigned long long* scratch = kept + kKeptCapacity;  // the reached lists (warps' or lanes'), done with
        if (fast_top_k && unstaged_top_k<kRanks>(kept, scratch, static_cast<uint32_t>(row), a, cluster, sh)) return;
        if (list_top_p &&
            unstaged_top_p<kRanks, kCtasPerSm>(kept, scratch, static_cast<uint32_t>(row), a, cluster, sh))
            return;
    }
    if (tid == 0) {
        Exchange& mine = sh.ex[phase & 1];
        float v = -INFINITY;
        int i = INT_MAX, b = 0;
        for (int w = 0; w < kWarps; ++w) take_better(v, i, sh.warp_value[w], sh.warp_index[w]), b |= sh.warp_bad[w];
        mine.value = v, mine.index = i, mine.bad = b;
        if (!kStaged) mine.overflow = keeps_list && sh.kept > kKeptCapacity;
    }
    cluster.sync();
    if (warp == 0) {
        float v = -INFINITY;
        int i = INT_MAX, b = 0, o = 0;
        if (lane < kRanks) {
            const Exchange* remote = cluster.map_shared_rank(&sh.ex[phase & 1], lane);
            v = remote->value, i = remote->index, b = remote->bad, o = kStaged ? 0 : remote->overflow;
        }
        warp_best(v, i);
        b = __any_sync(0xFFFFFFFFu, b);
        o = __any_sync(0xFFFFFFFFu, o);
        if (lane == 0) sh.zmax = v, sh.imax = i, sh.bad = b || v == -INFINITY, sh.kept_overflow = o;
    }
    __syncthreads();
    ++phase;
    const float zmax = sh.zmax;
    const int imax = sh.imax;
    if (sh.bad) {
        if (rank == 0 && tid == 0) a.tokens[row] = -1;
        cluster.sync();  // no CTA leaves while another may still read its exchange buffer
        return;
    }
    const uint32_t row32 = static_cast<uint32_t>(row);

    // 2a. Fast paths. Top-k: every z with digit >= d0 (at most kMaxCandidates in the row) goes straight into CTA 0,
    // which finishes alone (finish_top_k). Top-p: the z of the crossing mass bin go to every CTA, each finds the same
    // cut among them, and 4 follows. A fallback to 2b-3 starts its radix levels at ex[1] (phase 1), which is
    // untouched until a fast path pushes.
    uint32_t digit;
    if (fast_top_k && !sh.kept_overflow &&
        candidate_digit<kRanks>(static_cast<unsigned long long>(a.top_k), zmax, cluster, sh, digit)) {
        if constexpr (kStaged)
            push_candidates<false>(
                z4, n_local, begin, [&](float v) { return (float_to_key(v) >> digit_shift(0)) >= digit; }, cluster, sh);
        else
            push_kept<kRanks>(kept, min(sh.kept, kKeptCapacity), digit, cluster, sh);
        if (rank != 0) return;
        const int token = finish_top_k(reinterpret_cast<unsigned long long*>(sh.ex[1].hist),
                                       reinterpret_cast<unsigned long long*>(sh.ex[0].hist), sh.count,
                                       Weights{row32, a, zmax}, sh);
        if (tid == 0) a.tokens[row] = token;
        return;
    }
    float threshold = -INFINITY;
    bool top_p_done = false;
    int bin;
    unsigned long long mass_above, target;
    if (fast_top_p && crossing_mass_bin(reinterpret_cast<const float*>(z4), n_local, zmax, a.top_p, cluster, sh, bin,
                                        mass_above, target)) {
        // Every z in bins < bin is kept; the cut lies among the z of the crossing bin, which every CTA gathers.
        push_candidates<true>(z4, n_local, begin, [&](float v) { return mass_bin(v, zmax) == bin; }, cluster, sh);
        const uint32_t cut = crossing_cut(reinterpret_cast<unsigned long long*>(sh.ex[1].hist),
                                          reinterpret_cast<unsigned long long*>(sh.ex[0].hist), sh.count, zmax,
                                          mass_above, target, sh);
        threshold = key_to_float(cut);
        top_p_done = true;
    }

    // 2b. top-k: keep z >= the k-th largest z.
    if (top_k_active) {
        uint32_t key;
        radix_select<false, kRanks>(z, -INFINITY, zmax, static_cast<unsigned long long>(a.top_k), 0.0f, phase,
                                    cluster, sh, key);
        threshold = key_to_float(key);
    }
    // 3. top-p among the kept tokens.
    if (a.top_p < 1.0f && !top_p_done) {
        uint32_t key;
        if (radix_select<true, kRanks>(z, threshold, zmax, 0ull, a.top_p, phase, cluster, sh, key))
            threshold = fmaxf(threshold, key_to_float(key));
    }

    // 4. Gumbel-max over z > -inf, z >= threshold, a 16-byte vector (one Philox block) at a time.
    const float bound = __fadd_rn(zmax, gumbel(static_cast<uint32_t>(imax), row32, a));
    best = -INFINITY;
    best_i = INT_MAX;
    auto gumbel_visit = [&](float4 zv, int v) {
        // A token whose score cannot reach the better of bound and this thread's best (a tie included) is skipped:
        // first by z + the largest g (-inf z, the slice's tail included, fails it: bound is finite; the vector's
        // block is skipped when all 4 do), then by z + an upper bound on its own g (Philox only, no double logs).
        const float e[4] = {zv.x, zv.y, zv.z, zv.w};
        const float to_beat = fmaxf(bound, best);
        bool live[4], any = false;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            live[c] = __fadd_rn(e[c], kGumbelBound) >= to_beat && e[c] >= threshold;
            any |= live[c];
        }
        if (!any) return;
        const int first_token = static_cast<int>(begin) + 4 * v;  // begin and the slice are multiples of 4
        const uint4 words = philox_words(static_cast<uint32_t>(first_token / 4), row32, a);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const uint32_t x = word_of(words, c);
            if (!live[c] || score_upper(gumbel_reach(e[c] + kReachShift, x).reach) < fmaxf(bound, best)) continue;
            take_better(best, best_i, __fadd_rn(e[c], gumbel_of_word(x)), first_token + c);
        }
    };
    if constexpr (kStaged) {
        for (int v = tid; 4 * v < n_local; v += kThreads) gumbel_visit(z4[v], v);
    } else {
        for_each_z(z, gumbel_visit);
    }
    warp_best(best, best_i);
    if (lane == 0) sh.warp_value[warp] = best, sh.warp_index[warp] = best_i;
    __syncthreads();
    if (tid == 0) {
        float v = -INFINITY;
        int i = INT_MAX;
        for (int w = 0; w < kWarps; ++w) take_better(v, i, sh.warp_value[w], sh.warp_index[w]);
        Shared* leader = cluster.map_shared_rank(&sh, 0);
        leader->cand_value[rank] = v;
        leader->cand_index[rank] = i;
        fence_cluster();
    }
    cluster_arrive_relaxed();
    cluster_wait();
    if (rank == 0 && tid == 0) {
        float v = -INFINITY;
        int i = INT_MAX;
        for (int r = 0; r < kRanks; ++r) take_better(v, i, sh.cand_value[r], sh.cand_index[r]);
        a.tokens[row] = i;
    }
}

// grid (batch * kRanks), clusters of kRanks along x, kBlockThreads threads (kThreads for kFiltered, whose histogram and
// scan code assumes it); dynamic shared memory = slice floats (kFiltered with kCluster ranks only). kCtasPerSm CTAs an
// SM: by default at most 64 registers a thread, 1024 threads an SM (2 CTAs of kThreads, 4 of kNarrowThreads); the
// unstaged filtered kernels and temperature only, in pairs or at a CTA a row, also come at one CTA an SM
// (launch_sample). More warps an SM measured slower for temperature only (5 CTAs of kNarrowThreads, 48 registers: 64
// rows 22.4 -> 23.8 us; 6, spilling: 29.8).
template <Mode kMode, int kBlockThreads, int kRanks = kCluster, int kCtasPerSm = 2048 / kBlockThreads / 2>
__global__ void __cluster_dims__(kRanks, 1, 1)
    __launch_bounds__(kBlockThreads, kCtasPerSm) sample_kernel(const SampleArgs a) {
    static_assert(kMode < Mode::kFiltered || kBlockThreads == kThreads, "the filtered paths run kThreads threads");
    static_assert(kMode >= Mode::kFiltered || kRanks == kCluster || (kMode == Mode::kTemperature && kCtasPerSm == 1),
                  "greedy runs kCluster ranks, temperature only kCluster or (at one CTA an SM) fewer");
    if constexpr (kMode == Mode::kFiltered)
        filtered_sample<kRanks, kCtasPerSm>(a);
    else if constexpr (kMode == Mode::kTopP)
        filtered_sample<kRanks, kCtasPerSm, true>(a);
    else
        unstaged_sample<kMode == Mode::kGreedy, kBlockThreads, kRanks, kRanks == kCluster ? kGumbelBatch
                                                                                         : kPairGumbelBatch>(a);
}

constexpr int64_t kMaxVocab = kCluster * kMaxSlice;          // 327680
constexpr int64_t kMaxBatch = (int64_t(INT32_MAX) / kCluster);  // grid.x = batch * kCluster

int check_shape(int64_t batch, int64_t vocab, int64_t logits_stride) {
    DSV4_CHECK_ARG(batch >= 0 && batch <= kMaxBatch, DSV4_ERR_SHAPE, "batch = %lld is not in [0, %lld]",
                   (long long)batch, (long long)kMaxBatch);
    DSV4_CHECK_ARG(vocab > 0 && vocab <= kMaxVocab, DSV4_ERR_SHAPE, "vocab = %lld is not in [1, %lld]",
                   (long long)vocab, (long long)kMaxVocab);
    DSV4_CHECK_ARG(logits_stride >= vocab && logits_stride % 4 == 0, DSV4_ERR_STRIDE,
                   "logits_stride = %lld is smaller than vocab = %lld or not a multiple of 4", (long long)logits_stride,
                   (long long)vocab);
    return DSV4_OK;
}

// The kernel's dynamic shared memory may exceed the default 48 KB: raise its limit to the largest slice, once per
// device (a plain host call, made before any launch the caller may be capturing into a graph).
constexpr int kMaxDevices = 64;
std::atomic<bool> g_smem_limit_set[kMaxDevices];
std::atomic<int> g_wide_clusters[kMaxDevices];      // 0: not queried yet
// The staged filtered kernel's resident clusters for the last dynamic shared memory size asked: bytes << 20 | clusters.
std::atomic<int64_t> g_staged_clusters[kMaxDevices];

int current_device(int& device) {
    DSV4_CHECK_CUDA(cudaGetDevice(&device));
    DSV4_CHECK_ARG(device >= 0 && device < kMaxDevices, DSV4_ERR_UNSUPPORTED, "device %d: at most %d devices", device,
                   kMaxDevices);
    return DSV4_OK;
}

int raise_smem_limit() {
    int device = 0;
    DSV4_RETURN_IF_FAILED(current_device(device));
    if (!g_smem_limit_set[device].load(std::memory_order_acquire)) {
        DSV4_CHECK_CUDA(cudaFuncSetAttribute(sample_kernel<Mode::kFiltered, kThreads>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kMaxSlice * sizeof(float))));
        for (auto kernel : {sample_kernel<Mode::kFiltered, kThreads, 1, 2>, sample_kernel<Mode::kTopP, kThreads, 1, 2>})
            DSV4_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(unstaged_smem(2))));
        for (auto kernel : {sample_kernel<Mode::kFiltered, kThreads, kWideBatchRanks, 1>,
                            sample_kernel<Mode::kFiltered, kThreads, 1, 1>, sample_kernel<Mode::kTopP, kThreads, 1, 1>})
            DSV4_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(unstaged_smem(1))));
        g_smem_limit_set[device].store(true, std::memory_order_release);
    }
    return DSV4_OK;
}

// How many clusters of `ranks` CTAs of kThreads threads (a row each) of `kernel` with smem bytes of dynamic shared
// memory the device holds at once, queried once per device into cache (a plain host call, after raise_smem_limit).
template <typename Kernel>
int clusters_resident(std::atomic<int> (&cache)[kMaxDevices], Kernel kernel, int ranks, size_t smem, int& clusters) {
    int device = 0;
    DSV4_RETURN_IF_FAILED(current_device(device));
    clusters = cache[device].load(std::memory_order_acquire);
    if (clusters == 0) {
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(ranks);
        config.blockDim = dim3(kThreads);
        config.dynamicSmemBytes = smem;
        DSV4_CHECK_CUDA(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
        clusters = max(clusters, 1);
        cache[device].store(clusters, std::memory_order_release);
    }
    return DSV4_OK;
}

// Greedy / temperature-only clusters of kThreads-thread CTAs (30 on the H100).
int wide_clusters_resident(int& clusters) {
    return clusters_resident(g_wide_clusters, sample_kernel<Mode::kTemperature, kThreads>, kCluster, 0, clusters);
}

// Rows of temperature only in pairs of CTAs, one an SM, that the device holds at once (66 on the H100).
int pair_rows_resident(int& rows) {
    static std::atomic<int> cache[kMaxDevices];  // 0: not queried yet
    return clusters_resident(cache, sample_kernel<Mode::kTemperature, kThreads, kWideBatchRanks, 1>, kWideBatchRanks,
                             0, rows);
}

// Rows of temperature only at a CTA a row, one an SM, that the device holds at once (132 on the H100).
int single_rows_resident(int& rows) {
    static std::atomic<int> cache[kMaxDevices];  // 0: not queried yet
    return clusters_resident(cache, sample_kernel<Mode::kTemperature, kThreads, 1, 1>, 1, 0, rows);
}

// Rows of an unstaged filtered kernel (kFiltered or kTopP), kRanks CTAs a row and kCtasPerSm an SM, that the device
// holds at once (H100: 66 for 2 and 1, 132 for 1 and 1).
template <Mode kMode, int kRanks, int kCtasPerSm>
int unstaged_rows_resident(int& rows) {
    static std::atomic<int> cache[kMaxDevices];  // 0: not queried yet
    return clusters_resident(cache, sample_kernel<kMode, kThreads, kRanks, kCtasPerSm>, kRanks,
                             unstaged_smem(kCtasPerSm), rows);
}

// Tokens per CTA with `ranks` CTAs a row: a multiple of 4 (16-byte aligned slices).
int64_t slice_of(int64_t vocab, int ranks) { return ((vocab + ranks - 1) / ranks + 3) / 4 * 4; }

// How many rows' clusters of the staged filtered kernel the device holds at once with smem bytes of z (30 on the H100
// at Flash vocab), once per device and size (a plain host call, like raise_smem_limit).
int staged_clusters_resident(size_t smem, int& clusters) {
    int device = 0;
    DSV4_RETURN_IF_FAILED(current_device(device));
    const int64_t cached = g_staged_clusters[device].load(std::memory_order_acquire);
    if (cached >> 20 == static_cast<int64_t>(smem) && cached != 0) {
        clusters = static_cast<int>(cached & 0xFFFFF);
        return DSV4_OK;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kCluster);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    DSV4_CHECK_CUDA(cudaOccupancyMaxActiveClusters(&clusters, sample_kernel<Mode::kFiltered, kThreads>, &config));
    clusters = min(max(clusters, 1), 0xFFFFF);
    g_staged_clusters[device].store(static_cast<int64_t>(smem) << 20 | clusters, std::memory_order_release);
    return DSV4_OK;
}

int launch_sample(SampleArgs args, int64_t batch, cudaStream_t stream) {
    const unsigned grid = static_cast<unsigned>(batch * kCluster);
    const bool filtered = (args.top_k > 0 && args.top_k < args.vocab) || args.top_p < 1.0f ||
                          args.temperature < kMinGumbelT || args.temperature > kMaxGumbelT;
    if (args.temperature == 0.0f || !filtered) {
        // Greedy and temperature only: kThreads threads a CTA while the rows' clusters (nearly) fit the device at
        // once; beyond, kNarrowThreads (twice the CTAs per SM, twice the steps per warp), which keeps more rows in
        // one wave. Flash vocab on the H100 (30 wide clusters resident), T only: 32 rows 17.9 (wide) vs 21.1 us,
        // 48 rows 26.4 vs 23.4 us, 64 rows 28.2 vs 26.9 us; greedy at 64 rows 16.6 vs 16.2 us.
        // Temperature only from 3/4 of the rows that pairs of CTAs hold at one CTA an SM, up to all of them: pairs
        // (kWideBatchRanks, as the unstaged filtered path; kPairGumbelBatch vectors a step). A plain read of 64 rows'
        // logits, timed as the bench times, took 14.9 us in 512 CTAs of 256 threads (4 an SM, as the narrow kernel)
        // and 12.6 in 128 of 512 at one an SM. T only at 41 / 48 / 56 / 64 rows, narrow against pairs: 14.1 / 15.5 /
        // 16.8 / 18.7 against 14.6 / 15.4 / 16.1 / 16.5 us. Clusters of 4 such CTAs at 8 / 16 / 24 / 32 rows: 8.1 /
        // 8.5 / 9.2 / 14.0 against 5.9 / 8.8 / 9.1 / 14.0 for the wide clusters of 8, so not kept.
        // Past the pairs, a CTA a row at one CTA an SM (no cluster; kPairGumbelBatch vectors a step, 2 / 16 of the row
        // prefetched) wherever its last wave leaves at most a quarter of the device's SMs idle (99-132, 231-264,
        // 363-396 rows ... on the H100), else the narrow CTAs. A wave of rows takes 22-26 us at any fill (an SM reads a
        // whole row), the narrow CTAs ~7 + 0.19 us a row. H100, the bench's timing, two runs, T only at 67 / 96 / 128 /
        // 132 / 133 / 192 / 256 / 512 / 1024 rows, narrow CTAs against a CTA a row: 20.1 / 25.1-25.2 / 31.4-31.6 /
        // 32.4-32.5 / 32.6-32.7 / 43.6 / 55.5-55.7 / 104.1-104.3 / 201.6-201.8 against 22.1-22.2 / 22.6 / 25.8 /
        // 26.2-26.3 / 44.4 / 46.8-46.9 / 50.5-50.6 / 99.6-99.7 / 195.9 us (the same-bytes copy at 128 rows: 24.0). The
        // whole row prefetched instead: 25.2-25.3 / 26.6-26.7 / 30.0-30.2 / 30.7 / 45.4 / 55.2 / 61.6-61.7 /
        // 125.6-125.8 / 240.9-241.2; 6 / 16: 23.2-23.3 / 23.5-23.6 / 25.9-26.0 / 26.4 / 43.2-43.3 / 47.5-47.6 / 52.1 /
        // 100.8-100.9 / 190.5-190.7; at 99 / 128 / 232 / 256 / 512 / 1024 rows, 1 / 16: 22.5-23.0 / 25.6 / 47.3-47.4 /
        // 50.4-50.5 / 99.1-99.3 / 195.5-195.6, 4 / 16: 22.9-23.0 / 25.6 / 48.4-48.5 / 51.4 / 99.7-99.9 / 192.4-192.6,
        // against 2 / 16's 22.7 / 25.7-25.8 / 47.7-47.9 / 50.5-50.7 / 99.6-99.7 / 195.7-195.8.
        // Measured and not built: pairs at two CTAs an SM (64 registers: ptxas spills 108 bytes) past the rows of one
        // CTA an SM, T only at 128 / 192 / 256 / 512 / 1024 rows 31.30 / 43.49 / 55.49 / 104.0 / 201.6 -> 30.13 /
        // 50.63 / 57.11 / 109.1 / 207.0 us (H100, two runs), against the narrow CTAs then.
        int wide_clusters = 0, pair_rows = 0, single_rows = 0;
        DSV4_RETURN_IF_FAILED(wide_clusters_resident(wide_clusters));
        const bool narrow = 3 * batch > 4 * int64_t(wide_clusters);
        const int threads = narrow ? kNarrowThreads : kThreads;
        const bool greedy = args.temperature == 0.0f;
        if (!greedy && narrow) {
            DSV4_RETURN_IF_FAILED(pair_rows_resident(pair_rows));
            DSV4_RETURN_IF_FAILED(single_rows_resident(single_rows));
        }
        if (!greedy && narrow && 4 * batch >= 3 * int64_t(pair_rows) && batch <= pair_rows) {
            args.slice = slice_of(args.vocab, kWideBatchRanks);
            DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious,
                                                  sample_kernel<Mode::kTemperature, kThreads, kWideBatchRanks, 1>,
                                                  static_cast<unsigned>(batch * kWideBatchRanks), kThreads, 0, stream,
                                                  args));
            return DSV4_OK;
        }
        const int64_t single_waves = (batch + single_rows - 1) / max(single_rows, 1);
        if (!greedy && narrow && batch > pair_rows && 4 * (single_waves * single_rows - batch) <= single_rows) {
            args.slice = slice_of(args.vocab, 1);
            DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious,
                                                  sample_kernel<Mode::kTemperature, kThreads, 1, 1>,
                                                  static_cast<unsigned>(batch), kThreads, 0, stream, args));
            return DSV4_OK;
        }
        auto kernel = greedy ? (narrow ? sample_kernel<Mode::kGreedy, kNarrowThreads>
                                       : sample_kernel<Mode::kGreedy, kThreads>)
                             : (narrow ? sample_kernel<Mode::kTemperature, kNarrowThreads>
                                       : sample_kernel<Mode::kTemperature, kThreads>);
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, kernel, grid, threads, 0, stream, args));
        return DSV4_OK;
    }
    // Filtered: z staged while the rows' clusters of 8 fit the device at once; beyond, for the top-k fast path and for
    // top-p alone, unstaged clusters of kWideBatchRanks or single CTAs (filtered_sample). Measured and not kept: every
    // filtered case unstaged beyond 30 rows, top-p alone by the radix path then, clusters of 4 (62 rows a wave: T,k,p
    // at 64 rows 46.8 us, T,p 109.3), or of 2 (T,p at 31 / 64 rows 84.7 / 95.1 us against 49.6 / 79.0 staged: each pass
    // over 64640 z in one CTA costs ~15 us of issue); the unstaged top-k path with every z divided and counted in the
    // load pass (64 rows 36.4 us), or a per-lane branch to the kept list instead of the warps' lists (33.6-38.1 us: a
    // warp's vectors hold a logit above the floor 89% of the time); top-p's floor at the digit where the first batch's
    // own masses cross top_p (the batch lacks the row's top z, so that digit lies well below the cut: at N(0, 3^2)
    // logits every row overflowed its warps' lists and took the radix path, 64 rows 120.8 us). A budget of 2048 z a CTA
    // instead of kListBudget, checked on the bench's rows in NumPy only: lists of ~3500 z, whose warps' lists overflow.
    DSV4_RETURN_IF_FAILED(raise_smem_limit());
    const size_t smem = static_cast<size_t>(args.slice) * sizeof(float);
    int staged_clusters = 0;
    DSV4_RETURN_IF_FAILED(staged_clusters_resident(smem, staged_clusters));
    const bool top_k_active = args.top_k > 0 && args.top_k < args.vocab;
    const bool fast_top_k = top_k_active && args.top_k <= kMaxCandidates;
    if (batch <= staged_clusters || !(fast_top_k || !top_k_active)) {  // (filtered without top-k: top-p)
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, sample_kernel<Mode::kFiltered, kThreads>,
                                              grid, kThreads, smem, stream, args));
        return DSV4_OK;
    }
    // Unstaged, both fast paths alike: pairs of CTAs at one CTA an SM (up to 128 registers, kWideLoadBatch loads in
    // flight) while they fit the device at once (66 rows on the H100), then a CTA a row at one CTA an SM while those
    // fit (132), then a CTA a row at two an SM, in waves. The top-k path took pairs at two CTAs an SM in place of the
    // middle range (67-132 rows) until a CTA a row at one an SM measured faster there, with 3 / 16 of the slice
    // prefetched (prefetch_sixteenths; H100, the bench's timing, two runs): T,k,p at 67 / 96 / 100 / 128 / 132 rows
    // 26.05-26.10 / 27.62-27.65 / 27.78-27.80 / 30.42-30.45 / 31.07-31.15 -> 23.05-23.19 / 24.24-24.39 / 24.82-25.40 /
    // 28.47-28.49 / 28.93-28.95 us (64 and 133 rows unchanged). On older code a CTA a row had measured slower than
    // pairs at 32 / 64 / 96 rows (below). Measured and not kept: a CTA a row at one CTA an SM in waves too (as
    // temperature only runs, where its waves are full), at 133 / 192 / 256 / 396 / 512 / 1024 rows, two runs, T,k,p
    // 39.2-39.3 / 45.0-45.1 / 51.7-51.8 / 89.8 / 100.7 / 195.8-196.1 -> 46.6 / 49.4 / 55.8 / 84.0 / 108.7 / 211.6-211.8
    // us, T,p 55.1-55.2 / 57.9-58.2 / 61.9-62.1 / 96.2 / 120.0 / 231.7-231.9 -> 56.1-56.3 / 57.6 / 66.7-66.9 /
    // 100.4-100.7 / 128.1-128.5 / 248.7-249.0.
    // Flash vocab on the H100, us, one CTA an SM against two: T,k,p at 48 rows 25.0 against 28.2, at 64 rows 26.5
    // against 30.6; T,p 32.3 against 34.2 and 34.9 against 35.6. One CTA an SM past that (two waves), at 96 / 128 / 256
    // rows, T,k,p took 48.7 / 52.0 / 97.9 against 37.8 / 40.9 / 82.7. 12 or 16 loads in flight a thread measured slower
    // (T,k,p at 64 rows 27.0, 27.7), as did no L2 prefetch of the slice (28.3) or one that leaves out the first batch
    // (28.1).
    // Past the rows that clusters of kWideBatchRanks hold at two CTAs an SM (one wave), and while the rows fit one wave
    // at a CTA a row (two an SM), a row takes one CTA (kWideBatchRanks = 2 against 1, us): T,k,p at 133 / 160 / 200 /
    // 264 rows 48.9 / 58.4 / 66.9 / 72.7 against 48.3 / 49.9 / 54.3 / 64.8, T,p 69.4 / 71.1 / 83.8 / 93.0 against 64.4
    // / 65.5 / 69.4 / 75.6. Both in two waves or more, a CTA a row measured slower for T,p (320 / 512 / 1024 rows 162.6
    // / 227.1 / 348.1 against 195.2 / 293.1 / 442.5) and either way for T,k,p (96.1 / 146.0 / 277.3 against 102.9 /
    // 129.7 / 267.8); below, at a CTA an SM, slower at 32 / 64 / 96 rows (T,k,p 20.7 / 21.5 / 31.4 against 28.4 / 30.9
    // / 33.1).
    // T,p at a CTA a row from 67 rows on: 80 / 112 / 128 rows 39.7 / 40.4 / 42.3 -> 36.3 / 37.8 / 38.8 us, but the
    // bench's 96-row set with a row off the fast path (kListBudget) 54.8 -> 74.3: one CTA takes the radix path over the
    // whole row, and a CTA a row could not list more with level-0 digits (floors at 7 keep ~4000 z of a row,
    // kKeptCapacity): not kept then (see below for the half digits that do).
    // What the radix rows cost at large batches (H100, the bench's sets and timing; a probe that skips the radix path
    // and marks its rows, timing only): T,p at 256 / 512 / 1024 rows 67.9 / 212.9 / 292.9 us, 0 / 2 / 2 rows radix;
    // skipping them, 67.7 / 152.5 / 289.9, and with a CTA a row from 133 rows on as well 67.9 / 131.9 / 263.2
    // (same-bytes copy 55.8 / 110.0 / 218.3), but 274.2 / 394.7 at 512 / 1024 rows with the radix rows (one CTA walks a
    // row's levels alone). T,k,p, no radix rows, 60.0 / 137.0 / 264.4 in pairs, 59.9 / 131.9 / 264.0 at a CTA a row. So
    // T,p past one wave was bound by a few rows whose nucleus reaches below the lists' floor (a level-0 digit: z >= 8
    // here). Top-p alone now takes a CTA a row from 133 rows on, in waves too (Mode::kTopP), its floor in half digits
    // (kRowListBudget: no bench row leaves the path): T,p at 256 / 320 / 512 / 1024 rows 67.9 / 144.5 / 212.8 / 292.6
    // -> 69.7 / 100.5 / 135.5 / 267.9 us; and from 67 rows on, past the pairs at one CTA an SM (the level-0 floor's
    // row off the path in the 96-row sets is gone; probe timing without it, two runs): at 80 / 96 / 112 / 128 / 132
    // rows 38.0 / 38.3 / 38.9 / 40.5-40.7 / 41.1 -> 37.6-38.4 / 37.9-38.0 / 38.6-38.9 / 39.5-39.7 / 39.9-40.0 us. T,k,p
    // in waves stayed in pairs while every CTA prefetched its whole slice first (at a CTA a row, 320 / 1024 rows 97.5 /
    // 269.1 against 92.2 / 265.1); with 3 / 16 of it first (prefetch_sixteenths) it takes a CTA a row past 132 rows, in
    // waves too: 320 / 512 / 1024 rows 76.6-76.8 / 113.1-113.2 / 216.0-216.1 us in pairs, 77.6-77.8 / 100.6-100.7 /
    // 195.9-196.2 at a CTA a row.
    // Top-p alone at a CTA a row while the rows fit one CTA an SM (67-132 rows on the H100) has an instance of its own
    // (Mode::kTopP, 1 rank, 1 CTA an SM): up to 128 registers (92 used), 8 vectors a batch, and each lane's own list
    // (kLaneLists, as the pairs: a predicated store a logit, 96 KB) in place of the warps' lists (a vote and three
    // ballots a vector that holds a logit at the floor, ~94% of a warp's vectors here). Probes of the instance these
    // rows ran in before (a token written after the load pass, timing only): its load pass took 30.6 us at 128 rows,
    // 26.0 without the warps' listing, 28.8 without the tail's exponentials. H100, the bench's timing, the same run:
    // T,p at 67 / 96 / 128 / 132 rows 35.8 / 36.5 / 37.1 / 37.3 -> 29.6 / 31.4 / 35.3 / 36.0 us (64 and 133-512 rows
    // unchanged); on another H100, 28.2-28.4 / 30.8-30.9 / 33.9-34.0 at 67 / 96 / 128 rows. An overflowing kept list
    // is kept again from the lanes' lists (keep_lists_again).
    // ncu of T,p at 64 rows (a3d60ce, one CTA an SM): 27.5% of issue slots busy; stalls on loads 28% of samples, fixed
    // latencies 20%, instruction fetch 15%, barriers 8%; 9% on CTA 0's warps polling their mbarrier for CTA 1's pushes.
    // ncu at deaa257 (H100, the bench's launch, clocks uncontrolled): T,p at 64 rows (pairs, one CTA an SM) 30.6 us,
    // issue 30% busy, DRAM 34%, 16 warps an SM: latency-bound. T,p at 1024 rows (a CTA a row, two an SM) 241.7 us, DRAM
    // 66.6%, 0.66 instructions issued a cycle per scheduler (1.81 of 7.54 warps eligible): issue-bound, 155.6 M warp
    // instructions. Per instruction (SourceCounters), 63% of them are the load pass's loop: a 4-vector step's
    // unconditional part ~136 instructions (loads, max and NaN, 4 tail terms a vector of FFMA, FMNMX, MUFU.EX2 and
    // FADD, the vote), and the warps' listing block, ~61-67 instructions a vector (its three ballots, six POPC and the
    // stores), entered for 94% of vectors: the floor from kRowListBudget lists ~2% of the bench's logits (N(0, 3^2), T
    // 0.8), so nearly every 128-logit warp vector holds one. The straight-line code (1097 instructions a warp) is
    // 11.6%. Lanes' lists in 11 slots and a spill list (filtered_sample's kSpills) took it to 129 M instructions, 0.55
    // issued a cycle per scheduler (1.24 eligible), DRAM 68.5%, 234.6 us under ncu (226.4 as the bench times it).
    // Stamps (globaltimer, thread 0 of each CTA and lane 0 of each warp, the bench's launch; a probe, not kept) show
    // where a row's ~55 us go at 1024 rows: 3.3 us from the start to the first batch's floor (8.8 in the first wave,
    // which waits for the previous launch), 38 us of the loop (to the warps' mean end), its warps ending 4.1 us apart
    // (median), 2.2 us from the last warp's end to the lists kept, and 8.1 us of unstaged_top_p (pass A's masses,
    // bounds and Philox words 4.5, the scan 1.6, pass B 1.2, warp 0's cut and token 0.8). The waves stay in step:
    // between two of them ~10-12 us pass with almost no CTA in its loop (so no load in flight), ~18 us of the DRAM's
    // time a wave at 264 CTAs. Measured and not kept (H100, the bench's timing, us at 256 / 512 / 1024 rows against
    // 60.5 / 116.8 / 226.4): each CTA prefetching 2 / 4 / 8 sixteenths of the row a wave on after its load pass, 60.9 /
    // 118.0 / 227.3, 60.9 / 119.0 / 229.2, 60.9 / 119.0 / 236.7 (T,k,p, which then spilled 34 bytes, 56.2 against 51.9
    // at 256 rows; the stamps showed the next wave's start and loop no shorter), or at the end of unstaged_top_p's pass
    // A (2 / 4 sixteenths: 60.7 / 117.5 / 225.1, 60.6 / 118.1 / 227.1) or of its finish (4 / 8: 60.8 / 118.0 / 228.1,
    // 60.9 / 120.2 / 238.0); 1 / 2 batches prefetched ahead (for_each_z), 63.2 / 120.5 / 228.4 and 70.1 / 135.0 /
    // 251.7; 6 / 8 vectors a batch (both spilling), 63.7 / 122.7 / 238.3 and 70.5 / 136.7 / 266.2; the lanes' keep loop
    // unrolled 4, within 0.2; unstaged_top_p's entries 6 a thread at a time in place of 4, 61.2 / 117.0 / 225.6 (128
    // rows 33.9 -> 34.8). So logits already in L2 did not shorten a wave's loop, and the DRAM's idle time between waves
    // is not recovered by prefetching; what remains is a shorter finish, or a CTA that loads one row while it finishes
    // another (two rows' lists at once, which two CTAs an SM leave no shared memory for). Or the two CTAs of an SM out
    // of step, one's finish over the other's loads: stagger_first_wave, past one wave (1024 rows 226.2 -> 208.4 us).
    // Measured and not kept: rank 0 of a pair taking 52 / 55 / 58 / 62% of the row (more of the load while rank 1
    // pushes), T,p at 32 / 48 / 64 rows 20.5-20.6 / 21.5-21.6 / 23.3, 20.8 / 21.5-21.6 / 23.1-23.2, 20.9-21.1 /
    // 21.5-21.6 / 23.1-23.2, 21.0 / 21.6 / 23.3-23.4 against an even split's 20.0 / 21.1 / 22.8 (T,k,p 0.3-1.3 us
    // slower).
    const bool top_p_alone = !top_k_active && args.top_p < 1.0f;  // (else the top-k fast path, or an extreme T alone)
    int pair_rows = 0, single_rows = 0;
    DSV4_RETURN_IF_FAILED((unstaged_rows_resident<Mode::kFiltered, kWideBatchRanks, 1>(pair_rows)));
    DSV4_RETURN_IF_FAILED((top_p_alone ? unstaged_rows_resident<Mode::kTopP, 1, 1>(single_rows)
                                       : unstaged_rows_resident<Mode::kFiltered, 1, 1>(single_rows)));
    const bool pairs = batch <= pair_rows;
    const bool one_cta_an_sm = batch <= single_rows;
    const int ranks = pairs ? kWideBatchRanks : 1;
    auto kernel = pairs           ? sample_kernel<Mode::kFiltered, kThreads, kWideBatchRanks, 1>
                  : top_p_alone   ? (one_cta_an_sm ? sample_kernel<Mode::kTopP, kThreads, 1, 1>
                                                   : sample_kernel<Mode::kTopP, kThreads, 1, 2>)
                  : one_cta_an_sm ? sample_kernel<Mode::kFiltered, kThreads, 1, 1>
                                  : sample_kernel<Mode::kFiltered, kThreads, 1, 2>;
    args.slice = slice_of(args.vocab, ranks);
    if (top_p_alone && !one_cta_an_sm) {  // more than a wave: stagger_first_wave
        int wave_rows = 0;
        DSV4_RETURN_IF_FAILED((unstaged_rows_resident<Mode::kTopP, 1, 2>(wave_rows)));
        args.stagger_ctas = batch > wave_rows ? static_cast<uint32_t>(wave_rows) : 0u;
        args.stagger_ns = static_cast<uint32_t>(args.vocab * kStaggerNsAtFlashVocab / kFlashVocab);
    }
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, kernel, static_cast<unsigned>(batch * ranks),
                                          kThreads, unstaged_smem(one_cta_an_sm ? 1 : 2), stream, args));
    return DSV4_OK;
}

SampleArgs make_args(int32_t* tokens, const float* logits, int64_t vocab, int64_t logits_stride) {
    SampleArgs args{};
    args.tokens = tokens;
    args.logits = logits;
    args.vocab = vocab;
    args.stride = logits_stride;
    args.slice = slice_of(vocab, kCluster);
    args.top_p = 1.0f;
    return args;
}

}  // namespace

DSV4_API int dsv4_sample_greedy_f32(int32_t* tokens, const float* logits, int64_t batch, int64_t vocab,
                                    int64_t logits_stride, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_RETURN_IF_FAILED(check_shape(batch, vocab, logits_stride));
        if (batch == 0) return DSV4_OK;
        DSV4_CHECK_PTR(tokens, 4);
        DSV4_CHECK_PTR(logits, 16);
        return launch_sample(make_args(tokens, logits, vocab, logits_stride), batch, stream);
    });
}

DSV4_API int dsv4_sample_tokens_f32(int32_t* tokens, const float* logits, int64_t batch, int64_t vocab,
                                    int64_t logits_stride, float temperature, int64_t top_k, float top_p,
                                    uint64_t seed, int64_t step, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_RETURN_IF_FAILED(check_shape(batch, vocab, logits_stride));
        DSV4_CHECK_ARG(std::isfinite(temperature) && temperature >= 0.0f, DSV4_ERR_ARGUMENT,
                       "temperature = %g is not finite and >= 0", (double)temperature);
        DSV4_CHECK_ARG(top_k >= 0, DSV4_ERR_ARGUMENT, "top_k = %lld is negative", (long long)top_k);
        DSV4_CHECK_ARG(top_p > 0.0f && top_p <= 1.0f, DSV4_ERR_ARGUMENT, "top_p = %g is not in (0, 1]",
                       (double)top_p);
        DSV4_CHECK_ARG(step >= 0 && step <= int64_t(UINT32_MAX), DSV4_ERR_ARGUMENT, "step = %lld is not in [0, 2^32)",
                       (long long)step);
        if (batch == 0) return DSV4_OK;
        DSV4_CHECK_PTR(tokens, 4);
        DSV4_CHECK_PTR(logits, 16);
        SampleArgs args = make_args(tokens, logits, vocab, logits_stride);
        args.temperature = temperature;
        args.reciprocal_temperature = temperature > 0.0f ? 1.0f / temperature : 0.0f;  // IEEE division: RN(1 / T)
        args.top_k = top_k;
        args.top_p = top_p;
        uint32_t k0 = static_cast<uint32_t>(seed & 0xFFFFFFFFu), k1 = static_cast<uint32_t>(seed >> 32);
        for (int round = 0; round < kPhiloxRounds; ++round, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
            args.round_key[round][0] = k0;
            args.round_key[round][1] = k1;
        }
        const uint64_t step_product = static_cast<uint64_t>(step) * kPhiloxM1;  // round 0's, of counter word 2
        args.step_high_key = static_cast<uint32_t>(step_product >> 32) ^ args.round_key[0][0];
        args.step_low_key = static_cast<uint32_t>(step_product) ^ args.round_key[1][0];
        return launch_sample(args, batch, stream);
    });
}
