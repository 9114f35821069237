"""A VE's configuration file: <root>/conf/<ctid>.conf, OpenVZ-style KEY="value" lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .layout import read_kv, write_kv

# Parameters of issue-2 scope; other modules add theirs (network, resources) by name.
KNOWN = (
    "OSTEMPLATE",
    "HOSTNAME",
    "ONBOOT",
    "NAMESERVER",
    "SEARCHDOMAIN",
    "CREATED",
)


@dataclass
class VEConfig:
    ctid: int
    path: Path
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, ctid: int) -> VEConfig:
        return cls(ctid=ctid, path=path, values=read_kv(path))

    def save(self) -> None:
        write_kv(self.path, self.values, header=f"vzpanel VE {self.ctid} (edit with vzctl set)")

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def set(self, key: str, value: object) -> None:
        if value is None or value == "":
            self.values.pop(key, None)
        else:
            self.values[key] = str(value)

    def get_list(self, key: str) -> list[str]:
        return self.get(key).split()

    def set_list(self, key: str, items: list[str]) -> None:
        self.set(key, " ".join(items))

    @property
    def ostemplate(self) -> str:
        return self.get("OSTEMPLATE")

    @property
    def hostname(self) -> str:
        return self.get("HOSTNAME")

    @property
    def onboot(self) -> bool:
        return self.get("ONBOOT", "no") == "yes"
