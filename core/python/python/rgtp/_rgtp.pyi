"""Type hints of the native module rgtp._rgtp (PyO3)."""

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__version__: str

class CancelToken:
    """A cancellation flag for running pulls: ``cancel()`` from any thread stops
    them with :class:`rgtp.Cancelled` (progress saved)."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

class Exposure:
    """A file exposed on a UDP port, served by a thread until ``close()``."""

    @property
    def url(self) -> str:
        """The pull URL: ``rgtp://HOST:PORT/NAME?key=...&root=...``."""
    @property
    def root(self) -> str:
        """The content root, 64 hex digits (equals ``b3sum FILE``)."""
    @property
    def key(self) -> str:
        """The exposer's public key, 64 hex digits."""
    @property
    def port(self) -> int:
        """The UDP port served."""
    @property
    def path(self) -> Path:
        """The exposed file's path."""
    @property
    def size(self) -> int:
        """The file's size in bytes."""
    @property
    def serving(self) -> bool:
        """Whether it still serves (False after ``close()``)."""
    def close(self) -> None:
        """Stops serving and waits for the serving thread (idempotent)."""
    def __enter__(self) -> "Exposure": ...
    def __exit__(self, *args: object) -> bool: ...

def pull(
    url: str,
    path: str,
    progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
    key: Optional[str] = None,
    known_exposers: Optional[str] = None,
    max_datagram: Optional[int] = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    verify_thread: Optional[bool] = None,
    cancel: Optional[CancelToken] = None,
    sources: List[str] = ...,
    fec: str = "auto",
    share: bool = False,
    share_port: int = 0,
    seed: float = 0.0,
) -> Dict[str, Any]: ...
def expose(
    path: str,
    port: int = 0,
    bind: str = "127.0.0.1",
    key_path: Optional[str] = None,
    advertise: Optional[str] = None,
    seal_ahead: bool = True,
    cache_dir: Optional[str] = None,
    max_datagram: Optional[int] = None,
) -> Exposure: ...
