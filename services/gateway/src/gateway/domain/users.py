"""Rules about accounts that span more than one user (the last administrator)."""

from __future__ import annotations

from collections.abc import Iterable

from crm_platform.auth import Role


def removes_last_admin(
    *,
    was_admin: bool,
    was_active: bool,
    new_roles: Iterable[str],
    new_active: bool,
    other_active_admins: int,
) -> bool:
    """Would this change leave the platform without an active administrator?"""
    if not (was_admin and was_active):
        return False
    still_admin = Role.ADMIN in set(new_roles) and new_active
    return not still_admin and other_active_admins == 0
