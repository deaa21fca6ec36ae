// select.h: SPARTA index selection. A round's index set is a pure function of (seed, round), so
// every peer derives the same set and indices never go on the wire. Both selectors draw from a
// keyed pseudo-random permutation of [0, N) (a Feistel network with cycle walking):
//   SELECT_RANDOM       I_r = the first k entries of the permutation keyed by (seed, r): k
//                       distinct indices, uniformly without replacement.
//   SELECT_PARTITIONED  one permutation keyed by seed, cut into ceil(N/k) disjoint chunks of k
//                       (the last may be shorter); round r takes chunk r mod ceil(N/k), so every
//                       parameter is covered once per cycle.
// Indices are returned sorted ascending (cache-friendly gather/scatter). Pure; any thread.
#ifndef SELECT_H
#define SELECT_H

#include <stddef.h>
#include <stdint.h>

enum { SELECT_RANDOM = 0, SELECT_PARTITIONED = 1 };

// select_k returns k = round(p * n), at least 1 when p > 0 and n > 0, at most n.
size_t select_k(double p, size_t n);

// select_count returns the number of indices round r selects (k, or the last chunk's size for
// SELECT_PARTITIONED).
size_t select_count(int selector, uint64_t seed, uint64_t round, size_t n, size_t k);

// select_indices writes the round's indices, sorted ascending, into out (room for k) and returns
// how many were written (select_count). Uses OpenMP-free code; O(k log k) at most.
size_t select_indices(int selector, uint64_t seed, uint64_t round, size_t n, size_t k,
                      uint32_t *out);

// select_partners gives the gossip graph of round r among world ranks: fanout (1 .. world - 1)
// distinct offsets d_1..d_F drawn from [1, world) by (seed, r), the same on every peer. Rank q
// sends its values to q + d_j and averages with those of q - d_j (mod world), so every rank has
// F senders and F receivers and every value is in F + 1 averages: the mean over all ranks is
// kept. Writes the offsets to out (room for fanout) and returns how many (fanout, at most
// world - 1). Pure; any thread.
int select_partners(uint64_t seed, uint64_t round, int world, int fanout, int *out);

#endif
