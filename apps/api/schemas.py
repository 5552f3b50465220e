"""Request and response models of the scoring API (pydantic, with bounds and examples for OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from nba.decision import TALKING_POINT_CODES
from nba.schema import ACTION_OUTCOME_VALUES, CHANNELS


def _unicode(s: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``\\ud800`` decodes from JSON but
    cannot be stored, logged or sent back)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return s


# A client, action or decision id as banks write them: 1-128 printable characters.
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", examples=["C00000042"]),
               AfterValidator(_unicode)]
Text = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$"), AfterValidator(_unicode)]
Channel = Literal[tuple(CHANNELS)]  # type: ignore[valid-type]
Outcome = Literal[tuple(ACTION_OUTCOME_VALUES)]  # type: ignore[valid-type]


class Error(BaseModel):
    """An error's body (a 422's ``detail`` is instead a list naming each bad field: ``loc``, ``msg``, ``type``)."""

    detail: str = Field(description="what was wrong")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Context(_Strict):
    """Where and how the client is being served now."""

    channel: Channel | None = Field(None, description="the channel the client is on now (an inbound call: "
                                    "phone; an app session: app); only actions deliverable on it are proposed")
    campaign_id: Id | None = Field(None, description="the calling campaign, echoed in the answer")
    candidates: list[Id] | None = Field(None, min_length=1, max_length=500, description="action ids (or "
                                        "product ids, meaning their offers) to choose among; default all")
    exclude: list[Id] = Field(default_factory=list, max_length=500, description="action or product ids never "
                              "to propose")


class NextBestActionRequest(_Strict):
    customer_id: Id
    context: Context | None = None
    top: int = Field(5, ge=1, le=200, description="ranked actions to return (at most serving.max_top)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"customer_id": "C00000042", "context": {"channel": "phone", "campaign_id": "inbound-2026-12"}, "top": 3}]})


class ActionOut(BaseModel):
    rank: int
    action_id: str
    action_family: str
    product_id: str | None
    channel: str
    in_person: bool
    rm_review: bool
    priority: float = Field(description="expected net value at this channel (currency)")
    propensity: float = Field(description="probability: product offers P(opens within 90 days); retention "
                              "churn x save rate; care the care moment's response rate")
    value: float = Field(description="value if it succeeds (currency)")
    reasons: list[str]
    talking_points: list[str]
    talking_point_data: list[tuple[str, dict[str, Any]]] = Field(
        default_factory=list, description="the talking points as data, for a tool that says them in its own "
        "language: one [code, fields] per point, in the order of talking_points. Probabilities are 0-1, money "
        "in the bank's currency, days whole days; 'facts' holds 'parts', a list of [code, fields] said as one "
        "sentence. Codes and their fields: " + "; ".join(
            f"{c} ({', '.join(f) or 'no fields'})" for c, f in TALKING_POINT_CODES.items()),
        examples=[[["birthday_in", {"days": 5, "turns": 41}], ["health", {"health": 72, "stage": "mature"}]]])
    decision_id: str


class HeldOut(BaseModel):
    action_id: str
    action_family: str
    decision_id: str


class ClientState(BaseModel):
    lifecycle_stage: str | None
    health_score: float | None
    complaint_state: str | None
    emotional_state: str | None
    churn_risk: float | None = Field(description="P(churn within 90 days) from the model, null if unknown")


class Decision(BaseModel):
    customer_id: str
    decision_id: str | None = Field(description="the top action's decision (or the held-out one); outcomes "
                                    "name it")
    as_of: str = Field(description="the decision day: the online features' date")
    model_version: str
    control_group: bool = Field(description="held out today for the family of its best action: no action")
    held_out: HeldOut | None
    actions: list[ActionOut]
    policy_trace: dict = Field(description="rule -> action ids it removed, passed, chosen")
    feature_hash: str
    state: ClientState
    campaign_id: str | None = None


class ScoreRequest(_Strict):
    customer_ids: list[Id] = Field(min_length=1, description="at most serving.max_batch clients")
    candidates: list[Id] | None = Field(None, min_length=1, max_length=500, description="action or product "
                                        "ids to score for each client; default the decision only")
    channel: Channel | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"customer_ids": ["C00000042", "C00000043"], "candidates": ["CARD-GOLD", "care:birthday"]}]})


class CandidateScore(BaseModel):
    action_id: str
    propensity: float
    priority: float | None = Field(description="expected net value at its best allowed channel; null when a "
                                   "policy removed it")
    channel: str | None
    removed_by: str | None = Field(description="the policy_trace rule that removed it, or min_priority: allowed "
                                   "but worth less than policy.min_priority on every allowed channel")


class ScoreResult(BaseModel):
    customer_id: str
    decision: Decision
    scores: list[CandidateScore] = Field(default_factory=list)


class ScoreResponse(BaseModel):
    as_of: str
    model_version: str
    results: list[ScoreResult]
    unknown: list[str] = Field(description="ids not found (unknown clients, or outside the caller's book)")


class Recommendation(BaseModel):
    rank: int
    product_id: str
    name: str
    propensity: float = Field(description="P(opens the product within 90 days), calibrated")


class RecommendationsResponse(BaseModel):
    customer_id: str
    as_of: str
    model_version: str
    recommendations: list[Recommendation]
    removed: dict[str, str] = Field(description="product -> the policy that removed it")


class LookalikeFilters(_Strict):
    channel: Channel | None = Field(None, description="only clients who consent to this channel and to marketing")
    product_id: Id | None = Field(None, description="only clients the product's offer suits (eligible, not "
                                  "held, suitable, no open complaint)")
    exclude: list[Id] = Field(default_factory=list, max_length=100_000, description="suppressed client ids")


class LookalikeRequest(_Strict):
    seed_customer_ids: list[Id] = Field(min_length=1, description="at most serving.max_seeds")
    size: int = Field(1000, ge=1, description="audience size (at most serving.max_audience)")
    method: Literal["nearest", "centroid"] = "nearest"
    filters: LookalikeFilters = Field(default_factory=LookalikeFilters)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"seed_customer_ids": ["C00000042", "C00000077"], "size": 500,
         "filters": {"channel": "email", "product_id": "CARD-GOLD"}}]})


class AudienceMember(BaseModel):
    rank: int
    customer_id: str
    similarity: float = Field(description="cosine similarity of the model's embeddings")


class LookalikeResponse(BaseModel):
    model_version: str
    audience: list[AudienceMember]
    unknown_seeds: list[str]
    seeds_used: int


class OutcomeRequest(_Strict):
    decision_id: Id
    outcome: Outcome
    reason: Text | None = Field(None, description="why the client declined (declines only; no control characters)")
    outcome_at: AwareDatetime | None = Field(None, description="when it happened, ISO 8601 with a UTC offset "
                                             "(default now)")
    channel: Channel | None = Field(None, description="the channel it was delivered on, when not the one the "
                                    "decision proposed")
    note: Text | None = Field(None, description="a short note on the contact (at most 500 characters); shown "
                              "in the RM workbench's client view")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"decision_id": "N0123456789abcdef", "outcome": "declined", "reason": "not interested",
         "outcome_at": "2026-06-30T10:15:00+00:00"}]})


class OutcomeResponse(BaseModel):
    decision_id: str
    outcome: str
    outcome_at: str
    recorded_at: str
    replayed: bool = Field(description="true when this idempotency key was already recorded: the stored "
                           "outcome is returned and nothing new is written")


class ModelInfo(BaseModel):
    model_name: str
    model_version: int
    alias: str
    as_of: str | None
    trained_at: str | None
    features_as_of: str
    online_version: str
    store_version: str
    index_build: str
    loaded_at: str
    metrics: dict[str, float]
    warnings: list[str] = Field(default_factory=list, description=(
        "what the operator should know, e.g. online features materialized from an older store version"))


class ReloadResponse(BaseModel):
    switched: bool
    message: str
    model_version: int | None
