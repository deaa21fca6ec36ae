// select.c: SPARTA index sets from a keyed pseudo-random permutation of [0, n). The permutation is
// an alternating (FFX-style) Feistel network on b = ceil(log2 n) bits, halves of ceil(b/2) and
// floor(b/2) bits, with cycle walking for values >= n; because b is not rounded up to an even
// number, at most half the domain is walked over (1.08x at n = 124M instead of 2.2x). Integer
// arithmetic only, so every host derives the same sets. Output is sorted by an LSD radix sort in a
// thread-local scratch buffer that grows once per thread and is freed at thread exit. Pure
// function of its arguments; any thread.
#include "sparta/select.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/agg.h"
#include "train/base/err.h"
#include "train/base/rng.h"

// Six rounds. Four give a strong pseudo-random permutation only asymptotically (Luby-Rackoff);
// with the 3-bit halves of n = 64 they measurably bias which indices are picked together, while
// six are indistinguishable from ideal there (select_test: pairs_of_indices_...).
#define ROUNDS 6 // even

#define GOLDEN 0x9E3779B97F4A7C15ull

// Domain-separation tags, so that the two selectors never share a key.
#define TAG_RANDOM      0x52414E444F4D2D31ull
#define TAG_PARTITIONED 0x50415254494E2D31ull

// Up to this many indices an insertion sort beats clearing the radix histograms.
#define SMALL_SORT 64

typedef struct perm {
    uint32_t key[ROUNDS];
    uint32_t shift[ROUNDS]; // round r keeps the top 32 - shift[r] bits of the hash
    uint64_t n;             // domain [0, n), 1 <= n <= UINT32_MAX
    int bits_a, bits_b;     // x = A << bits_b | B, both halves at most 16 bits
} perm;

// splitmix64's finalizer: a bijective 64-bit mixer, used for the key schedule.
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// ceil(log2 n) for n >= 2; 1 for n = 1.
static int bits_for(uint64_t n) {
    int b = 1;
    while (b < 64 && (1ull << b) < n)
        b++;
    return b;
}

static void perm_init(perm *p, uint64_t key, uint64_t n) {
    ASSERT(n >= 1 && n <= UINT32_MAX);
    int b = bits_for(n);
    if (b < 4) b = 4; // halves of at least 2 bits; walking costs at most 16/n for tiny n
    p->n = n;
    p->bits_a = (b + 1) / 2;
    p->bits_b = b / 2;
    for (int r = 0; r < ROUNDS; r++) {
        p->key[r] = (uint32_t)(mix64(key + (uint64_t)(r + 1) * GOLDEN) >> 32);
        p->shift[r] = (uint32_t)(32 - (r % 2 == 0 ? p->bits_a : p->bits_b));
    }
}

// Round function: a keyed 32-bit multiply-xorshift-multiply hash of the other half (at most 16
// bits); its top bits, the best mixed, are xored into the left half. 32-bit lanes let the
// compiler run eight of them per AVX2 instruction.
static inline uint32_t round_fn(uint32_t key, uint32_t x, uint32_t shift) {
    uint32_t z = (x ^ key) * 0x9E3779B1u;
    z ^= z >> 16;
    z *= 0x85EBCA6Bu;
    return z >> shift;
}

// Values go through the network a block of LANES at a time, so that each round's loop over the
// lanes vectorizes (8 lanes per AVX2 instruction) and the block stays in L1.
enum { LANES = 256 };

// feistel applies the network to x(m), m <= LANES, in place. x = A << bits_b | B; the rounds
// alternate A ^= F(B) and B ^= F(A) (an unbalanced Feistel network when the widths differ; each
// round is invertible, so the whole is a permutation of [0, 2^(bits_a + bits_b))).
static void feistel(const perm *p, uint32_t *x, size_t m) {
    uint32_t a[LANES], b[LANES], mask_b = (1u << p->bits_b) - 1;
    for (size_t j = 0; j < m; j++) {
        a[j] = x[j] >> p->bits_b;
        b[j] = x[j] & mask_b;
    }
    for (int r = 0; r < ROUNDS; r += 2) {
        uint32_t k0 = p->key[r], s0 = p->shift[r], k1 = p->key[r + 1], s1 = p->shift[r + 1];
        for (size_t j = 0; j < m; j++) {
            a[j] ^= round_fn(k0, b[j], s0);
            b[j] ^= round_fn(k1, a[j], s1);
        }
    }
    for (size_t j = 0; j < m; j++)
        x[j] = a[j] << p->bits_b | b[j];
}

// perm_fill writes the permutation's entries first .. first + m - 1 into out(m). Cycle walking:
// an image >= n goes through the network again until it lands in [0, n), which terminates
// because the walk starts in [0, n). The lanes that need it (8% at n = 124M, < 1/2 for n >= 8) are
// walked together, again vectorized.
static void perm_fill(const perm *p, uint64_t first, size_t m, uint32_t *out) {
    uint32_t x[LANES], pos[LANES];
    for (size_t j0 = 0; j0 < m; j0 += LANES) {
        size_t w = m - j0 < LANES ? m - j0 : LANES, nw = 0;
        uint32_t *o = out + j0;
        for (size_t j = 0; j < w; j++)
            o[j] = (uint32_t)(first + j0 + j);
        feistel(p, o, w);
        for (size_t j = 0; j < w; j++) {
            pos[nw] = (uint32_t)j;
            x[nw] = o[j];
            nw += o[j] >= p->n;
        }
        while (nw > 0) {
            feistel(p, x, nw);
            size_t keep = 0;
            for (size_t i = 0; i < nw; i++) {
                o[pos[i]] = x[i];
                pos[keep] = pos[i];
                x[keep] = x[i];
                keep += x[i] >= p->n;
            }
            nw = keep;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread scratch: m values of temporary space plus the radix histograms. Grows to the largest
// request seen on the thread and is released by the key's destructor when the thread exits.

typedef struct scratch {
    size_t cap; // uint32_t entries in data
    uint32_t data[];
} scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *s) { free(s); }

static void scratch_key_init(void) { ASSERT(pthread_key_create(&scratch_key, scratch_free) == 0); }

static uint32_t *scratch_get(size_t need) {
    pthread_once(&scratch_once, scratch_key_init);
    scratch *s = pthread_getspecific(scratch_key);
    if (!s || s->cap < need) {
        free(s);
        s = xmalloc(sizeof *s + need * sizeof(uint32_t));
        s->cap = need;
        ASSERT(pthread_setspecific(scratch_key, s) == 0);
    }
    return s->data;
}

// fill_sorted writes the permutation's entries first .. first + m - 1 into out(m), sorted
// ascending, by an LSD radix sort: the values have b <= 32 bits, sorted in P = ceil(b / 11)
// passes of digits of w = ceil(b / P) <= 11 bits (3 x 9 bits at n = 124M): at most 2^11 write
// streams per scatter, which measured faster than 2 passes of 14 bits or bucketing plus
// insertion sort. All digit histograms are counted in one read. Scratch: tmp (m), P counts (2^w).
static void fill_sorted(const perm *p, uint64_t first, size_t m, uint32_t *out) {
    enum { MAX_PASSES = 3, MAX_DIGIT = 11 };
    if (m <= SMALL_SORT) {
        perm_fill(p, first, m, out);
        agg_sort_u32(out, m); // an insertion sort: m <= SMALL_SORT
        return;
    }
    int b = bits_for(p->n);
    int passes = (b + MAX_DIGIT - 1) / MAX_DIGIT, w = (b + passes - 1) / passes;
    size_t nd = (size_t)1 << w;
    uint32_t dmask = (uint32_t)nd - 1;
    uint32_t *tmp = scratch_get(m + MAX_PASSES * nd), *cnt = tmp + m;
    memset(cnt, 0, (size_t)passes * nd * sizeof *cnt);
    uint32_t *src = (passes % 2 == 1) ? tmp : out, *dst = (passes % 2 == 1) ? out : tmp;
    perm_fill(p, first, m, src);
    for (size_t j = 0; j < m; j++)
        for (int q = 0; q < passes; q++)
            cnt[(size_t)q * nd + ((src[j] >> (q * w)) & dmask)]++;
    for (int q = 0; q < passes; q++) {
        uint32_t *c = cnt + (size_t)q * nd, sum = 0;
        for (size_t d = 0; d < nd; d++) {
            uint32_t v = c[d];
            c[d] = sum;
            sum += v;
        }
        int sh = q * w;
        for (size_t j = 0; j < m; j++)
            dst[c[(src[j] >> sh) & dmask]++] = src[j];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
}

// ---------------------------------------------------------------------------------------------

size_t select_k(double p, size_t n) {
    if (!(p > 0) || n == 0) return 0;
    if (p >= 1) return n;
    double k = p * (double)n + 0.5;
    if (k < 1) return 1;
    if (k >= (double)n) return n;
    return (size_t)k;
}

static uint64_t partition_chunks(size_t n, size_t k) { return ((uint64_t)n + k - 1) / k; }

size_t select_count(int selector, uint64_t seed, uint64_t round, size_t n, size_t k) {
    (void)seed;
    ASSERT(selector == SELECT_RANDOM || selector == SELECT_PARTITIONED);
    ASSERT(k <= n && n <= UINT32_MAX); // indices and radix counts are 32-bit
    if (k == 0) return 0;
    if (selector == SELECT_RANDOM) return k;
    uint64_t c = round % partition_chunks(n, k);
    uint64_t left = (uint64_t)n - c * k;
    return left < k ? (size_t)left : k;
}

size_t select_indices(int selector, uint64_t seed, uint64_t round, size_t n, size_t k,
                      uint32_t *out) {
    size_t m = select_count(selector, seed, round, n, k);
    if (m == 0) return 0;
    perm p;
    if (selector == SELECT_RANDOM) {
        perm_init(&p, mix64(mix64(seed ^ TAG_RANDOM) + round), n);
        fill_sorted(&p, 0, m, out);
    } else {
        perm_init(&p, mix64(seed ^ TAG_PARTITIONED), n);
        fill_sorted(&p, (round % partition_chunks(n, k)) * k, m, out);
    }
    return m;
}

int select_partners(uint64_t seed, uint64_t round, int world, int fanout, int *out) {
    enum { MAX = 1024 };
    int m = world - 1 < MAX ? world - 1 : MAX, f = fanout < m ? fanout : m;
    if (f <= 0) return 0;
    // a partial Fisher-Yates shuffle of the offsets 1 .. world - 1, keyed by (seed, round)
    int all[MAX];
    for (int i = 0; i < m; i++)
        all[i] = i + 1;
    uint64_t key = rng_hash(seed ^ rng_hash(round ^ 0x6F55A9u));
    for (int i = 0; i < f; i++) {
        int j = i + (int)(rng_u64(key, (uint64_t)i) % (uint64_t)(m - i));
        int t = all[i];
        all[i] = all[j];
        all[j] = t;
        out[i] = all[i];
    }
    return f;
}
