// sample.h: picking the next token from logits: temperature, top-k and top-p (nucleus)
// filtering, seeded draws. Pure functions over caller-owned buffers; any thread.
#ifndef SAMPLE_H
#define SAMPLE_H

#include <stdint.h>

typedef struct sample_params {
    float temperature; // 0 = greedy (argmax)
    int top_k;         // 0 = no top-k filter
    float top_p;       // 1 = no nucleus filter
    uint64_t seed;
} sample_params;

// sample_next returns the next token id from logits(V). draw is the index of this draw in the
// seeded stream (use the position), so generation is reproducible. scratch must hold 2*V
// floats. Greedy ties go to the lowest id.
int sample_next(const float *logits, int V, const sample_params *sp, uint64_t draw, float *scratch);

#endif
