"""Providers run functions: Knative (a Kubernetes cluster) or local processes."""
