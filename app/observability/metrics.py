"""Every Prometheus metric of the service, defined once; code records through these.

Labels never name a user, a run or a session: cardinality stays bounded by agents,
models, tools and outcomes. Under several processes (`serve --processes`, workers on one
host) prometheus_client's multiprocess mode aggregates them (see `app.observability.export`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
COST_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 3, 10, 30, 100)

# Runs
RUNS = Counter(
    "agentsvc_runs", "Runs that ended, by agent, status and pattern", ["agent", "status", "pattern"]
)
RUN_ERRORS = Counter(
    "agentsvc_run_errors", "Failed runs by agent and error type", ["agent", "type"]
)
RUN_DURATION = Histogram(
    "agentsvc_run_duration_seconds",
    "Wall time from creation to end of a run",
    ["agent", "status"],
    buckets=LATENCY_BUCKETS,
)
RUN_TURNS = Histogram(
    "agentsvc_run_turns", "LLM turns per finished run", ["agent"], buckets=(1, 2, 3, 5, 8, 13, 20)
)
RUN_COST = Histogram(
    "agentsvc_run_cost_usd", "Cost of each finished run", ["agent"], buckets=COST_BUCKETS
)
SESSION_COST = Histogram(
    "agentsvc_session_cost_usd",
    "Cost of a session so far, observed after each of its runs",
    ["agent"],
    buckets=COST_BUCKETS,
)
RUNS_IN_FLIGHT = Gauge(
    "agentsvc_runs_in_flight", "Runs this process drives now", multiprocess_mode="livesum"
)
OVERHEAD = Histogram(
    "agentsvc_overhead_seconds",
    "Service time of a run step minus the time spent waiting on the model",
    buckets=FAST_BUCKETS,
)

# LLM calls
LLM_CALLS = Counter(
    "agentsvc_llm_calls",
    "LLM calls by provider, model and outcome (ok, error, cache_hit)",
    ["provider", "model", "outcome"],
)
LLM_TOKENS = Counter(
    "agentsvc_llm_tokens",
    "Tokens by provider, model and kind (input, output, cached)",
    ["provider", "model", "kind"],
)
LLM_COST = Counter(
    "agentsvc_llm_cost_usd",
    "Spend in USD by provider, model and agent",
    ["provider", "model", "agent"],
)
LLM_LATENCY = Histogram(
    "agentsvc_llm_latency_seconds",
    "LLM call latency",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
LLM_TTFT = Histogram(
    "agentsvc_llm_time_to_first_token_seconds",
    "Time to the first streamed token",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
LLM_RETRIES = Counter(
    "agentsvc_llm_retries",
    "LLM call retries by provider, model and reason",
    ["provider", "model", "reason"],
)
FALLBACKS = Counter(
    "agentsvc_fallbacks", "Runs or calls served by a fallback, by agent and link", ["agent", "to"]
)

# Tools
TOOL_CALLS = Counter("agentsvc_tool_calls", "Tool calls by tool and status", ["tool", "status"])
TOOL_LATENCY = Histogram(
    "agentsvc_tool_latency_seconds", "Tool call latency", ["tool"], buckets=LATENCY_BUCKETS
)

# Cost control and resilience
BUDGET_REJECTIONS = Counter(
    "agentsvc_budget_rejections",
    "Reservations or requests refused for budget (run, request, run_tokens, run_cost)",
    ["reason"],
)
BUDGET_STORE_ERRORS = Counter(
    "agentsvc_budget_store_errors", "Budget checks that could not reach Redis", ["policy"]
)
RATE_LIMITED = Counter("agentsvc_rate_limited", "Requests refused by the rate limit")
CACHE_REQUESTS = Counter(
    "agentsvc_prompt_cache", "Prompt cache lookups by result (hit, miss, skip, error)", ["result"]
)
BREAKER_STATE = Gauge(
    "agentsvc_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["target"],
    multiprocess_mode="max",
)
BREAKER_TRANSITIONS = Counter(
    "agentsvc_breaker_transitions",
    "Breaker state changes by target and new state",
    ["target", "state"],
)

# Queue and delivery
QUEUE_DEPTH = Gauge("agentsvc_queue_depth", "Runs waiting to be claimed", multiprocess_mode="max")
CLAIM_LAG = Histogram(
    "agentsvc_claim_lag_seconds",
    "Time from a run becoming claimable to a worker claiming it",
    buckets=FAST_BUCKETS + (2.5, 5, 10, 30, 60),
)
WEBHOOK_DELIVERIES = Counter(
    "agentsvc_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"]
)
