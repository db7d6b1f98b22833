"""Request and response models of the gateway's own API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from crm_platform.auth import Role
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.domain.users import User


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: SecretStr = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str = Field(description="single use: POST /auth/refresh trades it for a new pair")
    refresh_expires_in: int = Field(description="seconds until the session ends (log in again)")
    roles: list[str]


class MeOut(BaseModel):
    id: str
    username: str
    display_name: str | None
    roles: list[str]
    active: bool


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=3, max_length=64, examples=["jane.doe"])
    password: SecretStr = Field(max_length=1024, description="at least CRM_PASSWORD_MIN_LENGTH characters")
    roles: list[Role] = Field(min_length=1)
    display_name: str | None = Field(default=None, max_length=200)


class UpdateUser(BaseModel):
    """Only the fields sent are changed. Changing roles, active or password revokes the user's
    current tokens at the gateway and every service (they log in again); a password reset
    also lifts the login throttle on the account."""

    model_config = ConfigDict(extra="forbid")
    roles: list[Role] | None = Field(default=None, min_length=1)
    active: bool | None = None
    password: SecretStr | None = Field(default=None, max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str | None
    roles: list[str]
    active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            username=user.username,
            display_name=user.display_name,
            roles=list(user.roles),
            active=user.active,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserList(BaseModel):
    items: list[UserOut]
    total: int
