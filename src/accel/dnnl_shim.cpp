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

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

using namespace dnnl;
using dt = memory::data_type;
using tag = memory::format_tag;

namespace {

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

matmul::primitive_desc make_matmul(const memory::desc &a, const memory::desc &b, const memory::desc *bias,
                                   const memory::desc &c, float scale, bool gelu_erf = false) {
  primitive_attr attr;
  if (gelu_erf) {
    // The exact (erf) GELU fused into the product's epilogue: no separate pass over the activations.
    post_ops po;
#if DNNL_VERSION_MAJOR >= 3
    po.append_eltwise(algorithm::eltwise_gelu_erf, 0.f, 0.f);
#else
    po.append_eltwise(1.f, algorithm::eltwise_gelu_erf, 0.f, 0.f);
#endif
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
#if DNNL_VERSION_MAJOR >= 3
  if (bias) return matmul::primitive_desc(cpu_engine(), a, b, *bias, c, attr);
  return matmul::primitive_desc(cpu_engine(), a, b, c, attr);
#else
  if (bias) return matmul::primitive_desc(matmul::desc(a, b, *bias, c), attr, cpu_engine());
  return matmul::primitive_desc(matmul::desc(a, b, c), attr, cpu_engine());
#endif
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
    matmul prim;
    reorder to_bf16;  // f32 x -> bf16 scratch (bf16 mode only)
    std::vector<uint16_t> scratch;
    std::vector<float> rounded;  // emulated bf16: x rounded to bf16 values
  };
  std::unordered_map<int64_t, std::unique_ptr<PerM>> per_m;
};

Linear::PerM &linear_for(Linear *l, int64_t m) {
  auto it = l->per_m.find(m);
  if (it != l->per_m.end()) return *it->second;
  auto p = std::make_unique<Linear::PerM>();
  dt src_dt = l->bf16 ? dt::bf16 : dt::f32;
  memory::desc a({m, l->k}, src_dt, tag::ab), c({m, l->n}, dt::f32, tag::ab);
  memory::desc bias_md({1, l->n}, dt::f32, tag::ab);
  p->prim = matmul(make_matmul(a, l->weights_md, l->has_bias ? &bias_md : nullptr, c, 1.0f, l->gelu_erf));
  if (l->bf16) {
    memory::desc x32({m, l->k}, dt::f32, tag::ab);
    p->to_bf16 = reorder(reorder::primitive_desc(cpu_engine(), x32, cpu_engine(), a));
    p->scratch.resize(static_cast<size_t>(m * l->k));
  }
  if (l->emulate) p->rounded.resize(static_cast<size_t>(m * l->k));
  return *l->per_m.emplace(m, std::move(p)).first->second;
}

struct Bmm {
  matmul prim;
  bool emulate = false;      // bf16 values in f32 (CPU without bf16)
  reorder a_to_bf16, b_to_bf16;  // to the bf16 (or, emulated, dense f32) operand layouts
  memory::desc a_md, b_md, c_md, a16_md, b16_md;
};

std::mutex bmm_mu;
std::map<std::vector<int64_t>, std::unique_ptr<Bmm>> bmm_cache;

// Rounds f32 values to the nearest bf16 (ties to even), kept as f32: on a CPU without native bf16
// (no AVX512_BF16 / AMX, where oneDNN has no bf16 matmul) bf16 mode runs f32 products of rounded
// operands, which gives the numbers a native bf16 matmul with f32 accumulation gives.
void round_to_bf16(const float *src, float *dst, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &src[i], 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&dst[i], &bits, 4);
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

}  // namespace

extern "C" {

void emo_dnnl_set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
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

// w: [N, K] row-major: bf16 bits when `bf16` = 1, else f32 (`bf16` = 2: f32 weights, bf16 arithmetic);
// bias: N f32 values or null. m_hint: a typical M, which oneDNN uses to choose the packed layout.
// post_op: 0 none, 1 the exact (erf) GELU fused after the bias.
void *emo_dnnl_linear_new(int64_t n, int64_t k, int bf16, const void *w, const float *bias, int64_t m_hint, int post_op,
                          char *err, size_t err_len) {
  const bool gelu = post_op == 1;
  try {
    if (bf16 == 2) {
      // Native bf16 where the CPU has it, else emulated (f32 products of bf16-rounded operands).
      const float *w32 = static_cast<const float *>(w);
      std::vector<uint16_t> w16(static_cast<size_t>(n * k));
      std::vector<float> rounded(static_cast<size_t>(n * k));
      round_to_bf16(w32, rounded.data(), n * k);
      for (size_t i = 0; i < w16.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &rounded[i], 4);
        w16[i] = static_cast<uint16_t>(bits >> 16);
      }
      try {
        return linear_new(n, k, true, w16.data(), bias, m_hint, gelu);
      } catch (const dnnl::error &) {
        Linear *l = linear_new(n, k, false, rounded.data(), bias, m_hint, gelu);
        l->emulate = true;
        return l;
      }
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
    auto l = static_cast<Linear *>(h);
    std::lock_guard<std::mutex> g(l->mu);
    auto &p = linear_for(l, m);
    stream s(cpu_engine());
    memory::desc x32({m, l->k}, dt::f32, tag::ab);
    memory xm(x32, cpu_engine(), const_cast<float *>(x));
    memory src = xm;
    if (l->emulate) {
      round_to_bf16(x, p.rounded.data(), m * l->k);
      src = memory(x32, cpu_engine(), p.rounded.data());
    } else if (l->bf16) {
      memory x16({{m, l->k}, dt::bf16, tag::ab}, cpu_engine(), p.scratch.data());
      p.to_bf16.execute(s, xm, x16);
      src = x16;
    }
    memory ym({{m, l->n}, dt::f32, tag::ab}, cpu_engine(), y);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, l->weights}, {DNNL_ARG_DST, ym}};
    if (l->has_bias) args[DNNL_ARG_BIAS] = l->bias;
    p.prim.execute(s, args);
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

void emo_dnnl_linear_free(void *h) { delete static_cast<Linear *>(h); }

// c (contiguous f32, dims = a's leading dims + [M, N]) = a[..., M, K] · b[..., K, N]; `nd` (2..=6) dims
// each, element strides for a and b (any order: a transposed operand is read in place).
int emo_dnnl_bmm(int nd, const int64_t *a_dims, const int64_t *a_strides, const int64_t *b_dims,
                 const int64_t *b_strides, const float *a, const float *b, float *c, float scale, int bf16,
                 char *err, size_t err_len) {
  try {
    memory::dims ad(a_dims, a_dims + nd), as(a_strides, a_strides + nd);
    memory::dims bd(b_dims, b_dims + nd), bs(b_strides, b_strides + nd);
    memory::dims cd(ad);
    cd[nd - 1] = bd[nd - 1];
    std::vector<int64_t> key;
    for (auto *v : {&ad, &as, &bd, &bs}) key.insert(key.end(), v->begin(), v->end());
    key.push_back(bf16);
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
            q->prim = matmul(make_matmul(q->a16_md, q->b16_md, nullptr, q->c_md, scale));
          } catch (const dnnl::error &) {
            // No bf16 matmul on this CPU: dense f32 copies rounded to bf16 values.
            q->emulate = true;
            q->a16_md = memory::desc(ad, dt::f32, dense_strides(ad));
            q->b16_md = memory::desc(bd, dt::f32, dense_strides(bd));
            q->prim = matmul(make_matmul(q->a16_md, q->b16_md, nullptr, q->c_md, scale));
          }
          q->a_to_bf16 = reorder(reorder::primitive_desc(cpu_engine(), q->a_md, cpu_engine(), q->a16_md));
          q->b_to_bf16 = reorder(reorder::primitive_desc(cpu_engine(), q->b_md, cpu_engine(), q->b16_md));
        } else {
          q->prim = matmul(make_matmul(q->a_md, q->b_md, nullptr, q->c_md, scale));
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
      p->a_to_bf16.execute(s, am, a16);
      p->b_to_bf16.execute(s, bm, b16);
      if (p->emulate) {
        s.wait();
        auto *a_data = static_cast<float *>(a16.get_data_handle());
        auto *b_data = static_cast<float *>(b16.get_data_handle());
        round_to_bf16(a_data, a_data, static_cast<int64_t>(p->a16_md.get_size() / 4));
        round_to_bf16(b_data, b_data, static_cast<int64_t>(p->b16_md.get_size() / 4));
      }
      p->prim.execute(s, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, b16}, {DNNL_ARG_DST, cm}});
    } else {
      p->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    }
    s.wait();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

}  // extern "C"
