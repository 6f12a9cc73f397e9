"""Redis replay store: one state shared by every replica that consumes the same queue.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError

from broker_adapter.replay_entries import (
    DIGEST_BYTES,
    TOKEN_BYTES,
    Decision,
    DecisionKind,
    Entry,
    EntryState,
    ReplayStoreError,
    is_expired,
)

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

# One release: the entry at ``key`` is deleted if ``token`` owns it.
_RELEASE_FN = f"""
local function release(key, token)
  local old = redis.call('GET', key)
  if not old or string.sub(old, {_STATE_AT}, {_STATE_AT}) ~= 'P'
     or string.sub(old, {_TOKEN_FROM}, {_TOKEN_TO}) ~= token then
    return 0
  end
  redis.call('DEL', key)
  return 1
end
"""
# KEYS[1] entry; ARGV[1] owner token.
_RELEASE_LUA = _RELEASE_FN + "return release(KEYS[1], ARGV[1])\n"
# KEYS[1..n] entries; ARGV[i] the owner token of entry i.
_RELEASE_MANY_LUA = _RELEASE_FN + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = release(key, ARGV[i])
end
return out
"""


class RedisReplayStore:
    """Replay entries in Redis under ``prefix``, through a blocking client.

    The client must return bytes (``decode_responses=False``, the default), because keys,
    digests, tokens and cached responses are binary, and it should have socket timeouts: a
    call blocks its caller (possibly the event loop) until Redis answers or the timeout ends.
    The client stays the caller's unless ``owns_client``, in which case ``close`` closes it.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "akma:replay:",
        owns_client: bool = False,
        batch_scripts: bool = True,
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses", False):
            raise ValueError("the Redis client must be created with decode_responses=False")
        self._client = client
        self._owns_client = owns_client
        self._prefix = prefix.encode("utf-8")
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._claim_many_script = client.register_script(_CLAIM_MANY_LUA)
        self._complete_script = client.register_script(_COMPLETE_LUA)
        self._complete_many_script = client.register_script(_COMPLETE_MANY_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._release_many_script = client.register_script(_RELEASE_MANY_LUA)
        # A script may only touch keys of one hash slot on a cluster: one call per key there.
        self._batch_scripts = batch_scripts and not isinstance(client, RedisCluster)

    def redis_key(self, key: bytes) -> bytes:
        """The Redis key of a replay key (for operators and tests)."""
        return self._prefix + key

    def claim_many(
        self, items: Sequence[tuple[bytes, Entry]], now_ms: int
    ) -> list[Decision | Exception]:
        calls: list[_Call | Exception] = []
        for key, candidate in items:
            try:
                calls.append(self._claim_call(key, candidate, now_ms))
            except ValueError as exc:
                calls.append(exc)
        replies = self._run(calls, lambda ready: self._claims_in_one(ready, now_ms))
        return [_decision_or_error(r) for r in replies]

    def complete_many(
        self, items: Sequence[tuple[bytes, bytes, bytes | None]], now_ms: int
    ) -> list[bool | Exception]:
        del now_ms  # Redis itself has deleted an expired entry
        calls: list[_Call | Exception] = [
            _Call(self._complete_script, [self.redis_key(key)],
                  [token, b"1", response] if response is not None else [token, b"0", b""])
            for key, token, response in items
        ]
        return _flags(self._run(calls, self._in_one(self._complete_many_script)))

    def release_many(
        self, items: Sequence[tuple[bytes, bytes]], now_ms: int
    ) -> list[bool | Exception]:
        del now_ms  # as for complete_many
        calls: list[_Call | Exception] = [
            _Call(self._release_script, [self.redis_key(key)], [token]) for key, token in items
        ]
        return _flags(self._run(calls, self._in_one(self._release_many_script)))

    def close(self) -> None:
        """Close the client only if it was made for this store."""
        if self._owns_client:
            self._client.close()

    def _claim_call(self, key: bytes, candidate: Entry, now_ms: int) -> _Call:
        if len(candidate.digest) != DIGEST_BYTES or len(candidate.token) != TOKEN_BYTES:
            raise ValueError("digest and token must have the fixed sizes of the value layout")
        if candidate.state is not EntryState.IN_PROGRESS:
            raise ValueError("a claim writes an IN_PROGRESS entry")
        value = candidate.digest + b"P" + candidate.token + str(candidate.lease_until_ms).encode()
        ttl_ms = key_ttl_ms(candidate.expires_at_ms, now_ms)
        return _Call(self._claim_script, [self.redis_key(key)], [value, now_ms, ttl_ms])

    def _claims_in_one(self, calls: list[_Call], now_ms: int) -> _Call:
        """One call of the many-keys claim script for these one-key claim calls."""
        args: list[_Arg] = [now_ms]
        for call in calls:
            args += (call.args[0], call.args[2])  # value, time to live
        return _Call(self._claim_many_script, [c.keys[0] for c in calls], args)

    @staticmethod
    def _in_one(script: Script) -> Callable[[list[_Call]], _Call]:
        """The many-keys call of ``script`` for one-key calls whose arguments simply follow
        each other (completions, releases)."""
        return lambda calls: _Call(script, [c.keys[0] for c in calls],
                                   [arg for c in calls for arg in c.args])

    def _run(
        self, calls: list[_Call | Exception], in_one: Callable[[list[_Call]], _Call]
    ) -> list[object]:
        """Send the calls in one round trip: as one call of a many-keys script (``in_one``)
        where batch scripts are on, else as a pipeline. Items that are already errors keep
        their place; a failed round trip raises ``ReplayStoreError``."""
        ready = [c for c in calls if isinstance(c, _Call)]
        if not ready:
            return list(calls)
        try:
            if self._batch_scripts and len(ready) > 1:
                [reply] = self._send([in_one(ready)])
                results = iter(_split(reply, len(ready)))
            else:
                results = iter(self._send(ready))
        except (RedisError, OSError) as exc:
            raise ReplayStoreError(f"replay store: {exc!r}") from exc
        return [c if isinstance(c, Exception) else next(results) for c in calls]

    def _send(self, batch: list[_Call]) -> list[object | Exception]:
        """One pipeline of EVALSHA calls; a call's error comes back in its place. Calls that hit
        NOSCRIPT have their script loaded and are sent once more."""
        results = self._pipeline(batch)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in {id(batch[i].script): batch[i].script for i in missing}.values():
                self._client.script_load(script.script)
            for i, result in zip(missing, self._pipeline([batch[i] for i in missing]),
                                 strict=True):
                results[i] = result
        return [ReplayStoreError(f"replay store: {r}") if isinstance(r, Exception) else r
                for r in results]

    def _pipeline(self, batch: list[_Call]) -> list[object | Exception]:
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return list(pipe.execute(raise_on_error=False))


def key_ttl_ms(expires_at_ms: int, now_ms: int) -> int:
    """The PX time to live of an entry written at ``now_ms``: Redis must keep the key through
    ``expires_at_ms`` itself (the entry's last live instant), hence the extra millisecond."""
    if is_expired(expires_at_ms, now_ms):
        raise ValueError("the candidate entry is already expired")
    return expires_at_ms - now_ms + 1


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
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


def _flags(replies: list[object]) -> list[bool | Exception]:
    return [r if isinstance(r, Exception) else r == 1 for r in replies]


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
