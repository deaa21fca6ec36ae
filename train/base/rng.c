// rng.c: the out-of-line part of rng.h (Box-Muller). Pure functions; any thread.
#include "train/base/rng.h"

#include <math.h>

float rng_normal(uint64_t key, uint64_t counter) {
    uint64_t r = rng_u64(key, counter);
    double u1 = ((double)(r >> 32) + 1.0) * (1.0 / 4294967297.0); // (0, 1], never log(0)
    double u2 = (double)(r & 0xFFFFFFFFu) * (1.0 / 4294967296.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
