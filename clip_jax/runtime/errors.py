"""RunError: what ends a run with one line naming the field, file, directory or step it concerns.

`python -m clip_jax.main` prints it as `error: <message>` and exits with status 1, without a traceback,
on every process of a multi-process run (`multihost.exit_on_failure`).
"""
from __future__ import annotations


class RunError(Exception):
    """An error whose message says all a user needs: a bad config field, an unreadable checkpoint, a full disk."""
