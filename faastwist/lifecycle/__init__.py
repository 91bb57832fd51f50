"""The control loop: the reconciler that converges the provider with the store."""

from faastwist.lifecycle.reconciler import Action, Plan, Reconciler, plan

__all__ = ["Action", "Plan", "Reconciler", "plan"]
