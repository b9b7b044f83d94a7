// The PyTorch binding of the int8 generation step (int8_core.h): tensors in, pointers to the core.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "int8_core.h"

namespace {

namespace core = charnn::int8;

core::Linear unpack(const std::vector<at::Tensor>& t, size_t i) {
  return {t[i].data_ptr<int8_t>(), t[i + 1].data_ptr<int32_t>(), t[i + 2].data_ptr<float>(),
          t[i + 3].data_ptr<float>(), t[i + 2].size(0) / 3, t[i].size(1) * 4};
}

}  // namespace

// The prepared weights of one GRU model (charnn/fast/step.py builds them once per model).
// table: (V, 3H) fp32, the embedding through layer 0's input product; recurrent: 4 tensors per
// layer (packed, correction, scale, bias); inputs: the same for the input products of layers
// 1.. ; head: the output layer, (V, H) and (V,), fp32.
class Int8GRU {
 public:
  Int8GRU(at::Tensor table, std::vector<at::Tensor> recurrent, std::vector<at::Tensor> inputs, at::Tensor head_weight,
          at::Tensor head_bias)
      : table_(std::move(table)),
        recurrent_(std::move(recurrent)),
        inputs_(std::move(inputs)),
        head_weight_(std::move(head_weight)),
        head_bias_(std::move(head_bias)) {
    TORCH_CHECK(recurrent_.size() % 4 == 0 && inputs_.size() + 4 == recurrent_.size(), "4 tensors per product");
    for (const auto* list : {&recurrent_, &inputs_})
      for (size_t i = 0; i < list->size(); i += 4) {
        const auto& t = *list;
        TORCH_CHECK(t[i].scalar_type() == at::kChar && t[i + 1].scalar_type() == at::kInt &&
                    t[i + 2].scalar_type() == at::kFloat && t[i + 3].scalar_type() == at::kFloat);
        for (size_t j = i; j < i + 4; ++j) TORCH_CHECK(t[j].is_contiguous() && t[j].device().is_cpu());
        model_.layers.push_back(unpack(t, i));
      }
    for (const auto& t : {table_, head_weight_, head_bias_})
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu());
    model_.table = table_.data_ptr<float>();
    model_.head_weight = head_weight_.data_ptr<float>();
    model_.head_bias = head_bias_.data_ptr<float>();
    model_.vocab = table_.size(0);
    model_.hidden = table_.size(1) / 3;
  }

  // One step for every row: tokens (B,); state (L, B, H) fp32, updated in place; the logits
  // (B, V) are written into `logits`. gi (B, 3H) fp32 and xq (B, H) uint8 are scratch.
  void step(const at::Tensor& tokens_in, at::Tensor& state, at::Tensor& gi, at::Tensor& xq, at::Tensor& logits) const {
    const int64_t layers = state.size(0), batch = state.size(1), H = state.size(2), V = model_.vocab;
    TORCH_CHECK(state.dim() == 3 && size_t(layers) == recurrent_.size() / 4 && H == model_.hidden, "state does not fit");
    TORCH_CHECK(state.is_contiguous() && state.scalar_type() == at::kFloat, "state must be contiguous fp32");
    TORCH_CHECK(gi.numel() >= batch * 3 * H && xq.numel() >= batch * H && logits.numel() >= batch * V);
    const at::Tensor tokens = tokens_in.to(at::kLong).contiguous();
    TORCH_CHECK(tokens.numel() == batch, "one token per row");
    const int64_t* token = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) TORCH_CHECK(token[b] >= 0 && token[b] < V, "token out of range");
    core::step(model_, token, batch, layers, state.data_ptr<float>(), gi.data_ptr<float>(), xq.data_ptr<uint8_t>(),
               logits.data_ptr<float>(), at::get_num_threads());
  }

 private:
  at::Tensor table_;
  std::vector<at::Tensor> recurrent_, inputs_;  // kept alive: model_ points into them
  at::Tensor head_weight_, head_bias_;
  core::Model model_;
};

// One index per row of logits (B, V), as charnn.sample.sample_next picks it (core::sample).
at::Tensor sample(const at::Tensor& logits_in, double temperature, int64_t top_k, double top_p,
                  const at::Tensor& uniforms_in) {
  const at::Tensor logits = logits_in.to(at::kFloat).contiguous();
  const at::Tensor uniforms = uniforms_in.to(at::kDouble).contiguous();
  TORCH_CHECK(logits.dim() == 2 && uniforms.numel() == logits.size(0), "one uniform per row of logits");
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  core::sample(logits.data_ptr<float>(), logits.size(0), logits.size(1), temperature, top_k, top_p,
               uniforms.data_ptr<double>(), out.data_ptr<int64_t>());
  return out;
}

bool enable_tiles() { return core::enable_amx(); }

void disable_tiles() {
#if CHARNN_AMX
  core::amx_enabled = false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Local to each build: a process that loads two (tests ask for each instruction set) registers the class twice.
  pybind11::class_<Int8GRU>(m, "Int8GRU", pybind11::module_local())
      .def(pybind11::init<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>())
      // The GIL is let go while the kernels run: a server's event loop goes on meanwhile.
      .def("step", &Int8GRU::step, "one generation step for every row: layers, gates and output layer",
           pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("sample", &sample, "one character per row of logits, as charnn.sample.sample_next picks it",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("enable_tiles", &enable_tiles, "use AMX for 16 rows at a time where the CPU and Linux allow it");
  m.def("disable_tiles", &disable_tiles, "compute every row without AMX");
  m.def("isa", &charnn::isa_name, "the instruction set this build runs on");
}
