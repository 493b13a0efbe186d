"""The content-addressed store."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datatool.core.store import Store, encode_png, pixel_digest


def test_round_trip_is_lossless_and_addressed_by_pixels(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    digest = store.put_array(arr)
    assert digest == pixel_digest(arr) and digest in store
    np.testing.assert_array_equal(store.get_array(digest), arr)
    assert store.put_array(arr.copy()) == digest  # same pixels, same object
    assert pixel_digest(arr.T.copy()) != digest  # same bytes, other shape: other object
    with Image.open(store.path_for(digest)) as img:  # a PNG any reader opens
        assert img.mode == "L" and img.size == (53, 37)
    assert store.verify(digest)


def test_only_2d_uint8(tmp_path):
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        Store(tmp_path).put_array(np.zeros((4, 4), np.uint16))


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    from datatool.core.atomic import write_bytes_atomic

    target = tmp_path / "a" / "f.bin"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two" and (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_fast_reader_agrees_with_pillow_and_falls_back(tmp_path):
    import io

    from datatool.core.store import decode_png, decode_png_fast

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (31, 17), dtype=np.uint8)
    ours = encode_png(arr)
    fast = decode_png_fast(ours)  # the store's own files take the direct path
    assert fast is not None
    np.testing.assert_array_equal(fast, arr)
    np.testing.assert_array_equal(decode_png(ours), arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=9)  # filtered rows: Pillow
    assert decode_png_fast(buf.getvalue()) is None
    np.testing.assert_array_equal(decode_png(buf.getvalue()), arr)
    cut = ours[:-12] + b"\x00\x00\x00\x00tEXt" + ours[-8:]  # no IEND where it belongs
    assert decode_png_fast(cut) is None


def test_the_store_reads_its_own_pngs_without_pillow(tmp_path, monkeypatch):
    """Every mask and image the store wrote is read by the direct path: with Pillow's
    opener out of reach the reads still work (and a foreign PNG, which needs Pillow, fails)."""
    import io

    import datatool.core.store as store_module

    store = Store(tmp_path)
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1, 1), (40, 50))]
    arrays.append(np.zeros((480, 640), np.uint8))  # ultrasound's black: one small IDAT
    digests = [store.put_array(a) for a in arrays]
    foreign = io.BytesIO()
    Image.fromarray(arrays[1]).save(foreign, format="PNG", compress_level=9)

    def no_pillow(*args, **kwargs):
        raise AssertionError("the store's own PNG went through Pillow")

    monkeypatch.setattr(store_module.Image, "open", no_pillow)
    for digest, arr in zip(digests, arrays):
        np.testing.assert_array_equal(store.get_array(digest), arr)
    with pytest.raises(AssertionError, match="through Pillow"):
        store_module.decode_png(foreign.getvalue())
