// Balancing: the policies that choose a worker for a new connection.
#include "balance/balance_impl.hpp"

#include <algorithm>

namespace baton::balance {
namespace detail {
namespace {

// Rendezvous hashing: each (client address, worker index) pair gets a score and the highest
// wins, so a worker that leaves moves only its own clients.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
std::uint64_t address_key(const tcp::endpoint& ep) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  if (ep.address().is_v4()) {
    h = mix(h ^ ep.address().to_v4().to_uint());
  } else {
    for (auto b : ep.address().to_v6().to_bytes()) h = (h ^ b) * 0x100000001B3ull;
  }
  return h;
}

// The eligible worker with the best score (the highest, or with `lowest` the lowest), starting
// at `from` so that ties go round.
template <class Score>
worker_ptr best_of(const std::vector<worker_ptr>& workers, std::size_t from,
                   const std::function<bool(const worker_rec&)>& eligible, bool lowest, Score score) {
  worker_ptr best;
  std::uint64_t best_score = 0;
  const std::size_t n = workers.size();
  for (std::size_t k = 0; k < n; ++k) {
    auto& w = workers[(from + k) % n];
    if (!eligible(*w)) continue;
    const std::uint64_t sc = score(*w);
    if (!best || (lowest ? sc < best_score : sc > best_score)) {
      best = w;
      best_score = sc;
    }
  }
  return best;
}

}  // namespace

worker_ptr choose_worker(const dispatcher_options& o, const std::vector<worker_ptr>& workers, std::size_t& rr,
                         const pending_conn& p, const std::function<bool(const worker_rec&)>& eligible) {
  const std::size_t n = workers.size();
  if (n == 0) return nullptr;
  switch (o.policy) {
    case policy::least_connections: {
      // One clock reading per choice, not one per worker.
      const auto now = std::chrono::steady_clock::now();
      return best_of(workers, rr++, eligible, true,
                     [now](const worker_rec& w) { return w.expected(now) + w.info.in_flight; });
    }
    case policy::client_hash: {
      const std::uint64_t key = address_key(p.client);
      return best_of(workers, 0, eligible, false, [key](const worker_rec& w) { return mix(key ^ mix(w.info.index + 1)); });
    }
    case policy::custom:
      if (o.pick) {
        std::vector<worker_info> infos;
        std::vector<worker_ptr> recs;
        for (auto& w : workers) {
          if (!eligible(*w)) continue;
          infos.push_back(w->info);
          infos.back().active = w->active();
          recs.push_back(w);
        }
        if (recs.empty()) return nullptr;
        const std::size_t k = o.pick(pick_context{p.client, p.first, infos});
        if (k < recs.size()) return recs[k];
      }
      [[fallthrough]];
    case policy::round_robin:
      for (std::size_t k = 0; k < n; ++k) {
        auto& w = workers[(rr + k) % n];
        if (eligible(*w)) {
          rr = (rr + k + 1) % n;
          return w;
        }
      }
      return nullptr;
  }
  return nullptr;
}

}  // namespace detail

bool parse_policy(std::string_view text, policy& out) noexcept {
  std::string s(text);
  std::replace(s.begin(), s.end(), '_', '-');
  if (s == "round-robin" || s == "rr") out = policy::round_robin;
  else if (s == "least-connections" || s == "least-conn" || s == "lc") out = policy::least_connections;
  else if (s == "client-hash" || s == "hash") out = policy::client_hash;
  else if (s == "custom") out = policy::custom;
  else return false;
  return true;
}

const char* to_string(policy p) noexcept {
  switch (p) {
    case policy::round_robin: return "round-robin";
    case policy::least_connections: return "least-connections";
    case policy::client_hash: return "client-hash";
    case policy::custom: return "custom";
  }
  return "?";
}

}  // namespace baton::balance
