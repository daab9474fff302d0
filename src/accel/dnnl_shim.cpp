// A small C interface to oneDNN's matmul primitive for emollama's inference ops (feature `onednn`).
//
// Why a shim: oneDNN's C API passes memory descriptors as large structs whose layout changed between
// 2.x and 3.x; its C++ API hides that, and this file compiles against both (Debian's libdnnl-dev is 2.6).
//
// Two operations, both with f32 activations in and out (so the rest of the network stays f32):
//  * linear: y[M,N] = x[M,K] · W[N,K]ᵀ + b. The weights are reordered once, at creation, into the
//    layout oneDNN prefers for the CPU (blocked for AVX-512 / AMX); the bias is fused. In bf16 mode the
//    weights are stored as bf16, x is converted to bf16 per call (a oneDNN reorder), the products
//    accumulate in f32 and y is written as f32 (what PyTorch's CPU autocast does for a Linear).
//  * batched matmul: c[B,M,N] = a[B,M,K] · b[B,K,N] with arbitrary strides for a and b (so Kᵀ is a
//    stride swap, not a copy), times an optional scale; bf16 mode converts a and b first.
// Primitives are cached per shape: creating one costs milliseconds. Errors are returned as text.
//
// Threads (why each rule is here: issue 28, outputs that changed from run to run on AVX-512 CPUs):
//  * Scratchpads are user-managed and per executing thread ([`thread_scratchpad`]). oneDNN's default,
//    library-managed scratchpad (built with DNNL_ENABLE_CONCURRENT_EXEC=OFF, as Debian's is) is shared by
//    the primitives of a thread and requires a primitive to run on the thread that created it; ours run on
//    the callers' threads (extraction, feature cache, evaluation) and on the attention's OpenMP workers.
//  * A primitive runs with the thread count it was created for: top-level calls apply the process count
//    first ([`sync_threads`]); primitives executed inside our own OpenMP region (the fused attention's
//    blocks) are created for one thread ([`OneThread`]), because oneDNN runs a nested primitive on one
//    thread while brgemm kernels (AVX-512 / AMX) split their work by the creation count: executed nested,
//    a primitive created for two threads computed half of its output and left the rest stale.

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

using namespace dnnl;
using dt = memory::data_type;
using tag = memory::format_tag;

namespace {

// The thread count every oneDNN call runs with. omp_set_num_threads only sets the calling thread's
// count, and a primitive must run with the count it was created under (its scratchpad is sized for it):
// encoders are called from several threads (feature cache, evaluation), so each entry point applies
// the process-wide count to its own thread first.
std::atomic<int> g_threads{0};

// Returns the count applied: the primitive caches are keyed by it, so a primitive is never executed under
// another count than the one it was created for (the count can change, `emo_dnnl_set_threads`).
int sync_threads() {
  int want = g_threads.load(std::memory_order_relaxed);
  if (want <= 0) {
    int first = omp_get_max_threads();
    g_threads.compare_exchange_strong(want, first);
    want = g_threads.load(std::memory_order_relaxed);
  }
  if (omp_get_max_threads() != want) omp_set_num_threads(want);
  return want;
}

engine &cpu_engine() {
  static engine eng(engine::kind::cpu, 0);
  return eng;
}

void set_err(char *err, size_t len, const std::string &msg) {
  if (err && len > 0) {
    std::strncpy(err, msg.c_str(), len - 1);
    err[len - 1] = '\0';
  }
}

// The calling thread's scratchpad for one primitive execution: a grow-only, page-aligned buffer owned by
// the thread, so no two executions ever share one (user-managed mode; see the header comment).
memory thread_scratchpad(const memory::desc &md) {
  struct Buffer {
    void *ptr = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(ptr); }
  };
  thread_local Buffer buf;
  const size_t need = md.get_size();
  if (need > buf.size) {
    std::free(buf.ptr);
    const size_t size = (need + 4095) / 4096 * 4096;
    buf.ptr = std::aligned_alloc(4096, size);
    buf.size = buf.ptr ? size : 0;
    if (!buf.ptr) throw std::bad_alloc();
  }
  return memory(md, cpu_engine(), buf.ptr);
}

// Executes `p` on `s` with the calling thread's scratchpad (when the primitive needs one).
void execute(const primitive &p, const memory::desc &scratch, stream &s, std::unordered_map<int, memory> args) {
  if (scratch.get_size() > 0) args[DNNL_ARG_SCRATCHPAD] = thread_scratchpad(scratch);
  p.execute(s, args);
}

// `attr` with a user-managed scratchpad (every primitive of the shim that runs outside its creation call).
primitive_attr user_scratchpad(primitive_attr attr = primitive_attr()) {
  attr.set_scratchpad_mode(scratchpad_mode::user);
  return attr;
}

// While alive, primitives are created for one thread: those the shim executes inside its own OpenMP region.
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
  OneThread(const OneThread &) = delete;
  OneThread &operator=(const OneThread &) = delete;
};

// A primitive with the scratchpad layout it needs.
template <typename P>
struct Prim {
  P prim;
  memory::desc scratch;
  Prim() = default;
  template <typename PD>
  explicit Prim(const PD &pd) : prim(pd), scratch(pd.scratchpad_desc()) {}
  void run(stream &s, std::unordered_map<int, memory> args) const { execute(prim, scratch, s, std::move(args)); }
};

// A reorder from `from` to `to` for execution outside its creation call.
Prim<reorder> make_reorder(const memory::desc &from, const memory::desc &to) {
  return Prim<reorder>(reorder::primitive_desc(cpu_engine(), from, cpu_engine(), to, user_scratchpad()));
}

// One eltwise post-op (`alpha` for the algorithms that take one); the signature differs in 2.x and 3.x.
void append_eltwise(post_ops &po, algorithm alg, float alpha = 0.f) {
#if DNNL_VERSION_MAJOR >= 3
  po.append_eltwise(alg, alpha, 0.f);
#else
  po.append_eltwise(1.f, alg, alpha, 0.f);
#endif
}

matmul::primitive_desc matmul_pd(const memory::desc &a, const memory::desc &b, const memory::desc *bias,
                                 const memory::desc &c, primitive_attr attr = primitive_attr()) {
  attr = user_scratchpad(attr);
#if DNNL_VERSION_MAJOR >= 3
  if (bias) return matmul::primitive_desc(cpu_engine(), a, b, *bias, c, attr);
  return matmul::primitive_desc(cpu_engine(), a, b, c, attr);
#else
  if (bias) return matmul::primitive_desc(matmul::desc(a, b, *bias, c), attr, cpu_engine());
  return matmul::primitive_desc(matmul::desc(a, b, c), attr, cpu_engine());
#endif
}

matmul::primitive_desc make_matmul(const memory::desc &a, const memory::desc &b, const memory::desc *bias,
                                   const memory::desc &c, float scale, bool gelu_erf = false) {
  primitive_attr attr;
  if (gelu_erf) {
    // The exact (erf) GELU fused into the product's epilogue: no separate pass over the activations.
    post_ops po;
    append_eltwise(po, algorithm::eltwise_gelu_erf);
    attr.set_post_ops(po);
  }
  if (scale != 1.0f) {
#if DNNL_VERSION_MAJOR >= 3
    // 3.x takes scales as runtime arguments; emollama's callers pass 1 there (see accel/onednn.rs).
    throw std::runtime_error("an output scale needs oneDNN 2.x in this shim");
#else
    attr.set_output_scales(0, {scale});
#endif
  }
  return matmul_pd(a, b, bias, c, attr);
}

struct Linear {
  int64_t n = 0, k = 0;
  bool bf16 = false;     // native bf16 operands
  bool emulate = false;  // bf16 asked for, CPU without bf16: f32 products of bf16-rounded operands
  bool has_bias = false;
  bool gelu_erf = false;  // y = gelu(x Wᵀ + b)
  memory weights;  // packed
  memory::desc weights_md;
  memory bias;
  std::mutex mu;
  struct PerM {
    Prim<matmul> prim;
    Prim<reorder> to_bf16;  // f32 x -> bf16 scratch (bf16 mode only)
    std::vector<uint16_t> scratch;
    std::vector<float> rounded;  // emulated bf16: x rounded to bf16 values
  };
  std::map<std::pair<int64_t, int>, std::unique_ptr<PerM>> per_m;  // by (M, threads)
};

Linear::PerM &linear_for(Linear *l, int64_t m, int threads) {
  auto it = l->per_m.find({m, threads});
  if (it != l->per_m.end()) return *it->second;
  auto p = std::make_unique<Linear::PerM>();
  dt src_dt = l->bf16 ? dt::bf16 : dt::f32;
  memory::desc a({m, l->k}, src_dt, tag::ab), c({m, l->n}, dt::f32, tag::ab);
  memory::desc bias_md({1, l->n}, dt::f32, tag::ab);
  p->prim = Prim<matmul>(make_matmul(a, l->weights_md, l->has_bias ? &bias_md : nullptr, c, 1.0f, l->gelu_erf));
  if (l->bf16) {
    memory::desc x32({m, l->k}, dt::f32, tag::ab);
    p->to_bf16 = make_reorder(x32, a);
    p->scratch.resize(static_cast<size_t>(m * l->k));
  }
  if (l->emulate) p->rounded.resize(static_cast<size_t>(m * l->k));
  return *l->per_m.emplace(std::make_pair(m, threads), std::move(p)).first->second;
}

struct Bmm {
  Prim<matmul> prim;
  bool emulate = false;      // bf16 values in f32 (CPU without bf16)
  Prim<reorder> a_to_bf16, b_to_bf16;  // to the bf16 (or, emulated, dense f32) operand layouts
  memory::desc a_md, b_md, c_md, a16_md, b16_md;
};

std::mutex bmm_mu;
std::map<std::vector<int64_t>, std::unique_ptr<Bmm>> bmm_cache;

// bf16 operands of a matmul: native bf16 (AMX / AVX512_BF16 instructions, oneDNN's bf16 kernels) or f32
// values rounded to bf16 and multiplied with f32 FMAs. Both give the products of bf16-rounded operands
// accumulated in f32 (a product of two bf16 values is exact in f32); only the summation order differs.

// f32 -> the nearest bf16 (ties to even) as its 16 bits; infinities and NaNs are truncated (kept).
inline uint16_t bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// f32 -> the nearest bf16 value, kept as f32.
inline float bf16_rounded(float v) {
  uint32_t bits = static_cast<uint32_t>(bf16_bits(v)) << 16;
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
}

// Rounds f32 values to the nearest bf16 (ties to even), kept as f32: on a CPU without native bf16
// (no AVX512_BF16 / AMX, where oneDNN has no bf16 matmul) bf16 mode runs f32 products of rounded
// operands, which gives the numbers a native bf16 matmul with f32 accumulation gives.
void round_to_bf16(const float *src, float *dst, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) dst[i] = bf16_rounded(src[i]);
}

// A [B, H, T, D] f32 tensor with element strides `st` copied into a dense [B, H, T, D] buffer of bf16 bits
// (`Out` = uint16_t) or of bf16-rounded f32 values (`Out` = float). Element-wise, so the result does not
// depend on the thread count.
template <typename Out>
void pack_bf16(const float *src, const int64_t *st, int64_t b, int64_t h, int64_t t, int64_t d, Out *dst) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < b * h * t; ++row) {
    const int64_t bi = row / (h * t), hi = (row / t) % h, ti = row % t;
    const float *s = src + bi * st[0] + hi * st[1] + ti * st[2];
    Out *o = dst + row * d;
    for (int64_t j = 0; j < d; ++j) {
      if constexpr (std::is_same_v<Out, uint16_t>)
        o[j] = bf16_bits(s[j * st[3]]);
      else
        o[j] = bf16_rounded(s[j * st[3]]);
    }
  }
}

// Row-major strides of `dims`.
memory::dims dense_strides(const memory::dims &dims) {
  memory::dims st(dims.size());
  int64_t acc = 1;
  for (size_t i = dims.size(); i-- > 0;) {
    st[i] = acc;
    acc *= dims[i];
  }
  return st;
}

// Row-major strides with the last two dims swapped in memory (each matrix stored column-major).
memory::dims transposed_strides(const memory::dims &dims) {
  size_t n = dims.size();
  memory::dims st = dense_strides(dims);
  st[n - 2] = 1;
  st[n - 1] = dims[n - 2];
  return st;
}


// Attention primitives for one block of query rows: S = scale·Q·Kᵀ, softmax(S) in place, O = S·V. In
// bf16 the operands are dense bf16 copies (native) or dense bf16-rounded f32 copies (rounded_f32) of q, k
// and v; the scores and the softmax stay f32, and the probabilities are rounded to bf16 before S·V (what
// PyTorch's CPU autocast computes: bf16 matmul operands, f32 softmax).
struct AttnBlock {
  Prim<matmul> qk, pv;
  Prim<softmax_forward> softmax;
  memory::desc q_md, k_md, s_md, p_md, v_md, o_md;  // p_md: the probabilities as S·V reads them
};

enum class AttnMode { f32, native_bf16, rounded_bf16 };

struct Attn {
  int64_t rows = 0;  // query rows per block
  AttnMode mode = AttnMode::f32;
  AttnBlock full, tail;
  bool has_tail = false;
};

std::mutex attn_mu;
std::map<std::vector<int64_t>, std::unique_ptr<Attn>> attn_cache;

// dims: B, H, M, N, D, Dv; element strides of q [B,H,M,D], k [B,H,N,D], v [B,H,N,Dv] (in bf16 modes:
// those of the dense copies); out [B,M,H,Dv] dense.
void make_attn_block(AttnBlock &blk, int64_t rows, const int64_t *dims, const int64_t *qs, const int64_t *ks,
                     const int64_t *vs, float scale, AttnMode mode) {
  const int64_t h = dims[1], n = dims[3], d = dims[4], dv = dims[5];
  const dt op = mode == AttnMode::native_bf16 ? dt::bf16 : dt::f32;
  blk.q_md = memory::desc({rows, d}, op, memory::dims{qs[2], qs[3]});
  blk.k_md = memory::desc({d, n}, op, memory::dims{ks[3], ks[2]});
  blk.s_md = memory::desc({rows, n}, dt::f32, tag::ab);
  blk.p_md = memory::desc({rows, n}, op, tag::ab);
  blk.v_md = memory::desc({n, dv}, op, memory::dims{vs[2], vs[3]});
  blk.o_md = memory::desc({rows, dv}, dt::f32, memory::dims{h * dv, 1});
  // The scale as a linear post-op: it works the same in oneDNN 2.x and 3.x.
  primitive_attr attr;
  post_ops po;
  append_eltwise(po, algorithm::eltwise_linear, scale);
  attr.set_post_ops(po);
  // Each block runs on one OpenMP thread of emo_dnnl_attention's region: created for one thread.
  OneThread one;
  blk.qk = Prim<matmul>(matmul_pd(blk.q_md, blk.k_md, nullptr, blk.s_md, attr));
  blk.pv = Prim<matmul>(matmul_pd(blk.p_md, blk.v_md, nullptr, blk.o_md));
#if DNNL_VERSION_MAJOR >= 3
  blk.softmax = Prim<softmax_forward>(softmax_forward::primitive_desc(
      cpu_engine(), prop_kind::forward_inference, algorithm::softmax_accurate, blk.s_md, blk.s_md, 1, user_scratchpad()));
#else
  blk.softmax = Prim<softmax_forward>(softmax_forward::primitive_desc(
      softmax_forward::desc(prop_kind::forward_inference, blk.s_md, 1), user_scratchpad(), cpu_engine()));
#endif
}

// A 1-D convolution over time-major activations ([B, T, C]), groups = 1 and no padding, as a sum of matmuls
// over the input read in place: kernel taps [j0, j0 + s) (s = stride) of every output frame are one
// contiguous run of s·C_in values, and consecutive frames' runs do not overlap, so each chunk of ≤ s taps is
// a strided [T_out, taps·C_in] matrix. The chunks accumulate into dst (sum post-op), the bias fused into the
// first, the optional exact GELU into the last. A GEMM at full speed, where oneDNN's direct conv falls back
// to slow kernels on long inputs (AVX2), and no im2col copy.
struct Conv1d {
  int64_t c_in = 0, c_out = 0, kernel = 0, stride = 1;
  bool gelu_erf = false, has_bias = false;
  std::vector<float> tap_weights;  // [C_out, K, C_in]: the [K·C_in, C_out] matrix in "ba" order
  memory bias;                     // [1, C_out]
  std::mutex mu;
  struct PerLength {
    std::vector<Prim<matmul>> chunks;
    std::vector<memory> weights;  // chunk c's weights in its primitive's layout
  };
  std::map<std::pair<int64_t, int>, std::unique_ptr<PerLength>> per_length;  // by (T_in, threads)
  std::vector<std::tuple<int64_t, memory::desc, memory>> packed;  // (chunk, layout, weights), reordered once

  int64_t out_len(int64_t t) const { return (t - kernel) / stride + 1; }
  int64_t chunk_count() const { return (kernel + stride - 1) / stride; }

  // Chunk c of the input: taps [c·stride, min(K, (c+1)·stride)) of every output frame.
  memory::desc chunk_src_md(int64_t t, int64_t c) const {
    const int64_t taps = std::min(kernel, (c + 1) * stride) - c * stride;
    return memory::desc({out_len(t), taps * c_in}, dt::f32, memory::dims{stride * c_in, 1});
  }

  // Chunk c's weights in the `want` layout, reordered once per layout.
  memory packed_weights(int64_t c, const memory::desc &want) {
    for (auto &[key, md, mem] : packed)
      if (key == c && md == want) return mem;
    // Rows [c·stride·C_in, +taps·C_in) of the [K·C_in, C_out] matrix ("ba": row stride 1, column stride K·C_in).
    memory::desc user_md({want.dims()[0], c_out}, dt::f32, memory::dims{1, kernel * c_in});
    memory user(user_md, cpu_engine(), tap_weights.data() + c * stride * c_in);
    memory w(want, cpu_engine());
    stream s(cpu_engine());
    reorder(user, w).execute(s, user, w);
    s.wait();
    packed.emplace_back(c, want, w);
    return w;
  }

  PerLength &for_length(int64_t t, int threads) {
    auto it = per_length.find({t, threads});
    if (it != per_length.end()) return *it->second;
    auto p = std::make_unique<PerLength>();
    const int64_t n = chunk_count();
    memory::desc dst({out_len(t), c_out}, dt::f32, tag::ab), bias_md({1, c_out}, dt::f32, tag::ab);
    for (int64_t c = 0; c < n; ++c) {
      primitive_attr attr;
      post_ops po;
      if (c > 0) po.append_sum(1.f);
      if (c == n - 1 && gelu_erf) append_eltwise(po, algorithm::eltwise_gelu_erf);
      attr.set_post_ops(po);
      memory::desc w_any({chunk_src_md(t, c).dims()[1], c_out}, dt::f32, tag::any);
      auto pd = matmul_pd(chunk_src_md(t, c), w_any, has_bias && c == 0 ? &bias_md : nullptr, dst, attr);
      p->chunks.emplace_back(pd);
      p->weights.push_back(packed_weights(c, pd.weights_desc()));
    }
    return *per_length.emplace(std::make_pair(t, threads), std::move(p)).first->second;
  }
};

}  // namespace

extern "C" {

void emo_dnnl_set_threads(int n) {
  if (n > 0) g_threads.store(n);
  sync_threads();
}

int emo_dnnl_version(int *major, int *minor, int *patch) {
  const dnnl_version_t *v = dnnl_version();
  *major = v->major;
  *minor = v->minor;
  *patch = v->patch;
  return 0;
}

// w: [N, K] row-major (f32 or bf16 bits, per `bf16`); bias: N f32 values or null. m_hint: a typical M,
// which oneDNN uses to choose the packed layout.
static Linear *linear_new(int64_t n, int64_t k, bool bf16, const void *w, const float *bias, int64_t m_hint,
                          bool gelu_erf) {
  {
    auto l = new Linear();
    l->gelu_erf = gelu_erf;
    l->n = n;
    l->k = k;
    l->bf16 = bf16;
    l->has_bias = bias != nullptr;
    dt wdt = l->bf16 ? dt::bf16 : dt::f32;
    // [N, K] row-major is the K x N matrix in "ba" order.
    memory::desc w_user_md({k, n}, wdt, tag::ba);
    memory::desc a({m_hint, k}, wdt, tag::ab), c({m_hint, n}, dt::f32, tag::ab);
    memory::desc bias_md({1, n}, dt::f32, tag::ab);
    auto pd = make_matmul(a, memory::desc({k, n}, wdt, tag::any), l->has_bias ? &bias_md : nullptr, c, 1.0f, gelu_erf);
    l->weights_md = pd.weights_desc();
    memory w_user(w_user_md, cpu_engine(), const_cast<void *>(w));
    l->weights = memory(l->weights_md, cpu_engine());
    stream s(cpu_engine());
    reorder(w_user, l->weights).execute(s, w_user, l->weights);
    if (bias) {
      l->bias = memory(bias_md, cpu_engine());
      std::memcpy(l->bias.get_data_handle(), bias, static_cast<size_t>(n) * sizeof(float));
    }
    s.wait();
    return l;
  }
}

// w: [N, K] row-major: bf16 bits when `bf16` = 1, else f32 (`bf16` = 2: f32 weights, native bf16 arithmetic,
// or its rounded-f32 form where the CPU has no bf16 matmul; 3: f32 weights, the rounded-f32 form);
// bias: N f32 values or null. m_hint: a typical M, which oneDNN uses to choose the packed layout.
// post_op: 0 none, 1 the exact (erf) GELU fused after the bias.
void *emo_dnnl_linear_new(int64_t n, int64_t k, int bf16, const void *w, const float *bias, int64_t m_hint, int post_op,
                          char *err, size_t err_len) {
  const bool gelu = post_op == 1;
  try {
    sync_threads();
    if (bf16 == 2 || bf16 == 3) {
      // bf16-rounded weights: packed as bf16 for native arithmetic, as f32 values for the rounded-f32 form.
      const float *w32 = static_cast<const float *>(w);
      std::vector<uint16_t> w16(static_cast<size_t>(n * k));
      std::vector<float> rounded(static_cast<size_t>(n * k));
      round_to_bf16(w32, rounded.data(), n * k);
      for (size_t i = 0; i < w16.size(); ++i) w16[i] = bf16_bits(w32[i]);
      if (bf16 == 2) {
        try {
          return linear_new(n, k, true, w16.data(), bias, m_hint, gelu);
        } catch (const dnnl::error &) {
          // No bf16 matmul on this CPU: the rounded-f32 form below.
        }
      }
      Linear *l = linear_new(n, k, false, rounded.data(), bias, m_hint, gelu);
      l->emulate = true;
      return l;
    }
    return linear_new(n, k, bf16 != 0, w, bias, m_hint, gelu);
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return nullptr;
  }
}


// x: [M, K] f32 row-major; y: [M, N] f32.
int emo_dnnl_linear_run(void *h, int64_t m, const float *x, float *y, char *err, size_t err_len) {
  try {
    const int threads = sync_threads();
    auto l = static_cast<Linear *>(h);
    std::lock_guard<std::mutex> g(l->mu);
    auto &p = linear_for(l, m, threads);
    stream s(cpu_engine());
    memory::desc x32({m, l->k}, dt::f32, tag::ab);
    memory xm(x32, cpu_engine(), const_cast<float *>(x));
    memory src = xm;
    if (l->emulate) {
      round_to_bf16(x, p.rounded.data(), m * l->k);
      src = memory(x32, cpu_engine(), p.rounded.data());
    } else if (l->bf16) {
      memory x16({{m, l->k}, dt::bf16, tag::ab}, cpu_engine(), p.scratch.data());
      p.to_bf16.run(s, {{DNNL_ARG_FROM, xm}, {DNNL_ARG_TO, x16}});
      src = x16;
    }
    memory ym({{m, l->n}, dt::f32, tag::ab}, cpu_engine(), y);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, l->weights}, {DNNL_ARG_DST, ym}};
    if (l->has_bias) args[DNNL_ARG_BIAS] = l->bias;
    p.prim.run(s, std::move(args));
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

void emo_dnnl_linear_free(void *h) { delete static_cast<Linear *>(h); }

// c (contiguous f32, dims = a's leading dims + [M, N]) = a[..., M, K] · b[..., K, N]; `nd` (2..=6) dims
// each, element strides for a and b (any order: a transposed operand is read in place). bf16: 0 f32; 1 bf16
// operands, native where the CPU has a bf16 matmul; 2 bf16 operands as rounded f32 values.
int emo_dnnl_bmm(int nd, const int64_t *a_dims, const int64_t *a_strides, const int64_t *b_dims,
                 const int64_t *b_strides, const float *a, const float *b, float *c, float scale, int bf16,
                 char *err, size_t err_len) {
  try {
    const int threads = sync_threads();
    memory::dims ad(a_dims, a_dims + nd), as(a_strides, a_strides + nd);
    memory::dims bd(b_dims, b_dims + nd), bs(b_strides, b_strides + nd);
    memory::dims cd(ad);
    cd[nd - 1] = bd[nd - 1];
    std::vector<int64_t> key;
    for (auto *v : {&ad, &as, &bd, &bs}) key.insert(key.end(), v->begin(), v->end());
    key.push_back(bf16);
    key.push_back(threads);
    std::memcpy(&key.emplace_back(), &scale, sizeof(float));
    Bmm *p;
    {
      std::lock_guard<std::mutex> g(bmm_mu);
      auto it = bmm_cache.find(key);
      if (it == bmm_cache.end()) {
        auto q = std::make_unique<Bmm>();
        q->a_md = memory::desc(ad, dt::f32, as);
        q->b_md = memory::desc(bd, dt::f32, bs);
        q->c_md = memory::desc(cd, dt::f32, dense_strides(cd));
        if (bf16) {
          q->a16_md = memory::desc(ad, dt::bf16, dense_strides(ad));
          // A transposed b (unit stride along K) stays transposed in bf16: the matmul reads it as is.
          bool b_t = bs[nd - 2] == 1;
          q->b16_md = memory::desc(bd, dt::bf16, b_t ? transposed_strides(bd) : dense_strides(bd));
          try {
            if (bf16 == 2) throw dnnl::error(dnnl_unimplemented, "rounded-f32 form asked for");
            q->prim = Prim<matmul>(make_matmul(q->a16_md, q->b16_md, nullptr, q->c_md, scale));
          } catch (const dnnl::error &) {
            // No bf16 matmul on this CPU (or the rounded-f32 form asked for): dense f32 copies rounded to
            // bf16 values.
            q->emulate = true;
            q->a16_md = memory::desc(ad, dt::f32, dense_strides(ad));
            q->b16_md = memory::desc(bd, dt::f32, dense_strides(bd));
            q->prim = Prim<matmul>(make_matmul(q->a16_md, q->b16_md, nullptr, q->c_md, scale));
          }
          q->a_to_bf16 = make_reorder(q->a_md, q->a16_md);
          q->b_to_bf16 = make_reorder(q->b_md, q->b16_md);
        } else {
          q->prim = Prim<matmul>(make_matmul(q->a_md, q->b_md, nullptr, q->c_md, scale));
        }
        it = bmm_cache.emplace(key, std::move(q)).first;
      }
      p = it->second.get();
    }
    stream s(cpu_engine());
    memory am(p->a_md, cpu_engine(), const_cast<float *>(a));
    memory bm(p->b_md, cpu_engine(), const_cast<float *>(b));
    memory cm(p->c_md, cpu_engine(), c);
    if (bf16) {
      memory a16(p->a16_md, cpu_engine()), b16(p->b16_md, cpu_engine());
      p->a_to_bf16.run(s, {{DNNL_ARG_FROM, am}, {DNNL_ARG_TO, a16}});
      p->b_to_bf16.run(s, {{DNNL_ARG_FROM, bm}, {DNNL_ARG_TO, b16}});
      if (p->emulate) {
        s.wait();
        auto *a_data = static_cast<float *>(a16.get_data_handle());
        auto *b_data = static_cast<float *>(b16.get_data_handle());
        round_to_bf16(a_data, a_data, static_cast<int64_t>(p->a16_md.get_size() / 4));
        round_to_bf16(b_data, b_data, static_cast<int64_t>(p->b16_md.get_size() / 4));
      }
      p->prim.run(s, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, b16}, {DNNL_ARG_DST, cm}});
    } else {
      p->prim.run(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    }
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

// Scores (f32 values) per attention block: one core's L2 cache, between 256 KB and 4 MB (256 KB where the
// system does not say).
static int64_t score_budget() {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const int64_t bytes = l2 > 0 ? static_cast<int64_t>(l2) : 256 * 1024;
    return std::max<int64_t>(256 * 1024, std::min<int64_t>(bytes, 4 * 1024 * 1024)) / static_cast<int64_t>(sizeof(float));
  }();
  return budget;
}

// Fused attention, out = softmax(scale · q · kᵀ) · v, one block of query rows at a time per thread, so the
// [M, N] score matrix is never materialised (a block's scores stay in cache and no memory is allocated per
// call beyond one block per thread). dims: B, H, M, N, D, Dv; q [B,H,M,D], k [B,H,N,D] and v [B,H,N,Dv]
// with any element strides (the heads-split views of a projection are read in place); out [B,M,H,Dv]
// dense, i.e. the heads already merged back to [B, M, H·Dv]. bf16: 0 f32; 1 bf16 operands, native (the
// rounded-f32 form where the CPU has no bf16 matmul); 2 bf16 operands as rounded f32 values.
int emo_dnnl_attention(const int64_t *dims, const int64_t *qs, const int64_t *ks, const int64_t *vs,
                       const float *q, const float *k, const float *v, float *out, float scale, int bf16, char *err,
                       size_t err_len) {
  try {
    sync_threads();
    const int64_t b = dims[0], h = dims[1], m = dims[2], n = dims[3], d = dims[4], dv = dims[5];
    // A block's scores fill one core's L2 (they stay there between the two products), at least 256 KB.
    // Larger blocks mean fewer, larger products: VideoMAE-L (1568 keys) on the AVX-512 Xeon (2 MB L2) took
    // 5.05 s with 256 KB blocks and 4.72 s with 2 MB ones (4 MB: 4.96 s).
    const int64_t rows = std::max<int64_t>(8, std::min<int64_t>(m, score_budget() / std::max<int64_t>(n, 1)));
    std::vector<int64_t> key(dims, dims + 6);
    for (const int64_t *st : {qs, ks, vs}) key.insert(key.end(), st, st + 4);
    key.push_back(bf16);
    std::memcpy(&key.emplace_back(), &scale, sizeof(float));
    // bf16 modes read dense [B,H,T,D] copies.
    const int64_t dq[4] = {h * m * d, m * d, d, 1}, dk[4] = {h * n * d, n * d, d, 1}, dvs[4] = {h * n * dv, n * dv, dv, 1};
    Attn *a;
    {
      std::lock_guard<std::mutex> g(attn_mu);
      auto it = attn_cache.find(key);
      if (it == attn_cache.end()) {
        auto p = std::make_unique<Attn>();
        p->rows = rows;
        auto make = [&](AttnMode mode) {
          p->mode = mode;
          const bool dense = mode != AttnMode::f32;
          make_attn_block(p->full, rows, dims, dense ? dq : qs, dense ? dk : ks, dense ? dvs : vs, scale, mode);
          p->has_tail = m % rows != 0;
          if (p->has_tail) make_attn_block(p->tail, m % rows, dims, dense ? dq : qs, dense ? dk : ks, dense ? dvs : vs, scale, mode);
        };
        if (bf16 == 1) {
          try {
            make(AttnMode::native_bf16);
          } catch (const dnnl::error &) {
            make(AttnMode::rounded_bf16);  // no bf16 matmul on this CPU
          }
        } else {
          make(bf16 == 2 ? AttnMode::rounded_bf16 : AttnMode::f32);
        }
        it = attn_cache.emplace(key, std::move(p)).first;
      }
      a = it->second.get();
    }
    // The operands as the blocks read them: in place (f32) or dense bf16 / rounded copies.
    std::vector<uint16_t> q16, k16, v16;
    std::vector<float> qr, kr, vr;
    const void *qp0 = q, *kp0 = k, *vp0 = v;
    const int64_t *qst = qs, *kst = ks, *vst = vs;
    size_t elem = sizeof(float);
    auto pack_all = [&](auto &qb, auto &kb, auto &vb) {
      qb.resize(b * h * m * d), kb.resize(b * h * n * d), vb.resize(b * h * n * dv);
      pack_bf16(q, qs, b, h, m, d, qb.data()), pack_bf16(k, ks, b, h, n, d, kb.data()), pack_bf16(v, vs, b, h, n, dv, vb.data());
      qp0 = qb.data(), kp0 = kb.data(), vp0 = vb.data(), elem = sizeof(qb[0]);
      qst = dq, kst = dk, vst = dvs;
    };
    if (a->mode == AttnMode::native_bf16) pack_all(q16, k16, v16);
    if (a->mode == AttnMode::rounded_bf16) pack_all(qr, kr, vr);
    const int64_t blocks = (m + rows - 1) / rows, tasks = b * h * blocks;
    std::string failure;
    // One task per (batch, head, row block); the primitives run single-threaded inside the region, each
    // thread with its own scores and scratchpad. A block's result does not depend on the thread that
    // computes it or on the thread count (the blocking depends on the shape only); the static schedule
    // makes the assignment reproducible as well.
#pragma omp parallel
    {
      std::vector<float> scores(static_cast<size_t>(rows * n));
      std::vector<uint16_t> probs16(a->mode == AttnMode::native_bf16 ? static_cast<size_t>(rows * n) : 0);
      stream s(cpu_engine());
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        try {
          const int64_t bi = t / (h * blocks), hi = (t / blocks) % h, r0 = (t % blocks) * rows;
          const bool tail = a->has_tail && r0 + rows > m;
          const AttnBlock &blk = tail ? a->tail : a->full;
          const int64_t block_rows = tail ? m - r0 : rows;
          auto at = [&](const void *base, const int64_t *st, int64_t row) {
            return const_cast<char *>(static_cast<const char *>(base)) + (bi * st[0] + hi * st[1] + row * st[2]) * elem;
          };
          float *op = out + (bi * m + r0) * h * dv + hi * dv;
          memory qm(blk.q_md, cpu_engine(), at(qp0, qst, r0));
          memory km(blk.k_md, cpu_engine(), at(kp0, kst, 0));
          memory sm(blk.s_md, cpu_engine(), scores.data());
          memory vm(blk.v_md, cpu_engine(), at(vp0, vst, 0));
          memory om(blk.o_md, cpu_engine(), op);
          blk.qk.run(s, {{DNNL_ARG_SRC, qm}, {DNNL_ARG_WEIGHTS, km}, {DNNL_ARG_DST, sm}});
          blk.softmax.run(s, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_DST, sm}});
          memory pm = sm;
          if (a->mode != AttnMode::f32) {
            s.wait();
            const int64_t count = block_rows * n;
            if (a->mode == AttnMode::native_bf16) {
              for (int64_t i = 0; i < count; ++i) probs16[i] = bf16_bits(scores[i]);
              pm = memory(blk.p_md, cpu_engine(), probs16.data());
            } else {
              for (int64_t i = 0; i < count; ++i) scores[i] = bf16_rounded(scores[i]);
            }
          }
          blk.pv.run(s, {{DNNL_ARG_SRC, pm}, {DNNL_ARG_WEIGHTS, vm}, {DNNL_ARG_DST, om}});
          s.wait();
        } catch (const std::exception &e) {
#pragma omp critical
          failure = e.what();
        }
      }
    }
    if (!failure.empty()) throw std::runtime_error(failure);
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

// w: [C_out, C_in, K] f32; bias: C_out values or null; post_op: 0 none, 1 the exact GELU.
void *emo_dnnl_conv1d_new(int64_t c_in, int64_t c_out, int64_t kernel, int64_t stride, const float *w,
                          const float *bias, int post_op, char *err, size_t err_len) {
  try {
    if (c_in < 1 || c_out < 1 || kernel < 1 || stride < 1) throw std::runtime_error("invalid conv1d geometry");
    auto c = std::make_unique<Conv1d>();
    c->c_in = c_in, c->c_out = c_out, c->kernel = kernel, c->stride = stride;
    c->gelu_erf = post_op == 1;
    c->tap_weights.resize(static_cast<size_t>(c_out * c_in * kernel));
    for (int64_t o = 0; o < c_out; ++o)
      for (int64_t i = 0; i < c_in; ++i)
        for (int64_t j = 0; j < kernel; ++j) c->tap_weights[(o * kernel + j) * c_in + i] = w[(o * c_in + i) * kernel + j];
    c->has_bias = bias != nullptr;
    if (bias) {
      c->bias = memory(memory::desc({1, c_out}, dt::f32, tag::ab), cpu_engine());
      std::memcpy(c->bias.get_data_handle(), bias, static_cast<size_t>(c_out) * sizeof(float));
    }
    return c.release();
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return nullptr;
  }
}

// Output frames for `t` input frames (< 1: the input is shorter than the kernel).
int64_t emo_dnnl_conv1d_out_len(void *h, int64_t t) { return static_cast<Conv1d *>(h)->out_len(t); }

// x: [B, T, C_in] f32 dense; y: [B, T_out, C_out] f32 dense.
int emo_dnnl_conv1d_run(void *h, int64_t b, int64_t t, const float *x, float *y, char *err, size_t err_len) {
  try {
    const int threads = sync_threads();
    auto c = static_cast<Conv1d *>(h);
    std::lock_guard<std::mutex> g(c->mu);
    auto &p = c->for_length(t, threads);
    stream s(cpu_engine());
    const int64_t t_out = c->out_len(t);
    for (int64_t i = 0; i < b; ++i) {
      memory ym({{t_out, c->c_out}, dt::f32, tag::ab}, cpu_engine(), y + i * t_out * c->c_out);
      for (size_t k = 0; k < p.chunks.size(); ++k) {
        const float *src = x + i * t * c->c_in + static_cast<int64_t>(k) * c->stride * c->c_in;
        memory xm(c->chunk_src_md(t, static_cast<int64_t>(k)), cpu_engine(), const_cast<float *>(src));
        std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, p.weights[k]}, {DNNL_ARG_DST, ym}};
        if (c->has_bias && k == 0) args[DNNL_ARG_BIAS] = c->bias;
        p.chunks[k].run(s, std::move(args));
      }
    }
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

void emo_dnnl_conv1d_free(void *h) { delete static_cast<Conv1d *>(h); }

// y = gelu_erf(x) elementwise over n f32 values (oneDNN's vectorised erf); y may alias x.
int emo_dnnl_gelu_erf(const float *x, float *y, int64_t n, char *err, size_t err_len) {
  try {
    const int threads = sync_threads();
    static std::mutex mu;
    static std::map<std::pair<int64_t, int>, Prim<eltwise_forward>> cache;  // by (n, threads)
    memory::desc md({n}, dt::f32, tag::a);
    Prim<eltwise_forward> prim;
    {
      std::lock_guard<std::mutex> g(mu);
      auto it = cache.find({n, threads});
      if (it == cache.end()) {
#if DNNL_VERSION_MAJOR >= 3
        eltwise_forward::primitive_desc pd(cpu_engine(), prop_kind::forward_inference, algorithm::eltwise_gelu_erf,
                                           md, md, 0.f, 0.f, user_scratchpad());
#else
        eltwise_forward::primitive_desc pd(
            eltwise_forward::desc(prop_kind::forward_inference, algorithm::eltwise_gelu_erf, md, 0.f, 0.f),
            user_scratchpad(), cpu_engine());
#endif
        if (cache.size() > 64) cache.clear();
        it = cache.emplace(std::make_pair(n, threads), Prim<eltwise_forward>(pd)).first;
      }
      prim = it->second;
    }
    stream s(cpu_engine());
    memory xm(md, cpu_engine(), const_cast<float *>(x)), ym(md, cpu_engine(), y);
    prim.run(s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DST, ym}});
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

}  // extern "C"
