// Fused CPU kernels of the strong-ticket hot path, loaded by ticketlab/kernels.py
// (torch.utils.cpp_extension, compiled on first use). Each replaces several elementwise torch passes
// with one; the results are bit-identical to the torch formulation in ticketlab/selection.py and
// ticketlab/masks.py (same comparisons, same products), which the tests check.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
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

constexpr double kUnfit = 3.0;

// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the CPU
// (GCC function multi-versioning); other targets get one baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TL_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TL_MULTIVERSION
#endif

// One block of the band pass: mask (and product) values for key > hi, the in-band flags, and counts.
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

TL_MULTIVERSION void score_grad_loop(const float* pg, const float* pw, const float* ps, float* po, int64_t b,
                                     int64_t e, bool signed_key) {
  if (signed_key) {
    for (int64_t i = b; i < e; ++i) {
      const float sg = static_cast<float>((ps[i] > 0.0f) - (ps[i] < 0.0f));
      po[i] = (pg[i] * pw[i]) * sg;
    }
  } else {
    for (int64_t i = b; i < e; ++i) po[i] = pg[i] * pw[i];
  }
}

struct Chunk {
  std::vector<std::pair<float, int64_t>> band;
  int64_t above = 0;
  int64_t nan = 0;
};

}  // namespace

// Exact top-k of key(s) (|s| or s) written into `mask` (float 0/1, numel of s) when the k-th largest
// key lies in the band [lo, hi]. One pass writes 1 for key > hi and 0 elsewhere and collects the band
// entries; the (k - #above)-th largest band entry is the threshold v; band entries above v are kept,
// and entries equal to v lowest index first, so exactly k entries are kept.
// With a non-empty `weight`, the same pass writes product = weight * mask (the forward's masked weight).
// Returns {status, n_above, n_band, v}: status 0 = done; 1 = the band does not hold the k-th largest
// (mask is left partial; select again over everything); 2 = NaN keys (no exact top-k exists);
// 3 = a tensor is not a contiguous float32 CPU tensor of the scores' size, or k is not in [1, n).
std::vector<double> band_select(const torch::Tensor& s, bool absval, double lo, double hi, int64_t k,
                                torch::Tensor mask, const torch::Tensor& weight, torch::Tensor product) {
  const int64_t n = s.numel();
  const bool fused = weight.defined() && weight.numel() > 0;
  if (!fits(s, n) || !fits(mask, n) || (fused && (!fits(weight, n) || !fits(product, n))) || k < 1 || k >= n) {
    return {kUnfit, 0.0, 0.0, NAN};
  }
  const float* p = s.data_ptr<float>();
  float* m = mask.data_ptr<float>();
  const float* w = fused ? weight.data_ptr<float>() : nullptr;
  float* o = fused ? product.data_ptr<float>() : nullptr;
  const float flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / (4 * kBlock)));
  std::vector<Chunk> chunks(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      Chunk& ch = chunks[c];
      const int64_t b = n * c / nchunks, e = n * (c + 1) / nchunks;
      ch.band.reserve(static_cast<size_t>((e - b) / 16 + 16));
      alignas(64) uint8_t flag[kBlock + 8];
      for (int64_t i0 = b; i0 < e; i0 += kBlock) {
        const int64_t len = std::min(e - i0, kBlock);
        const float* pb = p + i0;
        float* mb = m + i0;
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
  std::vector<int64_t> ties;
  auto keep = [&](int64_t i) {
    m[i] = 1.0f;
    if (fused) o[i] = w[i] * 1.0f;
  };
  for (const auto& e : band) {
    if (e.first > v) {
      keep(e.second);
      ++gt;
    } else if (e.first == v) {
      ties.push_back(e.second);
    }
  }
  std::sort(ties.begin(), ties.end());
  for (int64_t j = 0; j < need - gt; ++j) keep(ties[j]);
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
// lowest position first (tensor order, then index); the kernel zeroes mask[t] at the dropped entries and
// moves the kept indices to the front of idx[t].
// Returns {status, kept_0, kept_1, ...}: status 0 = done; 1 = the threshold is 0 or there are fewer kept
// entries than `total` (the answer would involve pruned entries: select over everything instead, nothing
// written); 2 = NaN scores (nothing written); 3 = unfit tensors (nothing written).
template <typename T>
void gather_scores(const torch::Tensor& w, const torch::Tensor& g, const torch::Tensor& idx, float* out) {
  const T* pw = w.data_ptr<T>();
  const T* pg = g.data_ptr<T>();
  const int64_t* pi = idx.data_ptr<int64_t>();
  at::parallel_for(0, idx.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const int64_t i = pi[j];
      out[j] = static_cast<float>(std::abs(pg[i] * pw[i]));
    }
  });
}

std::vector<int64_t> shrink_kept(const std::vector<torch::Tensor>& w, const std::vector<torch::Tensor>& g,
                                 std::vector<torch::Tensor> idx, std::vector<torch::Tensor> mask, int64_t total) {
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
  std::vector<float> score(n_kept);
  for (size_t t = 0; t < nt; ++t) {
    if (w[t].scalar_type() == at::kFloat) gather_scores<float>(w[t], g[t], idx[t], score.data() + offset[t]);
    else gather_scores<double>(w[t], g[t], idx[t], score.data() + offset[t]);
  }
  // k-th largest by a radix pass on the top 16 bits (non-negative floats order like their bit patterns),
  // then nth_element inside the one bin that holds it; per-thread histograms
  constexpr int kBins = 1 << 16;
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_kept / (1 << 16)));
  std::vector<std::vector<int32_t>> hists(nchunks);
  std::vector<int64_t> nans(nchunks, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      auto& h = hists[c];
      h.assign(kBins, 0);
      int64_t nan = 0;
      for (int64_t j = n_kept * c / nchunks, e = n_kept * (c + 1) / nchunks; j < e; ++j) {
        uint32_t bits;
        std::memcpy(&bits, &score[j], 4);
        h[bits >> 16] += 1;
        nan += score[j] != score[j];
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
  std::vector<float> cand;
  cand.reserve(in_bin);
  for (int64_t j = 0; j < n_kept; ++j) {
    uint32_t bits;
    std::memcpy(&bits, &score[j], 4);
    if (static_cast<int>(bits >> 16) == bin) cand.push_back(score[j]);
  }
  const int64_t need = total - above;
  std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), std::greater<float>());
  const float v = cand[need - 1];
  if (!(v > 0.0f)) return {1};
  int64_t gt = above;  // every entry of a higher bin, and the candidates above v
  for (const float x : cand) gt += x > v;
  int64_t equal = 0;
  for (const float x : cand) equal += x == v;
  std::vector<int64_t> out(nt + 1, 0);
  if (equal == total - gt) {  // every entry equal to v is kept: keep = score >= v, tensors in parallel
    at::parallel_for(0, static_cast<int64_t>(nt), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        int64_t* pi = idx[t].data_ptr<int64_t>();
        float* pm = mask[t].data_ptr<float>();
        const float* st = score.data() + offset[t];
        int64_t kept = 0;
        for (int64_t j = 0, m = idx[t].numel(); j < m; ++j) {
          if (st[j] >= v) pi[kept++] = pi[j];
          else pm[pi[j]] = 0.0f;
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
    const float* st = score.data() + offset[t];
    int64_t kept = 0;
    for (int64_t j = 0, m = idx[t].numel(); j < m; ++j) {
      const bool keep = st[j] > v || (st[j] == v && ties_left-- > 0);
      if (keep) pi[kept++] = pi[j];
      else pm[pi[j]] = 0.0f;
    }
    out[t + 1] = kept;
  }
  return out;
}

// Straight-through score gradient dL/dS = g * w (* sign(s) for the |S| key), one pass; None for unfit tensors.
torch::Tensor score_grad(const torch::Tensor& g, const torch::Tensor& w, const torch::Tensor& s, bool signed_key) {
  const int64_t n = s.numel();
  if (!fits(g, n) || !fits(w, n) || !fits(s, n)) return torch::Tensor();  // None: use the torch ops
  auto out = torch::empty_like(s);
  const float* pg = g.data_ptr<float>();
  const float* pw = w.data_ptr<float>();
  const float* ps = s.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t e) { score_grad_loop(pg, pw, ps, po, b, e, signed_key); });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("band_select", &band_select, "exact top-k inside a band around the last threshold");
  mod.def("shrink_kept", &shrink_kept, "one global top-k round among the kept entries");
  mod.def("full_select", &full_select, "exact top-k by nth_element");
  mod.def("score_grad", &score_grad, "straight-through score gradient");
}
