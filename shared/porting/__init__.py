"""The porting kit's framework-free half: weight-mapping rules and pairing by module path (pure numpy)."""

from shared.porting.pairing import ModelTree, PairingError, Plan, plan_pairing
from shared.porting.rules import Rule, RuleError, find_rule, register_rule, unregister_rule

__all__ = ["ModelTree", "PairingError", "Plan", "Rule", "RuleError", "find_rule", "plan_pairing", "register_rule",
           "unregister_rule"]
