"""Keep a session that skipped the second factor from being used."""

from django.contrib.auth import logout
from django.shortcuts import redirect
from django.utils.deprecation import MiddlewareMixin

from . import twofactor


class TwoFactorMiddleware(MiddlewareMixin):
    """Turn a signed-in session of a user with an authenticator, not verified by it, back into a pending sign-in.

    The panel's own sign-in never makes such a session; another door (a login link, a future SSO callback,
    a session from before two factors were switched on) might. Installed after AuthenticationMiddleware.
    """

    def process_request(self, request):
        user = request.user
        if not user.is_authenticated or twofactor.session_verified(request) or not twofactor.has_device(user):
            return None
        backend = request.session.get("_auth_user_backend", "django.contrib.auth.backends.ModelBackend")
        next_url = request.get_full_path() if request.method == "GET" else ""
        logout(request)
        twofactor.start_pending(request, user, backend, next_url)
        return redirect("login-code")
