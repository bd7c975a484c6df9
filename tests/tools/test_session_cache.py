import threading
import time

import numpy as np
import pytest

from lib.tools.base import SegOutput, ToolSession
from lib.tools.cache import SessionCache


class Dummy(ToolSession):
    def predict(self, box=None, points=(), labels=(), mask_logits=None):
        return SegOutput(mask=np.zeros(self.shape, bool), logits=np.zeros((1, 256, 256), np.float32))


def make(nbytes=10):
    return Dummy(shape=(4, 4), nbytes=nbytes)


def test_second_get_is_a_hit_and_does_not_start():
    cache, calls = SessionCache(max_bytes=100), []
    s1, hit1 = cache.get_or_start("a", lambda: calls.append(1) or make())
    s2, hit2 = cache.get_or_start("a", lambda: calls.append(1) or make())
    assert s1 is s2 and (hit1, hit2) == (False, True) and len(calls) == 1


def test_lru_eviction_respects_the_byte_bound():
    cache = SessionCache(max_bytes=25)
    for k in "abc":
        cache.get_or_start(k, lambda: make(10))
    assert "a" not in cache and "b" in cache and "c" in cache and cache.nbytes <= 25
    cache.get_or_start("b", lambda: make(10))  # touch b: c becomes least recent
    cache.get_or_start("d", lambda: make(10))
    assert "c" not in cache and "b" in cache and "d" in cache


def test_concurrent_misses_on_one_key_encode_once():
    cache, calls = SessionCache(max_bytes=1000), []

    def slow_start():
        calls.append(1)
        time.sleep(0.2)
        return make()

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_or_start("k", slow_start)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(s is out[0] for s in out)


def test_rejects_a_nonpositive_bound():
    with pytest.raises(ValueError, match="> 0"):
        SessionCache(max_bytes=0)
