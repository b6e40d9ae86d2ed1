"""The JSON bodies of the widget's API (the OpenAPI schema documents them; routes answer with
JSONResponse so that what is sent stays exactly what the widget reads)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    text: str = Field(default="", max_length=1_000_000)
    conversation_id: str | None = Field(default=None, max_length=128)
    conversation_token: str | None = Field(default=None, max_length=128)
    action: Literal["request_human"] | None = None
    client_id: str | None = Field(default=None, max_length=64)


class ChatEvent(BaseModel):
    """One reply or message of a conversation, numbered by its place in the transcript (`seq`)."""

    model_config = ConfigDict(extra="allow")
    seq: int | None = None
    at: float | None = None
    role: Literal["user", "bot", "operator"]


class ChatReply(BaseModel):
    """The contract's reply (the first of this turn) with all of them, and the conversation's token."""

    model_config = ConfigDict(extra="allow")
    conversation_id: str
    language: str
    answer: str
    citations: list[dict[str, Any]]
    escalation: dict[str, Any] | None
    confidence: float
    replies: list[ChatEvent]
    conversation_token: str
    user_seq: int | None = None


class ChatHistory(BaseModel):
    conversation_id: str
    events: list[ChatEvent]
    last_seq: int


class ApiError(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: str
    message: str


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    # degraded (still 200: the node serves; a load balancer must not take it out of rotation):
    # replies are waiting after failed deliveries, or are dead (see "deliveries")
    status: Literal["ok", "degraded", "unhealthy"]
