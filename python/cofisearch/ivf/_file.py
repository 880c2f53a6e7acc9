"""The file and pickle format of :class:`~cofisearch.IVFBinaryIndex`: what ``save``,
``load_index`` and pickling write and read, and the checks that refuse what ``train``,
``add`` and ``remove`` could not have produced."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from typing import NamedTuple

import numpy as np

from .._files import atomic_write, byte_chunks
from .._index import MAX_NBITS
from .._rows import MAX_ROWS

#: The widest codes of the asymmetric screen.
MAX_SCREEN_BITS = 8192

# ---- persistence ------------------------------------------------------------------------
#
# File layout (little-endian), kind 3 of the container that cofisearch.load_index reads:
#   0  magic      8 bytes  b"COFISRCH"
#   8  version    u32      1, the container's version
#  12  kind       u32      3 = inverted-file binary index
#  16  nbits      u64
#  24  ntotal     u64
#  32  routing    u32      0 = untrained, 1 = codes, 2 = vectors
#  36  layout     u32      1, this layout's version
#  40  payload    u64      bytes after the 128-byte header
#  48  checksum   u32      CRC-32 of the header (this field as zero) and the payload
#  52  niter      u32
#  56  nlist      u64
#  64  dim        u64      0 unless routed by vectors
#  72  nprobe     u64
#  80  seed       u64
#  88  max_points_per_centroid  u64
#  96  screen     u32      0 = Hamming, 1 = asymmetric (layout 2 only; zero in layout 1)
# 100  reserved   u32      0
# 104  screen_bits u64     bits of the asymmetric codes, 0 if none (or not yet chosen)
# 112  next_id    u64      the id the next add without ids gives (layout 3 only; zero in
#                          layouts 1 and 2)
# 120  zero padding up to 128.
# Then, each padded with zeros to a multiple of 64 bytes (so that a memory map of any of
# them is aligned), for a trained index: the centroids (nlist x code_size uint8, or
# nlist x dim float32), the list sizes (nlist int64), the ids (ntotal int64, list by
# list) and the codes (ntotal x code_size uint8, in the same order); for the asymmetric
# screen, then the rotation (dim x screen_bits float32), the lists' centre scales (nlist
# float32), its codes (ntotal x screen_bits / 8 uint8) and factors (ntotal float32), in
# the same order.
#
# Layout 3 (written since the caller's ids and removals) holds any unique non-negative ids
# below next_id, in any order within a list. Layouts 1 and 2 (1: the Hamming-only index
# before the asymmetric screen, 2: with it) hold the ids 0 .. ntotal - 1, ascending within
# each list, and next_id is ntotal: files of every layout load.

_MAGIC = b"COFISRCH"
_CONTAINER_VERSION = 1
_KIND = 3
_LAYOUTS = (1, 2, 3)
_HEAD = struct.Struct("<8sIIQQIIQIIQQQQQIIQQ")
_HEADER_SIZE = 128
_CRC_OFFSET = 48
_ALIGN = 64


class _Settings(NamedTuple):
    nbits: int
    nlist: int
    nprobe: int
    seed: int
    niter: int
    max_points: int
    routing: int
    dim: int
    ntotal: int
    screen: int = 0
    screen_bits: int = 0
    #: -1 for the ids of layouts 1 and 2 (0 .. ntotal - 1), else the next sequential id.
    next_id: int = -1


def _layout(s):
    return (1, 2)[s.screen] if s.next_id < 0 else 3


def _header(s, payload, checksum=0):
    head = _HEAD.pack(
        _MAGIC, _CONTAINER_VERSION, _KIND, s.nbits, s.ntotal, s.routing, _layout(s), payload,
        checksum, s.niter, s.nlist, s.dim, s.nprobe, s.seed, s.max_points, s.screen, 0,
        s.screen_bits, max(s.next_id, 0),
    )
    return head + b"\0" * (_HEADER_SIZE - len(head))


def _padded(nbytes):
    return -(-nbytes // _ALIGN) * _ALIGN


def _sections(s):
    """(dtype, shape) of each payload section of an index with settings ``s``."""
    if s.routing == 0:
        return []
    nbytes = s.nbits // 8
    cent = (np.dtype(np.uint8), (s.nlist, nbytes)) if s.routing == 1 else (
        np.dtype(np.float32), (s.nlist, s.dim))
    out = [cent, (np.dtype(np.int64), (s.nlist,)), (np.dtype(np.int64), (s.ntotal,)),
           (np.dtype(np.uint8), (s.ntotal, nbytes))]
    if s.screen:
        out += [(np.dtype(np.float32), (s.dim, s.screen_bits)), (np.dtype(np.float32), (s.nlist,)),
                (np.dtype(np.uint8), (s.ntotal, s.screen_bits // 8)), (np.dtype(np.float32), (s.ntotal,))]
    return out


def _payload_size(s):
    return sum(_padded(int(np.prod(shape)) * dtype.itemsize) for dtype, shape in _sections(s))


def _payload(arrays):
    """The payload's bytes in order, each array padded with zeros to the alignment."""
    for a in arrays:
        if a is None:
            continue
        flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        yield from byte_chunks(flat)
        yield b"\0" * (_padded(flat.size) - flat.size)


def _checksum(settings, arrays):
    crc = zlib.crc32(_header(settings, _payload_size(settings)))
    for chunk in _payload(arrays):
        crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def _save(path, settings, *arrays):
    header = _header(settings, _payload_size(settings), _checksum(settings, arrays))

    def write(f):
        f.write(header)
        for chunk in _payload(arrays):
            f.write(chunk)

    # Written beside the target, then renamed over it: a crash mid-save leaves the old file.
    atomic_write(path, write)


# Settings of the pickles written before the screen fields (the Hamming-only index) and
# before next_id (ids 0 .. ntotal - 1).
_OLD_SETTINGS = (9, 11)


def _restore(settings, centroids, sizes, ids, codes, checksum, rotation=None, scale=None,
             acodes=None, factors=None):
    """Rebuilds an index from a pickle, refusing what ``add`` or ``train`` could not have
    produced and parts whose CRC does not match."""
    if isinstance(settings, tuple) and len(settings) == _OLD_SETTINGS[0]:
        settings += (0, 0)  # a Hamming index, pickled before the asymmetric screen
    if isinstance(settings, tuple) and len(settings) == _OLD_SETTINGS[1]:
        settings += (-1,)
    problem = _settings_problem(settings)
    if problem is None:
        settings = _Settings(*settings)
        arrays = [centroids, sizes, ids, codes, rotation, scale, acodes, factors]
        problem = _parts_problem(settings, arrays)
    if problem:
        raise ValueError(f"cannot restore an IVFBinaryIndex: {problem}")
    arrays = [None if a is None else np.ascontiguousarray(a) for a in arrays]
    if type(checksum) is not int or checksum != _checksum(settings, arrays):
        raise ValueError("cannot restore an IVFBinaryIndex: checksum mismatch (corrupted pickle)")
    return _build(settings, *arrays)


def _build(s, centroids, sizes, ids, codes, rotation=None, scale=None, acodes=None, factors=None):
    # Here rather than at the top: the package imports this module.
    from . import _ROUTINGS, _SCREENS, IVFBinaryIndex, _Routing, _vector_routing
    from ._lists import _lists_from

    index = IVFBinaryIndex(s.nbits, s.nlist, nprobe=s.nprobe, seed=s.seed, niter=s.niter,
                           max_points_per_centroid=s.max_points, screen=_SCREENS[s.screen],
                           screen_bits=s.screen_bits or None)
    if s.routing == 0:
        return index
    kind = _ROUTINGS[s.routing]
    routing = (_Routing(kind, centroids, float("nan")) if kind == "codes"
               else _vector_routing(centroids, rotation, scale))
    screened = () if rotation is None else (acodes, factors)
    next_id = s.ntotal if s.next_id < 0 else s.next_id
    index._state = (routing,
                    _lists_from(sizes, ids, codes, *screened, next_id=next_id))
    return index


def _settings_problem(settings):
    if not isinstance(settings, tuple) or len(settings) != len(_Settings._fields):
        return f"settings must be a tuple of {len(_Settings._fields)} ints"
    if any(type(v) is not int for v in settings):  # not bool, float or NumPy scalars
        return f"settings must be ints, got {settings!r}"
    s = _Settings(*settings)
    if s.nbits < 8 or s.nbits % 8 or s.nbits > MAX_NBITS:
        return f"nbits {s.nbits} is not a multiple of 8 in [8, {MAX_NBITS}]"
    if not 1 <= s.nlist <= MAX_ROWS or not 1 <= s.nprobe or not 0 <= s.seed < 2**63:
        return f"nlist {s.nlist}, nprobe {s.nprobe} or seed {s.seed} out of range"
    if not 1 <= s.niter < 2**31 or not 1 <= s.max_points <= MAX_ROWS:
        return f"niter {s.niter} or max_points_per_centroid {s.max_points} out of range"
    if s.routing not in (0, 1, 2) or (s.dim > 0) != (s.routing == 2) or s.dim < 0:
        return f"routing {s.routing} with dim {s.dim} is not a valid routing"
    if not 0 <= s.ntotal <= MAX_ROWS or (s.routing == 0 and s.ntotal):
        return f"ntotal {s.ntotal} does not fit routing {s.routing}"
    if s.dim > 2**31 or s.nlist * max(s.dim * 4, s.nbits // 8) > 2**40:
        return f"centroids of {s.nlist} x dim {s.dim} are too large"
    if s.screen not in (0, 1) or (s.screen == 0 and s.screen_bits):
        return f"screen {s.screen} with screen_bits {s.screen_bits} is not a valid screen"
    if s.next_id < -1 or (s.next_id >= 0 and s.next_id < s.ntotal):
        return f"next_id {s.next_id} is below ntotal {s.ntotal}"
    if s.screen_bits and (s.screen_bits % 64 or not 64 <= s.screen_bits <= MAX_SCREEN_BITS):
        return f"screen_bits {s.screen_bits} is not a multiple of 64 in [64, {MAX_SCREEN_BITS}]"
    if s.screen and s.routing and (s.routing != 2 or s.screen_bits < s.dim):
        return (f"an asymmetric screen needs a vector routing and screen_bits >= dim, got routing "
                f"{s.routing}, screen_bits {s.screen_bits}, dim {s.dim}")
    return None


def _parts_problem(s, arrays):
    """Why ``arrays`` (centroids, sizes, ids, codes, rotation, scale, screen codes,
    factors) cannot be an index with settings ``s``, or None: the layout, finite unit
    centroids, sizes adding up to ntotal, unique ids in ``[0, next_id)`` (layouts 1 and 2:
    every id below ntotal once, ascending within each list), and for the asymmetric
    screen a finite rotation and scale and finite factors >= 0."""
    if s.routing == 0:
        return None if all(a is None for a in arrays) else "an untrained index holds no arrays"
    sections = _sections(s)
    if any(a is not None for a in arrays[len(sections):]):
        return "an index without the asymmetric screen holds no rotation, scale, screen codes or factors"
    names = ("centroids", "sizes", "ids", "codes", "rotation", "scale", "screen codes", "factors")
    for a, (dtype, shape), name in zip(arrays, sections, names):
        if isinstance(a, np.ma.MaskedArray):
            return f"{name} must not be a masked array (its mask would be ignored)"
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            return f"{name} must be a {shape} array of {dtype}, got {got}"
    centroids, sizes, ids, _, rotation, scale, _, factors = arrays
    if s.screen and not all(np.isfinite(a).all() for a in (rotation, scale, factors)):
        return "the rotation, scale and factors must be finite"
    if s.screen and (factors < 0).any():
        return "the factors must be >= 0"
    if s.routing == 2:
        if not np.isfinite(centroids).all():
            return "centroids hold NaN or infinite values"
        norms = np.sqrt(np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64))
        if (np.abs(norms - 1) > 1e-4).any():
            return "centroids of a vector routing must have unit norm"
    if (sizes < 0).any() or int(sizes.sum()) != s.ntotal:
        return f"list sizes must be >= 0 and add up to ntotal {s.ntotal}"
    if s.ntotal and s.next_id >= 0:
        if int(ids.min()) < 0 or int(ids.max()) >= s.next_id:
            return f"ids must lie in [0, next_id {s.next_id})"
        ordered = np.sort(ids)
        if (ordered[1:] == ordered[:-1]).any():
            return "ids must be unique"
    elif s.ntotal:
        if int(ids.min()) < 0 or int(ids.max()) >= s.ntotal:
            return f"ids must lie in [0, {s.ntotal})"
        if (np.bincount(ids, minlength=s.ntotal) != 1).any():
            return "ids must hold every id exactly once"
        rising = np.diff(ids) > 0
        first = (np.cumsum(sizes) - sizes)[sizes > 0][1:]  # each list's first row but the first
        rising[first - 1] = True
        if not rising.all():
            return "ids must ascend within each list (insertion order)"
    return None


def load_ivf_index(path, *, mmap=False):
    """Loads a file written by :meth:`IVFBinaryIndex.save`; :func:`cofisearch.load_index`
    calls this for such files. ``mmap`` maps the ids and codes (and centroids) read-only;
    an add then copies the lists into memory first."""
    path = os.fspath(path)

    def bad(problem):
        return ValueError(f"{path!r} is not a valid cofisearch index: {problem}")

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"cannot read index file {path!r}: not a regular file")
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise ValueError(f"cannot read index file {path!r}: {exc.strerror or exc}") from exc
    if len(header) < _HEADER_SIZE:
        raise bad(f"file is {info.st_size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    (magic, version, kind, nbits, ntotal, routing, layout, payload, stored_crc, niter, nlist,
     dim, nprobe, seed, max_points, screen, reserved, screen_bits, next_id) = _HEAD.unpack_from(header)
    if magic != _MAGIC or version != _CONTAINER_VERSION or kind != _KIND:
        raise bad(f"not an inverted-file index (magic {magic!r}, version {version}, kind {kind})")
    if layout not in _LAYOUTS:
        raise bad(f"inverted-file layout {layout} is not supported (this build reads {list(_LAYOUTS)})")
    if header[_HEAD.size :] != b"\0" * (_HEADER_SIZE - _HEAD.size):
        raise bad("corrupt header (padding is not zero)")
    if layout != 3 and next_id:
        raise bad(f"corrupt header (layout {layout} with next_id {next_id})")
    settings = (nbits, nlist, nprobe, seed, niter, max_points, routing, dim, ntotal, screen, screen_bits,
                next_id if layout == 3 else -1)
    problem = _settings_problem(settings)
    if problem:
        raise bad(f"corrupt header ({problem})")
    s = _Settings(*settings)
    if reserved or layout != _layout(s):
        raise bad(f"corrupt header (layout {layout} with screen {screen}, reserved {reserved})")
    if payload != _payload_size(s):
        raise bad(f"corrupt header (payload {payload} bytes, the settings need {_payload_size(s)})")
    if info.st_size != _HEADER_SIZE + payload:
        raise bad(f"file is {info.st_size} bytes, expected {_HEADER_SIZE + payload} (truncated or padded)")
    arrays, offset, padding_ok = [], _HEADER_SIZE, True
    try:
        with open(path, "rb") as f:
            for dtype, shape in _sections(s):
                count = int(np.prod(shape))
                used = count * dtype.itemsize
                if mmap and count:
                    a = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
                else:
                    a = np.empty(shape, dtype=dtype)
                    f.seek(offset)
                    if f.readinto(a.reshape(-1).view(np.uint8)) != a.nbytes:
                        raise bad("payload ended early")
                arrays.append(a)
                # The padding after a section is part of the checksum: read it too.
                pad = _padded(used) - used
                if pad:
                    f.seek(offset + used)
                    padding_ok &= f.read(pad) == b"\0" * pad
                offset += _padded(used)
    except OSError as exc:
        raise ValueError(f"cannot read index file {path!r}: {exc.strerror or exc}") from exc
    if not padding_ok or _checksum(s, arrays) != stored_crc:
        raise bad("checksum mismatch: the file is corrupted")
    arrays += [None] * (8 - len(arrays))
    problem = _parts_problem(s, arrays)
    if problem:
        raise bad(problem)
    return _build(s, *arrays)

