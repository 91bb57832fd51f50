"""Functions as Kubernetes objects: the ``functions.faastwist.io`` CRD, and the leader's
watch that makes the store match the objects (and writes their status back).

``schema`` generates the CRD from the function spec's record; ``objects`` turns objects
into specs and records into status and objects (pure); ``kubeapi`` runs the client calls
and the watch streams on threads it owns; ``sync`` decides and writes on the reactor;
``service`` starts it on the leader. The REST APIs keep off owned functions through
``faastwist.store.owned``.
"""

__all__ = ["kubeapi", "objects", "schema", "service", "sync"]
