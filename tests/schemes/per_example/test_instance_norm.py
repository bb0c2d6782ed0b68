"""InstanceNorm against the operation contract (tests/operation_contract.py), under every implementation."""

from norm_cases import CASES
from operation_contract import OperationContract


class TestInstanceNorm(OperationContract):
    cases = [c for c in CASES if c.op == "instance_norm"]
