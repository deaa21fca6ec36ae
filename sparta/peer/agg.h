// agg.h: how one exchange combines the peers' values, coordinate by coordinate: the mean (what
// SPARTA and DiLoCo always did), the trimmed mean and the median (robust to a few peers that send
// outliers), and the checks that come first: finite values, and an L2 norm for clipping. Every
// honest peer must compute bitwise the same result from the same values, whatever its thread
// count: the mean sums the rows in the order given; the trimmed mean and the median sort each
// coordinate's values by their IEEE total order (-0 before +0), so the result does not depend on
// the order of the rows, and the trimmed mean sums what it keeps in ascending order. Pure; the
// loops are OpenMP-parallel over coordinates or fixed blocks (each computed by one thread), so
// call them from the trainer thread (the only one that runs OpenMP).
#ifndef AGG_H
#define AGG_H

#include <stddef.h>
#include <stdint.h>

#include "train/base/cfg.h"

#define AGG_MAX_ROWS 256 // values per coordinate (peers of one exchange)

// agg_trim_count returns t, how many of m values (m >= 1) the trimmed mean cuts from each end:
// floor(trim * m) (computed in double with a 1e-6 guard, so trim = 0.2 cuts exactly 1 of 5),
// at most (m - 1) / 2, so that at least one value is left. trim is in [0, 0.5].
int agg_trim_count(float trim, int m);

// agg_rows combines m rows (1 <= m <= AGG_MAX_ROWS) of n values into out(n), per coordinate i
// over {rows[0][i] .. rows[m-1][i]}, with rule:
//   CFG_AGG_MEAN          (((r0 + r1) + r2) + ...) / m in float, rows in the order given
//   CFG_AGG_TRIMMED_MEAN  the values sorted ascending, t = agg_trim_count(trim, m) cut from each
//                         end, the m - 2t left summed from the smallest up, divided by m - 2t
//   CFG_AGG_MEDIAN        the middle sorted value; for even m 0.5 a + 0.5 b of the two middle
//                         ones (no overflow for huge values)
// The values must be finite (reject rows that are not first: agg_finite). out may be one of the
// rows (each coordinate is read whole before it is written); rows are otherwise not modified.
// trim is used by CFG_AGG_TRIMMED_MEAN only. Allocates nothing.
void agg_rows(cfg_aggregate rule, float trim, const float *const *rows, int m, size_t n,
              float *out);

// agg_finite returns 1 if every value of x(n) is finite (no NaN, no +-inf), else 0.
int agg_finite(const float *x, size_t n);

// agg_norm returns the L2 norm of x(n), summed in double over a fixed split of x into blocks
// (the same for every thread count), so every peer computes the same bits.
double agg_norm(const float *x, size_t n);

// agg_clip scales x(n) by max_norm / |x| when its L2 norm |x| (agg_norm) exceeds max_norm (> 0)
// and returns 1, else leaves x as it is and returns 0. *norm (may be NULL) receives |x|.
int agg_clip(float *x, size_t n, float max_norm, double *norm);

// agg_sort_u32 sorts x(m) ascending in place: an insertion sort, for the few values of one
// coordinate (and other short lists: SPARTA's index selection).
void agg_sort_u32(uint32_t *x, size_t m);

#endif
