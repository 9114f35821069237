"""The lockout check that runs before any backend that checks a password."""

from axes.backends import AxesStandaloneBackend


class LockoutBackend(AxesStandaloneBackend):
    """django-axes' check, skipped for authenticate() calls that carry no request.

    Only web requests are brute-forced; calls without a request (the test client's login(), management
    commands) have no address to count against, and axes would refuse them outright.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
