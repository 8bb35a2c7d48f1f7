"""The requestState codec: what one replica seals, another replica holding the same key from
Vault opens; a server with another key (or none yet) opens nothing, and seals nothing before
its key is loaded."""

from __future__ import annotations

import secrets

import pytest
from mcp.server.request_state import InvalidRequestState
from pydantic import SecretStr

from server.authz.request_state import KeyNotLoaded, SharedKeyCodec


def loaded(key: SecretStr) -> SharedKeyCodec:
    codec = SharedKeyCodec()
    codec.install([key])
    return codec


def new_key() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))


def test_a_state_sealed_by_one_replica_opens_on_another_with_the_same_key() -> None:
    key = new_key()
    replica_a, replica_b = loaded(key), loaded(key)
    assert replica_b.unseal(replica_a.seal(b"state")) == b"state"


def test_a_state_sealed_under_another_key_does_not_open() -> None:
    with pytest.raises(InvalidRequestState):
        loaded(new_key()).unseal(loaded(new_key()).seal(b"state"))


def test_before_its_key_is_loaded_a_codec_neither_seals_nor_opens() -> None:
    codec = SharedKeyCodec()
    sealed = loaded(new_key()).seal(b"state")
    with pytest.raises(KeyNotLoaded):
        codec.seal(b"state")
    with pytest.raises(InvalidRequestState):
        codec.unseal(sealed)
    codec.install([new_key()])
    codec.clear()
    with pytest.raises(KeyNotLoaded):
        codec.seal(b"state")


def test_a_ring_seals_with_the_first_key_and_opens_with_any() -> None:
    old, new = new_key(), new_key()
    before = loaded(old).seal(b"old")
    ring = SharedKeyCodec()
    ring.install([new, old])
    assert ring.unseal(before) == b"old"
    assert loaded(new).unseal(ring.seal(b"new")) == b"new"


def test_a_short_key_is_refused_and_no_key_shows_in_repr() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SharedKeyCodec().install([SecretStr("short")])
    key = new_key()
    assert key.get_secret_value() not in repr(loaded(key))
