// prometheus_metrics: Baton's counters in the Prometheus text exposition format, from one table
// of metrics (the move counters, then the latency histogram, then a service's own).
#include "baton/metrics.hpp"

#include <cstdio>

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

}  // namespace

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
