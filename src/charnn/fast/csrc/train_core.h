// The elementwise part of one time step of charnn.fast.recurrence's hand-written GRU recurrence,
// fused, for rows [begin, end) of the batch. Plain C++ over arrays (the PyTorch binding, which
// splits the rows over threads, is gru_train.cpp), on AVX-512, AVX2 or ARM NEON (simd.h).
//
// Why: PyTorch ran each step's gates as 6 operations forward and about 14 backward, each its
// own pass over (batch x 3H) floats and its own dispatch; here one pass does them all. The
// recurrent products stay in oneDNN, outside.
//
// "Low" is the type the products read and write: Bf16 in bf16 training, else float. State,
// gates and gradients stay fp32; a low value is rounded to nearest even, as PyTorch rounds.
#pragma once

#include <cstdint>

#include "simd.h"

namespace charnn::train {

// Forward, one step for every row b: gi = table[token[b]], gh = the product W_hh h + b_hh;
// r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h_next = n + z (h - n).
// Writes gh (fp32), gates (r, z), n, h_next and its low copy for the next product.
template <typename Low>
void forward_rows(int64_t begin, int64_t end, int64_t H, const float* table, const int64_t* token, const Low* product,
                  float* gh, const float* h, float* gates, float* n, float* h_next, Low* h_next_low) {
  for (int64_t b = begin; b < end; ++b) {
    const float* gi = table + token[b] * 3 * H;
    const Low* p = product + b * 3 * H;
    float *ghr = gh + b * 3 * H, *g = gates + b * 2 * H;
    for (int64_t j = 0; j < H; j += 16) {
      const V16 gh_r = load(p + j), gh_z = load(p + H + j), gh_n = load(p + 2 * H + j);
      store(ghr + j, gh_r);
      store(ghr + H + j, gh_z);
      store(ghr + 2 * H + j, gh_n);
      const V16 r = sigmoid16(load(gi + j) + gh_r);
      const V16 z = sigmoid16(load(gi + H + j) + gh_z);
      const V16 nn = tanh16(fmadd(r, gh_n, load(gi + 2 * H + j)));
      const V16 h_new = fmadd(z, load(h + b * H + j) - nn, nn);
      store(g + j, r);
      store(g + H + j, z);
      store(n + b * H + j, nn);
      store(h_next + b * H + j, h_new);
      store(h_next_low + b * H + j, h_new);
    }
  }
}

// Backward, one step for every row: dh = dh_z + back + grad_out is the gradient reaching h_t
// (dh_z = z dh of the step after, back = that step's d_gh W_hh, null at the last step).
// Writes d_gi (the gradient of the table row), d_gh (of W_hh h + b_hh) and its low copy for
// the products, and dh_z = z dh for the step before.
template <typename Low>
void backward_rows(int64_t begin, int64_t end, int64_t H, float* dh_z, const Low* back, const Low* grad_out,
                   const float* gates, const float* n, const float* h_prev, const float* gh, float* d_gi, float* d_gh,
                   Low* d_gh_low) {
  for (int64_t b = begin; b < end; ++b) {
    const float *g = gates + b * 2 * H, *ghn = gh + b * 3 * H + 2 * H;
    float *gi = d_gi + b * 3 * H, *gh_row = d_gh + b * 3 * H;
    Low* low = d_gh_low + b * 3 * H;
    for (int64_t j = 0; j < H; j += 16) {
      const int64_t i = b * H + j;
      V16 dh = load(dh_z + i);
      if (back != nullptr) dh = dh + load(back + i);
      dh = dh + load(grad_out + i);
      const V16 r = load(g + j), z = load(g + H + j), nn = load(n + i);
      // h = n + z (h_prev - n): dz = dh (h_prev - n), dn = dh (1 - z)
      V16 d_z = (load(h_prev + i) - nn) * dh;
      const V16 dn = fnmadd(dh, z, dh);
      // through tanh: (1 - n^2); n = tanh(gi_n + r gh_n)
      const V16 d_n = fnmadd(dn, nn * nn, dn);
      V16 d_r = d_n * load(ghn + j);
      // through both sigmoids: s (1 - s)
      d_r = d_r * fnmadd(r, r, r);
      d_z = d_z * fnmadd(z, z, z);
      const V16 d_ghn = d_n * r;
      store(gi + j, d_r);
      store(gi + H + j, d_z);
      store(gi + 2 * H + j, d_n);
      store(gh_row + j, d_r);
      store(gh_row + H + j, d_z);
      store(gh_row + 2 * H + j, d_ghn);
      store(low + j, d_r);
      store(low + H + j, d_z);
      store(low + 2 * H + j, d_ghn);
      store(dh_z + i, dh * z);
    }
  }
}

}  // namespace charnn::train
