#pragma once
/// Baton's counters in the Prometheus text exposition format (version 0.0.4), for a /metrics
/// endpoint: moves sent/received/rolled back, rejected tickets, strategy fallbacks, the move
/// latency histogram, and, given a service, its generation, connections and restart counters;
/// or a balancing dispatcher's counters and those of each worker it knows.

#include <baton/balance.hpp>
#include <baton/restart.hpp>

#include <string>
#include <string_view>

namespace baton {

/// `svc` may be null (move counters only). Use from the service's thread.
std::string prometheus_metrics(const service* svc = nullptr);

/// A dispatcher's counters (`baton_balance_*`, labelled `service="<service>"`) and, for each live
/// worker, its connections, hand-offs and load-report totals (`baton_balance_worker_*`, labelled
/// `service` and `worker="<index>"`, the slot a restarted worker keeps). The move counters of
/// this process are not included (call the overload above too). Use from the dispatcher's strand.
std::string prometheus_metrics(const balance::dispatcher& d, std::string_view service);

}  // namespace baton
