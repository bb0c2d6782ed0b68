"""LayerNorm against the operation contract (tests/operation_contract.py), under every implementation."""

from norm_cases import CASES
from operation_contract import OperationContract


class TestLayerNorm(OperationContract):
    cases = [c for c in CASES if c.op == "layer_norm"]
