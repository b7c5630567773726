"""A configuration together with its ignore list: what ``run`` and ``check`` load.

Both are valid, or neither (a ConfigError or IgnoreFileError is raised before
anything is replaced).  Used by the daemon (sensor/daemon.py) and by ``check``
(sensor/check.py), which therefore does not import the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sensor.config import Config, load_config
from sensor.ignore import IgnoreList, Network, local_networks, read_ignore_file


@dataclass(frozen=True)
class Loaded:
    """A configuration together with its ignore list: both valid, or neither."""

    config: Config
    ignore: IgnoreList
    configured: tuple[Network, ...] = ()
    local: tuple[Network, ...] = ()   # this host's addresses the ignore list was built with

    def with_local(self, local: tuple[Network, ...]) -> Loaded:
        """The same configuration with this host's current addresses in the ignore list.

        The list is rebuilt only when those addresses changed (not on every PLAN_REFRESH).
        """
        if local == self.local:
            return self
        return Loaded(self.config, IgnoreList.build(self.configured, local), self.configured, local)

    def reread_ignore(self, proc: str = "/proc") -> Loaded:
        """The same configuration with IGNORE_FILE read again (raises IgnoreFileError)."""
        configured = read_ignore_file(self.config.ignore_file)
        local = local_networks(proc)
        return Loaded(self.config, IgnoreList.build(configured, local), configured, local)


def load_all(path: str, defaults: Iterable[str] | None, proc: str = "/proc") -> Loaded:
    """Load config and ignore file; raises ConfigError or IgnoreFileError."""
    config = load_config(path, defaults)
    configured = read_ignore_file(config.ignore_file) if config.ignore_file else ()
    local = local_networks(proc)
    return Loaded(config, IgnoreList.build(configured, local), configured, local)
