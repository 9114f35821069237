class TaskFailed(Exception):
    """An expected failure the job explains to the user (like vzengine.VZError)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
