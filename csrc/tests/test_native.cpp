// Native tests without Python, built with AddressSanitizer + UndefinedBehaviorSanitizer by
// scripts/sanitize.sh: the matcher and rule assignment against brute-force references, the
// step kernels (every instruction-set build, every dtype, sizes around chunk edges) against
// straightforward loops, bit for bit in fp32/fp64, the same bits for every thread count, and
// switching instruction sets while another thread steps.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../chunking.h"
#include "../matcher.h"
#include "../partition.h"
#include "../prepare.h"
#include "../rules.h"
#include "../step_cpu.h"

namespace {

int failures = 0;

#define CHECK(cond, ...)                       \
  do {                                         \
    if (!(cond)) {                             \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);       \
      std::fprintf(stderr, "\n");              \
      ++failures;                              \
    }                                          \
  } while (0)

std::mt19937_64 rng(12345);

std::string random_text(std::size_t max_len) {
  static const std::vector<std::string> alphabet = {"a", "b", ".", "0", "1", "_", "\xc3\xa9", "\xcf\x83",
                                                    "\xe5\x9d\x97", "\xf0\x9f\x98\x80"};
  std::string s;
  const std::size_t len = rng() % (max_len + 1);
  for (std::size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
  return s;
}

int32_t brute_match(const std::string& name, const std::vector<std::string>& keys) {
  std::vector<int32_t> order(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const auto la = fastopt::utf8_length(keys[static_cast<std::size_t>(a)]);
    const auto lb = fastopt::utf8_length(keys[static_cast<std::size_t>(b)]);
    return la != lb ? la > lb : keys[static_cast<std::size_t>(a)] < keys[static_cast<std::size_t>(b)];
  });
  for (int32_t k : order)
    if (name.find(keys[static_cast<std::size_t>(k)]) != std::string::npos) return k;
  return -1;
}

void test_matcher() {
  for (int round = 0; round < 3000; ++round) {
    std::vector<std::string> keys;
    const std::size_t n_keys = rng() % 8;
    for (std::size_t i = 0; i < n_keys; ++i) {
      std::string k = random_text(5);
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
    const fastopt::KeyMatcher matcher(keys);
    for (int j = 0; j < 10; ++j) {
      const std::string name = random_text(20);
      CHECK(matcher.best_match(name) == brute_match(name, keys), "match of '%s'", name.c_str());
    }
  }
}

void test_assign() {
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::string> keys = {"a", "b.", ""};
    keys.resize(rng() % 4);
    std::vector<std::string> names;
    std::vector<uint32_t> flags;
    const std::size_t n = rng() % 50;
    for (std::size_t i = 0; i < n; ++i) {
      names.push_back(random_text(8));
      flags.push_back(static_cast<uint32_t>(rng() % 512));
    }
    const auto config = static_cast<uint32_t>(rng() % 1024);
    const fastopt::Assignment a = fastopt::assign(names, flags.data(), keys, config);
    CHECK(a.ids.size() == n, "ids size");
    std::vector<fastopt::Signature> seen;
    for (std::size_t i = 0; i < n; ++i) {
      const bool plain = !(flags[i] & (fastopt::kFrozen | fastopt::kDuplicate));
      const fastopt::Signature want = fastopt::decide(plain ? brute_match(names[i], keys) : -1, flags[i], config);
      auto it = std::find(seen.begin(), seen.end(), want);
      if (it == seen.end()) {
        seen.push_back(want);
        it = seen.end() - 1;
      }
      CHECK(a.ids[i] == it - seen.begin(), "signature id of parameter %zu", i);
    }
    CHECK(a.table.size() == seen.size(), "table size");
  }
}

// Reference AdamW (fp32/fp64 storage): the same operation order as adam_math.h.
template <typename T>
void ref_adam(std::vector<T>& p, std::vector<T>& g, std::vector<T>& m, std::vector<T>& v, double lr, double b1,
              double b2, double eps, double wd, double step) {
  const T neg_step = static_cast<T>(-(lr / (1.0 - std::pow(b1, step))));
  const T bc2s = static_cast<T>(std::sqrt(1.0 - std::pow(b2, step)));
  const T w = static_cast<T>(1.0 - b1), decay = static_cast<T>(1.0 - lr * wd);
  const T beta2 = static_cast<T>(b2), omb2 = static_cast<T>(1.0 - b2), e = static_cast<T>(eps);
  for (std::size_t i = 0; i < p.size(); ++i) {
    T gi = g[i];
    T pi = p[i] * decay;
    T mi = std::fma(w, gi - m[i], m[i]);
    T vi = v[i] * beta2;
    vi = std::fma(omb2 * gi, gi, vi);
    const T denom = std::sqrt(vi) / bc2s + e;
    p[i] = pi + (neg_step * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

// Sizes around the vector widths and the chunk size.
const std::vector<int64_t> kAdamSizes = {0, 1, 15, 16, 17, 32767, 32768, 32769, 70001};

// More tensors than a step prepares on the calling thread alone (the team prepares them in
// segments), small and of many sizes, one of several chunks.
std::vector<int64_t> many_sizes() {
  std::vector<int64_t> sizes(2000);
  for (std::size_t t = 0; t < sizes.size(); ++t) sizes[t] = static_cast<int64_t>(t % 37);
  sizes[1001] = 70001;
  return sizes;
}

template <typename T>
void test_adam_dtype(int32_t code, const std::vector<int64_t>& sizes = kAdamSizes) {
  const auto n = static_cast<int64_t>(sizes.size());
  std::vector<std::vector<T>> p(sizes.size()), g(sizes.size()), m(sizes.size()), v(sizes.size());
  std::vector<std::vector<T>> rp, rg, rm, rv;
  std::normal_distribution<double> normal;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    for (auto* vec : {&p[t], &g[t], &m[t], &v[t]}) vec->resize(static_cast<std::size_t>(sizes[t]));
    for (int64_t i = 0; i < sizes[t]; ++i) {
      p[t][static_cast<std::size_t>(i)] = static_cast<T>(normal(rng));
      g[t][static_cast<std::size_t>(i)] = static_cast<T>(normal(rng));
    }
  }
  rp = p, rg = g, rm = m, rv = v;
  std::vector<float> steps(sizes.size(), 0.0f);
  std::vector<uint64_t> ptrs(sizes.size() * fastopt::kAdamPtrs, 0);
  std::vector<double> hyper(sizes.size() * fastopt::kAdamHypers);
  std::vector<int32_t> dtypes(sizes.size(), code), flags(sizes.size(), fastopt::kDecoupledWd);
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    uint64_t* row = &ptrs[t * fastopt::kAdamPtrs];
    row[0] = reinterpret_cast<uintptr_t>(p[t].data());
    row[1] = reinterpret_cast<uintptr_t>(g[t].data());
    row[2] = reinterpret_cast<uintptr_t>(m[t].data());
    row[3] = reinterpret_cast<uintptr_t>(v[t].data());
    row[5] = reinterpret_cast<uintptr_t>(&steps[t]);
    double* h = &hyper[t * fastopt::kAdamHypers];
    h[0] = 1e-2 * static_cast<double>(t + 1);
    h[1] = 0.9;
    h[2] = 0.999;
    h[3] = 1e-8;
    h[4] = 0.05;
  }
  for (int step = 1; step <= 3; ++step) {
    fastopt::adam_step_cpu(n, ptrs.data(), sizes.data(), dtypes.data(), flags.data(), hyper.data(), 0.0, 1.0);
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const double* h = &hyper[t * fastopt::kAdamHypers];
      ref_adam(rp[t], rg[t], rm[t], rv[t], h[0], h[1], h[2], h[3], h[4], step);
      CHECK(steps[t] == static_cast<float>(step), "step counter of tensor %zu", t);
      CHECK(p[t].empty() || std::memcmp(p[t].data(), rp[t].data(), p[t].size() * sizeof(T)) == 0,
            "adam %s tensor %zu (size %lld) differs from the reference", fastopt::cpu_isa(), t,
            static_cast<long long>(sizes[t]));
    }
  }
}

// Sizes that cross a chunk boundary and include an empty tensor.
const std::vector<int64_t> kOddSizes = {3, 32769, 0, 100};

// `per_tensor` zeroed buffers of dtype `code` for every size, and their pointers (0 when empty),
// tensor by tensor.
struct Buffers {
  std::vector<std::vector<unsigned char>> bufs;
  std::vector<uint64_t> ptrs;
};

Buffers zeroed(int32_t code, const std::vector<int64_t>& sizes, int per_tensor) {
  const std::size_t elem = code == 1 ? 8 : code == 0 ? 4 : 2;
  Buffers out;
  out.bufs.reserve(sizes.size() * static_cast<std::size_t>(per_tensor));
  for (int64_t s : sizes)
    for (int k = 0; k < per_tensor; ++k) {
      out.bufs.emplace_back(static_cast<std::size_t>(s) * elem, 0);
      out.ptrs.push_back(s ? reinterpret_cast<uintptr_t>(out.bufs.back().data()) : 0);
    }
  return out;
}

void test_sgd_all_dtypes() {
  // Memory safety across dtypes and modes: 16-bit storage, momentum + nesterov + grad scale.
  for (int32_t code = 0; code < 4; ++code) {
    const std::vector<int64_t>& sizes = kOddSizes;
    Buffers b = zeroed(code, sizes, 3);
    std::vector<uint64_t>& ptrs = b.ptrs;
    std::vector<double> hyper;
    for (std::size_t t = 0; t < sizes.size(); ++t) hyper.insert(hyper.end(), {0.1, 0.9, 0.0, 1e-4});
    std::vector<int32_t> dtypes(sizes.size(), code), flags(sizes.size(), fastopt::kNesterov | fastopt::kFirstStep);
    fastopt::sgd_step_cpu(static_cast<int64_t>(sizes.size()), ptrs.data(), sizes.data(), dtypes.data(),
                          flags.data(), hyper.data(), 4.0, 0.5);
  }
}

void test_grad_norm_all_dtypes() {
  // Every dtype, chunk boundaries, empty tensors; the 2-norm of ones is sqrt(count), the
  // inf-norm 1, and an inf element is reported.
  for (int32_t code = 0; code < 4; ++code) {
    const std::vector<int64_t>& sizes = kOddSizes;
    Buffers b = zeroed(code, sizes, 1);
    int64_t count = 0;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      unsigned char* d = b.bufs[t].data();
      for (int64_t i = 0; i < sizes[t]; ++i) {  // the value 1 in each storage type
        if (code == 0) reinterpret_cast<float*>(d)[i] = 1.0f;
        if (code == 1) reinterpret_cast<double*>(d)[i] = 1.0;
        if (code == 2) reinterpret_cast<uint16_t*>(d)[i] = 0x3f80;
        if (code == 3) reinterpret_cast<uint16_t*>(d)[i] = 0x3c00;
      }
      count += sizes[t];
    }
    const std::vector<int32_t> dtypes(sizes.size(), code);
    const auto n = static_cast<int64_t>(sizes.size());
    const fastopt::GradNorm l2 = fastopt::grad_norm_cpu(n, b.ptrs.data(), sizes.data(), dtypes.data(), false);
    const fastopt::GradNorm inf = fastopt::grad_norm_cpu(n, b.ptrs.data(), sizes.data(), dtypes.data(), true);
    CHECK(l2.norm == std::sqrt(static_cast<double>(count)) && !l2.nonfinite, "2-norm, dtype %d", code);
    CHECK(inf.norm == 1.0 && !inf.nonfinite, "inf-norm, dtype %d", code);
    if (code == 0) {
      reinterpret_cast<float*>(b.bufs[1].data())[32768] = INFINITY;
      CHECK(fastopt::grad_norm_cpu(n, b.ptrs.data(), sizes.data(), dtypes.data(), false).nonfinite,
            "an inf gradient is reported");
    }
  }
}

void test_rejects_bad_input() {
  std::vector<uint64_t> ptrs(fastopt::kSgdPtrs, 0);
  const int64_t numel = 4;
  const int32_t dtype = 0, flag = 0;
  const double hyper[fastopt::kSgdHypers] = {0.1, 0, 0, 0};
  bool threw = false;
  try {
    fastopt::sgd_step_cpu(1, ptrs.data(), &numel, &dtype, &flag, hyper, 0.0, 1.0);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "null pointers must be rejected");
}

// An AdamW step over fp32 tensors of sizes around chunk edges, every run from the same start.
struct AdamCase {
  std::vector<int64_t> sizes{3, 32769, 0, 100000};
  std::vector<std::vector<float>> p0, g, p, m, v;
  std::vector<float> steps;
  std::vector<uint64_t> ptrs, grad_ptrs;
  std::vector<double> hyper;
  std::vector<int32_t> dtypes, flags;

  AdamCase() : p0(sizes.size()), g(sizes.size()), p(sizes.size()), m(sizes.size()), v(sizes.size()),
               steps(sizes.size()), ptrs(sizes.size() * fastopt::kAdamPtrs, 0), grad_ptrs(sizes.size(), 0),
               dtypes(sizes.size(), 0), flags(sizes.size(), fastopt::kDecoupledWd) {
    std::normal_distribution<float> normal;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const auto size = static_cast<std::size_t>(sizes[t]);
      for (auto* vec : {&p0[t], &g[t], &p[t], &m[t], &v[t]}) vec->resize(size);
      for (std::size_t i = 0; i < size; ++i) {
        p0[t][i] = normal(rng);
        g[t][i] = normal(rng);
      }
      uint64_t* row = &ptrs[t * fastopt::kAdamPtrs];
      row[fastopt::kAdamParam] = size ? reinterpret_cast<uintptr_t>(p[t].data()) : 0;
      row[fastopt::kAdamGrad] = grad_ptrs[t] = size ? reinterpret_cast<uintptr_t>(g[t].data()) : 0;
      row[fastopt::kAdamExpAvg] = size ? reinterpret_cast<uintptr_t>(m[t].data()) : 0;
      row[fastopt::kAdamExpAvgSq] = size ? reinterpret_cast<uintptr_t>(v[t].data()) : 0;
      row[fastopt::kAdamStep] = reinterpret_cast<uintptr_t>(&steps[t]);
      hyper.insert(hyper.end(), {1e-2, 0.9, 0.999, 1e-8, 0.1});
    }
  }

  // The parameters after one step from the start on `threads` threads, and the gradients' 2-norm.
  std::pair<std::vector<std::vector<float>>, double> run(int threads) {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      p[t] = p0[t];
      std::fill(m[t].begin(), m[t].end(), 0.0f);
      std::fill(v[t].begin(), v[t].end(), 0.0f);
      steps[t] = 0.0f;
    }
    const auto n = static_cast<int64_t>(sizes.size());
    fastopt::adam_step_cpu(n, ptrs.data(), sizes.data(), dtypes.data(), flags.data(), hyper.data(), 0.0, 0.5,
                           threads);
    const double norm = fastopt::grad_norm_cpu(n, grad_ptrs.data(), sizes.data(), dtypes.data(), false, threads).norm;
    return {p, norm};
  }
};

#ifdef _OPENMP
constexpr bool kOpenMP = true;
#else
constexpr bool kOpenMP = false;
#endif

void test_thread_counts() {
  // Every thread count gives the same bits; each call runs on the threads it asks for (1
  // without OpenMP), at most one per chunk (the case has 1 + 2 + 0 + 4 = 7 chunks).
  AdamCase c;
  const auto reference = c.run(1);
  CHECK(fastopt::last_num_threads() == 1, "a 1-thread call ran on %d", fastopt::last_num_threads());
  for (int threads : {2, 3, 7, 16}) {
    const auto got = c.run(threads);
    const int want = kOpenMP ? std::min(threads, 7) : 1;
    CHECK(fastopt::last_num_threads() == want, "asked for %d threads, ran on %d", threads,
          fastopt::last_num_threads());
    CHECK(got.second == reference.second, "norm on %d threads: %.17g, on 1: %.17g", threads, got.second,
          reference.second);
    for (std::size_t t = 0; t < c.sizes.size(); ++t)
      CHECK(got.first[t] == reference.first[t], "adam tensor %zu differs on %d threads", t, threads);
  }
  c.run(0);  // OpenMP's default, still at most one per chunk
  CHECK(fastopt::last_num_threads() >= 1 && fastopt::last_num_threads() <= 7, "default team of %d",
        fastopt::last_num_threads());
  std::vector<float> one(100, 1.0f);
  const uint64_t ptr = reinterpret_cast<uintptr_t>(one.data());
  const int64_t numel = 100;
  const int32_t dtype = 0;
  fastopt::grad_norm_cpu(1, &ptr, &numel, &dtype, false, 4);
  CHECK(fastopt::last_num_threads() == 1, "one chunk ran on %d threads", fastopt::last_num_threads());
}

// The threads of a chunk loop take contiguous runs of chunks of about equal cost, also where
// the short chunks gather in one part of the list (a detector's norms and biases): each run
// within one chunk's cost of an equal share, every chunk taken once, in order; equal chunks
// split as evenly by count.
void test_partition() {
  std::vector<int64_t> sizes(600, 100);
  sizes.insert(sizes.end(), 40, 3 * fastopt::kChunkElems + 5);
  sizes.insert(sizes.end(), 3, 0);
  const std::vector<fastopt::Chunk> chunks = fastopt::make_chunks(sizes.data(), static_cast<int64_t>(sizes.size()));
  const auto n = static_cast<int64_t>(chunks.size());
  int64_t total = 0, largest = 0;
  for (const auto& c : chunks) {
    const int64_t cost = c.end - c.begin + fastopt::kChunkStartCost;
    total += cost;
    largest = std::max(largest, cost);
    CHECK(c.upto == total, "chunk %lld: cost so far %lld, recorded %lld", static_cast<long long>(&c - chunks.data()),
          static_cast<long long>(total), static_cast<long long>(c.upto));
  }
  for (int team : {1, 2, 3, 4, 7}) {
    int64_t prev = 0;
    for (int t = 0; t < team; ++t) {
      const int64_t lo = fastopt::first_chunk_of(chunks.data(), n, t, team);
      const int64_t hi = fastopt::first_chunk_of(chunks.data(), n, t + 1, team);
      CHECK(lo == prev && hi >= lo, "team %d: thread %d takes [%lld, %lld) after %lld", team, t,
            static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(prev));
      const int64_t cost = (hi > 0 ? chunks[static_cast<std::size_t>(hi - 1)].upto : 0) -
                           (lo > 0 ? chunks[static_cast<std::size_t>(lo - 1)].upto : 0);
      CHECK(std::llabs(cost * team - total) <= largest * team, "team %d: thread %d's cost %lld of %lld", team, t,
            static_cast<long long>(cost), static_cast<long long>(total));
      prev = hi;
    }
    CHECK(prev == n, "team %d: the runs end at %lld of %lld chunks", team, static_cast<long long>(prev),
          static_cast<long long>(n));
  }
  // a step's preparation on a team of 3 lays the same chunks and costs, segment after segment
  struct Row {
    int64_t i;
  };
  std::vector<int64_t> many(3 * fastopt::kTeamPrepare);
  for (std::size_t i = 0; i < many.size(); ++i) many[i] = i < 200 ? 70001 : static_cast<int64_t>(i % 37);
  const auto laid = fastopt::make_chunks(many.data(), static_cast<int64_t>(many.size()));
  const auto prep = fastopt::prepare_step<Row, int>(
      static_cast<int64_t>(many.size()), many.data(), 3, [](int64_t) {},
      [](int64_t lo, int64_t hi, std::deque<int>&, Row* rows) {
        for (int64_t i = lo; i < hi; ++i) rows[i].i = i;
      });
  CHECK(prep.n_chunks == static_cast<int64_t>(laid.size()), "the team laid %lld chunks, make_chunks %zu",
        static_cast<long long>(prep.n_chunks), laid.size());
  for (std::size_t c = 0; c < laid.size() && static_cast<int64_t>(c) < prep.n_chunks; ++c) {
    const fastopt::Chunk& a = prep.chunks[c];
    const fastopt::Chunk& b = laid[c];
    if (a.tensor != b.tensor || a.begin != b.begin || a.end != b.end || a.upto != b.upto) {
      CHECK(false, "chunk %zu: the team's (%lld, %lld, %lld, cost %lld), make_chunks' (%lld, %lld, %lld, cost %lld)", c,
            static_cast<long long>(a.tensor), static_cast<long long>(a.begin), static_cast<long long>(a.end),
            static_cast<long long>(a.upto), static_cast<long long>(b.tensor), static_cast<long long>(b.begin),
            static_cast<long long>(b.end), static_cast<long long>(b.upto));
      break;
    }
  }
  const std::vector<int64_t> equal(1000, 77);
  const auto even = fastopt::make_chunks(equal.data(), 1000);
  for (int team : {2, 3, 8})
    for (int t = 0; t <= team; ++t) {
      const int64_t first = fastopt::first_chunk_of(even.data(), 1000, t, team);
      CHECK(std::llabs(first - 1000LL * t / team) <= 1, "equal chunks, team %d: thread %d starts at %lld", team, t,
            static_cast<long long>(first));
    }
}

void test_switch_isa_while_stepping() {
  // One thread steps on one thread each call while another switches instruction sets: each
  // call runs on one whole build, and every build gives the same bits.
  std::vector<std::string> isas;
  const std::string current = fastopt::cpu_isa();
  for (const char* isa : {"baseline", "avx2", "avx512"}) {
    try {
      fastopt::set_cpu_isa(isa);
      isas.emplace_back(isa);
    } catch (const std::invalid_argument&) {
    }
  }
  fastopt::set_cpu_isa(current);
  if (isas.size() < 2) {
    std::printf("skipping the switch test (one instruction set here)\n");
    return;
  }
  AdamCase c;
  const auto reference = c.run(1);
  std::atomic<bool> done{false};
  std::atomic<int> wrong{0};
  std::thread stepper([&] {
    for (int i = 0; i < 100; ++i)
      if (c.run(1) != reference) wrong.fetch_add(1);
    done.store(true);
  });
  long switches = 0;
  while (!done.load()) fastopt::set_cpu_isa(isas[static_cast<std::size_t>(switches++) % isas.size()]);
  stepper.join();
  fastopt::set_cpu_isa(current);
  CHECK(wrong.load() == 0, "%d of 100 steps differ while switching", wrong.load());
  CHECK(switches > 1, "no switch happened while stepping");
}

void test_kernels_every_isa() {
  for (const char* isa : {"baseline", "avx2", "avx512"}) {
    try {
      fastopt::set_cpu_isa(isa);
    } catch (const std::invalid_argument&) {
      std::printf("skipping %s (not supported here)\n", isa);
      continue;
    }
    test_adam_dtype<float>(0);
    test_adam_dtype<double>(1);
    test_adam_dtype<float>(0, many_sizes());
    test_sgd_all_dtypes();
    test_grad_norm_all_dtypes();
  }
}

}  // namespace

// Runs every test, or only those named on the command line (e.g. `switch_isa` alone under
// ThreadSanitizer).
int main(int argc, char** argv) {
  const std::vector<std::pair<std::string, void (*)()>> tests = {
      {"matcher", test_matcher}, {"assign", test_assign}, {"kernels", test_kernels_every_isa},
      {"bad_input", test_rejects_bad_input}, {"threads", test_thread_counts},
      {"partition", test_partition},
      {"switch_isa", test_switch_isa_while_stepping}};
  const std::vector<std::string> wanted(argv + 1, argv + argc);
  for (const auto& [name, test] : tests)
    if (wanted.empty() || std::find(wanted.begin(), wanted.end(), name) != wanted.end()) test();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
