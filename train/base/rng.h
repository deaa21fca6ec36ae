// rng.h: a counter-based random generator (splitmix64 finalizer over (key, counter)). Every
// draw is a pure function of its key and index, so parallel loops and resumed runs reproduce the
// same numbers without carrying generator state. Thread-safe (no state).
#ifndef RNG_H
#define RNG_H

#include <stdint.h>

// rng_hash mixes a 64-bit value (splitmix64 finalizer); a bijection on uint64.
static inline uint64_t rng_hash(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// rng_u64 returns the counter-th 64-bit draw of stream key.
static inline uint64_t rng_u64(uint64_t key, uint64_t counter) {
    return rng_hash(rng_hash(key) ^ (counter * 0xD1B54A32D192ED03ull));
}

// rng_uniform returns the counter-th draw of stream key as a float in [0, 1) (24 random bits).
static inline float rng_uniform(uint64_t key, uint64_t counter) {
    return (float)(rng_u64(key, counter) >> 40) * (1.0f / 16777216.0f);
}

// rng_normal returns the counter-th standard normal draw of stream key (Box-Muller on two
// independent 32-bit halves of one draw).
float rng_normal(uint64_t key, uint64_t counter);

#endif
