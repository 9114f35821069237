"""The two shell scripts LXC runs for every VE of a root: after a reboot inside it, and when it stops.

Shell, not Python: LXC runs them inside every lxc-start and every stop, and a Python interpreter
costs a tenth of a second or more each time. They hold no logic of their own beyond that:

- ``vz-net-hook`` (lxc.hook.start-host): exits at once (about 1 ms) when the engine itself is
  starting the VE, which sets the network up afterwards (``after_start``); otherwise LXC is
  restarting the VE after a reboot inside it, in a new network namespace, and the hook calls
  ``vzctl net-hook`` (in the background while another engine operation, a backup say, holds
  the VE: it never waits for it).
- ``vz-net-stop-hook`` (lxc.hook.stop): LXC runs it while it still holds the VE's network
  namespace, so it keeps the final counts of the VE's veth (traffic.py), and lets go of a
  namespace the engine held (netns.py). The veth's name is its first argument, written into the
  VE's LXC config by ``NetworkFeature.lxc_config`` (naming.ifname: the name is made in one place).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..layout import Layout

PROJECT = Path(__file__).resolve().parents[2]  # what PYTHONPATH must hold for ``-m vzengine.cli.vzctl``


def start_host_hook(lay: Layout) -> str:
    """The start-host hook of the engine root ``lay`` (a Layout)."""
    # Shell builtins only (no grep, no cat): it runs inside every lxc-start.
    return f"""#!/bin/sh
# Written by vzengine (network/hooks.py); LXC runs it on the host before a VE's init starts.
# When the engine itself is starting the VE, it sets the network up afterwards: exit at once.
# Otherwise LXC is restarting the VE after a reboot inside it, in a new network namespace: set
# the network up now, or, while another engine operation holds the VE (a backup, say), just
# after it in the background, so that the hook never waits for that operation.
ctid="$1"
holder=
read -r holder 2>/dev/null < "{lay.lockdir}/$ctid.lock"
case "$holder" in
"") mode=now ;;
"start (pid "*|"restart (pid "*|"resume (pid "*|"rescue (pid "*|"rescue-leave (pid "*) mode=skip ;;
*) mode=later ;;
esac
if [ "$mode" != now ]; then
    pid=${{holder##*pid }}; pid=${{pid%)}}
    if [ -d "/proc/$pid" ]; then [ "$mode" = skip ] && exit 0; else mode=now; fi
fi
wanted=
while IFS= read -r line; do
    case "$line" in IP_ADDRESS=*|PORTFWD=*|NETIF=*) wanted=1; break ;; esac
done 2>/dev/null < "{lay.confdir}/$ctid.conf"
[ -n "$wanted" ] || exit 0
restore() {{
    PYTHONPATH="{PROJECT}" "{sys.executable}" -m vzengine.cli.vzctl --root "{lay.root}" -q \\
        net-hook "$ctid" "$LXC_PID" </dev/null >>"{lay.logdir}/$ctid.net.log" 2>&1
}}
if [ "$mode" = later ]; then (exec </dev/null >/dev/null 2>&1; restore) & else restore; fi
exit 0
"""


def stop_hook(traffic_dir: Path, netns_dir: Path) -> str:
    """The stop hook: ``vz-net-stop-hook <veth> <ctid> lxc stop`` (LXC adds the last three)."""
    return f"""#!/bin/sh
# Written by vzengine (network/hooks.py); LXC runs it on the host when a VE has stopped or reboots,
# while it still holds the VE's network namespace: the VE's host-side veth is still there, so
# keep what it counted (one file per veth, named <boot id>-<ifindex>; NetworkFeature.totals).
dev="$1"; ctid="$2"
case "$dev" in vz*) ;; *) exit 0 ;; esac  # a config written before the veth's name was passed
s="/sys/class/net/$dev"
read -r index 2>/dev/null < "$s/ifindex" || exit 0
read -r boot < /proc/sys/kernel/random/boot_id
read -r ib < "$s/statistics/tx_bytes"; read -r ip < "$s/statistics/tx_packets"
read -r ob < "$s/statistics/rx_bytes"; read -r op < "$s/statistics/rx_packets"
dir="{traffic_dir}/$ctid"
[ -d "$dir" ] || mkdir -p "$dir" || exit 0
# Never lower what was kept: a veth being deleted (a suspend) reads 0 for what its peer sent.
old=; read -r old 2>/dev/null < "$dir/$boot-$index"
set -- $old 0 0 0 0
ib=${{ib:-0}}; ip=${{ip:-0}}; ob=${{ob:-0}}; op=${{op:-0}}
[ "$1" -gt "$ib" ] && ib=$1; [ "$2" -gt "$ip" ] && ip=$2; [ "$3" -gt "$ob" ] && ob=$3; [ "$4" -gt "$op" ] && op=$4
echo "$ib $ip $ob $op" > "$dir/.$boot-$index.$$" && mv -f "$dir/.$boot-$index.$$" "$dir/$boot-$index"
handle="{netns_dir}/$ctid"  # held by the engine for a VE CRIU restored: let it go
[ -f "$handle" ] && {{ umount -l "$handle"; rm -f "$handle"; }} 2>/dev/null
exit 0
"""


def write_script(path: Path, content: str) -> None:
    """Write an executable script, unless it says that already (writers may race: atomically)."""
    try:
        if path.read_text() == content:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(content)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
