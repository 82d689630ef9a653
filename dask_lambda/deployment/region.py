"""The AWS region a deployment lives in when none is given."""

from __future__ import annotations

import os


def default_region() -> str | None:
    """The region boto would use (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile)."""
    import botocore.session

    return (botocore.session.get_session().get_config_variable("region")
            or os.environ.get("AWS_REGION") or None)
