"""The vendor profile that comes with every submission (evidence for the local-strength criterion)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["VendorProfile", "SEOUL_DISTRICTS", "SEOUL_LEADING_FIELDS"]

SEOUL_DISTRICTS = frozenset({
    "Jongno-gu", "Jung-gu", "Yongsan-gu", "Seongdong-gu", "Gwangjin-gu", "Dongdaemun-gu", "Jungnang-gu",
    "Seongbuk-gu", "Gangbuk-gu", "Dobong-gu", "Nowon-gu", "Eunpyeong-gu", "Seodaemun-gu", "Mapo-gu",
    "Yangcheon-gu", "Gangseo-gu", "Guro-gu", "Geumcheon-gu", "Yeongdeungpo-gu", "Dongjak-gu", "Gwanak-gu",
    "Seocho-gu", "Gangnam-gu", "Songpa-gu", "Gangdong-gu",
})
"""The 25 autonomous districts (gu) of Seoul."""

SEOUL_LEADING_FIELDS = frozenset({"computer_vision", "nlp", "autonomous_driving"})
"""Fields where the city's policy report says Seoul-based companies lead."""

Field_ = Literal["computer_vision", "nlp", "autonomous_driving", "time_series", "other"]


class VendorProfile(BaseModel):
    """Who built the bundle. Submitted as YAML with `--vendor`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    name: str = Field(min_length=1, max_length=120)
    """The company's legal name."""
    headquarters_district: str
    """Where the headquarters is: a Seoul district such as `Gangnam-gu`, or `outside-seoul`."""
    seoul_based: bool
    """True when the headquarters is in Seoul (must agree with `headquarters_district`)."""
    startup: bool
    """True for a startup (under 7 years old, as the city's SME programmes define it)."""
    technology_field: Field_
    """The main technology field: one of computer_vision, nlp, autonomous_driving, time_series, other."""
    model_description: str = Field(min_length=1, max_length=2000)
    """What the model is and how it was trained, in a few sentences."""
    licence: str = Field(min_length=1, max_length=120)
    """The licence of the model and its weights (SPDX id where one exists, e.g. Apache-2.0)."""
    contact: str | None = Field(default=None, max_length=254)
    """Optional contact e-mail for the city's evaluators."""

    @field_validator("headquarters_district")
    @classmethod
    def _known_district(cls, district: str) -> str:
        if district != "outside-seoul" and district not in SEOUL_DISTRICTS:
            meant = next((d for d in sorted(SEOUL_DISTRICTS) if d.casefold() == district.casefold()), None)
            raise ValueError(f"{district[:60]!r} is neither a Seoul district (e.g. Gangnam-gu, Mapo-gu) nor "
                             "'outside-seoul'" + (f"; it is spelt {meant!r}" if meant else ""))
        return district

    @model_validator(mode="after")
    def _district_agrees(self) -> VendorProfile:
        district = self.headquarters_district
        if self.seoul_based != (district in SEOUL_DISTRICTS):
            raise ValueError(f"seoul_based is {self.seoul_based} but headquarters_district is {district!r}")
        return self
