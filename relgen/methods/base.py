"""The method contract, defined in :mod:`relgen.plugin` (kept here for existing imports)."""

from relgen.plugin import (
                           Artifact,
                           EvalCondition,
                           Exporter,
                           GridColumns,
                           Method,
                           StepContext,
                           StepOutput,
                           check_capabilities,
                           optional_path,
)

__all__ = ["Artifact", "EvalCondition", "Exporter", "GridColumns", "Method", "StepContext", "StepOutput",
           "check_capabilities", "optional_path"]
