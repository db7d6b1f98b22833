"""The aiokafka versions the platform's process-wide patches were written for.

Two fixes replace private aiokafka methods for the whole process, because the
public API offers no way in: ``crm_platform.liveness.harden_aiokafka``
(``Fetcher.close``, so a consumer's ``stop()`` returns after a broker restart; and
``GroupCoordinator.reset_generation``, ``_maybe_leave_group`` and ``close``, so a member id
aiokafka gives up is left with a ``LeaveGroup``; and ``Fetcher._proc_fetch_request``, so each
fetch task wakes the fetch routine's ``_wait_consume_future`` when it ends:
``crm_platform.kafka.wake_routine_after_fetches``) and
``crm_platform.kafka.pace_empty_fetches`` (``Fetcher._proc_fetch_request``, only
against a broker that answers empty fetches at once). Private code changes without
notice, so each patch first calls :func:`require_patchable`, which raises, and so
stops the service at startup, on any aiokafka it was not read against: a patch
silently applied to code it does not know is worse than none.

``pace_empty_fetches`` also sends an idle consumer's fetch again as bytes on aiokafka's
connection (``crm_platform.kafka.same_empty_answer``: ``AIOKafkaConnection._writer``,
``_requests``, ``_next_correlation_id``, ``_versions``, and ``_handle_frame`` handing a
frame queued without a correlation id to its future undecoded), so a new aiokafka's
connection code is to be read as well.

``crm-platform`` pins aiokafka to exactly these versions (its ``pyproject.toml``),
so an install cannot drift either. To move to a new aiokafka: read its
``Fetcher.close``, ``_fetch_requests_routine`` and ``_proc_fetch_request`` (is the
swallowed cancel still there? aio-libs/aiokafka#983), ``GroupCoordinator.reset_generation``
and its callers (does it still forget the member id without leaving? does
``_send_sync_group_request`` still restore it?), adapt or drop the patches,
run ``tests/reliability/test_consumer_survives_broker_restarts.py``, then add the
version here and to the pin together.
"""

from __future__ import annotations

import aiokafka

PATCHED_FOR: frozenset[str] = frozenset({"0.14.0"})


class UnsupportedAiokafka(RuntimeError):
    """The installed aiokafka is not one the platform's patches were written for."""


def require_patchable(patch: str, version: str | None = None) -> None:
    """Raise :class:`UnsupportedAiokafka` unless ``version`` (default: the installed one) is known."""
    found = version if version is not None else aiokafka.__version__
    if found not in PATCHED_FOR:
        raise UnsupportedAiokafka(
            f"{patch} patches private aiokafka code and was written for aiokafka "
            f"{', '.join(sorted(PATCHED_FOR))}; this process has aiokafka {found}. Refusing to start: "
            "re-check the patch against this version (see crm_platform.aiokafka_compat) "
            "or install a supported aiokafka."
        )
