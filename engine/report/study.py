"""The manifest's ``[study]`` table: what only a study's authors know, for the reporting checklists
(engine.report.checklists) and the Model facts page. The report stage owns its schema, as the
nightly stage owns ``[gates]``: engine.manifest reads it through ``_stage_types``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The reporting guidelines ``[report] checklists`` can fill.
CHECKLISTS = ("claim-2024", "tripod-ai")


@dataclass
class StudyConfig:
    """What only the study's authors know, for the reporting checklists (docs/manifest.md, "[study]").

    Every key is optional free text. An answer that begins "Not applicable" marks its checklist
    items not applicable, with the rest of the text as the reason.
    """

    objectives: str = ""
    intended_use: str = ""
    intended_users: str = ""
    clinical_setting: str = ""
    study_design: str = ""
    data_source: str = ""
    eligibility: str = ""
    population: str = ""
    acquisition: str = ""
    de_identification: str = ""
    reference_standard: str = ""
    reference_standard_rationale: str = ""
    annotators: str = ""
    annotation_method: str = ""
    annotation_disagreements: str = ""
    sample_size: str = ""
    health_inequalities: str = ""
    limitations: str = ""
    ethics_approval: str = ""
    registration: str = ""
    protocol: str = ""
    funding: str = ""
    conflicts_of_interest: str = ""
    patient_involvement: str = ""
    data_availability: str = ""
    code_availability: str = ""
