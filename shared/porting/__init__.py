"""The porting kit's framework-free half: weight-mapping rules and pairing by module path (pure numpy)."""

from shared.porting import attention, recurrent
from shared.porting.custom import CustomCopy
from shared.porting.pairing import ModelTree, PairingError, Plan, plan_pairing
from shared.porting.rules import Rule, RuleError, find_rule, register_rule, unregister_rule
from shared.porting.tables import glob_table, regex_table

__all__ = ["CustomCopy", "ModelTree", "PairingError", "Plan", "Rule", "RuleError", "attention", "find_rule",
           "glob_table", "plan_pairing", "recurrent", "regex_table", "register_rule", "unregister_rule"]
