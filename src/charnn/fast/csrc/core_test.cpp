// The kernels' cores (int8_core.h, train_core.h) against plain scalar references, with no
// PyTorch: built for each instruction set a machine can run or emulate (AVX-512, AVX2, ARM NEON
// under QEMU) by tests/test_kernel_core.py. Prints one line per failure and a closing count;
// exits non-zero on any failure.
//
//     g++ -O2 -std=c++17 -mavx2 -mfma -ffp-contract=off core_test.cpp -o core_test -lpthread && ./core_test

#include <cmath>
#include <cstdio>
#include <vector>

#include "int8_core.h"
#include "train_core.h"

namespace {

namespace core = charnn::int8;

int passed = 0, failed = 0;

void expect(bool ok, const char* what, double got = 0, double want = 0) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s (got %.9g, want %.9g)\n", what, got, want);
  }
}

struct Random {  // a small LCG: the same numbers on every machine
  uint64_t state;
  uint32_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * (next() % 1000001) / 1000000.0f; }
  int integer(int lo, int hi) { return lo + static_cast<int>(next() % static_cast<uint32_t>(hi - lo + 1)); }
};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// One int8 product's arrays, and its layout for the kernel (charnn/fast/step.py's _pack).
struct Product {
  std::vector<int8_t> w, packed;  // w: (3H, K) row-major
  std::vector<int32_t> correction;
  std::vector<float> scale, bias;
  int64_t H, K;

  Product(Random& rng, int64_t hidden, int64_t inputs) : H(hidden), K(inputs) {
    w.resize(3 * H * K);
    for (auto& x : w) x = static_cast<int8_t>(rng.integer(-127, 127));
    packed.resize(w.size());
    const int64_t units = core::kUnits, groups = K / 4;
    for (int64_t row = 0; row < 3 * H; ++row)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t gate = row / H, unit = row % H, block = unit / units;
        const int64_t at = ((block * groups + k / 4) * 3 + gate) * units * 4 + (unit % units) * 4 + k % 4;
        packed[at] = w[row * K + k];
      }
    for (int64_t row = 0; row < 3 * H; ++row) {
      int32_t total = 0;
      for (int64_t k = 0; k < K; ++k) total += w[row * K + k];
      correction.push_back(128 * total);
      scale.push_back(rng.uniform(0.001f, 0.02f) / 127);
      bias.push_back(rng.uniform(-0.5f, 0.5f));
    }
  }
  core::Linear linear() const {
    return {packed.data(), correction.data(), scale.data(), bias.data(), H, K};
  }
  int32_t exact(int64_t row, const uint8_t* q) const {  // the sum over k of (q - 128) w
    int32_t total = 0;
    for (int64_t k = 0; k < K; ++k) total += (int32_t(q[k]) - 128) * w[row * K + k];
    return total;
  }
};

void test_products(Random& rng) {
  // Every row count that takes a different path: 1 alone, a batch of kRows, a remainder, AMX's 16.
  for (int64_t batch : {1, 2, 3, 4, 5, 16, 19}) {
    const int64_t H = 32, K = 64;
    Product p(rng, H, K);
    std::vector<uint8_t> q(batch * K);
    for (auto& x : q) x = static_cast<uint8_t>(rng.integer(1, 255));
    std::vector<float> out(batch * 3 * H);
    core::run(p.linear(), q.data(), batch, nullptr, 0, nullptr, 0, out.data(), 3 * H, 2);
    bool same = true;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t row = 0; row < 3 * H; ++row) {
        // The exact sum fits a float's 24 bits, so one fused multiply-add gives the kernel's value.
        const float want = std::fmaf(float(p.exact(row, &q[b * K])), p.scale[row], p.bias[row]);
        if (out[b * 3 * H + row] != want) {
          if (same) expect(false, "int8 product equals the exact sum, scaled", out[b * 3 * H + row], want);
          same = false;
        }
      }
    if (same) expect(true, "");
  }
}

void test_quantize(Random& rng) {
  std::vector<float> x(37);
  for (auto& v : x) v = rng.uniform(-1.0f, 1.0f);
  x[0] = -1.0f;
  x[1] = 1.0f;
  std::vector<uint8_t> q(x.size());
  core::quantize(x.data(), q.data(), x.size());
  bool ok = true;
  for (size_t i = 0; i < x.size(); ++i) ok &= q[i] == static_cast<uint8_t>(std::floor(x[i] * 127.0f + 128.5f));
  expect(ok && q[0] == 1 && q[1] == 255, "quantize: round(127 x) + 128");
}

// A GRU model of `layers` layers, hidden H, vocabulary V, as the kernel's arrays.
struct Model {
  int64_t H, V, L;
  std::vector<float> table, head_w, head_b;
  std::vector<Product> products;  // recurrent of each layer, then input of layers 1..
  core::Model view;

  Model(Random& rng, int64_t hidden, int64_t vocab, int64_t layers) : H(hidden), V(vocab), L(layers) {
    for (int64_t i = 0; i < V * 3 * H; ++i) table.push_back(rng.uniform(-1.0f, 1.0f));
    for (int64_t i = 0; i < V * H; ++i) head_w.push_back(rng.uniform(-0.3f, 0.3f));
    for (int64_t i = 0; i < V; ++i) head_b.push_back(rng.uniform(-0.3f, 0.3f));
    for (int64_t i = 0; i < 2 * L - 1; ++i) products.emplace_back(rng, H, H);
    view = {table.data(), {}, head_w.data(), head_b.data(), V, H};
    for (auto& p : products) view.layers.push_back(p.linear());
  }

  // One step of every row in double precision, from the same quantized inputs the kernel sees.
  void reference(const int64_t* tokens, int64_t batch, std::vector<float>& state, std::vector<double>& logits) const {
    std::vector<double> gi(3 * H);
    std::vector<uint8_t> q(H);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < 3 * H; ++i) gi[i] = table[tokens[b] * 3 * H + i];
      for (int64_t layer = 0; layer < L; ++layer) {
        float* h = &state[(layer * batch + b) * H];
        if (layer > 0) {
          core::quantize(&state[((layer - 1) * batch + b) * H], q.data(), H);
          const Product& p = products[L + layer - 1];
          for (int64_t i = 0; i < 3 * H; ++i) gi[i] = double(p.exact(i, q.data())) * p.scale[i] + p.bias[i];
        }
        core::quantize(h, q.data(), H);
        const Product& p = products[layer];
        std::vector<double> gh(3 * H);
        for (int64_t i = 0; i < 3 * H; ++i) gh[i] = double(p.exact(i, q.data())) * p.scale[i] + p.bias[i];
        for (int64_t j = 0; j < H; ++j) {
          const double r = sigmoid(gi[j] + gh[j]), z = sigmoid(gi[H + j] + gh[H + j]);
          const double n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
          h[j] = static_cast<float>(n + z * (h[j] - n));
        }
      }
      for (int64_t v = 0; v < V; ++v) {
        double total = head_b[v];
        for (int64_t j = 0; j < H; ++j) total += double(head_w[v * H + j]) * state[((L - 1) * batch + b) * H + j];
        logits[b * V + v] = total;
      }
    }
  }

  void step(const int64_t* tokens, int64_t batch, std::vector<float>& state, std::vector<float>& logits,
            int threads) const {
    std::vector<float> gi(batch * 3 * H);
    std::vector<uint8_t> xq(batch * H);
    core::step(view, tokens, batch, L, state.data(), gi.data(), xq.data(), logits.data(), threads);
  }
};

void test_steps(Random& rng) {
  for (int64_t layers : {1, 2}) {
    const int64_t H = 48, V = 13, batch = 19;
    Model m(rng, H, V, layers);
    std::vector<int64_t> tokens(batch);
    for (auto& t : tokens) t = rng.integer(0, V - 1);
    std::vector<float> start(layers * batch * H);
    for (auto& x : start) x = rng.uniform(-1.0f, 1.0f);

    // Against the reference: with 2 layers, a rounding can move one of layer 1's quantized
    // inputs by a step (1/127); a wrong gate or product moves the numbers by far more.
    std::vector<float> state = start, want_state = start, logits(batch * V);
    std::vector<double> want_logits(batch * V);
    m.step(tokens.data(), batch, state, logits, 2);
    m.reference(tokens.data(), batch, want_state, want_logits);
    const double tolerance = layers == 1 ? 2e-5 : 2e-2;
    double worst = 0;
    for (size_t i = 0; i < state.size(); ++i) worst = std::max(worst, std::fabs(double(state[i]) - want_state[i]));
    for (size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, std::fabs(logits[i] - want_logits[i]));
    expect(worst <= tolerance, layers == 1 ? "step of 1 layer equals the reference" : "step of 2 layers", worst,
           tolerance);

    // A row's numbers do not depend on its batch or on the thread count: bit for bit.
    bool same = true;
    for (int threads : {1, 2, 3}) {
      std::vector<float> again = start, again_logits(batch * V);
      for (int t = 0; t < 3; ++t) m.step(tokens.data(), batch, again, again_logits, threads);
      for (int64_t b = 0; b < batch; ++b) {
        std::vector<float> alone(layers * H), alone_logits(V);
        for (int64_t l = 0; l < layers; ++l)
          std::copy_n(&start[(l * batch + b) * H], H, &alone[l * H]);
        for (int t = 0; t < 3; ++t) m.step(&tokens[b], 1, alone, alone_logits, threads);
        for (int64_t l = 0; l < layers; ++l)
          same &= std::equal(alone.begin() + l * H, alone.begin() + (l + 1) * H, &again[(l * batch + b) * H]);
        same &= std::equal(alone_logits.begin(), alone_logits.end(), &again_logits[b * V]);
      }
    }
    expect(same, "a row's step does not depend on its batch or the thread count");
  }
}

float bf16_round(float x) {  // to nearest, ties to even
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFF + ((bits >> 16) & 1);
  bits &= 0xFFFF0000u;
  std::memcpy(&x, &bits, 4);
  return x;
}

template <typename Low>
float to_float(Low x) {
  if constexpr (std::is_same_v<Low, float>) {
    return x;
  } else {
    uint32_t bits = uint32_t(x.bits) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
}

template <typename Low>
Low from_float(float x) {
  if constexpr (std::is_same_v<Low, float>) {
    return x;
  } else {
    uint32_t bits;
    x = bf16_round(x);
    std::memcpy(&bits, &x, 4);
    return charnn::Bf16{static_cast<uint16_t>(bits >> 16)};
  }
}

template <typename Low>
void test_training(Random& rng, const char* name) {
  const int64_t B = 5, H = 32, V = 7;
  std::vector<float> table(V * 3 * H), h(B * H), gh(B * 3 * H), gates(B * 2 * H), n(B * H), h_next(B * H);
  std::vector<int64_t> tokens(B);
  std::vector<Low> product(B * 3 * H), h_low(B * H);
  for (auto& x : table) x = rng.uniform(-2.0f, 2.0f);
  for (auto& x : h) x = rng.uniform(-1.0f, 1.0f);
  for (auto& t : tokens) t = rng.integer(0, V - 1);
  for (auto& x : product) x = from_float<Low>(rng.uniform(-2.0f, 2.0f));
  charnn::train::forward_rows<Low>(0, B, H, table.data(), tokens.data(), product.data(), gh.data(), h.data(),
                                   gates.data(), n.data(), h_next.data(), h_low.data());
  double worst = 0;
  bool rounded = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      const float* gi = &table[tokens[b] * 3 * H];
      const double ghr = to_float(product[b * 3 * H + j]), ghz = to_float(product[b * 3 * H + H + j]),
                   ghn = to_float(product[b * 3 * H + 2 * H + j]);
      const double r = sigmoid(gi[j] + ghr), z = sigmoid(gi[H + j] + ghz), nn = std::tanh(gi[2 * H + j] + r * ghn);
      const double want = nn + z * (h[b * H + j] - nn);
      worst = std::max({worst, std::fabs(h_next[b * H + j] - want), std::fabs(gates[b * 2 * H + j] - r),
                        std::fabs(gates[b * 2 * H + H + j] - z), std::fabs(n[b * H + j] - nn)});
      rounded &= to_float(h_low[b * H + j]) == to_float(from_float<Low>(h_next[b * H + j]));
    }
  expect(worst <= 2e-6, name, worst, 2e-6);
  expect(rounded, "the low copy of the new state is rounded to nearest even");

  std::vector<float> dh_z(B * H), d_gi(B * 3 * H), d_gh(B * 3 * H);
  std::vector<Low> back(B * H), grad(B * H), d_low(B * 3 * H);
  for (auto& x : dh_z) x = rng.uniform(-1.0f, 1.0f);
  for (auto& x : back) x = from_float<Low>(rng.uniform(-1.0f, 1.0f));
  for (auto& x : grad) x = from_float<Low>(rng.uniform(-1.0f, 1.0f));
  const std::vector<float> dh_z_before = dh_z;
  charnn::train::backward_rows<Low>(0, B, H, dh_z.data(), back.data(), grad.data(), gates.data(), n.data(), h.data(),
                                    gh.data(), d_gi.data(), d_gh.data(), d_low.data());
  worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      const int64_t i = b * H + j;
      const double dh = double(dh_z_before[i]) + to_float(back[i]) + to_float(grad[i]);
      const double r = gates[b * 2 * H + j], z = gates[b * 2 * H + H + j], nn = n[i];
      const double d_n = dh * (1 - z) * (1 - nn * nn);
      const double d_z = dh * (h[i] - nn) * z * (1 - z);
      const double d_r = d_n * gh[b * 3 * H + 2 * H + j] * r * (1 - r);
      const double want[] = {d_r, d_z, d_n, d_r, d_z, d_n * r, dh * z};
      const double got[] = {d_gi[b * 3 * H + j], d_gi[b * 3 * H + H + j], d_gi[b * 3 * H + 2 * H + j],
                            d_gh[b * 3 * H + j], d_gh[b * 3 * H + H + j], d_gh[b * 3 * H + 2 * H + j], dh_z[i]};
      for (int k = 0; k < 7; ++k) worst = std::max(worst, std::fabs(got[k] - want[k]));
    }
  expect(worst <= 2e-6, "training gates backward equal the reference", worst, 2e-6);
}

}  // namespace

int main() {
  Random rng{12345};
  test_quantize(rng);
  test_products(rng);
  test_steps(rng);
  test_training<float>(rng, "training gates forward (fp32 products) equal the reference");
  test_training<charnn::Bf16>(rng, "training gates forward (bf16 products) equal the reference");
  std::printf("core_test %s: %d passed, %d failed\n", charnn::isa_name(), passed, failed);
  return failed == 0 ? 0 : 1;
}
