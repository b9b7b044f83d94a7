// One generation step of a GRU CharRNN with int8 weights, fused: table lookup, every layer's
// products and gates, and the output layer, in one call from Python.
//
// Why: one stream spends most of a step in dozens of small PyTorch calls and in a one-row
// int8 product that oneDNN does in ~75-115 us. Here the recurrent weights are laid out so
// that 16 hidden units' r, z and n rows are read together; each thread keeps its own half of
// the weights (1.5 MB for the reference model) in its core's L2 cache; and the gates run on
// the products while they are still in registers.
//
// Numbers: activations in [-1, 1] become uint8 round(127 x) + 128; the products are exact
// int32 sums (AVX-512 VNNI for a few rows, AMX tiles for 16 rows at a time), corrected for the
// +128 with precomputed row sums. Every row then goes through the same float epilogue, so a
// row's result never depends on the batch it was computed in or on which unit computed it.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "simd.h"

namespace {

using charnn::sigmoid16;
using charnn::tanh16;

constexpr int kUnits = 16;                // hidden units per block: one AVX-512 register of floats
constexpr int kGroupBytes = 3 * kUnits * 4;  // one group of 4 inputs for the r, z and n rows of a block

// Weights of one int8 product y = W x + b with W (3H, K), charnn/fast/step.py's Int8Product:
// packed[block][k / 4][gate][unit][k % 4], gate in (r, z, n), unit in the block's 16.
struct Int8Linear {
  const int8_t* packed;
  const int32_t* correction;  // 128 * (sum of row r of W): removes the +128 of the inputs
  const float* scale;         // row scale of W times the input scale 1/127
  const float* bias;
  int64_t hidden;  // H: W has 3H rows
  int64_t inputs;  // K
};

Int8Linear unpack(const std::vector<at::Tensor>& t, size_t i) {
  return {t[i].data_ptr<int8_t>(), t[i + 1].data_ptr<int32_t>(), t[i + 2].data_ptr<float>(),
          t[i + 3].data_ptr<float>(), t[i + 2].size(0) / 3, t[i].size(1) * 4};
}

// x in [-1, 1] -> round(127 x) + 128, saturated to [0, 255].
void quantize(const float* x, uint8_t* q, int64_t n) {
  const __m512 mul = _mm512_set1_ps(127.0f), add = _mm512_set1_ps(128.5f);
  const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), mul), add);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
  for (; i < n; ++i) {
    float v = std::min(std::max(x[i] * 127.0f + 128.5f, 0.0f), 255.0f);
    q[i] = static_cast<uint8_t>(v);
  }
}

// The float result of rows [offset, offset + 16) from their exact int32 sums.
__m512 dequantize(const int32_t* sums, const Int8Linear& w, int64_t offset) {
  const __m512i exact = _mm512_sub_epi32(_mm512_loadu_si512(sums), _mm512_loadu_si512(w.correction + offset));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_loadu_ps(w.scale + offset), _mm512_loadu_ps(w.bias + offset));
}

// sums: the (r, z, n) x 16 int32 products of one block for one row. Either the GRU update of
// that row's 16 units (gi: the input side of the gates, h: updated in place), or, with h null,
// the plain product written into out's r, z and n places.
// Not inlined: every path reaches the floats through this one piece of code.
__attribute__((noinline)) void finish_block(const int32_t* sums, const Int8Linear& w, int64_t block,
                                            const float* gi, float* h, float* out) {
  const int64_t H = w.hidden, j = block * kUnits;
  const __m512 r_h = dequantize(sums, w, j), z_h = dequantize(sums + 16, w, H + j),
               n_h = dequantize(sums + 32, w, 2 * H + j);
  if (h == nullptr) {
    _mm512_storeu_ps(out + j, r_h);
    _mm512_storeu_ps(out + H + j, z_h);
    _mm512_storeu_ps(out + 2 * H + j, n_h);
    return;
  }
  // PyTorch's GRU: r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h = n + z (h - n)
  const __m512 r = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gi + j), r_h));
  const __m512 z = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gi + H + j), z_h));
  const __m512 n = tanh16(_mm512_fmadd_ps(r, n_h, _mm512_loadu_ps(gi + 2 * H + j)));
  const __m512 old = _mm512_loadu_ps(h + j);
  _mm512_storeu_ps(h + j, _mm512_fmadd_ps(z, _mm512_sub_ps(old, n), n));
}

// The int32 products of one block for ROWS rows of quantized inputs, with AVX-512 VNNI.
// SPLIT independent sums per register keep enough multiply-adds in flight for one row.
template <int ROWS, int SPLIT>
void block_sums_vnni(const uint8_t* const* xq, const int8_t* block, int64_t groups, int32_t (*sums)[48]) {
  __m512i acc[ROWS][SPLIT][3];
  for (int r = 0; r < ROWS; ++r)
    for (int s = 0; s < SPLIT; ++s)
      for (int g = 0; g < 3; ++g) acc[r][s][g] = _mm512_setzero_si512();
  for (int64_t k = 0; k < groups; k += SPLIT) {
    for (int s = 0; s < SPLIT; ++s) {
      const int8_t* w = block + (k + s) * kGroupBytes;
      const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64), w2 = _mm512_loadu_si512(w + 128);
      for (int r = 0; r < ROWS; ++r) {
        int32_t four;
        std::memcpy(&four, xq[r] + 4 * (k + s), 4);
        const __m512i x = _mm512_set1_epi32(four);
        acc[r][s][0] = _mm512_dpbusd_epi32(acc[r][s][0], x, w0);
        acc[r][s][1] = _mm512_dpbusd_epi32(acc[r][s][1], x, w1);
        acc[r][s][2] = _mm512_dpbusd_epi32(acc[r][s][2], x, w2);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int g = 0; g < 3; ++g) {
      __m512i total = acc[r][0][g];
      for (int s = 1; s < SPLIT; ++s) total = _mm512_add_epi32(total, acc[r][s][g]);
      _mm512_storeu_si512(sums[r] + 16 * g, total);
    }
}

// ---- AMX: 16 rows at a time -------------------------------------------------------------

bool amx_enabled = false;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-2: the r, z, n sums (16 rows x 16 int32); 3: 16 rows x 64 input bytes; 4-6: weights.
void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 7; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

// `a`: 16 rows of inputs as K / 64 tiles of 16 x 64 bytes, one after another (see `run`).
void block_sums_amx(const uint8_t* a, const int8_t* block, int64_t groups, int32_t (*sums)[48]) {
  alignas(64) int32_t c[3][16][16];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  for (int64_t k = 0; k < groups; k += 16) {  // 64 inputs per tile product
    _tile_loadd(3, a + k * 64, 64);
    const int8_t* w = block + k * kGroupBytes;
    _tile_loadd(4, w, kGroupBytes);
    _tile_loadd(5, w + 64, kGroupBytes);
    _tile_loadd(6, w + 128, kGroupBytes);
    _tile_dpbusd(0, 3, 4);
    _tile_dpbusd(1, 3, 5);
    _tile_dpbusd(2, 3, 6);
  }
  _tile_stored(0, c[0], 64);
  _tile_stored(1, c[1], 64);
  _tile_stored(2, c[2], 64);
  for (int r = 0; r < 16; ++r)
    for (int g = 0; g < 3; ++g) std::memcpy(sums[r] + 16 * g, c[g][r], 64);
}

// Asks Linux once for the AMX tile state; false where the CPU or the kernel has none, and on
// other systems (macOS has no arch_prctl, and no Mac has AMX), where VNNI computes every row.
bool enable_amx() {
#if defined(__linux__)
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (!__builtin_cpu_supports("amx-int8")) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// ---- Threads ----------------------------------------------------------------------------
//
// Why not at::parallel_for: an OpenMP team waits at its end for each of its threads, even one
// that the OS has not run yet. On a shared machine (more runnable threads than cores) a step
// then waits milliseconds, several times a step, for a thread with nothing left to do: with 2
// threads, `generate` gave 1,300 to 5,600 characters/s at 32 and 64 streams where 1 thread gave
// 24,000. Here the caller and its helpers claim pieces of the work as they come: a helper that
// starts late finds the work done, and the caller waits only for pieces already claimed.
//
// Each party owns a contiguous span of the pieces (its share of the weights, which its caches
// keep from step to step) and takes them from one end; whoever runs out takes from the other end
// of the others' spans. Which thread computes a piece never changes its result.
class Pool {
 public:
  using Body = std::function<void(int64_t)>;

  // Leaked on purpose: helper threads are still waiting on its members when the process exits.
  static Pool& get() {
    static Pool* pool = new Pool();
    return *pool;
  }

  // body(i) for every i in [0, n), on the caller and up to at::get_num_threads() - 1 helpers.
  // `forward`: whether each party walks its own span upwards. `tiles`: AMX tiles are configured
  // on each thread that takes a piece.
  void run(int64_t n, bool forward, bool tiles, const Body& body) {
    const int parties = static_cast<int>(std::min<int64_t>(std::max(1, at::get_num_threads()), n));
    // One job at a time: a second thread stepping meanwhile (two models in one process) does
    // its loop alone on its own thread rather than wait.
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (parties <= 1 || !busy.owns_lock()) {
      if (tiles) configure_tiles();
      for (int64_t i = 0; i < n; ++i) body(forward ? i : n - 1 - i);
      if (tiles) _tile_release();
      return;
    }
    start_helpers(parties - 1);
    const uint64_t tag = (generation_.load(std::memory_order_relaxed) + 1) & 0xffff;
    body_.store(&body, std::memory_order_relaxed);
    forward_.store(forward, std::memory_order_relaxed);
    tiles_.store(tiles, std::memory_order_relaxed);
    parties_.store(parties, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    for (int p = 0; p < kMaxParties; ++p) {
      const uint64_t lo = p < parties ? n * p / parties : 0, hi = p < parties ? n * (p + 1) / parties : 0;
      spans_[p].store(tag << 48 | lo << 24 | hi, std::memory_order_relaxed);
    }
    generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes the job
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    work(0, tag);
    for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
      if (spins < 4096) {
        _mm_pause();
      } else {
        sched_yield();  // a helper was stopped in the middle of a piece: give it the core
      }
    }
  }

 private:
  static constexpr int kMaxParties = 64;

  // Takes one piece of span s of job `tag`, from its low end or its high end.
  bool claim(int s, uint64_t tag, bool low, int64_t& piece) {
    uint64_t word = spans_[s].load(std::memory_order_acquire);
    while (true) {
      const uint64_t lo = (word >> 24) & 0xffffff, hi = word & 0xffffff;
      if (word >> 48 != tag || lo >= hi) return false;
      const uint64_t next = low ? (tag << 48 | (lo + 1) << 24 | hi) : (tag << 48 | lo << 24 | (hi - 1));
      if (spans_[s].compare_exchange_weak(word, next, std::memory_order_acq_rel)) {
        piece = low ? lo : hi - 1;
        return true;
      }
    }
  }

  void work(int party, uint64_t tag) {
    const int parties = parties_.load(std::memory_order_relaxed);
    const bool forward = forward_.load(std::memory_order_relaxed);
    bool configured = false;
    int64_t piece;
    // The job's fields are read again after each claim: a claim of job `tag` keeps its caller
    // waiting, so they are that job's until the piece is done.
    auto one = [&] {
      if (!configured && tiles_.load(std::memory_order_relaxed)) {
        configure_tiles();
        configured = true;
      }
      (*body_.load(std::memory_order_relaxed))(piece);
      done_.fetch_add(1, std::memory_order_release);
    };
    if (party < parties)
      while (claim(party, tag, forward, piece)) one();
    for (int k = 1; k <= parties; ++k)
      while (claim((party + k) % parties, tag, !forward, piece)) one();
    if (configured) _tile_release();
  }

  void start_helpers(int count) {
    count = std::min(count, kMaxParties - 1);
    while (static_cast<int>(helpers_) < count) {
      const int party = static_cast<int>(++helpers_);
      std::thread([this, party] { helper(party); }).detach();
    }
  }

  void helper(int party) {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    while (true) {
      uint64_t now = generation_.load(std::memory_order_acquire);
      // A step runs several loops in a row: wait a little for the next before sleeping.
      for (int spins = 0; now == seen && spins < 2000; ++spins) {
        _mm_pause();
        now = generation_.load(std::memory_order_acquire);
      }
      if (now == seen) {
        sleeping_.fetch_add(1, std::memory_order_seq_cst);
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
        sleeping_.fetch_sub(1, std::memory_order_relaxed);
        now = generation_.load(std::memory_order_acquire);
      }
      seen = now;
      work(party, now & 0xffff);
    }
  }

  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> spans_[kMaxParties];
  std::atomic<const Body*> body_{nullptr};
  std::atomic<bool> forward_{true}, tiles_{false};
  std::atomic<int> parties_{1}, sleeping_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<unsigned> helpers_{0};  // only the engine's one calling thread starts helpers
  std::mutex mutex_, busy_;
  std::condition_variable wake_;
};

// ---- One product for a batch ------------------------------------------------------------

std::atomic<uint64_t> calls{0};  // only decides the order of the blocks, never a result

// For every row b of xq (B, K): the product with w, then finish_block (gates or plain output).
void run(const Int8Linear& w, const uint8_t* xq, int64_t batch, const float* gi, int64_t gi_stride, float* h,
         int64_t h_stride, float* out, int64_t out_stride) {
  const int64_t blocks = w.hidden / kUnits, groups = w.inputs / 4, K = w.inputs;
  const bool tiles = amx_enabled && batch >= 16 && groups % 16 == 0;
  auto finish = [&](int64_t b, int64_t block, const int32_t* sums) {
    finish_block(sums, w, block, gi ? gi + b * gi_stride : nullptr, h ? h + b * h_stride : nullptr,
                 out ? out + b * out_stride : nullptr);
  };
  // Every other call walks the blocks backwards: a thread's weights are a little more than
  // what its L2 cache keeps, and a scan in the same order every time would evict each block
  // just before it is needed again; turning round finds the most recent ones still there
  // (one stream of the reference model: 36 -> 31 us a step).
  const bool backward = calls.fetch_add(1, std::memory_order_relaxed) & 1;
  // AMX reads 16 rows x 64 inputs per tile. Straight from xq those are 16 lines K bytes apart,
  // which fall into a few sets of the L1 cache and evict each other; copied once per call into
  // contiguous 1 KB tiles they stream (64 rows of the reference model: about 250 -> 210 us).
  thread_local std::vector<uint8_t> tiled;
  if (tiles) {
    tiled.resize(batch / 16 * 16 * K);
    for (int64_t b = 0; b + 16 <= batch; b += 16)
      for (int64_t c = 0; c < K / 64; ++c)
        for (int r = 0; r < 16; ++r) std::memcpy(&tiled[b * K + c * 1024 + r * 64], xq + (b + r) * K + c * 64, 64);
  }
  const uint8_t* a = tiled.data();  // by name, the helpers would see their own (empty) thread_local
  Pool::get().run(blocks, !backward, tiles, [&](int64_t block) {
    const int8_t* wb = w.packed + block * groups * kGroupBytes;
    int64_t b = 0;
    int32_t sums[16][48];
    if (tiles) {
      for (; b + 16 <= batch; b += 16) {
        block_sums_amx(a + b * K, wb, groups, sums);
        for (int r = 0; r < 16; ++r) finish(b + r, block, sums[r]);
      }
    }
    for (; b + 4 <= batch; b += 4) {
      const uint8_t* rows[4] = {xq + b * K, xq + (b + 1) * K, xq + (b + 2) * K, xq + (b + 3) * K};
      block_sums_vnni<4, 1>(rows, wb, groups, sums);
      for (int r = 0; r < 4; ++r) finish(b + r, block, sums[r]);
    }
    for (; b < batch; ++b) {
      const uint8_t* rows[1] = {xq + b * K};
      block_sums_vnni<1, 4>(rows, wb, groups, sums);
      finish(b, block, sums[0]);
    }
  });
}

// logits[v .. v + n) of one row x: dot products with n <= 4 weight rows, each summed in the
// same order (two partial sums over alternate 16-wide pieces of H) whatever the batch or n;
// four rows at a time keep eight sums in flight instead of waiting on two.
void head_rows(const float* x, int64_t H, const float* weight, const float* bias, int64_t v, int n, float* logits) {
  __m512 a0[4], a1[4];
  for (int i = 0; i < 4; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= H; k += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
    for (int i = 0; i < n; ++i) {
      const float* row = weight + (v + i) * H + k;
      a0[i] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(row), a0[i]);
      a1[i] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(row + 16), a1[i]);
    }
  }
  if (k < H) {  // H is a multiple of 16
    const __m512 x0 = _mm512_loadu_ps(x + k);
    for (int i = 0; i < n; ++i) a0[i] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(weight + (v + i) * H + k), a0[i]);
  }
  for (int i = 0; i < n; ++i) logits[v + i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[i], a1[i])) + bias[v + i];
}

// logits (B, V) = h (B, H) head_w^T + head_b, in fp32. Eight batch rows at a time stay in the
// L1 cache while the weights stream past them (64 rows of the reference model: about 170 -> 130 us).
void head(const float* h, int64_t batch, int64_t H, const float* weight, const float* bias, int64_t V,
          float* logits) {
  Pool::get().run((V + 7) / 8, true, false, [&](int64_t piece) {
    const int64_t begin = piece * 8, end = std::min(begin + 8, V);
    for (int64_t b0 = 0; b0 < batch; b0 += 8)
      for (int64_t v = begin; v < end; v += 4)
        for (int64_t b = b0; b < std::min(b0 + 8, batch); ++b)
          head_rows(h + b * H, H, weight, bias, v, static_cast<int>(std::min<int64_t>(4, end - v)), logits + b * V);
  });
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
        layers_.push_back(unpack(t, i));
      }
    for (const auto& t : {table_, head_weight_, head_bias_})
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu());
  }

  // One step for every row: tokens (B,); state (L, B, H) fp32, updated in place; the logits
  // (B, V) are written into `logits`. gi (B, 3H) fp32 and xq (B, H) uint8 are scratch.
  void step(const at::Tensor& tokens_in, at::Tensor& state, at::Tensor& gi, at::Tensor& xq, at::Tensor& logits) const {
    const int64_t layers = state.size(0), batch = state.size(1), H = state.size(2), V = table_.size(0);
    const size_t products = recurrent_.size() / 4;
    TORCH_CHECK(state.dim() == 3 && size_t(layers) == products && H * 3 == table_.size(1), "state does not fit");
    TORCH_CHECK(state.is_contiguous() && state.scalar_type() == at::kFloat, "state must be contiguous fp32");
    TORCH_CHECK(gi.numel() >= batch * 3 * H && xq.numel() >= batch * H && logits.numel() >= batch * V);
    const at::Tensor tokens = tokens_in.to(at::kLong).contiguous();
    TORCH_CHECK(tokens.numel() == batch, "one token per row");
    const int64_t* token = tokens.data_ptr<int64_t>();
    float* g = gi.data_ptr<float>();
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK(token[b] >= 0 && token[b] < V, "token out of range");
      std::memcpy(g + b * 3 * H, table_.data_ptr<float>() + token[b] * 3 * H, 3 * H * sizeof(float));
    }
    uint8_t* q = xq.data_ptr<uint8_t>();
    float* h = state.data_ptr<float>();
    for (int64_t layer = 0; layer < layers; ++layer) {
      float* hl = h + layer * batch * H;
      if (layer > 0) {  // gi = input product of the layer below's new state
        quantize(hl - batch * H, q, batch * H);
        run(layers_[products + layer - 1], q, batch, nullptr, 0, nullptr, 0, g, 3 * H);
      }
      quantize(hl, q, batch * H);
      run(layers_[layer], q, batch, g, 3 * H, hl, H, nullptr, 0);
    }
    head(h + (layers - 1) * batch * H, batch, H, head_weight_.data_ptr<float>(), head_bias_.data_ptr<float>(), V,
         logits.data_ptr<float>());
  }

 private:
  at::Tensor table_;
  std::vector<at::Tensor> recurrent_, inputs_;  // kept alive: layers_ points into them
  at::Tensor head_weight_, head_bias_;
  std::vector<Int8Linear> layers_;  // the recurrent products, then the input products
};

// One index per row of logits (B, V), picked as charnn.sample.sample_next picks it
// (temperature, then top-k, then top-p, then the inverse CDF at one uniform per row), with
// the sums in double: the int8 path's sampler, without a dozen small PyTorch calls.
at::Tensor sample(const at::Tensor& logits_in, double temperature, int64_t top_k, double top_p,
                  const at::Tensor& uniforms_in) {
  const at::Tensor logits = logits_in.to(at::kFloat).contiguous();
  const at::Tensor uniforms = uniforms_in.to(at::kDouble).contiguous();
  TORCH_CHECK(logits.dim() == 2 && uniforms.numel() == logits.size(0), "one uniform per row of logits");
  const int64_t batch = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({batch}, logits.options().dtype(at::kLong));
  const float* all = logits.data_ptr<float>();
  const double* u = uniforms.data_ptr<double>();
  int64_t* chosen = out.data_ptr<int64_t>();
  std::vector<double> p(V), cdf(V);
  std::vector<int64_t> order(V);
  for (int64_t b = 0; b < batch; ++b) {
    const float* x = all + b * V;
    const int64_t best = std::max_element(x, x + V) - x;  // the first of equal maxima
    if (temperature == 0) {
      chosen[b] = best;
      continue;
    }
    double kth = -INFINITY;  // top-k: drop what is below the k-th largest logit
    if (top_k > 0 && top_k < V) {
      std::vector<float> sorted(x, x + V);
      std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<float>());
      kth = sorted[top_k - 1];
    }
    double total = 0;
    for (int64_t i = 0; i < V; ++i) {
      p[i] = x[i] < kth ? 0.0 : std::exp((double(x[i]) - x[best]) / temperature);
      total += p[i];
    }
    if (top_p < 1.0) {  // keep the smallest set of most likely characters whose mass reaches top_p
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return p[i] > p[j]; });
      double before = 0;
      for (int64_t i : order) {
        const double mass = p[i] / total;
        if (before >= top_p) p[i] = 0;
        before += mass;
      }
    }
    double sum = 0;
    int64_t last = best;  // the last character with a probability: a target rounded up stops there
    for (int64_t i = 0; i < V; ++i) {
      cdf[i] = sum += p[i];
      if (p[i] > 0) last = i;
    }
    // The first character whose CDF passes the target: never one of zero probability.
    const double target = u[b] * sum;
    chosen[b] = std::min<int64_t>(std::upper_bound(cdf.begin(), cdf.end(), target) - cdf.begin(), last);
  }
  return out;
}

bool enable_tiles() {
  amx_enabled = enable_amx();
  return amx_enabled;
}

void disable_tiles() { amx_enabled = false; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Int8GRU>(m, "Int8GRU")
      .def(pybind11::init<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>())
      // The GIL is let go while the kernels run: a server's event loop goes on meanwhile.
      .def("step", &Int8GRU::step, "one generation step for every row: layers, gates and output layer",
           pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("sample", &sample, "one character per row of logits, as charnn.sample.sample_next picks it",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("enable_tiles", &enable_tiles, "use AMX for 16 rows at a time where the CPU and Linux allow it");
  m.def("disable_tiles", &disable_tiles, "compute every row with AVX-512 VNNI");
}
