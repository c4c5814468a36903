"""Prometheus metrics (GET /metrics). Per process: with WORKERS>1 scrape each or sum them."""
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POINTS_ISSUED = Counter("points_issued_total", "Points credited to members", ["reason"])
POINTS_SPENT = Counter("points_spent_total", "Points debited from members", ["reason"])
WECHAT_CALLS = Counter("wechat_api_calls_total", "Calls to WeChat's API", ["path", "outcome"])
# Read from the database at each scrape (handlers/ops.py): what waits to be told to WeChat.
OUTBOX_MESSAGES = Gauge("outbox_messages", "Outbox messages by channel and open status (pending, sending, dead)",
                        ["channel", "status"])
CAP_HITS = Counter("points_cap_hits_total", "Earnings cut short by the daily points cap")
WALLET_FEN = Counter("wallet_fen_total", "Stored value moved, in fen", ["kind", "reason"])
RECONCILIATION_MISMATCHES = Counter("reconciliation_mismatches_total",
                                    "Differences between WeChat Pay's trade bill and our records", ["kind"])
PARTNER_REQUESTS_REFUSED = Counter("partner_requests_refused_total", "Refused /partner requests", ["reason"])
