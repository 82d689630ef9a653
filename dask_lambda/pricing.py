"""Published AWS prices used for cost estimates and budgets (one place).

Figures are us-east-1 list prices as published in late 2026: Lambda's pricing page
(https://aws.amazon.com/lambda/pricing/: compute per GB-second billed per 1 ms, requests per
million) and S3's (https://aws.amazon.com/s3/pricing/: Standard storage, PUT/COPY/POST/LIST
and GET request tiers). Other regions differ by a few percent: pass your own `Prices` for an
exact figure. Free tiers are not subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prices:
    """Unit prices in US dollars.

    Attributes
    ----------
    gb_second_x86, gb_second_arm
        Lambda compute per GB-second, x86_64 and arm64.
    request
        Lambda, per request.
    s3_put
        S3 Standard PUT, COPY, POST and LIST, per request.
    s3_get
        S3 Standard GET and other reads, per request (DELETE is free).
    s3_gb_month
        S3 Standard storage per GB-month (first 50 TB).
    """

    gb_second_x86: float = 0.0000166667
    gb_second_arm: float = 0.0000133334
    request: float = 0.20 / 1_000_000
    s3_put: float = 0.005 / 1_000
    s3_get: float = 0.0004 / 1_000
    s3_gb_month: float = 0.023


US_EAST_1 = Prices()
