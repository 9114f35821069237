"""Snapshots, clones, backups, restore, reinstall and checkpoints (issue 5)."""

from __future__ import annotations
