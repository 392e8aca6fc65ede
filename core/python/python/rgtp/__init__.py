"""RGTP: verified, resumable, receiver-driven file transfers over UDP.

Expose a file and pull it back::

    import rgtp

    with rgtp.expose("big.iso", port=0, bind="127.0.0.1") as ex:
        stats = rgtp.pull(ex.url, "copy.iso")
        print(stats["bytes"], stats["throughput"])

Every blocking call releases the GIL. Errors are subclasses of :class:`RgtpError`
whose ``exit_code`` is the code the ``rgtp-pull`` / ``rgtp-expose`` commands use.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Callable, Dict, Optional, Sequence, Union

from . import _rgtp
from ._errors import (
    BadKey,
    BindError,
    Cancelled,
    Corrupt,
    CorruptState,
    DiskFull,
    FileError,
    Gone,
    InternalError,
    KeyDirError,
    ProtocolError,
    KeyMismatch,
    NotFound,
    RgtpError,
    TooLarge,
    Unreachable,
    UsageError,
)
from ._rgtp import CancelToken, Exposure

__version__: str = _rgtp.__version__

__all__ = [
    "expose",
    "pull",
    "pull_async",
    "Exposure",
    "CancelToken",
    "RgtpError",
    "InternalError",
    "UsageError",
    "FileError",
    "DiskFull",
    "Unreachable",
    "KeyMismatch",
    "NotFound",
    "Corrupt",
    "CorruptState",
    "BindError",
    "BadKey",
    "TooLarge",
    "Gone",
    "KeyDirError",
    "ProtocolError",
    "Cancelled",
]

PathLike = Union[str, "os.PathLike[str]"]
ProgressCallback = Callable[[Dict[str, Any]], Any]


def expose(
    path: PathLike,
    port: int = 0,
    bind: str = "127.0.0.1",
    *,
    key_path: Optional[PathLike] = None,
    advertise: Optional[str] = None,
    seal_ahead: bool = True,
    cache_dir: Optional[PathLike] = None,
    max_datagram: Optional[int] = None,
) -> Exposure:
    """Exposes the file ``path`` on UDP ``bind``:``port`` (0: an ephemeral port) and
    serves it on a background thread until ``close()``.

    The file is hashed first (and sealed, unless ``seal_ahead=False``), so the
    returned ``Exposure.url`` is servable at once. ``key_path`` is the exposer's key
    file (default ``$RGTP_CONFIG_DIR/exposer.key``, i.e. ``~/.config/rgtp``; created
    on first use), ``advertise`` the host written into the URL, ``cache_dir`` where
    sealed chunks go, ``max_datagram`` the largest UDP payload (512..65507).

    The result is a context manager: ``with rgtp.expose(p) as ex: ...`` closes it.
    Raises :class:`FileError` for a missing or unreadable file, :class:`BindError`
    when the port cannot be bound, :class:`UsageError` for a bad address.
    """
    return _rgtp.expose(
        os.fspath(path),
        port,
        bind,
        None if key_path is None else os.fspath(key_path),
        advertise,
        seal_ahead,
        None if cache_dir is None else os.fspath(cache_dir),
        max_datagram,
    )


def pull(
    url: str,
    path: PathLike,
    progress: Optional[ProgressCallback] = None,
    *,
    key: Optional[str] = None,
    known_exposers: Optional[PathLike] = None,
    max_datagram: Optional[int] = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    verify_thread: Optional[bool] = None,
    cancel: Optional[CancelToken] = None,
    sources: Sequence[str] = (),
    fec: str = "auto",
    share: bool = False,
    share_port: int = 0,
    seed: float = 0.0,
) -> Dict[str, Any]:
    """Pulls ``url`` (an ``rgtp://`` URL as ``rgtp-expose`` prints it) into the file
    ``path``, verified chunk by chunk against the root, and returns the figures
    ``rgtp-pull --json`` prints, as a dict: ``exit_code`` (0), ``bytes``,
    ``seconds``, ``throughput`` (bytes pulled this run per second),
    ``datagrams_received``, ``bytes_received``, ``datagrams_sent``, ``requests``,
    ``rerequested_fragments``, ``duplicate_fragments``, ``spurious_losses``,
    ``bad_chunks``, ``handshakes``, ``resumed``, ``missing_bytes_at_start``, ``cipher``,
    ``output``, ``repair_fragments``, ``chunks_repaired``, ``surplus_repair_fragments``,
    ``sources_dropped``, ``sources`` (one dict per source: ``addr``, ``bytes``,
    ``bad_chunks``, ``dropped``, ``answered``), ``live`` (the exposure was a live
    stream, followed to its end), ``live_start`` (live: the stream offset of the
    file's first byte, past 0 when the exposer's window no longer held the start),
    and with ``share`` ``share_port``,
    ``share_bytes_sent``, ``share_handshakes``, ``share_missing_sent`` (else None).

    Blocks (with the GIL released) until done. An interrupted pull leaves
    ``PATH.rgtp-part`` and ``PATH.rgtp-state``; the same call resumes it.

    ``progress``, if given, is called on the pulling thread about four times a
    second with a dict whose ``kind`` is ``"waiting"`` (``elapsed``),
    ``"progress"`` (``stored``, ``total``, ``missing_at_start``, ``elapsed``,
    ``srtt``), ``"trusted"`` (``host_port``, ``key``: trusted on first use) or
    ``"damaged"`` (``chunks``), and with ``share`` ``"sharing"`` (``addr``, the local
    address served on) and ``"seeding"`` (``seconds``). If it raises, the pull stops
    (progress saved) and the exception propagates. Ctrl-C (KeyboardInterrupt) also stops a pull made
    on the main thread.

    ``key`` pins the exposer's key (64 hex digits) over the URL's;
    ``known_exposers`` is the trust-on-first-use file (default
    ``~/.config/rgtp/known_exposers``) for URLs that pin no key; ``connect_timeout``
    and ``idle_timeout`` (seconds) bound the wait for a first answer and for an
    exposer gone quiet; ``cancel`` is a :class:`CancelToken` another thread may set.

    ``sources`` are more sources of the same root (``rgtp-pull --from``): ``HOST:PORT``
    or ``rgtp://`` URLs; the URL must then carry ``root=``. ``fec`` is ``"auto"``
    (repair fragments only where loss is measured), ``"off"`` or ``"K:R"``. ``share``
    serves the verified chunks held to other pullers while pulling, on ``share_port``
    (0: any; the ``"sharing"`` progress event and ``share_port`` give it), and ``seed`` keeps serving that
    many seconds after the pull (inside the call; ``cancel`` ends it early).

    Raises a subclass of :class:`RgtpError`: :class:`KeyMismatch`,
    :class:`Unreachable`, :class:`NotFound`, :class:`Corrupt`, :class:`Cancelled`, ...
    """
    return _rgtp.pull(
        url,
        os.fspath(path),
        progress,
        key,
        None if known_exposers is None else os.fspath(known_exposers),
        max_datagram,
        connect_timeout,
        idle_timeout,
        verify_thread,
        cancel,
        list(sources),
        fec,
        share,
        share_port,
        seed,
    )


async def pull_async(
    url: str,
    path: PathLike,
    progress: Optional[ProgressCallback] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """:func:`pull` for asyncio: runs in the loop's default executor (a thread; the
    GIL is released while it pulls) and returns the same dict.

    Cancelling the awaiting task cancels the pull (its progress is saved) and
    raises :class:`asyncio.CancelledError` once the pull has stopped. ``progress``
    runs on the executor's thread: use ``loop.call_soon_threadsafe`` from it to
    touch the loop.
    """
    token = kwargs.pop("cancel", None) or CancelToken()
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(
        None, functools.partial(pull, url, path, progress, cancel=token, **kwargs)
    )
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        token.cancel()
        # Wait for the pull to stop (within milliseconds), so its files are settled.
        try:
            await fut
        except Cancelled:
            pass
        raise
