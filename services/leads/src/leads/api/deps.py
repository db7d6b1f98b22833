"""Shared route dependencies: the service's store and who may do what."""

from __future__ import annotations

from crm_platform.auth import Role, require_roles
from crm_platform.routes import current_actor

# Marketing owns leads and scoring; admins may do anything marketing does.
WRITERS = (Role.MARKETING, Role.ADMIN)
# Sales works the leads it is handed and analysts study them: both read.
READERS = (*WRITERS, Role.SALES_REP, Role.SALES_MANAGER, Role.ANALYST)

can_write = require_roles(*WRITERS)
can_read = require_roles(*READERS)


# The one acting-user type (crm_platform.actor.Actor), from the verified token.
actor = current_actor
