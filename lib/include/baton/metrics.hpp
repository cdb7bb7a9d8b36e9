#pragma once
/// Baton's counters in the Prometheus text exposition format (version 0.0.4), for a /metrics
/// endpoint: moves sent/received/rolled back, rejected tickets, strategy fallbacks, the move
/// latency histogram, and, given a service, its generation, connections and restart counters.

#include <baton/restart.hpp>

#include <string>

namespace baton {

/// `svc` may be null (move counters only). Use from the service's thread.
std::string prometheus_metrics(const service* svc = nullptr);

}  // namespace baton
