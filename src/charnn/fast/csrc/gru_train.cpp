// The elementwise part of one time step of charnn.fast.recurrence's hand-written GRU recurrence, fused.
//
// Why: PyTorch ran each step's gates as 6 operations forward and about 14 backward, each its
// own pass over (batch x 3H) floats and its own dispatch; here one pass does them all, rows
// split over the threads. The recurrent products stay in oneDNN (AMX), outside.
//
// "low" is the dtype the products read and write: bf16 in bf16 training, else fp32. State,
// gates and gradients stay fp32; a low value is rounded to nearest even, as PyTorch rounds.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include "simd.h"

namespace {

using charnn::sigmoid16;
using charnn::tanh16;

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {  // bf16 is the top half of an fp32
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(at::BFloat16* p, __m512 v) {  // round to nearest, ties to even
  __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

void check(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() == numel, name, ": wrong dtype or shape");
}

// Forward, one step for every row b: gi = table[token[b]], gh = the product W_hh h + b_hh;
// r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h_next = n + z (h - n).
template <typename Low>
void forward(const at::Tensor& table, const at::Tensor& tokens, const at::Tensor& product, at::Tensor& gh,
             const at::Tensor& h, at::Tensor& gates, at::Tensor& n, at::Tensor& h_next, at::Tensor& h_next_low) {
  const int64_t B = h.size(0), H = h.size(1), V = table.size(0);
  const float* tab = table.data_ptr<float>();
  const int64_t* token = tokens.data_ptr<int64_t>();
  const Low* prod = product.data_ptr<Low>();
  float *ghp = gh.data_ptr<float>(), *gp = gates.data_ptr<float>(), *np = n.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  float* out = h_next.data_ptr<float>();
  Low* out_low = h_next_low.data_ptr<Low>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(token[b] >= 0 && token[b] < V, "token out of range");
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* gi = tab + token[b] * 3 * H;
      const Low* p = prod + b * 3 * H;
      float *ghr = ghp + b * 3 * H, *g = gp + b * 2 * H;
      for (int64_t j = 0; j < H; j += 16) {
        const __m512 gh_r = load16(p + j), gh_z = load16(p + H + j), gh_n = load16(p + 2 * H + j);
        store16(ghr + j, gh_r);
        store16(ghr + H + j, gh_z);
        store16(ghr + 2 * H + j, gh_n);
        const __m512 r = sigmoid16(_mm512_add_ps(load16(gi + j), gh_r));
        const __m512 z = sigmoid16(_mm512_add_ps(load16(gi + H + j), gh_z));
        const __m512 nn = tanh16(_mm512_fmadd_ps(r, gh_n, load16(gi + 2 * H + j)));
        const __m512 h_new = _mm512_fmadd_ps(z, _mm512_sub_ps(load16(hp + b * H + j), nn), nn);
        store16(g + j, r);
        store16(g + H + j, z);
        store16(np + b * H + j, nn);
        store16(out + b * H + j, h_new);
        store16(out_low + b * H + j, h_new);
      }
    }
  });
}

// Backward, one step for every row: dh = dh_z + back + grad_out is the gradient reaching h_t
// (dh_z = z dh of the step after, back = that step's d_gh W_hh, absent at the last step).
// Writes d_gi (the gradient of the table row), d_gh (of W_hh h + b_hh) and its low copy for
// the products, and dh_z = z dh for the step before.
template <typename Low>
void backward(at::Tensor& dh_z, const c10::optional<at::Tensor>& back, const at::Tensor& grad_out,
              const at::Tensor& gates, const at::Tensor& n, const at::Tensor& h_prev, const at::Tensor& gh,
              at::Tensor& d_gi, at::Tensor& d_gh, at::Tensor& d_gh_low) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  float* dz_p = dh_z.data_ptr<float>();
  const Low* back_p = back.has_value() ? back->data_ptr<Low>() : nullptr;
  const Low* grad_p = grad_out.data_ptr<Low>();
  const float *gp = gates.data_ptr<float>(), *np = n.data_ptr<float>(), *hp = h_prev.data_ptr<float>();
  const float* ghp = gh.data_ptr<float>();
  float *dgi = d_gi.data_ptr<float>(), *dgh = d_gh.data_ptr<float>();
  Low* dlow = d_gh_low.data_ptr<Low>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float *g = gp + b * 2 * H, *ghn = ghp + b * 3 * H + 2 * H;
      float *gi = dgi + b * 3 * H, *gh_row = dgh + b * 3 * H;
      Low* low = dlow + b * 3 * H;
      for (int64_t j = 0; j < H; j += 16) {
        const int64_t i = b * H + j;
        __m512 dh = load16(dz_p + i);
        if (back_p != nullptr) dh = _mm512_add_ps(dh, load16(back_p + i));
        dh = _mm512_add_ps(dh, load16(grad_p + i));
        const __m512 r = load16(g + j), z = load16(g + H + j), nn = load16(np + i);
        // h = n + z (h_prev - n): dz = dh (h_prev - n), dn = dh (1 - z)
        __m512 d_z = _mm512_mul_ps(_mm512_sub_ps(load16(hp + i), nn), dh);
        const __m512 dn = _mm512_fnmadd_ps(dh, z, dh);
        // through tanh: (1 - n^2); n = tanh(gi_n + r gh_n)
        const __m512 d_n = _mm512_fnmadd_ps(dn, _mm512_mul_ps(nn, nn), dn);
        __m512 d_r = _mm512_mul_ps(d_n, load16(ghn + j));
        // through both sigmoids: s (1 - s)
        d_r = _mm512_mul_ps(d_r, _mm512_fnmadd_ps(r, r, r));
        d_z = _mm512_mul_ps(d_z, _mm512_fnmadd_ps(z, z, z));
        const __m512 d_ghn = _mm512_mul_ps(d_n, r);
        store16(gi + j, d_r);
        store16(gi + H + j, d_z);
        store16(gi + 2 * H + j, d_n);
        store16(gh_row + j, d_r);
        store16(gh_row + H + j, d_z);
        store16(gh_row + 2 * H + j, d_ghn);
        store16(low + j, d_r);
        store16(low + H + j, d_z);
        store16(low + 2 * H + j, d_ghn);
        store16(dz_p + i, _mm512_mul_ps(dh, z));
      }
    }
  });
}

}  // namespace

void forward_step(const at::Tensor& table, const at::Tensor& tokens, const at::Tensor& product, at::Tensor& gh,
                  const at::Tensor& h, at::Tensor& gates, at::Tensor& n, at::Tensor& h_next, at::Tensor& h_next_low) {
  const int64_t B = h.size(0), H = h.size(1);
  const auto low = product.scalar_type();
  TORCH_CHECK(H % 16 == 0 && (low == at::kBFloat16 || low == at::kFloat), "hidden size or dtype not supported");
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.is_contiguous() && table.size(1) == 3 * H, "table");
  check(tokens, at::kLong, B, "tokens");
  check(product, low, B * 3 * H, "product");
  check(gh, at::kFloat, B * 3 * H, "gh");
  check(h, at::kFloat, B * H, "h");
  check(gates, at::kFloat, B * 2 * H, "gates");
  check(n, at::kFloat, B * H, "n");
  check(h_next, at::kFloat, B * H, "h_next");
  check(h_next_low, low, B * H, "h_next_low");
  if (low == at::kBFloat16)
    forward<at::BFloat16>(table, tokens, product, gh, h, gates, n, h_next, h_next_low);
  else
    forward<float>(table, tokens, product, gh, h, gates, n, h_next, h_next_low);
}

void backward_step(at::Tensor& dh_z, const c10::optional<at::Tensor>& back, const at::Tensor& grad_out,
                   const at::Tensor& gates, const at::Tensor& n, const at::Tensor& h_prev, const at::Tensor& gh,
                   at::Tensor& d_gi, at::Tensor& d_gh, at::Tensor& d_gh_low) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  const auto low = d_gh_low.scalar_type();
  TORCH_CHECK(H % 16 == 0 && (low == at::kBFloat16 || low == at::kFloat), "hidden size or dtype not supported");
  check(dh_z, at::kFloat, B * H, "dh_z");
  if (back.has_value()) check(*back, low, B * H, "back");
  check(grad_out, low, B * H, "grad_out");
  check(gates, at::kFloat, B * 2 * H, "gates");
  check(n, at::kFloat, B * H, "n");
  check(h_prev, at::kFloat, B * H, "h_prev");
  check(gh, at::kFloat, B * 3 * H, "gh");
  check(d_gi, at::kFloat, B * 3 * H, "d_gi");
  check(d_gh, at::kFloat, B * 3 * H, "d_gh");
  check(d_gh_low, low, B * 3 * H, "d_gh_low");
  if (low == at::kBFloat16)
    backward<at::BFloat16>(dh_z, back, grad_out, gates, n, h_prev, gh, d_gi, d_gh, d_gh_low);
  else
    backward<float>(dh_z, back, grad_out, gates, n, h_prev, gh, d_gi, d_gh, d_gh_low);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The GIL is let go while the kernels run, as PyTorch's own operations do.
  m.def("forward_step", &forward_step, "the gates of one GRU time step, from the recurrent product",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("backward_step", &backward_step, "the gradients of one GRU time step, but the products'",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
