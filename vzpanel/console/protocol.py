"""The console's messages, shared by the websocket consumer (web) and the console daemon (node agent).

Lifecycle over the channel layer, consumer → daemon on the node's channel ``console.<node>``:

    console.open       {reply, ctid, mode, rows, cols, role: write|watch, user_id, username, at, boot_log?}
                       boot_log: a new session shows the VE's console log first even if it has booted
    console.input      {reply, sid, data: bytes}          dropped by the daemon unless reply is the writer
    console.resize     {reply, sid, rows, cols}           the writer's only
    console.ack        {reply, sid, offset}               the browser has shown output up to offset
    console.takeover   {reply, sid}                       become the writer (audited by the consumer)
    console.release    {reply, sid}                       stop being the writer
    console.close      {reply, sid, why?}                 end the session (the writer's only; why=access:
                                                          the consumer found the writer lost access)
    console.keepalive  {reply, sid}
    console.detach     {reply, sid}                       the websocket has gone; the session lingers
    console.ping       {reply}                            → console.pong
    console.close_ve   {reply?, ctid}                     end a VE's sessions (before a checkpoint)

daemon → consumer, sent to the reply channel:

    console.opened     {sid, role, mode, rows, cols, created, offset, writer, viewers, booting}
    console.booted     {sid, result: booted|timeout}      the VE has booted: the shell follows in the output
    console.output     {sid, data: bytes}                 the first ones after opened are the scrollback
    console.skipped    {sid, offset, lost}                this viewer fell behind: output lost, resume at offset
    console.role       {sid, role, writer, reason, by}
    console.resized    {sid, rows, cols}                  the writer's terminal size, for viewers
    console.notice     {sid, message}
    console.error      {code, message, sid?}
    console.exited     {sid, reason, message, code}

The browser gets output as binary websocket frames and everything else as JSON text frames
(``{"type": "opened", ...}`` without the ``console.`` prefix).
"""

MAX_ROWS = 500  # the same limits as vzengine.console, which the daemon applies again
MAX_COLS = 1000
DEFAULT_ROWS, DEFAULT_COLS = 24, 80
MAX_INPUT = 64 * 1024  # bytes of one input message; the browser sends big pastes in pieces
ACK_WINDOW = 512 * 1024  # output a viewer may have unacknowledged before the daemon holds it back
CHUNK = 64 * 1024  # bytes of output per message
KEEPALIVE = 25  # seconds between the browser's pings
VIEWER_TIMEOUT = 4 * KEEPALIVE  # a viewer not heard from for this long is dropped
OPEN_TIMEOUT = 10.0  # seconds the consumer waits for the daemon to answer an open
OPEN_MAX_AGE = 15.0  # the daemon ignores opens older than this (queued while it was down)

ROLES = ("write", "watch")  # what a browser asks for
WRITER, VIEWER = "writer", "viewer"  # what it gets

# Problem codes the browser can act on.
NOT_RUNNING = "not-running"  # offer to start the VE
NO_SUCH_VE = "no-such-ve"
AGENT_UNAVAILABLE = "agent-unavailable"  # retry later
ATTACH_FAILED = "attach-failed"
BAD_MESSAGE = "bad-message"
BAD_SIZE = "bad-size"
READ_ONLY = "read-only"
NO_SESSION = "no-session"  # the session has ended (or the daemon restarted): reconnect
NOT_WRITER = "not-writer"
BUSY = "busy"  # input arrives faster than the VE reads it
BOOTING = "booting"  # the VE is still booting: there is no shell to type into yet
ACCESS_GONE = "access-gone"  # the user may no longer see this VE: the websocket closes with 4404

# Websocket close codes (4000 + HTTP status, like the panel's other websockets).
CLOSE_ENDED = 4000  # the session ended or could not open; the last JSON message says why
CLOSE_UNAUTHENTICATED = 4401
CLOSE_CROSS_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404


def daemon_channel(node_name: str) -> str:
    """Return the channel the console daemon of a node listens on."""
    return f"console.{node_name}"


class BadMessage(ValueError):
    """A message from the browser that cannot be used; str() is what the terminal shows."""

    def __init__(self, message: str, code: str = BAD_MESSAGE):
        super().__init__(message)
        self.code = code


def clean_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadMessage(f"{what} must be a whole number, not {value!r}"[:200], BAD_SIZE)
    try:
        return int(value)
    except ValueError:
        raise BadMessage(f"{what} must be a whole number, not {value!r}"[:200], BAD_SIZE) from None


def clean_size(rows, cols) -> tuple[int, int]:
    """Return (rows, cols) as ints, or raise BadMessage saying what is wrong."""
    rows, cols = clean_int(rows, "rows"), clean_int(cols, "columns")
    if not (1 <= rows <= MAX_ROWS and 1 <= cols <= MAX_COLS):
        raise BadMessage(
            f"A terminal of {rows}x{cols} is out of range: 1 to {MAX_ROWS} rows and 1 to {MAX_COLS} columns.",
            BAD_SIZE,
        )
    return rows, cols
