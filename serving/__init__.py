"""Task contracts for vendors (what a bundle must expose), and production serving."""

from pilots.registry import load_plugins
from serving.contracts import CONTRACTS, Contract, ContractViolation, get_contract, register_contract

__all__ = ["CONTRACTS", "Contract", "ContractViolation", "get_contract", "register_contract"]

load_plugins("serving")
