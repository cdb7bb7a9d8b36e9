// prometheus_metrics: Baton's counters in the Prometheus text exposition format, from one table
// of metrics (the move counters, then the latency histogram, then a service's own); and a
// balancing dispatcher's, with labels.
#include "baton/metrics.hpp"

#include <array>
#include <cstdio>
#include <iterator>

namespace baton {

namespace {

struct metric_def {
  bool of_service;  // needs a service; printed after the histogram
  const char* name;
  const char* type;
  const char* help;
  std::uint64_t value;
};

void print(std::string& out, const metric_def& d) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", d.name, d.help, d.name, d.type, d.name,
                static_cast<unsigned long long>(d.value));
  out += buf;
}

void print_latency(std::string& out, const move_stats& m) {
  out += "# HELP baton_move_latency_seconds Time from async_send to the target's acknowledgement.\n"
         "# TYPE baton_move_latency_seconds histogram\n";
  std::uint64_t cumulative = 0;
  char buf[256];
  for (std::size_t i = 0; i < m.latency_buckets.size(); ++i) {
    cumulative += m.latency_buckets[i];
    if (i < move_latency_bounds_us.size())
      std::snprintf(buf, sizeof buf, "baton_move_latency_seconds_bucket{le=\"%g\"} %llu\n",
                    move_latency_bounds_us[i] / 1e6, static_cast<unsigned long long>(cumulative));
    else
      std::snprintf(buf, sizeof buf, "baton_move_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                    static_cast<unsigned long long>(cumulative));
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "baton_move_latency_seconds_sum %.6f\nbaton_move_latency_seconds_count %llu\n",
                m.latency_sum_us / 1e6, static_cast<unsigned long long>(cumulative));
  out += buf;
}

// A label value, escaped as the exposition format wants (backslash, double quote, line feed).
std::string label_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    out += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return out;
}

// One metric family: HELP and TYPE once, then a sample per label set.
struct family {
  const char* name;
  const char* type;
  const char* help;
};

void print_head(std::string& out, const family& f) {
  out += "# HELP ";
  out += f.name;
  out += ' ';
  out += f.help;
  out += "\n# TYPE ";
  out += f.name;
  out += ' ';
  out += f.type;
  out += '\n';
}

void print_sample(std::string& out, const char* name, const std::string& labels, std::uint64_t value) {
  out += name;
  out += '{';
  out += labels;
  out += "} ";
  out += std::to_string(value);
  out += '\n';
}

}  // namespace

std::string prometheus_metrics(const balance::dispatcher& d, std::string_view service) {
  const auto st = d.stats();
  const auto workers = d.workers();
  const std::string svc = "service=\"" + label_value(service) + "\"";
  const std::pair<family, std::uint64_t> dispatcher_table[] = {
      {{"baton_balance_accepted_total", "counter", "Connections the dispatcher accepted."}, st.accepted},
      {{"baton_balance_dispatched_total", "counter", "Hand-offs a worker acknowledged."}, st.dispatched},
      {{"baton_balance_taken_back_total", "counter", "Hand-offs that came back (worker died, refused, timed out, full)."},
       st.taken_back},
      {{"baton_balance_pauses_total", "counter", "Times accepting stopped because every worker was saturated."},
       st.pauses},
      {{"baton_balance_peeking", "gauge", "Connections whose first bytes are being read."}, st.peeking},
      {{"baton_balance_worker_joins_total", "counter", "Workers that joined (restarted ones too)."}, st.worker_joins},
      {{"baton_balance_worker_deaths_total", "counter", "Workers that exited without leaving."}, st.worker_deaths},
      {{"baton_balance_worker_restarts_total", "counter", "Workers started again after dying."}, st.restarts},
      {{"baton_balance_rebalance_moves_total", "counter", "Connections workers were asked to move to a lighter one."},
       st.rebalance_moves},
      {{"baton_balance_dropped_total", "counter", "Connections closed after failing to reach any worker."}, st.dropped},
      {{"baton_balance_workers_rejoined_total", "counter", "Workers that joined with connections from an earlier dispatcher."},
       st.rejoined},
  };
  std::string out;
  for (const auto& [f, v] : dispatcher_table) {
    print_head(out, f);
    print_sample(out, f.name, svc, v);
  }
  // One family per value, in the order worker_values() gives them.
  const family worker_families[] = {
      {"baton_balance_worker_connections", "gauge", "Connections the worker holds (dispatcher's estimate)."},
      {"baton_balance_worker_dispatched_total", "counter", "Connections handed to the worker and acknowledged."},
      {"baton_balance_worker_in_flight", "gauge", "Hand-offs to the worker awaiting its acknowledgement."},
      {"baton_balance_worker_moved_in_total", "counter", "Connections moved in from other workers (latest report)."},
      {"baton_balance_worker_departed_total", "counter", "Connections closed or moved out (latest report)."},
      {"baton_balance_worker_leaving", "gauge", "1 while the worker drains before leaving."},
      {"baton_balance_worker_pid", "gauge", "Process id of the worker in this slot."},
  };
  auto worker_values = [](const balance::worker_info& w) {
    return std::array<std::uint64_t, 7>{w.active, w.dispatched, w.in_flight, w.moved_in, w.departed, w.leaving, w.pid};
  };
  static_assert(std::size(worker_families) == std::tuple_size_v<decltype(worker_values(balance::worker_info{}))>);
  for (std::size_t i = 0; i < std::size(worker_families); ++i) {
    print_head(out, worker_families[i]);
    for (const auto& w : workers)
      print_sample(out, worker_families[i].name, svc + ",worker=\"" + std::to_string(w.index) + "\"",
                   worker_values(w)[i]);
  }
  return out;
}

std::string prometheus_metrics(const service* svc) {
  const auto m = get_move_stats();
  const auto s = svc ? svc->stats() : service_stats{};
  const metric_def table[] = {
      {false, "baton_moves_sent_total", "counter", "Connections and listeners this process moved out.", m.sent},
      {false, "baton_moves_received_total", "counter", "Tickets this process received and took.", m.received},
      {false, "baton_move_rollbacks_total", "counter", "Moves that failed and left the object with this process.",
       m.rollbacks},
      {false, "baton_move_rejected_tickets_total", "counter", "Tickets this process refused (invalid, late).",
       m.rejected_tickets},
      {false, "baton_move_strategy_fallbacks_total", "counter", "Moves retried with another transfer strategy.",
       m.strategy_fallbacks},
      {false, "baton_move_refused_pushes_total", "counter", "Descriptors pushed by a foreign process, dropped.",
       m.refused_pushes},
      {true, "baton_service_generation", "gauge", "Generation number of this process.", s.generation},
      {true, "baton_service_connections", "gauge", "Connections this generation owns.", s.connections},
      {true, "baton_service_listeners", "gauge", "Listeners this generation accepts on.", s.listeners},
      {true, "baton_service_accepted_total", "counter", "Connections accepted by this generation.", s.accepted},
      {true, "baton_service_inherited_total", "counter", "Connections received from the previous generation.",
       s.inherited},
      {true, "baton_service_moved_out_total", "counter", "Connections handed to the next generation.", s.moved_out},
      {true, "baton_service_restarts_failed_total", "counter", "Restarts from this generation that failed.",
       s.restarts_failed},
      {true, "baton_service_restarts_refused_total", "counter",
       "Restart requests refused because one was in progress.", s.restarts_refused},
      {true, "baton_service_connections_lost_total", "counter",
       "Connections hand-overs did not carry through: left in the old generation at the drain deadline, "
       "or ended with a next generation that died.",
       s.connections_lost},
      {true, "baton_service_closed_gracefully_total", "counter",
       "Connections the application closed instead of moving them (service::close_gracefully).", s.closed_gracefully},
  };
  std::string out;
  for (const auto& d : table)
    if (!d.of_service) print(out, d);
  print_latency(out, m);
  if (svc)
    for (const auto& d : table)
      if (d.of_service) print(out, d);
  return out;
}

}  // namespace baton
