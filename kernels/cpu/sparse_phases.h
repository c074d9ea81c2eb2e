// Internal to kernels/cpu (sparse.cpp, sparse_train.cpp): the layout in which the sparse
// forward and the sparse weight gradient read a convolution's input.
//
// Per image, the input is rewritten as zero-padded "phase planes" (only those some nonzero
// reads): for stride st, phase (a, b) of channel c holds the padded pixels at rows st*i + a
// and columns st*j + b, a (Hph, Wph) plane. In that layout the tap (r, s) of output pixel
// (p, q) is the phase (r % st, s % st) pixel (p + r/st, q + s/st), so for one nonzero weight
// the whole output plane, read row after row with row length Wph, is a single run of the
// phase planes starting at a fixed offset:
//
//   X[offset(c, r, s) + p*Wph + q]      offset = ((c*phases + slot(r%st, s%st)) * Hph + r/st) * Wph + s/st
//
// Grid columns q >= Q (and grid positions past the last output row) read values that the
// callers throw away (the forward) or multiply by zeros (the weight gradient's dy grid).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/params.h"
#include "kernels/sparse.h"

namespace dnns::cpu {

// Where one conv's nonzeros read in an image's phase planes.
struct PhaseLayout {
  int st = 1, phases = 0, Hph = 0, Wph = 0, plane = 0;
  std::vector<int> slot;  // (st*st) phase (a, b)'s place among the built phases, -1: unused
  int64_t image = 0;      // floats of one image's phase planes (C, phases, Hph, Wph)
  int L = 0;              // grid positions per filter, (P-1)*Wph + Q rounded up to whole vectors of 8
  int64_t slack = 0;      // zero floats after the last image that the runs may read (L + 64)
};

// The layout of conv p whose weight w (K rows of C*R*S columns) has the given nonzeros. Only
// the phases some nonzero reads are built (a strided 1x1 conv reads one of four). Throws Error
// naming `op` when an image's planes and their slack do not fit 32-bit offsets.
PhaseLayout phase_layout(const Conv2dParams& p, const SparseRows& w, const char* op);

// tab (C*R*S): where the run of each column (c, r, s) starts in an image's phase planes of
// layout g (a nonzero's run is its column's); a column of a phase not built gets an offset
// that is never read (no nonzero has it).
void column_offsets(const Conv2dParams& p, const PhaseLayout& g, int32_t* tab);

// One image's phase planes: element (i, j) of phase (a, b) of channel c is the padded input
// pixel (st*i + a, st*j + b), zero outside the image. x (C, H, W) -> dst (C, phases, Hph, Wph),
// channels [c0, c1) only; the slack after the planes is the caller's.
void phase_planes(const Conv2dParams& p, const PhaseLayout& g, const float* x, int c0, int c1, float* dst);

}  // namespace dnns::cpu
