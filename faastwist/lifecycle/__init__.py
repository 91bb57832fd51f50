"""The control loop: the reconciler that converges the provider with the store."""

from faastwist.lifecycle.reconciler import Reconciler

__all__ = ["Reconciler"]
