"""faastwist: a FaaS gateway and controller for Knative, on Twisted."""

__version__ = "0.1.0"
