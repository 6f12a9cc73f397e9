"""Redis replay store: one state shared by every replica that consumes the same queue.

Each operation is one Lua script, which Redis runs atomically, so N replicas racing for a key
see exactly one PROCESS. Scripts are sent with EVALSHA and loaded on a NOSCRIPT error (the
client's ``register_script`` does this), so the script text crosses the wire once per server.

Batch scripts: the claims of a batch (``claim_many``) go as ONE call of a script that claims
each of its keys in turn, and so do the completions of a batch; per message that saves building,
sending and parsing a command of its own, most of a claim's client-side cost (40 us per claim
on the bench machine, docs/benchmarks.md item 18). Each key is still decided alone, by the same
Lua function as a one-key call. On a Redis Cluster a script may only touch keys of one hash
slot, so with a ``RedisCluster`` client every message keeps a one-key call
(``batch_scripts=False`` forces that anywhere; the contract tests run both ways).

An entry is a single string value with a PX expiry (Redis deletes it when its message could no
longer pass the timestamp check), laid out to stay small:

    IN_PROGRESS  digest(16) 'P' token(8) lease_until_ms (decimal)
    DONE         digest(16) 'D'
    DONE         digest(16) 'R' cached response

The Lua code mirrors ``broker_adapter.replay.decide``, ``completed_entry`` and
``may_release``; the integration tests hold the two to the same behaviour.

Pipelining: operations made in the same turn of the event loop (a consumer's prefetched
deliveries reach ``claim`` together) go to Redis as one pipeline of EVALSHA calls, one round
trip for all of them; each script still runs atomically and each caller gets its own reply. A
script the server does not know (after a restart or ``SCRIPT FLUSH``) is loaded and only the
calls that hit NOSCRIPT are sent again.

Given a blocking client too (``sync_client``), the store claims from a worker thread
(``claim_many_sync``): a consumer that opens a batch on its envelope thread claims it there
with one call, and the loop neither sends it nor parses the replies (docs/benchmarks.md,
item 17). Completions and releases stay on the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis as SyncRedis
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from broker_adapter.replay import (
    DIGEST_BYTES,
    TOKEN_BYTES,
    Decision,
    DecisionKind,
    Entry,
    EntryState,
    ReplayStoreError,
)
from broker_adapter.turn_batch import TurnBatcher

# What the scripts take as arguments (and redis-py encodes): byte strings and integers.
_Arg = bytes | int

# Reply codes of the claim script, in the order of the checks in ``decide``.
_CLAIMED_NEW, _RECLAIMED, _IN_PROGRESS, _DONE, _CONFLICT = 0, 1, 2, 3, 4

_STATE_AT = DIGEST_BYTES + 1  # 1-based position of the state byte, for Lua's string.sub
_TOKEN_FROM = _STATE_AT + 1
_TOKEN_TO = _STATE_AT + TOKEN_BYTES

# One claim: the entry at ``key``, the new IN_PROGRESS value, now_ms (a number), time to live.
_CLAIM_FN = f"""
local function claim(key, new, now, ttl)
  local old = redis.call('GET', key)
  if old then
    if string.sub(old, 1, {DIGEST_BYTES}) ~= string.sub(new, 1, {DIGEST_BYTES}) then
      return {{{_CONFLICT}}}
    end
    local state = string.sub(old, {_STATE_AT}, {_STATE_AT})
    if state == 'D' then return {{{_DONE}}} end
    if state == 'R' then return {{{_DONE}, string.sub(old, {_STATE_AT + 1})}} end
    local lease = tonumber(string.sub(old, {_TOKEN_TO + 1}))
    if lease > now then return {{{_IN_PROGRESS}, lease}} end
    redis.call('SET', key, new, 'PX', ttl)
    return {{{_RECLAIMED}}}
  end
  redis.call('SET', key, new, 'PX', ttl)
  return {{{_CLAIMED_NEW}}}
end
"""
# KEYS[1] entry; ARGV[1] the new IN_PROGRESS value, ARGV[2] now_ms, ARGV[3] time to live in ms.
_CLAIM_LUA = _CLAIM_FN + "return claim(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])\n"
# KEYS[1..n] entries; ARGV[1] now_ms, then for entry i: ARGV[2i] its value, ARGV[2i+1] its time
# to live. One reply per entry, in order: a batch in one call instead of one call per message.
_CLAIM_MANY_LUA = _CLAIM_FN + """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = claim(key, ARGV[2 * i], now, ARGV[2 * i + 1])
end
return out
"""

# One completion: the entry at ``key``, the owner token, '1' if a response follows, the response.
# KEEPTTL: finishing a message must not extend or shorten how long it is remembered.
_COMPLETE_FN = f"""
local function complete(key, token, has_response, response)
  local old = redis.call('GET', key)
  if not old or string.sub(old, {_STATE_AT}, {_STATE_AT}) ~= 'P'
     or string.sub(old, {_TOKEN_FROM}, {_TOKEN_TO}) ~= token then
    return 0
  end
  local done
  if has_response == '1' then
    done = string.sub(old, 1, {DIGEST_BYTES}) .. 'R' .. response
  else
    done = string.sub(old, 1, {DIGEST_BYTES}) .. 'D'
  end
  redis.call('SET', key, done, 'KEEPTTL')
  return 1
end
"""
# KEYS[1] entry; ARGV[1] owner token, ARGV[2] '1' if a response follows, ARGV[3] the response.
_COMPLETE_LUA = _COMPLETE_FN + "return complete(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"
# KEYS[1..n] entries; for entry i: ARGV[3i-2] token, ARGV[3i-1] response flag, ARGV[3i] response.
_COMPLETE_MANY_LUA = _COMPLETE_FN + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = complete(key, ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i])
end
return out
"""

# KEYS[1] entry; ARGV[1] owner token.
_RELEASE_LUA = f"""
local old = redis.call('GET', KEYS[1])
if not old or string.sub(old, {_STATE_AT}, {_STATE_AT}) ~= 'P'
   or string.sub(old, {_TOKEN_FROM}, {_TOKEN_TO}) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisReplayStore:
    """Replay entries in Redis under ``prefix``; the client stays the caller's unless
    ``owns_client``.

    The client must return bytes (``decode_responses=False``, the default), because keys,
    digests, tokens and cached responses are binary.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = "akma:replay:",
        *,
        owns_client: bool = False,
        sync_client: SyncRedis | None = None,
        batch_scripts: bool | None = None,
    ) -> None:
        for each in (client, sync_client):
            if each is not None and each.connection_pool.connection_kwargs.get(
                    "decode_responses", False):
                raise ValueError("the Redis client must be created with decode_responses=False")
        self._client = client
        # For ``claim_many_sync`` only, used from one worker thread; it should have a socket
        # timeout, since that thread also opens envelopes and must not hang on a dead server.
        self._sync_client = sync_client
        # True when the store was handed a client made for it alone (the runtime does that):
        # then ``close`` closes the client's connections too.
        self._owns_client = owns_client
        self._prefix = prefix.encode("utf-8")
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._complete_script = client.register_script(_COMPLETE_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._claim_many_script = client.register_script(_CLAIM_MANY_LUA)
        self._complete_many_script = client.register_script(_COMPLETE_MANY_LUA)
        # A batch's claims (and completions) as ONE script call over all its keys: the client
        # builds and parses one command instead of one per message. A script may only touch
        # keys of one hash slot on a Redis Cluster, so there every message keeps its own call.
        self._batch_scripts = (
            not isinstance(client, RedisCluster) if batch_scripts is None else batch_scripts
        )
        # Pipelining: the calls of one loop turn, one round trip.
        self._batches: TurnBatcher[_Call, object] = TurnBatcher(
            self._run_batch, lambda exc: ReplayStoreError(f"replay store: {exc!r}")
        )

    @property
    def claims_in_thread(self) -> bool:
        return self._sync_client is not None

    def claim_many_sync(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        """``claim_many`` with the blocking client, from a worker thread (never the event
        loop's). Raises ``ReplayStoreError`` if the pipeline failed."""
        if self._sync_client is None:
            raise ReplayStoreError("replay store: no blocking Redis client to claim from a thread")
        calls = self._claim_calls(items, now_ms)
        ready = [c for c in calls if isinstance(c, _Call)]
        client = self._sync_client
        try:
            if self._batch_scripts and len(ready) > 1:
                [reply] = self._run_batch_sync(client, [self._claims_in_one(ready, now_ms)])
                replies = iter(_split(reply, len(ready)))
            else:
                replies = iter(self._run_batch_sync(client, ready) if ready else [])
        except Exception as exc:
            raise ReplayStoreError(f"replay store: {exc!r}") from exc
        return [c if isinstance(c, Exception) else _decision_or_error(next(replies))
                for c in calls]

    def redis_key(self, key: bytes) -> bytes:
        """The Redis key of a replay key (for operators and tests)."""
        return self._prefix + key

    async def claim(self, key: bytes, candidate: Entry, now_ms: int) -> Decision:
        return _decision(await self._batches.submit(self._claim_call(key, candidate, now_ms)))

    async def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        # The list joins the turn's pipeline as one submission: one future, not one per item.
        calls = self._claim_calls(items, now_ms)
        merged = await self._run_calls(calls, lambda ready: self._claims_in_one(ready, now_ms))
        return [_decision_or_error(r) for r in merged]

    def _claim_calls(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[_Call | Exception]:
        calls: list[_Call | Exception] = []
        for key, candidate in items:
            try:
                calls.append(self._claim_call(key, candidate, now_ms))
            except ValueError as exc:
                calls.append(exc)
        return calls

    async def complete(self, key: bytes, token: bytes, response: bytes | None, now_ms: int) -> bool:
        # now_ms is not needed: Redis itself has deleted an expired entry.
        del now_ms
        return await self._batches.submit(self._complete_call(key, token, response)) == 1

    async def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        del now_ms
        calls: list[_Call | Exception] = [self._complete_call(k, t, r) for k, t, r in items]
        replies = await self._run_calls(calls, self._completions_in_one)
        return [r if isinstance(r, Exception) else r == 1 for r in replies]

    def _claim_call(self, key: bytes, candidate: Entry, now_ms: int) -> _Call:
        if len(candidate.digest) != DIGEST_BYTES or len(candidate.token) != TOKEN_BYTES:
            raise ValueError("digest and token must have the fixed sizes of the value layout")
        if candidate.state is not EntryState.IN_PROGRESS:
            raise ValueError("a claim writes an IN_PROGRESS entry")
        ttl_ms = candidate.expires_at_ms - now_ms
        if ttl_ms <= 0:
            raise ValueError("the candidate entry is already expired")
        value = candidate.digest + b"P" + candidate.token + str(candidate.lease_until_ms).encode()
        return _Call(self._claim_script, [self.redis_key(key)], [value, now_ms, ttl_ms])

    def _claims_in_one(self, calls: list[_Call], now_ms: int) -> _Call:
        """One call of the many-keys claim script for these one-key claim calls."""
        args: list[_Arg] = [now_ms]
        for call in calls:
            args += (call.args[0], call.args[2])  # value, time to live
        return _Call(self._claim_many_script, [c.keys[0] for c in calls], args)

    def _completions_in_one(self, calls: list[_Call]) -> _Call:
        """One call of the many-keys completion script for these one-key completion calls."""
        return _Call(self._complete_many_script, [c.keys[0] for c in calls],
                     [arg for c in calls for arg in c.args])

    def _complete_call(self, key: bytes, token: bytes, response: bytes | None) -> _Call:
        args: list[_Arg] = (
            [token, b"1", response] if response is not None else [token, b"0", b""]
        )
        return _Call(self._complete_script, [self.redis_key(key)], args)

    async def _run_calls(
        self, calls: list[_Call | Exception], in_one: Callable[[list[_Call]], _Call]
    ) -> list[object]:
        """The calls join this loop turn's pipeline together (one future for all of them),
        as one call of a many-keys script (``in_one``) where batch scripts are on; items that
        are already errors keep their place. A failed pipeline raises ``ReplayStoreError``
        (the batcher's ``on_failure``)."""
        ready = [c for c in calls if isinstance(c, _Call)]
        if self._batch_scripts and len(ready) > 1:
            results = iter(_split(await self._batches.submit(in_one(ready)), len(ready)))
        else:
            results = iter(await self._batches.submit_many(ready) if ready else [])
        return [c if isinstance(c, Exception) else next(results) for c in calls]

    async def release(self, key: bytes, token: bytes, now_ms: int) -> bool:
        del now_ms
        return await self._call_flag(self._release_script, key, [token])

    async def close(self) -> None:
        """Finish queued calls; close the client only if it was made for this store."""
        await self._batches.drain()
        if self._owns_client:
            await self._client.aclose()
            if self._sync_client is not None:
                self._sync_client.close()

    async def _call_flag(self, script: AsyncScript, key: bytes, args: list[bytes]) -> bool:
        return bool(await self._call(script, key, args) == 1)

    # ---- pipelining: one round trip per loop turn ---------------------------------------

    async def _call(self, script: AsyncScript, key: bytes, args: Sequence[_Arg]) -> object:
        return await self._batches.submit(_Call(script, [self.redis_key(key)], list(args)))

    async def _run_batch(self, batch: list[_Call]) -> list[object | Exception]:
        results = await self._send(batch)
        missing, scripts = _lost_scripts(batch, results)
        if missing:
            # The server lost our scripts: load each one, then resend only those calls.
            for script in scripts:
                await self._client.script_load(script.script)
            for i, result in zip(missing, await self._send([batch[i] for i in missing]),
                                 strict=True):
                results[i] = result
        return _store_errors(results)

    async def _send(self, batch: list[_Call]) -> list[object | Exception]:
        """One pipeline of EVALSHA calls; a call's error comes back in its place."""
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))

    @staticmethod
    def _run_batch_sync(client: SyncRedis, batch: list[_Call]) -> list[object | Exception]:
        """``_run_batch`` with the blocking client: the same pipeline and NOSCRIPT recovery."""

        def send(calls: list[_Call]) -> list[object | Exception]:
            pipe = client.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(pipe.execute(raise_on_error=False))

        results = send(batch)
        missing, scripts = _lost_scripts(batch, results)
        if missing:
            for script in scripts:
                client.script_load(script.script)
            for i, result in zip(missing, send([batch[i] for i in missing]), strict=True):
                results[i] = result
        return _store_errors(results)


@dataclass(frozen=True, slots=True)
class _Call:
    script: AsyncScript
    keys: list[bytes]
    args: list[_Arg]


def _split(reply: object, count: int) -> list[object]:
    """The per-key replies of one many-keys script call; an error (or a reply of the wrong
    shape) is every key's answer."""
    if isinstance(reply, Exception):
        return [reply] * count
    if not isinstance(reply, list) or len(reply) != count:
        error = ReplayStoreError(f"replay store: {count} replies expected, got {reply!r:.80}")
        return [error] * count
    return reply


def _lost_scripts(
    batch: list[_Call], results: list[object | Exception]
) -> tuple[list[int], list[AsyncScript]]:
    """The calls that hit NOSCRIPT, and each script they need loaded once."""
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    scripts = {id(batch[i].script): batch[i].script for i in missing}
    return missing, list(scripts.values())


def _store_errors(results: list[object | Exception]) -> list[object | Exception]:
    return [ReplayStoreError(f"replay store: {r}") if isinstance(r, Exception) else r
            for r in results]


def _decision_or_error(reply: object) -> Decision | Exception:
    if isinstance(reply, Exception):
        return reply
    try:
        return _decision(reply)
    except ReplayStoreError as exc:
        return exc


def _decision(reply: object) -> Decision:
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise ReplayStoreError(f"replay store: unexpected script reply {reply!r}")
    code = reply[0]
    if code == _CLAIMED_NEW:
        return Decision(DecisionKind.PROCESS_NEW)
    if code == _RECLAIMED:
        return Decision(DecisionKind.PROCESS_RECLAIMED)
    if code == _IN_PROGRESS:
        return Decision(DecisionKind.DUPLICATE_IN_PROGRESS, lease_until_ms=int(reply[1]))
    if code == _DONE:
        response = reply[1] if len(reply) > 1 else None
        if response is not None and not isinstance(response, bytes):
            raise ReplayStoreError("replay store: cached response is not bytes")
        return Decision(DecisionKind.DUPLICATE_DONE, response=response)
    if code == _CONFLICT:
        return Decision(DecisionKind.CONFLICT)
    raise ReplayStoreError(f"replay store: unknown script reply code {code}")
