// One generation step of a GRU CharRNN with int8 weights, fused: table lookup, every layer's
// products and gates, and the output layer. Plain C++ over arrays (the PyTorch binding is
// gru_int8.cpp), on AVX-512 (VNNI, and AMX where present), AVX2 or ARM NEON (simd.h).
//
// Why: one stream spends most of a step in dozens of small PyTorch calls and in a one-row
// int8 product that oneDNN does in ~75-115 us. Here the recurrent weights are laid out so
// that 16 hidden units' r, z and n rows are read together; each thread keeps its own half of
// the weights (1.5 MB for the reference model) in its core's L2 cache; and the gates run on
// the products while they are still in registers.
//
// Numbers: activations in [-1, 1] become uint8 round(127 x) + 128; the products are exact
// int32 sums, corrected for the +128 with precomputed row sums. Every row then goes through the
// same float epilogue, so a row's result never depends on the batch it was computed in, on
// which thread computed it, or on the instruction set that summed it (every path's sums are exact).
#pragma once

#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "simd.h"

namespace charnn::int8 {

constexpr int kUnits = 16;                   // hidden units per block: one V16 of floats
constexpr int kGroupBytes = 3 * kUnits * 4;  // one group of 4 inputs for the r, z and n rows of a block

// Weights of one int8 product y = W x + b with W (3H, K), charnn/fast/step.py's Int8Product:
// packed[block][k / 4][gate][unit][k % 4], gate in (r, z, n), unit in the block's 16.
struct Linear {
  const int8_t* packed;
  const int32_t* correction;  // 128 * (sum of row r of W): removes the +128 of the inputs
  const float* scale;         // row scale of W times the input scale 1/127
  const float* bias;
  int64_t hidden;  // H: W has 3H rows
  int64_t inputs;  // K
};

// x in [-1, 1] -> round(127 x) + 128, saturated to [0, 255] (the float-to-int conversion truncates).
inline void quantize(const float* x, uint8_t* q, int64_t n) {
  int64_t i = 0;
#if CHARNN_AVX512
  const __m512 mul = _mm512_set1_ps(127.0f), add = _mm512_set1_ps(128.5f);
  const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), mul), add);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
#endif
  for (; i < n; ++i) {
    float v = std::min(std::max(x[i] * 127.0f + 128.5f, 0.0f), 255.0f);
    q[i] = static_cast<uint8_t>(v);
  }
}

// The float result of rows [offset, offset + 16) from their int32 sums of q x w.
inline V16 dequantize(const int32_t* sums, const Linear& w, int64_t offset) {
  alignas(64) int32_t exact[kUnits];
  for (int u = 0; u < kUnits; ++u) exact[u] = sums[u] - w.correction[offset + u];
  return fmadd(from_int(exact), load(w.scale + offset), load(w.bias + offset));
}

// sums: the (r, z, n) x 16 int32 products of one block for one row. Either the GRU update of
// that row's 16 units (gi: the input side of the gates, h: updated in place), or, with h null,
// the plain product written into out's r, z and n places.
// Not inlined: every path reaches the floats through this one piece of code.
__attribute__((noinline)) inline void finish_block(const int32_t* sums, const Linear& w, int64_t block,
                                                   const float* gi, float* h, float* out) {
  const int64_t H = w.hidden, j = block * kUnits;
  const V16 r_h = dequantize(sums, w, j), z_h = dequantize(sums + 16, w, H + j), n_h = dequantize(sums + 32, w, 2 * H + j);
  if (h == nullptr) {
    store(out + j, r_h);
    store(out + H + j, z_h);
    store(out + 2 * H + j, n_h);
    return;
  }
  // PyTorch's GRU: r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h = n + z (h - n)
  const V16 r = sigmoid16(load(gi + j) + r_h);
  const V16 z = sigmoid16(load(gi + H + j) + z_h);
  const V16 n = tanh16(fmadd(r, n_h, load(gi + 2 * H + j)));
  store(h + j, fmadd(z, load(h + j) - n, n));
}

// ---- The products of one block: sums[row][16 gate + unit] = the sum over k of q[k] w[k] ------
// ROWS rows of quantized inputs at a time; SPLIT independent sums per register keep enough
// multiply-adds in flight for one row. The AVX2 and NEON paths sum (q - 128) w, which fits their
// 16-bit steps, and start from the correction (128 times the row's sum) to give the same total.

#if CHARNN_AVX512
constexpr int kRows = 4, kSplit = 4;  // for batches of 4 rows, and for a single row

template <int ROWS, int SPLIT>
void block_sums(const uint8_t* const* xq, const int8_t* block, int64_t groups, const int32_t* const*,
                int32_t (*sums)[48]) {
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

#elif CHARNN_AVX2
constexpr int kRows = 2, kSplit = 2;  // 16 registers: 6 sums per row and split

template <int ROWS, int SPLIT>
void block_sums(const uint8_t* const* xq, const int8_t* block, int64_t groups, const int32_t* const* start,
                int32_t (*sums)[48]) {
  // Register i holds units 8 (i % 2) .. + 8 of gate i / 2, 4 bytes each.
  __m256i acc[ROWS][SPLIT][6];
  for (int r = 0; r < ROWS; ++r)
    for (int s = 0; s < SPLIT; ++s)
      for (int i = 0; i < 6; ++i)
        acc[r][s][i] = s ? _mm256_setzero_si256()
                         : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start[i / 2] + 8 * (i % 2)));
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  for (int64_t k = 0; k < groups; k += SPLIT) {
    for (int s = 0; s < SPLIT; ++s) {
      const int8_t* w = block + (k + s) * kGroupBytes;
      __m256i wv[6];
      for (int i = 0; i < 6; ++i) wv[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * i));
      for (int r = 0; r < ROWS; ++r) {
        int32_t four;
        std::memcpy(&four, xq[r] + 4 * (k + s), 4);
        const __m256i x = _mm256_xor_si256(_mm256_set1_epi32(four), flip);  // q - 128, in [-128, 127]
        const __m256i magnitude = _mm256_abs_epi8(x);                         // read as unsigned: up to 128
        // maddubs(|x|, w sign(x)) = pairs of x w, at most 2 x 128 x 127 = 32,512: no 16-bit saturation.
        for (int i = 0; i < 6; ++i) {
          const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(wv[i], x));
          acc[r][s][i] = _mm256_add_epi32(acc[r][s][i], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int i = 0; i < 6; ++i) {
      __m256i total = acc[r][0][i];
      for (int s = 1; s < SPLIT; ++s) total = _mm256_add_epi32(total, acc[r][s][i]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[r] + 8 * i), total);
    }
}

#else  // NEON
constexpr int kRows = 2, kSplit = 1;  // 32 registers: 12 sums per row

template <int ROWS, int SPLIT>
void block_sums(const uint8_t* const* xq, const int8_t* block, int64_t groups, const int32_t* const* start,
                int32_t (*sums)[48]) {
  // Register i holds units 4 (i % 4) .. + 4 of gate i / 4, 4 bytes each.
  int32x4_t acc[ROWS][SPLIT][12];
  for (int r = 0; r < ROWS; ++r)
    for (int s = 0; s < SPLIT; ++s)
      for (int i = 0; i < 12; ++i) acc[r][s][i] = s ? vdupq_n_s32(0) : vld1q_s32(start[i / 4] + 4 * (i % 4));
  for (int64_t k = 0; k < groups; k += SPLIT) {
    for (int s = 0; s < SPLIT; ++s) {
      const int8_t* w = block + (k + s) * kGroupBytes;
      int8x16_t wv[12];
      for (int i = 0; i < 12; ++i) wv[i] = vld1q_s8(w + 16 * i);
      for (int r = 0; r < ROWS; ++r) {
        uint32_t four;
        std::memcpy(&four, xq[r] + 4 * (k + s), 4);
        const int8x16_t x = veorq_s8(vreinterpretq_s8_u32(vdupq_n_u32(four)), vdupq_n_s8(-128));  // q - 128
        for (int i = 0; i < 12; ++i) {
#if defined(__ARM_FEATURE_DOTPROD)
          acc[r][s][i] = vdotq_s32(acc[r][s][i], wv[i], x);
#else
          // Products of at most 128 x 127: a pair fits 16 bits; vpadal adds each unit's two pairs.
          const int16x8_t pairs = vpaddq_s16(vmull_s8(vget_low_s8(wv[i]), vget_low_s8(x)), vmull_high_s8(wv[i], x));
          acc[r][s][i] = vpadalq_s16(acc[r][s][i], pairs);
#endif
        }
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int i = 0; i < 12; ++i) {
      int32x4_t total = acc[r][0][i];
      for (int s = 1; s < SPLIT; ++s) total = vaddq_s32(total, acc[r][s][i]);
      vst1q_s32(sums[r] + 4 * i, total);
    }
}
#endif

// ---- AMX: 16 rows at a time (AVX-512 builds on Linux) ----------------------------------

#if CHARNN_AVX512 && defined(__AMX_INT8__)
#define CHARNN_AMX 1
inline bool amx_enabled = false;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-2: the r, z, n sums (16 rows x 16 int32); 3: 16 rows x 64 input bytes; 4-6: weights.
inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 7; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

inline void release_tiles() { _tile_release(); }

// `a`: 16 rows of inputs as K / 64 tiles of 16 x 64 bytes, one after another (see `run`).
inline void block_sums_amx(const uint8_t* a, const int8_t* block, int64_t groups, int32_t (*sums)[48]) {
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
inline bool enable_amx() {
#if defined(__linux__)
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (!__builtin_cpu_supports("amx-int8")) return false;
  amx_enabled = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#endif
  return amx_enabled;
}
#else
inline constexpr bool amx_enabled = false;
inline void configure_tiles() {}
inline void release_tiles() {}
inline bool enable_amx() { return false; }
#endif

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

  // body(i) for every i in [0, n), on the caller and up to threads - 1 helpers. `forward`:
  // whether each party walks its own span upwards. `tiles`: AMX tiles are configured on each
  // thread that takes a piece.
  void run(int64_t n, int threads, bool forward, bool tiles, const Body& body) {
    const int parties = static_cast<int>(std::min<int64_t>(std::max(1, threads), n));
    // One job at a time: a second thread stepping meanwhile (two models in one process) does
    // its loop alone on its own thread rather than wait.
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (parties <= 1 || !busy.owns_lock()) {
      if (tiles) configure_tiles();
      for (int64_t i = 0; i < n; ++i) body(forward ? i : n - 1 - i);
      if (tiles) release_tiles();
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
        pause();
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
    if (configured) release_tiles();
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
        pause();
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

inline std::atomic<uint64_t> calls{0};  // only decides the order of the blocks, never a result

// For every row b of xq (B, K): the product with w, then finish_block (gates or plain output).
inline void run(const Linear& w, const uint8_t* xq, int64_t batch, const float* gi, int64_t gi_stride, float* h,
                int64_t h_stride, float* out, int64_t out_stride, int threads) {
  const int64_t blocks = w.hidden / kUnits, groups = w.inputs / 4, K = w.inputs, H = w.hidden;
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
  Pool::get().run(blocks, threads, !backward, tiles, [&](int64_t block) {
    const int8_t* wb = w.packed + block * groups * kGroupBytes;
    const int64_t j = block * kUnits;
    const int32_t* start[3] = {w.correction + j, w.correction + H + j, w.correction + 2 * H + j};
    int64_t b = 0;
    int32_t sums[16][48];
#if CHARNN_AMX
    if (tiles) {
      for (; b + 16 <= batch; b += 16) {
        block_sums_amx(a + b * K, wb, groups, sums);
        for (int r = 0; r < 16; ++r) finish(b + r, block, sums[r]);
      }
    }
#else
    (void)a;
#endif
    for (; b + kRows <= batch; b += kRows) {
      const uint8_t* rows[kRows];
      for (int r = 0; r < kRows; ++r) rows[r] = xq + (b + r) * K;
      block_sums<kRows, 1>(rows, wb, groups, start, sums);
      for (int r = 0; r < kRows; ++r) finish(b + r, block, sums[r]);
    }
    for (; b < batch; ++b) {
      const uint8_t* rows[1] = {xq + b * K};
      block_sums<1, kSplit>(rows, wb, groups, start, sums);
      finish(b, block, sums[0]);
    }
  });
}

// logits[v .. v + n) of one row x: dot products with n <= 4 weight rows, each summed in the
// same order (two partial sums over alternate 16-wide pieces of H) whatever the batch or n;
// four rows at a time keep eight sums in flight instead of waiting on two.
inline void head_rows(const float* x, int64_t H, const float* weight, const float* bias, int64_t v, int n,
                      float* logits) {
  V16 a0[4], a1[4];
  for (int i = 0; i < 4; ++i) a0[i] = a1[i] = set1(0.0f);
  int64_t k = 0;
  for (; k + 32 <= H; k += 32) {
    const V16 x0 = load(x + k), x1 = load(x + k + 16);
    for (int i = 0; i < n; ++i) {
      const float* row = weight + (v + i) * H + k;
      a0[i] = fmadd(x0, load(row), a0[i]);
      a1[i] = fmadd(x1, load(row + 16), a1[i]);
    }
  }
  if (k < H) {  // H is a multiple of 16
    const V16 x0 = load(x + k);
    for (int i = 0; i < n; ++i) a0[i] = fmadd(x0, load(weight + (v + i) * H + k), a0[i]);
  }
  for (int i = 0; i < n; ++i) logits[v + i] = sum(a0[i] + a1[i]) + bias[v + i];
}

// logits (B, V) = h (B, H) head_w^T + head_b, in fp32. Eight batch rows at a time stay in the
// L1 cache while the weights stream past them (64 rows of the reference model: about 170 -> 130 us).
inline void head(const float* h, int64_t batch, int64_t H, const float* weight, const float* bias, int64_t V,
                 float* logits, int threads) {
  Pool::get().run((V + 7) / 8, threads, true, false, [&](int64_t piece) {
    const int64_t begin = piece * 8, end = std::min(begin + 8, V);
    for (int64_t b0 = 0; b0 < batch; b0 += 8)
      for (int64_t v = begin; v < end; v += 4)
        for (int64_t b = b0; b < std::min(b0 + 8, batch); ++b)
          head_rows(h + b * H, H, weight, bias, v, static_cast<int>(std::min<int64_t>(4, end - v)), logits + b * V);
  });
}

// The prepared weights of one GRU model. table: (V, 3H), the embedding through layer 0's input
// product; layers: the recurrent products of each layer, then the input products of layers 1..;
// head: the output layer, (V, H) and (V,).
struct Model {
  const float* table;
  std::vector<Linear> layers;
  const float* head_weight;
  const float* head_bias;
  int64_t vocab, hidden;
};

// One step for every row: tokens (B,) in [0, V); state (L, B, H), updated in place; the logits
// (B, V) are written into `logits`. gi (B, 3H) and xq (B, H) are scratch.
inline void step(const Model& m, const int64_t* tokens, int64_t batch, int64_t layers, float* state, float* gi,
                 uint8_t* xq, float* logits, int threads) {
  const int64_t H = m.hidden;
  for (int64_t b = 0; b < batch; ++b)
    std::memcpy(gi + b * 3 * H, m.table + tokens[b] * 3 * H, 3 * H * sizeof(float));
  for (int64_t layer = 0; layer < layers; ++layer) {
    float* hl = state + layer * batch * H;
    if (layer > 0) {  // gi = input product of the layer below's new state
      quantize(hl - batch * H, xq, batch * H);
      run(m.layers[layers + layer - 1], xq, batch, nullptr, 0, nullptr, 0, gi, 3 * H, threads);
    }
    quantize(hl, xq, batch * H);
    run(m.layers[layer], xq, batch, gi, 3 * H, hl, H, nullptr, 0, threads);
  }
  head(state + (layers - 1) * batch * H, batch, H, m.head_weight, m.head_bias, m.vocab, logits, threads);
}

// One index per row of logits (B, V), picked as charnn.sample.sample_next picks it
// (temperature, then top-k, then top-p, then the inverse CDF at one uniform per row), with
// the sums in double: the int8 path's sampler, without a dozen small PyTorch calls.
inline void sample(const float* all, int64_t batch, int64_t V, double temperature, int64_t top_k, double top_p,
                   const double* u, int64_t* chosen) {
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
    double running = 0;
    int64_t last = best;  // the last character with a probability: a target rounded up stops there
    for (int64_t i = 0; i < V; ++i) {
      cdf[i] = running += p[i];
      if (p[i] > 0) last = i;
    }
    // The first character whose CDF passes the target: never one of zero probability.
    const double target = u[b] * running;
    chosen[b] = std::min<int64_t>(std::upper_bound(cdf.begin(), cdf.end(), target) - cdf.begin(), last);
  }
}

}  // namespace charnn::int8
