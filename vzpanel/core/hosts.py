"""Websocket host check that follows settings.ALLOWED_HOSTS as it is now, not as it was at import."""

from channels.security.websocket import OriginValidator
from django.conf import settings


class AllowedHostsOriginValidator(OriginValidator):
    """channels' validator of the same name (refuses handshakes whose Origin is not an allowed host).

    channels' own copies ALLOWED_HOSTS when vzpanel.asgi is imported; this one reads the setting at each
    handshake, so an overridden setting (tests, or a settings reload) takes effect.
    """

    def __init__(self, application):
        super().__init__(application, ())

    @property
    def allowed_origins(self):
        return settings.ALLOWED_HOSTS

    @allowed_origins.setter
    def allowed_origins(self, value):
        pass  # OriginValidator.__init__ assigns it; the setting is the only source
