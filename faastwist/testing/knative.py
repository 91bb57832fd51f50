"""A fake Knative Serving controller over a real Kubernetes API (an envtest apiserver).

``FakeKnative`` plays Knative Serving's controller: it writes a ksvc's ``/status`` the
way Knative does (conditions Ready/ConfigurationsReady/RoutesReady, observedGeneration,
latestCreated/ReadyRevisionName, url), synchronously and only when asked, so every
state Knative can report is reachable deterministically. The tests and the reconcile
benchmark share it, as treq ships ``treq.testing``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, List  # List: the class has a method named list

from kubernetes import client as kube_client
from kubernetes.client.rest import ApiException

from faastwist.providers import ksvc


class CallCounter:
    """Counts the HTTP requests an ApiClient really sends (wraps its REST client)."""

    def __init__(self, api_client: kube_client.ApiClient) -> None:
        self.requests: list[tuple[str, str]] = []   # (method, last path segment)
        self.urls: list[str] = []                   # every URL, with its query
        rest = api_client.rest_client
        original = rest.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.requests.append((method, url.split("?", 1)[0].rsplit("/", 1)[-1]))
            self.urls.append(url)
            return original(method, url, *args, **kwargs)

        rest.request = request  # type: ignore[method-assign]  # a spy on every request sent

    def take(self) -> list[tuple[str, str]]:
        """The requests since the last take."""
        out, self.requests = self.requests, []
        return out


def _document(answer: object) -> dict[str, Any]:
    """A custom-object call's answer: the client types it ``object``; it is the decoded
    JSON document."""
    if not isinstance(answer, dict):
        raise TypeError(f"the apiserver answered {answer!r}, not a JSON object")
    return answer


def revision(name: str, generation: int) -> str:
    return f"{name}-{generation:05d}"


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"type": kind, "status": status, "lastTransitionTime": "2024-05-01T10:00:00Z"}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


class FakeKnative:
    """Writes ksvc status the way Knative Serving's controller does, when told to."""

    def __init__(self, api_client: kube_client.ApiClient, namespace: str = "default",
                 domain: str = "example.com") -> None:
        self.api = kube_client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.domain = domain
        self.broken_images: set[str] = set()   # images that cannot be pulled

    # -- reading -----------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return _document(self.api.get_namespaced_custom_object(
                ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, controller: str | None = None) -> List[dict[str, Any]]:
        return self._cache_list(
            label_selector=ksvc.label_selector(controller) if controller else None)

    # -- the watch cache -------------------------------------------------------------------
    # The provider LISTs from the apiserver's watch cache (never older than any ksvc it
    # has seen or written), so a write by someone else, like this fake controller, shows
    # up there a few milliseconds later. The fake waits for that after each of its
    # writes, so the next pass of a test sees them for sure.
    def _cache_list(self, **kwargs: Any) -> List[dict[str, Any]]:
        items: List[dict[str, Any]] = _document(self.api.list_namespaced_custom_object(
            ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, **kwargs))["items"]
        return items

    def settle(self, *written: dict[str, Any]) -> None:
        """Return once the watch cache holds the newest of the ``written`` objects."""
        versions = [int(obj["metadata"]["resourceVersion"]) for obj in written]
        if versions:
            self._cache_list(label_selector=f"{ksvc.CONTROLLER_LABEL}=settle.none",
                             resource_version=str(max(versions)),
                             resource_version_match="NotOlderThan")

    def settle_gone(self, **selector: str) -> None:
        """Return once the watch cache no longer lists what ``selector`` matches."""
        deadline = time.monotonic() + 10
        while self._cache_list(resource_version="0", **selector):
            assert time.monotonic() < deadline, f"still listed: {selector}"
            time.sleep(0.01)

    # -- writing status ------------------------------------------------------------------
    def _patch_status(self, obj: dict[str, Any], status: dict[str, Any],
                      settle: bool = True) -> dict[str, Any]:
        written = _document(self.api.patch_namespaced_custom_object_status(
            ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, obj["metadata"]["name"],
            {"status": status}))
        if settle:
            self.settle(written)
        return written

    def _base(self, obj: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
        name = obj["metadata"]["name"]
        generation = obj["metadata"]["generation"]
        previous = obj.get("status") or {}
        status = {
            "observedGeneration": generation,
            "latestCreatedRevisionName": revision(name, generation),
            # merge patch: None removes a key Knative would not have
            "latestReadyRevisionName": previous.get("latestReadyRevisionName"),
            "url": f"http://{name}.{self.namespace}.{self.domain}",
            "address": {"url": f"http://{name}.{self.namespace}.svc.cluster.local"},
        }
        return name, generation, status

    def ready(self, obj: dict[str, Any], settle: bool = True) -> dict[str, Any]:
        name, generation, status = self._base(obj)
        status["latestReadyRevisionName"] = revision(name, generation)
        status["traffic"] = [{"revisionName": revision(name, generation),
                              "latestRevision": True, "percent": 100}]
        status["conditions"] = [_condition("ConfigurationsReady", "True"),
                                _condition("Ready", "True"), _condition("RoutesReady", "True")]
        return self._patch_status(obj, status, settle)

    def failed(self, obj: dict[str, Any], reason: str = "RevisionFailed",
               message: str | None = None, settle: bool = True) -> dict[str, Any]:
        name, generation, status = self._base(obj)
        image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
        text = message or (f'Revision "{revision(name, generation)}" failed with message: '
                           f'Unable to fetch image "{image}": failed to resolve image to '
                           f'digest: GET https://{image.split("/")[0]}/v2/: dial tcp: '
                           f'no such host.')
        routes = (_condition("RoutesReady", "True") if status["latestReadyRevisionName"]
                  else _condition("RoutesReady", "False", "RevisionMissing",
                                  f'Configuration "{name}" does not have any ready Revision.'))
        status["conditions"] = [_condition("ConfigurationsReady", "False", reason, text),
                                _condition("Ready", "False", reason, text), routes]
        return self._patch_status(obj, status, settle)

    def unknown(self, obj: dict[str, Any], reason: str = "RevisionMissing") -> dict[str, Any]:
        name, _, status = self._base(obj)
        text = f'Configuration "{name}" is waiting for a Revision to become ready.'
        status["conditions"] = [_condition("ConfigurationsReady", "Unknown", reason, text),
                                _condition("Ready", "Unknown", reason, text),
                                _condition("RoutesReady", "Unknown", reason, text)]
        return self._patch_status(obj, status)

    def mark(self, name: str, verdict: str, **kwargs: Any) -> dict[str, Any]:
        """Give ``name``'s current generation the verdict ready | failed | unknown."""
        obj = self.get(name)
        assert obj is not None, f"no ksvc {name}"
        return getattr(self, verdict)(obj, **kwargs)

    def reconcile(self, controller: str | None = None, workers: int = 8) -> int:
        """One pass of the controller: every ksvc whose generation it has not observed
        gets a verdict (failed for a broken image, else ready). Returns how many."""
        todo = [obj for obj in self.list(controller)
                if (obj.get("status") or {}).get("observedGeneration")
                != obj["metadata"]["generation"]]

        def verdict(obj: dict[str, Any]) -> dict[str, Any]:
            image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
            return (self.failed if image in self.broken_images else self.ready)(
                obj, settle=False)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            written = list(pool.map(verdict, todo))
        self.settle(*written)
        return len(todo)

    # -- behind faastwist's back ------------------------------------------------------------
    def delete(self, name: str, settle: bool = True) -> None:
        self.api.delete_namespaced_custom_object(
            ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, name)
        if settle:
            self.settle_gone(field_selector=f"metadata.name={name}")

    def delete_all(self, controller: str, workers: int = 8) -> None:
        names = [obj["metadata"]["name"] for obj in self.list(controller)]

        def gone(name: str) -> None:
            try:
                self.delete(name, settle=False)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(gone, names))
        self.settle_gone(label_selector=ksvc.label_selector(controller))

    def create_raw(self, body: dict[str, Any]) -> dict[str, Any]:
        created = _document(self.api.create_namespaced_custom_object(
            ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, body))
        self.settle(created)
        return created

    def touch(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """Change metadata (a new resourceVersion, same generation), as another client."""
        patched = _document(self.api.patch_namespaced_custom_object(
            ksvc.GROUP, ksvc.VERSION, self.namespace, ksvc.PLURAL, name,
            {"metadata": {"labels": labels}}))
        self.settle(patched)
        return patched


def names(objs: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(obj["metadata"]["name"] for obj in objs)
