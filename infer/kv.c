// kv.c: batched incremental GPT-2 decoding over a per-slot KV cache (contract in kv.h).
// Invariant: slot s holds keys and values for positions 0 .. pos[s]-1 of every layer, and a step
// writes positions pos .. pos+ntok-1 before attending, so no stale entry is ever read; every
// buffer is allocated and touched in kv_create. One caller thread; kernels use OpenMP inside.
// A step is gpt_forward's layer chain (see gpt.c) over the N new tokens of all entries as rows;
// at small N the matmuls use the weight-streaming kernel below instead of sgemm.
#include "infer/kv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "train/base/err.h"
#include "train/ops.h"

// Below this many floats of work a loop runs on the calling thread (as in ops.c).
#define PAR_MIN 32768

// Small-N linear layers (decode): OpenBLAS 0.3.21's sgemm packs the whole weight matrix when M
// is small, which reads and writes it again and halves decode speed (measured 50 vs 20 ms per
// 124M token at M = 1). Up to SKINNY_MAX rows we stream each weight block from memory once:
// SK_R weight rows x SK_S input rows of accumulators (12 + 3 inputs + 1 weight = AVX2's 16
// registers), over K in chunks of SK_KC floats so that the block's weight rows and all input
// rows stay in L1 (4 + 24 rows of 1 KiB, of Zen 3's 32 KiB). Blocks are handed out dynamically, 16
// at a time, so that a thread slowed by another process on its core does less of the work. Above
// SKINNY_MAX rows sgemm is faster (measured on the 124M weights, 2 threads: 64 vs 99 ms at 24 rows,
// 106 vs 82 ms at 32).
#define SKINNY_MAX 24
#define SK_R       4
#define SK_S       3
#define SK_KC      256

// Eight floats of SIMD: AVX2+FMA where available, otherwise a plain array that the compiler
// vectorizes as it can. Both sum lane-wise over k = lane mod 8 and then reduce the lanes in one
// fixed order, so a row's result never depends on which other rows share the step.
#if defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec8;
static inline vec8 v8_zero(void) { return _mm256_setzero_ps(); }
static inline vec8 v8_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vec8 v8_set1(float a) { return _mm256_set1_ps(a); }
static inline void v8_store(float *p, vec8 v) { _mm256_storeu_ps(p, v); }
static inline vec8 v8_fma(vec8 a, vec8 b, vec8 c) { return _mm256_fmadd_ps(a, b, c); }
static inline float v8_sum(vec8 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
typedef struct {
    float f[8];
} vec8;
static inline vec8 v8_zero(void) {
    vec8 r = {{0}};
    return r;
}
static inline vec8 v8_load(const float *p) {
    vec8 r;
    memcpy(r.f, p, sizeof r.f);
    return r;
}
static inline vec8 v8_set1(float a) {
    vec8 r;
    for (int i = 0; i < 8; i++)
        r.f[i] = a;
    return r;
}
static inline void v8_store(float *p, vec8 v) { memcpy(p, v.f, sizeof v.f); }
static inline vec8 v8_fma(vec8 a, vec8 b, vec8 c) {
    for (int i = 0; i < 8; i++)
        c.f[i] += a.f[i] * b.f[i];
    return c;
}
static inline float v8_sum(vec8 v) {
    return ((v.f[0] + v.f[4]) + (v.f[2] + v.f[6])) + ((v.f[1] + v.f[5]) + (v.f[3] + v.f[7]));
}
#endif

// Borrowed weights of one block (nanoGPT names under transformer.h.<l>.), PyTorch layouts.
typedef struct {
    const float *ln1w, *ln1b;     // (C)
    const float *qkvw, *qkvb;     // (3C, C), (3C)
    const float *projw, *projb;   // (C, C), (C)
    const float *ln2w, *ln2b;     // (C)
    const float *fcw, *fcb;       // (4C, C), (4C)
    const float *fcprojw, *fcprb; // (C, 4C), (C)
} kv_layer;

struct kv_engine {
    int L, NH, C, hs, T, V; // model shape; T = block_size, hs = C / NH
    int max_slots, max_tok; // max_tok: as given to kv_create (validation)
    int rows;               // activation rows allocated: min(max_tok, max_slots * T)
    int nthr;               // threads the attention scratch is sized for
    const float *wte, *wpe, *lnfw, *lnfb;
    kv_layer *layers;
    float *kc, *vc; // (max_slots, L, NH, T, hs): a head's keys (values) are contiguous
    int *pos;       // (max_slots) positions held; -1 = free
    unsigned *mark; // (max_slots) step stamp of the repeated-slot check
    unsigned stamp; // current stamp
    int *row_slot;  // (rows) slot of each new token
    int *row_pos;   // (rows) its position
    int *last_row;  // (rows) per entry, the row of its last new token
    float *acts;    // one slab for the activations below
    float *x;       // (rows, C) residual stream
    float *ln;      // (rows, C) LayerNorm output
    float *qkv;     // (rows, 3C): q, k, v packed as in gpt.c
    float *atty;    // (rows, C) attention output, heads side by side
    float *fch;     // (rows, 4C) MLP hidden, GELU in place
    float *scores;  // (nthr, T) attention scores per thread
};

static size_t padded(size_t n) { return (n + 15) & ~(size_t)15; }

static float *carve(float **cur, size_t n) {
    float *p = *cur;
    *cur += padded(n); // keep 64-byte alignment
    return p;
}

// cache_at returns the (T, hs) block of head h of layer l of slot s in kc or vc.
static inline float *cache_at(const kv_engine *e, float *base, int s, int l, int h) {
    return base + ((((size_t)s * e->L + l) * e->NH + h) * e->T) * e->hs;
}

// tile accumulates R weight rows (row stride K) against S input rows (row stride K) over the
// columns [c0, c1) (multiples of 8) into acc[s * SK_R + r]. R and S are literals at every call
// site, so after inlining the loops unroll and the accumulators live in registers.
static inline __attribute__((always_inline)) void tile(const float *w, const float *x, int K,
                                                       int c0, int c1, vec8 *acc, int R, int S) {
    vec8 a[SK_R][SK_S];
    for (int r = 0; r < R; r++)
        for (int s = 0; s < S; s++)
            a[r][s] = acc[s * SK_R + r];
    for (int c = c0; c < c1; c += 8) {
        vec8 xv[SK_S];
        for (int s = 0; s < S; s++)
            xv[s] = v8_load(x + (size_t)s * K + c);
        for (int r = 0; r < R; r++) {
            const vec8 wv = v8_load(w + (size_t)r * K + c);
            for (int s = 0; s < S; s++)
                a[r][s] = v8_fma(wv, xv[s], a[r][s]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int s = 0; s < S; s++)
            acc[s * SK_R + r] = a[r][s];
}

// linear_small: out(N,OC) (+)= inp(N,K) @ w(OC,K)^T + bias(OC) for N <= SKINNY_MAX, reading w
// once; with accumulate the result is added to out (the residual connection). bias may be NULL.
static void linear_small(float *out, const float *inp, const float *w, const float *bias, int N,
                         int K, int OC, int accumulate) {
    ASSERT(N >= 1 && N <= SKINNY_MAX);
    const int K8 = K & ~7, nblk = (OC + SK_R - 1) / SK_R;
#pragma omp parallel for schedule(dynamic, 16) if ((size_t)OC * K >= PAR_MIN)
    for (int b = 0; b < nblk; b++) {
        const int o = b * SK_R, R = OC - o < SK_R ? OC - o : SK_R;
        const float *wb = w + (size_t)o * K;
        vec8 acc[SKINNY_MAX * SK_R];
        for (int i = 0; i < N * SK_R; i++)
            acc[i] = v8_zero();
        for (int c0 = 0; c0 < K8; c0 += SK_KC) {
            const int c1 = c0 + SK_KC < K8 ? c0 + SK_KC : K8;
            if (R == SK_R) {
                int n = 0;
                for (; n + SK_S <= N; n += SK_S)
                    tile(wb, inp + (size_t)n * K, K, c0, c1, acc + n * SK_R, SK_R, SK_S);
                if (N - n == 2) tile(wb, inp + (size_t)n * K, K, c0, c1, acc + n * SK_R, SK_R, 2);
                if (N - n == 1) tile(wb, inp + (size_t)n * K, K, c0, c1, acc + n * SK_R, SK_R, 1);
            } else { // the last block of a matrix whose row count is not a multiple of SK_R
                for (int r = 0; r < R; r++)
                    for (int n = 0; n < N; n++)
                        tile(wb + (size_t)r * K, inp + (size_t)n * K, K, c0, c1, acc + n * SK_R + r,
                             1, 1);
            }
        }
        for (int n = 0; n < N; n++) {
            const float *xr = inp + (size_t)n * K;
            float *orow = out + (size_t)n * OC + o;
            for (int r = 0; r < R; r++) {
                const float *wr = wb + (size_t)r * K;
                float s = v8_sum(acc[n * SK_R + r]);
                for (int c = K8; c < K; c++) // K not a multiple of 8
                    s += wr[c] * xr[c];
                if (bias) s += bias[o + r];
                orow[r] = accumulate ? orow[r] + s : s;
            }
        }
    }
}

// linear: out(N,OC) (+)= inp(N,K) @ w(OC,K)^T + bias, the small-N kernel or sgemm.
static void linear(float *out, const float *inp, const float *w, const float *bias, int N, int K,
                   int OC, int accumulate) {
    if (N <= SKINNY_MAX) {
        linear_small(out, inp, w, bias, N, K, OC, accumulate);
        return;
    }
    if (!accumulate) {
        ops_matmul_forward(out, inp, w, bias, N, K, OC);
        return;
    }
    if (bias) {
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int n = 0; n < N; n++) {
            float *restrict o = out + (size_t)n * OC;
#pragma omp simd
            for (int c = 0; c < OC; c++)
                o[c] += bias[c];
        }
    }
    ops_sgemm(0, 1, N, OC, K, 1.0f, inp, K, w, K, 1.0f, out, OC);
}

// key_scores: sc[j] = scale * q . k[j] for the np keys k (np, hs) of one head, four keys at a
// time through tile (one pass over the keys, four independent sums).
static void key_scores(float *sc, const float *k, const float *q, int np, int hs, float scale) {
    const int hs8 = hs & ~7;
    int j = 0;
    for (; j < np; j += SK_R) {
        const int R = np - j < SK_R ? np - j : SK_R;
        const float *kj = k + (size_t)j * hs;
        vec8 acc[SK_R];
        for (int r = 0; r < SK_R; r++)
            acc[r] = v8_zero();
        if (R == SK_R)
            tile(kj, q, hs, 0, hs8, acc, SK_R, 1);
        else
            for (int r = 0; r < R; r++)
                tile(kj + (size_t)r * hs, q, hs, 0, hs8, acc + r, 1, 1);
        for (int r = 0; r < R; r++) {
            float s = v8_sum(acc[r]);
            for (int d = hs8; d < hs; d++) // hs not a multiple of 8
                s += kj[(size_t)r * hs + d] * q[d];
            sc[j + r] = s * scale;
        }
    }
}

// weighted_values: o(hs) = scale * sum_j a[j] v[j] over the np values v (np, hs) of one head.
// 64 columns at a time stay in eight registers (GPT-2 heads are 64 wide); other widths take the
// plain loop.
static void weighted_values(float *o, const float *a, const float *v, int np, int hs, float scale) {
    int d0 = 0;
    for (; d0 + 64 <= hs; d0 += 64) {
        vec8 acc[8];
        for (int i = 0; i < 8; i++)
            acc[i] = v8_zero();
        for (int j = 0; j < np; j++) {
            const vec8 w = v8_set1(a[j]);
            const float *vj = v + (size_t)j * hs + d0;
            for (int i = 0; i < 8; i++)
                acc[i] = v8_fma(w, v8_load(vj + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; i++)
            v8_store(o + d0 + 8 * i, acc[i]);
#pragma omp simd
        for (int d = d0; d < d0 + 64; d++)
            o[d] *= scale;
    }
    if (d0 == hs) return;
    for (int d = d0; d < hs; d++)
        o[d] = 0.0f;
    for (int j = 0; j < np; j++) {
        const float *restrict vj = v + (size_t)j * hs;
        float *restrict od = o;
#pragma omp simd
        for (int d = d0; d < hs; d++)
            od[d] += a[j] * vj[d];
    }
    for (int d = d0; d < hs; d++)
        o[d] *= scale;
}

// attention: for each of the N new rows and each head, softmax(q k^T / sqrt(hs)) over the slot's
// cached positions 0 .. row_pos (the step's own keys are already in the cache), times the cached
// values, into atty (N, C). Parallel over (row, head); dynamic, since rows differ in length.
static void attention(kv_engine *e, int l, int N) {
    const int NH = e->NH, hs = e->hs, C = e->C;
    const float scale = 1.0f / sqrtf((float)hs);
    size_t work = 0;
    for (int r = 0; r < N; r++)
        work += (size_t)(e->row_pos[r] + 1) * (size_t)hs * (size_t)NH;
    int nthr = omp_get_max_threads();
    if (nthr > e->nthr) nthr = e->nthr; // the scratch holds e->nthr rows of scores
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr) if (N * NH > 1 && work >= PAR_MIN)
    for (int rh = 0; rh < N * NH; rh++) {
        const int r = rh / NH, h = rh % NH, np = e->row_pos[r] + 1;
        float *restrict sc = e->scores + (size_t)omp_get_thread_num() * e->T;
        const float *q = e->qkv + (size_t)r * 3 * C + (size_t)h * hs;
        const float *vh = cache_at(e, e->vc, e->row_slot[r], l, h);
        key_scores(sc, cache_at(e, e->kc, e->row_slot[r], l, h), q, np, hs, scale);
        float mx = sc[0];
        for (int j = 1; j < np; j++)
            mx = sc[j] > mx ? sc[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < np; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        weighted_values(e->atty + (size_t)r * C + (size_t)h * hs, sc, vh, np, hs, 1.0f / sum);
    }
}

// view returns the parameter tensor called name with count floats, or NULL (error set).
static const float *view(const gpt_model *m, const float *P, const char *name, size_t count) {
    const gpt_view *v = gpt_find_view(m, name);
    if (!v || v->count != count) {
        err_set(ERR_INVAL, "kv: model tensor '%s' is missing or has the wrong size", name);
        return NULL;
    }
    return P + v->offset;
}

int kv_create(kv_engine **out, const gpt_model *m, int max_slots, int max_step_tokens) {
    if (!out || !m) return err_set(ERR_INVAL, "kv_create: out and model must not be NULL");
    if (max_slots < 1) return err_set(ERR_INVAL, "kv_create: max_slots %d < 1", max_slots);
    if (max_step_tokens < 1)
        return err_set(ERR_INVAL, "kv_create: max_step_tokens %d < 1", max_step_tokens);
    const cfg_model *mc = gpt_config(m);
    const size_t L = (size_t)mc->n_layer, C = (size_t)mc->n_embd, T = (size_t)mc->block_size;
    const size_t V = (size_t)mc->vocab_size, S = (size_t)max_slots;
    // One slot's cache is 2 L T C floats; refuse sizes whose byte count would overflow.
    if ((double)S * 2.0 * (double)L * (double)T * (double)C * sizeof(float) > (double)SIZE_MAX / 2)
        return err_set(ERR_INVAL, "kv_create: max_slots %d is too large for this model", max_slots);

    kv_engine *e = xcalloc(1, sizeof *e);
    e->L = (int)L;
    e->NH = mc->n_head;
    e->C = (int)C;
    e->hs = (int)C / mc->n_head;
    e->T = (int)T;
    e->V = (int)V;
    e->max_slots = max_slots;
    e->max_tok = max_step_tokens;
    // No step can feed more than every slot's whole block, so that bounds the activations.
    e->rows = (double)max_step_tokens > (double)S * (double)T ? (int)(S * T) : max_step_tokens;
    e->nthr =
        omp_get_max_threads() > omp_get_num_procs() ? omp_get_max_threads() : omp_get_num_procs();

    // Weights are borrowed from the model's parameter slab (read only, hence the cast: gpt.h has
    // no const accessor).
    const float *P = gpt_params((gpt_model *)m);
    int ok = (e->wte = view(m, P, "transformer.wte.weight", V * C)) &&
             (e->wpe = view(m, P, "transformer.wpe.weight", T * C)) &&
             (e->lnfw = view(m, P, "transformer.ln_f.weight", C)) &&
             (e->lnfb = view(m, P, "transformer.ln_f.bias", C));
    e->layers = xcalloc(L, sizeof(kv_layer));
    for (size_t l = 0; l < L && ok; l++) {
        kv_layer *ly = &e->layers[l];
        struct {
            const float **dst;
            const char *name;
            size_t count;
        } t[12] = {
            {&ly->ln1w, "ln_1.weight", C},
            {&ly->ln1b, "ln_1.bias", C},
            {&ly->qkvw, "attn.c_attn.weight", 3 * C * C},
            {&ly->qkvb, "attn.c_attn.bias", 3 * C},
            {&ly->projw, "attn.c_proj.weight", C * C},
            {&ly->projb, "attn.c_proj.bias", C},
            {&ly->ln2w, "ln_2.weight", C},
            {&ly->ln2b, "ln_2.bias", C},
            {&ly->fcw, "mlp.c_fc.weight", 4 * C * C},
            {&ly->fcb, "mlp.c_fc.bias", 4 * C},
            {&ly->fcprojw, "mlp.c_proj.weight", 4 * C * C},
            {&ly->fcprb, "mlp.c_proj.bias", C},
        };
        for (int i = 0; i < 12 && ok; i++) {
            char name[GPT_NAME_MAX];
            snprintf(name, sizeof name, "transformer.h.%zu.%s", l, t[i].name);
            ok = (*t[i].dst = view(m, P, name, t[i].count)) != NULL;
        }
    }
    if (!ok) {
        free(e->layers);
        free(e);
        return ERR_INVAL;
    }

    // The cache and the activations are zeroed here so that their pages are faulted in once,
    // not during the first steps (fresh pages are slow on this kind of machine).
    const size_t cache = S * L * T * C;
    e->kc = xalloc_aligned(cache * sizeof(float));
    e->vc = xalloc_aligned(cache * sizeof(float));
    ops_zero(e->kc, cache);
    ops_zero(e->vc, cache);
    const size_t R = (size_t)e->rows;
    const size_t acts =
        3 * padded(R * C) + padded(3 * R * C) + padded(4 * R * C) + padded((size_t)e->nthr * T);
    e->acts = xalloc_aligned(acts * sizeof(float));
    ops_zero(e->acts, acts);
    float *cur = e->acts;
    e->x = carve(&cur, R * C);
    e->ln = carve(&cur, R * C);
    e->atty = carve(&cur, R * C);
    e->qkv = carve(&cur, 3 * R * C);
    e->fch = carve(&cur, 4 * R * C);
    e->scores = carve(&cur, (size_t)e->nthr * T);
    ASSERT((size_t)(cur - e->acts) <= acts);
    e->pos = xmalloc(S * sizeof(int));
    for (size_t s = 0; s < S; s++)
        e->pos[s] = -1;
    e->mark = xcalloc(S, sizeof(unsigned));
    e->row_slot = xcalloc(R, sizeof(int));
    e->row_pos = xcalloc(R, sizeof(int));
    e->last_row = xcalloc(R, sizeof(int));
    *out = e;
    return ERR_OK;
}

void kv_destroy(kv_engine *e) {
    if (!e) return;
    free(e->layers);
    free(e->kc);
    free(e->vc);
    free(e->acts);
    free(e->pos);
    free(e->mark);
    free(e->row_slot);
    free(e->row_pos);
    free(e->last_row);
    free(e);
}

int kv_slot_open(kv_engine *e) {
    for (int s = 0; s < e->max_slots; s++)
        if (e->pos[s] < 0) {
            e->pos[s] = 0;
            return s;
        }
    return -1;
}

void kv_slot_close(kv_engine *e, int slot) {
    if (slot >= 0 && slot < e->max_slots) e->pos[slot] = -1;
}

// kv_slot_pos: a free slot holds 0 positions; an id outside [0, max_slots) gives -1.
int kv_slot_pos(const kv_engine *e, int slot) {
    if (slot < 0 || slot >= e->max_slots) return -1;
    return e->pos[slot] < 0 ? 0 : e->pos[slot];
}

int kv_vocab_size(const kv_engine *e) { return e->V; }
int kv_block_size(const kv_engine *e) { return e->T; }

// validate checks a kv_step request without changing anything but the stamp marks, and returns
// the total number of new tokens in *total.
static int validate(kv_engine *e, int n, const int *slots, const int32_t *const *toks,
                    const int *ntok, const float *logits, int *total) {
    if (n < 0) return err_set(ERR_INVAL, "kv_step: n %d < 0", n);
    if (n > 0 && (!slots || !toks || !ntok || !logits))
        return err_set(ERR_INVAL, "kv_step: slots, toks, ntok and logits must not be NULL");
    if (++e->stamp == 0) { // wrapped: old marks could collide with the new stamp
        memset(e->mark, 0, (size_t)e->max_slots * sizeof(unsigned));
        e->stamp = 1;
    }
    long long sum = 0;
    for (int i = 0; i < n; i++) {
        const int s = slots[i];
        if (s < 0 || s >= e->max_slots || e->pos[s] < 0)
            return err_set(ERR_INVAL, "kv_step: entry %d: slot %d is not open", i, s);
        if (e->mark[s] == e->stamp)
            return err_set(ERR_INVAL, "kv_step: entry %d: slot %d is repeated in one step", i, s);
        e->mark[s] = e->stamp;
        if (ntok[i] < 1)
            return err_set(ERR_INVAL, "kv_step: entry %d (slot %d): ntok %d < 1", i, s, ntok[i]);
        if (!toks[i]) return err_set(ERR_INVAL, "kv_step: entry %d (slot %d): toks is NULL", i, s);
        if (ntok[i] > e->T - e->pos[s])
            return err_set(ERR_INVAL,
                           "kv_step: entry %d (slot %d): %d new tokens at position %d pass "
                           "block_size %d",
                           i, s, ntok[i], e->pos[s], e->T);
        for (int t = 0; t < ntok[i]; t++)
            if (toks[i][t] < 0 || toks[i][t] >= e->V)
                return err_set(ERR_INVAL,
                               "kv_step: entry %d (slot %d): token %d = %d is outside the "
                               "vocabulary [0, %d)",
                               i, s, t, (int)toks[i][t], e->V);
        sum += ntok[i];
        if (sum > e->max_tok)
            return err_set(ERR_INVAL,
                           "kv_step: more than max_step_tokens = %d new tokens in one step",
                           e->max_tok);
    }
    *total = (int)sum;
    return ERR_OK;
}

int kv_step(kv_engine *e, int n, const int *slots, const int32_t *const *toks, const int *ntok,
            float *logits) {
    int N = 0;
    int rc = validate(e, n, slots, toks, ntok, logits, &N);
    if (rc || n == 0) return rc;
    const int C = e->C, NH = e->NH, hs = e->hs, L = e->L;

    // Rows of the step: entry i's tokens, in order, at positions pos .. pos+ntok-1.
    for (int i = 0, r = 0; i < n; i++) {
        for (int t = 0; t < ntok[i]; t++, r++) {
            e->row_slot[r] = slots[i];
            e->row_pos[r] = e->pos[slots[i]] + t;
            const float *restrict te = e->wte + (size_t)toks[i][t] * C;
            const float *restrict pe = e->wpe + (size_t)e->row_pos[r] * C;
            float *restrict xr = e->x + (size_t)r * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                xr[c] = te[c] + pe[c];
        }
        e->last_row[i] = r - 1; // r is one past the entry's rows here
    }

    int M = N; // rows still carried; only the entries' last rows after the last attention
    for (int l = 0; l < L; l++) {
        const kv_layer *w = &e->layers[l];
        ops_layernorm_forward(e->ln, NULL, NULL, e->x, w->ln1w, w->ln1b, M, C);
        linear(e->qkv, e->ln, w->qkvw, w->qkvb, M, C, 3 * C, 0);
        for (int r = 0; r < M; r++) // append the new keys and values to the slots' caches
            for (int h = 0; h < NH; h++) {
                const size_t at = (size_t)e->row_pos[r] * hs;
                const float *k = e->qkv + (size_t)r * 3 * C + C + (size_t)h * hs;
                memcpy(cache_at(e, e->kc, e->row_slot[r], l, h) + at, k, hs * sizeof(float));
                memcpy(cache_at(e, e->vc, e->row_slot[r], l, h) + at, k + C, hs * sizeof(float));
            }
        attention(e, l, M);
        if (l == L - 1 && M > n) {
            // Past the last attention a row depends only on itself, and only each entry's last
            // row is wanted: move those rows to the front (last_row[i] >= i, increasing, so no
            // source is overwritten before it is read).
            for (int i = 0; i < n; i++)
                if (e->last_row[i] != i) {
                    memcpy(e->x + (size_t)i * C, e->x + (size_t)e->last_row[i] * C,
                           C * sizeof(float));
                    memcpy(e->atty + (size_t)i * C, e->atty + (size_t)e->last_row[i] * C,
                           C * sizeof(float));
                }
            M = n;
        }
        linear(e->x, e->atty, w->projw, w->projb, M, C, C, 1); // x += c_proj(atty)
        ops_layernorm_forward(e->ln, NULL, NULL, e->x, w->ln2w, w->ln2b, M, C);
        linear(e->fch, e->ln, w->fcw, w->fcb, M, C, 4 * C, 0);
        ops_gelu_forward(e->fch, e->fch, (size_t)M * 4 * C);
        linear(e->x, e->fch, w->fcprojw, w->fcprb, M, 4 * C, C, 1); // x += mlp.c_proj(gelu)
    }
    // Rows 0 .. n-1 now hold each entry's last token: final LayerNorm and the tied lm_head,
    // written straight into the caller's (n, V) logits.
    ops_layernorm_forward(e->ln, NULL, NULL, e->x, e->lnfw, e->lnfb, n, C);
    linear(logits, e->ln, e->wte, NULL, n, C, e->V, 0);
    for (int i = 0; i < n; i++)
        e->pos[slots[i]] += ntok[i];
    return ERR_OK;
}
