"""Keep Numba's on-disk cache of the kernels consistent with their sources.

Numba checks a cached function against its own source file only: a kernel that inlines
functions from other files keeps its cached machine code after those files change. The
kernels here call each other across modules, so on import we hash all of this package's
sources and clear the cached kernels when the hash differs from the one they were built
from. When the package folder is not writable (a system-wide install) and no cache
directory is configured, the cache goes to a per-user folder instead of failing at import.
"""

import hashlib
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sources_digest():
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _cache_dirs():
    from numba.core import config

    dirs = [HERE / "__pycache__"]
    if config.CACHE_DIR:
        dirs.append(Path(config.CACHE_DIR))
    return dirs


def ensure_fresh_cache():
    """Clear stale cached kernels; choose a writable cache folder when needed."""
    from numba.core import config

    if not os.access(HERE, os.W_OK) and not config.CACHE_DIR:
        fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayeshlm-numba"
        try:
            fallback.mkdir(parents=True, exist_ok=True)
            config.CACHE_DIR = str(fallback)
        except OSError:
            import tempfile

            config.CACHE_DIR = tempfile.mkdtemp(prefix="bayeshlm-numba-")
    digest = _sources_digest()
    for folder in _cache_dirs():
        stamp = folder / "bayeshlm-kernels.sha256"
        try:
            if stamp.exists() and stamp.read_text() == digest:
                continue
            if folder.exists():
                for item in folder.rglob("*"):
                    if item.suffix in (".nbi", ".nbc"):
                        item.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            stamp.write_text(digest)
        except OSError:
            # A read-only location: numba will not write there either.
            continue
