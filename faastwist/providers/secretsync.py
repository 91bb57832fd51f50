"""Secret files follow the secret store while their functions run.

OpenFaaS on Kubernetes mounts secrets as files the kubelet refreshes in place, so a
``faas-cli secret update`` reaches a running function without a redeploy. Here each
function's folder (secretfiles.py) remembers the etcd mod revision of every secret it
holds; a refresh reads the revisions of all secrets (one keys-only read), and rewrites
the folders of running functions whose secrets moved on. Files are replaced one by one
(``os.replace``), so a reader sees the old value or the new one, never half of one.
The folder is bind-mounted into the sandbox, so replicas see the new files at once.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from faastwist.providers.secretfiles import SecretFiles
from faastwist.store.secrets import reveal_deferred

log = Logger()


class SecretSync:
    """The revisions written per function, and the refresh pass (one at a time)."""

    def __init__(self, reactor: Any, threads: ThreadPool, files: SecretFiles,
                 runtimes: Mapping[str, Any]) -> None:
        self.reactor = reactor
        self.threads = threads
        self.files = files
        self.runtimes = runtimes
        #: function -> {secret: etcd mod revision} of what its folder holds
        self.revisions: dict[str, dict[str, int]] = {}
        #: one writer of secret folders at a time (deploys and refreshes share them)
        self.lock = DeferredLock()
        self._running: Deferred[None] | None = None
        self._again = False

    def write(self, name: str, found: Mapping[str, tuple[bytes, int]]) -> Deferred[None]:
        """Make ``name``'s folder hold ``found`` (``{secret: (value, revision)}``)."""
        values = {secret: value for secret, (value, _) in found.items()}

        def write() -> Deferred[None]:
            d = deferToThreadPool(self.reactor, self.threads, self.files.write, name, values)

            def written(_: object) -> None:
                self.revisions[name] = {s: revision for s, (_, revision) in found.items()}
            return d.addCallback(written)
        return self.lock.run(write)

    def remove(self, name: str) -> Deferred[None]:
        self.revisions.pop(name, None)
        return self.lock.run(deferToThreadPool, self.reactor, self.threads,
                             self.files.remove, name)

    def forget(self, name: str) -> None:
        self.revisions.pop(name, None)

    def refresh(self, secrets: Any) -> Deferred[None]:
        """Rewrite the folders whose secrets changed; a refresh asked for while one runs
        runs again after it (a change made during the pass is not missed)."""
        if self._running is not None:
            self._again = True
            return self._running
        users = {name: tuple(runtime.spec.secrets) for name, runtime in self.runtimes.items()
                 if runtime.spec.secrets and not runtime.stopped}
        if not users or secrets is None:
            return succeed(None)
        self._running = d = Deferred.fromCoroutine(self._pass(secrets, users))

        def done(_: object) -> None:
            self._running = None
            if self._again:
                self._again = False
                self.refresh(secrets)
        d.addBoth(done)
        return d

    async def _pass(self, secrets: Any, users: Mapping[str, tuple[str, ...]]) -> None:
        try:
            current = await secrets.revisions()
        except Exception as exc:
            log.warn("secrets not refreshed: {error}", error=str(exc))
            return
        for name, wanted in users.items():
            written = self.revisions.get(name, {})
            changed = [s for s in wanted if s in current and current[s] != written.get(s)]
            if not changed:
                continue   # a secret deleted meanwhile: its file stays until a redeploy
            try:
                found = await reveal_deferred(secrets, wanted, revisions=True)
                runtime = self.runtimes.get(name)
                if runtime is None or tuple(runtime.spec.secrets) != wanted:
                    continue   # deleted or redeployed meanwhile: that wrote its own
                await self.write(name, found)
            except Exception as exc:
                log.warn("function {name}: secrets {secrets} not refreshed: {error}",
                         name=name, secrets=", ".join(changed), error=str(exc))
                continue
            log.info("function {name}: secrets {secrets} changed; its files were refreshed "
                     "in place", name=name, secrets=", ".join(changed))
