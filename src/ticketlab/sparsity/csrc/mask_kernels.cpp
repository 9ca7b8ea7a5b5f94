// Fused CPU kernels of the strong-ticket hot path, loaded by ticketlab/kernels.py
// (torch.utils.cpp_extension, compiled on first use). Each replaces several elementwise torch passes
// with one; the results are bit-identical to the torch formulation in ticketlab/selection.py and
// ticketlab/masks.py (same comparisons, same products), which the tests check.
#include <torch/extension.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 2048;

inline float key_of(float s, bool absval) { return absval ? std::fabs(s) : s; }

// Whether a kernel can take the tensor: a contiguous float32 CPU tensor of n entries. The Python side falls
// back to torch ops when it cannot (status 3, or an undefined result).
bool fits(const torch::Tensor& t, int64_t n) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n;
}

// Whether an elementwise kernel can take the tensor alongside `like`: a float32 CPU tensor of like's sizes and
// strides whose entries fill one block of memory (contiguous, or channels-last). The kernels then walk the
// memory in order; where order matters (ties at the threshold), positions are mapped back to flat row-major
// indices (flat_index), so the result is the one of the contiguous tensor.
bool fits_like(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.sizes() == like.sizes() &&
         t.strides() == like.strides() && t.is_non_overlapping_and_dense();
}

// The row-major flat index of the entry at memory offset `offset` of a tensor for which fits_like holds.
int64_t flat_index(const torch::Tensor& t, int64_t offset) {
  if (t.is_contiguous()) return offset;
  int64_t flat = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t size = t.size(d);
    flat = flat * size + (size == 1 ? 0 : (offset / t.stride(d)) % size);
  }
  return flat;
}

constexpr double kUnfit = 3.0;

// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the CPU
// (GCC function multi-versioning); other targets get one baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TL_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TL_MULTIVERSION
#endif

// One block of a fresh band pass: mask (and product) values for key > hi, 0 in the band, flag 1 for in-band
// entries, and the counts of keys above the band and of NaN keys.
TL_MULTIVERSION void scan_block(const float* pb, float* mb, const float* wb, float* ob, uint8_t* flag,
                                int64_t len, bool absval, float flo, float fhi, int32_t* above_out,
                                int32_t* nan_out) {
  int32_t above = 0, nan = 0;
  for (int64_t i = 0; i < len; ++i) {  // vectorizable: no branches
    const float x = key_of(pb[i], absval);
    const int32_t a = x > fhi;
    mb[i] = static_cast<float>(a);
    above += a;
    nan += (x != x);
    flag[i] = static_cast<uint8_t>((x >= flo) & (x <= fhi));
  }
  if (ob != nullptr) {
    for (int64_t i = 0; i < len; ++i) ob[i] = wb[i] * mb[i];
  }
  *above_out = above;
  *nan_out = nan;
}

// Where an incremental band pass puts what it finds: the band entries (key, flat index), and the mask (and
// product) entries that change, written at once.
struct Sink {
  std::vector<std::pair<float, int64_t>>* band;
  float* m;
  const float* w;  // nullptr: no product
  float* o;
};

// The entries of a run of up to 32 keys starting at pb[i] (flat index offset + i) that the bit masks mark:
// in-band entries go to the band, the others get mask bit `above`.
inline void emit(uint32_t in_band, uint32_t changed, uint32_t above, const float* pb, int64_t i, int64_t offset,
                 bool absval, const Sink& sink) {
  uint32_t bits = in_band | changed;
  while (bits) {
    const int j = __builtin_ctz(bits);
    bits &= bits - 1;
    const int64_t at = offset + i + j;
    if ((in_band >> j) & 1u) {
      sink.band->emplace_back(key_of(pb[i + j], absval), at);
    } else {
      const float keep = static_cast<float>((above >> j) & 1u);
      sink.m[at] = keep;
      if (sink.w != nullptr) sink.o[at] = sink.w[at] * keep;
    }
  }
}

// One block of an incremental band pass (mask and product hold an earlier selection): the pass reads the keys
// and the mask, and writes only the entries whose mask changes (a few per block: the scores move little).
// Comparisons give bit masks (AVX-512: one per 16 keys; AVX2: per 8), so the common all-clear case costs a
// few instructions per vector. Adds the counts of keys above the band and of NaN keys.
using ChangesFn = void (*)(const float*, const float*, int64_t, bool, float, float, int64_t, const Sink&, int64_t*,
                           int64_t*);

void scan_changes_default(const float* pb, const float* mb, int64_t len, bool absval, float flo, float fhi,
                          int64_t offset, const Sink& sink, int64_t* above_out, int64_t* nan_out) {
  int64_t above = 0, nan = 0;
  for (int64_t i = 0; i < len; ++i) {
    const float x = key_of(pb[i], absval);
    const uint32_t a = x > fhi, in_band = (x >= flo) & (x <= fhi);
    above += a;
    nan += (x != x);
    const uint32_t changed = !in_band & (a != static_cast<uint32_t>(mb[i] > 0.5f));
    if (in_band | changed) emit(in_band, changed, a, pb, i, offset, absval, sink);
  }
  *above_out += above;
  *nan_out += nan;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) void scan_changes_avx512(const float* pb, const float* mb, int64_t len,
                                                            bool absval, float flo, float fhi, int64_t offset,
                                                            const Sink& sink, int64_t* above_out, int64_t* nan_out) {
  const __m512 lo = _mm512_set1_ps(flo), hi = _mm512_set1_ps(fhi), half = _mm512_set1_ps(0.5f);
  const __m512i keep_bits = _mm512_set1_epi32(absval ? 0x7fffffff : -1);
  int64_t above = 0, nan = 0, i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512 x = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(pb + i)), keep_bits));
    const uint32_t a = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    const uint32_t in_band = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(x, hi, _CMP_LE_OQ);
    const uint32_t was = _mm512_cmp_ps_mask(_mm512_loadu_ps(mb + i), half, _CMP_GT_OQ);
    above += __builtin_popcount(a);
    nan += __builtin_popcount(static_cast<uint32_t>(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q)));
    const uint32_t changed = (a ^ was) & ~in_band;
    if (in_band | changed) emit(in_band, changed, a, pb, i, offset, absval, sink);
  }
  *above_out += above;
  *nan_out += nan;
  scan_changes_default(pb + i, mb + i, len - i, absval, flo, fhi, offset + i, sink, above_out, nan_out);
}

__attribute__((target("avx2"))) void scan_changes_avx2(const float* pb, const float* mb, int64_t len, bool absval,
                                                       float flo, float fhi, int64_t offset, const Sink& sink,
                                                       int64_t* above_out, int64_t* nan_out) {
  const __m256 lo = _mm256_set1_ps(flo), hi = _mm256_set1_ps(fhi), half = _mm256_set1_ps(0.5f);
  const __m256 keep_bits = _mm256_castsi256_ps(_mm256_set1_epi32(absval ? 0x7fffffff : -1));
  int64_t above = 0, nan = 0, i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 x = _mm256_and_ps(_mm256_loadu_ps(pb + i), keep_bits);
    const uint32_t a = _mm256_movemask_ps(_mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    const uint32_t in_band =
        _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), _mm256_cmp_ps(x, hi, _CMP_LE_OQ)));
    const uint32_t was = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(mb + i), half, _CMP_GT_OQ));
    above += __builtin_popcount(a);
    nan += __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))));
    const uint32_t changed = (a ^ was) & ~in_band;
    if (in_band | changed) emit(in_band, changed, a, pb, i, offset, absval, sink);
  }
  *above_out += above;
  *nan_out += nan;
  scan_changes_default(pb + i, mb + i, len - i, absval, flo, fhi, offset + i, sink, above_out, nan_out);
}

ChangesFn pick_scan_changes() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return scan_changes_avx512;
  if (__builtin_cpu_supports("avx2")) return scan_changes_avx2;
  return scan_changes_default;
}
#else
ChangesFn pick_scan_changes() { return scan_changes_default; }
#endif

ChangesFn scan_changes = pick_scan_changes();

}  // namespace

// Which implementation of the incremental pass runs: "avx512", "avx2" or "default" (for the tests, which
// compare them); returns false, changing nothing, when this CPU or build lacks it.
bool use_isa(const std::string& name) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (name == "avx512" && __builtin_cpu_supports("avx512f")) return (scan_changes = scan_changes_avx512, true);
  if (name == "avx2" && __builtin_cpu_supports("avx2")) return (scan_changes = scan_changes_avx2, true);
#endif
  if (name == "default") return (scan_changes = scan_changes_default, true);
  if (name == "best") return (scan_changes = pick_scan_changes(), true);
  return false;
}

namespace {

// dL/dS = g * w (* sign(s) for the |S| key), as the torch formulation computes it.
inline float score_grad_of(float g, float w, float s, bool signed_key) {
  return signed_key ? (g * w) * static_cast<float>((s > 0.0f) - (s < 0.0f)) : g * w;
}

TL_MULTIVERSION void score_grad_loop(const float* __restrict pg, const float* __restrict pw,
                                     const float* __restrict ps, float* __restrict po, int64_t b, int64_t e,
                                     bool signed_key) {
  for (int64_t i = b; i < e; ++i) po[i] = score_grad_of(pg[i], pw[i], ps[i], signed_key);
}

// The same, written over g (a separate loop: with po == pg the restrict loop above would be undefined).
TL_MULTIVERSION void score_grad_inplace_loop(float* __restrict pg, const float* __restrict pw,
                                             const float* __restrict ps, int64_t b, int64_t e, bool signed_key) {
  for (int64_t i = b; i < e; ++i) pg[i] = score_grad_of(pg[i], pw[i], ps[i], signed_key);
}

struct Chunk {
  std::vector<std::pair<float, int64_t>> band;
  int64_t above = 0;
  int64_t nan = 0;
};

}  // namespace

// Exact top-k of key(s) (|s| or s) written into `mask` (float 0/1, numel of s) when the k-th largest
// key lies in the band [lo, hi]. One pass sets the mask to 1 for key > hi and 0 below the band and
// collects the band entries; the (k - #above)-th largest band entry is the threshold v; band entries
// above v are kept, and entries equal to v lowest index first, so exactly k entries are kept.
// With a non-empty `weight`, `product` = weight * mask is written too (the forward's masked weight).
// `incremental`: mask (and product) already hold a previous selection (product = weight * mask); only the
// entries whose mask changes are written (the scores move little per step, so most entries keep their value
// and the pass only reads).
// Returns {status, n_above, n_band, v}: status 0 = done; 1 = the band does not hold the k-th largest
// (mask and product are left partial; select again over everything); 2 = NaN keys (no exact top-k exists;
// partial too); 3 = a tensor is not a dense float32 CPU tensor with the scores' sizes and strides (fits_like),
// or k is not in [1, n) (nothing written).
std::vector<double> band_select(const torch::Tensor& s, bool absval, double lo, double hi, int64_t k,
                                torch::Tensor mask, const torch::Tensor& weight, torch::Tensor product,
                                bool incremental) {
  const int64_t n = s.numel();
  const bool fused = weight.defined() && weight.numel() > 0;
  if (!fits_like(s, s) || !fits_like(mask, s) || (fused && (!fits_like(weight, s) || !fits_like(product, s))) ||
      k < 1 || k >= n) {
    return {kUnfit, 0.0, 0.0, NAN};
  }
  const float* p = s.data_ptr<float>();
  float* m = mask.data_ptr<float>();
  const float* w = fused ? weight.data_ptr<float>() : nullptr;
  float* o = fused ? product.data_ptr<float>() : nullptr;
  const float flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  auto set = [&](int64_t i, float keep) {
    m[i] = keep;
    if (fused) o[i] = w[i] * keep;
  };
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / (4 * kBlock)));
  std::vector<Chunk> chunks(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      Chunk& ch = chunks[c];
      const int64_t b = n * c / nchunks, e = n * (c + 1) / nchunks;
      ch.band.reserve(static_cast<size_t>((e - b) / 128 + 64));  // the band holds ~1/2048 to 1/256
      const Sink sink{&ch.band, m, w, o};
      alignas(64) uint8_t flag[kBlock + 8];
      for (int64_t i0 = b; i0 < e; i0 += kBlock) {
        const int64_t len = std::min(e - i0, kBlock);
        const float* pb = p + i0;
        float* mb = m + i0;
        if (incremental) {
          scan_changes(pb, mb, len, absval, flo, fhi, i0, sink, &ch.above, &ch.nan);
          continue;
        }
        int32_t above = 0, nan = 0;
        scan_block(pb, mb, fused ? w + i0 : nullptr, fused ? o + i0 : nullptr, flag, len, absval, flo, fhi,
                   &above, &nan);
        ch.above += above;
        ch.nan += nan;
        const int64_t padded = (len + 7) & ~int64_t{7};
        for (int64_t i = len; i < padded; ++i) flag[i] = 0;
        for (int64_t q = 0; q < padded; q += 8) {  // eight flags at a time: most words hold none
          uint64_t word;
          if (q + 64 <= padded && (q & 63) == 0) {  // skip 64 flags at once when none is set
            uint64_t any = 0;
            for (int j = 0; j < 64; j += 8) {
              std::memcpy(&word, flag + q + j, 8);
              any |= word;
            }
            if (!any) {
              q += 56;
              continue;
            }
          }
          std::memcpy(&word, flag + q, 8);
          while (word) {
            const int byte = __builtin_ctzll(word) >> 3;
            const int64_t i = q + byte;
            ch.band.emplace_back(key_of(pb[i], absval), i0 + i);
            word &= ~(uint64_t{0xFF} << (byte * 8));
          }
        }
      }
    }
  });
  int64_t above = 0, nan = 0;
  size_t nband = 0;
  for (const Chunk& ch : chunks) {
    above += ch.above;
    nan += ch.nan;
    nband += ch.band.size();
  }
  if (nan) return {2.0, static_cast<double>(above), static_cast<double>(nband), NAN};
  const int64_t need = k - above;
  if (need < 1 || need > static_cast<int64_t>(nband)) {
    return {1.0, static_cast<double>(above), static_cast<double>(nband), NAN};
  }
  std::vector<std::pair<float, int64_t>> band;
  band.reserve(nband);
  for (Chunk& ch : chunks) band.insert(band.end(), ch.band.begin(), ch.band.end());
  std::nth_element(band.begin(), band.begin() + (need - 1), band.end(),
                   [](const auto& x, const auto& y) { return x.first > y.first; });
  const float v = band[need - 1].first;
  int64_t gt = 0;
  std::vector<int64_t> ties;  // flat indices of the entries equal to v
  for (const auto& e : band) {
    if (e.first > v) ++gt;
    else if (e.first == v) ties.push_back(flat_index(s, e.second));
  }
  std::sort(ties.begin(), ties.end());
  const int64_t last_tie = need > gt ? ties[need - gt - 1] : -1;  // ties kept: flat index <= last_tie
  for (const auto& e : band) {
    set(e.second, (e.first > v || (e.first == v && flat_index(s, e.second) <= last_tie)) ? 1.0f : 0.0f);
  }
  return {0.0, static_cast<double>(above), static_cast<double>(nband), static_cast<double>(v)};
}

// Exact top-k of key(s) by nth_element over a copy of the keys (small tensors, and misses of the band):
// keys above the k-th largest value v are kept, then keys equal to v lowest index first.
// Returns {status, v}: status 0 = done, 2 = NaN keys, 3 = unfit tensors or k outside [1, n].
std::vector<double> full_select(const torch::Tensor& s, bool absval, int64_t k, torch::Tensor mask) {
  const int64_t n = s.numel();
  if (!fits(s, n) || !fits(mask, n) || k < 1 || k > n) return {kUnfit, NAN};
  const float* p = s.data_ptr<float>();
  float* m = mask.data_ptr<float>();
  std::vector<float> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = key_of(p[i], absval);
    if (keys[i] != keys[i]) return {2.0, NAN};
  }
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<float>());
  const float v = keys[k - 1];
  int64_t gt = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = key_of(p[i], absval);
    m[i] = x > v ? 1.0f : 0.0f;
    gt += x > v;
  }
  for (int64_t i = 0, left = k - gt; i < n && left > 0; ++i) {
    if (key_of(p[i], absval) == v) {
      m[i] = 1.0f;
      --left;
    }
  }
  return {0.0, static_cast<double>(v)};
}

// One global top-`total` round of iterative pruning among the entries kept so far (SynFlow, iterative
// SNIP): every other entry scores exactly 0 and stays pruned. For tensor t, idx[t] holds the ascending flat
// indices of its kept entries; their score is |w[i] * g[i]| (in the tensors' dtype, then rounded to
// float32, as the torch formulation does). The `total` best-scored entries stay kept, ties at the threshold
// lowest position first (tensor order, then index); the kernel zeroes mask[t] (and w[t], with zero_weights:
// SynFlow's weights with the masks folded in) at the dropped entries, bumping their version counters, and
// moves the kept indices to the front of idx[t].
// Returns {status, kept_0, kept_1, ...}: status 0 = done; 1 = the threshold is 0 or there are fewer kept
// entries than `total` (the answer would involve pruned entries: select over everything instead, nothing
// written); 2 = NaN scores (nothing written); 3 = unfit tensors (nothing written).
std::vector<int64_t> shrink_kept(const std::vector<torch::Tensor>& w, const std::vector<torch::Tensor>& g,
                                 std::vector<torch::Tensor> idx, std::vector<torch::Tensor> mask, int64_t total,
                                 bool zero_weights) {
  const size_t nt = w.size();
  if (g.size() != nt || idx.size() != nt || mask.size() != nt || nt == 0) return {3};
  std::vector<int64_t> offset(nt + 1, 0);
  for (size_t t = 0; t < nt; ++t) {
    const int64_t n = w[t].numel();
    const auto dt = w[t].scalar_type();
    if (!(dt == at::kFloat || dt == at::kDouble) || g[t].scalar_type() != dt || !w[t].device().is_cpu() ||
        !w[t].is_contiguous() || !g[t].is_contiguous() || g[t].numel() != n || !fits(mask[t], n) ||
        !idx[t].defined() || idx[t].scalar_type() != at::kLong || !idx[t].is_contiguous() || idx[t].dim() != 1) {
      return {3};
    }
    offset[t + 1] = offset[t] + idx[t].numel();
  }
  const int64_t n_kept = offset[nt];
  if (total < 1 || total > n_kept) return {1};
  // the scores, tensor after tensor, and a histogram of their top 16 bits per chunk, in one parallel pass;
  // then the k-th largest: the bin that holds it (non-negative floats order like their bit patterns), and
  // nth_element among that bin's entries
  std::unique_ptr<float[]> score(new float[n_kept]);
  constexpr int kBins = 1 << 16;
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_kept / (1 << 16)));
  auto chunk_begin = [&](int64_t c) { return n_kept * c / nchunks; };
  std::vector<std::vector<int32_t>> hists(nchunks);
  std::vector<int64_t> nans(nchunks, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      auto& h = hists[c];
      h.assign(kBins, 0);
      int64_t nan = 0;
      const int64_t e = chunk_begin(c + 1);
      int64_t j = chunk_begin(c);
      size_t t = std::upper_bound(offset.begin(), offset.end(), j) - offset.begin() - 1;
      for (; j < e; ++t) {
        const int64_t stop = std::min(e, offset[t + 1]);
        const int64_t* pi = idx[t].data_ptr<int64_t>() - offset[t];  // pi[j]: global position j's index
        auto run = [&](auto* pw, auto* pg) {
          for (; j < stop; ++j) {
            const int64_t i = pi[j];
            const float x = static_cast<float>(std::abs(pg[i] * pw[i]));
            score[j] = x;
            uint32_t bits;
            std::memcpy(&bits, &x, 4);
            h[bits >> 16] += 1;
            nan += x != x;
          }
        };
        if (w[t].scalar_type() == at::kFloat) run(w[t].data_ptr<float>(), g[t].data_ptr<float>());
        else run(w[t].data_ptr<double>(), g[t].data_ptr<double>());
      }
      nans[c] = nan;
    }
  });
  for (int64_t c = 0; c < nchunks; ++c) {
    if (nans[c]) return {2};
  }
  int64_t above = 0;
  int bin = kBins - 1;
  int64_t in_bin = 0;
  for (; bin >= 0; --bin) {
    in_bin = 0;
    for (int64_t c = 0; c < nchunks; ++c) in_bin += hists[c][bin];
    if (above + in_bin >= total) break;
    above += in_bin;
  }
  std::vector<std::vector<float>> cands(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      cands[c].reserve(hists[c][bin]);
      for (int64_t j = chunk_begin(c), e = chunk_begin(c + 1); j < e; ++j) {
        uint32_t bits;
        std::memcpy(&bits, &score[j], 4);
        if (static_cast<int>(bits >> 16) == bin) cands[c].push_back(score[j]);
      }
    }
  });
  std::vector<float> cand;
  cand.reserve(in_bin);
  for (const auto& part : cands) cand.insert(cand.end(), part.begin(), part.end());
  const int64_t need = total - above;
  std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), std::greater<float>());
  const float v = cand[need - 1];
  if (!(v > 0.0f)) return {1};
  int64_t gt = above;  // every entry of a higher bin, and the candidates above v
  for (const float x : cand) gt += x > v;
  int64_t equal = 0;
  for (const float x : cand) equal += x == v;
  std::vector<int64_t> out(nt + 1, 0);
  for (size_t t = 0; t < nt; ++t) {  // every mask (and weight, with zero_weights) is written below
    mask[t].unsafeGetTensorImpl()->bump_version();
    if (zero_weights) w[t].unsafeGetTensorImpl()->bump_version();
  }
  // drop entry i of tensor t: mask 0, and the weight 0 too with zero_weights
  auto drop = [&](size_t t, float* pm, int64_t i) {
    pm[i] = 0.0f;
    if (zero_weights) {
      if (w[t].scalar_type() == at::kFloat) w[t].data_ptr<float>()[i] = 0.0f;
      else w[t].data_ptr<double>()[i] = 0.0;
    }
  };
  if (equal == total - gt) {  // every entry equal to v is kept: keep = score >= v, tensors in parallel
    at::parallel_for(0, static_cast<int64_t>(nt), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        int64_t* pi = idx[t].data_ptr<int64_t>();
        float* pm = mask[t].data_ptr<float>();
        const float* st = score.get() + offset[t];
        int64_t kept = 0;
        for (int64_t j = 0, m = idx[t].numel(); j < m; ++j) {
          if (st[j] >= v) pi[kept++] = pi[j];
          else drop(t, pm, pi[j]);
        }
        out[t + 1] = kept;
      }
    });
    return out;
  }
  int64_t ties_left = total - gt;  // some entries equal to v are dropped: lowest position first
  for (size_t t = 0; t < nt; ++t) {
    int64_t* pi = idx[t].data_ptr<int64_t>();
    float* pm = mask[t].data_ptr<float>();
    const float* st = score.get() + offset[t];
    int64_t kept = 0;
    for (int64_t j = 0, m = idx[t].numel(); j < m; ++j) {
      const bool keep = st[j] > v || (st[j] == v && ties_left-- > 0);
      if (keep) pi[kept++] = pi[j];
      else drop(t, pm, pi[j]);
    }
    out[t + 1] = kept;
  }
  return out;
}

// Straight-through score gradient dL/dS = g * w (* sign(s) for the |S| key), one pass, with s's sizes and
// strides; written over g when `overwrite`. None (undefined) for unfit tensors: the caller uses the torch ops.
torch::Tensor score_grad(const torch::Tensor& g, const torch::Tensor& w, const torch::Tensor& s, bool signed_key,
                         bool overwrite = false) {
  if (!fits_like(s, s) || !fits_like(g, s) || !fits_like(w, s)) return torch::Tensor();
  const float* pw = w.data_ptr<float>();
  const float* ps = s.data_ptr<float>();
  if (overwrite) {
    float* pg = g.data_ptr<float>();
    at::parallel_for(0, s.numel(), 1 << 15,
                     [&](int64_t b, int64_t e) { score_grad_inplace_loop(pg, pw, ps, b, e, signed_key); });
    return g;
  }
  auto out = torch::empty_like(s);  // the same strides as s
  const float* pg = g.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, s.numel(), 1 << 15,
                   [&](int64_t b, int64_t e) { score_grad_loop(pg, pw, ps, po, b, e, signed_key); });
  return out;
}

// W * m with the straight-through gradient to the scores, as a C++ autograd node (no Python on the step's
// path): forward returns `product`, the weight * mask the caller keeps (MaskedWeight below); backward
// gives dL/dW = g * m (when the weight requires grad) and dL/dS = g * W (* sign(S)), one pass on the CPU.
struct ScoreSTE : public torch::autograd::Function<ScoreSTE> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& weight,
                               const torch::Tensor& scores, const torch::Tensor& mask, const torch::Tensor& product,
                               bool signed_key) {
    ctx->save_for_backward({weight, scores, mask});
    ctx->saved_data["signed"] = signed_key;
    return product;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& g = grads[0];
    const torch::Tensor &w = saved[0], &s = saved[1], &m = saved[2];
    const bool signed_key = ctx->saved_data["signed"].toBool();
    torch::Tensor gw, gs;
    if (ctx->needs_input_grad(0)) gw = g * m;
    if (ctx->needs_input_grad(1)) {
      // The incoming gradient is overwritten when nothing else can see it: two references (the engine's list
      // and this function's copy of it), one tensor on its storage, no graph of its own (create_graph).
      const bool overwrite = g.use_count() == 2 && g.storage().use_count() == 2 && !g.requires_grad();
      gs = score_grad(g, w, s, signed_key, overwrite);
      if (!gs.defined()) {
        gs = g * w;
        if (signed_key) gs.mul_(torch::sign(s));
      }
    }
    return {gw, gs, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The band of ticketlab.selection.BandSelector: centre t (NaN before the first selection), half-width w, and the
// calls answered inside the band (hits) or by a full selection (misses). Shared by the Python selector and
// the fused forward below, so either can take the next step.
struct BandState {
  double t = NAN;
  double w = 0.0;
  int64_t hits = 0;
  int64_t misses = 0;

  // Track the threshold after a hit; keep the band at about 1/2048 to 1/256 of the entries (the same rule as
  // BandSelector._update).
  void update(double v, int64_t in_band, int64_t n) {
    const double moved = std::fabs(v - t);
    t = v;
    if (in_band > n / 256) w *= 0.5;
    else if (in_band < n / 2048) w *= 2.0;
    w = std::max({w, 2.0 * moved, std::fabs(v) * 1e-6, 1e-30});
  }
};

int64_t version_of(const torch::Tensor& t) { return static_cast<int64_t>(t._version()); }
int64_t address_of(const torch::Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

// The step of one ScoreMask on the CPU in one call: if the scores changed since the last call, select the
// exact top-k inside the band (band_select; small tensors: full_select), updating the mask and a kept
// product = weight * mask in place (only the entries that change when the product is current), then return
// the masked weight with the straight-through gradient (ScoreSTE). Returns None when the Python path must
// take this step: unfit tensors, no band yet, the band missed, NaN scores.
// Writes to the mask and the product bump their version counters, so an autograd graph that saved the old
// values fails loudly instead of using the new ones.
struct MaskedWeight {
  bool absval = true;
  int64_t scores_at = 0, scores_version = -1;  // the scores behind the mask
  int64_t k_at = -1;                           // the kept count of the selection behind the mask
  int64_t weight_at = 0, weight_version = -1, mask_at = 0, mask_version = -1;  // behind the product
  torch::Tensor product;

  explicit MaskedWeight(bool absval_) : absval(absval_) {}

  bool product_current(const torch::Tensor& weight, const torch::Tensor& mask) const {
    return product.defined() && weight_at == address_of(weight) && weight_version == version_of(weight) &&
           mask_at == address_of(mask) && mask_version == version_of(mask);
  }

  bool selected(const torch::Tensor& scores, int64_t k) const {
    return scores_at == address_of(scores) && scores_version == version_of(scores) && k == k_at;
  }

  // The mask was just selected for these scores elsewhere (the Python path): later calls keep it.
  void adopt(const torch::Tensor& scores, int64_t k) {
    scores_at = address_of(scores);
    scores_version = version_of(scores);
    k_at = k;
  }

  void forget() {
    scores_version = -1;
    weight_version = -1;
  }

  // product = weight * mask over the whole tensor, and remember what it was made of.
  void remake_product(const torch::Tensor& weight, const torch::Tensor& mask) {
    const float* w = weight.data_ptr<float>();
    const float* m = mask.data_ptr<float>();
    float* o = product.data_ptr<float>();
    at::parallel_for(0, weight.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) o[i] = w[i] * m[i];
    });
    remember_product(weight, mask);
  }

  void remember_product(const torch::Tensor& weight, const torch::Tensor& mask) {
    weight_at = address_of(weight);
    weight_version = version_of(weight);
    mask_at = address_of(mask);
    mask_version = version_of(mask);
  }

  c10::optional<torch::Tensor> forward(BandState& band, const torch::Tensor& weight, const torch::Tensor& scores,
                                       torch::Tensor mask, int64_t k) {
    const int64_t n = scores.numel();
    if (!fits_like(scores, scores) || !fits_like(weight, scores) || !fits_like(mask, scores) || k < 1 || k >= n ||
        (n < 4096 && !scores.is_contiguous())) {
      return c10::nullopt;
    }
    const bool current = product_current(weight, mask);
    const bool same_scores = selected(scores, k);
    if (current && same_scores) return ScoreSTE::apply(weight, scores, mask, product, absval);
    if (!same_scores && n >= 4096 && !(band.w > 0.0 && std::isfinite(band.t))) return c10::nullopt;
    if (!current) product = torch::empty_like(weight);  // weight's strides (contiguous or channels-last)
    product.unsafeGetTensorImpl()->bump_version();
    if (same_scores) {  // the mask stands (it was set or loaded since): only the product is redone
      remake_product(weight, mask);
      return ScoreSTE::apply(weight, scores, mask, product, absval);
    }
    mask.unsafeGetTensorImpl()->bump_version();
    if (n < 4096) {
      if (full_select(scores, absval, k, mask)[0] != 0.0) {
        forget();
        return c10::nullopt;
      }
      remake_product(weight, mask);
    } else {
      const auto r = band_select(scores, absval, band.t - band.w, band.t + band.w, k, mask, weight, product, current);
      if (r[0] != 0.0) {
        forget();
        return c10::nullopt;
      }
      band.update(r[3], static_cast<int64_t>(r[2]), n);
      band.hits += 1;
      remember_product(weight, mask);
    }
    adopt(scores, k);
    return ScoreSTE::apply(weight, scores, mask, product, absval);
  }
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("band_select", &band_select, "exact top-k inside a band around the last threshold");
  mod.def("shrink_kept", &shrink_kept, "one global top-k round among the kept entries");
  mod.def("full_select", &full_select, "exact top-k by nth_element");
  mod.def(
      "score_grad",
      [](const torch::Tensor& g, const torch::Tensor& w, const torch::Tensor& s, bool signed_key) {
        return score_grad(g, w, s, signed_key);
      },
      "straight-through score gradient");
  mod.def("use_isa", &use_isa, "pick the incremental pass: avx512, avx2, default or best");
  py::class_<BandState>(mod, "BandState")
      .def(py::init<>())
      .def_readwrite("t", &BandState::t)
      .def_readwrite("w", &BandState::w)
      .def_readwrite("hits", &BandState::hits)
      .def_readwrite("misses", &BandState::misses)
      .def(py::pickle([](const BandState& b) { return py::make_tuple(b.t, b.w, b.hits, b.misses); },
                      [](py::tuple s) {
                        BandState b;
                        b.t = s[0].cast<double>();
                        b.w = s[1].cast<double>();
                        b.hits = s[2].cast<int64_t>();
                        b.misses = s[3].cast<int64_t>();
                        return b;
                      }));
  py::class_<MaskedWeight>(mod, "MaskedWeight")
      .def(py::init<bool>())
      .def("forward", &MaskedWeight::forward)
      .def("selected", &MaskedWeight::selected)
      .def("adopt", &MaskedWeight::adopt)
      .def("forget", &MaskedWeight::forget)
      .def(py::pickle([](const MaskedWeight& m) { return py::make_tuple(m.absval); },  // copies start afresh
                      [](py::tuple s) { return MaskedWeight(s[0].cast<bool>()); }));
}
