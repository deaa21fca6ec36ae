// sample.c: temperature / top-k / top-p sampling from one row of logits. The random draw is a
// pure function of (seed, draw index), so the same request reproduces the same text.
#include "infer/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/rng.h"

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

int sample_next(const float *logits, int V, const sample_params *sp, uint64_t draw,
                float *scratch) {
    if (sp->temperature <= 0) return argmax(logits, V);
    float *p = scratch, *sorted = scratch + V;
    float mx = logits[argmax(logits, V)];
    float cut = -INFINITY; // logits below cut are filtered out
    if (sp->top_k > 0 && sp->top_k < V) {
        memcpy(sorted, logits, (size_t)V * sizeof(float));
        qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
        cut = sorted[sp->top_k - 1];
    }
    double sum = 0;
    for (int i = 0; i < V; i++) {
        p[i] = logits[i] >= cut ? expf((logits[i] - mx) / sp->temperature) : 0.0f;
        sum += p[i];
    }
    if (sp->top_p > 0 && sp->top_p < 1) {
        // keep the smallest set of the most likely tokens whose mass reaches top_p
        memcpy(sorted, p, (size_t)V * sizeof(float));
        qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
        double acc = 0, target = sp->top_p * sum;
        float pcut = sorted[0];
        for (int i = 0; i < V && acc < target; i++) {
            acc += sorted[i];
            pcut = sorted[i];
        }
        sum = 0;
        for (int i = 0; i < V; i++) {
            if (p[i] < pcut) p[i] = 0;
            sum += p[i];
        }
    }
    double u = rng_uniform(sp->seed, draw) * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        acc += p[i];
        if (u < acc && p[i] > 0) return i;
    }
    return argmax(p, V);
}
