"""Every Prometheus metric of the service, defined once; code records through these.

Labels never name a user, a run or a session: cardinality stays bounded by agents,
models, tools and outcomes. Under several processes (`serve --processes`, workers on one
host) prometheus_client's multiprocess mode aggregates them (see `app.observability.export`).
Gauges that describe shared state take the most recent value any live process recorded;
a dead process's gauges are dropped (its counters and histograms stay in the totals).

What records what: `app.observability.recording` (runs, LLM and tool calls, overhead,
claims, queue), called from the run store's commit, the queue and the worker; the
executor (in-flight runs), the providers (time to first token, `timing.py`), webhook
delivery, the cost, cache and resilience guards (their own counters), and the feedback
service (ratings, after they are committed).
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
    "Wall time from creation to end of a run (time queued and waiting for approvals included)",
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
    "Cost of a session so far, observed when each of its runs ends (a run outside a session"
    " is a session of its own)",
    ["agent"],
    buckets=COST_BUCKETS,
)
SESSIONS = Counter(
    "agentsvc_sessions",
    "Sessions begun, counted when their first run ends (a run outside a session is a"
    " session of its own); average cost per session = run cost sum / sessions",
    ["agent"],
)
CANARY_ROLLBACKS = Counter(
    "agentsvc_canary_rollbacks",
    "Canary versions switched off automatically for regressing against stable",
    ["agent"],
)
RETENTION_DELETED = Counter(
    "agentsvc_retention_deleted",
    "Runs outside sessions (kind=run) and idle sessions (kind=session) deleted for being"
    " older than AGENTSVC_RETENTION_DAYS",
    ["kind"],
)
RUNS_IN_FLIGHT = Gauge(
    "agentsvc_runs_in_flight",
    "Runs being driven now (summed over the host's live processes)",
    multiprocess_mode="livesum",
)
OVERHEAD = Histogram(
    "agentsvc_overhead_seconds",
    "Service time of a run step (from the previous commit to this one) minus the time spent"
    " waiting on the model call or the tool call it made",
    buckets=FAST_BUCKETS,
)

# User feedback
FEEDBACK = Counter(
    "agentsvc_feedback",
    "Ratings users gave their runs, by agent, version and rating (up, down); a changed"
    " rating counts again (the current ones are in GET /agent/feedback)",
    ["agent", "version", "rating"],
)

# LLM calls
LLM_CALLS = Counter(
    "agentsvc_llm_calls",
    "LLM calls by provider, model and outcome (ok, error, cancelled, cache_hit)",
    ["provider", "model", "outcome"],
)
LLM_TOKENS = Counter(
    "agentsvc_llm_tokens",
    "Tokens the provider reported, by provider, model and kind (input, output, cached);"
    " cache hits are not counted",
    ["provider", "model", "kind"],
)
LLM_COST = Counter(
    "agentsvc_llm_cost_usd",
    "Spend in USD by provider, model and agent",
    ["provider", "model", "agent"],
)
LLM_LATENCY = Histogram(
    "agentsvc_llm_latency_seconds",
    "LLM call latency as the run waited for it (guards, retries and fallbacks included;"
    " cache hits not observed)",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
LLM_TTFT = Histogram(
    "agentsvc_llm_time_to_first_token_seconds",
    "Time from sending a streamed request to its first text chunk, per provider call",
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
TOOL_CALLS = Counter(
    "agentsvc_tool_calls",
    "Tool calls by tool and status (ok, error, refused, invalid, in_doubt); a name not on the"
    " agent's allowlist is counted as tool `(not allowed)`",
    ["tool", "status"],
)
TOOL_LATENCY = Histogram(
    "agentsvc_tool_latency_seconds",
    "Latency of tool calls that ran",
    ["tool"],
    buckets=LATENCY_BUCKETS,
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
    multiprocess_mode="livemostrecent",
)
BREAKER_TRANSITIONS = Counter(
    "agentsvc_breaker_transitions",
    "Breaker state changes by target and new state",
    ["target", "state"],
)

# Queue and delivery
QUEUE_DEPTH = Gauge(
    "agentsvc_queue_depth",
    "Runs waiting to be claimed, as a worker last counted them",
    multiprocess_mode="livemostrecent",
)
QUEUE_OLDEST_AGE = Gauge(
    "agentsvc_queue_oldest_age_seconds",
    "Age (since creation) of the oldest run waiting to be claimed, 0 when none waits",
    multiprocess_mode="livemostrecent",
)
CLAIM_LAG = Histogram(
    "agentsvc_claim_lag_seconds",
    "Time from a queued run's creation to its first claim by a worker",
    buckets=FAST_BUCKETS + (2.5, 5, 10, 30, 60, 120, 300),
)
WEBHOOK_DELIVERIES = Counter(
    "agentsvc_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, failed: given up)",
    ["outcome"],
)
RATE_LIMIT_STORE_ERRORS = Counter(
    "agentsvc_rate_limit_store_errors",
    "Rate-limit checks that could not reach Redis (the request was let through)",
)
