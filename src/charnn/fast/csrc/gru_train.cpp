// The PyTorch binding of the GRU training gates (train_core.h): checks, then the rows split over
// PyTorch's threads.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "train_core.h"

namespace {

void check(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() == numel, name, ": wrong dtype or shape");
}

// The core's view of a tensor of the products' dtype: float, or bf16 bits.
template <typename Low>
Low* low_ptr(const at::Tensor& t) {
  if constexpr (std::is_same_v<Low, float>) {
    return t.data_ptr<float>();
  } else {
    return reinterpret_cast<Low*>(t.data_ptr<at::BFloat16>());
  }
}

template <typename Low>
void forward(const at::Tensor& table, const at::Tensor& tokens, const at::Tensor& product, at::Tensor& gh,
             const at::Tensor& h, at::Tensor& gates, at::Tensor& n, at::Tensor& h_next, at::Tensor& h_next_low) {
  const int64_t B = h.size(0), H = h.size(1), V = table.size(0);
  const int64_t* token = tokens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(token[b] >= 0 && token[b] < V, "token out of range");
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    charnn::train::forward_rows<Low>(begin, end, H, table.data_ptr<float>(), token, low_ptr<Low>(product),
                                     gh.data_ptr<float>(), h.data_ptr<float>(), gates.data_ptr<float>(),
                                     n.data_ptr<float>(), h_next.data_ptr<float>(), low_ptr<Low>(h_next_low));
  });
}

template <typename Low>
void backward(at::Tensor& dh_z, const c10::optional<at::Tensor>& back, const at::Tensor& grad_out,
              const at::Tensor& gates, const at::Tensor& n, const at::Tensor& h_prev, const at::Tensor& gh,
              at::Tensor& d_gi, at::Tensor& d_gh, at::Tensor& d_gh_low) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  const Low* back_p = back.has_value() ? low_ptr<Low>(*back) : nullptr;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    charnn::train::backward_rows<Low>(begin, end, H, dh_z.data_ptr<float>(), back_p, low_ptr<Low>(grad_out),
                                      gates.data_ptr<float>(), n.data_ptr<float>(), h_prev.data_ptr<float>(),
                                      gh.data_ptr<float>(), d_gi.data_ptr<float>(), d_gh.data_ptr<float>(),
                                      low_ptr<Low>(d_gh_low));
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
    forward<charnn::Bf16>(table, tokens, product, gh, h, gates, n, h_next, h_next_low);
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
    backward<charnn::Bf16>(dh_z, back, grad_out, gates, n, h_prev, gh, d_gi, d_gh, d_gh_low);
  else
    backward<float>(dh_z, back, grad_out, gates, n, h_prev, gh, d_gi, d_gh, d_gh_low);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The GIL is let go while the kernels run, as PyTorch's own operations do.
  m.def("forward_step", &forward_step, "the gates of one GRU time step, from the recurrent product",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("backward_step", &backward_step, "the gradients of one GRU time step, but the products'",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("isa", &charnn::isa_name, "the instruction set this build runs on");
}
