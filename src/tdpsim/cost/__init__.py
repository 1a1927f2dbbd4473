"""Cost parameters (each with its source) and charging of counted events."""

from .model import COMPONENTS, estimate, translation
from .params import (ASSUMPTION, DEFAULT_PARAMS, CostParams, CostParamsError, Param,
                     load_params, params_from_doc)

__all__ = ["ASSUMPTION", "COMPONENTS", "CostParams", "CostParamsError", "DEFAULT_PARAMS",
           "Param", "estimate", "load_params", "params_from_doc", "translation"]
