"""Render once: before a task renders, each of its outputs is looked up in the index
(`db/renditions.py`) by its content key (tenant, source sha256, canonical step chain, engine
version, see `contentkeys`). A retained output is copied server-side (S3 CopyObject: no
decode, no bytes through the worker) and says `reused_from`; the others are claimed, so an
identical task in flight at the same time waits for this one's render and copies it instead
of rendering it too, then rendered and kept in the index.

docs/design.md says why identical jobs are claimed in PostgreSQL rather than routed by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

from pixstream import apikeys, errors, metrics
from pixstream.contentkeys import ContentKey, output_keys, source_digest, steps_for
from pixstream.db import renditions
from pixstream.events import OUTPUT, MetadataOutput, OutputInfo, TaskRequested
from pixstream.plan import Plan
from pixstream.render import Rendered
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.handling import Message
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

#: A claim lapses this long after its task last renewed it (every RENEW_SECONDS while it
#: renders): a worker killed mid-render holds up identical tasks for at most this long.
LEASE_SECONDS: Final = 30.0
RENEW_SECONDS: Final = 10.0
#: How often a task waiting on another's claim looks again, and how long it waits at most
#: before it renders itself (a render that slow is better done twice than waited on).
POLL_SECONDS: Final = 0.1
WAIT_SECONDS: Final = 120.0

Output = OutputInfo | MetadataOutput
T = TypeVar("T")


def _nothing() -> Rendered:
    """What a task renders when every output was reused."""
    return Rendered(source_format="", source_size=(0, 0), frames=0)


class Renditions:
    """One task's use of the index, entered around its render:

        async with Renditions(res, message, source, op) as once:
            # only what was not reused; each output indexed as it is stored
            await once.render(lambda steps: render(steps, on_stored=once.keep))

    Claims not kept (a step failed, the task raised) are released on exit, so a task
    waiting on them claims them at once.
    """

    def __init__(
        self, res: Resources, message: Message[TaskRequested], source: bytes, op: str
    ) -> None:
        self._res = res
        self._task: TaskRequested = message.data
        self._task_id = message.event.id
        self._source = source
        self._op = op
        self._plan = Plan.from_spec(JobSpec(steps=self._task.steps))
        self._keys: dict[str, ContentKey] = {}  # output step id -> its key
        self._claimed: set[str] = set()  # chain keys this task holds
        self._kept: set[str] = set()  # chain keys this task indexed
        self._renew: asyncio.Task[None] | None = None
        #: Outputs copied from earlier jobs, by step id.
        self.reused: dict[str, Output] = {}
        #: The steps this task still renders (all of them when reuse does not apply).
        self.steps: list[StepSpec] = list(self._task.steps)

    async def __aenter__(self) -> Renditions:
        if not applies(self._res, self._task.tenant):
            return self
        assert self._task.tenant is not None
        digest = self._task.source_sha256  # from the endpoint's checksum, when it kept one
        if digest is None:
            digest = await asyncio.to_thread(source_digest, self._source)  # 25 MB: ~20 ms
        self._keys = output_keys(self._plan, self._task.tenant, digest)
        await self._resolve()
        left = set(self._plan.outputs) - set(self.reused)
        self.steps = steps_for(self._plan, left)
        if self._claimed:
            self._renew = asyncio.create_task(self._renewing())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        if self._claimed:
            await self._db(
                "releasing render claims", renditions.release, self._claimed_keys(), self._task_id
            )

    async def render(
        self, render_steps: Callable[[Sequence[StepSpec]], Awaitable[Rendered]]
    ) -> Rendered:
        """`render_steps(self.steps)`, or nothing when every output was reused (no decode)."""
        if not self.steps:
            return _nothing()
        metrics.RENDERS.labels(op=self._op).inc()
        return await render_steps(self.steps)

    async def keep(self, outputs: dict[str, Output]) -> None:
        """Index outputs this task rendered (and may now be copied by others): each as soon
        as it is stored, before its step is reported."""
        if not self._keys:
            return
        for sid, out in outputs.items():
            key = self._keys.get(sid)
            if key is None or sid in self.reused or key.chain_key in self._kept:
                continue
            metrics.RENDITIONS.labels(outcome="rendered").inc()
            entry = out.model_dump(mode="json", exclude={"url", "reused_from"})
            object_key = out.key if isinstance(out, OutputInfo) else None
            await self._db(
                "indexing a rendered output",
                renditions.keep,
                key,
                job_id=self._task.job_id,
                object_key=object_key,
                output=entry,
                retain_seconds=self._res.settings.retention_seconds,
            )
            self._kept.add(key.chain_key)
            self._claimed.discard(key.chain_key)

    # -- the lookup ---------------------------------------------------------------------
    async def _resolve(self) -> None:
        """Copy what is retained, claim what nobody renders, wait for what another task
        renders now; until every output is reused or this task's to render."""
        by_chain: dict[str, list[str]] = defaultdict(list)
        for sid, key in self._keys.items():
            by_chain[key.chain_key].append(sid)
        open_ = set(by_chain)
        waited: set[str] = set()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            keys = [self._keys[by_chain[ck][0]] for ck in open_]
            entries = await self._db("looking up renditions", renditions.lookup, keys)
            ready = [ck for ck in open_ if (e := entries.get(ck)) is not None and e.ready]
            copied = await asyncio.gather(
                *(self._copy(entries[ck], by_chain[ck], ck in waited) for ck in ready)
            )  # concurrent copies: each is a round trip to S3
            open_ -= {ck for ck, ok in zip(ready, copied, strict=True) if ok}
            for ck in set(open_) - set(ready):
                entry = entries.get(ck)
                if entry is None or entry.claimed_by == self._task_id:
                    key = self._keys[by_chain[ck][0]]
                    if await self._db(
                        "claiming a rendition", renditions.claim, key, self._task_id, LEASE_SECONDS
                    ):
                        self._claimed.add(ck)
                        open_.discard(ck)
                else:
                    waited.add(ck)  # another task renders it now
            if not open_:
                return
            if time.monotonic() > deadline or self._res.stopping:
                log.warning(
                    "an identical task is still rendering; rendering %d outputs here too",
                    len(open_),
                    extra={"job_id": self._task.job_id},
                )
                return  # rendered (and kept) unclaimed
            await asyncio.sleep(POLL_SECONDS)

    async def _copy(self, entry: renditions.Entry, sids: list[str], waited: bool) -> bool:
        """Copy `entry`'s object to each of `sids`' keys; False when it is gone (expired
        early, or deleted), and then forgotten."""
        copies = await _copies(self._res, self._task.job_id, entry, sids, self._keys[sids[0]])
        if copies is None:
            return False
        self.reused.update(copies)
        _count(self._task.job_id, entry, sids, "waited" if waited else "reused")
        return True

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self._db(
                    "renewing render claims",
                    renditions.renew,
                    self._claimed_keys(),
                    self._task_id,
                    LEASE_SECONDS,
                )
            except Exception:  # a lapsed claim costs a duplicate render at worst
                log.warning("render claims not renewed", exc_info=True)

    def _claimed_keys(self) -> list[ContentKey]:
        firsts = {key.chain_key: key for key in self._keys.values()}
        return [firsts[ck] for ck in self._claimed]

    async def _db(
        self, what: str, query: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        return await _db(self._res, self._task.job_id, what, query, *args, **kwargs)


def applies(res: Resources, tenant: str | None) -> bool:
    """Whether `tenant`'s jobs reuse outputs (`PIXSTREAM_REUSE`; a task without a tenant was
    sent before v2)."""
    mode = res.settings.reuse
    if tenant is None or mode == "off":
        return False
    return not (mode == "keyed" and tenant == apikeys.ANONYMOUS)


async def source_sha256(res: Resources, source_key: str) -> str | None:
    """The source's sha256 as the endpoint checked it when the object was stored (a HEAD,
    no read); None when it kept none (stored by another system without a whole-object
    SHA-256) or cannot say now: the op agent reads the source and hashes it then."""
    try:
        return await res.storage.sha256(source_key)
    except (errors.SourceUnavailable, errors.TransientError):
        return None  # the op agent's to read and report on


async def retained(
    res: Resources, job_id: str, tenant: str, plan: Plan, digest: str
) -> dict[str, Output] | None:
    """Every output of `plan` for the source of sha256 `digest` copied from the index under
    `job_id`'s keys, or None unless each one is retained: the planner answers such a job
    itself, without a task (no op topic hop, no read of the source).

    Claims are left to the op agent: a job with an output missing or being rendered gets
    its task as before. Copies made before a miss was found are overwritten by its render."""
    keys = output_keys(plan, tenant, digest)
    by_chain: dict[str, list[str]] = defaultdict(list)
    for sid, key in keys.items():
        by_chain[key.chain_key].append(sid)
    entries = await _db(
        res,
        job_id,
        "looking up renditions",
        renditions.lookup,
        [keys[s[0]] for s in by_chain.values()],
    )
    if not all((e := entries.get(ck)) is not None and e.ready for ck in by_chain):
        return None
    copied = await asyncio.gather(
        *(_copies(res, job_id, entries[ck], sids, keys[sids[0]]) for ck, sids in by_chain.items())
    )
    if any(c is None for c in copied):
        return None
    outputs: dict[str, Output] = {}
    for (ck, sids), copies in zip(by_chain.items(), copied, strict=True):
        assert copies is not None
        outputs.update(copies)
        _count(job_id, entries[ck], sids, "reused")
    return outputs


async def _copies(
    res: Resources, job_id: str, entry: renditions.Entry, sids: list[str], key: ContentKey
) -> dict[str, Output] | None:
    """`entry`'s output copied to each of `sids`' keys of `job_id`; None when its object is
    gone (expired early, or deleted), and then forgotten."""
    assert entry.output is not None
    assert entry.job_id is not None
    own = entry.job_id == job_id  # indexed by this job's earlier delivery
    copies: dict[str, Output] = {}
    for sid in sids:
        fields = dict(entry.output)
        if entry.object_key is not None:
            object_key = Plan.output_key(job_id, sid, str(fields["format"]))
            if object_key != entry.object_key:
                try:
                    await res.storage.copy(entry.object_key, object_key)
                except errors.SourceUnavailable:
                    await _db(
                        res,
                        job_id,
                        "forgetting a lost rendition",
                        renditions.forget,
                        key,
                        entry.job_id,
                    )
                    return None
            fields["key"] = object_key
        if not own:
            fields["reused_from"] = entry.job_id
        copies[sid] = OUTPUT.validate_python(fields)
    return copies


def _count(job_id: str, entry: renditions.Entry, sids: list[str], outcome: str) -> None:
    metrics.RENDITIONS.labels(outcome=outcome).inc(len(sids))
    log.info(
        "outputs reused from job %s",
        entry.job_id,
        extra={"job_id": job_id, "steps": sids, "outcome": outcome},
    )


async def _db(
    res: Resources,
    job_id: str,
    what: str,
    query: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    **kwargs: Any,
) -> T:
    """`query(conn, *args, **kwargs)`, retried in place while PostgreSQL is away."""

    async def run(conn: Any) -> T:
        return await query(conn, *args, **kwargs)

    return await res.write_db(run, what=what, job_id=job_id)
